"""
JSON-lines post files, the input of every command that reads posts (`mmib predict --input`, `mmib explain`): one
post per line as [`prepare_post`] takes it (raw `text` or `words`, optional `id`, `image`, `crops`, `head` /
`tail`); blank lines are skipped; relative image paths are resolved against the file's folder. A post without `id`
gets its 1-based line number.
"""

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ..posts_mmib import PreparedPost, prepare_post

__all__ = ["iter_lines", "prepare_line", "read_posts"]


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """`(line number, line)` of the non-blank lines of a file (`"-"` = stdin), numbered from 1."""
    with ExitStack() as stack:
        source = sys.stdin if str(path) == "-" else stack.enter_context(open(path, encoding="utf-8"))
        for line_number, line in enumerate(source, start=1):
            if line.strip():
                yield line_number, line


def prepare_line(line_number: int, line: str, prepare: Callable[[Any, Any], PreparedPost]) -> PreparedPost:
    """
    One line parsed and prepared by `prepare(row, default_id)` (the line number is the default id); malformed
    JSON gives a post with `error_kind` `"malformed JSON"` instead of raising.
    """
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        return PreparedPost(line_number, error=f"malformed JSON: {error}", error_kind="malformed JSON")
    return prepare(row, line_number)


def read_posts(
    path: str | Path, image_root: str | Path | None = None, max_crops: int | None = None
) -> list[PreparedPost]:
    """
    Every post of a JSON-lines file, prepared (words split, images decoded), for commands that need all posts to be
    usable (`mmib explain`). Labels and other keys of a training file are ignored.

    Args:
        path (`str` or `Path`): the file.
        image_root (`str` or `Path`, *optional*): folder relative image and crop paths are resolved against
            (default: the file's folder).
        max_crops (`int`, *optional*): decode only the first `max_crops` crops (the processor's `num_crops`).

    Returns:
        `list[PreparedPost]` in file order; `image_files` holds each decoded slot's file.

    Raises:
        ValueError: `"{path}:{line}: {error}"` at the first post that cannot be used (malformed JSON, an invalid
            field, an unreadable image, ...); `"{path}: no posts"` for a file without any.
    """
    base_dir = str(Path(image_root if image_root is not None else Path(path).absolute().parent))

    def prepare(row: Any, default_id: Any) -> PreparedPost:
        return prepare_post(row, default_id, base_dir, max_crops=max_crops)

    posts = []
    for line_number, line in iter_lines(path):
        post = prepare_line(line_number, line, prepare)
        if post.error is not None:
            raise ValueError(f"{path}:{line_number}: {post.error}")
        posts.append(post)
    if not posts:
        raise ValueError(f"{path}: no posts")
    return posts
