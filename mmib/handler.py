"""
The Inference Endpoints handler of an MMIB checkpoint: saved as `handler.py` in every NER and RE checkpoint that
`mmib train` writes (`mmib.integrations.endpoints.save_endpoint_handler`), next to the checkpoint's own code.

`EndpointHandler(path)(data)` takes the Endpoints payload `{"inputs": post or [posts], "parameters": {...}}`, a
post as `mmib predict` reads it (a raw string, or a dict with `text` or `words`, `id`, `image`, `crops`, `head` /
`tail`), and returns the list of `mmib predict` rows, one per post in input order (a post without `id` gets its
0-based index). An image or crop is a file path, base64 image data (optionally as a `data:image/...;base64,` URL) or
raw bytes. A post that cannot be used gives `{"id", "error"}`, as in `mmib predict`.

`parameters` (all optional, for that request only): `batch_size`, and with a relation model `keep_none` and
`max_pairs_per_post` (see `mmib predict --help`); any other key is refused. The endpoint's environment may set
`MMIB_RELATION_MODEL` (a relation checkpoint folder or Hub id run on every entity pair, NER -> RE) and `MMIB_DTYPE`
(`auto`, `float32`, `bfloat16`, `int8`).

Loaded by the Endpoints toolkit as a lone file, so it imports only the standard library, PIL and transformers; the
model code is the checkpoint's own (`trust_remote_code=True`), so the `mmib` package need not be installed.
"""

import base64
import binascii
import importlib
import io
import os
import warnings
from collections.abc import Mapping
from typing import Any

from PIL import Image
from transformers.dynamic_module_utils import get_class_from_dynamic_module

__all__ = ["EndpointHandler", "decode_images", "image_from_bytes"]

PARAMETERS = ("batch_size", "keep_none", "max_pairs_per_post")
_DATA_URL_MARK = ";base64,"


def image_from_bytes(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """
    Decodes an encoded image file held in memory, refusing a header that declares more than `max_pixels` pixels
    (a decompression bomb) before decoding, as `image_loading_mmib.load_image` does for files.

    Raises:
        ValueError: naming `field`.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise Image.DecompressionBombError(
                    f"the header declares {width} x {height} pixels, more than the limit of {max_pixels}"
                )
            image.load()
            return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{field}: cannot decode the image data ({error})") from error


def _image_value(value: Any, field: str, max_pixels: int) -> Any:
    """A path stays a path (the post reader opens it); bytes, a `{"bytes", "path"}` dict (a `datasets` Image
    column) or base64 text become a PIL image."""
    if isinstance(value, Mapping) and ("bytes" in value or "path" in value):
        value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
    if isinstance(value, bytes | bytearray | memoryview):
        return image_from_bytes(bytes(value), field, max_pixels)
    if not isinstance(value, str) or os.path.exists(value):
        return value
    if value.startswith("data:") and _DATA_URL_MARK in value:
        value = value.split(_DATA_URL_MARK, 1)[1]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        # Not base64: a path, reported as not found by the post reader.
        return value
    try:
        return image_from_bytes(data, field, max_pixels)
    except ValueError as error:
        raise ValueError(f"{field}: neither an existing file nor base64 image data ({error.__cause__})") from error


def decode_images(post: Any, max_pixels: int) -> Any:
    """
    `post` with every in-memory image (bytes, base64 text, a `{"bytes", "path"}` dict) of `image` and `crops`
    decoded to a PIL image; file paths and everything else are left for the post reader (`prepare_post`).

    Raises:
        ValueError: an image that cannot be decoded, naming its field (`image`, `crops[1]`).
    """
    if not isinstance(post, Mapping):
        return post
    post = dict(post)
    if post.get("image") is not None:
        post["image"] = _image_value(post["image"], "image", max_pixels)
    if isinstance(post.get("crops"), list | tuple):
        post["crops"] = [_image_value(crop, f"crops[{index}]", max_pixels) for index, crop in enumerate(post["crops"])]
    return post


class EndpointHandler:
    """
    Serves an MMIB checkpoint on Inference Endpoints (a custom handler).

    Args:
        path (`str`): the checkpoint folder (the Endpoints toolkit passes the repository's local copy).
        relation_model (`str`, *optional*): a relation checkpoint for NER -> RE; defaults to the environment
            variable `MMIB_RELATION_MODEL`.
        dtype (`str`, *optional*): compute precision; defaults to `MMIB_DTYPE`, else `auto`.
    """

    def __init__(self, path: str = "", relation_model: str | None = None, dtype: str | None = None):
        path = path or "."
        predictor_class = get_class_from_dynamic_module("predictor_mmib.MMIBPredictor", path)
        # The checkpoint's own image loader (imported by the predictor) holds the pixel limit of image files.
        package = predictor_class.__module__.rsplit(".", 1)[0]
        self.max_pixels = importlib.import_module(f"{package}.image_loading_mmib").MAX_IMAGE_PIXELS
        self.predictor = predictor_class.from_pretrained(
            path,
            relation_model=relation_model or os.environ.get("MMIB_RELATION_MODEL") or None,
            dtype=dtype or os.environ.get("MMIB_DTYPE", "auto"),
            trust_remote_code=True,
        )

    def __call__(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Args:
            data (`dict`): `{"inputs": post or list of posts, "parameters": {...}}`.

        Returns:
            `list[dict]`: the `mmib predict` rows, one per post, in order.

        Raises:
            ValueError: a payload without `inputs`, inputs that are not a post or a list of posts, an unknown
                parameter, or a relation parameter without a relation model (bad posts are error rows, not errors).
        """
        if not isinstance(data, Mapping) or "inputs" not in data:
            raise ValueError('The payload must be a JSON object with "inputs" (a post or a list of posts).')
        inputs = data["inputs"]
        posts = [inputs] if isinstance(inputs, str | Mapping) else inputs
        if not isinstance(posts, list):
            raise ValueError(f'"inputs" must be a post or a list of posts, got {type(inputs).__name__}.')
        parameters = data.get("parameters") or {}
        unknown = sorted(set(parameters) - set(PARAMETERS))
        if unknown:
            raise ValueError(f"Unknown parameters {unknown}; expected some of {list(PARAMETERS)}.")
        with self.predictor.options(**parameters) as predictor:
            rows = []
            for start in range(0, len(posts), predictor.batch_size):
                rows += self._predict(posts[start : start + predictor.batch_size], start)
            return rows

    def _predict(self, posts: list[Any], first_index: int) -> list[dict[str, Any]]:
        prepared, failed = [], {}
        for index, post in enumerate(posts, start=first_index):
            try:
                prepared.append(self.predictor.prepare(decode_images(post, self.max_pixels), index))
            except ValueError as error:
                post_id = post.get("id", index) if isinstance(post, Mapping) else index
                failed[index - first_index] = {"id": post_id, "error": str(error)}
        predicted = iter(self.predictor.predict_prepared(prepared) if prepared else [])
        return [failed[position] if position in failed else next(predicted) for position in range(len(posts))]
