"""mmib.training.arguments: `--bf16 auto`, config overrides and config files."""

import pytest

from conftest import (
    AVX2_FLAGS,
    AVX512_FLAGS,
    fake_cpu_flags,
    fake_cuda_devices,
)


@pytest.fixture
def train_mmib():
    from mmib.training import arguments

    return arguments


@pytest.mark.parametrize(
    "flags, native",
    [((*AVX512_FLAGS, "avx512_bf16"), True), ((*AVX2_FLAGS, "amx_tile", "amx_bf16"), True), (AVX512_FLAGS, False)],
    ids=["avx512_bf16", "amx", "avx512_only"],
)
def test_bf16_auto_with_use_cpu_is_the_cpus_answer_even_beside_native_gpus(
    flags, native, train_mmib, monkeypatch, tmp_path
):
    fake_cpu_flags(monkeypatch, flags)
    fake_cuda_devices(monkeypatch, [(8, 0), (9, 0)])
    for use_cpu in (["--use_cpu"], ["--use_cpu", "true"], ["--use_cpu=True"]):
        for bf16 in (["--bf16", "auto"], ["--bf16=auto"]):
            training_args = train_mmib.parse_arguments(["--output_dir", str(tmp_path), *use_cpu, *bf16])[2]
            assert training_args.use_cpu and training_args.bf16 is native, (use_cpu, bf16)
    config = tmp_path / "run.yaml"
    config.write_text(f"output_dir: {tmp_path}\nuse_cpu: true\nbf16: auto\n")
    assert train_mmib.parse_arguments([str(config)])[2].bf16 is native
    assert train_mmib.parse_arguments([str(config), "--bf16", "false"])[2].bf16 is False


def test_bf16_auto_on_cuda_needs_native_bf16_on_every_training_gpu(train_mmib, monkeypatch):
    fake_cpu_flags(monkeypatch, AVX2_FLAGS)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    # Without a launcher the Trainer spreads over every GPU (nn.DataParallel): a V100 beside an A100 emulates.
    fake_cuda_devices(monkeypatch, [(8, 0), (7, 0)])
    assert train_mmib.bf16_is_native(use_cpu=False) is False
    fake_cuda_devices(monkeypatch, [(8, 0), (8, 6)])
    assert train_mmib.bf16_is_native(use_cpu=False) is True
    # Under a launcher each process trains on its own GPU, which need not be the current device.
    monkeypatch.setenv("LOCAL_RANK", "1")
    fake_cuda_devices(monkeypatch, [(8, 0), (7, 5)], current=0)
    assert train_mmib.bf16_is_native(use_cpu=False) is False
    fake_cuda_devices(monkeypatch, [(7, 5), (8, 0)], current=0)
    assert train_mmib.bf16_is_native(use_cpu=False) is True
    assert train_mmib.bf16_is_native(use_cpu=True) is False


@pytest.mark.parametrize("name, value", [("num_crops", "1"), ("max_length", "32")])
def test_config_overrides_refuse_the_fields_that_have_their_own_flag(train_mmib, name, value):
    """Through --config_overrides they reached build_model_and_processor twice (TypeError: multiple values)."""
    with pytest.raises(ValueError, match=rf"--config_overrides cannot set {name}: .* use --{name} {value}\."):
        train_mmib.parse_config_overrides(f"apenc_num_attention_heads=4,{name}={value}")
    assert train_mmib.parse_config_overrides("apenc_num_attention_heads=4,beta_text=0.5") == {
        "apenc_num_attention_heads": 4,
        "beta_text": 0.5,
    }


def test_read_config_file_reads_yaml_and_json_and_names_a_bad_file(train_mmib, tmp_path):
    (tmp_path / "a.yaml").write_text("seed: 3\nbf16: auto\n")
    (tmp_path / "b.json").write_text('{"seed": 4}')
    (tmp_path / "empty.yml").write_text("")
    (tmp_path / "c.toml").write_text("seed = 5")
    (tmp_path / "list.yaml").write_text("- 1\n")
    assert train_mmib.read_config_file(tmp_path / "a.yaml") == {"seed": 3, "bf16": "auto"}
    assert train_mmib.read_config_file(tmp_path / "b.json") == {"seed": 4}
    assert train_mmib.read_config_file(tmp_path / "empty.yml") == {}
    for name in ("c.toml", "list.yaml"):
        with pytest.raises(ValueError, match=name):
            train_mmib.read_config_file(tmp_path / name)
