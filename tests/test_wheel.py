"""From a wheel: the package built from a copy of the source, installed without dependencies into an empty folder,
trains, predicts and runs an ablation from a working folder outside the repository with only that folder on the
path (the environment's installed dependencies serve as they are)."""

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO
from training_runs import write_synthetic_ner_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the source (an in-tree build writes build/ and *.egg-info into the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "mmib", source / "mmib", ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist")]
    result = subprocess.run(
        [*command, str(source)], capture_output=True, text=True, env={**os.environ, "PIP_NO_INDEX": "1"}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = (root / "dist").glob("mmib-*.whl")
    return wheel


def test_the_wheel_holds_every_module_and_the_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    # Every module: the flat remote code, every sub-package's __init__.py, the evaluate metric scripts.
    expected = {path.relative_to(REPO).as_posix() for path in (REPO / "mmib").rglob("*.py")}
    expected |= {"mmib/training/model_card_template.md"}
    assert expected - names == set()


def test_installed_wheel_trains_predicts_and_ablates_outside_the_repository(wheel, tmp_path):
    site, work = tmp_path / "site", tmp_path / "work"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    work.mkdir()
    write_synthetic_ner_config(work, relative_paths=True)
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")

    def run(*command: str) -> str:
        result = subprocess.run(command, cwd=work, env=environment, capture_output=True, text=True)
        assert result.returncode == 0, f"{command}:\n{result.stdout[-2000:]}\n{result.stderr[-5000:]}"
        return result.stdout

    where = run(sys.executable, "-c", "import mmib, mmib.training.run; print(mmib.__file__)").strip()
    assert Path(where).is_relative_to(site), where
    mmib = str(site / "bin" / "mmib")
    run(mmib, "train", "config.json", "--output_dir", "run")
    card = (work / "run" / "README.md").read_text()
    assert "mmib train" in card
    (row,) = [json.loads(line) for line in run(mmib, "predict", "run", "--text", "Messi in Paris").splitlines()]
    assert row["words"] == ["Messi", "in", "Paris"] and isinstance(row["entities"], list)
    run(mmib, "ablate", "config.json", "--seeds", "1", "--output_dir", "abl", "--max_steps", "1")
    with open(work / "abl" / "ablation.csv", newline="") as handle:
        variants = [row["variant"] for row in csv.DictReader(handle)]
    assert variants == ["full", "no_rr", "no_ar", "no_rr_ar", "text_only"]
    table = [line for line in (work / "abl" / "ablation.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(variants)
