"""The training feature cache on the user's path: `train_mmib.py --image_feature_cache DIR` builds it on the training
device, `mmib predict` of the saved checkpoint uses it without running the tower, and training again from that
checkpoint with the same folder keeps every shard."""

import json
from pathlib import Path

import pytest
import torch

from conftest import make_tokenizer, save_tiny_towers
from mmib.cli import main as cli_main
from mmib.features import SHARD_GLOB, ImageFeatureStore
from mmib.modeling_mmib import MMIBModel
from training_runs import SAMPLE, run

# Rows of the sample whose image is shipped (15 images in all, no crops), and text-only rows.
IMAGE_ROWS = {"train": range(300, 310), "validation": [12, 100, 101], "test": [100, 101]}
TEXT_ROWS = {"train": range(6), "validation": range(3), "test": range(4)}


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> tuple[str, str]:
    return save_tiny_towers(tmp_path_factory.mktemp("towers"), make_tokenizer(), shortest_edge=64)


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> dict[str, Path]:
    """Train, validation and test files of sample rows with and without images (absolute image paths); each train
    post with an image also gets the next train image as a crop."""
    folder = tmp_path_factory.mktemp("splits")
    files = {}
    for split in ("train", "validation", "test"):
        rows = [json.loads(line) for line in (SAMPLE / f"{split}.jsonl").read_text().splitlines()]
        chosen = [rows[index] for index in [*IMAGE_ROWS[split], *TEXT_ROWS[split]]]
        for position, row in enumerate(chosen):
            if row["image"]:
                row["image"] = str(SAMPLE / row["image"])
                assert Path(row["image"]).is_file(), row["image"]
                if split == "train":
                    row["crops"] = [str(SAMPLE / rows[300 + (position + 1) % 10]["image"])]
        files[split] = folder / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(row) + "\n" for row in chosen))
    return files


def train_flags(splits: dict[str, Path], output_dir: Path, cache: Path) -> list[str]:
    return [
        "--dataset",
        "jsonl",
        "--task",
        "ner",
        "--train_file",
        str(splits["train"]),
        "--validation_file",
        str(splits["validation"]),
        "--test_file",
        str(splits["test"]),
        "--image_feature_cache",
        str(cache),
        "--output_dir",
        str(output_dir),
        "--use_cpu",
        "true",
        "--per_device_train_batch_size",
        "4",
        "--max_steps",
        "2",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--report_to",
        "none",
        "--dataloader_num_workers",
        "0",
    ]


def shard_files(cache: Path) -> dict[str, tuple[int, int]]:
    """Each shard's name, inode and modification time: a shard deleted and rewritten changes at least one."""
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in sorted(cache.glob(SHARD_GLOB))}


@pytest.mark.slow
def test_a_training_cache_serves_the_saved_checkpoint_and_a_second_training(towers, splits, tmp_path, tower_images):
    text, vision = towers
    cache, first = tmp_path / "cache", tmp_path / "first"
    tower_flags = ["--text_model_name_or_path", text, "--vision_model_name_or_path", vision]
    overrides = ["--config_overrides", "apenc_num_attention_heads=4,apenc_intermediate_size=48", "--num_crops", "1"]
    log = run(train_flags(splits, first, cache) + tower_flags + overrides, cwd=tmp_path).stderr
    assert "Computing image features of 15 files (0 cached)" in log
    assert len(ImageFeatureStore.load(str(cache), verify=True)) == 15
    shards = shard_files(cache)
    assert shards

    # `mmib predict` of the saved checkpoint: every image is in the cache, none goes through the tower, and the
    # tags equal those computed from the pixels.
    posts = tmp_path / "posts.jsonl"
    rows = [json.loads(line) for name in ("train", "validation") for line in splits[name].read_text().splitlines()]
    posts.write_text("".join(json.dumps({"words": row["words"], "image": row["image"]}) + "\n" for row in rows))
    outputs = {}
    for name, extra in (("plain", []), ("cached", ["--image_feature_cache", str(cache)])):
        outputs[name] = tmp_path / f"{name}.jsonl"
        arguments = ["predict", str(first), "--input", str(posts), "--output", str(outputs[name]), "--quiet"]
        cli_main(arguments + ["--dtype", "float32", "--num_workers", "0"] + extra)
        # The 10 train and 3 validation posts with an image (their crops are not sent).
        assert sum(tower_images) == (13 if name == "plain" else 0), name
        tower_images.clear()
    predictions = {
        name: [json.loads(line)["tags"] for line in path.read_text().splitlines()] for name, path in outputs.items()
    }
    assert predictions["cached"] == predictions["plain"] and len(predictions["plain"]) == len(rows)

    # Training again from the checkpoint with the same folder: every image found, no shard deleted or rewritten.
    second = train_flags(splits, tmp_path / "second", cache) + ["--model_name_or_path", str(first)]
    log = run(second, cwd=tmp_path).stderr
    assert "Computing image features" not in log and "recomputing" not in log
    assert shard_files(cache) == shards


def test_the_feature_cache_is_built_on_the_training_device(towers, splits, tmp_path, monkeypatch):
    """`train_mmib` runs the tower on `TrainingArguments.device`. A CPU-only machine has no second device: the
    meta device stands for the GPU, and the run stops at the tower (features cannot come back from it)."""
    from mmib.training import arguments, run

    class Stop(Exception):
        pass

    seen = []

    def record(self, pixel_values):
        seen.append((next(self.vision_model.parameters()).device.type, pixel_values.device.type))
        raise Stop

    def meta_device(arguments) -> torch.device:
        arguments._setup_devices  # the process state that `TrainingArguments.device` sets up
        return torch.device("meta")

    monkeypatch.setattr(arguments.MMIBTrainingArguments, "device", property(meta_device))
    monkeypatch.setattr(MMIBModel, "get_image_features", record)
    text, vision = towers
    flags = train_flags(splits, tmp_path / "run", tmp_path / "cache") + ["--text_model_name_or_path", text]
    flags += ["--vision_model_name_or_path", vision, "--config_overrides", "apenc_num_attention_heads=4"]
    with pytest.raises(Stop):
        run.main(flags)
    assert seen == [("meta", "meta")]
