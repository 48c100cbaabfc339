"""MMIB against the text-only floor and the CPU's matmul peak, measured side by side in one run (issue 10 targets).

Ratios, all from interleaved rounds over the same Twitter-2017 posts (medians; the order of the variants rotates
every round):

- **training**: a cached MMIB training step (`image_features` for the image and 4 crops, forward + `outputs.loss` +
  backward + clipping + fused AdamW) over a plain `BertForTokenClassification` step on the same MiniLM tower, the
  same posts and batch (8), in fp32 and under bf16 autocast;
- **inference**: MMIB eval (`model.eval()`, `torch.inference_mode()`, Viterbi decoding, batch 32) over the plain
  tagger's eval with argmax decoding at the first sub-word of each word, fp32 and bf16;
- **pixels**: the ResNet-50-shaped vision tower (random weights, channels-last) on 1 + 4 images per post, as
  `MMIBModel.get_image_features` runs it for new posts, against what the machine's measured matmul rate allows for
  the tower's FLOPs (counted by `torch.utils.flop_counter`), in fp32 and with bf16 weights.

The matmul rates (fp32 and bf16 GFLOP/s of 1024 x 1024 products) are measured in the same run. The report names
the CPU properties that decide the figures.

    python benchmarks/bench_vs_plain.py --output_json benchmarks/vs_plain.json
"""

import argparse
import copy
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertForTokenClassification

from bench_common import (
    IMAGE_SIZE,
    NUM_CROPS,
    build_model,
    build_processor,
    finish_report,
    load_posts,
    markdown_table,
    median,
    minilm_path,
    preamble,
    rotated,
)

FEATURE_SIZE = 2048


def matmul_gflops(dtype: torch.dtype, size: int = 1024, repeats: int = 10) -> float:
    """Best-of-`repeats` GFLOP/s of a `size x size` matmul in `dtype` on this CPU (2 size^3 FLOPs each)."""
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(dtype)
    right = torch.randn(size, size, generator=generator).to(dtype)
    torch.mm(left, right)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(left, right)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def make_batches(
    train_batch_size: int, eval_batch_size: int, num_batches: int, data_dir: str | None = None
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]], list[str]]:
    """
    Training batches (Twitter-2017 train) and eval batches (test) for both models.

    Every batch holds the `MMIBProcessor` outputs with word-level `labels`, random `image_features` for the image
    and `NUM_CROPS` crops of every post, and `token_labels`: the word labels at the first sub-word of each word and
    -100 elsewhere, which is how a plain `BertForTokenClassification` is trained on the same posts.
    """
    processor = build_processor()
    generator = torch.Generator().manual_seed(0)
    batches: dict[str, list[dict[str, torch.Tensor]]] = {"train": [], "test": []}
    label_names: list[str] = []
    for split, batch_size in (("train", train_batch_size), ("test", eval_batch_size)):
        rows, label_names = load_posts(data_dir, split)
        for index in range(num_batches):
            chunk = rows[index * batch_size : (index + 1) * batch_size]
            inputs = dict(processor([row["words"] for row in chunk], labels=[row["ner_tags"] for row in chunk]))
            inputs.pop("image_mask")
            inputs["image_features"] = torch.randn(batch_size, 1 + NUM_CROPS, FEATURE_SIZE, generator=generator)
            word_index, labels = inputs["word_index"], inputs["labels"]
            token_labels = torch.full_like(inputs["input_ids"], -100)
            rows_index = torch.arange(batch_size)[:, None].expand_as(word_index)
            keep = word_index >= 0
            token_labels[rows_index[keep], word_index[keep]] = labels[keep]
            inputs["token_labels"] = token_labels
            batches[split].append(inputs)
    return batches["train"], batches["test"], label_names


def model_inputs(name: str, batch: dict[str, torch.Tensor], with_labels: bool) -> dict[str, torch.Tensor]:
    """The keyword arguments of `name` (`mmib` or `plain`) for one batch."""
    if name == "mmib":
        keys = ["input_ids", "attention_mask", "word_index", "image_features"] + (["labels"] if with_labels else [])
        return {key: batch[key] for key in keys}
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
    if with_labels:
        inputs["labels"] = batch["token_labels"]
    return inputs


def train_step(model, optimizer, inputs: dict[str, torch.Tensor], bf16: bool) -> float:
    """One optimizer step (the `Trainer` recipe); its wall time in seconds."""
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        outputs = model(**inputs)
    outputs.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    optimizer.step()
    return time.perf_counter() - start


def eval_pass(name: str, model, batch: dict[str, torch.Tensor], bf16: bool) -> float:
    """One eval forward with decoding to one label per word; its wall time in seconds."""
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        outputs = model(**model_inputs(name, batch, with_labels=False))
        if name == "plain":
            word_index = batch["word_index"]
            outputs.logits.argmax(-1).gather(1, word_index.clamp(min=0)).masked_fill(word_index < 0, -100)
    return time.perf_counter() - start


def tower_pass(model, pixels: torch.Tensor) -> float:
    """The vision tower on `(P, 1 + NUM_CROPS, 3, 224, 224)` pixels as `get_image_features` runs it, in the
    tower's own dtype (a bf16 model is what `from_pretrained(..., dtype=torch.bfloat16)` gives); seconds."""
    start = time.perf_counter()
    with torch.inference_mode():
        model.mmib.get_image_features(pixels.to(model.dtype))
    return time.perf_counter() - start


def tower_flops_per_image(model) -> int:
    """FLOPs of one 224 x 224 image through the vision tower (multiply and add counted as 2)."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.mmib.get_image_features(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    return counter.get_total_flops()


def main() -> None:
    """Builds both models, runs the interleaved rounds and prints the ratio table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", help="Twitter-2017 folder (default: the shared data folder).")
    parser.add_argument("--rounds", type=int, default=10, help="Timed interleaved rounds.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed rounds first.")
    parser.add_argument("--num_batches", type=int, default=4, help="Distinct batches, cycled through the rounds.")
    parser.add_argument("--train_batch_size", type=int, default=8, help="Posts per training step.")
    parser.add_argument("--eval_batch_size", type=int, default=32, help="Posts per eval pass.")
    parser.add_argument("--pixel_posts", type=int, default=4, help="Posts per vision-tower pass (x5 images).")
    parser.add_argument("--no_bf16", action="store_true", help="Leave out the bf16 variants.")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads.")
    parser.add_argument("--output_json", help="Also write every measurement to this JSON file.")
    args = parser.parse_args()
    machine_before, bf16_ratio = preamble(args.threads)
    precisions = ["fp32"] if args.no_bf16 else ["fp32", "bf16"]
    train_batches, eval_batches, label_names = make_batches(
        args.train_batch_size, args.eval_batch_size, args.num_batches, args.data_dir
    )
    models = {
        "mmib": build_model(label_names, seed=0),
        "plain": BertForTokenClassification.from_pretrained(minilm_path(), num_labels=len(label_names)),
    }
    optimizers = {
        name: torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.01, fused=True)
        for name, model in models.items()
    }
    flops = tower_flops_per_image(models["mmib"])
    # The pixel path in bf16 runs a bf16 copy of the model (bf16 weights), not autocast: 2x faster convolutions.
    pixel_models = {"fp32": models["mmib"], "bf16": copy.deepcopy(models["mmib"]).to(torch.bfloat16).eval()}
    pixels = torch.randn(args.pixel_posts, 1 + NUM_CROPS, 3, IMAGE_SIZE, IMAGE_SIZE)
    variants = [
        f"{kind} {name} {precision}" for kind in ("train", "eval") for name in models for precision in precisions
    ]
    variants += [f"pixels mmib {precision}" for precision in precisions]
    timings: dict[str, list[float]] = {variant: [] for variant in variants}
    gflops: dict[str, list[float]] = {precision: [] for precision in precisions}
    for round_index in range(args.warmup + args.rounds):
        for precision in precisions:
            gflops[precision].append(matmul_gflops(torch.float32 if precision == "fp32" else torch.bfloat16))
        for variant in rotated(variants, round_index):
            kind, name, precision = variant.split()
            model, bf16 = models[name], precision == "bf16"
            if kind == "train":
                model.train()
                batch = train_batches[round_index % len(train_batches)]
                seconds = train_step(model, optimizers[name], model_inputs(name, batch, True), bf16)
            elif kind == "eval":
                model.eval()
                seconds = eval_pass(name, model, eval_batches[round_index % len(eval_batches)], bf16)
            else:
                seconds = tower_pass(pixel_models[precision], pixels)
            if round_index >= args.warmup:
                timings[variant].append(seconds)
    medians = {variant: median(values) for variant, values in timings.items()}
    rates = {precision: median(values[args.warmup :]) for precision, values in gflops.items()}
    rows, figures = [], {}
    for precision in precisions:
        for kind, target in (("train", 1.4), ("eval", 1.3)):
            ratio = medians[f"{kind} mmib {precision}"] / medians[f"{kind} plain {precision}"]
            per_round = [
                mmib / plain
                for mmib, plain in zip(timings[f"{kind} mmib {precision}"], timings[f"{kind} plain {precision}"])
            ]
            figures[f"{kind} {precision} mmib/plain"] = ratio
            rows.append(
                [
                    f"{kind} {precision} (batch {8 if kind == 'train' else 32})",
                    f"{medians[f'{kind} mmib {precision}']:.3f}",
                    f"{medians[f'{kind} plain {precision}']:.3f}",
                    f"**{ratio:.2f}x** ({min(per_round):.2f}-{max(per_round):.2f})",
                    f"<= {target}x: {'met' if ratio <= target else 'missed'}",
                ]
            )
    table = markdown_table(
        ["workload", "MMIB s (median)", "plain s (median)", "MMIB / plain (per-round)", "target"], rows
    )
    images = args.pixel_posts * (1 + NUM_CROPS)
    pixel_rows = []
    for precision in precisions:
        achieved = images * flops / medians[f"pixels mmib {precision}"] / 1e9
        share = achieved / rates[precision]
        figures[f"pixels {precision} share of matmul rate"] = share
        pixel_rows.append(
            [
                precision,
                f"{rates[precision]:.0f}",
                f"{args.pixel_posts / medians[f'pixels mmib {precision}']:.2f}",
                f"{achieved:.0f}",
                f"**{share:.0%}**",
                f">= 50%: {'met' if share >= 0.5 else 'missed'}",
            ]
        )
    pixel_table = markdown_table(
        ["precision", "matmul GFLOP/s", "posts/s (5 images)", "tower GFLOP/s", "share of matmul rate", "target"],
        pixel_rows,
    )
    summary = "\n".join(
        [
            table,
            "",
            f"Vision tower: {flops / 1e9:.2f} GFLOP per 224x224 image, {images} images per pass, channels-last.",
            pixel_table,
        ]
    )
    arguments: dict[str, Any] = {key: value for key, value in vars(args).items() if key != "data_dir"}
    finish_report(
        args.output_json,
        summary,
        machine_before,
        bf16_ratio,
        {
            "args": arguments,
            "matmul_gflops": rates,
            "tower_flops_per_image": flops,
            "medians_seconds": medians,
            "timings_seconds": timings,
            "figures": figures,
        },
    )


if __name__ == "__main__":
    main()
