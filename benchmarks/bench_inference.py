"""Inference throughput of MMIB on a CPU: raw posts through `MMIBProcessor` + the model vs cached image features.

Model: `MMIBForTokenClassification.from_text_vision_pretrained(<MiniLM>, ResNetConfig())` in eval mode (MiniLM-L6
text tower, ResNet-50-shaped vision tower with random weights). Posts: the words of real Twitter-2017 posts, each
with a whole image and 4 crops written as small synthetic JPEG files to a temporary folder (the real images are
mostly absent here). Every pass turns the rows into model inputs with `MMIBDataCollator` and runs the model under
`torch.inference_mode()`, Viterbi decoding included; the throughput counts both. Variants, for every batch size:

- `raw`: `MMIBDataCollator(processor)`: the processor reads the JPEGs into `pixel_values` and the frozen ResNet-50
  runs on 1 + 4 images per post;
- `cached`: `MMIBDataCollator(processor, feature_store)` with an `ImageFeatureStore` built once from the same files
  (its one-off cost is reported per image): only the text is processed, the features are looked up;

each in fp32 and under `torch.autocast("cpu", dtype=torch.bfloat16)` (model forward only). The variants run in
interleaved rounds (the order rotated every round) over the same posts and are summarised by their median.
A variant whose pass takes longer than `--max_pass_seconds` is not repeated in later rounds.

    python benchmarks/bench_inference.py --output_json benchmarks/inference.json
"""

import argparse
import itertools
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench_common import (
    NUM_CROPS,
    build_model,
    build_processor,
    finish_report,
    load_posts,
    markdown_table,
    median,
    preamble,
    rotated,
    write_jpeg,
)
from mmib import MMIBForTokenClassification
from mmib.features import ImageFeatureStore
from mmib.training.collator import MMIBDataCollator

PATHS = ("raw", "cached")
DTYPES = ("fp32", "bf16")


@dataclass(frozen=True)
class Variant:
    """One measured configuration."""

    path: str
    dtype: str
    batch_size: int

    @property
    def name(self) -> str:
        """E.g. `raw fp32 b8`."""
        return f"{self.path} {self.dtype} b{self.batch_size}"


def parse_args() -> argparse.Namespace:
    """The command line flags (`--help` prints them with the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", help="Twitter-2017 folder (train.txt, ...; default: the shared data folder).")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"], help="Posts to use.")
    parser.add_argument("--num_posts", type=int, default=32, help="Posts per pass (at least the largest batch).")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[8, 32], help="Batch sizes to compare.")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="Input paths to compare.")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES), help="Precisions to compare.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved timed rounds (one pass per variant each).")
    parser.add_argument(
        "--max_pass_seconds",
        type=float,
        default=120.0,
        help="A variant whose pass takes longer is not repeated in later rounds.",
    )
    parser.add_argument(
        "--warmup_posts", type=int, default=2, help="Posts of the untimed warm-up batch per path/dtype."
    )
    parser.add_argument("--image_size", type=int, nargs=2, default=[400, 300], help="Width and height of the images.")
    parser.add_argument("--crop_size", type=int, default=128, help="Side of the square crops.")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the weights and the synthetic images.")
    parser.add_argument("--output_json", help="Also write all measurements to this JSON file.")
    args = parser.parse_args()
    if args.num_posts < max(args.batch_sizes):
        parser.error(f"--num_posts ({args.num_posts}) must be at least the largest batch size.")
    return args


def make_rows(args: argparse.Namespace, folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """
    The first `num_posts` posts of the split, each with a synthetic JPEG image and `NUM_CROPS` JPEG crops.

    Returns:
        `(rows, label_names)`; rows hold `words`, `image` and `crops` (no labels: inference).
    """
    posts, label_names = load_posts(args.data_dir, args.split)
    rows = []
    for index, post in enumerate(posts[: args.num_posts]):
        # One seed per file, distinct across posts, slots and --seed values.
        seed = (args.seed * args.num_posts + index) * (1 + NUM_CROPS)
        image = write_jpeg(folder / f"{index}.jpg", seed, tuple(args.image_size))
        crops = [
            write_jpeg(folder / f"{index}_crop{slot}.jpg", seed + 1 + slot, (args.crop_size, args.crop_size))
            for slot in range(NUM_CROPS)
        ]
        rows.append({"words": post["words"], "image": image, "crops": crops})
    return rows, label_names


def run_pass(
    model: MMIBForTokenClassification,
    collator: MMIBDataCollator,
    rows: list[dict[str, Any]],
    batch_size: int,
    bf16: bool,
) -> tuple[float, float]:
    """Collate and predict every row once; returns `(collate_seconds, model_seconds)`."""
    collate_seconds = model_seconds = 0.0
    for start in range(0, len(rows), batch_size):
        begin = time.perf_counter()
        inputs = collator(rows[start : start + batch_size])
        collated = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(**inputs)
        collate_seconds += collated - begin
        model_seconds += time.perf_counter() - collated
    return collate_seconds, model_seconds


def measure(
    args: argparse.Namespace,
    model: MMIBForTokenClassification,
    collators: dict[str, MMIBDataCollator],
    rows: list[dict[str, Any]],
) -> dict[str, list[dict[str, float]]]:
    """Interleaved timed passes of every variant; `{variant name: [{"collate": s, "model": s}, ...]}`."""
    variants = [
        Variant(path, dtype, batch_size)
        for batch_size, path, dtype in itertools.product(args.batch_sizes, args.paths, args.dtypes)
    ]
    for path, dtype in itertools.product(args.paths, args.dtypes):
        run_pass(model, collators[path], rows[: args.warmup_posts], args.warmup_posts, dtype == "bf16")
    passes: dict[str, list[dict[str, float]]] = {variant.name: [] for variant in variants}
    active = list(variants)
    for round_index in range(args.rounds):
        for variant in rotated(active, round_index):
            collate, forward = run_pass(
                model, collators[variant.path], rows, variant.batch_size, variant.dtype == "bf16"
            )
            passes[variant.name].append({"collate": collate, "model": forward})
            print(f"round {round_index + 1}: {variant.name} {collate + forward:.1f} s", file=sys.stderr, flush=True)
        active = [variant for variant in active if sum(passes[variant.name][-1].values()) <= args.max_pass_seconds]
    return passes


def summarize(args: argparse.Namespace, passes: dict[str, list[dict[str, float]]], store_seconds: float) -> str:
    """The markdown table of the run."""
    posts_per_second = {
        name: median([args.num_posts / (entry["collate"] + entry["model"]) for entry in entries])
        for name, entries in passes.items()
    }
    rows = []
    for name, entries in passes.items():
        batch = name.split()[-1]
        baseline = f"raw fp32 {batch}"
        collate_share = median([entry["collate"] / (entry["collate"] + entry["model"]) for entry in entries])
        ratio = f"{posts_per_second[name] / posts_per_second[baseline]:.2f}x" if baseline in posts_per_second else "-"
        rows.append([name, f"{posts_per_second[name]:.2f}", len(entries), f"{collate_share:.0%}", ratio])
    table = markdown_table(
        ["variant", "posts/s (median)", "passes", "time in collator", "vs raw fp32, same batch"], rows
    )
    num_images = args.num_posts * (1 + NUM_CROPS)
    return (
        f"{table}\n\nOne-off ImageFeatureStore.build: {store_seconds:.2f} s for {num_images} JPEG files = "
        f"{store_seconds / num_images * 1000:.0f} ms per image (decode, preprocessing, fp32 tower, fingerprint)."
    )


def main() -> None:
    """Builds the model, the JPEGs and the feature store, times the variants and prints the table."""
    args = parse_args()
    machine_before, bf16_matmul_ratio = preamble(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        rows, label_names = make_rows(args, Path(folder))
        model = build_model(label_names, args.seed).eval()
        processor = build_processor()
        collators = {"raw": MMIBDataCollator(processor)}
        store_seconds = 0.0
        if "cached" in args.paths:
            paths = [path for row in rows for path in [row["image"], *row["crops"]]]
            start = time.perf_counter()
            store = ImageFeatureStore.build(model.mmib, processor.image_processor, paths)
            store_seconds = time.perf_counter() - start
            collators["cached"] = MMIBDataCollator(processor, store)
        passes = measure(args, model, collators, rows)
    finish_report(
        args.output_json,
        summarize(args, passes, store_seconds),
        machine_before,
        bf16_matmul_ratio,
        {"args": vars(args), "passes": passes, "feature_store_build_seconds": store_seconds},
    )


if __name__ == "__main__":
    main()
