"""
Detector families of object extraction (see `object_extraction_mmib`): loading a transformers detector, and one
adapter per family that knows how to query it, post-process its outputs and name its boxes.

- closed-set detection (`AutoModelForObjectDetection` + `AutoImageProcessor`): DETR, RT-DETR, D-FINE, YOLOS, ...:
  [`ClosedSetAdapter`], boxes named by the detector's classes (`id2label`);
- text-queried grounding (`AutoModelForZeroShotObjectDetection` + `AutoProcessor`) with a list of queries per
  image: OWL-ViT, OWLv2, OmDet-Turbo: [`QueryListAdapter`];
- text-queried grounding with one lower-cased caption `"a. b. c."` per image (dots inside a query replaced by
  spaces): Grounding DINO, MM Grounding DINO: [`CaptionAdapter`].

Each adapter passes the `input_size` setting to its image processor (`[shortest_edge, longest_edge]`, for
processors that resize by their edges) and carries its family's defaults: the query rule (`"post"` for text-queried,
`"all"` for closed-set detectors) and the score threshold (`DEFAULT_THRESHOLDS`, the values of the models' own
examples).

Travels with checkpoints as remote code: it imports only torch, transformers, PIL, the standard library and its
`*_mmib.py` siblings.
"""

import inspect
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForObjectDetection,
    AutoModelForZeroShotObjectDetection,
    AutoProcessor,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES,
    MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES,
)

from .checkpoints_mmib import native_bf16

__all__ = [
    "CAPTION_MODEL_TYPES",
    "CLOSED_SET",
    "DEFAULT_THRESHOLDS",
    "ZERO_SHOT",
    "CaptionAdapter",
    "ClosedSetAdapter",
    "DetectorAdapter",
    "QueryListAdapter",
    "adapter_for",
    "bf16_safe",
    "detector_dtype",
    "detector_kind",
    "load_detector",
]

ZERO_SHOT = "zero-shot"
CLOSED_SET = "closed-set"
# Model types whose processor takes one caption "a. b. c." per image instead of a list of queries.
CAPTION_MODEL_TYPES = ("grounding-dino", "mm-grounding-dino")
# Score thresholds per model type when none is given: the values of the models' own examples.
DEFAULT_THRESHOLDS = {"grounding-dino": 0.3, "mm-grounding-dino": 0.3, "owlv2": 0.1, "owlvit": 0.1, "omdet-turbo": 0.3}
DEFAULT_CLOSED_SET_THRESHOLD = 0.5


def detector_kind(config: Any, name: str | None = None) -> str:
    """
    `"zero-shot"` (text-queried) or `"closed-set"` for a detector config.

    Raises:
        ValueError: the config is not an object-detection model, naming it and the supported types.
    """
    model_type = getattr(config, "model_type", None)
    auto_map = getattr(config, "auto_map", None) or {}
    if model_type in MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES or "AutoModelForZeroShotObjectDetection" in (
        auto_map
    ):
        return ZERO_SHOT
    if model_type in MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES or "AutoModelForObjectDetection" in auto_map:
        return CLOSED_SET
    raise ValueError(
        f"{name or 'The detector'} is a {model_type!r} model, not an object detector. Text-queried: "
        f"{sorted(MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES)}; closed-set: "
        f"{sorted(MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES)}."
    )


def bf16_safe(model: torch.nn.Module) -> bool:
    """
    Whether `model` may run with bf16 weights: not when it has deformable attention (Deformable DETR, RT-DETR,
    D-FINE, Grounding DINO), which samples its feature maps with `grid_sample` at bf16 positions: on the CPU that
    returned NaN for a Grounding DINO tiny forward (torch 2.14, AVX512-BF16), and bf16 positions are off by up to
    2^-8 of a feature map's side.
    """
    return not any(type(module).__name__.lower().endswith("deformableattention") for module in model.modules())


def detector_dtype(
    dtype: torch.dtype | str | None, device: torch.device, model: torch.nn.Module | None = None
) -> torch.dtype:
    """
    The detector's weights for a `dtype` setting: `"auto"` (or `None`) is bfloat16 where `device` multiplies it
    natively ([`native_bf16`]: the fastest precision there) and `model` is [`bf16_safe`], else float32; other names
    are taken as they are.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        safe = model is None or bf16_safe(model)
        return torch.bfloat16 if native_bf16(device) and safe else torch.float32
    return getattr(torch, dtype)


def load_detector(
    detector: str | os.PathLike,
    revision: str | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> tuple[torch.nn.Module, Any]:
    """
    Loads a detector and its processor (text-queried) or image processor (closed-set) from a Hub id or a folder.

    Args:
        detector (`str` or `os.PathLike`): Hub id or folder.
        revision (`str`, *optional*): Hub revision (branch, tag or commit).
        trust_remote_code (`bool`, *optional*, defaults to `False`): only when the user asks for it.
        device (`str` or `torch.device`, *optional*): defaults to CUDA when available, else CPU.
        dtype (`torch.dtype` or `str`, *optional*): `"auto"` (the default): see [`detector_dtype`].

    Returns:
        `(model, processor)`, the model in eval mode on `device`.

    Raises:
        ValueError: the checkpoint is not an object-detection model.
    """
    detector = os.fspath(detector)
    loading = {"revision": revision, "trust_remote_code": trust_remote_code}
    config = AutoConfig.from_pretrained(detector, **loading)
    kind = detector_kind(config, detector)
    model_class = AutoModelForZeroShotObjectDetection if kind == ZERO_SHOT else AutoModelForObjectDetection
    processor_class = AutoProcessor if kind == ZERO_SHOT else AutoImageProcessor
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded_dtype = torch.float32 if dtype in (None, "auto") else detector_dtype(dtype, torch.device(device))
    model = model_class.from_pretrained(detector, dtype=loaded_dtype, **loading)
    model.to(device, detector_dtype(dtype, torch.device(device), model))
    processor = processor_class.from_pretrained(detector, **loading)
    return model.eval(), processor


class DetectorAdapter:
    """
    What one detector family needs: its inputs for a batch of images and their queries, its post-processing into
    boxes in image pixels, and the query or class name of each box.

    Args:
        model (`torch.nn.Module`): the detector.
        processor: its processor (text-queried) or image processor (closed-set).
    """

    kind: str = CLOSED_SET
    default_query_rule: str = "all"

    def __init__(self, model: torch.nn.Module, processor: Any):
        self.model = model
        self.processor = processor
        self.model_type = model.config.model_type
        self.size: dict[str, int] | None = None

    @property
    def input_size(self) -> list[int] | None:
        """`[shortest_edge, longest_edge]` the images are resized to; `None` for a processor of a fixed size."""
        # A processor of a family without edge sizes (a remote-code detector's own) has no `size` at all.
        size = self.size or getattr(getattr(self.processor, "image_processor", self.processor), "size", None)
        if size and "shortest_edge" in size and "longest_edge" in size:
            return [size["shortest_edge"], size["longest_edge"]]
        return None

    def set_input_size(self, input_size: Sequence[int] | None) -> None:
        """
        Resizes images to `[shortest_edge, longest_edge]` (`None`: the processor's own size).

        Raises:
            ValueError: the processor resizes to a fixed size, not by its edges.
        """
        if input_size is None:
            self.size = None
            return
        if self.input_size is None:
            size = getattr(getattr(self.processor, "image_processor", self.processor), "size", None) or {}
            raise ValueError(
                f"input_size sets the shortest and longest edge, but the {self.model_type} processor resizes to a "
                f"fixed size ({dict(size)}): leave input_size unset for this detector."
            )
        self.size = {"shortest_edge": int(input_size[0]), "longest_edge": int(input_size[1])}

    def _size_kwargs(self) -> dict[str, Any]:
        return {} if self.size is None else {"size": self.size}

    @property
    def default_threshold(self) -> float:
        """The score threshold when none is given."""
        return DEFAULT_THRESHOLDS.get(self.model_type, DEFAULT_CLOSED_SET_THRESHOLD)

    def inputs(self, images: list[Image.Image], queries: list[list[str]]) -> Mapping[str, Any]:
        """The processor's tensors for `images`, each searched with its `queries`."""
        return self.processor(images=images, return_tensors="pt", **self._size_kwargs())

    def post_process(
        self,
        outputs: Any,
        inputs: Mapping[str, Any],
        target_sizes: list[tuple[int, int]],
        threshold: float,
        text_threshold: float,
    ) -> list[Mapping[str, Any]]:
        """The processor's own post-processing: per image `boxes` in the pixels of `target_sizes`, `scores`, ..."""
        return self.processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=target_sizes)

    def boxes_and_labels(
        self, result: Mapping[str, Any], queries: list[str], categories: Sequence[str] | None
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Boxes, scores and the query or class of each box of one image; boxes of no asked class are dropped."""
        names = [self.model.config.id2label.get(int(label), str(int(label))) for label in result["labels"]]
        keep = [index for index, name in enumerate(names) if categories is None or name in categories]
        return _kept(result, names, keep)


class ClosedSetAdapter(DetectorAdapter):
    """Closed-set detectors: every class, or the `categories` among the detector's classes."""


class QueryListAdapter(DetectorAdapter):
    """Text-queried detectors whose processor takes a list of queries per image (OWL-ViT, OWLv2, OmDet-Turbo)."""

    kind = ZERO_SHOT
    default_query_rule = "post"

    def inputs(self, images: list[Image.Image], queries: list[list[str]]) -> Mapping[str, Any]:
        return self.processor(
            images=images,
            text=[list(image_queries) for image_queries in queries],
            return_tensors="pt",
            **self._size_kwargs(),
        )

    def post_process(self, outputs, inputs, target_sizes, threshold, text_threshold):
        post_process = self.processor.post_process_grounded_object_detection
        parameters = inspect.signature(post_process).parameters
        arguments: dict[str, Any] = {"threshold": threshold, "target_sizes": target_sizes}
        if "input_ids" in parameters and "input_ids" in inputs:
            arguments["input_ids"] = inputs["input_ids"]
        if "text_threshold" in parameters:
            arguments["text_threshold"] = text_threshold
        return post_process(outputs, **arguments)

    def boxes_and_labels(self, result, queries, categories):
        # The processor pads every image's query list to the batch's longest with blank queries; a box whose best
        # query is such padding belongs to no query of this image.
        labels = [int(label) for label in result["labels"]]
        names = [queries[label] if label < len(queries) else "" for label in labels]
        keep = [index for index, label in enumerate(labels) if label < len(queries)]
        return _kept(result, names, keep)


class CaptionAdapter(QueryListAdapter):
    """Text-queried detectors that take one caption `"a. b. c."` per image (Grounding DINO, MM Grounding DINO)."""

    def inputs(self, images: list[Image.Image], queries: list[list[str]]) -> Mapping[str, Any]:
        text = [". ".join(_caption_part(query) for query in image_queries) + "." for image_queries in queries]
        return self.processor(images=images, text=text, return_tensors="pt", padding=True, **self._size_kwargs())

    def boxes_and_labels(self, result, queries, categories):
        by_text = {_caption_part(query): query for query in queries}
        # One label per box: the processor decodes an empty selection as one empty text.
        labels = result["text_labels"][: len(result["scores"])]
        names = [_caption_label(label, by_text) for label in labels]
        return _kept(result, names, list(range(len(names))))


def adapter_for(model: torch.nn.Module, processor: Any) -> DetectorAdapter:
    """The adapter of a loaded detector's family."""
    if detector_kind(model.config) == CLOSED_SET:
        return ClosedSetAdapter(model, processor)
    if model.config.model_type in CAPTION_MODEL_TYPES:
        return CaptionAdapter(model, processor)
    return QueryListAdapter(model, processor)


def _kept(
    result: Mapping[str, Any], names: list[str], keep: list[int]
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    index = torch.tensor(keep, dtype=torch.long)
    return result["boxes"].reshape(-1, 4)[index], result["scores"].reshape(-1)[index], [names[i] for i in keep]


def _caption_part(query: str) -> str:
    return query.replace(".", " ").strip().lower()


def _caption_label(label: str, by_text: Mapping[str, str]) -> str:
    """The query a Grounding DINO label text (the caption tokens above `text_threshold`) names, else the text."""
    text = re.sub(r"\[(CLS|SEP|PAD)\]", " ", label)
    text = " ".join(text.replace(" .", ".").strip(" .").split())
    return by_text.get(text, text)
