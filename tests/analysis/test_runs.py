"""mmib.analysis.runs: the training command of a run (order and values of its flags)."""

import sys

from mmib.analysis.runs import TrainingRun, training_command


def test_training_command_order_and_values(tmp_path):
    run = TrainingRun("x/seed-4", 4, config_overrides={"text_only": True}, flags={"beta_text": 0.5})
    config = tmp_path / "c.yaml"
    config.write_text("config_overrides: apenc_num_attention_heads=6\n")
    command = training_command(str(config), run, tmp_path / "x", ["--config_overrides", "latent_size=8"], tmp_path)
    assert command[:3] == [sys.executable, "-m", "mmib.training.run"]
    assert command[command.index("--config_overrides", 5) + 1] == "latent_size=8,text_only=true"
    assert command[-4:] == ["--seed", "4", "--output_dir", str(tmp_path / "x")]
    assert command[command.index("--image_feature_cache") + 1] == str(tmp_path / "image-features-seed4.safetensors")
