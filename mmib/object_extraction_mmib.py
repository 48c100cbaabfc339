"""
Object extraction for MMIB (paper §III-B2, "Step 1. Object Extraction"): a detector finds the local objects of a
post's image and their crops fill the model's `num_crops` object slots.

The paper (like HVPNeT, MKGformer and DeepKE, whose crops the benchmarks ship) used the one-stage visual grounding
model of Yang et al. (2019), queried with each noun of the post and, for relations, with the head and tail entity
words. [`MMIBObjectExtractor`] does the same step with transformers' own detectors. Its parts, one module each:

- the settings, one dataclass behind every entry point and the record kept with a checkpoint: `object_settings_mmib`;
- the query rule (`"post"`, `"categories"`, `"all"` or a callable): `object_queries_mmib`;
- the detector families (loading, inputs, post-processing, box names, defaults): `object_detectors_mmib`;
- the selection of an image's objects (rounding, clipping, minimum size, NMS, top `num_crops`): `object_boxes_mmib`;
- the detection cache by image content, settings and queries: `detection_cache_mmib`;
- filling the crop slots of posts at prediction time: `crop_filling_mmib`.

Images are opened by the package's one loader (`image_loading_mmib.load_image`: EXIF-upright RGB, transparency on
white, 16-bit grayscale scaled, the same unreadable-file errors), at full resolution and without the padding it
gives extreme aspect ratios, so that boxes and crops are in the picture's own pixels. The processor's own
post-processing turns the detector's outputs into boxes in those pixels (target size = the picture's size) with
scores above `threshold`; `select_objects` keeps at most `num_crops` of them.

Speed: the detector runs in bfloat16 where the device multiplies it natively (`dtype="auto"`, the
`checkpoints_mmib.native_bf16` rule; float32 elsewhere, and for detectors with deformable attention, see
`object_detectors_mmib.bf16_safe`), its outputs are post-processed in float32, and a detector
call batches only images of one size, so that no image is padded to another's shape (padding a 600x800 picture to
a batch's 800x600 one nearly doubles its pixels). `input_size` sets the edges the processor resizes to.

This file travels with checkpoints as remote code: it imports only torch, transformers, PIL, the standard library
and its `*_mmib.py` siblings.
"""

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from .detection_cache_mmib import DetectionCache, detection_key, image_sha256
from .image_loading_mmib import UnreadableImageError, load_image, pad_extreme_aspect_ratio
from .object_boxes_mmib import DetectedObject, select_objects, shift_boxes
from .object_detectors_mmib import CLOSED_SET, ZERO_SHOT, adapter_for, detector_dtype, load_detector
from .object_queries_mmib import rule_queries
from .object_settings_mmib import ObjectExtractionSettings

logger = logging.getLogger(__name__)

__all__ = ["DetectionError", "MMIBObjectExtractor"]


class DetectionError(RuntimeError):
    """
    The detector (or its processor) failed on one image, alone.

    Args:
        image: the image file or PIL image.
        error (`Exception`): what the detector raised.
    """

    def __init__(self, image: Any, error: Exception):
        self.image = image
        name = os.fspath(image) if isinstance(image, str | os.PathLike) else f"a {type(image).__name__}"
        super().__init__(f"The detector failed on image {name}: {type(error).__name__}: {error}")


class MMIBObjectExtractor:
    r"""
    Cuts the object crops of post images with a transformers detector (see the module docstring).

    Build it with [`MMIBObjectExtractor.from_pretrained`] (a Hub id or a saved folder),
    [`MMIBObjectExtractor.from_settings`] or [`MMIBObjectExtractor.from_dict`] (recorded settings); call it on
    images.

    Args:
        model ([`PreTrainedModel`]): a zero-shot or closed-set object-detection model.
        processor (`ProcessorMixin` or `BaseImageProcessor`): its processor (zero-shot) or image processor.
        settings ([`ObjectExtractionSettings`]): `detector` names where the model was loaded from (recorded);
            `query_rule`, `threshold` and `input_size` left at `None` take the detector family's or processor's
            defaults; the model is cast to `dtype` (`"auto"`: see [`detector_dtype`]).

    Raises:
        ValueError: a query rule the detector cannot take, or categories that are not its classes.
    """

    def __init__(self, model: torch.nn.Module, processor: Any, settings: ObjectExtractionSettings):
        if settings.detector is None:
            raise ValueError("settings.detector must name the detector (Hub id or folder) the model was loaded from.")
        device = next(model.parameters()).device
        dtype = detector_dtype(settings.dtype, device, model)
        self.model = model.to(dtype).eval()
        self.processor = processor
        self.adapter = adapter_for(self.model, processor)
        self.adapter.set_input_size(settings.input_size)
        self.settings = settings.replace(
            query_rule=settings.query_rule if settings.query_rule is not None else self.adapter.default_query_rule,
            threshold=settings.threshold if settings.threshold is not None else self.adapter.default_threshold,
            input_size=self.adapter.input_size,
            dtype=str(dtype).removeprefix("torch."),
        )
        self._check_query_rule()
        self.cache = DetectionCache(self.settings.cache_dir)
        self._fingerprint = None
        self._announced = False
        self.stats = {
            "images": 0,
            "cache_hits": 0,
            "detected_images": 0,
            "without_objects": 0,
            "no_query": 0,
            "unreadable": 0,
            "failed": 0,
        }

    # ---------------------------------------------------------------------------------------------------------
    # Construction and settings

    @classmethod
    def from_settings(cls, settings: ObjectExtractionSettings) -> "MMIBObjectExtractor":
        """Loads `settings.detector` (with its revision, trust, device and dtype) and builds the extractor."""
        model, processor = load_detector(
            settings.detector, settings.revision, settings.trust_remote_code, settings.device, settings.dtype
        )
        return cls(model, processor, settings)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **settings: Any
    ) -> "MMIBObjectExtractor":
        """
        Loads a detector and its processor from a Hub id or a saved folder.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): Hub id or folder.
            settings: the other fields of [`ObjectExtractionSettings`] (`revision`, `trust_remote_code`, `device`,
                `dtype`, `query_rule`, `threshold`, `num_crops`, `cache_dir`, ...).

        Raises:
            ValueError: the checkpoint is not an object-detection model, or a setting is invalid.
        """
        return cls.from_settings(
            ObjectExtractionSettings(detector=os.fspath(pretrained_model_name_or_path), **settings)
        )

    def to_dict(self) -> dict[str, Any]:
        """
        The settings that decide the crops, as a plain JSON-able dict (to record with a checkpoint): the recorded
        fields of [`ObjectExtractionSettings`] with the resolved defaults, and the detector's `kind` and `model_type`.

        Raises:
            ValueError: the query rule is a callable, which cannot be recorded.
        """
        recorded = self.settings.to_dict()
        return {
            "detector": recorded.pop("detector"),
            "revision": recorded.pop("revision"),
            **self._identity(),
            **recorded,
        }

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any], **runtime: Any) -> "MMIBObjectExtractor":
        """
        Loads the detector recorded by [`MMIBObjectExtractor.to_dict`] with the same settings.

        Args:
            settings (`dict`): the recorded settings (earlier versions' records load too).
            runtime: `trust_remote_code`, `device`, `dtype`, `batch_size`, `cache_dir` (they are never recorded).

        Raises:
            ValueError: an unknown key, or a detector whose kind or model type differs from the recorded one.
        """
        settings = dict(settings)
        recorded = {"kind": settings.pop("kind", None), "model_type": settings.pop("model_type", None)}
        extractor = cls.from_settings(ObjectExtractionSettings.from_dict(settings, **runtime))
        if recorded != {"kind": None, "model_type": None} and recorded != extractor._identity():
            raise ValueError(
                f"Detector {extractor.detector} is a {extractor.kind} {extractor.model_type} model, but the settings "
                f"record a {recorded['kind']} {recorded['model_type']} model."
            )
        return extractor

    def _identity(self) -> dict[str, str]:
        return {"kind": self.kind, "model_type": self.model_type}

    def _check_query_rule(self) -> None:
        rule, categories = self.settings.query_rule, self.settings.categories
        if callable(rule):
            if self.kind == CLOSED_SET:
                raise ValueError("A closed-set detector takes no queries: use query_rule 'all' or 'categories'.")
            return
        if rule == "categories" and not categories:
            raise ValueError("query_rule 'categories' needs a non-empty `categories` list.")
        if rule != "categories" and categories is not None:
            raise ValueError(f"`categories` is only used by query_rule 'categories', not {rule!r}.")
        if rule == "post" and self.kind == CLOSED_SET:
            raise ValueError(
                f"{self.detector} is a closed-set detector ({self.model_type}): it cannot be queried with the post's "
                "words; use query_rule 'all' or 'categories'."
            )
        if rule == "all" and self.kind == ZERO_SHOT:
            raise ValueError(f"{self.detector} is text-queried: query_rule 'all' needs a closed-set detector.")
        if rule == "categories" and self.kind == CLOSED_SET:
            known = {str(name) for name in self.model.config.id2label.values()}
            missing = [name for name in categories if name not in known]
            if missing:
                raise ValueError(f"Categories {missing} are not classes of {self.detector}: {sorted(known)}.")

    @property
    def kind(self) -> str:
        """`"zero-shot"` (text-queried) or `"closed-set"`."""
        return self.adapter.kind

    @property
    def model_type(self) -> str:
        return self.adapter.model_type

    @property
    def detector(self) -> str:
        return self.settings.detector

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ---------------------------------------------------------------------------------------------------------
    # Queries and cache keys

    def queries_for(
        self,
        words: Sequence[str] | str | None,
        head_span: Sequence[int] | None = None,
        tail_span: Sequence[int] | None = None,
    ) -> list[str]:
        """The queries of one post by the extractor's rule (empty list: no query; `"all"`: every class)."""
        settings = self.settings
        return rule_queries(
            settings.query_rule, settings.categories, settings.max_queries, words, head_span, tail_span
        )

    def fingerprint(self) -> str:
        """
        What, beyond the image and the queries, decides the detections: the settings that do
        (`DETECTION_FIELDS`), the detector's kind and model type, and the weights' identity (the Hub commit, or the
        files of a local folder by name, size and modification time).
        """
        if self._fingerprint is None:
            values = {**self.settings.detection_values(), **self._identity()}
            values["commit"] = getattr(self.model.config, "_commit_hash", None)
            if os.path.isdir(self.detector):
                values["files"] = sorted(
                    (entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
                    for entry in os.scandir(self.detector)
                    if entry.is_file()
                )
            self._fingerprint = json.dumps(values, sort_keys=True, default=str)
        return self._fingerprint

    def cache_key(self, image_digest: str, queries: Sequence[str]) -> str:
        """The detection cache's key: SHA-256 of the image content, the [`fingerprint`] and the queries."""
        return detection_key(image_digest, self.fingerprint(), queries)

    # ---------------------------------------------------------------------------------------------------------
    # Detection

    def __call__(
        self,
        images: Sequence[Image.Image | str | os.PathLike],
        words: Sequence[Sequence[str] | str | None] | None = None,
        head_spans: Sequence[Sequence[int] | None] | None = None,
        tail_spans: Sequence[Sequence[int] | None] | None = None,
        return_crops: bool = True,
        on_unreadable: str = "raise",
        errors: list[Exception | None] | None = None,
    ) -> list[list[DetectedObject] | None]:
        """
        Extracts the objects of images.

        Args:
            images (`list`): image files or PIL images.
            words (`list`, *optional*): each image's post words (the `"post"` rule needs them).
            head_spans, tail_spans (`list`, *optional*): each post's relation entity spans, or `None`.
            return_crops (`bool`, *optional*, defaults to `True`): cut the crops (`DetectedObject.crop`).
            on_unreadable (`str`, *optional*, defaults to `"raise"`): for a missing or undecodable file, or an image
                the detector fails on (alone, see [`DetectionError`]), `"raise"` the error or `"mask"`: log a
                warning naming the file, count it in `stats["unreadable"]` (resp. `stats["failed"]`) and give `None`
                for that image.
            errors (`list`, *optional*): filled with one entry per image: `None`, or the error that made it `None`
                under `"mask"` (`FileNotFoundError`, [`UnreadableImageError`] or [`DetectionError`], each naming the
                file and the reason).

        Returns:
            One list of [`DetectedObject`] per image, best first, at most `num_crops`; empty when nothing passes the
            selection or the post has no query (both counted in `stats`); `None` for a masked unreadable image or
            detector failure.

        Raises:
            FileNotFoundError, UnreadableImageError: an image file is missing or cannot be decoded (`"raise"`).
            DetectionError: the detector fails on an image even alone (`"raise"`).
            ValueError: `words`/spans of another length than `images`, or an unknown `on_unreadable`.
        """
        if on_unreadable not in ("raise", "mask"):
            raise ValueError(f"on_unreadable must be 'raise' or 'mask', got {on_unreadable!r}.")
        count = len(images)
        words = [None] * count if words is None else list(words)
        head_spans = [None] * count if head_spans is None else list(head_spans)
        tail_spans = [None] * count if tail_spans is None else list(tail_spans)
        if not len(words) == len(head_spans) == len(tail_spans) == count:
            raise ValueError(f"{count} images but {len(words)} posts, {len(head_spans)} / {len(tail_spans)} spans.")
        reasons: list[Exception | None] = [None] * count
        opened: list[tuple[Image.Image, str] | None] = []
        for index, image in enumerate(images):
            try:
                opened.append(self._open(image))
            except (FileNotFoundError, UnreadableImageError) as error:
                if on_unreadable == "raise":
                    raise
                logger.warning("No objects for an unreadable image: %s", error)
                self.stats["unreadable"] += 1
                reasons[index] = error
                opened.append(None)
        readable = [index for index, item in enumerate(opened) if item is not None]
        results: list[list[DetectedObject] | None] = [None] * count
        extracted = self._extract(
            [opened[i] for i in readable],
            [self.queries_for(words[i], head_spans[i], tail_spans[i]) for i in readable],
            return_crops,
        )
        for index, objects in zip(readable, extracted):
            if isinstance(objects, Exception):
                failure = DetectionError(images[index], objects)
                if on_unreadable == "raise":
                    raise failure from objects
                logger.warning("No objects: %s", failure)
                self.stats["failed"] += 1
                reasons[index] = failure
                continue
            results[index] = objects
        if errors is not None:
            errors[:] = reasons
        return results

    @staticmethod
    def _open(image: Image.Image | str | os.PathLike) -> tuple[Image.Image, str]:
        """The picture, EXIF-upright RGB in its own pixels (no padding), and its content hash."""
        picture = load_image(image, pad=False)
        if picture is None:
            raise TypeError("An image to extract objects from must be a PIL image or a file path, got None.")
        return picture, image_sha256(image)

    def _extract(
        self, opened: list[tuple[Image.Image, str]], queries: list[list[str]], return_crops: bool
    ) -> list[list[DetectedObject] | Exception]:
        """Detections of opened images (cache first, then batched detector calls), with crops if asked; the error of
        an image the detector failed on (see [`_detect_or_isolate`])."""
        keys = [self.cache_key(digest, image_queries) for (_, digest), image_queries in zip(opened, queries)]
        results: list[list[DetectedObject] | None] = []
        pending: dict[str, int] = {}
        for index, key in enumerate(keys):
            self.stats["images"] += 1
            cached = self.cache.get(key)
            if cached is not None:
                self.stats["cache_hits"] += 1
            elif self.kind == ZERO_SHOT and not queries[index]:
                self.stats["no_query"] += 1
                cached = []
            elif key in pending:
                self.stats["cache_hits"] += 1
            else:
                pending[key] = index
            results.append(cached)
        # Images of one size have one processed shape: batched, none is padded to another's shape.
        by_size: dict[tuple[int, int], list[int]] = {}
        for index in pending.values():
            by_size.setdefault(opened[index][0].size, []).append(index)
        for todo in by_size.values():
            for start in range(0, len(todo), self.batch_size):
                batch = todo[start : start + self.batch_size]
                detected = self._detect_or_isolate([opened[i][0] for i in batch], [queries[i] for i in batch])
                for index, objects in zip(batch, detected):
                    if isinstance(objects, Exception):
                        results[index] = objects
                        continue
                    self.cache.put(keys[index], opened[index][1], queries[index], objects)
        final = []
        for index, cached in enumerate(results):
            if isinstance(cached, Exception):
                final.append(cached)
                continue
            objects = cached if cached is not None else self.cache.get(keys[index])
            if not objects:
                self.stats["without_objects"] += 1
            image = opened[index][0]
            final.append(
                [DetectedObject(o.box, o.score, o.query, image.crop(o.box) if return_crops else None) for o in objects]
            )
        return final

    def _announce(self) -> None:
        if self._announced:
            return
        self._announced = True
        commit = getattr(self.model.config, "_commit_hash", None)
        source = "local folder" if os.path.isdir(self.detector) else f"revision {self.settings.revision or 'main'}"
        logger.warning(
            "Object extraction with %s (%s, commit %s; %s %s, query rule %s, threshold %s, %d crops) on %s/%s",
            self.detector,
            source,
            commit or "unknown",
            self.kind,
            self.model_type,
            "callable" if callable(self.settings.query_rule) else self.settings.query_rule,
            self.settings.threshold,
            self.settings.num_crops,
            self.device,
            self.dtype,
        )

    def _detect_or_isolate(
        self, images: list[Image.Image], queries: list[list[str]]
    ) -> list[list[DetectedObject] | Exception]:
        """
        [`_detect`] on a batch; if the detector or its processor raises, each image again alone, so that one image
        it cannot take costs only its own objects: that image's entry is the error.
        """
        try:
            return self._detect(images, queries)
        except Exception as error:  # a detector's own code may raise anything on an odd image; it is reported
            if len(images) == 1:
                return [error]
        return [self._detect_or_isolate([image], [image_queries])[0] for image, image_queries in zip(images, queries)]

    @torch.inference_mode()
    def _detect(self, images: list[Image.Image], queries: list[list[str]]) -> list[list[DetectedObject]]:
        """
        One detector call on a batch; returns the selected objects of each image.

        An image of an extreme aspect ratio is detected padded with white to `MAX_ASPECT_RATIO` (a processor's
        shortest-edge resize would shrink its short side to zero pixels); its boxes are shifted back into the
        image's own pixels and clipped there by [`select_objects`], and a box wholly in the padding is dropped.
        """
        self._announce()
        self.stats["detected_images"] += len(images)
        settings = self.settings
        views = [pad_extreme_aspect_ratio(image) for image in images]
        inputs = self.adapter.inputs([view for view, _ in views], queries).to(self.device)
        inputs = {
            name: value.to(self.dtype) if torch.is_floating_point(value) else value for name, value in inputs.items()
        }
        outputs = self.model(**inputs)
        # Post-processing in float32: half-precision boxes scaled to thousands of pixels would be off by pixels.
        for name, value in outputs.items():
            if isinstance(value, torch.Tensor) and torch.is_floating_point(value):
                outputs[name] = value.float()
        target_sizes = [(view.height, view.width) for view, _ in views]
        processed = self.adapter.post_process(
            outputs, inputs, target_sizes, settings.threshold, settings.text_threshold
        )
        selected = []
        for result, image, (_, offset), image_queries in zip(processed, images, views, queries):
            boxes, scores, labels = self.adapter.boxes_and_labels(result, image_queries, settings.categories)
            selected.append(
                select_objects(
                    shift_boxes(boxes, offset),
                    scores,
                    labels,
                    image.size,
                    settings.threshold,
                    settings.nms_iou,
                    settings.min_size,
                    settings.num_crops,
                )
            )
        return selected
