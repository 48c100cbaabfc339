"""
MMIB on Ray Data: batch inference over posts on a cluster, one model per actor (`pip install "mmib[ray]"`).

```python
import ray
from mmib.integrations.ray import MMIBRayPredictor

ds = ray.data.read_json("posts/")  # or read_parquet, with an image bytes column
ds = ds.map_batches(MMIBRayPredictor, fn_constructor_kwargs={"model": "runs/ner"}, batch_size=64,
                    compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.5, batch_format="pandas")
ds.write_json("out/")
```

[`predict_dataset`] and [`run_pipeline`] (the `mmib predict-ray` command) build the whole pipeline, read ->
[detect] -> predict -> write, with resource requests that cannot deadlock ([`stage_resources`]).

Input columns are the fields `mmib predict` reads: `id`, `text` or `words`, `image`, `crops`, `head` / `tail`; an
image or crop is a file path (relative ones against `image_root`), encoded image bytes (a parquet binary column),
a `datasets` Image struct `{"bytes", "path"}` or base64 text. A `json_line` column (one raw JSON-lines row, as the
pipeline reads JSON-lines files) stands for all of them, so that a malformed line becomes an error row instead of
failing the read. Other columns are ignored.

Output: one row per input row, with the columns of `mmib predict`'s rows for the checkpoint ([`output_schema`]); a
field a row of `mmib predict` does not have (`relations` of an error row, `objects` of a post with its own crops) is
null. Nested fields are Arrow lists and structs, written as JSON arrays/objects by `write_json` and as nested
columns by `write_parquet` (no JSON strings inside parquet). A row that cannot be used (malformed JSON, an unreadable
image, an empty post, ...) gets `error` and never fails its batch. Ray does not keep the input order: give every post
an `id` (a post without one gets a null `id`).

Object crops can be cut in a stage of their own ([`MMIBRayObjectDetector`], its own actor pool, e.g. on GPUs): it
adds the columns `object_crops` (PNG bytes) and `objects` (boxes) that the MMIB stage then uses instead of detecting.
"""

import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

try:
    import ray
    import ray.data
except ImportError as error:
    raise ImportError('mmib.integrations.ray needs Ray Data: pip install "mmib[ray]"') from error

import torch

from ..checkpoints_mmib import resolve_device
from ..crop_filling_mmib import CropFiller
from ..handler import decode_images
from ..image_loading_mmib import MAX_IMAGE_PIXELS
from ..posts_mmib import PreparedPost, prepare_post
from ..predictor_mmib import MMIBPredictor
from ..processing_mmib import MMIBProcessor

__all__ = [
    "MMIBRayObjectDetector",
    "MMIBRayPredictor",
    "output_schema",
    "predict_dataset",
    "run_pipeline",
    "stage_resources",
]

logger = logging.getLogger(__name__)

POST_FIELDS = ("id", "text", "words", "image", "crops", "head", "tail")
JSON_LINE = "json_line"
OBJECT_CROPS = "object_crops"

ENTITY = pa.struct(
    [
        ("text", pa.string()),
        ("type", pa.string()),
        ("start", pa.int64()),
        ("end", pa.int64()),
        ("word_start", pa.int64()),
        ("word_end", pa.int64()),
        ("score", pa.float64()),
    ]
)
RELATION = pa.struct([("head", pa.int64()), ("tail", pa.int64()), ("label", pa.string()), ("score", pa.float64())])
RELATION_ERROR = pa.struct([("head", pa.int64()), ("tail", pa.int64()), ("error", pa.string())])
OBJECT = pa.struct([("box", pa.list_(pa.int64())), ("score", pa.float64()), ("query", pa.string())])


def output_schema(task: str, with_relations: bool) -> list[tuple[str, pa.DataType | None]]:
    """
    The output columns for a checkpoint of `task` (`"ner"` or `"re"`), with a relation model or not; `id` has no
    fixed type (`None`): it keeps the input's (ids of mixed types in one batch become strings).
    """
    columns = [("id", None), ("text", pa.string()), ("words", pa.list_(pa.string()))]
    if task == "ner":
        columns += [("tags", pa.list_(pa.string())), ("entities", pa.list_(ENTITY))]
        if with_relations:
            columns += [
                ("relations", pa.list_(RELATION)),
                ("pairs_left_out", pa.int64()),
                ("relation_errors", pa.list_(RELATION_ERROR)),
            ]
    else:
        columns += [
            ("head", pa.list_(pa.int64())),
            ("tail", pa.list_(pa.int64())),
            ("label", pa.string()),
            ("score", pa.float64()),
        ]
    return columns + [("objects", pa.list_(OBJECT)), ("error", pa.string())]


def _plain(value: Any) -> Any:
    """A pandas cell as plain Python: arrays as lists, numpy scalars as Python scalars, NaN / NA as `None`."""
    if isinstance(value, np.ndarray):
        return [_plain(item) for item in value.tolist()] if value.dtype == object else value.tolist()
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _rows(batch: pd.DataFrame, columns: Sequence[str]) -> list[dict[str, Any]]:
    """The batch's rows as dicts of the given columns that it has, without null fields."""
    present = [column for column in columns if column in batch.columns]
    values = [batch[column].tolist() for column in present]
    rows = []
    for cells in zip(*values) if present else [()] * len(batch):
        row = {column: _plain(cell) for column, cell in zip(present, cells)}
        rows.append({key: value for key, value in row.items() if value is not None})
    return rows


def _parse_line(row: dict[str, Any]) -> dict[str, Any]:
    """A `json_line` row's post; raises `ValueError` for malformed JSON."""
    line = row[JSON_LINE]
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"malformed JSON: {error} in {line[:80]!r}") from error


def _column(values: list[Any], data_type: pa.DataType | None) -> pa.Array:
    if data_type is not None:
        return pa.array(values, type=data_type)
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if value is None else str(value) for value in values], type=pa.string())


def _configure_threads(num_threads: int | None) -> None:
    if num_threads is not None:
        torch.set_num_threads(num_threads)


class MMIBRayPredictor:
    """
    A callable class for `ray.data.Dataset.map_batches` (`batch_format="pandas"`): loads the checkpoint once per
    actor and predicts every batch of posts, one output row per input row (see the module docstring).

    Args:
        model, relation_model, object_detector, dtype, device, image_feature_cache: as for
            [`MMIBPredictor.from_pretrained`].
        image_root (`str`, *optional*): folder that relative image and crop paths are resolved against.
        num_threads (`int`, *optional*): torch threads of the actor (default: torch's).
        predictor_kwargs: further `MMIBPredictor.from_pretrained` arguments (`batch_size`, `keep_none`,
            `max_pairs_per_post`, `trust_remote_code`, `detector_trust_remote_code`).
    """

    def __init__(
        self,
        model: str,
        relation_model: str | None = None,
        object_detector: str | bool | None = None,
        dtype: str = "auto",
        device: str | None = None,
        image_feature_cache: str | None = None,
        image_root: str | None = None,
        num_threads: int | None = None,
        **predictor_kwargs: Any,
    ):
        _configure_threads(num_threads)
        self.predictor = MMIBPredictor.from_pretrained(
            model,
            relation_model=relation_model,
            dtype=dtype,
            device=device,
            image_feature_cache=image_feature_cache,
            object_detector=object_detector,
            **predictor_kwargs,
        )
        self.image_root = image_root
        self.schema = output_schema(self.predictor.task, self.predictor.relation_model is not None)

    def prepare(self, row: dict[str, Any]) -> PreparedPost:
        """One input row as a prepared post (`error` set when it cannot be used; never raises)."""
        post_id = row.get("id")
        try:
            if JSON_LINE in row:
                post = _parse_line(row)
                post_id = post.get("id") if isinstance(post, Mapping) else None
            else:
                post = {name: row[name] for name in POST_FIELDS if name in row}
            objects = row.get("objects")
            if isinstance(objects, list) and isinstance(post, Mapping):
                # Crops cut by the detection stage: the post's crops, and its objects reported in its row.
                post = {**post, "crops": row.get(OBJECT_CROPS) or []}
            prepared = self.predictor.prepare(decode_images(post, MAX_IMAGE_PIXELS), post_id, self.image_root)
            if isinstance(objects, list) and prepared.error is None:
                prepared.objects = objects
            return prepared
        except Exception as error:  # noqa: BLE001 - any failure of one row is that row's error, never the batch's
            return PreparedPost(post_id, error=str(error) or type(error).__name__, error_kind="invalid row")

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        posts = [self.prepare(row) for row in _rows(batch, (*POST_FIELDS, JSON_LINE, "objects", OBJECT_CROPS))]
        try:
            results = self.predictor.predict_prepared(posts)
        except Exception:  # noqa: BLE001 - find the post that breaks the batch, so that only it becomes an error
            logger.exception("A batch failed; predicting its %d posts one by one.", len(posts))
            results = []
            for post in posts:
                try:
                    results += self.predictor.predict_prepared([post])
                except Exception as error:  # noqa: BLE001
                    results.append({"id": post.id, "error": f"prediction failed: {error}"})
        return pa.table({name: _column([row.get(name) for row in results], kind) for name, kind in self.schema})


class MMIBRayObjectDetector:
    """
    The detection stage: cuts the object crops of posts with an image and no crops (the checkpoint's recorded
    extractor, or `object_detector`) and adds them as `object_crops` (PNG bytes, lossless) and `objects`
    (`{"box", "score", "query"}`); every input column passes through. Other rows get null in both columns and are
    left to the MMIB stage, which reports their errors. Only the checkpoint's processor is loaded (its crop slots
    and recorded extractor), never the MMIB model.

    Args:
        model (`str`): the MMIB checkpoint whose processor records the extractor and the number of crop slots.
        object_detector (`str`, *optional*), device (`str`, *optional*), image_root (`str`, *optional*),
            num_threads (`int`, *optional*), detector_trust_remote_code (`bool`): as for [`MMIBRayPredictor`].
        dtype (`str`, *optional*, defaults to `"auto"`): the detector's precision (`"auto"`: see
            `object_detectors_mmib.detector_dtype`).
    """

    def __init__(
        self,
        model: str,
        object_detector: str | None = None,
        device: str | None = None,
        image_root: str | None = None,
        num_threads: int | None = None,
        detector_trust_remote_code: bool = False,
        dtype: str = "auto",
    ):
        _configure_threads(num_threads)
        self.processor = MMIBProcessor.from_pretrained(model)
        self.crop_filler = CropFiller(
            self.processor.num_crops,
            getattr(self.processor, "object_extraction", None),
            object_detector,
            detector_trust_remote_code,
        )
        self.device = resolve_device(device)
        self.dtype = None if dtype == "auto" else getattr(torch, dtype)
        self.image_root = image_root

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        rows = _rows(batch, (*POST_FIELDS, JSON_LINE))
        posts = []
        for row in rows:
            try:
                post = decode_images(_parse_line(row) if JSON_LINE in row else row, MAX_IMAGE_PIXELS)
                posts.append(
                    prepare_post(post, None, self.image_root, self.processor.task == "re", self.processor.num_crops)
                )
            except Exception as error:  # noqa: BLE001 - the MMIB stage reports it
                posts.append(PreparedPost(None, error=str(error)))
        self.crop_filler.add_objects(posts, self.device, self.dtype)
        crops, objects = [], []
        for post in posts:
            detected = post.error is None and post.objects is not None
            crops.append([_png(crop) for crop in post.crops] if detected else None)
            objects.append(post.objects if detected else None)
        table = pa.Table.from_pandas(batch, preserve_index=False)
        for name, values, kind in (
            (OBJECT_CROPS, crops, pa.list_(pa.binary())),
            ("objects", objects, pa.list_(OBJECT)),
        ):
            if name in table.column_names:
                table = table.drop_columns([name])
            table = table.append_column(name, pa.array(values, type=kind))
        return table


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def stage_resources(concurrency: int, num_gpus: float = 0.0, cluster_cpus: float | None = None) -> dict[str, float]:
    """
    The Ray resource request of one actor of a stage of `concurrency` actors, chosen so that the pipeline cannot
    deadlock: actors that take every CPU leave none for the read and write tasks, which then wait for ever (Ray's
    `backpressured:tasks(ResourceBudget)`), e.g. two actors of `num_cpus=1` on `ray.init(num_cpus=2)`.

    The actors of all stages together ask for at most the cluster's CPUs minus one (minus half of them on a machine
    with fewer than two), shared equally; an actor never asks for more than one CPU (it runs its own torch threads,
    see `num_threads`). A GPU actor asks for `num_gpus` and a tenth of a CPU.

    Args:
        concurrency (`int`): the actors of all CPU stages together.
        num_gpus (`float`): GPUs per actor (0 on CPUs).
        cluster_cpus (`float`, *optional*): defaults to `ray.cluster_resources()["CPU"]`.

    Returns:
        `{"num_cpus": ..., "num_gpus": ...}` for `map_batches`.
    """
    if num_gpus:
        return {"num_cpus": 0.1, "num_gpus": num_gpus}
    if cluster_cpus is None:
        cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
    spare = min(1.0, cluster_cpus / 2)
    return {"num_cpus": min(1.0, (cluster_cpus - spare) / max(1, concurrency)), "num_gpus": 0.0}


# Read and write tasks ask for little, so that they run beside the actors whatever the actors take.
IO_CPUS = 0.25


def predict_dataset(
    dataset: "ray.data.Dataset",
    model: str,
    relation_model: str | None = None,
    object_detector: str | bool | None = None,
    detection_stage: bool = False,
    concurrency: int = 2,
    detector_concurrency: int = 1,
    batch_size: int = 32,
    num_gpus: float = 0.0,
    detector_num_gpus: float = 0.0,
    num_threads: int = 1,
    **predictor_kwargs: Any,
) -> "ray.data.Dataset":
    """
    `dataset` (post columns, or `json_line`) -> [detection stage] -> MMIB stage, lazily (nothing runs until the
    result is written or consumed).

    Args:
        dataset (`ray.data.Dataset`): the posts.
        model, relation_model, object_detector: as for [`MMIBRayPredictor`].
        detection_stage (`bool`): cut object crops in an actor pool of their own ([`MMIBRayObjectDetector`],
            `detector_concurrency` actors with `detector_num_gpus` each); the MMIB stage then does not detect.
        concurrency (`int`): MMIB actors; batch_size (`int`): posts per batch (and per forward pass).
        num_gpus (`float`): GPUs per MMIB actor.
        num_threads (`int`): torch threads per actor.
        predictor_kwargs: further [`MMIBRayPredictor`] arguments (`dtype`, `device`, `image_feature_cache`,
            `image_root`, `keep_none`, ...).
    """
    cpu_actors = (0 if num_gpus else concurrency) + (
        0 if detector_num_gpus or not detection_stage else detector_concurrency
    )
    if detection_stage:
        dataset = dataset.map_batches(
            MMIBRayObjectDetector,
            fn_constructor_kwargs={
                "model": model,
                "object_detector": None if object_detector in (None, True) else object_detector,
                "image_root": predictor_kwargs.get("image_root"),
                "num_threads": num_threads,
                "detector_trust_remote_code": predictor_kwargs.get("detector_trust_remote_code", False),
                # The MMIB stage's detector would run in its compute dtype: float32 when asked for, else native.
                "dtype": "float32" if predictor_kwargs.get("dtype") == "float32" else "auto",
            },
            batch_size=batch_size,
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=detector_concurrency),
            **stage_resources(cpu_actors, detector_num_gpus),
        )
        object_detector = False
    return dataset.map_batches(
        MMIBRayPredictor,
        fn_constructor_kwargs={
            "model": model,
            "relation_model": relation_model,
            "object_detector": object_detector,
            "num_threads": num_threads,
            "batch_size": batch_size,
            **predictor_kwargs,
        },
        batch_size=batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        **stage_resources(cpu_actors, num_gpus),
    )


FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def file_format(path: str, given: str | None = None) -> str:
    """`json` or `parquet`: `given`, else from the extension of `path` (or of the first file in the folder)."""
    if given is not None:
        return given
    suffix = Path(path.rstrip("/")).suffix.lower()
    if suffix not in FORMATS and "://" not in path and Path(path).is_dir():
        suffixes = sorted({file.suffix.lower() for file in Path(path).iterdir() if file.suffix.lower() in FORMATS})
        suffix = suffixes[0] if len(suffixes) == 1 else suffix
    if suffix not in FORMATS:
        raise ValueError(f"Cannot tell the format of {path}: name it .jsonl or .parquet, or pass the format.")
    return FORMATS[suffix]


def read_posts(path: str, input_format: str | None = None) -> "ray.data.Dataset":
    """Posts from JSON lines (read as text, one `json_line` per row, parsed in the MMIB stage) or parquet."""
    if file_format(path, input_format) == "parquet":
        return ray.data.read_parquet(path, num_cpus=IO_CPUS)
    return ray.data.read_text(path, num_cpus=IO_CPUS).rename_columns({"text": JSON_LINE})


def write_rows(dataset: "ray.data.Dataset", path: str, output_format: str) -> None:
    if output_format == "parquet":
        dataset.write_parquet(path, ray_remote_args={"num_cpus": IO_CPUS})
    else:
        dataset.write_json(path, ray_remote_args={"num_cpus": IO_CPUS}, force_ascii=False)


def run_pipeline(
    input_path: str,
    output_path: str,
    model: str,
    input_format: str | None = None,
    output_format: str | None = None,
    address: str | None = None,
    **kwargs: Any,
) -> dict[str, int]:
    """
    Reads posts, predicts them on Ray ([`predict_dataset`]) and writes the rows to a folder of JSON-lines or
    parquet files, showing Ray's progress; joins the Ray cluster at `address` (default: the running one, else a
    local one). Relative image paths of a local JSON-lines input are resolved against its folder, as in
    `mmib predict`.

    Returns:
        `{"posts": rows written, "errors": rows with an error}`, counted from the written files.
    """
    if not ray.is_initialized():
        ray.init(address=address)
    input_format, output_format = file_format(input_path, input_format), output_format or "json"
    if "://" not in input_path and "image_root" not in kwargs:
        folder = Path(input_path)
        kwargs["image_root"] = str((folder if folder.is_dir() else folder.parent).resolve())
    dataset = predict_dataset(read_posts(input_path, input_format), model, **kwargs)
    write_rows(dataset, output_path, output_format)
    reader = ray.data.read_parquet if output_format == "parquet" else ray.data.read_json
    # One read of the error column, counted per block (a `Dataset.sum` would shuffle once per count).
    blocks = reader(output_path).select_columns(["error"]).map_batches(_count_rows, batch_format="pandas").take_all()
    return {name: sum(block[name] for block in blocks) for name in ("posts", "errors")}


def _count_rows(batch: pd.DataFrame) -> dict[str, list[int]]:
    return {"posts": [len(batch)], "errors": [int(batch["error"].notna().sum()) if "error" in batch else 0]}
