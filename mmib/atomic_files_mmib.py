"""
The one atomic file writer: a file is written whole or not at all, so that a reader, a resumed run or another
process never sees half of it. Used by the detection cache (`detection_cache_mmib`), the crop extraction job and
the image-feature cache's shards (`mmib.features`).

Travels with checkpoints as remote code (the detection cache uses it): it imports only the standard library.
"""

import contextlib
import os
from collections.abc import Callable

__all__ = ["atomic_write", "atomic_write_text", "temporary_name"]


def temporary_name(path: str | os.PathLike) -> str:
    """
    The temporary file [`atomic_write`] fills before renaming it to `path`: hidden (`.` first, so that globs such as
    `shard-*.safetensors` or `*.json` never see it), beside `path` (a rename across file systems is not atomic), and
    named by the process (two processes never write the same temporary file). A killed writer leaves it behind;
    `.{name}.*.partial` in the folder finds those.
    """
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}.partial")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], durable: bool = False) -> None:
    """
    Writes `path` atomically: `write(temporary)` fills [`temporary_name`]`(path)`, which then replaces `path` with
    one rename (`os.replace`, atomic on POSIX and Windows within a folder). If `write` fails, the temporary file is
    removed and the error raised; `path` is untouched.

    Args:
        path (`str` or `os.PathLike`): the file to write (its folder must exist).
        write (`Callable[[str], None]`): writes the whole content to the path it is given.
        durable (`bool`, *optional*, defaults to `False`): also flush the file and the folder to disk (`fsync`), so
            that the file survives a crash of the machine, not only of the process; costs a disk flush per file.
    """
    path = os.fspath(path)
    temporary = temporary_name(path)
    try:
        write(temporary)
        if durable:
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    if durable:
        folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """[`atomic_write`] of a UTF-8 text file."""

    def write(target: str) -> None:
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(text)

    atomic_write(path, write)
