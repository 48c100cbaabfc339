"""Reader and writer of the package's JSON-lines format for own posts: the posts are read by the one post reader
(`mmib.post_files.read_posts`), the labels here."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from ..post_files import read_posts
from ..posts_mmib import PreparedPost
from ..processing_mmib import TASKS
from .labels import (
    check_bio_names,
    check_ner_tags,
    check_relations,
    infer_ner_labels,
    infer_relation_labels,
    unique_names,
)
from .media import PathLike
from .rows import as_string, as_strings, build_split, ner_features, ner_row, re_features, re_row, require


def _add_labels(post: PreparedPost, index: int, task: str) -> None:
    """Sets the id (default: the 0-based record number) and the gold labels of one record of the given task.

    Raises:
        ValueError: for a missing or invalid label field, or a tags/words length mismatch.
    """
    post.id = str(post.id) if "id" in post.row else str(index)
    if task == "ner":
        post.tags = as_strings(require(post.row, "tags"), "tags")
        if len(post.tags) != len(post.words):
            raise ValueError(f"'tags' has {len(post.tags)} items but 'words' has {len(post.words)}")
    else:
        post.relation = as_string(require(post.row, "relation"), "relation")


def _read_jsonl(path: Path, task: str, image_root: Path) -> list[PreparedPost]:
    """Reads a JSON-lines file of the given task with the one post reader, then its labels; media paths absolute.

    Raises:
        ValueError: naming file and line of an invalid record; also for a file without records.
    """
    posts = read_posts(path, image_root, spans="required" if task == "re" else "ignored", decode_images=False)
    for index, post in enumerate(posts):
        try:
            _add_labels(post, index, task)
        except ValueError as err:
            raise ValueError(f"{path}:{post.line}: {err}") from err
        post.image = os.path.normpath(post.image) if post.image is not None else None
        post.crops = [os.path.normpath(crop) for crop in post.crops]
    return posts


def load_jsonl(
    data_files: Mapping[str, PathLike],
    task: str = "ner",
    label_names: Sequence[str] | None = None,
    image_root: PathLike | None = None,
) -> datasets.DatasetDict:
    """Reads posts in the package's JSON-lines format (see the module docstring) into a ``DatasetDict``.

    Args:
        data_files: ``{split: path to a .jsonl file}``.
        task: ``"ner"`` or ``"re"``.
        label_names: label names in ClassLabel order. None = inferred (NER: BIO order of the module docstring;
            RE: ``"None"`` then the other relations alphabetically) from the ``train`` split, or from all
            splits if there is none.
        image_root: folder against which relative ``image`` / ``crops`` paths are resolved. None = the folder
            of each JSON-lines file.

    Returns:
        ``DatasetDict`` of NER or relation rows.

    Raises:
        FileNotFoundError: if a data file is missing.
        ValueError: naming file and line for malformed JSON, a missing field, a length mismatch, an invalid
            span or an unknown label; also for an unknown task.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    parsed = {}
    for split, path in data_files.items():
        source = Path(path).absolute()
        root = Path(image_root).absolute() if image_root is not None else source.parent
        parsed[split] = (source, _read_jsonl(Path(path), task, root))
    if task == "ner":
        names = check_bio_names(label_names) if label_names is not None else infer_ner_labels(parsed)
        features, check, to_row = ner_features(names), check_ner_tags, ner_row
    else:
        names = unique_names(label_names) if label_names is not None else infer_relation_labels(parsed)
        features, check, to_row = re_features(names), check_relations, re_row
    label_ids = {label: index for index, label in enumerate(names)}
    result = {}
    for split, (source, posts) in parsed.items():
        check(source, posts, label_ids)
        result[split] = build_split(split, source, posts, features, to_row(label_ids))
    return datasets.DatasetDict(result)


def _portable_path(path: str | None, folder: Path) -> str | None:
    """``path`` relative to ``folder`` (POSIX separators) if it lies inside it, else unchanged."""
    if path is None:
        return None
    try:
        return Path(path).relative_to(folder).as_posix()
    except ValueError:
        return path


def write_jsonl(dataset: datasets.Dataset, path: PathLike) -> int:
    """Writes one split (NER or relation rows) in the JSON-lines format read by :func:`load_jsonl`.

    Labels are written as names. Image and crop paths inside the output file's folder are written relative to
    it, so the file and its media can be moved together; other paths stay absolute.

    Args:
        dataset: a split produced by one of the readers (columns of the package contract).
        path: output ``.jsonl`` file (overwritten).

    Returns:
        Number of records written.

    Raises:
        ValueError: if the dataset has neither a ``ner_tags`` nor a ``relation`` column.
    """
    path = Path(path)
    folder = path.parent.absolute()
    if "ner_tags" in dataset.column_names:
        names = dataset.features["ner_tags"].feature.names
    elif "relation" in dataset.column_names:
        names = dataset.features["relation"].names
    else:
        raise ValueError("dataset has neither a 'ner_tags' nor a 'relation' column")
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for row in dataset:
            record: dict[str, Any] = {"id": row["id"], "words": row["words"]}
            if "ner_tags" in row:
                record["tags"] = [names[tag] for tag in row["ner_tags"]]
            else:
                record.update(head=row["head_span"], tail=row["tail_span"], relation=names[row["relation"]])
            record["image"] = _portable_path(row["image"], folder)
            record["crops"] = [_portable_path(crop, folder) for crop in row["crops"]]
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(dataset)
