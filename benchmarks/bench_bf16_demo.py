"""`--bf16 auto` against fp32 on the demo run: training throughput and test F1, same seed, same data.

Runs `train_mmib.py configs/demo_twitter2017.yaml` (MiniLM text tower, the EfficientNet-Lite0 tower that
`scripts/convert_efficientnet_lite0.py runs/efficientnet-lite0` makes, the shipped 310-post Twitter-2017 sample,
4 epochs) `--rounds` times with `--bf16 false` and with `--bf16 auto`, alternating, in subprocesses, and reads
`train_samples_per_second` and `test_f1` from each run's `all_results.json`. `--bf16 auto` turns bf16 on only where
the machine runs it natively; the report says which it chose here.

    python benchmarks/bench_bf16_demo.py --output_json benchmarks/bf16_demo.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench_common import (
    REPO_ROOT,
    finish_report,
    machine_note,
    markdown_table,
    matmul_bf16_over_fp32,
    median,
    minilm_path,
)
from mmib.checkpoints_mmib import native_bf16

VARIANTS = {"fp32": ["--bf16", "false"], "bf16 auto": ["--bf16", "auto"]}


def verdict(met: bool) -> str:
    return "met" if met else "missed"


def main() -> None:
    """Alternates the two variants, prints throughput ratio and F1 difference."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1, help="Runs per variant (alternating).")
    parser.add_argument("--config", default="configs/demo_twitter2017.yaml", help="The train_mmib.py config to run.")
    parser.add_argument(
        "--train_args",
        default="",
        help="Further train_mmib.py flags, after the script's own (e.g. '--max_steps 2' for a smoke run).",
    )
    parser.add_argument("--output_json")
    args = parser.parse_args()
    machine_before = machine_note()
    bf16_ratio = matmul_bf16_over_fp32()
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="mmib-bf16-demo-") as work:
        for round_index in range(args.rounds):
            for name, flags in VARIANTS.items():
                output_dir = Path(work) / f"{name.replace(' ', '_')}_{round_index}"
                command = [sys.executable, "train_mmib.py", args.config]
                command += ["--text_model_name_or_path", minilm_path(), "--output_dir", str(output_dir), *flags]
                command += ["--disable_tqdm", "true", "--report_to", "none", *args.train_args.split()]
                subprocess.run(command, cwd=REPO_ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
                metrics = json.loads((output_dir / "all_results.json").read_text())
                results[name].append(
                    {
                        "train_samples_per_second": metrics["train_samples_per_second"],
                        "test_f1": metrics["test_f1"],
                        "train_runtime": metrics["train_runtime"],
                    }
                )
    summary_rows, figures = [], {}
    for name, runs in results.items():
        figures[name] = {
            "train_samples_per_second": median([run["train_samples_per_second"] for run in runs]),
            "test_f1": median([run["test_f1"] for run in runs]),
        }
        summary_rows.append(
            [name, f"{figures[name]['train_samples_per_second']:.2f}", f"{figures[name]['test_f1']:.4f}"]
        )
    speedup = figures["bf16 auto"]["train_samples_per_second"] / figures["fp32"]["train_samples_per_second"]
    f1_points = 100 * (figures["bf16 auto"]["test_f1"] - figures["fp32"]["test_f1"])
    native = native_bf16(torch.device("cpu"))
    summary = "\n".join(
        [
            markdown_table(["variant", "train samples/s", "test F1"], summary_rows),
            "",
            f"--bf16 auto chose {'bf16' if native else 'fp32'} here (native bf16, AVX512-BF16 or AMX: {native}).",
            f"Throughput bf16 auto / fp32: **{speedup:.2f}x** (target >= 1.8x: {verdict(speedup >= 1.8)}); test F1 "
            f"difference {f1_points:+.2f} points (target within 0.5: {verdict(abs(f1_points) <= 0.5)}).",
        ]
    )
    finish_report(
        args.output_json,
        summary,
        machine_before,
        bf16_ratio,
        {"args": vars(args), "runs": results, "figures": figures, "speedup": speedup, "f1_points": f1_points},
    )


if __name__ == "__main__":
    main()
