"""Throughput and peak memory of `mmib predict` on a JSON-lines file (the shipped Twitter-2017 text, repeated).

python benchmarks/bench_prediction.py runs/demo-twitter2017 --sizes 1000 20000 --variants text image cached \
    [--dtype auto] [--batch_size 32] [--num_workers 2] [--output_json benchmarks/prediction.json]

Variants: `text` (no image), `image` (one shipped sample image per post, decoded and run through the vision tower
as raw pixels), `cached` (the same posts with `--image_feature_cache`: a cache of the sample images, built with the
model's tower before the timed runs, so every image is a hit and is never opened). Each run is a fresh
`python -m mmib.cli predict` process; peak memory is its maximum resident set (`wait4` rusage, workers included as
the largest process). Prints posts/s and peak MB per run, and the peak-memory
difference between the largest and the smallest size.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_common import SAMPLE, repo_relative, write_sample_posts
from mmib.checkpoints_mmib import native_bf16


def build_cache(model: str, cache_dir: str) -> None:
    """The feature cache of the sample images, made with the checkpoint's own tower and image processor."""
    from mmib import MMIBPredictor
    from mmib.features import ImageFeatureStore

    predictor = MMIBPredictor.from_pretrained(model, dtype="float32", device="cpu")
    images = sorted(str(image) for image in (SAMPLE / "images").glob("*.jpg"))
    ImageFeatureStore.build(predictor.model.mmib, predictor.processor.image_processor, images, cache_dir=cache_dir)


def run(model: str, input_path: Path, args: argparse.Namespace, cache_dir: str | None = None) -> tuple[float, float]:
    command = [sys.executable, "-m", "mmib.cli", "predict", model, "--input", str(input_path), "--quiet"]
    command += ["--output", os.devnull, "--dtype", args.dtype, "--batch_size", str(args.batch_size)]
    command += ["--num_workers", str(args.num_workers)]
    command += [] if cache_dir is None else ["--image_feature_cache", cache_dir]
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument(
        "--variants", nargs="+", default=["text", "image", "cached"], choices=["text", "image", "cached"]
    )
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--output_json")
    args = parser.parse_args()
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"cpu capability {torch.backends.cpu.get_cpu_capability()}, "
        f"native bf16 {native_bf16(torch.device('cpu'))}"
    )
    print(f"machine: {machine}")
    results = []
    with tempfile.TemporaryDirectory() as folder:
        cache_dir = str(Path(folder) / "cache")
        if "cached" in args.variants:
            build_cache(args.model, cache_dir)
        for variant in args.variants:
            for size in args.sizes:
                input_path = Path(folder) / f"{variant}-{size}.jsonl"
                write_sample_posts(input_path, size, variant != "text", "text")
                seconds, peak_mb = run(args.model, input_path, args, cache_dir if variant == "cached" else None)
                results.append(
                    {
                        "variant": variant,
                        "posts": size,
                        "seconds": seconds,
                        "posts_per_s": size / seconds,
                        "peak_mb": peak_mb,
                    }
                )
                print(
                    f"{variant:6s} {size:6d} posts: {size / seconds:7.1f} posts/s, peak {peak_mb:7.1f} MB", flush=True
                )
    for variant in args.variants:
        for size in args.sizes:
            speeds = {r["variant"]: r["posts_per_s"] for r in results if r["posts"] == size}
            if variant != "image" and "image" in speeds:
                print(f"{size} posts: {variant} / image throughput {speeds[variant] / speeds['image']:.2f}x")
        runs = sorted((r for r in results if r["variant"] == variant), key=lambda r: r["posts"])
        if len(runs) > 1:
            print(
                f"{variant}: peak memory {runs[-1]['posts']} vs {runs[0]['posts']} posts: "
                f"{runs[-1]['peak_mb'] - runs[0]['peak_mb']:+.1f} MB"
            )
    if args.output_json:
        Path(args.output_json).write_text(
            json.dumps(
                {"machine": machine, "args": {k: repo_relative(v) for k, v in vars(args).items()}, "runs": results},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
