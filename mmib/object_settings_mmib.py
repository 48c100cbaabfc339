"""
The settings of object extraction: one dataclass, [`ObjectExtractionSettings`], behind every entry point.

- `mmib extract-objects` gets one flag per field, with the field's name and default ([`add_arguments`]);
- `train_mmib.py` / `mmib train` gets one `object_<name>` field per field, with the same default
  ([`arguments_dataclass`]), except `num_crops`, which is the model's (`--num_crops`);
- a checkpoint records the fields that decide the crops (`RECORDED_FIELDS`) in its processor's `object_extraction`
  ([`ObjectExtractionSettings.to_dict`] / [`ObjectExtractionSettings.from_dict`]; the extractor adds the detector's
  `kind` and `model_type`);
- the detection cache is keyed by the fields that decide the detections (`DETECTION_FIELDS`: the recorded ones and
  the detector's dtype);
- the predictor loads the recorded settings, with its own device and the checkpoint's `num_crops`.

`query_rule` and `threshold` default to `None`: the detector family's own (see `object_detectors_mmib`); the
extractor records the value it resolved.

Travels with checkpoints as remote code: it imports only the standard library and its `*_mmib.py` siblings.
"""

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .object_queries_mmib import QUERY_RULES

__all__ = [
    "DETECTION_FIELDS",
    "DETECTOR_DTYPES",
    "RECORDED_FIELDS",
    "ObjectExtractionSettings",
    "add_arguments",
    "arguments_dataclass",
]

DETECTOR_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _setting(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    metadata = {"help": help} if choices is None else {"help": help, "choices": choices}
    return field(default=default, metadata=metadata)


@dataclass
class ObjectExtractionSettings:
    """
    How posts' images become object crops (see `object_extraction_mmib` for the rule each field enters).

    Args:
        detector (`str`, *optional*): Hub id or folder of a transformers object detector.
        revision (`str`, *optional*): Hub revision (branch, tag or commit) of the detector.
        trust_remote_code (`bool`, *optional*, defaults to `False`): run the detector repository's own code; never
            recorded, never implied by a checkpoint.
        query_rule (`str` or callable, *optional*): `"post"`, `"categories"`, `"all"` or a callable `(words,
            head_span, tail_span) -> list[str]` (not recordable); defaults to the detector family's.
        categories (`list[str]`, *optional*): the fixed queries or classes of the `"categories"` rule.
        max_queries (`int`, *optional*, defaults to 16): queries per post of the `"post"` rule.
        threshold (`float`, *optional*): box score threshold; defaults to the detector type's own.
        text_threshold (`float`, *optional*, defaults to 0.25): Grounding DINO's label-text threshold.
        nms_iou (`float`, *optional*, defaults to 0.5): class-agnostic NMS IoU threshold.
        min_size (`int`, *optional*, defaults to 8): minimum crop width and height in pixels.
        input_size (`list[int]`, *optional*): `[shortest_edge, longest_edge]` the detector's image processor resizes
            each image to (fewer pixels: faster, smaller objects missed); defaults to the processor's own. Only for
            detectors whose processor resizes by its edges (DETR, Grounding DINO, YOLOS, ...), not to a fixed size.
        num_crops (`int`, *optional*, defaults to 4): objects per image (the model's crop slots: NER 4, RE 3).
        batch_size (`int`, *optional*, defaults to 8): images of one size per detector call (images of other sizes
            are never padded to one another).
        device (`str`, *optional*): `cuda`, `cuda:1`, `cpu`, ...; defaults to this process's GPU when present.
        dtype (`str`, *optional*, defaults to `"auto"`): the detector's weights; `"auto"`: bfloat16 where the device
            multiplies it natively (`checkpoints_mmib.native_bf16`), else float32. Post-processing is in float32.
        cache_dir (`str`, *optional*): folder of the JSON detection cache; `None`: in memory only (the commands
            default to a `cache` folder beside their output).

    Raises:
        ValueError: a value out of range or of the wrong kind, naming the field.
    """

    detector: str | None = _setting(None, "Hub id or folder of a transformers object detector.")
    revision: str | None = _setting(None, "Hub revision (branch, tag or commit) of the detector.")
    trust_remote_code: bool = _setting(False, "Run the detector repository's own code (only if you trust it).")
    query_rule: str | None = _setting(
        None, "post | categories | all (default: post for text-queried detectors, all for closed-set).", QUERY_RULES
    )
    categories: list[str] | None = _setting(None, "The fixed queries or classes of the query rule categories.")
    max_queries: int = _setting(16, "Queries per post of the post rule.")
    threshold: float | None = _setting(None, "Box score threshold (default: the detector type's own).")
    text_threshold: float = _setting(0.25, "Grounding DINO's label-text threshold.")
    nms_iou: float = _setting(0.5, "Class-agnostic NMS IoU threshold.")
    min_size: int = _setting(8, "Minimum crop width and height in pixels.")
    input_size: list[int] | None = _setting(
        None, "SHORTEST LONGEST: the detector's input edges in pixels (default: its image processor's)."
    )
    num_crops: int = _setting(4, "Crops per image (the model's slots: NER 4, RE 3).")
    batch_size: int = _setting(8, "Images of one size per detector call.")
    device: str | None = _setting(None, "cuda, cuda:1, cpu, ... (default: this process's GPU when present).")
    dtype: str = _setting(
        "auto",
        "The detector's weights (auto: bfloat16 where the device runs it natively, else float32).",
        DETECTOR_DTYPES,
    )
    cache_dir: str | None = _setting(
        None, "Detection cache by image content (default: a cache folder beside the command's output)."
    )

    def __post_init__(self) -> None:
        if self.detector is not None:
            self.detector = str(self.detector)
        if self.device is not None:
            self.device = str(self.device)
        if self.cache_dir is not None:
            self.cache_dir = str(self.cache_dir)
        self.dtype = str(self.dtype).removeprefix("torch.")
        if self.dtype not in DETECTOR_DTYPES:
            raise ValueError(f"dtype must be one of {DETECTOR_DTYPES}, got {self.dtype!r}.")
        if self.query_rule is not None and not callable(self.query_rule) and self.query_rule not in QUERY_RULES:
            raise ValueError(f"query_rule must be one of {QUERY_RULES} or a callable, got {self.query_rule!r}.")
        if self.categories is not None:
            if isinstance(self.categories, str) or not all(isinstance(name, str) for name in self.categories):
                raise ValueError(f"categories must be a list of strings, got {self.categories!r}.")
            self.categories = list(self.categories)
        for name, smallest in (("max_queries", 1), ("num_crops", 0), ("batch_size", 1), ("min_size", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
                raise ValueError(f"{name} must be an integer of at least {smallest}, got {value!r}.")
        for name in ("threshold", "text_threshold", "nms_iou"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, float(value))
        if not 0.0 <= self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in [0, 1], got {self.nms_iou!r}.")
        if self.input_size is not None:
            edges = list(self.input_size)
            if len(edges) != 2 or not all(isinstance(edge, int) and not isinstance(edge, bool) for edge in edges):
                raise ValueError(
                    f"input_size must be [shortest_edge, longest_edge] in pixels, got {self.input_size!r}."
                )
            if not 0 < edges[0] <= edges[1]:
                raise ValueError(f"input_size must be 0 < shortest_edge <= longest_edge, got {self.input_size!r}.")
            self.input_size = edges

    def to_dict(self) -> dict[str, Any]:
        """
        The recorded fields (`RECORDED_FIELDS`) as a plain JSON-able dict.

        Raises:
            ValueError: the query rule is a callable, which cannot be recorded.
        """
        if callable(self.query_rule):
            raise ValueError(
                "A callable query_rule cannot be recorded; record 'post', 'categories' or 'all' instead, or keep "
                "the callable next to the checkpoint's code."
            )
        return {name: getattr(self, name) for name in RECORDED_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **runtime: Any) -> "ObjectExtractionSettings":
        """
        Inverse of [`to_dict`]: the recorded fields, plus `runtime` fields (`device`, `dtype`, `batch_size`,
        `cache_dir`, `trust_remote_code`) that a record never holds. Records written by earlier versions (the same
        keys, or fewer) load; missing fields take their defaults.

        Raises:
            ValueError: a key that is not a recorded field, or a recorded field given as `runtime`.
        """
        unknown = set(data) - set(RECORDED_FIELDS)
        if unknown:
            raise ValueError(
                f"Unknown object-extraction settings {sorted(unknown)}; expected {list(RECORDED_FIELDS)}."
            )
        recorded = set(runtime) & set(RECORDED_FIELDS)
        if recorded:
            raise ValueError(f"{sorted(recorded)} are recorded settings, not run-time ones.")
        return cls(**data, **runtime)

    def detection_values(self) -> dict[str, Any]:
        """The fields that decide the detections (`DETECTION_FIELDS`), for the detection cache's key."""
        values = {name: getattr(self, name) for name in DETECTION_FIELDS}
        values["query_rule"] = "callable" if callable(self.query_rule) else self.query_rule
        return values

    @classmethod
    def from_namespace(cls, namespace: Any, prefix: str = "", **overrides: Any) -> "ObjectExtractionSettings":
        """
        Settings from the attributes `<prefix><field>` of parsed arguments (an `argparse.Namespace` of
        [`add_arguments`], or the training's `DataArguments`); `overrides` win (e.g. the model's `num_crops`).
        """
        values = {
            item.name: getattr(namespace, prefix + item.name)
            for item in dataclasses.fields(cls)
            if hasattr(namespace, prefix + item.name)
        }
        return cls(**{**values, **overrides})

    def replace(self, **changes: Any) -> "ObjectExtractionSettings":
        """A copy with `changes`."""
        return dataclasses.replace(self, **changes)


# What a checkpoint records: what decides the crops, nothing about where or how fast they are computed.
RECORDED_FIELDS = (
    "detector",
    "revision",
    "query_rule",
    "categories",
    "max_queries",
    "threshold",
    "text_threshold",
    "nms_iou",
    "min_size",
    "input_size",
    "num_crops",
)
# What decides the detections of an image, beyond the image, its queries and the weights: the detection cache's key.
DETECTION_FIELDS = RECORDED_FIELDS + ("dtype",)


def _argument_kwargs(item: dataclasses.Field) -> dict[str, Any]:
    """`add_argument` keywords for one settings field: its type, default, help and choices."""
    kwargs: dict[str, Any] = {"default": item.default, **item.metadata}
    if item.type is bool:
        kwargs["action"] = "store_true"
    elif item.type == list[str] | None:
        kwargs["nargs"] = "+"
    elif item.type == list[int] | None:
        kwargs.update(nargs=2, type=int, metavar=("SHORTEST", "LONGEST"))
    else:
        kwargs["type"] = {int: int, float: float, float | None: float}.get(item.type, str)
    return kwargs


def add_arguments(
    parser: argparse.ArgumentParser, prefix: str = "", skip: tuple[str, ...] = (), required: tuple[str, ...] = ()
) -> None:
    """
    Adds one flag `--<prefix><field>` per settings field to `parser`, with the field's default, help and choices.

    Args:
        parser (`argparse.ArgumentParser`): the command's parser.
        prefix (`str`, *optional*): prepended to every flag name.
        skip (`tuple[str, ...]`, *optional*): fields the command sets otherwise.
        required (`tuple[str, ...]`, *optional*): fields the command needs (e.g. `detector`).
    """
    for item in dataclasses.fields(ObjectExtractionSettings):
        if item.name in skip:
            continue
        kwargs = _argument_kwargs(item)
        if item.name in required:
            kwargs = {**kwargs, "required": True}
            kwargs.pop("default")
        parser.add_argument(f"--{prefix}{item.name}", **kwargs)


def arguments_dataclass(name: str, prefix: str, skip: tuple[str, ...] = ()) -> type:
    """
    A dataclass for `transformers.HfArgumentParser` with one field `<prefix><field>` per settings field (type,
    default, help and choices of the settings field), to be subclassed by a command's arguments.
    """
    fields: list[tuple[str, Any, Any]] = []
    for item in dataclasses.fields(ObjectExtractionSettings):
        if item.name not in skip:
            fields.append((prefix + item.name, item.type, field(default=item.default, metadata=dict(item.metadata))))
    return dataclasses.make_dataclass(name, fields)
