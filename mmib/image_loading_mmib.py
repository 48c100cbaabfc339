"""
Image loading for MMIB: the one loader, with the one unreadable-file policy, used by the processor, the image feature
cache (`mmib.features`) and prediction.

Policy for an image given as a file path that cannot be turned into pixels (the file is missing, or it exists but
PIL cannot decode it: corrupt, truncated, not an image):

- `on_unreadable="raise"` (the default, and what [`MMIBProcessor`] does with the images a caller hands it): a
  missing file raises `FileNotFoundError`, an undecodable one raises [`UnreadableImageError`] (a `ValueError`);
  both messages name the file and, with `where`, the field and post it came from.
- `on_unreadable="mask"` (for data sets, where one bad file must not stop a run: the feature cache and the training
  collator): a warning names the file and `load_image` returns `None`, so the caller masks the slot exactly like an
  absent image and counts the file (e.g. `ImageFeatureStore.unreadable`).

This file travels to the Hub as remote code next to `processing_mmib.py`: it imports only torch, transformers, PIL
and the standard library.
"""

import logging
import os
from collections.abc import Sequence
from typing import Any, Literal

import torch
from PIL import Image
from transformers import BaseImageProcessor

logger = logging.getLogger(__name__)

ImageLike = Image.Image | str | os.PathLike | None
UNREADABLE_POLICIES = ("raise", "mask")


class UnreadableImageError(ValueError):
    """
    An image file exists but cannot be decoded.

    Args:
        path (`str`): the file.
        reason (`str`): what the decoder reported.
        where (`str`, *optional*): which input it was, e.g. `"images, post 3"`.
    """

    def __init__(self, path: str, reason: str, where: str = ""):
        self.path = path
        location = f" ({where})" if where else ""
        super().__init__(f"Cannot read image file {path}{location}: {reason}")


def load_image(
    image: ImageLike, where: str = "", on_unreadable: Literal["raise", "mask"] = "raise"
) -> Image.Image | None:
    r"""
    Loads one image as RGB, following the module's unreadable-file policy.

    Args:
        image (`PIL.Image.Image`, `str`, `os.PathLike` or `None`):
            A PIL image (converted to RGB), an image file path, or `None` for no image.
        where (`str`, *optional*):
            Which input this is, for the messages, e.g. `"crops[0][1], post 0"`.
        on_unreadable (`str`, *optional*, defaults to `"raise"`):
            `"raise"`: a missing file raises `FileNotFoundError` and an undecodable file [`UnreadableImageError`].
            `"mask"`: both are logged with a warning naming the file and give `None`.

    Returns:
        `PIL.Image.Image` in RGB mode, or `None` (no image, or an unreadable file under `"mask"`).

    Raises:
        FileNotFoundError: the path does not exist (`"raise"` only).
        UnreadableImageError: the file cannot be decoded (`"raise"` only).
        TypeError: `image` is neither a PIL image, a path nor `None`.
        ValueError: unknown `on_unreadable`.
    """
    if on_unreadable not in UNREADABLE_POLICIES:
        raise ValueError(f"on_unreadable must be one of {UNREADABLE_POLICIES}, got {on_unreadable!r}.")
    if image is None:
        return None
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not isinstance(image, str | os.PathLike):
        location = f"{where}: " if where else ""
        raise TypeError(
            f"{location}an image must be a PIL.Image.Image, a file path or None, got {type(image).__name__}."
        )
    path = os.fspath(image)
    location = f" ({where})" if where else ""
    if not os.path.isfile(path):
        if on_unreadable == "mask":
            logger.warning("Image file not found, masked like an absent image: %s%s", path, location)
            return None
        raise FileNotFoundError(f"Image file not found: {path}{location}.")
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    # PIL signals a bad file with OSError (truncated, unknown format), SyntaxError or ValueError (bad headers) and
    # DecompressionBombError (absurd size).
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        if on_unreadable == "mask":
            logger.warning("Cannot decode image file, masked like an absent image: %s%s (%s)", path, location, error)
            return None
        raise UnreadableImageError(path, str(error), where) from error


def encode_post_images(
    image_processor: BaseImageProcessor,
    images: list[Any],
    crops: list[Any],
    num_crops: int,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """
    Loads the whole image and the first `num_crops` crops of every post and runs the image processor once on all of
    them.

    Args:
        image_processor ([`BaseImageProcessor`]): turns PIL images into `pixel_values`.
        images (`list`): one image-like (see [`load_image`]) per post.
        crops (`list`): one list of image-likes (or `None`) per post.
        num_crops (`int`): crop slots per post.

    Returns:
        `(pixel_values, image_mask)`: `(B, 1 + num_crops, 3, H, W)` with zeros in absent slots (`None` when no post
        has any image) and `(B, 1 + num_crops)` bool, `True` where an image is present.
    """
    num_slots = 1 + num_crops
    present, slots = [], []
    for index, (image, post_crops) in enumerate(zip(images, crops)):
        loaded = load_image(image, f"images, post {index}")
        if loaded is not None:
            present.append(loaded)
            slots.append((index, 0))
        if post_crops is None:
            continue
        if isinstance(post_crops, str | os.PathLike | Image.Image) or not isinstance(post_crops, Sequence):
            raise TypeError(f"crops[{index}] (post {index}) must be a list of crops, got {type(post_crops).__name__}.")
        for slot, crop in enumerate(post_crops[:num_crops], start=1):
            loaded = load_image(crop, f"crops[{index}][{slot - 1}], post {index}")
            if loaded is not None:
                present.append(loaded)
                slots.append((index, slot))

    image_mask = torch.zeros((len(images), num_slots), dtype=torch.bool)
    if not present:
        return None, image_mask
    processed = image_processor(images=present, return_tensors="pt")["pixel_values"]
    pixel_values = torch.zeros((len(images), num_slots, *processed.shape[1:]), dtype=processed.dtype)
    for (index, slot), values in zip(slots, processed):
        pixel_values[index, slot] = values
        image_mask[index, slot] = True
    return pixel_values, image_mask


__all__ = ["ImageLike", "UnreadableImageError", "encode_post_images", "load_image"]
