"""
The one post record and the field rules of a post, for every reader of posts: a post (a raw string, or a mapping with
`text` or `words`, `id`, `image`, `crops`, `head` / `tail`) is checked and split into words by [`read_post`], and its
images are decoded by [`open_images`]; [`prepare_post`] does both for `mmib predict`, `mmib explain`, the pipeline and
the app. The JSON-lines post files of those commands, of `mmib extract-objects` and of the JSON-lines dataset reader
are read line by line through [`read_post`] (`mmib.post_files`); the benchmark readers (`mmib.data`) fill the same
[`PreparedPost`] and check their words and spans with [`words_field`] and [`span_field`].

Field rules (a [`PostError`] names the field):

- `text` (a string, split by `split_words`) or `words` (a non-empty list of strings), not both; a post without any
  word is an `empty post`.
- `id`: a string or an integer (default: the reader's, e.g. the line number).
- `image`: a file path (resolved against the reader's folder) or a PIL image; absent or `null` = no image.
- `crops`: a list of such images; absent or `null` = none.
- `head` / `tail`: `[start, end)` word spans, `0 <= start < end <= len(words)`; required for a relation model.

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

__all__ = [
    "SPAN_RULES",
    "PostError",
    "PreparedPost",
    "error_row",
    "open_images",
    "prepare_post",
    "read_post",
    "span_field",
    "words_field",
]

# What a reader does with `head` / `tail`: refuse a post without them (a relation model), check them when given, or
# leave them out (an entity model: its objects must not be queried by a span it does not use).
SPAN_RULES = ("required", "optional", "ignored")


@dataclass
class PreparedPost:
    """
    The one post record: a post read and checked (its words split, its image paths resolved), its images decoded
    once [`open_images`] ran, and its gold labels when it comes from a labelled data set.
    """

    id: Any
    text: str = ""
    words: list[str] = field(default_factory=list)
    offsets: list[tuple[int, int]] = field(default_factory=list)
    image: Any = None
    """The image: a file path (as read, resolved), a PIL image (decoded, or as given), or `None`."""
    crops: list[Any] = field(default_factory=list)
    """The object crops, each like `image`."""
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
    were its own or nothing was extracted (see `CropFiller.add_objects`)."""
    tags: list[str] | None = None
    """Gold BIO tags, one per word (NER data sets)."""
    relation: str | None = None
    """Gold relation between `head` and `tail` (relation data sets)."""
    line: int | None = None
    """The line of its file the post starts on."""
    word_lines: list[int] | None = None
    """The line of each word, for files that give every word a line of its own (CoNLL); else all are on `line`."""
    row: Mapping[str, Any] | None = None
    """The row as read, every key kept (a job that writes the row back with fields added, e.g. crops)."""


class PostError(ValueError):
    """A post that cannot be used; `kind` groups errors in summaries (e.g. `image`, `empty post`)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _image_field(value: Any, name: str, base_dir: str | None) -> str | Image.Image:
    """An `image` / `crops[k]` value: a PIL image as it is, a file path resolved against `base_dir`."""
    if isinstance(value, Image.Image):
        return value
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise PostError("invalid field", f"{name!r} must be a file path, got {value!r}")
    path = os.fspath(value)
    return os.path.join(base_dir, path) if base_dir is not None and not os.path.isabs(path) else path


def _open_image(value: str | Image.Image, name: str) -> Image.Image:
    """
    The package's one image loader (`load_image`), its errors turned into this post's error row. The picture keeps
    its own size (no padding of extreme aspect ratios): the object extractor cuts crops in its pixels, and the
    processor pads it when it encodes it.
    """
    try:
        return load_image(value, where=name, pad=False)
    except FileNotFoundError as error:
        raise PostError("image", f"{name}: file not found: {value}") from error
    except UnreadableImageError as error:
        raise PostError("image", f"{name}: {error}") from error


def _image_or_features(
    value: str | Image.Image, name: str, feature_lookup: Callable[[str], torch.Tensor | None] | None
) -> tuple[Image.Image | None, torch.Tensor | None]:
    """`(None, features)` for a file path the cache knows (the file is not opened), else `(decoded image, None)`."""
    if feature_lookup is not None and isinstance(value, str):
        features = feature_lookup(value)
        if features is not None:
            return None, features
    return _open_image(value, name), None


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


def _words(row: Mapping[str, Any]) -> tuple[str, list[str], list[tuple[int, int]]]:
    """`(text, words, character offsets of the words)` of a row with `text` or `words`."""
    if "text" in row and "words" in row:
        raise PostError("invalid row", "give either text or words, not both")
    if "text" in row:
        text = row["text"]
        if not isinstance(text, str):
            raise PostError("invalid field", f"'text' must be a string, got {type(text).__name__}")
        split = split_words(text)
        if not split:
            raise PostError("empty post", "the post has no words ('text' is blank)")
        return text, [word for word, _, _ in split], [(start, end) for _, start, end in split]
    if "words" not in row:
        raise PostError("invalid row", "the row has neither text nor words")
    if row["words"] == []:
        raise PostError("empty post", "the post has no words ('words' is empty)")
    try:
        words = words_field(row["words"])
    except ValueError as error:
        raise PostError("invalid field", str(error)) from error
    offsets, position = [], 0
    for word in words:
        offsets.append((position, position + len(word)))
        position += len(word) + 1
    return " ".join(words), words, offsets


def read_post(
    row: str | Mapping[str, Any], default_id: Any = None, base_dir: str | None = None, spans: str = "optional"
) -> PreparedPost:
    """
    Checks one post by the field rules of the module docstring and splits its text into words; images stay files.

    Args:
        row (`str` or `Mapping`): the post; a string is its `text`.
        default_id: the `id` of a post that has none (e.g. its line number).
        base_dir (`str`, *optional*): folder that relative image and crop paths are resolved against.
        spans (`str`, *optional*, defaults to `"optional"`): one of `SPAN_RULES`: `head` / `tail` `"required"`,
            checked when given (`"optional"`), or left out (`"ignored"`).

    Returns:
        [`PreparedPost`] with `row` set; `image` / `crops` hold resolved file paths (or the PIL images given).

    Raises:
        PostError: naming the field that breaks a rule.
    """
    if spans not in SPAN_RULES:
        raise ValueError(f"spans must be one of {SPAN_RULES}, got {spans!r}")
    if isinstance(row, str):
        row = {"text": row}
    if not isinstance(row, Mapping):
        raise PostError("invalid row", f"a post must be a JSON object or a string, got {type(row).__name__}")
    post_id = row.get("id", default_id)
    if "id" in row and (not isinstance(post_id, str | int) or isinstance(post_id, bool)):
        raise PostError("invalid field", f"'id' must be a string or an integer, got {post_id!r}")
    text, words, offsets = _words(row)
    image = row.get("image")
    image = _image_field(image, "image", base_dir) if image is not None else None
    crops = row.get("crops")
    crops = [] if crops is None else crops
    if not isinstance(crops, list):
        raise PostError("invalid field", f"'crops' must be a list, got {type(crops).__name__}")
    crops = [_image_field(crop, f"crops[{index}]", base_dir) for index, crop in enumerate(crops)]
    found = {}
    for name in ("head", "tail") if spans != "ignored" else ():
        if name not in row:
            if spans == "required":
                raise PostError("invalid row", f"missing field {name!r}: a relation needs head and tail word spans")
            continue
        try:
            found[name] = span_field(row[name], name, len(words))
        except ValueError as error:
            raise PostError("invalid field", str(error)) from error
    return PreparedPost(post_id, text, words, offsets, image, crops, found.get("head"), found.get("tail"), row=row)


def open_images(
    post: PreparedPost,
    max_crops: int | None = None,
    feature_lookup: Callable[[str], torch.Tensor | None] | None = None,
) -> None:
    """
    Decodes the image and the crops of a post [`read_post`] returned, in place, and records their files
    (`image_files`).

    Args:
        post ([`PreparedPost`]): `image` / `crops` hold files or PIL images.
        max_crops (`int`, *optional*): decode only the first `max_crops` crops (the processor's `num_crops`; it
            uses no more); the others are dropped.
        feature_lookup (`Callable[[str], torch.Tensor | None]`, *optional*): cached features of image files; a file
            it returns features for is not opened (its slot holds `None`, its features `cached_features`).

    Raises:
        PostError: kind `"image"`, naming the field, for a missing or undecodable file.
    """
    cached = {}
    post.image_files = [post.image if isinstance(post.image, str) else None]
    if post.image is not None:
        post.image, cached[0] = _image_or_features(post.image, "image", feature_lookup)
    crops = []
    for index, crop in enumerate(post.crops[:max_crops]):
        post.image_files.append(crop if isinstance(crop, str) else None)
        crop, cached[index + 1] = _image_or_features(crop, f"crops[{index}]", feature_lookup)
        crops.append(crop)
    post.crops = crops
    post.cached_features = {slot: features for slot, features in cached.items() if features is not None}


def prepare_post(
    post: str | Mapping[str, Any],
    default_id: Any = None,
    base_dir: str | None = None,
    needs_spans: bool = False,
    max_crops: int | None = None,
    feature_lookup: Callable[[str], torch.Tensor | None] | None = None,
) -> PreparedPost:
    """
    [`read_post`] then [`open_images`]: one input post checked, split into words and with its images decoded.

    Args:
        post (`str` or `dict`): see the module docstring.
        default_id: the `id` of a post that has none (e.g. its line number).
        base_dir (`str`, *optional*): folder that relative image paths are resolved against.
        needs_spans (`bool`): a relation checkpoint on its own: `head` and `tail` are required (else they are
            left out).
        max_crops (`int`, *optional*): decode only the first `max_crops` crops (the processor's `num_crops`).
        feature_lookup (`Callable[[str], torch.Tensor | None]`, *optional*): see [`open_images`].

    Returns:
        [`PreparedPost`], with `error` / `error_kind` set instead of raising when the post cannot be used.
    """
    try:
        prepared = read_post(post, default_id, base_dir, "required" if needs_spans else "ignored")
        open_images(prepared, max_crops, feature_lookup)
        return prepared
    except PostError as error:
        post_id = post.get("id", default_id) if isinstance(post, Mapping) else default_id
        valid_id = isinstance(post_id, str | int) and not isinstance(post_id, bool)
        return PreparedPost(post_id if valid_id else default_id, error=str(error), error_kind=error.kind)


def error_row(post: PreparedPost) -> dict[str, Any]:
    return {"id": post.id, "error": post.error}
