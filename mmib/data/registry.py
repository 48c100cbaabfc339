"""The dataset readers by name, for training, the analyses and the benchmarks: one table, one dispatch."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import datasets

from .jsonl import load_jsonl
from .mnre import load_mnre
from .rows import PathLike
from .twitter import load_twitter_ner


@dataclass(frozen=True)
class DatasetReader:
    """
    A dataset known by name.

    Args:
        name (`str`): the `--dataset` value.
        task (`str`, *optional*): `"ner"` or `"re"`; `None` when the data say (JSON lines: the `task` argument).
        load (`Callable`): the reader.
    """

    name: str
    task: str | None
    load: Callable[..., datasets.DatasetDict]


READERS: Mapping[str, DatasetReader] = {
    "twitter2015": DatasetReader("twitter2015", "ner", load_twitter_ner),
    "twitter2017": DatasetReader("twitter2017", "ner", load_twitter_ner),
    "mnre": DatasetReader("mnre", "re", load_mnre),
    "jsonl": DatasetReader("jsonl", None, load_jsonl),
}


def _reader(name: str) -> DatasetReader:
    if name not in READERS:
        raise ValueError(f"Unknown dataset {name!r}: expected one of {', '.join(READERS)}.")
    return READERS[name]


def default_data_dir(name: str) -> Path:
    """
    Where a benchmark dataset is looked for without `--data_dir`: `$MMIB_SHARED_DATA/<name>`, else
    `../shared/data/<name>` beside the source checkout that holds this package.

    Raises:
        ValueError: neither exists (e.g. an installed wheel without the variable): pass `--data_dir`.
    """
    _reader(name)
    if "MMIB_SHARED_DATA" in os.environ:
        return Path(os.environ["MMIB_SHARED_DATA"]) / name
    folder = Path(__file__).resolve().parents[3] / "shared" / "data" / name
    if not folder.is_dir():
        raise ValueError(f"No data folder for {name!r} ({folder} does not exist): pass --data_dir.")
    return folder


def task_of(name: str, task: str = "ner") -> str:
    """The task of dataset `name`: its own (Twitter: NER, MNRE: RE), or `task` for JSON lines."""
    return _reader(name).task or task


def load_dataset(
    name: str,
    *,
    data_dir: PathLike | None = None,
    files: Mapping[str, PathLike] | None = None,
    task: str = "ner",
    image_dir: PathLike | None = None,
    crop_dir: PathLike | None = None,
    num_crops: int | None = None,
) -> tuple[str, datasets.DatasetDict]:
    """
    Reads dataset `name` with its reader.

    Args:
        name (`str`): a key of `READERS`.
        data_dir (`str`, *optional*): the benchmark's folder (default [`default_data_dir`]).
        files (`dict`, *optional*): `{split: path}` of JSON-lines files (`jsonl` only, required there).
        task (`str`): the task of JSON-lines records.
        image_dir, crop_dir, num_crops: passed to the benchmark readers; `image_dir` is the JSON-lines image root.

    Returns:
        `(task, DatasetDict)`.
    """
    reader = _reader(name)
    if name == "jsonl":
        if not files:
            raise ValueError("The jsonl dataset needs its files ({split: path}).")
        return task, reader.load(dict(files), task=task, image_root=image_dir)
    folder = data_dir or default_data_dir(name)
    return reader.task, reader.load(folder, image_dir=image_dir, crop_dir=crop_dir, num_crops=num_crops)


__all__ = ["READERS", "DatasetReader", "default_data_dir", "load_dataset", "task_of"]
