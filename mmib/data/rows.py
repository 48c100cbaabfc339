"""The `datasets` features and rows of the package contract, split building, line reading and label field checks of
the dataset readers (the posts themselves are `posts_mmib.PreparedPost` records)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from ..posts_mmib import PreparedPost
from .media import MissingMediaReport, PathLike


def ner_features(label_names: Sequence[str]) -> datasets.Features:
    """Features of NER rows with the given BIO label names."""
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "words": datasets.List(datasets.Value("string")),
            "ner_tags": datasets.List(datasets.ClassLabel(names=list(label_names))),
            "image": datasets.Value("string"),
            "crops": datasets.List(datasets.Value("string")),
        }
    )


def re_features(label_names: Sequence[str]) -> datasets.Features:
    """Features of relation rows with the given relation label names."""
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "words": datasets.List(datasets.Value("string")),
            "head_span": datasets.List(datasets.Value("int64"), length=2),
            "tail_span": datasets.List(datasets.Value("int64"), length=2),
            "relation": datasets.ClassLabel(names=list(label_names)),
            "image": datasets.Value("string"),
            "crops": datasets.List(datasets.Value("string")),
        }
    )


def build_split(
    split: str,
    source: PathLike,
    posts: Sequence[PreparedPost],
    features: datasets.Features,
    to_row: Callable[[Any], dict[str, Any]],
    crop_entries_missing: int = 0,
) -> datasets.Dataset:
    """Checks media files, logs the report and builds the split's ``Dataset``.

    Args:
        split: split name.
        source: the file the posts came from (for the log line).
        posts: parsed posts whose ``image``/``crops`` hold candidate absolute paths.
        features: the split's features.
        to_row: turns a post (with checked media) into a row.
        crop_entries_missing: rows that had no entry in the crop dictionary.

    Returns:
        The split, with the :class:`MissingMediaReport` in ``info.description``.
    """
    report = MissingMediaReport(split=split, num_rows=len(posts), crop_entries_missing=crop_entries_missing)
    rows = []
    for post in posts:
        post.image = report.check_image(post.image)
        post.crops = report.check_crops(post.crops)
        rows.append(to_row(post))
    report.log(source)
    info = datasets.DatasetInfo(description=report.to_json(), features=features)
    return datasets.Dataset.from_list(rows, features=features, info=info)


def ner_row(label_ids: Mapping[str, int]) -> Callable[[PreparedPost], dict[str, Any]]:
    """Row builder for NER posts."""

    def to_row(post: PreparedPost) -> dict[str, Any]:
        return {
            "id": post.id,
            "words": post.words,
            "ner_tags": [label_ids[tag] for tag in post.tags],
            "image": post.image,
            "crops": post.crops,
        }

    return to_row


def re_row(label_ids: Mapping[str, int]) -> Callable[[PreparedPost], dict[str, Any]]:
    """Row builder for relation instances."""

    def to_row(post: PreparedPost) -> dict[str, Any]:
        return {
            "id": post.id,
            "words": post.words,
            "head_span": list(post.head),
            "tail_span": list(post.tail),
            "relation": label_ids[post.relation],
            "image": post.image,
            "crops": post.crops,
        }

    return to_row


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file split on LF only (a CR before the LF is dropped).

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: naming the file if it is not UTF-8.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not valid UTF-8 ({err})") from err
    return [line.removesuffix("\r") for line in text.split("\n")]


def require(record: Mapping[str, Any], key: str) -> Any:
    """``record[key]``, or ValueError naming the missing field."""
    if key not in record:
        raise ValueError(f"missing field {key!r}")
    return record[key]


def as_strings(value: Any, name: str) -> list[str]:
    """Validates a list of non-empty strings."""
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"{name!r} must be a list of non-empty strings")
    return value


def as_string(value: Any, name: str) -> str:
    """Validates a non-empty string."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name!r} must be a non-empty string")
    return value


def gold_ner_tags(dataset: datasets.Dataset) -> list[list[str]]:
    """The rows' gold BIO tags as strings."""
    names = dataset.features["ner_tags"].feature.names
    return [[names[label] for label in row] for row in dataset["ner_tags"]]
