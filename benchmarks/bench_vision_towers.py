"""Raw-image inference of MMIB with EfficientNet-Lite0 vs ResNet-50 as the vision tower, side by side on a CPU.

New posts have no cached features: every image and crop goes through the vision tower, which dominates the cost
(see `bench_inference.py`). Both models are `MMIBForTokenClassification` in eval mode with the MiniLM-L6 text tower;
the vision tower is either the converted, pretrained EfficientNet-Lite0 (`scripts/convert_efficientnet_lite0.py`,
4.7M parameters, its own image processor: bicubic 256 -> 224, mean = std = 0.5) or a ResNet-50-shaped tower
with random weights (25.6M parameters, the `microsoft/resnet-50` preprocessing; weights do not change the cost).
Posts: the words of real Twitter-2017 posts with a synthetic JPEG image and 4 JPEG crops each (as in
`bench_inference.py`). A pass collates the rows with `MMIBDataCollator(processor)` (JPEG decoding and preprocessing
included) and runs the model under `torch.inference_mode()`. The two towers run in interleaved rounds (order
rotated every round), summarised by the median posts/s; the ratio is that of the medians.

    python benchmarks/bench_vision_towers.py --output_json benchmarks/vision_towers.json
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_inference import make_rows, run_pass

from bench_common import (
    REPO_ROOT,
    build_model,
    build_processor,
    finish_report,
    markdown_table,
    median,
    minilm_path,
    preamble,
    rotated,
)
from mmib import MMIBForTokenClassification, MMIBProcessor
from mmib.training.collator import MMIBDataCollator
from mmib.vision_towers_mmib import load_image_processor

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from convert_efficientnet_lite0 import convert  # noqa: E402

TOWERS = ("efficientnet-lite0", "resnet-50")


def parse_args() -> argparse.Namespace:
    """The command line flags (`--help` prints them with the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", help="Twitter-2017 folder (train.txt, ...; default: the shared data folder).")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"], help="Posts to use.")
    parser.add_argument("--num_posts", type=int, default=16, help="Posts per pass.")
    parser.add_argument("--batch_size", type=int, default=8, help="Posts per batch.")
    parser.add_argument("--rounds", type=int, default=5, help="Interleaved timed rounds (one pass per tower each).")
    parser.add_argument(
        "--efficientnet_dir",
        help="A converted EfficientNet-Lite0 folder (default: convert into a temporary folder, about a second).",
    )
    parser.add_argument("--image_size", type=int, nargs=2, default=[400, 300], help="Width and height of the images.")
    parser.add_argument("--crop_size", type=int, default=128, help="Side of the square crops.")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights and the synthetic images.")
    parser.add_argument("--output_json", help="Also write all measurements to this JSON file.")
    return parser.parse_args()


def build_efficientnet(
    folder: str, label_names: list[str], seed: int
) -> tuple[MMIBForTokenClassification, MMIBProcessor]:
    """MMIB around MiniLM and the converted EfficientNet-Lite0, with that tower's own image processor."""
    torch.manual_seed(seed)
    model = MMIBForTokenClassification.from_text_vision_pretrained(
        minilm_path(), folder, apenc_num_attention_heads=6, num_crops=4, id2label=dict(enumerate(label_names))
    )
    reference = build_processor()
    processor = MMIBProcessor(load_image_processor(folder), reference.tokenizer, num_crops=4)
    return model.eval(), processor


def main() -> None:
    """Builds both models and the JPEGs, times the towers in interleaved rounds and prints the table."""
    args = parse_args()
    machine_before, bf16_matmul_ratio = preamble(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        rows, label_names = make_rows(args, Path(folder))
        efficientnet_dir = args.efficientnet_dir or str(convert(Path(folder) / "efficientnet-lite0"))
        efficientnet, efficientnet_processor = build_efficientnet(efficientnet_dir, label_names, args.seed)
        setups = {
            "efficientnet-lite0": (efficientnet, MMIBDataCollator(efficientnet_processor)),
            "resnet-50": (build_model(label_names, args.seed).eval(), MMIBDataCollator(build_processor())),
        }
        tower_parameters = {
            name: sum(parameter.numel() for parameter in model.mmib.vision_model.parameters())
            for name, (model, _) in setups.items()
        }
        for model, collator in setups.values():
            run_pass(model, collator, rows[:2], 2, bf16=False)  # warm-up
        passes: dict[str, list[dict[str, float]]] = {name: [] for name in TOWERS}
        for round_index in range(args.rounds):
            for name in rotated(TOWERS, round_index):
                model, collator = setups[name]
                start = time.perf_counter()
                collate, forward = run_pass(model, collator, rows, args.batch_size, bf16=False)
                passes[name].append({"collate": collate, "model": forward})
                print(f"round {round_index + 1}: {name} {time.perf_counter() - start:.1f} s", file=sys.stderr)
    posts_per_second = {
        name: median([args.num_posts / (entry["collate"] + entry["model"]) for entry in entries])
        for name, entries in passes.items()
    }
    per_round = [
        (args.num_posts / sum(lite.values())) / (args.num_posts / sum(resnet.values()))
        for lite, resnet in zip(passes["efficientnet-lite0"], passes["resnet-50"])
    ]
    table = markdown_table(
        ["vision tower", "tower parameters", "posts/s (median)", "passes", "vs resnet-50"],
        [
            [
                name,
                f"{tower_parameters[name] / 1e6:.1f}M",
                f"{posts_per_second[name]:.2f}",
                len(passes[name]),
                f"{posts_per_second[name] / posts_per_second['resnet-50']:.2f}x",
            ]
            for name in TOWERS
        ],
    )
    summary = (
        f"{table}\n\nRaw images, fp32, batch {args.batch_size}, 1 image + 4 crops per post. EfficientNet-Lite0 / "
        f"ResNet-50 per round: {min(per_round):.2f}x to {max(per_round):.2f}x."
    )
    finish_report(
        args.output_json,
        summary,
        machine_before,
        bf16_matmul_ratio,
        {"args": vars(args), "passes": passes, "tower_parameters": tower_parameters, "ratio_per_round": per_round},
    )


if __name__ == "__main__":
    main()
