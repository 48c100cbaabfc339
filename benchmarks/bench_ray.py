"""Posts/s of MMIB on Ray Data with 1 and 2 actors (1 torch thread each) against `mmib predict` (1 thread) on the
same posts, side by side in one run: the scaling efficiency of the second actor and the engine's overhead.

python benchmarks/bench_ray.py MODEL --posts 400 --cpus 2 [--with_images] [--output_json benchmarks/ray.json]

MODEL is an MMIB checkpoint; `--random_checkpoint DIR` instead saves the benchmarks' MiniLM + ResNet-50 NER model
with random weights there (bench_common) and uses it. The posts are the shipped Twitter-2017 sample's words (and, with
`--with_images`, its images), repeated. `mmib predict` runs as its own process (`--num_workers 0`, the default on
2 cores); the Ray runs share one local runtime (`ray.init(num_cpus=--cpus)`), each timed from the first read to
the last row written, the actors' model loading included (the runtime's start is not: it is paid once per cluster).
Rounds alternate the order of the three sides.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import (
    finish_report,
    markdown_table,
    median,
    preamble,
    repo_relative,
    rotated,
    write_sample_posts,
)


def time_mmib_predict(model: str, posts: Path, batch_size: int) -> float:
    command = [sys.executable, "-m", "mmib.cli", "predict", model, "--input", str(posts), "--output", os.devnull]
    command += ["--quiet", "--dtype", "float32", "--batch_size", str(batch_size), "--num_workers", "0"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=environment)
    return time.perf_counter() - start


def time_ray(model: str, posts: Path, actors: int, batch_size: int, output: Path) -> float:
    from mmib.integrations.ray import predict_dataset, read_posts, write_rows

    shutil.rmtree(output, ignore_errors=True)
    start = time.perf_counter()
    dataset = predict_dataset(
        read_posts(str(posts)), model, concurrency=actors, batch_size=batch_size, num_threads=1, dtype="float32"
    )
    write_rows(dataset, str(output), "json")
    elapsed = time.perf_counter() - start
    written = sum(1 for path in output.iterdir() for _ in open(path, encoding="utf-8"))
    if written != sum(1 for _ in open(posts, encoding="utf-8")):
        raise RuntimeError(f"Ray wrote {written} rows for {posts}")
    return elapsed


def save_random_checkpoint(folder: str) -> str:
    from bench_common import build_model, build_processor

    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
    build_model(labels, seed=0).save_pretrained(folder)
    build_processor().save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="An MMIB checkpoint.")
    parser.add_argument("--random_checkpoint", metavar="DIR", help="Save and use the random MiniLM + ResNet-50 one.")
    parser.add_argument("--posts", type=int, default=400)
    parser.add_argument("--with_images", action="store_true", help="Every post brings a sample image.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray runtime.")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--output_json")
    args = parser.parse_args(argv)
    if (args.model is None) == (args.random_checkpoint is None):
        parser.error("give MODEL or --random_checkpoint DIR")
    machine, bf16_ratio = preamble(threads=1)
    model = args.model or save_random_checkpoint(args.random_checkpoint)

    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    sides = ["mmib predict", "ray 1 actor", "ray 2 actors"]
    timings = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as folder:
        posts = Path(folder) / "posts.jsonl"
        write_sample_posts(posts, args.posts, args.with_images, "words")
        for round_index in range(args.rounds):
            for side in rotated(sides, round_index):
                if side == "mmib predict":
                    elapsed = time_mmib_predict(model, posts, args.batch_size)
                else:
                    actors = 1 if side == "ray 1 actor" else 2
                    elapsed = time_ray(model, posts, actors, args.batch_size, Path(folder) / "out")
                timings[side].append(elapsed)
                print(f"round {round_index}: {side}: {args.posts / elapsed:.1f} posts/s", flush=True)
    ray.shutdown()
    rate = {side: args.posts / median(values) for side, values in timings.items()}
    ratios = {
        "2 actors / 1 actor (scaling; 2.0 is perfect)": rate["ray 2 actors"] / rate["ray 1 actor"],
        "1 actor / mmib predict (engine overhead; 1.0 is none)": rate["ray 1 actor"] / rate["mmib predict"],
        "2 actors / mmib predict": rate["ray 2 actors"] / rate["mmib predict"],
    }
    rows = [[side, f"{rate[side]:.1f}", f"{median(timings[side]):.1f}"] for side in sides]
    summary = markdown_table(["side", "posts/s", "seconds"], rows) + "\n\n"
    summary += markdown_table(["ratio", "value"], [[name, f"{value:.2f}"] for name, value in ratios.items()])
    arguments = {key: repo_relative(value) for key, value in vars(args).items()}
    finish_report(
        args.output_json,
        summary,
        machine,
        bf16_ratio,
        {"args": arguments, "posts_per_second": rate, "ratios": ratios, "seconds": timings},
    )


if __name__ == "__main__":
    main()
