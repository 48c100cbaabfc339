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

A decompression bomb (a small file whose header declares more than `MAX_IMAGE_PIXELS` pixels, checked before any
pixel is decoded) counts as undecodable: [`UnreadableImageError`] naming the file and its declared size, or the
masked fallback. The limit defaults to 89,478,485 pixels (PIL's own warning threshold, about 9459 x 9459); set the
environment variable `MMIB_MAX_IMAGE_PIXELS` or pass `max_pixels` to change it. PIL's own
`DecompressionBombWarning`/`DecompressionBombError` never reach the caller.

Every readable image is returned upright and as RGB, the same way whatever its mode:

- an EXIF orientation tag (phone photos) is applied (`PIL.ImageOps.exif_transpose`), so the whole image and the
  object crops cut from it by `object_extraction_mmib` share one orientation;

- animated files (GIF, APNG, WebP): the first frame;
- transparency (RGBA, LA, palette with a transparent colour): composited on a white background, so transparent
  pixels do not turn into whatever colour happens to be stored under them (often black);
- 16- and 32-bit grayscale (`I;16`, `I`): scaled to 8 bits (divided by 256, resp. clipped), not clipped at 255;
- CMYK, palette, grayscale, YCbCr: PIL's conversion;
- an extreme aspect ratio (beyond `MAX_ASPECT_RATIO` = 20, e.g. a 1 x 5000 banner): padded with white on its
  short side to that ratio, so that a shortest-edge resize cannot blow it up to millions of pixels.

This file travels to the Hub as remote code next to `processing_mmib.py`: it imports only torch, transformers, PIL
and the standard library.
"""

import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from PIL import Image, ImageOps
from transformers import BaseImageProcessor

logger = logging.getLogger(__name__)

ImageLike = Image.Image | str | os.PathLike | None
UNREADABLE_POLICIES = ("raise", "mask")
# Pixel limit of one image file, checked on the header before decoding; PIL's default warning threshold.
MAX_IMAGE_PIXELS = int(os.environ.get("MMIB_MAX_IMAGE_PIXELS", 89_478_485))
# Longest / shortest side beyond which an image is padded (see the module docstring).
MAX_ASPECT_RATIO = 20
_WHITE = (255, 255, 255)


def to_rgb(image: Image.Image, pad: bool = True) -> Image.Image:
    """
    Converts a decoded image of any mode to RGB by the module's rules: transparency composited on white, 16/32-bit
    grayscale scaled to 8 bits, extreme aspect ratios padded with white to `MAX_ASPECT_RATIO`.

    Args:
        image (`PIL.Image.Image`): any mode; for an animated image, the current frame is used.
        pad (`bool`, *optional*, defaults to `True`): pad extreme aspect ratios; `False` keeps the picture's own
            size (the object extractor, whose boxes and crops are in the picture's own pixels).

    Returns:
        `PIL.Image.Image` in RGB mode.
    """
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    elif image.mode in ("I", "F"):
        image = image.point(lambda value: min(max(value, 0), 255)).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("RGB")
    return pad_extreme_aspect_ratio(image)[0] if pad else image


def pad_extreme_aspect_ratio(image: Image.Image) -> tuple[Image.Image, tuple[int, int]]:
    """
    Pads an RGB image whose aspect ratio exceeds `MAX_ASPECT_RATIO` with white on its short side, centred, to that
    ratio; any other image is returned as it is.

    Returns:
        `(image, (left, top))`: the padded image and where the original's top-left pixel lies in it, so that a box
        found in the padded image is mapped back by subtracting `(left, top, left, top)`.
    """
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if short * MAX_ASPECT_RATIO >= long:
        return image, (0, 0)
    padded_short = -(-long // MAX_ASPECT_RATIO)
    size = (padded_short, height) if width < height else (width, padded_short)
    offset = ((size[0] - width) // 2, (size[1] - height) // 2)
    canvas = Image.new("RGB", size, _WHITE)
    canvas.paste(image, offset)
    return canvas, offset


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
    image: ImageLike,
    where: str = "",
    on_unreadable: Literal["raise", "mask"] = "raise",
    max_pixels: int | None = None,
    pad: bool = True,
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
        max_pixels (`int`, *optional*): pixel limit of a file (width x height declared in its header); defaults
            to `MAX_IMAGE_PIXELS`. A larger file is a decompression bomb, handled like an undecodable one.
        pad (`bool`, *optional*, defaults to `True`): see [`to_rgb`].

    Returns:
        `PIL.Image.Image` in RGB mode converted by [`to_rgb`], or `None` (no image, or an unreadable file under
        `"mask"`).

    Raises:
        FileNotFoundError: the path does not exist (`"raise"` only).
        UnreadableImageError: the file cannot be decoded or exceeds `max_pixels` (`"raise"` only).
        TypeError: `image` is neither a PIL image, a path nor `None`.
        ValueError: unknown `on_unreadable`.
    """
    if on_unreadable not in UNREADABLE_POLICIES:
        raise ValueError(f"on_unreadable must be one of {UNREADABLE_POLICIES}, got {on_unreadable!r}.")
    if image is None:
        return None
    if isinstance(image, Image.Image):
        return to_rgb(ImageOps.exif_transpose(image), pad)
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
    max_pixels = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        # PIL's own bomb check only warns below twice its limit; ours runs on the header instead, with a message
        # that names the file.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise Image.DecompressionBombError(
                        f"the header declares {width} x {height} = {width * height} pixels, more than the limit of "
                        f"{max_pixels} (a decompression bomb?); raise MMIB_MAX_IMAGE_PIXELS if the file is genuine"
                    )
                opened.load()
                return to_rgb(ImageOps.exif_transpose(opened), pad)
    # PIL signals a bad file with OSError (truncated, unknown format, empty), SyntaxError or ValueError (bad headers)
    # and DecompressionBombError (absurd size, from PIL's check or ours).
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        reason = str(error)
        if isinstance(error, Image.DecompressionBombError) and "MMIB_MAX_IMAGE_PIXELS" not in reason:
            # PIL's own check fired first (beyond twice PIL.Image.MAX_IMAGE_PIXELS), before ours could.
            reason += " (refused before decoding; raise MMIB_MAX_IMAGE_PIXELS and PIL.Image.MAX_IMAGE_PIXELS if real)"
        if on_unreadable == "mask":
            logger.warning("Cannot decode image file, masked like an absent image: %s%s (%s)", path, location, reason)
            return None
        raise UnreadableImageError(path, reason, where) from error


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


__all__ = [
    "MAX_ASPECT_RATIO",
    "MAX_IMAGE_PIXELS",
    "ImageLike",
    "UnreadableImageError",
    "encode_post_images",
    "load_image",
    "pad_extreme_aspect_ratio",
    "to_rgb",
]
