"""
Boxes of object extraction (see `object_extraction_mmib`): [`DetectedObject`], and the selection of one image's
objects from a detector's boxes ([`select_objects`]: rounding outwards and clipping to the image, a minimum size,
ordering, class-agnostic NMS, the top `num_crops`).

The rule, checked against brute force in the tests: each box is rounded outwards to whole pixels and clipped: `x0 =
max(0, floor(x0))`, `y0 = max(0, floor(y0))`, `x1 = min(width, ceil(x1))`, `y1 = min(height, ceil(y1))` (so the crop
`image.crop(box)` contains the whole predicted box and nothing outside the image); boxes narrower or lower than
`min_size` pixels (and at least one pixel, so `0 <= x0 < x1 <= width`, `0 <= y0 < y1 <= height`), or whose coordinates
or score are not finite, are dropped; the rest are ordered by score (descending), ties by `(x0, y0, x1, y1)` then
query; greedy class-agnostic NMS in that order drops a box whose IoU with a kept one exceeds `nms_iou`, and stops at
`num_crops` kept boxes (the same as NMS followed by the top `num_crops`).

Travels with checkpoints as remote code: it imports only torch, PIL and the standard library.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

__all__ = ["DetectedObject", "box_iou", "round_and_clip", "select_objects", "shift_boxes"]


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
    boxes = boxes.detach().to("cpu", torch.float64).reshape(-1, 4)
    scores = scores.detach().to("cpu", torch.float64).reshape(-1)
    if len(boxes) != len(scores) or len(boxes) != len(queries):
        raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(queries)} queries do not match.")
    rounded = round_and_clip(boxes, image_size)
    sizes = rounded[:, 2:] - rounded[:, :2]
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
    # A box must keep at least one pixel inside the image (0 <= x0 < x1 <= width), whatever `min_size`.
    keep = (scores > threshold) & (sizes >= max(min_size, 1)).all(dim=1) & finite
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


def shift_boxes(boxes: torch.Tensor, offset: tuple[int, int]) -> torch.Tensor:
    """Boxes `(N, 4)` found in an image padded at `offset` `(left, top)`, in the pixels of the image itself."""
    left, top = offset
    return boxes.reshape(-1, 4) - torch.tensor([left, top, left, top], dtype=boxes.dtype, device=boxes.device)


def round_and_clip(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """
    Boxes `(N, 4)` `(x0, y0, x1, y1)` rounded outwards to whole pixels and clipped to an image of `image_size`
    `(width, height)`, in float64.
    """
    width, height = image_size
    boxes = boxes.to(torch.float64).reshape(-1, 4)
    limits = torch.tensor([width, height, width, height], dtype=torch.float64)
    rounded = torch.cat([boxes[:, :2].floor(), boxes[:, 2:].ceil()], dim=1)
    return torch.minimum(rounded.clamp(min=0), limits)
