"""
The one post reader: a user's post (a raw string, or a dict with `text` or `words`, `id`, `image`, `crops`, `head` /
`tail`) checked, split into words and with its images decoded, for `mmib predict`, `mmib explain`, the pipeline and
the app. The field rules (`words_field`, `span_field`) are shared with the dataset readers.

Travels with checkpoints as remote code (see CONTRIBUTING.md).
"""

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from .image_loading_mmib import UnreadableImageError, load_image
from .word_splitting_mmib import split_words

__all__ = ["PostError", "PreparedPost", "error_row", "prepare_post", "span_field", "words_field"]


@dataclass
class PreparedPost:
    """A post checked, split into words and with its images decoded, ready for the processor."""

    id: Any
    text: str = ""
    words: list[str] = field(default_factory=list)
    offsets: list[tuple[int, int]] = field(default_factory=list)
    image: Image.Image | None = None
    crops: list[Image.Image] = field(default_factory=list)
    head: tuple[int, int] | None = None
    tail: tuple[int, int] | None = None
    error: str | None = None
    error_kind: str | None = None
    cached_features: dict[int, torch.Tensor] = field(default_factory=dict)
    """Image slot (0 the image, k the k-th crop) -> its cached feature vector; such slots hold `None` in `image` /
    `crops` and their files are never opened."""
    image_files: list[str | None] = field(default_factory=list)
    """Image slot -> the file it was read from (`None` for an absent image or one given as a PIL image)."""
    objects: list[dict[str, Any]] | None = None
    """The objects extracted from `image` into `crops` (`{"box", "score", "query"}`), `None` when the post's crops
    were its own or nothing was extracted (see `MMIBPredictor.add_objects`)."""


class PostError(ValueError):
    """A post that cannot be used; `kind` groups errors in summaries (e.g. `image`, `empty post`)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _source_file(value: Any, base_dir: str | None) -> str | None:
    """The file an image field names, resolved against `base_dir`; `None` for a PIL image or no image."""
    if not isinstance(value, str | os.PathLike):
        return None
    path = os.fspath(value)
    return os.path.join(base_dir, path) if base_dir is not None and not os.path.isabs(path) else path


def _open_image(value: Any, field_name: str, base_dir: str | None) -> Image.Image:
    """The package's one image loader (`load_image`), its errors turned into this post's error row."""
    value = _source_file(value, base_dir) or value
    try:
        return load_image(value, where=field_name)
    except TypeError as error:
        raise PostError("invalid field", f"{field_name} must be a file path, got {type(value).__name__}") from error
    except FileNotFoundError as error:
        raise PostError("image", f"{field_name}: file not found: {os.fspath(value)}") from error
    except UnreadableImageError as error:
        raise PostError("image", f"{field_name}: {error}") from error


def _image_or_features(
    value: Any, field_name: str, base_dir: str | None, feature_lookup: Callable[[str], torch.Tensor | None] | None
) -> tuple[Image.Image | None, torch.Tensor | None]:
    """`(None, features)` for a file path the cache knows (the file is not opened), else `(decoded image, None)`."""
    path = _source_file(value, base_dir)
    if feature_lookup is not None and path is not None:
        features = feature_lookup(path)
        if features is not None:
            return None, features
    return _open_image(value, field_name, base_dir), None


def words_field(value: Any, name: str = "words") -> list[str]:
    """
    A post's words: a non-empty list of strings. Any string is a word, as in training: one that the tokenizer turns
    into nothing (U+00A0, U+200B, "") enters the model as the unknown token and still gets a tag.

    Raises:
        ValueError: naming `name`.
    """
    if not isinstance(value, list) or not value or not all(isinstance(word, str) for word in value):
        raise ValueError(f"{name!r} must be a non-empty list of strings")
    return value


def span_field(value: Any, name: str, num_words: int) -> tuple[int, int]:
    """
    A `[start, end)` word span with `0 <= start < end <= num_words` (integers; booleans are refused).

    Raises:
        ValueError: naming `name`.
    """
    is_pair = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
    if not is_pair or not all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        raise ValueError(f"{name!r} must be a pair of integers [start, end], got {value!r}")
    start, end = value
    if not 0 <= start < end <= num_words:
        raise ValueError(f"{name!r} span {[start, end]} is not within 0 <= start < end <= {num_words}")
    return start, end


def prepare_post(
    post: str | Mapping[str, Any],
    default_id: Any = None,
    base_dir: str | None = None,
    needs_spans: bool = False,
    max_crops: int | None = None,
    feature_lookup: Callable[[str], torch.Tensor | None] | None = None,
) -> PreparedPost:
    """
    Checks one input post, splits its text and decodes its images.

    Args:
        post (`str` or `dict`): see the module docstring.
        default_id: the `id` of a post that has none (e.g. its line number).
        base_dir (`str`, *optional*): folder that relative image paths are resolved against.
        needs_spans (`bool`): a relation checkpoint on its own: `head` and `tail` are required.
        max_crops (`int`, *optional*): decode only the first `max_crops` crops (the processor's `num_crops`; it
            uses no more).
        feature_lookup (`Callable[[str], torch.Tensor | None]`, *optional*): cached features of image files (see
            the module docstring); images it returns features for are not decoded.

    Returns:
        [`PreparedPost`], with `error` / `error_kind` set instead of raising when the post cannot be used.
    """
    post_id = default_id
    try:
        if isinstance(post, str):
            post = {"text": post}
        if not isinstance(post, Mapping):
            raise PostError("invalid row", f"a post must be a JSON object or a string, got {type(post).__name__}")
        post_id = post.get("id", default_id)
        if "text" in post and "words" in post:
            raise PostError("invalid row", "give either text or words, not both")
        if "text" in post:
            text = post["text"]
            if not isinstance(text, str):
                raise PostError("invalid field", f"text must be a string, got {type(text).__name__}")
            split = split_words(text)
            words = [word for word, _, _ in split]
            offsets = [(start, end) for _, start, end in split]
        elif "words" in post:
            words = post["words"]
            if words == []:
                raise PostError("empty post", "the post has no words")
            try:
                words = words_field(words)
            except ValueError as error:
                raise PostError("invalid field", str(error)) from error
            text, offsets, position = " ".join(words), [], 0
            for word in words:
                offsets.append((position, position + len(word)))
                position += len(word) + 1
        else:
            raise PostError("invalid row", "the row has neither text nor words")
        if not words:
            raise PostError("empty post", "the post has no words")
        cached = {}
        image = post.get("image")
        image_files = [_source_file(image, base_dir)]
        if image is not None:
            image, cached[0] = _image_or_features(image, "image", base_dir, feature_lookup)
        crops = post.get("crops") or []
        if not isinstance(crops, list):
            raise PostError("invalid field", f"crops must be a list, got {type(crops).__name__}")
        opened = []
        for index, crop in enumerate(crops[:max_crops]):
            image_files.append(_source_file(crop, base_dir))
            crop, cached[index + 1] = _image_or_features(crop, f"crops[{index}]", base_dir, feature_lookup)
            opened.append(crop)
        crops = opened
        head = tail = None
        if needs_spans:
            if "head" not in post or "tail" not in post:
                raise PostError("invalid row", "a relation model needs head and tail word spans")
            try:
                head, tail = span_field(post["head"], "head", len(words)), span_field(post["tail"], "tail", len(words))
            except ValueError as error:
                raise PostError("invalid field", str(error)) from error
        cached = {slot: features for slot, features in cached.items() if features is not None}
        return PreparedPost(
            post_id, text, words, offsets, image, crops, head, tail, cached_features=cached, image_files=image_files
        )
    except PostError as error:
        return PreparedPost(post_id, error=str(error), error_kind=error.kind)


def error_row(post: PreparedPost) -> dict[str, Any]:
    return {"id": post.id, "error": post.error}
