"""MMIB on Ray Data (issue 23): `MMIBRayPredictor` on batches (fast, no Ray runtime), and the whole pipeline on a
local runtime (`ray.init(num_cpus=2)`, 2 actors, the resource requests that must not deadlock there) against
`mmib predict` on the same 200+ posts, also with an actor killed mid-run."""

import json
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")
# Our calls use Ray's current API: one that Ray deprecates (e.g. `ray_remote_args` of readers and `map_batches`,
# deprecated in Ray 2.60) fails here rather than on the release that removes it.
pytestmark = pytest.mark.filterwarnings("error::ray.util.annotations.RayDeprecationWarning")

from mmib.cli import main as cli_main  # noqa: E402
from mmib.integrations.ray import (  # noqa: E402
    MMIBRayPredictor,
    predict_dataset,
    read_posts,
    stage_resources,
    write_rows,
)
from mmib.predictor_mmib import MMIBPredictor  # noqa: E402
from scale_posts import (  # noqa: E402
    BAD_POSTS,
    assert_same_row,
    make_posts,
    mmib_predict_rows,
    save_checkpoints,
    with_image_bytes,
    write_jsonl,
)

NUM_POSTS = 205
MALFORMED = "{not json"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[str, str]:
    return save_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def posts(tmp_path_factory) -> tuple[Path, list[dict], Path]:
    """`(folder, posts, posts.jsonl)`: the posts, the bad ones and a malformed line."""
    folder = tmp_path_factory.mktemp("posts")
    posts = make_posts(folder, NUM_POSTS) + BAD_POSTS
    return folder, posts, write_jsonl(folder / "posts.jsonl", posts, (MALFORMED,))


@pytest.fixture(scope="module")
def expected(checkpoints, posts) -> dict:
    """`mmib predict`'s rows (NER -> RE, recorded detector) by id."""
    return mmib_predict_rows(checkpoints[0], posts[2], relation_model=checkpoints[1])


def as_table(posts: list[dict]) -> pa.Table:
    """Posts as an Arrow table with a column per field any post has (null where a post lacks it)."""
    return pa.Table.from_pandas(pd.DataFrame(posts), preserve_index=False)


def test_stage_resources_leave_cpus_for_reading_and_writing():
    # The trap: 2 actors x 1 CPU on 2 CPUs leave nothing for the read task.
    assert stage_resources(2, cluster_cpus=2) == {"num_cpus": 0.5, "num_gpus": 0.0}
    assert stage_resources(3, cluster_cpus=2) == {"num_cpus": pytest.approx(1 / 3), "num_gpus": 0.0}
    assert stage_resources(4, cluster_cpus=64) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert stage_resources(1, cluster_cpus=1) == {"num_cpus": 0.5, "num_gpus": 0.0}
    assert stage_resources(2, num_gpus=1) == {"num_cpus": 0.1, "num_gpus": 1}
    for actors, cpus in ((1, 1), (2, 2), (3, 2), (2, 4), (8, 4)):
        assert actors * stage_resources(actors, cluster_cpus=cpus)["num_cpus"] <= cpus - 0.5


def test_batches_of_columns_give_the_rows_of_mmib_predict(checkpoints, posts, expected):
    folder, items, _ = posts
    stage = MMIBRayPredictor(checkpoints[0], relation_model=checkpoints[1], dtype="float32", image_root=str(folder))
    # Columns as Ray hands them over: a frame of post fields (lists as numpy arrays after Arrow), images as bytes,
    # missing fields as None / NaN.
    frame = as_table([with_image_bytes(post, folder) for post in items[:40]]).to_pandas()
    rows = stage(frame).to_pylist()
    assert [row["id"] for row in rows] == [post["id"] for post in items[:40]]
    for row in rows:
        assert_same_row(row, expected[row["id"]])
    assert any(row["objects"] for row in rows) and any(row["relations"] for row in rows)


def test_bad_rows_are_error_rows_and_the_batch_survives(checkpoints, posts, expected, monkeypatch):
    folder, items, _ = posts
    stage = MMIBRayPredictor(checkpoints[0], dtype="float32", object_detector=False, image_root=str(folder))
    lines = [json.dumps(items[0]), MALFORMED, json.dumps(BAD_POSTS[0]), json.dumps(items[1])]
    rows = stage(pd.DataFrame({"json_line": lines})).to_pylist()
    assert [row["id"] for row in rows] == ["p0", None, "bad-missing-image", "p1"]
    assert rows[1]["error"].startswith("malformed JSON: ") and MALFORMED in rows[1]["error"]
    assert rows[2]["error"] == f"image: file not found: {folder / 'images' / 'missing.jpg'}"
    assert rows[0]["error"] is None and rows[0]["tags"] == expected["p0"]["tags"]
    bad_bytes = stage(pd.DataFrame({"id": ["b"], "text": ["a b"], "image": [b"not an image"]})).to_pylist()
    assert bad_bytes[0]["error"].startswith("image: cannot decode the image data")

    # A failure the predictor does not catch (here: the model on one post) costs only that post.
    forward = stage.predictor.model.forward

    def failing_forward(*args, **kwargs):
        if kwargs["input_ids"].shape[0] > 1 or kwargs["input_ids"].shape[1] > 12:
            raise RuntimeError("boom")
        return forward(*args, **kwargs)

    monkeypatch.setattr(stage.predictor.model, "forward", failing_forward)
    frame = pd.DataFrame({"id": ["short", "long"], "text": ["John Smith", " ".join(["word"] * 30)]})
    rows = stage(frame).to_pylist()
    assert rows[0]["error"] is None and rows[0]["tags"]
    assert rows[1]["error"] == "prediction failed: boom"


def test_relation_checkpoint_takes_spans_from_integer_columns(checkpoints, posts):
    folder, items, _ = posts
    items = [{**post, "head": [0, 1], "tail": [1, 2]} for post in items[:12]]
    absolute = [
        post
        | {key: str(folder / post[key]) for key in ("image",) if key in post}
        | ({"crops": [str(folder / crop) for crop in post["crops"]]} if "crops" in post else {})
        for post in items
    ]
    expected = MMIBPredictor.from_pretrained(checkpoints[1], dtype="float32")(absolute)
    stage = MMIBRayPredictor(checkpoints[1], dtype="float32", image_root=str(folder))
    # head / tail arrive as numpy int64 arrays, which the span rule refuses unless made Python ints.
    rows = stage(as_table(items).to_pandas()).to_pylist()
    for row, expected_row in zip(rows, expected):
        assert_same_row(row, expected_row)
        assert row["label"] is not None


@pytest.fixture(scope="module")
def ray_runtime():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def read_rows(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.iterdir()):
        if path.suffix == ".parquet":
            rows += pq.read_table(path).to_pylist()
        elif path.suffix == ".json":
            rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return rows


@pytest.mark.slow
def test_the_command_on_json_lines_equals_mmib_predict(ray_runtime, checkpoints, posts, expected, tmp_path, capsys):
    output = tmp_path / "out"
    cli_main(
        ["predict-ray", checkpoints[0], "--input", str(posts[2]), "--output", str(output)]
        + ["--relation_model", checkpoints[1], "--concurrency", "2", "--batch_size", "16", "--dtype", "float32"]
    )
    # mmib predict's malformed line has its line number as id; Ray keeps no line numbers.
    malformed_id = len(posts[1]) + 1
    expected = {key: row for key, row in expected.items() if key != malformed_id}
    rows = read_rows(output)
    counts = Counter(row["id"] for row in rows)
    assert len(rows) == len(expected) + 1 and max(counts.values()) == 1
    assert set(counts) == set(expected) | {None}
    for row in rows:
        if row["id"] is None:
            assert row["error"].startswith("malformed JSON")
        else:
            assert_same_row(row, expected[row["id"]])
    assert f"{len(rows)} posts, {len(BAD_POSTS) + 1} errors" in capsys.readouterr().out


def actor_processes(class_name: str) -> list[psutil.Process]:
    """The live worker processes of this test's Ray runtime (descendants of this process) running `class_name`
    actors (Ray titles them `ray::MapWorker(MapBatches(NAME))`)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if any(class_name in part for part in process.cmdline()) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


def kill_one_actor_mid_run(class_name: str, run: threading.Thread, output: Path) -> int:
    """Once the first result file is written (the actors are at work) and while `run` still runs, SIGKILLs the
    `class_name` actor that has worked most; returns its pid."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.is_alive():
        workers = actor_processes(class_name)
        if output.is_dir() and any(output.iterdir()) and workers:
            busiest = max(workers, key=lambda worker: worker.cpu_times().user)
            busiest.send_signal(signal.SIGKILL)
            return busiest.pid
        time.sleep(0.05)
    raise AssertionError("the run ended before an actor could be killed")


@pytest.mark.slow
def test_parquet_image_bytes_detection_stage_and_a_killed_actor(ray_runtime, checkpoints, posts, expected, tmp_path):
    folder, items, _ = posts
    good = [post for post in items if post not in BAD_POSTS]
    # Ten files, so that the actors take many blocks and the killed one leaves work to be retried.
    inputs = tmp_path / "posts"
    inputs.mkdir()
    for part in range(10):
        table = as_table([with_image_bytes(post, folder) for post in good[part::10]])
        pq.write_table(table, inputs / f"part-{part}.parquet")
    dataset = predict_dataset(
        # Ray's parquet reader may merge the small files into one block: ten blocks, so that the first output file
        # appears while most of the work is still to be done.
        read_posts(str(inputs), "parquet").repartition(10),
        checkpoints[0],
        relation_model=checkpoints[1],
        detection_stage=True,
        concurrency=2,
        batch_size=8,
        dtype="float32",
        image_root=str(folder),
    )
    output = tmp_path / "out"
    run = threading.Thread(target=write_rows, args=(dataset, str(output), "parquet"))
    run.start()
    killed = kill_one_actor_mid_run("MMIBRayPredictor", run, output)
    run.join(timeout=600)
    assert not run.is_alive()
    print(f"killed MMIB actor pid {killed} mid-run; {len(actor_processes('MMIBRayPredictor'))} left after the run")
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    rows = read_rows(output)
    counts = Counter(row["id"] for row in rows)
    assert len(rows) == len(good) and max(counts.values()) == 1 and set(counts) == {post["id"] for post in good}
    for row in rows:
        assert_same_row(row, expected[row["id"]])
    assert sum(1 for row in rows if row["objects"]) >= NUM_POSTS // 5
