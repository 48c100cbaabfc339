"""Ablations of the paper's Table V with seeds: the full model, without L_rr, without L_ar, without both, and a
text-only baseline, each trained with the same seeds; dev and test F1 as mean ± std over the seeds."""

import csv
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..configuration_mmib import MMIBConfig
from .runs import TrainingRun, execute_runs, run_training


@dataclass(frozen=True)
class Variant:
    """An ablation: its name, what it leaves out, and the MMIBConfig switches that do it."""

    name: str
    description: str
    config_overrides: dict


VARIANTS = (
    Variant("full", "MMIB (L_task + L_rr + L_ar)", {}),
    Variant("no_rr", "without L_rr", {"use_refinement_regularizer": False}),
    Variant("no_ar", "without L_ar", {"use_alignment_regularizer": False}),
    Variant(
        "no_rr_ar", "without L_rr and L_ar", {"use_refinement_regularizer": False, "use_alignment_regularizer": False}
    ),
    Variant("text_only", "text-only baseline (no vision tower)", {"text_only": True}),
)
SWITCHES = ("use_refinement_regularizer", "use_alignment_regularizer", "text_only")
CSV_COLUMNS = (
    "variant",
    "description",
    "seeds",
    "dev_f1_mean",
    "dev_f1_std",
    "test_f1_mean",
    "test_f1_std",
    "dev_f1_delta",
    "test_f1_delta",
)


@dataclass
class VariantSummary:
    """Scores of one variant over its seeds (F1 in [0, 1]); `*_delta` = mean minus the full model's mean."""

    variant: Variant
    seeds: list[int]
    dev_f1: list[float]
    test_f1: list[float]
    dev_f1_delta: float = 0.0
    test_f1_delta: float = 0.0

    @property
    def dev_f1_mean(self) -> float:
        return statistics.fmean(self.dev_f1)

    @property
    def test_f1_mean(self) -> float:
        return statistics.fmean(self.test_f1)

    @property
    def dev_f1_std(self) -> float:
        return _std(self.dev_f1)

    @property
    def test_f1_std(self) -> float:
        return _std(self.test_f1)


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0 for a single seed."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def check_switches() -> None:
    """Raise unless this MMIBConfig has the ablation switches (a config field the model ignores would make every
    variant train the full model)."""
    missing = [name for name in SWITCHES if not hasattr(MMIBConfig(), name)]
    if missing:
        raise RuntimeError(
            f"This mmib's MMIBConfig has no ablation switch {', '.join(missing)}: the variants would all train the "
            "full model. Update mmib to a version with the ablation switches."
        )


def summarize(variants: Sequence[Variant], seeds: Sequence[int], results: dict[str, dict]) -> list[VariantSummary]:
    """Per-variant F1 lists (`eval_f1`, `test_f1` of each run) and the differences to the first variant."""
    summaries = []
    for variant in variants:
        runs = [results[f"{variant.name}/seed-{seed}"] for seed in seeds]
        summaries.append(
            VariantSummary(variant, list(seeds), [run["eval_f1"] for run in runs], [run["test_f1"] for run in runs])
        )
    reference = summaries[0]
    for summary in summaries:
        summary.dev_f1_delta = summary.dev_f1_mean - reference.dev_f1_mean
        summary.test_f1_delta = summary.test_f1_mean - reference.test_f1_mean
    return summaries


def write_tables(summaries: Sequence[VariantSummary], output_dir: Path) -> None:
    """`ablation.csv` (F1 in [0, 1]) and `ablation.md` (F1 in percent, mean ± std, Δ to the full model)."""
    with open(output_dir / "ablation.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for summary in summaries:
            writer.writerow(
                [
                    summary.variant.name,
                    summary.variant.description,
                    " ".join(map(str, summary.seeds)),
                    *(f"{getattr(summary, column):.6f}" for column in CSV_COLUMNS[3:]),
                ]
            )
    lines = [
        f"Seeds {', '.join(map(str, summaries[0].seeds))}; F1 × 100, mean ± std (n - 1) over the seeds; "
        "Δ = mean minus the full model's mean.",
        "",
        "| variant | dev F1 | test F1 | Δ dev F1 | Δ test F1 |",
        "|---|---|---|---|---|",
    ]
    for summary in summaries:
        lines.append(
            f"| {summary.variant.description} "
            f"| {100 * summary.dev_f1_mean:.2f} ± {100 * summary.dev_f1_std:.2f} "
            f"| {100 * summary.test_f1_mean:.2f} ± {100 * summary.test_f1_std:.2f} "
            f"| {100 * summary.dev_f1_delta:+.2f} | {100 * summary.test_f1_delta:+.2f} |"
        )
    (output_dir / "ablation.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_ablation(
    config_file: str,
    seeds: Sequence[int],
    output_dir: str | Path,
    extra_args: Sequence[str] = (),
    variants: Sequence[Variant] = VARIANTS,
    runner: Callable[[list[str], Path], None] = run_training,
) -> list[VariantSummary]:
    """
    Train and evaluate every variant with every seed (runs that finished before are read, not redone) and write
    `ablation.csv` and `ablation.md` to `output_dir`.

    Args:
        config_file (`str`): an `mmib train` config file (its `output_dir` and `seed` are replaced per run).
        seeds (`Sequence[int]`): training seeds, the same for every variant.
        output_dir (`str` or `Path`): the tables, and one folder per run (`<variant>/seed-<seed>`).
        extra_args (`Sequence[str]`): more `mmib train` flags for every run.
        variants (`Sequence[Variant]`): the variants, the reference (full model) first.
        runner (`Callable`, *optional*): runs one training command (tests replace it).

    Returns:
        One [`VariantSummary`] per variant.
    """
    check_switches()
    output_dir = Path(output_dir)
    # Seed by seed, so that an interrupted ablation already has every variant for the first seeds.
    runs = [
        TrainingRun(f"{variant.name}/seed-{seed}", seed, config_overrides=variant.config_overrides)
        for seed in seeds
        for variant in variants
    ]
    results = execute_runs(config_file, runs, output_dir, extra_args, runner=runner)
    summaries = summarize(variants, seeds, results)
    write_tables(summaries, output_dir)
    return summaries
