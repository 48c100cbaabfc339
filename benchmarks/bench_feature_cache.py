"""The image feature cache at scale: peak memory of training with a 1,000,000-image cache, and build throughput.

1. **Memory.** A synthetic cache of `--num_images` (1,000,000) random 2048-d fp32 vectors is written directly as
   shards (`mmib.features.write_shard`, random content keys), plus one shard with the real features of the
   `--num_files` small image files that the training posts use. Two subprocesses then run the same cached MMIB
   training steps (MiniLM text tower, ResNet-50-shaped frozen tower, batch 8, Twitter-2017 posts, image + 4 crops
   each): `no_cache` gets random `image_features` tensors, `cache` opens the million-image cache with
   `ImageFeatureStore.load` and looks every batch up through `MMIBDataCollator`. Each reports its peak RSS
   (`VmHWM`). The target: the cache costs < 1 GB of peak memory.
2. **Build throughput.** `ImageFeatureStore.build` over `--build_files` fresh JPEG files (400x300, decoded, resized,
   hashed, written as shards) against the vision tower's forward alone on the same number of preprocessed images,
   interleaved. The build should be tower-bound (ratio close to 1).

    python benchmarks/bench_feature_cache.py --output_json benchmarks/feature_cache.json
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_common import (
    NUM_CROPS,
    build_model,
    build_processor,
    finish_report,
    load_posts,
    machine_note,
    matmul_bf16_over_fp32,
    median,
    peak_rss_mib,
    quiet_logging,
    write_jpeg,
)
from mmib.features import ImageFeatureStore, content_key, vision_fingerprint, write_shard
from mmib.training.collator import MMIBDataCollator

FEATURE_SIZE = 2048


def write_synthetic_cache(folder: Path, num_images: int, shard_size: int, fingerprint: str) -> float:
    """Random keys and vectors, written straight as shards; returns the seconds it took."""
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    for first in range(0, num_images, shard_size):
        count = min(shard_size, num_images - first)
        keys = torch.randint(0, 256, (count, 32), generator=generator, dtype=torch.uint8).numpy()
        features = torch.randn(count, FEATURE_SIZE, generator=generator)
        write_shard(str(folder), keys, features, np.zeros((0, 32), dtype=np.uint8), fingerprint)
    return time.perf_counter() - start


def training_rows(args: argparse.Namespace, files: list[str]) -> list[dict]:
    """Twitter-2017 train posts, each given an image and `NUM_CROPS` crops from `files`."""
    rows, _ = load_posts(args.data_dir, "train")
    rows = rows[: args.batch_size * args.steps]
    for index, row in enumerate(rows):
        slots = [files[(index * (1 + NUM_CROPS) + slot) % len(files)] for slot in range(1 + NUM_CROPS)]
        row["image"], row["crops"] = slots[0], slots[1:]
    return rows


def memory_probe(args: argparse.Namespace) -> None:
    """Run the training steps of one variant in this process and print its peak RSS as JSON."""
    files = json.loads(Path(args.cache_dir, "files.json").read_text())
    _, label_names = load_posts(args.data_dir, "train")
    model = build_model(label_names, seed=0)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-5, fused=True)
    processor = build_processor()
    store = ImageFeatureStore.load(args.cache_dir) if args.memory_probe == "cache" else None
    collator = MMIBDataCollator(processor, store)
    rows = training_rows(args, files)
    setup = peak_rss_mib()
    generator = torch.Generator().manual_seed(0)
    hits = 0
    for step in range(args.steps):
        batch_rows = rows[step * args.batch_size : (step + 1) * args.batch_size]
        if store is None:
            batch = dict(MMIBDataCollator(processor)([{**row, "image": None, "crops": []} for row in batch_rows]))
            batch.pop("pixel_values", None)
            batch["image_features"] = torch.randn(len(batch_rows), 1 + NUM_CROPS, FEATURE_SIZE, generator=generator)
            batch["image_mask"] = torch.ones(len(batch_rows), 1 + NUM_CROPS, dtype=torch.bool)
        else:
            batch = collator(batch_rows)
            hits += int(batch["image_mask"].sum())
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()
    print(
        json.dumps(
            {
                "peak_rss_mib": peak_rss_mib(),
                "setup_peak_rss_mib": setup,
                "cache_rows": 0 if store is None else len(store),
                "slots_found": hits,
            }
        )
    )


def build_throughput(args: argparse.Namespace, folder: Path) -> dict:
    """`ImageFeatureStore.build` vs the tower's forward on as many preprocessed images, interleaved rounds."""
    _, label_names = load_posts(args.data_dir, "train")
    model = build_model(label_names, seed=0).eval()
    processor = build_processor()
    timings: dict[str, list[float]] = {"build": [], "tower": []}
    pixels = torch.randn(args.build_files, 3, 224, 224)
    for round_index in range(args.build_rounds):
        files = [
            write_jpeg(folder / f"r{round_index}_{i}.jpg", 10_000 * round_index + i) for i in range(args.build_files)
        ]
        cache = folder / f"cache{round_index}"
        start = time.perf_counter()
        ImageFeatureStore.build(
            model.mmib, processor.image_processor, files, batch_size=32, cache_dir=str(cache), num_workers=args.workers
        )
        timings["build"].append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.inference_mode():
            for first in range(0, args.build_files, 32):
                model.mmib.get_image_features(pixels[first : first + 32])
        timings["tower"].append(time.perf_counter() - start)
        shutil.rmtree(cache)
    build, tower = median(timings["build"]), median(timings["tower"])
    return {
        "images": args.build_files,
        "workers": args.workers,
        "build_images_per_second": args.build_files / build,
        "tower_images_per_second": args.build_files / tower,
        "build_over_tower_time": build / tower,
        "timings_seconds": timings,
    }


def main() -> None:
    """Writes the synthetic cache, runs both memory probes and the build comparison, prints the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/twitter2017"))
    parser.add_argument("--num_images", type=int, default=1_000_000, help="Rows of the synthetic cache.")
    parser.add_argument("--shard_size", type=int, default=65536, help="Rows per synthetic shard.")
    parser.add_argument("--num_files", type=int, default=40, help="Real image files the training posts use.")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="Training steps per memory probe.")
    parser.add_argument("--build_files", type=int, default=64, help="JPEG files per build round.")
    parser.add_argument("--build_rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of the build.")
    parser.add_argument("--work_dir", help="Where to write the cache (default: a temporary folder, removed).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output_json")
    parser.add_argument("--memory_probe", choices=["no_cache", "cache"], help="Internal: run one probe.")
    parser.add_argument("--cache_dir", help="Internal: the cache of the probes.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_logging()
    if args.memory_probe:
        memory_probe(args)
        return
    machine_before, bf16_ratio = machine_note(), matmul_bf16_over_fp32()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="mmib-cache-bench-"))
    try:
        cache, images = work / "cache", work / "images"
        cache.mkdir(parents=True)
        images.mkdir()
        _, label_names = load_posts(args.data_dir, "train")
        model = build_model(label_names, seed=0).eval()
        processor = build_processor()
        fingerprint = vision_fingerprint(model.mmib, processor.image_processor)
        files = [write_jpeg(images / f"img{i}.jpg", i) for i in range(args.num_files)]
        synthetic_seconds = write_synthetic_cache(cache, args.num_images, args.shard_size, fingerprint)
        # The training posts' own files: their real features, in a shard of their own.
        real = ImageFeatureStore.build(model.mmib, processor.image_processor, files)
        keys = np.stack([np.frombuffer(content_key(path), dtype=np.uint8) for path in files])
        features = torch.stack([real.features_of(path) for path in files])
        write_shard(str(cache), keys, features, np.zeros((0, 32), dtype=np.uint8), fingerprint)
        (cache / "files.json").write_text(json.dumps(files))
        del model, real
        cache_bytes = sum(path.stat().st_size for path in cache.glob("shard-*.safetensors"))
        start = time.perf_counter()
        opened = ImageFeatureStore.load(str(cache))
        open_seconds = time.perf_counter() - start
        rows = len(opened)
        del opened
        memory = {}
        for probe in ("no_cache", "cache"):
            command = [sys.executable, __file__, "--memory_probe", probe, "--cache_dir", str(cache)]
            command += ["--steps", str(args.steps), "--threads", str(args.threads)]
            command += ["--data_dir", args.data_dir] if args.data_dir else []
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            memory[probe] = json.loads(result.stdout.strip().splitlines()[-1])
        build = build_throughput(args, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    extra = memory["cache"]["peak_rss_mib"] - memory["no_cache"]["peak_rss_mib"]
    summary = "\n".join(
        [
            f"Synthetic cache: {rows:,} rows, {cache_bytes / 2**30:.2f} GiB on disk, written in "
            f"{synthetic_seconds:.0f} s; ImageFeatureStore.load (index only) in {open_seconds:.1f} s.",
            f"Peak RSS, {args.steps} training steps at batch {args.batch_size}: no cache "
            f"{memory['no_cache']['peak_rss_mib']:.0f} MiB, with the {rows:,}-row cache "
            f"{memory['cache']['peak_rss_mib']:.0f} MiB ({memory['cache']['slots_found']} slots found): "
            f"**{extra:+.0f} MiB** (target < 1024 MiB: {'met' if extra < 1024 else 'missed'}).",
            f"Build: {build['build_images_per_second']:.2f} images/s (JPEG decode + preprocess + hash + tower + "
            f"shard write, {args.workers} worker(s)) vs tower alone {build['tower_images_per_second']:.2f} images/s: "
            f"build time = **{build['build_over_tower_time']:.2f}x** the tower's.",
        ]
    )
    arguments = {key: value for key, value in vars(args).items() if key not in ("data_dir", "work_dir", "cache_dir")}
    finish_report(
        args.output_json,
        summary,
        machine_before,
        bf16_ratio,
        {
            "args": arguments,
            "cache_rows": rows,
            "cache_bytes": cache_bytes,
            "synthetic_write_seconds": synthetic_seconds,
            "load_seconds": open_seconds,
            "memory": memory,
            "extra_peak_rss_mib": extra,
            "build": build,
        },
    )


if __name__ == "__main__":
    main()
