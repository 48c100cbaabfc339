"""Reader of the MNRE layout (multimodal relation extraction) and its `ours_rel2id.json` labels."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

import datasets

from ..posts_mmib import PreparedPost, span_field, words_field
from .labels import check_relations
from .media import PathLike, attach_crops, crop_dicts_for, resolver, split_folder
from .rows import as_string, build_split, re_features, re_row, read_lines, require

MNRE_SPLITS: Mapping[str, str] = MappingProxyType(
    {"train": "txt/ours_train.txt", "validation": "txt/ours_val.txt", "test": "txt/ours_test.txt"}
)

MNRE_CROP_DICTS: Mapping[str, str] = MappingProxyType(
    {"train": "txt/mre_train_dict.pth", "validation": "txt/mre_dev_dict.pth", "test": "txt/mre_test_dict.pth"}
)


def read_relation_labels(path: PathLike) -> list[str]:
    """Reads an MNRE-style ``rel2id`` JSON file into label names ordered by id.

    Args:
        path: JSON object ``{relation: id}`` with ids 0..n-1.

    Returns:
        Relation names, index = id.

    Raises:
        ValueError: naming the file if it is not such an object.
    """
    path = Path(path)
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(mapping, dict) or sorted(mapping.values()) != list(range(len(mapping))):
        raise ValueError(f"{path}: expected a JSON object {{relation: id}} with ids 0..n-1")
    return sorted(mapping, key=mapping.__getitem__)


def _parse_mnre_record(text: str, index: int) -> PreparedPost:
    """Parses one MNRE line (a Python dict literal) with ``ast.literal_eval``.

    Raises:
        ValueError: if the line is not such a literal or a field is missing or invalid.
    """
    try:
        record = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
        raise ValueError(f"not a Python literal ({type(err).__name__}: {err})") from err
    if not isinstance(record, dict):
        raise ValueError(f"expected a dict literal, got {type(record).__name__}")
    words = words_field(require(record, "token"), "token")
    spans = {}
    for key in ("h", "t"):
        entity = require(record, key)
        if not isinstance(entity, dict):
            raise ValueError(f"{key!r} must be a dict with 'pos'")
        spans[key] = span_field(require(entity, "pos"), f"{key}.pos", len(words))
    return PreparedPost(
        id=str(index),
        words=words,
        head=spans["h"],
        tail=spans["t"],
        relation=as_string(require(record, "relation"), "relation"),
        line=0,
        image=as_string(require(record, "img_id"), "img_id"),
    )


def _read_mnre(path: Path) -> list[PreparedPost]:
    """Parses an MNRE ``ours_*.txt`` file: one dict literal per line (blank lines skipped).

    Raises:
        ValueError: naming file and line of an invalid line; also for a file without records.
    """
    posts = []
    for line_no, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            post = _parse_mnre_record(line, len(posts))
        except ValueError as err:
            raise ValueError(f"{path}:{line_no}: {err}") from err
        post.line = line_no
        posts.append(post)
    if not posts:
        raise ValueError(f"{path}: no records found")
    return posts


def _mnre_crop_dict_path(data_dir: Path) -> Callable[[str], Path]:
    """Default MNRE crop dictionary of a split (``txt/mre_<split>_dict.pth`` for non-standard splits)."""
    return lambda split: data_dir / MNRE_CROP_DICTS.get(split, f"txt/mre_{split}_dict.pth")


def load_mnre(
    data_dir: PathLike,
    image_dir: PathLike | None = None,
    crop_dir: PathLike | None = None,
    crop_dicts: Mapping[str, PathLike] | None = None,
    splits: Mapping[str, str] = MNRE_SPLITS,
    num_crops: int | None = None,
    rel2id_file: PathLike = "ours_rel2id.json",
) -> datasets.DatasetDict:
    """Reads MNRE (HVPNeT / MKGformer / TMR layout) into a relation ``DatasetDict``.

    Default layout (``<split folder>`` = ``train``, ``val``, ``test``)::

        <data_dir>/txt/ours_{train,val,test}.txt               one Python dict literal per line (``splits``)
        <data_dir>/ours_rel2id.json                            relation ids (``rel2id_file``)
        <data_dir>/img_org/<split folder>/<img_id>             images (``image_dir``)
        <data_dir>/txt/mre_{train,dev,test}_dict.pth           crop dictionaries (``crop_dicts``)
        <data_dir>/img_vg/<split folder>/crops/<name>          crops (``crop_dir``)

    A crop dictionary maps the 0-based record index of the split file to crop file names; the first
    ``num_crops`` are used. Row ids are those record indexes as strings. Lines are parsed with
    ``ast.literal_eval`` (never ``eval``).

    Args:
        data_dir: MNRE root folder.
        image_dir: folder with one sub-folder of images per split.
        crop_dir: folder holding ``<split folder>/crops/<name>``.
        crop_dicts: ``{split: path}`` of crop dictionaries (``.pth`` or ``.json``); splits not listed get no
            crops. None = ``<crop_dir>/<split folder>_dict.json`` if a ``crop_dir`` is given and it exists (what
            ``mmib extract-objects`` writes), else the default file (``.pth``, or ``.json`` of the same name).
        splits: ``{split: path relative to data_dir}``.
        num_crops: maximum number of crops per instance (None = every listed crop; the processor keeps the first
            ``processor.num_crops``). ``train_mmib.py`` passes the model's value.
        rel2id_file: ``{relation: id}`` JSON, relative to ``data_dir`` (or absolute).

    Returns:
        ``DatasetDict`` of relation rows; ``relation`` label names in id order.

    Raises:
        FileNotFoundError: if a split file, the rel2id file or an explicit crop dictionary is missing.
        ValueError: naming file and line for an invalid line (bad literal, missing field, span out of range,
            unknown relation); naming the file for an unreadable crop dictionary or rel2id file.
    """
    data_dir = Path(data_dir).absolute()
    image_dir = Path(image_dir) if image_dir is not None else data_dir / "img_org"
    given_crop_dir = crop_dir
    crop_dir = Path(crop_dir) if crop_dir is not None else data_dir / "img_vg"
    names = read_relation_labels(data_dir / rel2id_file)
    label_ids = {label: index for index, label in enumerate(names)}
    crop_maps = crop_dicts_for(splits, crop_dicts, _mnre_crop_dict_path(data_dir), given_crop_dir)
    result = {}
    for split, file_name in splits.items():
        source = data_dir / file_name
        posts = _read_mnre(source)
        check_relations(source, posts, label_ids)
        folder = split_folder(split)
        resolve_image = resolver(image_dir / folder)
        for post in posts:
            post.image = resolve_image(post.image)
        keys = [post.id for post in posts]
        without_entry = attach_crops(keys, posts, crop_maps[split], crop_dir / folder / "crops", num_crops)
        result[split] = build_split(split, source, posts, re_features(names), re_row(label_ids), without_entry)
    return datasets.DatasetDict(result)
