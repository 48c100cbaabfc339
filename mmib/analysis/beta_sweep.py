"""The β sensitivity experiment of the paper's Fig. 4: three series of runs -- β_T varied with β_V fixed, β_V
varied with β_T fixed, and both varied together -- with dev and test F1 per β value (mean ± std over seeds)."""

import csv
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .plotting import plot_beta_sweep
from .runs import TrainingRun, execute_runs, run_training

# The paper's candidate values (§V-C) and the value the other β keeps in the first two series.
PAPER_BETAS = (0.0, 0.01, 0.1, 0.5, 1.0, 1.5, 2.0)
PAPER_FIXED_BETA = 1.0
SERIES = ("beta_text", "beta_vision", "both")
SERIES_LABELS = {
    "beta_text": "vary β_T (β_V = {fixed:g})",
    "beta_vision": "vary β_V (β_T = {fixed:g})",
    "both": "vary β_T = β_V",
}
CSV_COLUMNS = (
    "series",
    "beta",
    "beta_text",
    "beta_vision",
    "seeds",
    "dev_f1_mean",
    "dev_f1_std",
    "test_f1_mean",
    "test_f1_std",
)


@dataclass
class SweepPoint:
    """One point of one series: its β values and F1 over the seeds (in [0, 1])."""

    series: str
    beta: float
    beta_text: float
    beta_vision: float
    seeds: list[int]
    dev_f1: list[float]
    test_f1: list[float]

    def mean_std(self, split: str) -> tuple[float, float]:
        values = self.dev_f1 if split == "dev" else self.test_f1
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def sweep_settings(
    beta_text: Sequence[float], beta_vision: Sequence[float], both: Sequence[float], fixed: float
) -> list[tuple[str, float, float, float]]:
    """`(series, β, β_T, β_V)` of every point of the three series."""
    return (
        [("beta_text", beta, beta, fixed) for beta in beta_text]
        + [("beta_vision", beta, fixed, beta) for beta in beta_vision]
        + [("both", beta, beta, beta) for beta in both]
    )


def run_name(beta_text: float, beta_vision: float, seed: int) -> str:
    # Runs are named by their settings, so that a point shared by two series (e.g. β_T = β_V = 1) trains once.
    return f"bt{beta_text:g}_bv{beta_vision:g}/seed-{seed}"


def write_csv(points: Sequence[SweepPoint], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for point in points:
            writer.writerow(
                [point.series, f"{point.beta:g}", f"{point.beta_text:g}", f"{point.beta_vision:g}"]
                + [" ".join(map(str, point.seeds))]
                + [f"{value:.6f}" for split in ("dev", "test") for value in point.mean_std(split)]
            )


def run_sweep(
    config_file: str,
    output_dir: str | Path,
    beta_text: Sequence[float] = PAPER_BETAS,
    beta_vision: Sequence[float] = PAPER_BETAS,
    both: Sequence[float] | None = None,
    fixed: float = PAPER_FIXED_BETA,
    seeds: Sequence[int] = (1,),
    extra_args: Sequence[str] = (),
    runner: Callable[[list[str], Path], None] = run_training,
) -> list[SweepPoint]:
    """
    Train every distinct (β_T, β_V, seed) once (finished runs are read, not redone), then write `beta_sweep.csv`
    and the Fig. 4-style plot `beta_sweep.png` / `beta_sweep.svg` (test F1 per β, one curve per series).

    Args:
        config_file (`str`): an `mmib train` config file.
        output_dir (`str` or `Path`): the CSV, the plot and one folder per run.
        beta_text (`Sequence[float]`): β_T values of the first series (β_V = `fixed`).
        beta_vision (`Sequence[float]`): β_V values of the second series (β_T = `fixed`).
        both (`Sequence[float]`, *optional*): values of the third series (β_T = β_V); defaults to the values of
            the first two series together.
        fixed (`float`, *optional*, defaults to 1.0 as in the paper): the β held fixed in the first two series.
        seeds (`Sequence[int]`): training seeds of every point.
        extra_args (`Sequence[str]`): more `mmib train` flags for every run.
        runner (`Callable`, *optional*): runs one training command (tests replace it).
    """
    output_dir = Path(output_dir)
    if both is None:
        both = sorted(set(beta_text) | set(beta_vision))
    if min([*beta_text, *beta_vision, *both, fixed]) < 0:
        raise ValueError("β values must be >= 0.")
    settings = sweep_settings(beta_text, beta_vision, both, fixed)
    runs = {}
    for _, _, value_text, value_vision in settings:
        for seed in seeds:
            name = run_name(value_text, value_vision, seed)
            flags = {"beta_text": value_text, "beta_vision": value_vision}
            runs.setdefault(name, TrainingRun(name, seed, flags=flags))
    results = execute_runs(config_file, list(runs.values()), output_dir, extra_args, runner=runner)
    points = []
    for series, beta, value_text, value_vision in settings:
        scores = [results[run_name(value_text, value_vision, seed)] for seed in seeds]
        points.append(
            SweepPoint(
                series,
                beta,
                value_text,
                value_vision,
                list(seeds),
                [score["eval_f1"] for score in scores],
                [score["test_f1"] for score in scores],
            )
        )
    write_csv(points, output_dir / "beta_sweep.csv")
    labels = {series: label.format(fixed=fixed) for series, label in SERIES_LABELS.items()}
    plot_beta_sweep(points, labels, output_dir / "beta_sweep")
    return points
