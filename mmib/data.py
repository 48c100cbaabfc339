"""Dataset readers for MMIB: Twitter-2015/2017 NER, MNRE relations, and a JSON-lines format for own posts.

Every reader returns a ``datasets.DatasetDict`` (splits ``train`` / ``validation`` / ``test`` by default) with
the rows of the package contract; ``image`` and ``crops`` hold absolute paths of files that exist:

- NER: ``{"id": str, "words": list[str], "ner_tags": list[int] (ClassLabel ids), "image": str | None,
  "crops": list[str]}``.
- RE: ``{"id": str, "words": list[str], "head_span": [start, end], "tail_span": [start, end],
  "relation": int (ClassLabel id), "image": str | None, "crops": list[str]}``; spans are word offsets with the
  end exclusive.

Label names
-----------
NER labels are inferred from the ``train`` split (from all splits if there is no ``train`` split) unless
``label_names`` is given: ``"O"`` first, then ``B-<type>``, ``I-<type>`` for every entity type seen, types ordered
PER, LOC, ORG, MISC, OTHER, then any other type alphabetically. Twitter-2017 thus gets ``O, B-PER, I-PER, B-LOC,
I-LOC, B-ORG, I-ORG, B-MISC, I-MISC``; Twitter-2015 the same with ``OTHER`` for ``MISC`` (no renaming). A tag of
another split that is not among the labels is an error naming the file and line. MNRE relation labels come from
``ours_rel2id.json`` in id order (``"None"`` = 0). JSON-lines relation labels, when not given, are ``"None"``
(if present) followed by the other relations of the ``train`` split (or all splits) alphabetically.

Missing images and crops
------------------------
Only a few sample images exist for the benchmarks, so a missing image or crop file is not an error: the
``image`` becomes ``None`` and the crop is left out of ``crops``. Each split's counts are kept in a
:class:`MissingMediaReport`, logged once per split with ``logger.warning`` (with the first few missing paths) and
stored as JSON in the split's ``Dataset.info.description`` (key ``"mmib_missing_media"``), which
``save_to_disk`` / ``load_from_disk`` and ``map`` keep. :func:`missing_media_report` reads it back.

JSON-lines format
-----------------
One JSON object per line (UTF-8; blank lines are skipped; other keys are ignored):

- NER: ``{"id": "post-1", "words": ["Messi", "in", "Paris"], "tags": ["B-PER", "O", "B-LOC"],
  "image": "images/post-1.jpg", "crops": ["crops/post-1_0.png"]}``
- RE: ``{"id": "rel-1", "words": ["Messi", "joins", "PSG"], "head": [0, 1], "tail": [2, 3],
  "relation": "/per/org/member_of", "image": "images/post-1.jpg", "crops": []}``

``words`` is required and non-empty; NER needs ``tags`` (one BIO tag per word), RE needs ``head`` and ``tail``
(``[start, end)`` word offsets, ``0 <= start < end <= len(words)``) and ``relation``. ``id`` is optional
(default: the 0-based record number in its file), ``image`` is optional (``null`` = no image) and ``crops``
is optional (default ``[]``). Relative image and crop paths are resolved against ``image_root`` (default: the
folder of the JSON-lines file). Malformed JSON, a missing field, a length mismatch or an unknown label raises
``ValueError`` naming the file and line. :func:`write_jsonl` writes a split in this format.
"""

from __future__ import annotations

import ast
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

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

TWITTER_SPLITS: Mapping[str, str] = MappingProxyType(
    {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}
)
MNRE_SPLITS: Mapping[str, str] = MappingProxyType(
    {"train": "txt/ours_train.txt", "validation": "txt/ours_val.txt", "test": "txt/ours_test.txt"}
)
MNRE_CROP_DICTS: Mapping[str, str] = MappingProxyType(
    {"train": "txt/mre_train_dict.pth", "validation": "txt/mre_dev_dict.pth", "test": "txt/mre_test_dict.pth"}
)
SPLIT_FOLDERS: Mapping[str, str] = MappingProxyType({"train": "train", "validation": "val", "test": "test"})
ENTITY_TYPE_ORDER = ("PER", "LOC", "ORG", "MISC", "OTHER")
IMGID_PREFIX = "IMGID:"
REPORT_KEY = "mmib_missing_media"
MAX_MISSING_EXAMPLES = 5
TASKS = ("ner", "re")


# --------------------------------------------------------------------------------------------------------------
# Missing-media report


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


# --------------------------------------------------------------------------------------------------------------
# Parsed posts and features


@dataclass
class _NerPost:
    """One NER post as parsed, before label encoding.

    ``image`` / ``crops`` first hold the references found in the source, then candidate absolute paths, then
    (after :meth:`MissingMediaReport.check_image` / ``check_crops``) only paths of existing files.
    """

    id: str
    words: list[str]
    tags: list[str]
    lines: list[int]
    image: str | None = None
    crops: list[str] = field(default_factory=list)


@dataclass
class _RePost:
    """One relation instance as parsed, before label encoding; ``image`` / ``crops`` as in :class:`_NerPost`."""

    id: str
    words: list[str]
    head: list[int]
    tail: list[int]
    relation: str
    line: int
    image: str | None = None
    crops: list[str] = field(default_factory=list)


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


def _build_split(
    split: str,
    source: PathLike,
    posts: Sequence[_NerPost | _RePost],
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


def _ner_row(label_ids: Mapping[str, int]) -> Callable[[_NerPost], dict[str, Any]]:
    """Row builder for NER posts."""

    def to_row(post: _NerPost) -> dict[str, Any]:
        return {
            "id": post.id,
            "words": post.words,
            "ner_tags": [label_ids[tag] for tag in post.tags],
            "image": post.image,
            "crops": post.crops,
        }

    return to_row


def _re_row(label_ids: Mapping[str, int]) -> Callable[[_RePost], dict[str, Any]]:
    """Row builder for relation instances."""

    def to_row(post: _RePost) -> dict[str, Any]:
        return {
            "id": post.id,
            "words": post.words,
            "head_span": post.head,
            "tail_span": post.tail,
            "relation": label_ids[post.relation],
            "image": post.image,
            "crops": post.crops,
        }

    return to_row


# --------------------------------------------------------------------------------------------------------------
# Labels


def _entity_type(tag: str) -> str | None:
    """Entity type of a BIO tag (None for ``"O"``).

    Raises:
        ValueError: if the tag is not ``O``, ``B-<type>`` or ``I-<type>``.
    """
    if tag == "O":
        return None
    prefix, sep, entity_type = tag.partition("-")
    if prefix not in ("B", "I") or not sep or not entity_type:
        raise ValueError(f"tag {tag!r} is not a BIO tag (O, B-<type>, I-<type>)")
    return entity_type


def bio_label_names(entity_types: Iterable[str]) -> list[str]:
    """BIO label names for a set of entity types, in the package's canonical order.

    Args:
        entity_types: entity type names (duplicates allowed).

    Returns:
        ``["O", "B-T1", "I-T1", ...]`` with types ordered PER, LOC, ORG, MISC, OTHER, then others alphabetically.
    """

    def rank(entity_type: str) -> tuple[int, str]:
        known = ENTITY_TYPE_ORDER.index(entity_type) if entity_type in ENTITY_TYPE_ORDER else len(ENTITY_TYPE_ORDER)
        return known, entity_type

    ordered = sorted(set(entity_types), key=rank)
    return ["O"] + [f"{prefix}-{entity_type}" for entity_type in ordered for prefix in ("B", "I")]


def _label_source_splits(split_names: Iterable[str]) -> list[str]:
    """Splits labels are inferred from: ``train`` if present, else all."""
    names = list(split_names)
    return ["train"] if "train" in names else names


def _infer_ner_labels(parsed: Mapping[str, tuple[Path, list[_NerPost]]]) -> list[str]:
    """Infers BIO label names from the training split (or all splits), checking the tag syntax.

    Raises:
        ValueError: naming file and line of a tag that is not BIO.
    """
    entity_types = set()
    for split in _label_source_splits(parsed):
        source, posts = parsed[split]
        for post in posts:
            for tag, line in zip(post.tags, post.lines):
                try:
                    entity_type = _entity_type(tag)
                except ValueError as err:
                    raise ValueError(f"{source}:{line}: {err}") from err
                if entity_type is not None:
                    entity_types.add(entity_type)
    return bio_label_names(entity_types)


def _unique_names(label_names: Sequence[str]) -> list[str]:
    """Validates explicit label names: non-empty strings without duplicates."""
    names = list(label_names)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"label_names must be a non-empty list of non-empty strings, got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"label_names contains duplicates: {names}")
    return names


def _check_bio_names(label_names: Sequence[str]) -> list[str]:
    """Validates explicit BIO label names (unique, BIO syntax)."""
    names = _unique_names(label_names)
    for name in names:
        _entity_type(name)
    return names


def _check_ner_tags(source: Path, posts: Iterable[_NerPost], label_ids: Mapping[str, int]) -> None:
    """Raises ValueError naming file and line of the first tag not in ``label_ids``."""
    for post in posts:
        for tag, line in zip(post.tags, post.lines):
            if tag not in label_ids:
                raise ValueError(f"{source}:{line}: unknown tag {tag!r}; known labels: {list(label_ids)}")


def _check_relations(source: Path, posts: Iterable[_RePost], label_ids: Mapping[str, int]) -> None:
    """Raises ValueError naming file and line of the first relation not in ``label_ids``."""
    for post in posts:
        if post.relation not in label_ids:
            raise ValueError(f"{source}:{post.line}: unknown relation {post.relation!r}; known: {list(label_ids)}")


def _infer_relation_labels(parsed: Mapping[str, tuple[Path, list[_RePost]]], none_label: str = "None") -> list[str]:
    """``"None"`` (if present) then the other relations of the training split (or all splits), sorted."""
    relations = {post.relation for split in _label_source_splits(parsed) for post in parsed[split][1]}
    head = [none_label] if none_label in relations else []
    return head + sorted(relations - {none_label})


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


# --------------------------------------------------------------------------------------------------------------
# Crop dictionaries


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


def _resolver(folder: PathLike) -> Callable[[str], str]:
    """Function turning a path relative to ``folder`` (or an absolute path) into a normalized absolute path."""
    base = os.path.abspath(folder)
    return lambda path: os.path.normpath(os.path.join(base, path))


def _split_folder(split: str) -> str:
    """Folder name the benchmark layouts use for a split (``validation`` -> ``val``)."""
    return SPLIT_FOLDERS.get(split, split)


def _crop_dicts_for(
    splits: Iterable[str],
    crop_dicts: Mapping[str, PathLike] | None,
    default_path: Callable[[str], Path],
) -> dict[str, dict[str, list[str]] | None]:
    """Loads each split's crop dictionary.

    Explicit ``crop_dicts`` must exist (splits absent from it get no crops). With ``crop_dicts=None`` the
    default file is used when it exists; otherwise the split gets no crops and a warning says so.
    """
    loaded: dict[str, dict[str, list[str]] | None] = {}
    for split in splits:
        if crop_dicts is not None:
            loaded[split] = read_crop_dict(crop_dicts[split]) if split in crop_dicts else None
            continue
        path = default_path(split)
        if path.is_file():
            loaded[split] = read_crop_dict(path)
        else:
            logger.warning("no crop dictionary at %s: posts of split %r get no crops", path, split)
            loaded[split] = None
    return loaded


def _attach_crops(
    keys: Sequence[str],
    posts: Sequence[_NerPost | _RePost],
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
    resolve = _resolver(folder)
    without_entry = 0
    for key, post in zip(keys, posts):
        if key not in crop_map:
            without_entry += 1
        post.crops = [resolve(name) for name in crop_map.get(key, [])[:num_crops]]
    return without_entry


# --------------------------------------------------------------------------------------------------------------
# Line-level parsing helpers


def _read_lines(path: Path) -> list[str]:
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


def _require(record: Mapping[str, Any], key: str) -> Any:
    """``record[key]``, or ValueError naming the missing field."""
    if key not in record:
        raise ValueError(f"missing field {key!r}")
    return record[key]


def _as_words(value: Any, name: str) -> list[str]:
    """Validates a non-empty list of strings."""
    if not isinstance(value, list) or not value or not all(isinstance(word, str) for word in value):
        raise ValueError(f"{name!r} must be a non-empty list of strings")
    return value


def _as_span(value: Any, num_words: int, name: str) -> list[int]:
    """Validates a ``[start, end)`` word span with ``0 <= start < end <= num_words``."""
    is_pair = isinstance(value, (list, tuple)) and len(value) == 2
    if not is_pair or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{name!r} must be a pair of integers [start, end], got {value!r}")
    start, end = value
    if not 0 <= start < end <= num_words:
        raise ValueError(f"{name!r} span {[start, end]} is not within 0 <= start < end <= {num_words}")
    return [start, end]


def _as_optional_path(value: Any, name: str) -> str | None:
    """Validates an optional non-empty path string."""
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"{name!r} must be a non-empty string or null")
    return value


def _as_strings(value: Any, name: str) -> list[str]:
    """Validates a list of non-empty strings."""
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"{name!r} must be a list of non-empty strings")
    return value


def _as_string(value: Any, name: str) -> str:
    """Validates a non-empty string."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name!r} must be a non-empty string")
    return value


# --------------------------------------------------------------------------------------------------------------
# Twitter-2015 / 2017


def _read_conll(path: Path) -> list[_NerPost]:
    """Parses an ``IMGID:<id>`` / ``token<TAB>tag`` / blank-line file; the last post may lack a blank line.

    Raises:
        ValueError: naming file and line of a malformed line (no TAB, empty token or tag, token line outside a
            post, empty IMGID) or of a post without tokens; also for a file without posts.
    """
    posts: list[_NerPost] = []
    current: _NerPost | None = None
    start_line = 0
    for line_no, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            _close_post(current, start_line, path, posts)
            current = None
        elif line.startswith(IMGID_PREFIX):
            _close_post(current, start_line, path, posts)
            image_id = line[len(IMGID_PREFIX) :].strip()
            if not image_id:
                raise ValueError(f"{path}:{line_no}: empty IMGID")
            current, start_line = _NerPost(id=image_id, words=[], tags=[], lines=[]), line_no
        elif current is None:
            raise ValueError(f"{path}:{line_no}: token line outside a post (no IMGID line before it): {line!r}")
        else:
            word, tag = _split_token_line(line, path, line_no)
            current.words.append(word)
            current.tags.append(tag)
            current.lines.append(line_no)
    _close_post(current, start_line, path, posts)
    if not posts:
        raise ValueError(f"{path}: no posts found")
    return posts


def _split_token_line(line: str, path: Path, line_no: int) -> tuple[str, str]:
    """Splits ``token<TAB>tag`` at the last TAB; the token is kept verbatim (it may be e.g. U+00A0)."""
    word, sep, tag = line.rpartition("\t")
    tag = tag.strip()
    if not sep:
        raise ValueError(f"{path}:{line_no}: expected 'token<TAB>tag', found no TAB: {line!r}")
    if not tag:
        raise ValueError(f"{path}:{line_no}: empty tag: {line!r}")
    if not word:
        raise ValueError(f"{path}:{line_no}: empty token: {line!r}")
    return word, tag


def _close_post(post: _NerPost | None, start_line: int, path: Path, posts: list[_NerPost]) -> None:
    """Appends a finished post; a post without tokens is an error."""
    if post is None:
        return
    if not post.words:
        raise ValueError(f"{path}:{start_line}: post {IMGID_PREFIX}{post.id} has no tokens")
    posts.append(post)


def load_twitter_ner(
    data_dir: PathLike,
    image_dir: PathLike | None = None,
    crop_dir: PathLike | None = None,
    crop_dicts: Mapping[str, PathLike] | None = None,
    splits: Mapping[str, str] = TWITTER_SPLITS,
    num_crops: int | None = None,
    label_names: Sequence[str] | None = None,
) -> datasets.DatasetDict:
    """Reads Twitter-2015 / Twitter-2017 (UMT / HVPNeT layout) into a NER ``DatasetDict``.

    With ``name = Path(data_dir).name`` (``twitter2015`` or ``twitter2017``) the default layout is::

        <data_dir>/{train,valid,test}.txt                      text (``splits``)
        <data_dir>/<name>_images/<IMGID>.jpg                   images (``image_dir``)
        <data_dir>/<name>_{train,val,test}_dict.pth            crop dictionaries (``crop_dicts``)
        <data_dir>/<name>_aux_images/{train,val,test}/crops/   crops (``crop_dir``)

    A crop dictionary maps ``"<IMGID>.jpg"`` to crop file names; the first ``num_crops`` are used. A default
    crop dictionary that does not exist means no crops (with a warning). Missing image and crop files are
    counted, not errors (see the module docstring).

    Args:
        data_dir: folder of the split files.
        image_dir: folder of ``<IMGID>.jpg`` images.
        crop_dir: folder holding ``<split folder>/crops/<name>`` (split folders ``train``, ``val``, ``test``).
        crop_dicts: ``{split: path}`` of crop dictionaries (``.pth`` or ``.json``); splits not listed get no
            crops. None = the default files.
        splits: ``{split: file name in data_dir}``.
        num_crops: maximum number of crops per post (None = every listed crop; the processor keeps the first
            ``processor.num_crops``). ``train_mmib.py`` passes the model's value.
        label_names: BIO label names (ClassLabel order). None = inferred from the training split.

    Returns:
        ``DatasetDict`` of NER rows.

    Raises:
        FileNotFoundError: if a split file or an explicit crop dictionary is missing.
        ValueError: naming file and line for a malformed line or an unknown tag; naming the file for an
            unreadable crop dictionary.
    """
    data_dir = Path(data_dir).absolute()
    name = data_dir.name
    image_dir = Path(image_dir) if image_dir is not None else data_dir / f"{name}_images"
    crop_dir = Path(crop_dir) if crop_dir is not None else data_dir / f"{name}_aux_images"
    parsed = {split: (data_dir / file_name, _read_conll(data_dir / file_name)) for split, file_name in splits.items()}
    names = _check_bio_names(label_names) if label_names is not None else _infer_ner_labels(parsed)
    label_ids = {label: index for index, label in enumerate(names)}
    crop_maps = _crop_dicts_for(splits, crop_dicts, lambda split: data_dir / f"{name}_{_split_folder(split)}_dict.pth")
    result = {}
    for split, (source, posts) in parsed.items():
        _check_ner_tags(source, posts, label_ids)
        resolve_image = _resolver(image_dir)
        for post in posts:
            post.image = resolve_image(f"{post.id}.jpg")
        keys = [f"{post.id}.jpg" for post in posts]
        crops_folder = crop_dir / _split_folder(split) / "crops"
        without_entry = _attach_crops(keys, posts, crop_maps[split], crops_folder, num_crops)
        result[split] = _build_split(split, source, posts, ner_features(names), _ner_row(label_ids), without_entry)
    return datasets.DatasetDict(result)


# --------------------------------------------------------------------------------------------------------------
# MNRE


def _parse_mnre_record(text: str, index: int) -> _RePost:
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
    words = _as_words(_require(record, "token"), "token")
    spans = {}
    for key in ("h", "t"):
        entity = _require(record, key)
        if not isinstance(entity, dict):
            raise ValueError(f"{key!r} must be a dict with 'pos'")
        spans[key] = _as_span(_require(entity, "pos"), len(words), f"{key}.pos")
    return _RePost(
        id=str(index),
        words=words,
        head=spans["h"],
        tail=spans["t"],
        relation=_as_string(_require(record, "relation"), "relation"),
        line=0,
        image=_as_string(_require(record, "img_id"), "img_id"),
    )


def _read_mnre(path: Path) -> list[_RePost]:
    """Parses an MNRE ``ours_*.txt`` file: one dict literal per line (blank lines skipped).

    Raises:
        ValueError: naming file and line of an invalid line; also for a file without records.
    """
    posts = []
    for line_no, line in enumerate(_read_lines(path), start=1):
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
            crops. None = the default files.
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
    crop_dir = Path(crop_dir) if crop_dir is not None else data_dir / "img_vg"
    names = read_relation_labels(data_dir / rel2id_file)
    label_ids = {label: index for index, label in enumerate(names)}
    crop_maps = _crop_dicts_for(splits, crop_dicts, _mnre_crop_dict_path(data_dir))
    result = {}
    for split, file_name in splits.items():
        source = data_dir / file_name
        posts = _read_mnre(source)
        _check_relations(source, posts, label_ids)
        folder = _split_folder(split)
        resolve_image = _resolver(image_dir / folder)
        for post in posts:
            post.image = resolve_image(post.image)
        keys = [post.id for post in posts]
        without_entry = _attach_crops(keys, posts, crop_maps[split], crop_dir / folder / "crops", num_crops)
        result[split] = _build_split(split, source, posts, re_features(names), _re_row(label_ids), without_entry)
    return datasets.DatasetDict(result)


# --------------------------------------------------------------------------------------------------------------
# JSON lines


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
    words = _as_words(_require(record, "words"), "words")
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
        head=_as_span(_require(record, "head"), len(words), "head"),
        tail=_as_span(_require(record, "tail"), len(words), "tail"),
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


def read_posts(path: PathLike, image_root: PathLike | None = None) -> list[dict[str, Any]]:
    """Reads posts to run a model on, from the JSON-lines format with or without labels (labels are ignored).

    Args:
        path: a ``.jsonl`` file; each record needs ``words`` and may have ``id``, ``image`` and ``crops``.
        image_root: folder against which relative image and crop paths are resolved. None = the file's folder.

    Returns:
        ``[{"id": str, "words": list[str], "image": str | None, "crops": list[str]}, ...]`` with absolute paths
        (not checked for existence: the processor raises for a missing file).

    Raises:
        ValueError: naming file and line for malformed JSON or an invalid field; also for a file without records.
    """
    path = Path(path)
    resolve = _resolver(image_root if image_root is not None else path.absolute().parent)
    posts = []
    for line_no, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            image = _as_optional_path(record.get("image"), "image")
            posts.append(
                {
                    "id": str(record.get("id", len(posts))),
                    "words": _as_words(_require(record, "words"), "words"),
                    "image": resolve(image) if image is not None else None,
                    "crops": [resolve(crop) for crop in _as_strings(record.get("crops", []), "crops")],
                }
            )
        except ValueError as err:
            raise ValueError(f"{path}:{line_no}: {err}") from err
    if not posts:
        raise ValueError(f"{path}: no records found")
    return posts
