"""Reader and writer of the package's JSON-lines format for own posts."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from ..posts_mmib import span_field, words_field
from ..processing_mmib import TASKS
from .labels import (
    _check_bio_names,
    _check_ner_tags,
    _check_relations,
    _infer_ner_labels,
    _infer_relation_labels,
    _unique_names,
)
from .media import _resolver
from .rows import (
    PathLike,
    _as_optional_path,
    _as_string,
    _as_strings,
    _build_split,
    _ner_row,
    _NerPost,
    _re_row,
    _read_lines,
    _RePost,
    _require,
    ner_features,
    re_features,
)


def _parse_json_record(text: str, index: int, task: str) -> _NerPost | _RePost:
    """Parses one JSON-lines record of the given task (line numbers are filled in by the caller).

    Raises:
        ValueError: for malformed JSON, a missing or invalid field, or a tags/words length mismatch.
    """
    try:
        record = json.loads(text)
    except ValueError as err:
        raise ValueError(f"malformed JSON ({err})") from err
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    post_id = record.get("id", index)
    if not isinstance(post_id, (str, int)) or isinstance(post_id, bool):
        raise ValueError("'id' must be a string or an integer")
    words = words_field(_require(record, "words"), "words")
    image = _as_optional_path(record.get("image"), "image")
    crops = _as_strings(record.get("crops", []), "crops")
    if task == "ner":
        tags = _as_strings(_require(record, "tags"), "tags")
        if len(tags) != len(words):
            raise ValueError(f"'tags' has {len(tags)} items but 'words' has {len(words)}")
        return _NerPost(id=str(post_id), words=words, tags=tags, lines=[], image=image, crops=crops)
    return _RePost(
        id=str(post_id),
        words=words,
        head=list(span_field(_require(record, "head"), "head", len(words))),
        tail=list(span_field(_require(record, "tail"), "tail", len(words))),
        relation=_as_string(_require(record, "relation"), "relation"),
        line=0,
        image=image,
        crops=crops,
    )


def _read_jsonl(path: Path, task: str) -> list[_NerPost | _RePost]:
    """Parses a JSON-lines file of the given task (blank lines skipped).

    Raises:
        ValueError: naming file and line of an invalid record; also for a file without records.
    """
    posts: list[_NerPost | _RePost] = []
    for line_no, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            post = _parse_json_record(line, len(posts), task)
        except ValueError as err:
            raise ValueError(f"{path}:{line_no}: {err}") from err
        if isinstance(post, _NerPost):
            post.lines = [line_no] * len(post.words)
        else:
            post.line = line_no
        posts.append(post)
    if not posts:
        raise ValueError(f"{path}: no records found")
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
    parsed = {split: (Path(path).absolute(), _read_jsonl(Path(path), task)) for split, path in data_files.items()}
    if task == "ner":
        names = _check_bio_names(label_names) if label_names is not None else _infer_ner_labels(parsed)
        features, check, to_row = ner_features(names), _check_ner_tags, _ner_row
    else:
        names = _unique_names(label_names) if label_names is not None else _infer_relation_labels(parsed)
        features, check, to_row = re_features(names), _check_relations, _re_row
    label_ids = {label: index for index, label in enumerate(names)}
    result = {}
    for split, (source, posts) in parsed.items():
        check(source, posts, label_ids)
        resolve = _resolver(image_root if image_root is not None else source.parent)
        for post in posts:
            post.image = resolve(post.image) if post.image is not None else None
            post.crops = [resolve(crop) for crop in post.crops]
        result[split] = _build_split(split, source, posts, features, to_row(label_ids))
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
