"""mmib.analysis.beta_sweep: the β-sweep series share runs and are plotted (with a stand-in for training)."""

import csv
import statistics

import pytest

from mmib.analysis import beta_sweep


def test_sweep_series_share_runs_and_plot(tmp_path, fake_trainer):
    config = tmp_path / "config.yaml"
    config.write_text("num_train_epochs: 1\n")
    trainer = fake_trainer
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
