"""mmib.batch_prediction.predict_file: JSON-lines in, one row per line out in order, error rows for bad lines, the
same results as the API, and two processes writing what one writes."""

import json
import os
import subprocess
import sys

import pytest

from conftest import (
    accelerate_cpu_launcher,
)
from mmib.batch_prediction import StrictModeError, predict_file
from prediction_checkpoints import POSTS, read_jsonl, write_input


def test_file_prediction_keeps_order_reports_errors_and_matches_the_api(predictor, tmp_path):
    input_path = write_input(tmp_path)
    summaries = {}
    for workers in (0, 2):
        summaries[workers] = predict_file(
            predictor,
            str(input_path),
            str(tmp_path / f"out{workers}.jsonl"),
            batch_size=2,
            num_workers=workers,
            quiet=True,
        )
    rows = read_jsonl(tmp_path / "out0.jsonl")
    assert rows == read_jsonl(tmp_path / "out2.jsonl")
    assert [row["id"] for row in rows] == ["a", 2, 4, 5, 6, 7]
    assert [("error" in row) for row in rows] == [False, True, False, True, True, False]
    assert "line 2: malformed JSON" in rows[1]["error"] and "missing.jpg" in rows[3]["error"]
    assert summaries[2].posts == 6 and dict(summaries[2].errors) == {"malformed JSON": 1, "image": 1, "empty post": 1}
    expected = predictor({"id": "a", "text": POSTS[0], "image": str(tmp_path / "post.png")})
    # In the file the post shares a padded batch with another one: the same entities, scores up to float rounding.
    scores = [entity.pop("score") for entity in rows[0]["entities"]]
    assert scores == pytest.approx([entity.pop("score") for entity in expected["entities"]], abs=1e-5)
    assert rows[0] == expected
    with pytest.raises(StrictModeError, match="line 2"):
        predict_file(
            predictor,
            str(input_path),
            str(tmp_path / "strict.jsonl"),
            batch_size=2,
            num_workers=0,
            quiet=True,
            strict=True,
        )
    assert len(read_jsonl(tmp_path / "strict.jsonl")) == 2


def test_posts_are_batched_by_length_within_a_window_and_written_in_input_order(predictor, tmp_path, monkeypatch):
    texts = ["john", POSTS[0] + " " + POSTS[1], "paris", POSTS[2], "london and paris", POSTS[0]]
    (tmp_path / "posts.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    batches = []
    encode_batch = type(predictor).encode_batch
    monkeypatch.setattr(
        type(predictor),
        "encode_batch",
        lambda self, posts: batches.append([p.text for p in posts]) or encode_batch(self, posts),
    )
    outputs = {}
    for window in (1, 2):
        batches.clear()
        predict_file(
            predictor, str(tmp_path / "posts.jsonl"), str(tmp_path / "out.jsonl"), 2, 0, True, sort_window=window
        )
        outputs[window] = read_jsonl(tmp_path / "out.jsonl")
        assert [row["text"] for row in outputs[window]] == texts
        if window == 1:
            assert batches == [texts[0:2], texts[2:4], texts[4:6]]
    # Windows of 4 posts sorted by sub-word count (john, paris < london and paris < the long ones), then the rest.
    assert batches == [["john", "paris"], [POSTS[2], POSTS[0] + " " + POSTS[1]], ["london and paris", POSTS[0]]]
    for sorted_row, row in zip(outputs[2], outputs[1]):
        assert sorted_row["tags"] == row["tags"]


@pytest.mark.slow
def test_two_processes_write_the_same_output_as_one(ner_path, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` with ACCELERATE_USE_CPU=1: two real gloo ranks."""
    input_path = tmp_path / "many.jsonl"
    input_path.write_text("".join(json.dumps({"text": POSTS[i % 3] + f" {i}"}) + "\n" for i in range(23)))
    common = ["predict", ner_path, "--input", str(input_path), "--batch_size", "2", "--dtype", "float32"]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "mmib.cli", *common, "--output", str(tmp_path / "one.jsonl")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    launch = accelerate_cpu_launcher()
    two = subprocess.run(
        [*launch, "-m", "mmib.cli", *common, "--output", str(tmp_path / "two.jsonl")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "23 posts, 23 predicted, 0 errors on 2 processes" in two.stderr, two.stderr[-3000:]
    assert read_jsonl(tmp_path / "two.jsonl") == read_jsonl(tmp_path / "one.jsonl")
    assert not list(tmp_path.glob("two.jsonl.part*"))
