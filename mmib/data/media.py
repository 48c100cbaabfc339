"""Images and crops of the dataset readers: crop dictionaries, path resolution and the missing-media report."""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Union

import datasets
import torch

from ..posts_mmib import PreparedPost

logger = logging.getLogger(__name__)

SPLIT_FOLDERS: Mapping[str, str] = MappingProxyType({"train": "train", "validation": "val", "test": "test"})

IMGID_PREFIX = "IMGID:"

REPORT_KEY = "mmib_missing_media"

MAX_MISSING_EXAMPLES = 5

PathLike = Union[str, os.PathLike]


@dataclass
class MissingMediaReport:
    """How many image and crop files of one split were found or missing.

    Attributes:
        split: split name.
        num_rows: number of rows of the split.
        images_found: rows whose image file exists.
        images_missing: rows that reference an image file that does not exist (their ``image`` is None).
        crops_found: crop files that exist (kept in ``crops``).
        crops_missing: crop files that do not exist (left out of ``crops``).
        crop_entries_missing: rows without an entry in the split's crop dictionary (they get no crops).
        missing_images: the first few missing image paths.
        missing_crops: the first few missing crop paths.
    """

    split: str
    num_rows: int = 0
    images_found: int = 0
    images_missing: int = 0
    crops_found: int = 0
    crops_missing: int = 0
    crop_entries_missing: int = 0
    missing_images: list[str] = field(default_factory=list)
    missing_crops: list[str] = field(default_factory=list)

    def check_image(self, path: str | None) -> str | None:
        """Returns ``path`` if the file exists, else None; counts the outcome (None = no image wanted)."""
        if path is None:
            return None
        if os.path.isfile(path):
            self.images_found += 1
            return path
        self.images_missing += 1
        _add_example(self.missing_images, [path])
        return None

    def check_crops(self, paths: Sequence[str]) -> list[str]:
        """Returns the crop paths whose files exist; counts found and missing ones."""
        found = [path for path in paths if os.path.isfile(path)]
        missing = [path for path in paths if path not in found]
        self.crops_found += len(found)
        self.crops_missing += len(missing)
        _add_example(self.missing_crops, missing)
        return found

    def log(self, source: PathLike) -> None:
        """Logs the counts: one warning if anything is missing, else an info line."""
        if self.images_missing or self.crops_missing or self.crop_entries_missing:
            logger.warning(
                "%s (split %r, %d rows): %d images missing (found %d), first: %s; %d crops missing (found %d), "
                "first: %s; %d rows without a crop-dictionary entry. Those posts are used with their image "
                "slots masked out.",
                source,
                self.split,
                self.num_rows,
                self.images_missing,
                self.images_found,
                self.missing_images,
                self.crops_missing,
                self.crops_found,
                self.missing_crops,
                self.crop_entries_missing,
            )
        else:
            logger.info(
                "%s (split %r, %d rows): %d images and %d crops found, none missing.",
                source,
                self.split,
                self.num_rows,
                self.images_found,
                self.crops_found,
            )

    def to_json(self) -> str:
        """Serializes the report as the JSON stored in ``Dataset.info.description``."""
        return json.dumps({REPORT_KEY: asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> MissingMediaReport:
        """Parses :meth:`to_json` output.

        Raises:
            ValueError: if ``text`` holds no report.
        """
        try:
            payload = json.loads(text)[REPORT_KEY]
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(
                "this dataset carries no MMIB missing-media report in info.description "
                "(it was not built by an mmib.data reader, or its info was replaced)"
            ) from err
        return cls(**payload)


def _add_example(examples: list[str], paths: Iterable[str]) -> None:
    """Adds paths not yet listed to ``examples`` while it holds fewer than ``MAX_MISSING_EXAMPLES``."""
    for path in paths:
        if len(examples) < MAX_MISSING_EXAMPLES and path not in examples:
            examples.append(path)


def missing_media_report(
    data: datasets.Dataset | datasets.DatasetDict,
) -> MissingMediaReport | dict[str, MissingMediaReport]:
    """Reads the missing-media counts a reader stored with its output.

    Args:
        data: a ``DatasetDict`` returned by a reader, or one of its splits.

    Returns:
        ``{split: MissingMediaReport}`` for a ``DatasetDict``, a single report for a ``Dataset``.

    Raises:
        ValueError: if a split carries no report.
    """
    if isinstance(data, datasets.DatasetDict):
        return {split: MissingMediaReport.from_json(dataset.info.description) for split, dataset in data.items()}
    return MissingMediaReport.from_json(data.info.description)


def read_crop_dict(path: PathLike) -> dict[str, list[str]]:
    """Reads a crop dictionary without unpickling arbitrary objects.

    ``.json`` files are read as JSON; anything else (the upstream ``*_dict.pth`` files) with
    ``torch.load(path, weights_only=True)``, which only accepts plain containers and tensors.

    Args:
        path: the dictionary file: ``{key: [crop file name, ...]}``.

    Returns:
        The dictionary with keys converted to ``str`` (MNRE's integer line indexes become ``"0"``, ``"1"``, ...).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file if it is corrupt, truncated, or not such a dictionary.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"crop dictionary not found: {path}")
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(path.read_text(encoding="utf-8"))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as err:
        raise ValueError(f"cannot read crop dictionary {path}: {err}") from err
    return _normalize_crop_dict(raw, path)


def _normalize_crop_dict(raw: Any, path: Path) -> dict[str, list[str]]:
    """Checks a loaded crop dictionary's structure and converts its keys to ``str``."""
    if not isinstance(raw, dict):
        raise ValueError(f"crop dictionary {path}: expected a dict, got {type(raw).__name__}")
    crops = {}
    for key, names in raw.items():
        valid_key = isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool))
        if not valid_key or not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"crop dictionary {path}: entry {key!r} is not a list of crop file names")
        crops[str(key)] = list(names)
    return crops


def resolver(folder: PathLike) -> Callable[[str], str]:
    """Function turning a path relative to ``folder`` (or an absolute path) into a normalized absolute path."""
    base = os.path.abspath(folder)
    return lambda path: os.path.normpath(os.path.join(base, path))


def split_folder(split: str) -> str:
    """Folder name the benchmark layouts use for a split (``validation`` -> ``val``)."""
    return SPLIT_FOLDERS.get(split, split)


def crop_dicts_for(
    splits: Iterable[str],
    crop_dicts: Mapping[str, PathLike] | None,
    default_path: Callable[[str], Path],
    crop_dir: PathLike | None = None,
) -> dict[str, dict[str, list[str]] | None]:
    """Loads each split's crop dictionary.

    Explicit ``crop_dicts`` must exist (splits absent from it get no crops). With ``crop_dicts=None`` the first
    file that exists is used: ``<crop_dir>/<split folder>_dict.json`` when a ``crop_dir`` was given (the
    dictionary ``mmib extract-objects`` writes beside its crops), then the default ``.pth`` file, then the same
    name with ``.json``; if none exists the split gets no crops and a warning says so.
    """
    loaded: dict[str, dict[str, list[str]] | None] = {}
    for split in splits:
        if crop_dicts is not None:
            loaded[split] = read_crop_dict(crop_dicts[split]) if split in crop_dicts else None
            continue
        default = default_path(split)
        candidates = [default, default.with_suffix(".json")]
        if crop_dir is not None:
            candidates.insert(0, Path(crop_dir) / f"{split_folder(split)}_dict.json")
        path = next((candidate for candidate in candidates if candidate.is_file()), None)
        if path is not None:
            loaded[split] = read_crop_dict(path)
        else:
            tried = " or ".join(map(str, candidates))
            logger.warning("no crop dictionary at %s: posts of split %r get no crops", tried, split)
            loaded[split] = None
    return loaded


def attach_crops(
    keys: Sequence[str],
    posts: Sequence[PreparedPost],
    crop_map: Mapping[str, list[str]] | None,
    folder: PathLike,
    num_crops: int | None,
) -> int:
    """Sets each post's candidate crop paths (the first ``num_crops`` of its entry, all if None); returns rows
    without one.

    Raises:
        ValueError: if ``num_crops`` is negative.
    """
    if num_crops is not None and num_crops < 0:
        raise ValueError(f"num_crops must be >= 0, got {num_crops}")
    if crop_map is None:
        return 0
    resolve = resolver(folder)
    without_entry = 0
    for key, post in zip(keys, posts):
        if key not in crop_map:
            without_entry += 1
        post.crops = [resolve(name) for name in crop_map.get(key, [])[:num_crops]]
    return without_entry
