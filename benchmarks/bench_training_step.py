"""Training-step speed and peak memory of MMIB on a CPU: re-running the frozen vision tower vs cached features.

Model: `MMIBForTokenClassification.from_text_vision_pretrained(<MiniLM>, ResNetConfig())` (MiniLM-L6 text tower,
ResNet-50-shaped vision tower with random weights), batches of real Twitter-2017 posts with synthetic 224x224
pixels for the image and 4 crops of every post. One optimizer step = forward + loss (`outputs.loss`, the objective
of paper eq. 29 that `MMIBTrainer.compute_loss` also uses) + backward + gradient
clipping to norm 1 (as `Trainer`) + fused AdamW step (the `Trainer` default optimizer). Variants:

- `authors`: `pixel_values` every step, so the frozen ResNet-50 re-runs on 8 x (1 + 4) = 40 images per step, as the
  authors' code does;
- `cached`: `image_features` computed once by `model.mmib.get_image_features` (what `ImageFeatureStore` does);
- `cached_bf16`: as `cached`, with the forward pass under `torch.autocast("cpu", dtype=torch.bfloat16)`.

Speed: one process, one model; the variants are interleaved step by step (same batch in the same round, the order
rotated every round) and each is summarised by its median. The vision-tower forward alone is timed in the same
rounds. Peak memory: every variant runs again in its own subprocess (`--memory_probe`), which reports its peak RSS
(`VmHWM`; see `bench_common.peak_rss_mib` for why not `ru_maxrss`); the cached probes read the features from a
safetensors file, as a training run with a feature cache does.

    python benchmarks/bench_training_step.py --output_json benchmarks/training_step.json
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bench_common import (
    IMAGE_SIZE,
    NUM_CROPS,
    build_model,
    build_processor,
    finish_report,
    load_posts,
    machine_note,
    markdown_table,
    matmul_bf16_over_fp32,
    median,
    peak_rss_mib,
    quiet_logging,
    rotated,
)
from mmib import MMIBForTokenClassification

VARIANTS = ("authors", "cached", "cached_bf16")
FEATURE_PROBE = "feature_pass"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line flags (`--help` prints them with the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", help="Twitter-2017 folder (train.txt, ...; default: the shared data folder).")
    parser.add_argument("--batch_size", type=int, default=8, help="Posts per step (paper: 8).")
    parser.add_argument("--num_batches", type=int, default=4, help="Distinct batches, cycled through the rounds.")
    parser.add_argument("--warmup_steps", type=int, default=3, help="Untimed interleaved rounds first.")
    parser.add_argument("--steps", type=int, default=8, help="Timed interleaved rounds (one step per variant each).")
    parser.add_argument(
        "--memory_steps", type=int, default=3, help="Steps per peak-memory subprocess (0 skips the memory part)."
    )
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="Variants to run.")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the weights, the batches and the pixels.")
    parser.add_argument("--output_json", help="Also write all measurements to this JSON file.")
    parser.add_argument(
        "--memory_probe",
        choices=[*VARIANTS, FEATURE_PROBE],
        help="Internal: run only this variant (or the one-off feature pass) and print its peak RSS as JSON.",
    )
    parser.add_argument("--features_file", help="Internal: cached features for the cached memory probes.")
    return parser.parse_args(argv)


def make_text_batches(args: argparse.Namespace) -> tuple[list[dict[str, torch.Tensor]], list[str]]:
    """`num_batches` batches of consecutive Twitter-2017 train posts, tokenized by `MMIBProcessor` with labels."""
    rows, label_names = load_posts(args.data_dir, "train")
    generator = torch.Generator().manual_seed(args.seed)
    start = int(torch.randint(0, len(rows) - args.batch_size * args.num_batches, (1,), generator=generator))
    processor = build_processor()
    batches = []
    for index in range(args.num_batches):
        chunk = rows[start + index * args.batch_size : start + (index + 1) * args.batch_size]
        inputs = processor([row["words"] for row in chunk], labels=[row["ner_tags"] for row in chunk])
        inputs.pop("image_mask")  # the real images are missing here: every slot gets a synthetic image instead
        batches.append(dict(inputs))
    return batches, label_names


def synthetic_pixels(batch_index: int, batch_size: int, seed: int) -> torch.Tensor:
    """Normalised-looking random pixels `(batch_size, 1 + NUM_CROPS, 3, 224, 224)`, the same for a batch index."""
    generator = torch.Generator().manual_seed(seed * 1000 + batch_index)
    return torch.randn(batch_size, 1 + NUM_CROPS, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)


def compute_image_features(
    model: MMIBForTokenClassification, num_batches: int, batch_size: int, seed: int
) -> tuple[list[torch.Tensor], float]:
    """
    The one-off feature pass: every batch's image and crops once through the frozen tower, in inference mode.

    Returns:
        `(features, seconds)`: one `(batch_size, 1 + NUM_CROPS, 2048)` tensor per batch and the time of the tower
        passes (pixel generation excluded).
    """
    features, seconds = [], 0.0
    for index in range(num_batches):
        pixels = synthetic_pixels(index, batch_size, seed)
        start = time.perf_counter()
        with torch.inference_mode():
            pooled = model.mmib.get_image_features(pixels)
        seconds += time.perf_counter() - start
        features.append(pooled.clone())  # a normal tensor: inference tensors cannot be saved for backward
    return features, seconds


def train_step(
    model: MMIBForTokenClassification,
    optimizer: torch.optim.Optimizer,
    text_inputs: dict[str, torch.Tensor],
    image_inputs: dict[str, torch.Tensor],
    bf16: bool,
) -> float:
    """One optimizer step; returns its wall time in seconds."""
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        outputs = model(**text_inputs, **image_inputs)
    outputs.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    optimizer.step()
    return time.perf_counter() - start


def vision_tower_seconds(model: MMIBForTokenClassification, pixels: torch.Tensor) -> float:
    """The frozen tower's forward on a batch's 40 images, in the training context of an `authors` step."""
    start = time.perf_counter()
    model.mmib.get_image_features(pixels.flatten(0, 1))
    return time.perf_counter() - start


def build_training(
    args: argparse.Namespace,
) -> tuple[MMIBForTokenClassification, torch.optim.Optimizer, list[dict[str, torch.Tensor]]]:
    """The model in train mode, its fused AdamW (lr 3e-5, weight decay 0.01) and the text batches."""
    text_batches, label_names = make_text_batches(args)
    model = build_model(label_names, args.seed)
    model.train()
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-5, weight_decay=0.01, fused=True)
    return model, optimizer, text_batches


def image_inputs_for(
    variant: str, batch_index: int, args: argparse.Namespace, features: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """`pixel_values` (authors) or `image_features` (cached variants); every slot present."""
    if variant == "authors":
        image_inputs = {"pixel_values": synthetic_pixels(batch_index, args.batch_size, args.seed)}
    else:
        image_inputs = {"image_features": features[batch_index]}
    image_inputs["image_mask"] = torch.ones(args.batch_size, 1 + NUM_CROPS, dtype=torch.bool)
    return image_inputs


def time_variants(
    args: argparse.Namespace,
    model: MMIBForTokenClassification,
    optimizer: torch.optim.Optimizer,
    text_batches: list[dict[str, torch.Tensor]],
    features: list[torch.Tensor],
) -> dict[str, Any]:
    """Interleaved step timings of the variants and of the vision tower alone."""
    names = [*args.variants, "vision_tower"]
    timings: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.warmup_steps + args.steps):
        batch_index = round_index % args.num_batches
        for name in rotated(names, round_index):
            if name == "vision_tower":
                seconds = vision_tower_seconds(model, synthetic_pixels(batch_index, args.batch_size, args.seed))
            else:
                image_inputs = image_inputs_for(name, batch_index, args, features)
                seconds = train_step(model, optimizer, text_batches[batch_index], image_inputs, name == "cached_bf16")
            if round_index >= args.warmup_steps:
                timings[name].append(seconds)
        print(f"round {round_index + 1}/{args.warmup_steps + args.steps} done", file=sys.stderr, flush=True)
    return {
        "step_seconds": timings,
        "tokens_per_batch": [int(batch["attention_mask"].sum()) for batch in text_batches],
    }


def run_memory_probe(args: argparse.Namespace) -> None:
    """Runs one variant (or the one-off feature pass) alone and prints its peak RSS as one JSON line."""
    model, optimizer, text_batches = build_training(args)
    setup_mib = peak_rss_mib()
    if args.memory_probe == FEATURE_PROBE:
        compute_image_features(model, args.num_batches, args.batch_size, args.seed)
    else:
        features = []
        if args.memory_probe != "authors":
            stored = load_file(args.features_file)
            features = [stored[f"batch_{index}"] for index in range(args.num_batches)]
        for step in range(args.memory_steps):
            batch_index = step % args.num_batches
            image_inputs = image_inputs_for(args.memory_probe, batch_index, args, features)
            train_step(model, optimizer, text_batches[batch_index], image_inputs, args.memory_probe == "cached_bf16")
    print(json.dumps({"probe": args.memory_probe, "setup_peak_rss_mib": setup_mib, "peak_rss_mib": peak_rss_mib()}))


def measure_memory(
    args: argparse.Namespace, argv: list[str], features: list[torch.Tensor]
) -> dict[str, dict[str, float]]:
    """Peak RSS of every variant and of the feature pass, each in a fresh subprocess."""
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        features_file = str(Path(folder) / "features.safetensors")
        save_file({f"batch_{index}": batch for index, batch in enumerate(features)}, features_file)
        for probe in [*args.variants, FEATURE_PROBE]:
            command = [sys.executable, __file__, *argv, "--memory_probe", probe, "--features_file", features_file]
            completed = subprocess.run(command, check=True, capture_output=True, text=True)
            results[probe] = json.loads(completed.stdout.strip().splitlines()[-1])
            print(f"memory probe {probe}: {results[probe]['peak_rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
    return results


def summarize(args: argparse.Namespace, timing: dict[str, Any], memory: dict[str, dict[str, float]]) -> str:
    """The markdown tables of the run."""
    steps = timing["step_seconds"]
    medians = {name: median(values) for name, values in steps.items()}
    rows = []
    for name in args.variants:
        speedup = ""
        if "authors" in medians:
            per_round = sorted(a / x for a, x in zip(steps["authors"], steps[name]))
            speedup = f"{medians['authors'] / medians[name]:.2f}x (rounds {per_round[0]:.2f}-{per_round[-1]:.2f})"
        peak = "-"
        if name in memory:
            peak = f"{memory[name]['peak_rss_mib']:.0f} ({memory[name]['setup_peak_rss_mib']:.0f})"
        rows.append([name, f"{medians[name]:.3f}", f"{args.batch_size / medians[name]:.2f}", speedup, peak])
    table = markdown_table(
        [
            "variant",
            "s/step (median)",
            "posts/s",
            "speed-up vs authors (min-max over rounds)",
            "peak RSS MiB (after set-up)",
        ],
        rows,
    )
    lines = [table, ""]
    if "authors" in medians:
        share = medians["vision_tower"] / medians["authors"]
        lines.append(
            f"Vision tower alone: {medians['vision_tower']:.3f} s per 40 images (median) = {share:.0%} of an "
            "authors-style step."
        )
    feature_pass = timing["feature_pass"]
    lines.append(
        f"One-off feature pass: {feature_pass['seconds']:.2f} s for {feature_pass['images']} images = "
        f"{feature_pass['seconds_per_image'] * 1000:.0f} ms per image (inference mode, batches of 40)."
    )
    if FEATURE_PROBE in memory:
        lines.append(f"Peak RSS of the feature pass alone: {memory[FEATURE_PROBE]['peak_rss_mib']:.0f} MiB.")
    return "\n".join(lines)


def main() -> None:
    """Times the variants, measures their memory in subprocesses and prints the tables (or runs one probe)."""
    argv = sys.argv[1:]
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_logging()
    if args.memory_probe:
        run_memory_probe(args)
        return
    machine_before, bf16_matmul_ratio = machine_note(), matmul_bf16_over_fp32()
    model, optimizer, text_batches = build_training(args)
    features, feature_seconds = compute_image_features(model, args.num_batches, args.batch_size, args.seed)
    if not all(torch.isfinite(batch).all() for batch in features):
        raise RuntimeError("The random vision tower produced non-finite features.")
    timing = time_variants(args, model, optimizer, text_batches, features)
    num_images = args.num_batches * args.batch_size * (1 + NUM_CROPS)
    timing["feature_pass"] = {
        "images": num_images,
        "seconds": feature_seconds,
        "seconds_per_image": feature_seconds / num_images,
    }
    del model, optimizer
    memory = measure_memory(args, argv, features) if args.memory_steps > 0 else {}
    arguments = {key: value for key, value in vars(args).items() if key not in ("memory_probe", "features_file")}
    finish_report(
        args.output_json,
        summarize(args, timing, memory),
        machine_before,
        bf16_matmul_ratio,
        {"args": arguments, "timing": timing, "memory": memory},
    )


if __name__ == "__main__":
    main()
