"""Object crops for a whole data set: [`extract_objects`] runs an [`MMIBObjectExtractor`] over a JSON-lines split or a
benchmark folder (Twitter-2015/2017, MNRE) whose images exist and whose crops do not, and writes the crops in the
layout the readers of `mmib.data` read. A JSON-lines file is read by the one post reader (`mmib.post_files`), so the
posts `mmib predict` reads (raw `text` or `words`) and training files alike are accepted.

Output (`output_dir`; `<split>` is the split's folder name, `train` / `val` / `test`, or the JSON-lines file's stem):

```
<output_dir>/<split>/crops/<key>_crop_<k>.png      crops, best object first (k = 0, 1, ...)
<output_dir>/<split>_dict.json                     benchmarks: crop dictionary {key: [crop file names]}
<output_dir>/<file name>.jsonl                     JSON lines: every record of the source, with "crops" (relative
                                                   paths) and "objects" ([{"box", "score", "query"}]) filled in
<output_dir>/extraction_report.json                the counts of [`ExtractionReport`]
<output_dir>/.records/<split>/<key>.json            one record per post with an image (the resume state)
```

Keys are those of the benchmark crop dictionaries (`"<IMGID>.jpg"` for Twitter, the 0-based record index for MNRE);
JSON-lines crops are named by record index. The dictionaries are read back with
`load_twitter_ner(data_dir, crop_dir=output_dir, crop_dicts=report.crop_dicts)` (or `load_mnre`); the JSON-lines
file with `load_jsonl`.

A post that brings its own crops (JSON lines) is left alone; a post without an image file gets no crops. No image stops
a run: an image that cannot be decoded, or that the detector fails on even alone, is counted, listed with its reason in
the report and recorded (no crops; its row is written all the same), and the run goes on. Each post's crops are written
first and its record last, both atomically (temporary file, then rename): a killed run resumes where it stopped and
never redoes a recorded post. Before a batch is detected, each of its posts notes an attempt
(`.records/<split>/<key>.attempts`); a resumed run detects a post that was being detected when a run died alone, and
records a post that was being detected when `MAX_ATTEMPTS` runs died as failed instead of trying it again, so that an
image that kills the process (e.g. out of memory) never stops a data set from finishing. Under `accelerate launch` the
posts are split across processes (`PartialState().split_between_processes`); the main process writes the dictionaries
and the report.

[`extract_missing_crops`] does the same for the rows of a `DatasetDict` already read (`train_mmib.py
--object_detector`): each split's rows are written as JSON lines named by their content
(`<output_dir>/posts/<split>-<sha256[:12]>.jsonl`), so a changed selection of posts never reuses another's records,
and run through [`extract_objects`]; with the extractor's `cache_dir` a picture is detected once across runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
from accelerate import PartialState
from tqdm.auto import tqdm

from .atomic_files_mmib import atomic_write, atomic_write_text
from .data.media import SPLIT_FOLDERS, MissingMediaReport, missing_media_report
from .data.mnre import MNRE_SPLITS, load_mnre
from .data.twitter import TWITTER_SPLITS, load_twitter_ner
from .object_extraction_mmib import ZERO_SHOT, DetectionError, MMIBObjectExtractor
from .post_files import read_posts
from .posts_mmib import PreparedPost

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
DATASETS = ("jsonl", "twitter2015", "twitter2017", "mnre")
# How many unreadable or failed files the report lists by name with the reason (all are counted).
LISTED_FILES = 20
# Runs that may die while detecting a post before the post is recorded as failed.
MAX_ATTEMPTS = 2


@dataclass
class ExtractionReport:
    """Counts of one [`extract_objects`] run (over all processes and earlier, resumed runs).

    Args:
        posts: posts read.
        own_crops: posts that brought their own crops (left alone).
        no_image: posts without an image or whose image file does not exist.
        unreadable: image files that could not be decoded (their posts get no crops).
        unreadable_files: the first `LISTED_FILES` of them.
        failed: images the detector failed on even alone, or that were being detected when `MAX_ATTEMPTS` runs died
            (their posts get no crops).
        failures: the first `LISTED_FILES` unreadable or failed images, `{"file", "status", "reason"}`.
        no_query: posts without any query (text-queried detectors; no crops).
        with_objects: posts that got at least one crop.
        without_objects: posts whose image had no box passing the selection.
        objects: crops written.
        resumed: posts found done from an earlier run.
        unfinished: posts with an image but no record after the run (another process failed; rerun to finish).
        detected: posts processed in this run.
        crop_dir: folder of the crops (`crop_dir` of the readers).
        crop_dicts: benchmark crop dictionaries, `{split: path}` (`crop_dicts` of the readers).
        jsonl_files: written JSON-lines files, `{split: path}`.
        settings: the extractor's settings ([`MMIBObjectExtractor.to_dict`]).
    """

    posts: int = 0
    own_crops: int = 0
    no_image: int = 0
    unreadable: int = 0
    unreadable_files: list[str] = field(default_factory=list)
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    no_query: int = 0
    with_objects: int = 0
    without_objects: int = 0
    objects: int = 0
    resumed: int = 0
    unfinished: int = 0
    detected: int = 0
    crop_dir: str = ""
    crop_dicts: dict[str, str] = field(default_factory=dict)
    jsonl_files: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Item:
    """One post of the job: its split folder, its key (the name of its record and crops) and the post."""

    split: str
    key: str
    post: PreparedPost


def _write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, ensure_ascii=False))


def _jsonl_items(path: Path, image_root: Path) -> list[_Item]:
    """The posts of a JSON-lines file, read by the one post reader (`row` keeps every key), media paths absolute.

    Raises:
        ValueError: naming the file and line of a post that cannot be used.
    """
    items = []
    for index, post in enumerate(read_posts(path, image_root, decode_images=False)):
        post.image = os.path.normpath(post.image) if post.image is not None else None
        post.crops = [os.path.normpath(crop) for crop in post.crops]
        items.append(_Item(split=path.stem, key=str(index), post=post))
    return items


def _benchmark_items(
    dataset: str, data_dir: Path, image_dir: PathLike | None, splits: Mapping[str, str] | None
) -> list[_Item]:
    if dataset == "mnre":
        data = load_mnre(data_dir, image_dir=image_dir, crop_dicts={}, splits=splits or MNRE_SPLITS)
    else:
        data = load_twitter_ner(data_dir, image_dir=image_dir, crop_dicts={}, splits=splits or TWITTER_SPLITS)
    items = []
    for split, rows in data.items():
        folder = SPLIT_FOLDERS.get(split, split)
        for row in rows:
            post = PreparedPost(
                row["id"], words=row["words"], image=row["image"], head=row.get("head_span"), tail=row.get("tail_span")
            )
            items.append(_Item(split=folder, key=row["id"] if dataset == "mnre" else f"{row['id']}.jpg", post=post))
    return items


def _record_path(output_dir: Path, item: _Item) -> Path:
    return output_dir / ".records" / item.split / f"{item.key}.json"


def _attempts_path(output_dir: Path, item: _Item) -> Path:
    return output_dir / ".records" / item.split / f"{item.key}.attempts"


def _attempts(output_dir: Path, item: _Item) -> int:
    """Runs that started detecting this post and did not record it (see the module docstring)."""
    path = _attempts_path(output_dir, item)
    try:
        return int(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return 0


def _note_attempt(output_dir: Path, item: _Item, attempts: int) -> None:
    path = _attempts_path(output_dir, item)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, str(attempts + 1))


def _record_given_up(output_dir: Path, item: _Item, attempts: int) -> None:
    """Records a post whose detection was under way when `attempts` runs died: failed, never tried again."""
    reason = f"the process died while detecting this image in {attempts} runs; not tried again"
    logger.warning("No objects for %s: %s", item.post.image, reason)
    record = {"status": "failed", "reason": reason, "image": item.post.image, "crops": [], "objects": []}
    path = _record_path(output_dir, item)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, record)


def _crop_name(item: _Item, index: int) -> str:
    return f"{Path(item.key).stem if item.key.endswith('.jpg') else item.key}_crop_{index}.png"


def _process(extractor: MMIBObjectExtractor, items: Sequence[_Item], output_dir: Path) -> None:
    """Detects, writes the crops and then the record of each post (atomically)."""
    posts = [item.post for item in items]
    errors: list[Exception | None] = []
    results = extractor(
        [post.image for post in posts],
        words=[post.words for post in posts],
        head_spans=[post.head for post in posts],
        tail_spans=[post.tail for post in posts],
        on_unreadable="mask",
        errors=errors,
    )
    for item, post, objects, error in zip(items, posts, results, errors):
        if objects is None:
            status = "failed" if isinstance(error, DetectionError) else "unreadable"
            record = {"status": status, "reason": str(error), "image": post.image, "crops": [], "objects": []}
        else:
            crop_folder = output_dir / item.split / "crops"
            crop_folder.mkdir(parents=True, exist_ok=True)
            names = []
            for index, obj in enumerate(objects):
                name = _crop_name(item, index)
                atomic_write(crop_folder / name, lambda target, crop=obj.crop: crop.save(target, format="PNG"))
                names.append(name)
            no_query = extractor.kind == ZERO_SHOT and not extractor.queries_for(post.words, post.head, post.tail)
            status = "no_query" if no_query else ("objects" if objects else "none")
            record = {
                "status": status,
                "image": post.image,
                "crops": names,
                "objects": [obj.to_dict() for obj in objects],
            }
        path = _record_path(output_dir, item)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, record)


def extract_objects(
    extractor: MMIBObjectExtractor,
    source: PathLike,
    output_dir: PathLike,
    dataset: str | None = None,
    image_dir: PathLike | None = None,
    splits: Mapping[str, str] | None = None,
    show_progress: bool = True,
) -> ExtractionReport:
    """
    Makes the object crops of a data set (see the module docstring for the output layout and the resume rule).

    Args:
        extractor ([`MMIBObjectExtractor`]): the detector and its settings.
        source (`str` or `os.PathLike`): a JSON-lines file, or a benchmark folder (`twitter2015`, `twitter2017`,
            `mnre` layout of `mmib.data`).
        output_dir (`str` or `os.PathLike`): where crops, dictionaries, records and the report go.
        dataset (`str`, *optional*): `"jsonl"`, `"twitter2015"`, `"twitter2017"` or `"mnre"`; defaults to
            `"jsonl"` for a file and to the folder's name for a folder.
        image_dir (`str` or `os.PathLike`, *optional*): image folder, if not the reader's default (JSON lines:
            the folder relative image paths resolve against; default the file's folder).
        splits (`dict`, *optional*): benchmark split files, as the readers' `splits`.
        show_progress (`bool`, *optional*, defaults to `True`): a tqdm bar on the local main process.

    Returns:
        [`ExtractionReport`] (also written to `<output_dir>/extraction_report.json` and logged).

    Raises:
        ValueError: unknown data set, malformed input (naming file and line), or an output that would overwrite
            the source.
    """
    source = Path(source).absolute()
    output_dir = Path(output_dir).absolute()
    if dataset is None:
        dataset = "jsonl" if source.is_file() else source.name
    if dataset not in DATASETS:
        raise ValueError(f"Unknown data set {dataset!r} for {source}; expected one of {DATASETS}.")
    if dataset == "jsonl":
        if (output_dir / source.name) == source:
            raise ValueError(f"The output {output_dir / source.name} would overwrite the source {source}.")
        items = _jsonl_items(source, Path(image_dir).absolute() if image_dir is not None else source.parent)
    else:
        items = _benchmark_items(dataset, source, image_dir, splits)
    state = PartialState()
    output_dir.mkdir(parents=True, exist_ok=True)
    work = [
        item
        for item in items
        if not item.post.crops
        and item.post.image is not None
        and os.path.isfile(item.post.image)
        and not _record_path(output_dir, item).is_file()
    ]
    resumed = sum(1 for item in items if _record_path(output_dir, item).is_file())
    # Every process must split the same list: none may write a record before all have read the state.
    state.wait_for_everyone()
    with state.split_between_processes(work) as mine:
        shown = show_progress and state.is_local_main_process
        progress = tqdm(total=len(mine), desc="object extraction", unit="post", disable=not shown)
        attempts = {id(item): _attempts(output_dir, item) for item in mine}
        # Posts a dead run was detecting go first and alone: one of them may be what killed it.
        retried = [[item] for item in mine if attempts[id(item)]]
        fresh = [item for item in mine if not attempts[id(item)]]
        batches = retried + [
            fresh[start : start + extractor.batch_size] for start in range(0, len(fresh), extractor.batch_size)
        ]
        for batch in batches:
            if attempts[id(batch[0])] >= MAX_ATTEMPTS:
                _record_given_up(output_dir, batch[0], attempts[id(batch[0])])
            else:
                for item in batch:
                    _note_attempt(output_dir, item, attempts[id(item)])
                _process(extractor, batch, output_dir)
            for item in batch:
                _attempts_path(output_dir, item).unlink(missing_ok=True)
            progress.update(len(batch))
        progress.close()
    state.wait_for_everyone()
    report = _summarise(extractor, dataset, source, items, output_dir, resumed, len(work), state.is_main_process)
    state.wait_for_everyone()
    return report


def _summarise(
    extractor: MMIBObjectExtractor,
    dataset: str,
    source: Path,
    items: Sequence[_Item],
    output_dir: Path,
    resumed: int,
    detected: int,
    write: bool,
) -> ExtractionReport:
    """Counts every post from its record; on the main process writes the dictionaries, JSON lines and report."""
    report = ExtractionReport(posts=len(items), resumed=resumed, detected=detected, crop_dir=str(output_dir))
    try:
        report.settings = extractor.to_dict()
    except ValueError:
        report.settings = {"detector": extractor.detector, "query_rule": "callable"}
    crop_dicts: dict[str, dict[str, list[str]]] = {}
    records: list[dict[str, Any] | None] = []
    for item in items:
        post, record = item.post, None
        if post.crops:
            report.own_crops += 1
        elif post.image is None or not os.path.isfile(post.image):
            report.no_image += 1
        else:
            path = _record_path(output_dir, item)
            record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
            # Only when another process failed: the post is counted, and a rerun does it.
            report.unfinished += record is None
        records.append(record)
        if record is None:
            continue
        status = record["status"]
        if status in ("unreadable", "failed"):
            if status == "unreadable":
                report.unreadable += 1
                if len(report.unreadable_files) < LISTED_FILES:
                    report.unreadable_files.append(post.image)
            else:
                report.failed += 1
            if len(report.failures) < LISTED_FILES:
                # Records of earlier versions give no reason.
                reason = record.get("reason", "")
                report.failures.append({"file": post.image, "status": status, "reason": reason})
        elif status == "no_query":
            report.no_query += 1
        elif status == "none":
            report.without_objects += 1
        else:
            report.with_objects += 1
        report.objects += len(record["crops"])
        crop_dicts.setdefault(item.split, {})[item.key] = record["crops"]
    if not write:
        return report
    if dataset == "jsonl":
        target = output_dir / source.name
        lines = []
        for item, record in zip(items, records):
            post, row = item.post, dict(item.post.row)
            if record is not None:
                row["crops"] = [f"{item.split}/crops/{name}" for name in record["crops"]]
                row["objects"] = record["objects"]
            if post.image is not None:
                row["image"] = _portable(post.image, output_dir)
            if post.crops:
                row["crops"] = [_portable(crop, output_dir) for crop in post.crops]
            lines.append(json.dumps(row, ensure_ascii=False))
        atomic_write_text(target, "\n".join(lines) + "\n")
        report.jsonl_files[source.stem] = str(target)
    else:
        for split, crop_dict in crop_dicts.items():
            path = output_dir / f"{split}_dict.json"
            _write_json(path, crop_dict)
            report.crop_dicts[{v: k for k, v in SPLIT_FOLDERS.items()}.get(split, split)] = str(path)
    _write_json(output_dir / "extraction_report.json", asdict(report))
    logger.warning("Object extraction of %s: %s", source, json.dumps(asdict(report)))
    return report


def _portable(path: str, folder: Path) -> str:
    """`path` relative to `folder` if inside it, else absolute, so the output file and its crops move together."""
    try:
        return Path(path).relative_to(folder).as_posix()
    except ValueError:
        return path


def extract_missing_crops(
    data: datasets.DatasetDict,
    extractor: MMIBObjectExtractor,
    output_dir: PathLike,
    show_progress: bool = True,
) -> tuple[datasets.DatasetDict, dict[str, ExtractionReport]]:
    """
    Gives the rows of `data` that have an image and no crops the crops of `extractor` (rows with crops keep them).

    Args:
        data (`datasets.DatasetDict`): rows of the `mmib.data` readers (`words`, `image`, `crops`, and for
            relations `head_span` / `tail_span`).
        extractor ([`MMIBObjectExtractor`]): the detector and its settings (give it a `cache_dir` to detect each
            picture once across runs).
        output_dir (`str` or `os.PathLike`): where the posts, crops, records and reports go.
        show_progress (`bool`, *optional*, defaults to `True`): a tqdm bar on the local main process.

    Returns:
        `(data with the crops filled in, {split: ExtractionReport})`. Each split's missing-media report counts the
        added crops in `crops_found`.
    """
    output_dir = Path(output_dir).absolute()
    (output_dir / "posts").mkdir(parents=True, exist_ok=True)
    filled, reports = {}, {}
    for split, dataset in data.items():
        relation = "head_span" in dataset.column_names
        lines = []
        for row in dataset.select_columns(
            ["words", "image", "crops"] + (["head_span", "tail_span"] if relation else [])
        ):
            record = {"words": row["words"], "image": row["image"], "crops": row["crops"]}
            if relation:
                record.update(head=row["head_span"], tail=row["tail_span"])
            lines.append(json.dumps(record, ensure_ascii=False))
        text = "\n".join(lines) + "\n"
        source = output_dir / "posts" / f"{split}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.jsonl"
        if not source.is_file():
            atomic_write_text(source, text)
        report = extract_objects(extractor, source, output_dir, dataset="jsonl", show_progress=show_progress)
        result = output_dir / source.name
        rows = [json.loads(line) for line in result.read_text(encoding="utf-8").splitlines()]
        # Own crops come back as they went in (absolute); extracted ones relative to `output_dir`.
        crops = [[os.path.normpath(output_dir / crop) for crop in row.get("crops") or []] for row in rows]
        media = missing_media_report(dataset)
        added = sum(len(new) for old, new in zip(dataset["crops"], crops) if not old)
        updated = dataset.remove_columns("crops").add_column("crops", crops, feature=dataset.features["crops"])
        updated = updated.select_columns(dataset.column_names)
        media = MissingMediaReport(**{**asdict(media), "crops_found": media.crops_found + added})
        updated.info.description = media.to_json()
        filled[split], reports[split] = updated, report
    return datasets.DatasetDict(filled), reports


__all__ = ["DATASETS", "ExtractionReport", "extract_missing_crops", "extract_objects"]
