"""mmib/atomic_files_mmib.py: a file is written whole or not at all, and a failed write leaves nothing behind."""

import os

import pytest

from mmib.atomic_files_mmib import atomic_write, atomic_write_text, temporary_name


def test_a_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "record.json"
    atomic_write_text(target, "old")
    seen_during_write = []

    def write(temporary):
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write("new")
        seen_during_write.append(target.read_text(encoding="utf-8"))

    atomic_write(target, write, durable=True)
    assert seen_during_write == ["old"], "readers see the old file until the rename"
    assert target.read_text(encoding="utf-8") == "new"
    assert sorted(os.listdir(tmp_path)) == ["record.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "crop.png"
    atomic_write_text(target, "old")

    def half_written(temporary):
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write("ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_written)
    assert target.read_text(encoding="utf-8") == "old"
    assert sorted(os.listdir(tmp_path)) == ["crop.png"]


def test_the_temporary_file_is_hidden_beside_the_target_and_per_process(tmp_path):
    name = temporary_name(tmp_path / "shard-ab.safetensors")
    assert os.path.dirname(name) == str(tmp_path)
    # The feature store deletes `.shard-*.partial` left by a killed build; globs of results never see it.
    assert os.path.basename(name) == f".shard-ab.safetensors.{os.getpid()}.partial"
