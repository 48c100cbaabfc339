"""
Object extraction for MMIB (paper §III-B2, "Step 1. Object Extraction"): a detector finds the local objects of a
post's image and their crops fill the model's `num_crops` object slots.

The paper (like HVPNeT, MKGformer and DeepKE, whose crops the benchmarks ship) used the one-stage visual grounding
model of Yang et al. (2019), queried with each noun of the post and, for relations, with the head and tail entity
words. [`MMIBObjectExtractor`] does the same step with transformers' own detectors:

- text-queried grounding (`AutoModelForZeroShotObjectDetection` + `AutoProcessor`): Grounding DINO, MM Grounding
  DINO, OWLv2, OWL-ViT, OmDet-Turbo;
- closed-set detection (`AutoModelForObjectDetection` + `AutoImageProcessor`): DETR, RT-DETR, D-FINE, YOLOS, ...

Query rule (`query_rule`)
-------------------------
- `"post"` (the default of text-queried detectors; the paper's rule without a part-of-speech tagger, which the core
  dependencies do not have offline): the post's content words, each a separate query. From the post's words,
  @mentions, URLs, `RT`, words of a small built-in English stop-word list, pure numbers and tokens without a letter
  or digit are left out; `#hashtag` keeps its text without `#`; surrounding punctuation is stripped. A run of
  adjacent capitalised words becomes one query (`Kevin Durant`), because a name is one object. For a relation the
  head and tail entity texts come first (without `@`/`#`). Queries are deduplicated case-insensitively in order and
  capped at `max_queries`. A post without any query gets no objects (no detector call, counted as `no_query`).
- `"categories"`: the fixed list `categories` for every image. For a closed-set detector it keeps only boxes of
  those classes (names of the detector's `id2label`).
- `"all"` (the default of closed-set detectors): every class the detector knows.
- a callable `(words, head_span, tail_span) -> list[str]` for anything else (text-queried detectors only; it cannot
  be recorded by [`MMIBObjectExtractor.to_dict`]).

Queries are formatted per family: Grounding DINO gets one lower-cased caption `"a. b. c."` (dots inside a query are
replaced by spaces), OWL-ViT / OWLv2 / OmDet-Turbo get the list.

Selection (`select_objects`, checked against brute force in the tests)
---------------------------------------------------------------------
The processor's own post-processing turns the outputs into boxes in the pixels of the full-resolution,
EXIF-upright image (target size = that image's size) with scores above `threshold`. Then each box is rounded
outwards to whole pixels and clipped: `x0 = max(0, floor(x0))`, `y0 = max(0, floor(y0))`,
`x1 = min(width, ceil(x1))`, `y1 = min(height, ceil(y1))` (so the crop `image.crop(box)` contains the whole
predicted box and nothing outside the image); boxes narrower or lower than `min_size` pixels are dropped; the rest
are ordered by score (descending), ties by `(x0, y0, x1, y1)` then query; greedy class-agnostic NMS in that order
drops a box whose IoU with a kept one exceeds `nms_iou`, and stops at `num_crops` kept boxes (the same as NMS
followed by the top `num_crops`).

Images are opened once: the file's bytes are hashed (SHA-256) and decoded, EXIF-rotated upright
(`PIL.ImageOps.exif_transpose`), and converted to RGB like every MMIB image (transparency on white, 16-bit
grayscale scaled; see `image_loading_mmib`), without the padding of extreme aspect ratios. Detections are cached by
that content hash, the recorded settings and the queries, in memory and optionally on disk as JSON (`cache_dir`),
so a renamed or re-posted copy of an image with the same queries is never detected twice.

This file travels with checkpoints as remote code: it imports only torch, transformers, PIL, the standard library
and its `*_mmib.py` siblings.
"""

import hashlib
import inspect
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, ImageOps
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

from .image_loading_mmib import MAX_IMAGE_PIXELS, UnreadableImageError, to_rgb

logger = logging.getLogger(__name__)

ZERO_SHOT = "zero-shot"
CLOSED_SET = "closed-set"
QUERY_RULES = ("post", "categories", "all")
# Model types whose processor takes one caption "a. b. c." per image instead of a list of queries.
CAPTION_MODEL_TYPES = ("grounding-dino", "mm-grounding-dino")
# Score thresholds per model type when none is given: the values of the models' own examples.
DEFAULT_THRESHOLDS = {"grounding-dino": 0.3, "mm-grounding-dino": 0.3, "owlv2": 0.1, "owlvit": 0.1, "omdet-turbo": 0.3}
DEFAULT_CLOSED_SET_THRESHOLD = 0.5

# Function words of English tweets; content words are what is left. Small on purpose: a noun that is also listed
# here ("will", "may") is rare as a visual object.
STOP_WORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off
    on once only or other our ours ourselves out over own same she should so some such than that the their theirs
    them themselves then there these they this those through to too under until up very was we were what when where
    which while who whom why will with would you your yours yourself yourselves rt via amp im dont cant wont get got
    gets one two lol omg u ur r thanks thank today tonight
    """.split()
)
_URL = re.compile(r"^(https?://|www\.)", re.IGNORECASE)
_EDGE_PUNCTUATION = re.compile(r"^[^\w#@]+|[^\w]+$")
_HAS_WORD_CHARACTER = re.compile(r"[^\W_]")


@dataclass
class DetectedObject:
    """
    One extracted object.

    Args:
        box (`tuple[int, int, int, int]`): `(x0, y0, x1, y1)` in pixels of the EXIF-upright image, x1/y1 exclusive
            (`image.crop(box)` is the crop).
        score (`float`): the detector's score.
        query (`str`): the query (text-queried detectors) or class name (closed-set detectors) the box belongs to.
        crop (`PIL.Image.Image`, *optional*): the RGB crop, when requested.
    """

    box: tuple[int, int, int, int]
    score: float
    query: str
    crop: Image.Image | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """`{"box": [x0, y0, x1, y1], "score": float, "query": str}`, the form written to JSON and output rows."""
        return {"box": list(self.box), "score": self.score, "query": self.query}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DetectedObject":
        """Inverse of [`DetectedObject.to_dict`]."""
        return cls(box=tuple(int(value) for value in data["box"]), score=float(data["score"]), query=data["query"])


def _clean_word(word: str) -> str:
    """A word without surrounding punctuation, `#` or `@`; empty for a URL."""
    word = word.strip()
    if _URL.match(word):
        return ""
    return _EDGE_PUNCTUATION.sub("", word).lstrip("#@")


def _is_content_word(word: str, cleaned: str) -> bool:
    if word.startswith("@") or _URL.match(word) or not _HAS_WORD_CHARACTER.search(cleaned):
        return False
    if cleaned.replace(",", "").replace(".", "").isdigit():
        return False
    return cleaned.lower() not in STOP_WORDS and len(cleaned) > 1


def _span_text(words: Sequence[str], span: Sequence[int] | None) -> str:
    if span is None:
        return ""
    return " ".join(cleaned for cleaned in (_clean_word(word) for word in words[span[0] : span[1]]) if cleaned)


def post_queries(
    words: Sequence[str] | str,
    head_span: Sequence[int] | None = None,
    tail_span: Sequence[int] | None = None,
    max_queries: int = 16,
) -> list[str]:
    """
    Queries of one post by the `"post"` rule (see the module docstring).

    Args:
        words (`list[str]` or `str`): the post's words (a string is split on whitespace).
        head_span, tail_span (`[start, end)`, *optional*): word offsets of a relation's entities; their texts come
            first.
        max_queries (`int`, *optional*, defaults to 16): at most this many queries.

    Returns:
        `list[str]`: the queries in order, deduplicated case-insensitively.
    """
    if isinstance(words, str):
        words = words.split()
    candidates = [_span_text(words, head_span), _span_text(words, tail_span)]
    run: list[str] = []
    for word in list(words) + [""]:
        cleaned = _clean_word(word)
        if word and _is_content_word(word, cleaned) and cleaned[0].isupper() and not word.startswith("#"):
            run.append(cleaned)
            continue
        if run:
            candidates.append(" ".join(run))
            run = []
        if word and _is_content_word(word, cleaned):
            candidates.append(cleaned)
    queries, seen = [], set()
    for query in candidates:
        if query and query.lower() not in seen:
            seen.add(query.lower())
            queries.append(query)
    return queries[:max_queries]


def select_objects(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    queries: Sequence[str],
    image_size: tuple[int, int],
    threshold: float,
    nms_iou: float,
    min_size: int,
    num_crops: int,
) -> list[DetectedObject]:
    """
    Selects the objects of one image (see the module docstring for the rule).

    Args:
        boxes (`torch.Tensor` of shape `(N, 4)`): `(x0, y0, x1, y1)` in pixels, any float dtype.
        scores (`torch.Tensor` of shape `(N,)`): their scores.
        queries (`list[str]`): the query or class name of each box.
        image_size (`tuple[int, int]`): `(width, height)` of the image.
        threshold (`float`): boxes with a score not above it are dropped.
        nms_iou (`float`): a box whose IoU with a kept box exceeds it is suppressed.
        min_size (`int`): minimum width and height in pixels after rounding and clipping.
        num_crops (`int`): at most this many objects.

    Returns:
        `list[DetectedObject]` without crops, best first.
    """
    width, height = image_size
    boxes = boxes.detach().to("cpu", torch.float64).reshape(-1, 4)
    scores = scores.detach().to("cpu", torch.float64).reshape(-1)
    if len(boxes) != len(scores) or len(boxes) != len(queries):
        raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(queries)} queries do not match.")
    limits = torch.tensor([width, height, width, height], dtype=torch.float64)
    rounded = torch.cat([boxes[:, :2].floor(), boxes[:, 2:].ceil()], dim=1)
    rounded = torch.minimum(rounded.clamp(min=0), limits)
    sizes = rounded[:, 2:] - rounded[:, :2]
    keep = (scores > threshold) & (sizes >= min_size).all(dim=1) & torch.isfinite(scores)
    candidates = [
        (score, tuple(int(value) for value in box), query)
        for score, box, query, kept in zip(scores.tolist(), rounded.tolist(), queries, keep.tolist())
        if kept
    ]
    candidates.sort(key=lambda item: (-item[0], item[1], item[2]))
    if not candidates or num_crops <= 0:
        return []
    ordered = torch.tensor([box for _, box, _ in candidates], dtype=torch.float64)
    iou = box_iou(ordered, ordered)
    suppressed = torch.zeros(len(candidates), dtype=torch.bool)
    selected = []
    for index, (score, box, query) in enumerate(candidates):
        if suppressed[index]:
            continue
        selected.append(DetectedObject(box=box, score=score, query=query))
        if len(selected) == num_crops:
            break
        suppressed |= iou[index] > nms_iou
    return selected


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU matrix `(N, M)` of boxes `(x0, y0, x1, y1)`; 0 where the union is empty."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]).clamp(min=0) * (boxes1[:, 3] - boxes1[:, 1]).clamp(min=0)
    area2 = (boxes2[:, 2] - boxes2[:, 0]).clamp(min=0) * (boxes2[:, 3] - boxes2[:, 1]).clamp(min=0)
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    union = area1[:, None] + area2[None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-12), torch.zeros_like(union))


def open_upright(image: Image.Image | str | os.PathLike, max_pixels: int | None = None) -> tuple[Image.Image, str]:
    """
    Opens an image for extraction: EXIF-upright RGB at full resolution, and its content hash.

    Args:
        image (`PIL.Image.Image`, `str` or `os.PathLike`): a file (hashed by its bytes) or a PIL image (hashed by
            its mode, size and pixels).
        max_pixels (`int`, *optional*): decompression-bomb limit, defaults to `MAX_IMAGE_PIXELS`.

    Returns:
        `(image, sha256 hex digest)`.

    Raises:
        FileNotFoundError: the file does not exist.
        UnreadableImageError: the file cannot be decoded or exceeds `max_pixels`.
    """
    if isinstance(image, Image.Image):
        digest = hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()
        return _upright_rgb(image), digest
    path = os.fspath(image)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image file not found: {path}.")
    with open(path, "rb") as handle:
        data = handle.read()
    max_pixels = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise Image.DecompressionBombError(
                        f"the header declares {width} x {height} pixels, more than the limit of {max_pixels}"
                    )
                opened.load()
                return _upright_rgb(opened), hashlib.sha256(data).hexdigest()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(path, str(error)) from error


def _upright_rgb(image: Image.Image) -> Image.Image:
    """EXIF-rotated RGB by `to_rgb`'s mode rules, without its padding of extreme aspect ratios."""
    upright = ImageOps.exif_transpose(image)
    width, height = upright.size
    rgb = to_rgb(upright)
    if rgb.size != (width, height):
        # to_rgb centred the picture on a white canvas; boxes must be in the picture's own pixels.
        left, top = (rgb.size[0] - width) // 2, (rgb.size[1] - height) // 2
        rgb = rgb.crop((left, top, left + width, top + height))
    return rgb


def _atomic_write_text(path: str, text: str) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)


class MMIBObjectExtractor:
    r"""
    Cuts the object crops of post images with a transformers detector (see the module docstring for the query
    rule, the selection and the cache).

    Build it with [`MMIBObjectExtractor.from_pretrained`] (a Hub id or a saved folder) or
    [`MMIBObjectExtractor.from_dict`] (recorded settings); call it on images.

    Args:
        model ([`PreTrainedModel`]): a zero-shot or closed-set object-detection model.
        processor (`ProcessorMixin` or `BaseImageProcessor`): its processor (zero-shot) or image processor.
        detector (`str`): the id or path it was loaded from (recorded).
        revision (`str`, *optional*): the revision asked for (recorded); the resolved commit is printed.
        query_rule (`str` or callable, *optional*): `"post"`, `"categories"`, `"all"` or a callable; defaults to
            `"post"` for text-queried and `"all"` for closed-set detectors.
        categories (`list[str]`, *optional*): the fixed queries (`"categories"` rule).
        max_queries (`int`, *optional*, defaults to 16): cap of the `"post"` rule.
        threshold (`float`, *optional*): box score threshold; defaults per model type (`DEFAULT_THRESHOLDS`).
        text_threshold (`float`, *optional*, defaults to 0.25): Grounding DINO's token threshold for the label text.
        nms_iou (`float`, *optional*, defaults to 0.5): class-agnostic NMS IoU threshold.
        min_size (`int`, *optional*, defaults to 8): minimum crop width and height in pixels.
        num_crops (`int`, *optional*, defaults to 4): objects per image (the model's crop slots).
        batch_size (`int`, *optional*, defaults to 8): images per detector call.
        cache_dir (`str`, *optional*): folder of the JSON detection cache; `None` = memory only.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        detector: str,
        revision: str | None = None,
        query_rule: str | Callable[..., list[str]] | None = None,
        categories: Sequence[str] | None = None,
        max_queries: int = 16,
        threshold: float | None = None,
        text_threshold: float = 0.25,
        nms_iou: float = 0.5,
        min_size: int = 8,
        num_crops: int = 4,
        batch_size: int = 8,
        cache_dir: str | os.PathLike | None = None,
    ):
        self.model = model.eval()
        self.processor = processor
        self.detector = detector
        self.revision = revision
        self.model_type = model.config.model_type
        self.kind = detector_kind(model.config)
        self.query_rule = query_rule if query_rule is not None else ("post" if self.kind == ZERO_SHOT else "all")
        self.categories = list(categories) if categories is not None else None
        self._check_query_rule()
        for name, value in (("max_queries", max_queries), ("num_crops", num_crops), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < (0 if name == "num_crops" else 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not 0.0 <= nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in [0, 1], got {nms_iou!r}.")
        self.max_queries = max_queries
        if threshold is None:
            threshold = DEFAULT_THRESHOLDS.get(self.model_type, DEFAULT_CLOSED_SET_THRESHOLD)
        self.threshold = float(threshold)
        self.text_threshold = float(text_threshold)
        self.nms_iou = float(nms_iou)
        self.min_size = int(min_size)
        self.num_crops = num_crops
        self.batch_size = batch_size
        self.cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
        self._cache: dict[str, list[DetectedObject]] = {}
        self._announced = False
        self.stats = {
            "images": 0,
            "cache_hits": 0,
            "detected_images": 0,
            "without_objects": 0,
            "no_query": 0,
            "unreadable": 0,
        }

    # ---------------------------------------------------------------------------------------------------------
    # Construction and settings

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        revision: str | None = None,
        trust_remote_code: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        **settings: Any,
    ) -> "MMIBObjectExtractor":
        """
        Loads a detector and its processor from a Hub id or a saved folder.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): Hub id or folder.
            revision (`str`, *optional*): Hub revision (branch, tag or commit).
            trust_remote_code (`bool`, *optional*, defaults to `False`): only when the user asks for it; a detector
                named by a checkpoint is never trusted implicitly.
            device (`str` or `torch.device`, *optional*): defaults to CUDA when available, else CPU.
            dtype (`torch.dtype` or `str`, *optional*): defaults to `torch.float32`.
            settings: the other arguments of [`MMIBObjectExtractor`].

        Raises:
            ValueError: the checkpoint is not an object-detection model.
        """
        detector = os.fspath(pretrained_model_name_or_path)
        loading = {"revision": revision, "trust_remote_code": trust_remote_code}
        config = AutoConfig.from_pretrained(detector, **loading)
        kind = detector_kind(config, detector)
        model_class = AutoModelForZeroShotObjectDetection if kind == ZERO_SHOT else AutoModelForObjectDetection
        processor_class = AutoProcessor if kind == ZERO_SHOT else AutoImageProcessor
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        model = model_class.from_pretrained(detector, dtype=dtype or torch.float32, **loading)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        processor = processor_class.from_pretrained(detector, **loading)
        return cls(model, processor, detector=detector, revision=revision, **settings)

    def to_dict(self) -> dict[str, Any]:
        """
        The settings that decide the crops, as a plain JSON-able dict (to record with a checkpoint).

        Raises:
            ValueError: the query rule is a callable, which cannot be recorded.
        """
        if callable(self.query_rule):
            raise ValueError(
                "A callable query_rule cannot be recorded; record 'post', 'categories' or 'all' instead, or keep "
                "the callable next to the checkpoint's code."
            )
        return {
            "detector": self.detector,
            "revision": self.revision,
            "kind": self.kind,
            "model_type": self.model_type,
            "query_rule": self.query_rule,
            "categories": self.categories,
            "max_queries": self.max_queries,
            "threshold": self.threshold,
            "text_threshold": self.text_threshold,
            "nms_iou": self.nms_iou,
            "min_size": self.min_size,
            "num_crops": self.num_crops,
        }

    @classmethod
    def from_dict(
        cls,
        settings: Mapping[str, Any],
        trust_remote_code: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        **runtime: Any,
    ) -> "MMIBObjectExtractor":
        """
        Loads the detector recorded by [`MMIBObjectExtractor.to_dict`] with the same settings.

        Args:
            settings (`dict`): the recorded settings.
            trust_remote_code, device, dtype: as in [`MMIBObjectExtractor.from_pretrained`].
            runtime: `batch_size`, `cache_dir` (they do not change the crops).

        Raises:
            ValueError: an unknown key, or a detector whose kind or model type differs from the recorded one.
        """
        settings = dict(settings)
        unknown = set(settings) - set(_SETTING_KEYS)
        if unknown:
            raise ValueError(f"Unknown object-extraction settings {sorted(unknown)}; expected {list(_SETTING_KEYS)}.")
        detector = settings.pop("detector")
        kind, model_type = settings.pop("kind", None), settings.pop("model_type", None)
        extractor = cls.from_pretrained(
            detector, trust_remote_code=trust_remote_code, device=device, dtype=dtype, **settings, **runtime
        )
        if (kind, model_type) != (None, None) and (kind, model_type) != (extractor.kind, extractor.model_type):
            raise ValueError(
                f"Detector {detector} is a {extractor.kind} {extractor.model_type} model, but the settings record a "
                f"{kind} {model_type} model."
            )
        return extractor

    def _check_query_rule(self) -> None:
        rule = self.query_rule
        if callable(rule):
            if self.kind == CLOSED_SET:
                raise ValueError("A closed-set detector takes no queries: use query_rule 'all' or 'categories'.")
            return
        if rule not in QUERY_RULES:
            raise ValueError(f"query_rule must be one of {QUERY_RULES} or a callable, got {rule!r}.")
        if rule == "categories" and not self.categories:
            raise ValueError("query_rule 'categories' needs a non-empty `categories` list.")
        if rule != "categories" and self.categories is not None:
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
            missing = [name for name in self.categories if name not in known]
            if missing:
                raise ValueError(f"Categories {missing} are not classes of {self.detector}: {sorted(known)}.")

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
        if self.query_rule == "all":
            return []
        if self.query_rule == "categories":
            return list(self.categories)
        if callable(self.query_rule):
            return [str(query) for query in self.query_rule(words, head_span, tail_span)]
        return post_queries(words or [], head_span, tail_span, self.max_queries)

    def _fingerprint(self) -> str:
        """What, beyond the image and the queries, decides the detections: the settings and the weights' identity."""
        if not hasattr(self, "_fingerprint_value"):
            settings = {key: value for key, value in vars(self).items() if key in _SETTING_KEYS}
            settings["query_rule"] = "callable" if callable(self.query_rule) else self.query_rule
            settings["commit"] = getattr(self.model.config, "_commit_hash", None)
            if os.path.isdir(self.detector):
                settings["files"] = sorted(
                    (entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
                    for entry in os.scandir(self.detector)
                    if entry.is_file()
                )
            self._fingerprint_value = json.dumps(settings, sort_keys=True, default=str)
        return self._fingerprint_value

    def cache_key(self, image_sha256: str, queries: Sequence[str]) -> str:
        """SHA-256 of the image content, the settings and the queries."""
        payload = json.dumps([image_sha256, self._fingerprint(), list(queries)])
        return hashlib.sha256(payload.encode()).hexdigest()

    def _cached(self, key: str) -> list[DetectedObject] | None:
        if key in self._cache:
            return self._cache[key]
        if self.cache_dir is None:
            return None
        path = os.path.join(self.cache_dir, key[:2], f"{key}.json")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as handle:
            objects = [DetectedObject.from_dict(item) for item in json.load(handle)["objects"]]
        self._cache[key] = objects
        return objects

    def _store(self, key: str, image_sha256: str, queries: Sequence[str], objects: list[DetectedObject]) -> None:
        self._cache[key] = objects
        if self.cache_dir is None:
            return
        folder = os.path.join(self.cache_dir, key[:2])
        os.makedirs(folder, exist_ok=True)
        record = {"image_sha256": image_sha256, "queries": list(queries), "objects": [o.to_dict() for o in objects]}
        _atomic_write_text(os.path.join(folder, f"{key}.json"), json.dumps(record))

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
    ) -> list[list[DetectedObject] | None]:
        """
        Extracts the objects of images.

        Args:
            images (`list`): image files or PIL images.
            words (`list`, *optional*): each image's post words (the `"post"` rule needs them).
            head_spans, tail_spans (`list`, *optional*): each post's relation entity spans, or `None`.
            return_crops (`bool`, *optional*, defaults to `True`): cut the crops (`DetectedObject.crop`).
            on_unreadable (`str`, *optional*, defaults to `"raise"`): for a missing or undecodable file, `"raise"`
                the error or `"mask"`: log a warning naming the file, count it in `stats["unreadable"]` and give
                `None` for that image.

        Returns:
            One list of [`DetectedObject`] per image, best first, at most `num_crops`; empty when nothing passes the
            selection or the post has no query (both counted in `stats`); `None` for a masked unreadable image.

        Raises:
            FileNotFoundError, UnreadableImageError: an image file is missing or cannot be decoded (`"raise"`).
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
        opened: list[tuple[Image.Image, str] | None] = []
        for image in images:
            try:
                opened.append(open_upright(image))
            except (FileNotFoundError, UnreadableImageError) as error:
                if on_unreadable == "raise":
                    raise
                logger.warning("No objects for an unreadable image: %s", error)
                self.stats["unreadable"] += 1
                opened.append(None)
        readable = [index for index, item in enumerate(opened) if item is not None]
        results: list[list[DetectedObject] | None] = [None] * count
        extracted = self._extract(
            [opened[i] for i in readable],
            [self.queries_for(words[i], head_spans[i], tail_spans[i]) for i in readable],
            return_crops,
        )
        for index, objects in zip(readable, extracted):
            results[index] = objects
        return results

    def _extract(
        self, opened: list[tuple[Image.Image, str]], queries: list[list[str]], return_crops: bool
    ) -> list[list[DetectedObject]]:
        """Detections of opened images (cache first, then batched detector calls), with crops if asked."""
        keys = [self.cache_key(digest, post_queries_) for (_, digest), post_queries_ in zip(opened, queries)]
        results: list[list[DetectedObject] | None] = []
        pending: dict[str, int] = {}
        for index, key in enumerate(keys):
            self.stats["images"] += 1
            cached = self._cached(key)
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
        todo = list(pending.values())
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            detected = self._detect([opened[i][0] for i in batch], [queries[i] for i in batch])
            for index, objects in zip(batch, detected):
                self._store(keys[index], opened[index][1], queries[index], objects)
        final = []
        for index, cached in enumerate(results):
            objects = cached if cached is not None else self._cache[keys[index]]
            if not objects:
                self.stats["without_objects"] += 1
            image = opened[index][0]
            final.append(
                [
                    DetectedObject(o.box, o.score, o.query, image.crop(o.box) if return_crops else None)
                    for o in objects
                ]
            )
        return final

    def _announce(self) -> None:
        if self._announced:
            return
        self._announced = True
        commit = getattr(self.model.config, "_commit_hash", None)
        source = "local folder" if os.path.isdir(self.detector) else f"revision {self.revision or 'main'}"
        logger.warning(
            "Object extraction with %s (%s, commit %s; %s %s, query rule %s, threshold %s, %d crops) on %s/%s",
            self.detector,
            source,
            commit or "unknown",
            self.kind,
            self.model_type,
            "callable" if callable(self.query_rule) else self.query_rule,
            self.threshold,
            self.num_crops,
            self.device,
            self.dtype,
        )

    @torch.inference_mode()
    def _detect(self, images: list[Image.Image], queries: list[list[str]]) -> list[list[DetectedObject]]:
        """One detector call on a batch; returns the selected objects of each image."""
        self._announce()
        self.stats["detected_images"] += len(images)
        target_sizes = [(image.height, image.width) for image in images]
        if self.kind == ZERO_SHOT:
            if self.model_type in CAPTION_MODEL_TYPES:
                text = [". ".join(query.replace(".", " ").strip().lower() for query in qs) + "." for qs in queries]
                inputs = self.processor(images=images, text=text, return_tensors="pt", padding=True)
            else:
                inputs = self.processor(images=images, text=[list(qs) for qs in queries], return_tensors="pt")
        else:
            inputs = self.processor(images=images, return_tensors="pt")
        inputs = inputs.to(self.device)
        inputs = {
            name: value.to(self.dtype) if torch.is_floating_point(value) else value for name, value in inputs.items()
        }
        outputs = self.model(**inputs)
        # Half-precision boxes scaled to thousands of pixels would be off by many pixels.
        for name, value in outputs.items():
            if isinstance(value, torch.Tensor) and torch.is_floating_point(value):
                outputs[name] = value.float()
        processed = self._post_process(outputs, inputs, target_sizes)
        selected = []
        for result, image, image_queries in zip(processed, images, queries):
            boxes, scores, labels = self._boxes_and_labels(result, image_queries)
            selected.append(
                select_objects(
                    boxes,
                    scores,
                    labels,
                    image.size,
                    self.threshold,
                    self.nms_iou,
                    self.min_size,
                    self.num_crops,
                )
            )
        return selected

    def _post_process(self, outputs: Any, inputs: Mapping[str, Any], target_sizes: list[tuple[int, int]]) -> list:
        if self.kind == CLOSED_SET:
            return self.processor.post_process_object_detection(
                outputs, threshold=self.threshold, target_sizes=target_sizes
            )
        post_process = self.processor.post_process_grounded_object_detection
        parameters = inspect.signature(post_process).parameters
        arguments: dict[str, Any] = {"threshold": self.threshold, "target_sizes": target_sizes}
        if "input_ids" in parameters and "input_ids" in inputs:
            arguments["input_ids"] = inputs["input_ids"]
        if "text_threshold" in parameters:
            arguments["text_threshold"] = self.text_threshold
        return post_process(outputs, **arguments)

    def _boxes_and_labels(
        self, result: Mapping[str, Any], queries: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Boxes, scores and the query of each box; boxes of no real query or class are dropped."""
        boxes, scores = result["boxes"], result["scores"]
        if self.kind == CLOSED_SET:
            names = [self.model.config.id2label.get(int(label), str(int(label))) for label in result["labels"]]
            keep = [index for index, name in enumerate(names) if self.categories is None or name in self.categories]
        elif self.model_type in CAPTION_MODEL_TYPES:
            by_text = {query.replace(".", " ").strip().lower(): query for query in queries}
            names = [_caption_label(label, by_text) for label in result["text_labels"]]
            keep = list(range(len(names)))
        else:
            # The processor pads every image's query list to the batch's longest with blank queries; a box whose
            # best query is such padding belongs to no query of this image.
            labels = [int(label) for label in result["labels"]]
            names = [queries[label] if label < len(queries) else "" for label in labels]
            keep = [index for index, label in enumerate(labels) if label < len(queries)]
        index = torch.tensor(keep, dtype=torch.long)
        return boxes.reshape(-1, 4)[index], scores.reshape(-1)[index], [names[i] for i in keep]


def _caption_label(label: str, by_text: Mapping[str, str]) -> str:
    """The query a Grounding DINO label text (the caption tokens above `text_threshold`) names, else the text."""
    text = re.sub(r"\[(CLS|SEP|PAD)\]", " ", label)
    text = " ".join(text.replace(" .", ".").strip(" .").split())
    return by_text.get(text, text)


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


_SETTING_KEYS = (
    "detector",
    "revision",
    "kind",
    "model_type",
    "query_rule",
    "categories",
    "max_queries",
    "threshold",
    "text_threshold",
    "nms_iou",
    "min_size",
    "num_crops",
)


__all__ = [
    "DetectedObject",
    "MMIBObjectExtractor",
    "box_iou",
    "detector_kind",
    "open_upright",
    "post_queries",
    "select_objects",
]
