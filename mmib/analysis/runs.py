"""Training runs for the analyses: `mmib train` (`python -m mmib.training.run`) as a subprocess per run, resumable,
with the run's scores read back from its `all_results.json`. A fresh process per run gives each its own seed, torch
threads, logging handlers and memory, and a crash ends one run; `sys.executable -m` finds the installed package
(wheel or editable), so the analyses need no source checkout."""

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..training.arguments import as_flags, read_config_file

RESULTS_FILE = "all_results.json"


@dataclass
class TrainingRun:
    """
    One `mmib train` run of an analysis.

    Args:
        name (`str`): folder of the run inside the analysis' output folder (e.g. `no_ar/seed-2`).
        seed (`int`): training seed.
        config_overrides (`dict`): MMIBConfig fields added to those of the training config.
        flags (`dict`): other `mmib train` flags (e.g. `{"beta_text": 0.5}`).
    """

    name: str
    seed: int
    config_overrides: dict = field(default_factory=dict)
    flags: dict = field(default_factory=dict)


def read_config_overrides(config_file: str, extra_args: Sequence[str]) -> str | None:
    """The `config_overrides` of the training config file, or of the last `--config_overrides` in `extra_args`."""
    value = None
    if config_file.endswith((".yaml", ".yml", ".json")):
        value = read_config_file(config_file).get("config_overrides")
    for position, argument in enumerate(extra_args):
        if argument == "--config_overrides" and position + 1 < len(extra_args):
            value = extra_args[position + 1]
    return value


def training_command(
    config_file: str,
    run: TrainingRun,
    output_dir: Path,
    extra_args: Sequence[str],
    feature_cache_dir: Path | None = None,
) -> list[str]:
    """
    The `mmib train` command line of `run`: config file, extra flags, then the run's own settings. With
    `feature_cache_dir` (and no `--image_feature_cache` among the flags), runs with the same seed share one image
    feature cache file: the same seed builds the same random or pretrained vision tower, and `mmib train`
    recomputes the file whenever the tower differs.
    """
    command = [sys.executable, "-m", "mmib.training.run", config_file, *extra_args]
    if feature_cache_dir is not None and "--image_feature_cache" not in extra_args:
        command += ["--image_feature_cache", str(feature_cache_dir / f"image-features-seed{run.seed}.safetensors")]
    # One --config_overrides wins in `mmib train`, so the run's fields are appended to the configured ones.
    overrides = [item for item in (read_config_overrides(config_file, extra_args) or "").split(",") if item]
    overrides += [f"{name}={as_flags(name, value)[1]}" for name, value in run.config_overrides.items()]
    if overrides:
        command += ["--config_overrides", ",".join(overrides)]
    for name, value in run.flags.items():
        command += as_flags(name, value)
    command += ["--seed", str(run.seed), "--output_dir", str(output_dir)]
    return command


def run_training(command: list[str], output_dir: Path) -> None:
    """Runs one training command; its output goes to `output_dir/train.log`. Raises if the run fails."""
    output_dir.mkdir(parents=True, exist_ok=True)
    log_file = output_dir / "train.log"
    with open(log_file, "w", encoding="utf-8") as log:
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        tail = "".join(log_file.read_text(encoding="utf-8").splitlines(keepends=True)[-20:])
        raise RuntimeError(f"Training run failed (exit {completed.returncode}), see {log_file}:\n{tail}")


def execute_runs(
    config_file: str,
    runs: Sequence[TrainingRun],
    output_dir: str | Path,
    extra_args: Sequence[str] = (),
    runner: Callable[[list[str], Path], None] = run_training,
) -> dict[str, dict]:
    """
    Runs every run that has no `all_results.json` yet (so an interrupted analysis resumes where it stopped) and
    returns the results of all of them by run name.

    Args:
        config_file (`str`): `mmib train` config file (YAML / JSON).
        runs (`Sequence[TrainingRun]`): the runs.
        output_dir (`str` or `Path`): each run writes to `output_dir/<run.name>`.
        extra_args (`Sequence[str]`): more `mmib train` flags for every run.
        runner (`Callable`, *optional*): runs one command into one folder (tests replace it).

    The Trainer's `checkpoint-*` folders of each finished run are deleted (the analyses read `all_results.json`;
    the chosen model stays in the run folder).
    """
    if not Path(config_file).is_file():
        raise FileNotFoundError(f"Training config {config_file} not found.")
    output_dir = Path(output_dir)
    results = {}
    for run in tqdm(runs, desc="training runs", unit="run"):
        run_dir = output_dir / run.name
        results_file = run_dir / RESULTS_FILE
        if not results_file.is_file():
            runner(training_command(config_file, run, run_dir, extra_args, output_dir), run_dir)
            if not results_file.is_file():
                raise RuntimeError(f"The run in {run_dir} finished without writing {RESULTS_FILE}.")
            for checkpoint in run_dir.glob("checkpoint-*"):
                shutil.rmtree(checkpoint)
        results[run.name] = json.loads(results_file.read_text(encoding="utf-8"))
    return results
