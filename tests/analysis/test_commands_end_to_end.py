"""End to end: `mmib ablate` and `mmib sweep` train tiny models through train_mmib.py on a small synthetic set,
and their tables hold the runs' own scores; a second call trains nothing."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training_runs import write_synthetic_ner_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    return write_synthetic_ner_config(tmp_path_factory.mktemp("analysis"))


def mmib(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mmib.cli", *arguments], cwd=cwd, env=environment, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]
    return result


def test_ablate_tables_hold_each_runs_scores_and_resume(config_file, tmp_path):
    mmib(
        "ablate", str(config_file), "--seeds", "1", "--output_dir", str(tmp_path), "--logging_steps", "1", cwd=tmp_path
    )
    with open(tmp_path / "ablation.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["variant"] for row in rows] == ["full", "no_rr", "no_ar", "no_rr_ar", "text_only"]
    for row in rows:
        results = json.loads((tmp_path / row["variant"] / "seed-1" / "all_results.json").read_text())
        assert float(row["dev_f1_mean"]) == pytest.approx(results["eval_f1"], abs=1e-6)
        assert float(row["test_f1_mean"]) == pytest.approx(results["test_f1"], abs=1e-6)
        assert float(row["test_f1_std"]) == 0.0
        saved = json.loads((tmp_path / row["variant"] / "seed-1" / "config.json").read_text())
        assert saved["text_only"] == (row["variant"] == "text_only")
        assert saved["use_alignment_regularizer"] == (row["variant"] in ("full", "no_rr", "text_only"))
        assert saved["use_refinement_regularizer"] == (row["variant"] in ("full", "no_ar", "text_only"))
        assert saved["apenc_num_attention_heads"] == 4
    results_files = sorted(tmp_path.glob("*/seed-1/all_results.json"))
    modified = [path.stat().st_mtime_ns for path in results_files]
    mmib("ablate", str(config_file), "--seeds", "1", "--output_dir", str(tmp_path), cwd=tmp_path)
    assert [path.stat().st_mtime_ns for path in results_files] == modified


def test_sweep_points_hold_each_runs_scores(config_file, tmp_path):
    mmib(
        "sweep",
        str(config_file),
        "--beta_text",
        "0",
        "--beta_vision",
        "0.5",
        "--both",
        "0.5",
        "--fixed",
        "0.5",
        "--output_dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    with open(tmp_path / "beta_sweep.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["series"], row["beta_text"], row["beta_vision"]) for row in rows] == [
        ("beta_text", "0", "0.5"),
        ("beta_vision", "0.5", "0.5"),
        ("both", "0.5", "0.5"),
    ]
    # (0.5, 0.5) is shared by two series and trained once.
    assert sorted(path.parent.parent.name for path in tmp_path.glob("*/seed-1/all_results.json")) == [
        "bt0.5_bv0.5",
        "bt0_bv0.5",
    ]
    for row in rows:
        run = tmp_path / f"bt{row['beta_text']}_bv{row['beta_vision']}" / "seed-1"
        assert float(row["test_f1_mean"]) == pytest.approx(
            json.loads((run / "all_results.json").read_text())["test_f1"], abs=1e-6
        )
        saved = json.loads((run / "config.json").read_text())
        assert (saved["beta_text"], saved["beta_vision"]) == (float(row["beta_text"]), float(row["beta_vision"]))
    assert (tmp_path / "beta_sweep.svg").is_file() and (tmp_path / "beta_sweep.png").is_file()
