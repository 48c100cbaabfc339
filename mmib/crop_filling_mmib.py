"""
Object crops for posts at prediction time (paper §III-B2): a post that brings an image and no `crops` gets its crops
cut by the object extractor its checkpoint records (`processor.object_extraction`, see `object_extraction_mmib`),
or by the detector the user names; a post with its own crops keeps them. [`CropFiller`] holds that policy for one
predictor: which extractor (loaded at first use), and the once-per-predictor warning when a checkpoint with crop
slots records no extractor.

Travels with checkpoints as remote code: it imports only torch, the standard library and its `*_mmib.py` siblings.
"""

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from .object_extraction_mmib import MMIBObjectExtractor
from .posts_mmib import PreparedPost

logger = logging.getLogger(__name__)

__all__ = ["CropFiller", "missing_crops_message", "with_objects"]


class CropFiller:
    """
    Fills the crop slots of posts that bring an image and no crops.

    Args:
        num_crops (`int`): the checkpoint's crop slots (0: nothing to fill).
        recorded (`dict`, *optional*): the checkpoint's recorded extractor settings (`processor.object_extraction`).
        object_detector (`str` or `bool`, *optional*): `None` or `True`: the recorded extractor, none if the
            checkpoint records none; a Hub id or folder: that detector, with the recorded settings if it is the
            recorded detector, else its defaults and the checkpoint's `num_crops`; `False`: no extraction (and no
            warning about missing crops).
        trust_remote_code (`bool`, *optional*, defaults to `False`): load the detector's own code; never implied by
            the checkpoint.
        extractor ([`MMIBObjectExtractor`], *optional*): an extractor built by the caller (overrides the rest).
    """

    def __init__(
        self,
        num_crops: int,
        recorded: dict[str, Any] | None = None,
        object_detector: str | bool | None = None,
        trust_remote_code: bool = False,
        extractor: MMIBObjectExtractor | None = None,
    ):
        self.num_crops = num_crops
        self.recorded = recorded
        self.object_detector = object_detector
        self.trust_remote_code = trust_remote_code
        self._extractor = extractor
        self.resolved = extractor is not None
        self._warned = False

    def settings(self) -> dict[str, Any] | None:
        """
        The extractor settings posts without crops get, in the recorded form of [`MMIBObjectExtractor.to_dict`]
        (`num_crops` at most the checkpoint's), `None` for none (see the class docstring).
        """
        if self.num_crops == 0 or self.object_detector is False:
            return None
        if self.object_detector in (None, True):
            settings = None if self.recorded is None else dict(self.recorded)
        elif self.recorded is not None and self.recorded.get("detector") == os.fspath(self.object_detector):
            settings = dict(self.recorded)
        else:
            settings = {"detector": os.fspath(self.object_detector)}
        if settings is not None:
            settings["num_crops"] = min(settings.get("num_crops", self.num_crops), self.num_crops)
        return settings

    def extractor(self, device: torch.device, dtype: torch.dtype | None = None) -> MMIBObjectExtractor | None:
        """
        The extractor for posts without crops, loaded on `device` at first use (`None`: no extraction). Its detector
        runs in float32 when the predictor's compute `dtype` is float32 (e.g. for parity with a float32 run), else
        by the detector's own `"auto"` rule: bfloat16 where `device` multiplies it natively and the detector has no
        deformable attention (a bfloat16 Grounding DINO or RT-DETR forward returned NaN on the CPU), float32
        otherwise.
        """
        if not self.resolved:
            self.resolved = True
            settings = self.settings()
            if settings is not None:
                logger.warning(
                    "Loading object detector %s (revision %s)%s, trust_remote_code=%s.",
                    settings["detector"],
                    settings.get("revision") or "main",
                    " recorded by the checkpoint" if self.object_detector in (None, True) else "",
                    self.trust_remote_code,
                )
                runtime = {"trust_remote_code": self.trust_remote_code, "device": device}
                if dtype == torch.float32:
                    runtime["dtype"] = "float32"
                self._extractor = MMIBObjectExtractor.from_dict(settings, **runtime)
        return self._extractor

    def add_objects(
        self, posts: Sequence[PreparedPost], device: torch.device, dtype: torch.dtype | None = None
    ) -> None:
        """
        Cuts the crops of posts (without error) that bring an image and no crops, and records them in
        `post.objects`; posts with their own crops, cached image features or extracted objects are left alone.
        Without an extractor, warns once that the checkpoint's crop slots stay empty.
        """
        todo = [
            post
            for post in posts
            if post.error is None
            and post.image is not None
            and not post.crops
            and post.objects is None
            and not any(slot > 0 for slot in post.cached_features)
        ]
        if not todo or self.num_crops == 0:
            return
        extractor = self.extractor(device, dtype)
        if extractor is None:
            if self.object_detector is not False and not self._warned:
                self._warned = True
                logger.warning(missing_crops_message(self.num_crops))
            return
        # The detector failing on an image (it already decoded) must not cost the post its row: the post keeps its
        # whole image and gets no crops; the extractor warns naming the image and counts it (`stats["failed"]`).
        found = extractor(
            [post.image for post in todo],
            words=[post.words for post in todo],
            head_spans=[post.head for post in todo],
            tail_spans=[post.tail for post in todo],
            on_unreadable="mask",
        )
        for post, objects in zip(todo, found):
            objects = (objects or [])[: self.num_crops]
            post.crops = [item.crop for item in objects]
            post.objects = [item.to_dict() for item in objects]


def missing_crops_message(num_crops: int) -> str:
    """The once-per-predictor warning: a checkpoint with crop slots, no recorded extractor, posts without crops."""
    return (
        f"This checkpoint was trained with {num_crops} object crops per post taken from its dataset (no object "
        "extractor is recorded with it), but posts here bring an image and no crops: they get the whole image only "
        f"and {num_crops} empty crop slots. Pass --object_detector ID_OR_PATH (MMIBPredictor.from_pretrained("
        "object_detector=...)) to cut crops with a detector, give each post its `crops`, or pass "
        "--no_object_detector to silence this."
    )


def with_objects(post: PreparedPost, row: dict) -> dict:
    """`row` with the post's extracted `objects` (when it has any and is not an error row)."""
    if post.objects is not None and "error" not in row:
        row["objects"] = post.objects
    return row
