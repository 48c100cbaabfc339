"""mmib.analysis.ablation: the Table V tables from each run's scores, resuming, and refusing a config without the
ablation switches (with a stand-in for training)."""

import csv
import statistics

import pytest

from mmib.analysis import ablation


def test_ablation_tables_and_resuming(tmp_path, monkeypatch, fake_trainer):
    monkeypatch.setattr(ablation, "check_switches", lambda: None)
    config = tmp_path / "config.yaml"
    config.write_text("config_overrides: apenc_num_attention_heads=6\n")
    trainer = fake_trainer
    summaries = ablation.run_ablation(
        str(config), [1, 2, 3], tmp_path / "out", ["--num_train_epochs", "1"], runner=trainer
    )
    assert len(trainer.commands) == 15
    no_ar = next(command for command in trainer.commands if "no_ar/seed-2" in " ".join(command))
    assert (
        no_ar[no_ar.index("--config_overrides") + 1] == "apenc_num_attention_heads=6,use_alignment_regularizer=false"
    )
    assert no_ar[no_ar.index("--seed") + 1] == "2" and "--num_train_epochs" in no_ar
    assert not list((tmp_path / "out").glob("*/seed-*/checkpoint-*"))

    with open(tmp_path / "out" / "ablation.csv", newline="") as handle:
        rows = {row["variant"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["full", "no_rr", "no_ar", "no_rr_ar", "text_only"]
    assert float(rows["no_ar"]["dev_f1_mean"]) == pytest.approx(0.82)
    assert float(rows["no_ar"]["dev_f1_std"]) == pytest.approx(statistics.stdev([0.81, 0.82, 0.83]), abs=1e-6)
    assert float(rows["text_only"]["test_f1_mean"]) == pytest.approx(0.26)
    assert float(rows["text_only"]["test_f1_delta"]) == pytest.approx(0.26 - 0.86)
    assert float(rows["full"]["test_f1_delta"]) == 0
    table = (tmp_path / "out" / "ablation.md").read_text()
    assert "| without L_ar | 82.00 ± 1.00 | 76.00 ± 2.00 | -10.00 | -10.00 |" in table
    assert summaries[4].test_f1 == pytest.approx([0.28, 0.26, 0.24])

    # Finished runs are read, not redone; a run without results is redone.
    trainer.commands.clear()
    ablation.run_ablation(str(config), [1, 2, 3], tmp_path / "out", runner=trainer)
    assert trainer.commands == []
    (tmp_path / "out" / "no_rr" / "seed-3" / "all_results.json").unlink()
    ablation.run_ablation(str(config), [1, 2, 3], tmp_path / "out", runner=trainer)
    assert len(trainer.commands) == 1 and "no_rr/seed-3" in " ".join(trainer.commands[0])


def test_ablation_refuses_a_config_without_the_switches(monkeypatch):
    monkeypatch.setattr(ablation, "SWITCHES", (*ablation.SWITCHES, "no_such_switch"))
    with pytest.raises(RuntimeError, match="no_such_switch"):
        ablation.check_switches()
