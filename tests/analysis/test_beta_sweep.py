"""mmib.analysis.beta_sweep: the β-sweep series share runs and are plotted (with a stand-in for training)."""

import csv
import json
import statistics
from pathlib import Path

import pytest

from mmib.analysis import beta_sweep


def fake_scores(name: str) -> dict:
    """Deterministic F1s per run name, as a stand-in for training."""
    variant, seed = name.split("/seed-")
    base = {"full": 0.9, "no_rr": 0.85, "no_ar": 0.8, "no_rr_ar": 0.7, "text_only": 0.3}.get(variant, 0.5)
    return {"eval_f1": base + 0.01 * int(seed), "test_f1": base - 0.02 * int(seed)}


class FakeTrainer:
    """Writes all_results.json like train_mmib.py and records every command it was given."""

    def __init__(self, output_root: Path):
        self.output_root = output_root
        self.commands = []

    def __call__(self, command: list[str], output_dir: Path) -> None:
        self.commands.append(command)
        output_dir.mkdir(parents=True, exist_ok=True)
        name = output_dir.relative_to(self.output_root).as_posix()
        (output_dir / "all_results.json").write_text(json.dumps(fake_scores(name)))
        (output_dir / "checkpoint-3").mkdir()


def test_sweep_series_share_runs_and_plot(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("num_train_epochs: 1\n")
    trainer = FakeTrainer(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        beta_sweep.run_sweep(str(tmp_path / "missing.yaml"), tmp_path / "out", runner=trainer)
    points = beta_sweep.run_sweep(
        str(config), tmp_path / "out", beta_text=[0.0, 1.0], beta_vision=[0.1, 1.0], seeds=[1, 2], runner=trainer
    )
    # Series: (0, 1), (1, 1) | (1, 0.1), (1, 1) | both over {0, 0.1, 1}: (0, 0), (0.1, 0.1), (1, 1) -> 5 settings.
    assert len(points) == 7
    assert len(trainer.commands) == 5 * 2
    flags = [
        (float(command[command.index("--beta_text") + 1]), float(command[command.index("--beta_vision") + 1]))
        for command in trainer.commands
    ]
    assert sorted(set(flags)) == [(0, 0), (0, 1), (0.1, 0.1), (1, 0.1), (1, 1)]
    both = [point for point in points if point.series == "both"]
    assert [(point.beta_text, point.beta_vision) for point in both] == [(0.0, 0.0), (0.1, 0.1), (1.0, 1.0)]
    assert both[2].mean_std("test") == pytest.approx((0.47, statistics.stdev([0.48, 0.46])))
    with open(tmp_path / "out" / "beta_sweep.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["series"] for row in rows] == ["beta_text"] * 2 + ["beta_vision"] * 2 + ["both"] * 3
    assert float(rows[0]["dev_f1_mean"]) == pytest.approx(0.515)
    for extension in ("png", "svg"):
        assert (tmp_path / "out" / f"beta_sweep.{extension}").stat().st_size > 1000
    with pytest.raises(ValueError, match=">= 0"):
        beta_sweep.run_sweep(str(config), tmp_path / "out", beta_text=[-1.0], runner=trainer)
