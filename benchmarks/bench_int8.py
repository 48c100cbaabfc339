"""Test F1, agreement and speed of `--dtype int8` against float32 (and bfloat16) on the Twitter-2017 test posts.

python benchmarks/bench_int8.py runs/full-text-twitter2017 [--dtypes float32 int8 bfloat16] [--rounds 2] \
    [--output_json benchmarks/int8.json]

Every precision predicts the 723 test posts (words as given, no images, batch 32) with `MMIBPredictor`, in one
process, interleaved over `--rounds` (order rotated each round; the first round's outputs are scored). Prints per
precision: entity-level F1 against the gold tags (`mmib.training.metrics.ner_scores`, conlleval), the F1 difference to
float32, the share of posts whose entities (word span and type) equal float32's, and posts/s with the ratio to float32
(medians). The rule for `--dtype auto`: int8 joins it only if it is faster, within 0.3 F1 point and agrees on >= 98%
of the posts.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from bench_vs_pipeline import machine_properties

from bench_common import repo_relative, rotated
from mmib import MMIBPredictor
from mmib.data.registry import default_data_dir
from mmib.data.twitter import read_conll
from mmib.training.metrics import ner_scores


def entities(result: dict) -> list[tuple[int, int, str]]:
    return [(entity["word_start"], entity["word_end"], entity["type"]) for entity in result["entities"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data_dir", help="Twitter-2017 folder (default: the shared data folder).")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "int8", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--output_json")
    args = parser.parse_args()
    machine = machine_properties()
    print(f"machine: {json.dumps(machine)}, torch threads {torch.get_num_threads()}", flush=True)
    posts = read_conll(Path(args.data_dir or default_data_dir("twitter2017")) / "test.txt")
    inputs = [{"words": post.words} for post in posts]
    gold = [post.tags for post in posts]
    predictors = {
        dtype: MMIBPredictor.from_pretrained(args.model, dtype=dtype, device="cpu", batch_size=args.batch_size)
        for dtype in args.dtypes
    }
    outputs, seconds = {}, {dtype: [] for dtype in args.dtypes}
    for round_index in range(args.rounds):
        for dtype in rotated(args.dtypes, round_index):
            start = time.perf_counter()
            results = predictors[dtype](inputs)
            seconds[dtype].append(time.perf_counter() - start)
            outputs.setdefault(dtype, results)
            print(f"round {round_index} {dtype}: {len(inputs) / seconds[dtype][-1]:.1f} posts/s", flush=True)
    report = {}
    reference = outputs["float32"]
    for dtype in args.dtypes:
        scores = ner_scores(gold, [result["tags"] for result in outputs[dtype]])
        same = sum(entities(a) == entities(b) for a, b in zip(reference, outputs[dtype], strict=True))
        rate = len(inputs) / statistics.median(seconds[dtype])
        report[dtype] = {
            "test_f1": scores["f1"],
            "posts_with_the_same_entities_as_float32": same / len(inputs),
            "posts_per_s": rate,
            "per_round_seconds": seconds[dtype],
        }
    base = report["float32"]
    for dtype, row in report.items():
        print(
            f"{dtype:9s} test F1 {100 * row['test_f1']:.2f} ({100 * (row['test_f1'] - base['test_f1']):+.2f} points), "
            f"same entities as float32 on {100 * row['posts_with_the_same_entities_as_float32']:.1f}% of "
            f"{len(inputs)} posts, {row['posts_per_s']:.1f} posts/s ({row['posts_per_s'] / base['posts_per_s']:.2f}x)"
        )
    if args.output_json:
        Path(args.output_json).write_text(
            json.dumps(
                {
                    "machine": machine,
                    "machine_after": machine_properties(),
                    "torch_threads": torch.get_num_threads(),
                    "args": {key: repo_relative(value) for key, value in vars(args).items()},
                    "results": report,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
