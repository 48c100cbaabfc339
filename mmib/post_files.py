"""
JSON-lines post files, read the same by every command that reads posts: `mmib predict --input`, `mmib explain`,
`mmib extract-objects`, the JSON-lines dataset reader (`mmib.data.load_jsonl`, which adds the labels), the app's
examples and the benchmarks. One post per line as [`read_post`] takes it (raw `text` or `words`, optional `id`,
`image`, `crops`, `head` / `tail`; other keys are kept in `row`); lines end at LF (a CR before it is dropped, as is a
UTF-8 byte-order mark); blank lines are skipped; relative image paths are resolved against the file's folder. A post
without `id` gets its 1-based line number.
"""

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .posts_mmib import PostError, PreparedPost, open_images, read_post

__all__ = ["iter_lines", "parse_line", "prepare_line", "read_posts"]


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """
    `(line number, line)` of the non-blank lines of a file (`"-"` = stdin), numbered from 1.

    Raises:
        ValueError: naming the file if it is not UTF-8.
    """
    with ExitStack() as stack:
        if str(path) == "-":
            source = sys.stdin
        else:
            source = stack.enter_context(open(path, encoding="utf-8-sig", newline="\n"))
        try:
            for line_number, line in enumerate(source, start=1):
                if line.strip():
                    yield line_number, line
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not valid UTF-8 ({error})") from error


def parse_line(line: str) -> Any:
    """
    The JSON value of one line.

    Raises:
        PostError: kind `"malformed JSON"`.
    """
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise PostError("malformed JSON", f"malformed JSON: {error}") from error


def prepare_line(line_number: int, line: str, prepare: Callable[[Any, Any], PreparedPost]) -> PreparedPost:
    """
    One line parsed and prepared by `prepare(row, default_id)` (the line number is the default id), with `line`
    set; malformed JSON gives a post with `error_kind` `"malformed JSON"` instead of raising.
    """
    try:
        post = prepare(parse_line(line), line_number)
    except PostError as error:
        post = PreparedPost(line_number, error=str(error), error_kind=error.kind)
    post.line = line_number
    return post


def read_posts(
    path: str | Path,
    image_root: str | Path | None = None,
    max_crops: int | None = None,
    spans: str = "optional",
    decode_images: bool = True,
) -> list[PreparedPost]:
    """
    Every post of a JSON-lines file, for readers that need every post to be usable: `mmib explain` (images
    decoded), `mmib extract-objects`, `load_jsonl` and the app's examples (images left as files).

    Args:
        path (`str` or `Path`): the file.
        image_root (`str` or `Path`, *optional*): folder relative image and crop paths are resolved against
            (default: the file's folder).
        max_crops (`int`, *optional*): decode only the first `max_crops` crops (the processor's `num_crops`).
        spans (`str`, *optional*, defaults to `"optional"`): what to do with `head` / `tail`, one of
            `posts_mmib.SPAN_RULES`.
        decode_images (`bool`, *optional*, defaults to `True`): decode the images ([`open_images`]); else `image` /
            `crops` hold the resolved file paths.

    Returns:
        `list[PreparedPost]` in file order, with `line` and `row` set; `image_files` holds each decoded slot's
        file.

    Raises:
        ValueError: `"{path}:{line}: {error}"` at the first post that cannot be used (malformed JSON, an invalid
            field, an unreadable image, ...); `"{path}: no posts"` for a file without any.
    """
    base_dir = str(Path(image_root if image_root is not None else Path(path).absolute().parent))
    posts = []
    for line_number, line in iter_lines(path):
        try:
            post = read_post(parse_line(line), line_number, base_dir, spans)
            if decode_images:
                open_images(post, max_crops)
        except PostError as error:
            raise ValueError(f"{path}:{line_number}: {error}") from error
        post.line = line_number
        posts.append(post)
    if not posts:
        raise ValueError(f"{path}: no posts")
    return posts
