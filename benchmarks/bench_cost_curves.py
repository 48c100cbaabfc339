"""Cost curves: how MMIB's time grows with words per post, crops per post and batch size, next to a plain tagger.

Same set-up as `bench_vs_plain.py` (MiniLM text tower; cached random `image_features`; a plain
`BertForTokenClassification` on the same tower). Posts are real Twitter-2017 words, concatenated post after post
and cut to exactly the number of words of the point. For every point MMIB and the plain tagger run interleaved
(`--repeats` times each, median); both a training step (forward + loss + backward + fused AdamW) and an eval pass
(inference mode, decoding included) are timed.

- words per post: 16, 32, 64, 128 (batch 8 training, batch 32 eval, image + 4 crops);
- crops per post: 0, 1, 2, 4, 8 (32 words; the plain tagger has no images, its time is the reference);
- batch size: 1, 4, 8, 16, 32 (32 words, image + 4 crops).

Writes a markdown table to stdout, every point to `--output_json` and the plot to `--output_png`.

    python benchmarks/bench_cost_curves.py --output_json benchmarks/cost_curves.json \
        --output_png benchmarks/cost_curves.png
"""

import argparse
import time

import matplotlib
import torch
from transformers import BertForTokenClassification

from bench_common import (
    build_model,
    build_processor,
    finish_report,
    load_posts,
    markdown_table,
    median,
    minilm_path,
    preamble,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FEATURE_SIZE = 2048
WORDS = (16, 32, 64, 128)
CROPS = (0, 1, 2, 4, 8)
BATCHES = (1, 4, 8, 16, 32)


def make_batch(processor, pool: list[str], batch_size: int, words: int, crops: int, label_count: int, seed: int):
    """`batch_size` posts of exactly `words` words from the word pool, with random labels and features."""
    generator = torch.Generator().manual_seed(seed)
    posts = []
    for index in range(batch_size):
        start = (index * words * 7 + seed) % (len(pool) - words)
        posts.append(pool[start : start + words])
    labels = [torch.randint(0, label_count, (words,), generator=generator).tolist() for _ in posts]
    batch = dict(processor(posts, labels=labels))
    batch.pop("image_mask", None)
    batch["image_features"] = torch.randn(batch_size, 1 + crops, FEATURE_SIZE, generator=generator)
    word_index = batch["word_index"]
    token_labels = torch.full_like(batch["input_ids"], -100)
    rows = torch.arange(batch_size)[:, None].expand_as(word_index)
    keep = word_index >= 0
    token_labels[rows[keep], word_index[keep]] = batch["labels"][keep]
    batch["token_labels"] = token_labels
    return batch


def time_point(models, optimizers, batch, kind: str, repeats: int) -> dict[str, float]:
    """Median seconds of MMIB and plain on one batch, interleaved."""
    timings = {name: [] for name in models}
    for repeat in range(repeats + 1):
        for name in models if repeat % 2 == 0 else reversed(list(models)):
            model = models[name]
            if name == "mmib":
                inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "word_index", "image_features")}
                labels = batch["labels"]
            else:
                inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
                labels = batch["token_labels"]
            start = time.perf_counter()
            if kind == "train":
                model.train()
                optimizers[name].zero_grad(set_to_none=True)
                model(**inputs, labels=labels).loss.backward()
                optimizers[name].step()
            else:
                model.eval()
                with torch.inference_mode():
                    outputs = model(**inputs)
                    if name == "plain":
                        outputs.logits.argmax(-1).gather(1, batch["word_index"].clamp(min=0))
            if repeat > 0:  # the first call of a new shape is a warm-up
                timings[name].append(time.perf_counter() - start)
    return {name: median(values) for name, values in timings.items()}


def main() -> None:
    """Measures the three curves, prints the table, writes the JSON and the PNG."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", help="Twitter-2017 folder (default: the shared data folder).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--words", type=int, nargs="+", default=list(WORDS), help="Words per post of the first curve.")
    parser.add_argument("--crops", type=int, nargs="+", default=list(CROPS), help="Crops per post of the second.")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=list(BATCHES), help="Batch sizes of the third.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output_json")
    parser.add_argument("--output_png")
    args = parser.parse_args()
    machine_before, bf16_ratio = preamble(args.threads)
    rows, label_names = load_posts(args.data_dir, "train")
    pool = [word for row in rows[:2000] for word in row["words"]]
    processor = build_processor()
    processor.max_length = 512  # 128 tweet words can take more than the default 128 sub-word tokens
    models = {
        "mmib": build_model(label_names, seed=0),
        "plain": BertForTokenClassification.from_pretrained(minilm_path(), num_labels=len(label_names)),
    }
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=3e-5, fused=True) for name, model in models.items()}
    points = []
    axes_values = {"words": args.words, "crops": args.crops, "batch": args.batch_sizes}
    for axis, values in axes_values.items():
        for value in values:
            words = value if axis == "words" else 32
            crops = value if axis == "crops" else 4
            for kind in ("train", "eval"):
                batch_size = value if axis == "batch" else (8 if kind == "train" else 32)
                batch = make_batch(processor, pool, batch_size, words, crops, len(label_names), seed=value)
                seconds = time_point(models, optimizers, batch, kind, args.repeats)
                points.append(
                    {
                        "axis": axis,
                        "value": value,
                        "kind": kind,
                        "batch_size": batch_size,
                        "words": words,
                        "crops": crops,
                        "mmib_seconds": seconds["mmib"],
                        "plain_seconds": seconds["plain"],
                        "ratio": seconds["mmib"] / seconds["plain"],
                    }
                )
                print(points[-1], flush=True)
    table = markdown_table(
        ["varied", "value", "kind", "batch", "words", "crops", "MMIB ms", "plain ms", "MMIB / plain"],
        [
            [
                p["axis"],
                p["value"],
                p["kind"],
                p["batch_size"],
                p["words"],
                p["crops"],
                f"{p['mmib_seconds'] * 1000:.0f}",
                f"{p['plain_seconds'] * 1000:.0f}",
                f"{p['ratio']:.2f}x",
            ]
            for p in points
        ],
    )
    if args.output_png:
        figure, panels = plt.subplots(1, 3, figsize=(15, 4.2))
        for panel, axis in zip(panels, axes_values):
            for kind, style in (("train", "-"), ("eval", "--")):
                chosen = [p for p in points if p["axis"] == axis and p["kind"] == kind]
                values = [p["value"] for p in chosen]
                for model, marker in (("mmib", "o"), ("plain", "s")):
                    per_post = [p[f"{model}_seconds"] * 1000 / p["batch_size"] for p in chosen]
                    panel.plot(values, per_post, style, marker=marker, label=f"{model} {kind}")
            panel.set_xlabel({"words": "words per post", "crops": "crops per post", "batch": "batch size"}[axis])
            panel.set_ylabel("ms per post")
            panel.set_yscale("log")
            panel.grid(alpha=0.3)
        panels[0].legend()
        figure.suptitle("MMIB vs plain BertForTokenClassification (MiniLM), CPU, cached image features")
        figure.tight_layout()
        figure.savefig(args.output_png, dpi=110)
    finish_report(
        args.output_json,
        table,
        machine_before,
        bf16_ratio,
        {"args": {key: value for key, value in vars(args).items() if key != "data_dir"}, "points": points},
    )


if __name__ == "__main__":
    main()
