"""The cost of a new post, stage by stage, at the paper's sizes: FLOPs, seconds, GFLOP/s and the fraction of a matmul
peak measured in the same run for the stage's dtype.

Random weights of the real configs, nothing downloaded: MMIB around a BERT-base text tower (`BertConfig()`, the
uncased vocabulary of the bundled MiniLM tokenizer) and a ResNet-50 vision tower (`ResNetConfig()`), 4 crops; the
detectors DETR-R50 and Grounding DINO tiny of `real_size_detectors.py`. A new post is a Twitter-2015 sample image
(the one closest to 600 x 800 pixels) and its words. Stages:

1. image decoding: `load_image` of the file (EXIF-upright RGB);
2. detection: `MMIBObjectExtractor` with its defaults on the picture, beside the bare forward of the same detector
   (its processor + forward) in fp32 and with bf16 weights;
3. vision: the image and its 4 crops resized by the image processor and through the vision tower (5 images at 224 x
   224, channels-last), as the predictor runs it (fp32, or bf16 autocast);
4. text: tokenization, text tower, APEnc fusion, emission head and CRF decoding of `--posts` posts at once (with the
   vision features given), per post.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matrix products and convolutions; the grid sampling
of deformable attention and element-wise work are not counted). The peak is a 2048 x 2048 matmul in each dtype.
Targets: vision and text stages at >= 60% of their dtype's peak; detection (extractor) within 1.2x of the fastest
bare forward.

    python benchmarks/bench_stages.py --posts 32 --repeats 2 --output_json benchmarks/stages.json
"""

import argparse
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_object_extraction import bare_forward, load_average, sample_posts
from real_size_detectors import DETECTORS, build_detector
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoTokenizer, BertConfig, ResNetConfig

from bench_common import machine_note, median, minilm_path, quiet_logging
from mmib import MMIBConfig, MMIBForTokenClassification, MMIBProcessor
from mmib.data.registry import default_data_dir
from mmib.image_loading_mmib import load_image
from mmib.object_extraction_mmib import MMIBObjectExtractor
from mmib.object_settings_mmib import ObjectExtractionSettings
from mmib.vision_towers_mmib import resnet_image_processor

NUM_CROPS = 4
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a `size x size` matmul in `dtype` (median of `repeats` after a warm-up)."""
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(dtype)
    right = torch.randn(size, size, generator=generator).to(dtype)
    torch.mm(left, right)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(left, right)
        timings.append(time.perf_counter() - start)
    return 2 * size**3 / median(timings) / 1e9


def measure(run: Callable[[], object], repeats: int, count: bool = True) -> tuple[float, float]:
    """
    `(seconds, FLOPs)` of `run`: median of `repeats` timed calls after a warm-up; FLOPs counted in the warm-up call
    (`count=False`: 0, for a run whose FLOPs another row counts).
    """
    flops = 0.0
    if count:
        with FlopCounterMode(display=False) as counter:
            run()
        flops = float(counter.get_total_flops())
    else:
        run()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        timings.append(time.perf_counter() - start)
    return median(timings), flops


def build_mmib(towers: str) -> tuple[MMIBForTokenClassification, MMIBProcessor]:
    """MMIB for NER at the paper's sizes (BERT-base, ResNet-50), or tiny towers for smoke runs."""
    torch.manual_seed(0)
    if towers == "paper":
        text_config, vision_config = BertConfig(), ResNetConfig()
    else:
        text_config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
        vision_config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])
    config = MMIBConfig(
        text_config=text_config,
        vision_config=vision_config,
        num_crops=NUM_CROPS,
        apenc_num_attention_heads=text_config.num_attention_heads,
        id2label=dict(enumerate(LABELS)),
    )
    model = MMIBForTokenClassification(config).eval()
    processor = MMIBProcessor(
        resnet_image_processor(), AutoTokenizer.from_pretrained(minilm_path()), num_crops=NUM_CROPS
    )
    return model, processor


def stage_row(name: str, dtype: str, seconds: float, flops: float, peaks: dict[str, float], note: str = "") -> dict:
    rate = flops / seconds / 1e9 if flops else None
    return {
        "stage": name,
        "dtype": dtype,
        "gflop": round(flops / 1e9, 2),
        "seconds": round(seconds, 4),
        "gflop_per_s": None if rate is None else round(rate, 1),
        "fraction_of_peak": None if rate is None or dtype not in peaks else round(rate / peaks[dtype], 2),
        "note": note,
    }


def detection_rows(name: str, post: dict, peaks: dict[str, float], args: argparse.Namespace) -> list[dict]:
    model32, processor = build_detector(name)
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    settings = ObjectExtractionSettings(detector=f"random {name}", input_size=args.detector_input_size)
    extractor = MMIBObjectExtractor(copy.deepcopy(model32), processor, settings)
    picture, words = post["picture"], post["words"]
    queries = [extractor.queries_for(words)]
    dtype = str(extractor.dtype).removeprefix("torch.")
    size = "x".join(str(edge) for edge in extractor.adapter.inputs([picture], queries)["pixel_values"].shape[-2:])

    def extract():
        extractor.cache.clear()
        return extractor([picture], words=[words])

    seconds, flops = measure(extract, args.repeats)
    rows = []
    for label, model in (("float32", model32), ("bfloat16", model16)):
        bare, _ = measure(lambda model=model: bare_forward(extractor, model, [picture], queries), args.repeats, False)
        rows.append(stage_row(f"detection {name}: bare forward", label, bare, flops, peaks, f"input {size}"))
    fastest = min(row["seconds"] for row in rows)
    note = f"input {size}; {seconds / fastest:.2f}x the fastest bare forward"
    rows.append(stage_row(f"detection {name}: extractor (defaults)", dtype, seconds, flops, peaks, note))
    crops = [obj.crop for obj in extract()[0]]
    post.setdefault("crops", crops)
    return rows


def vision_rows(model, processor, post: dict, peaks: dict[str, float], args: argparse.Namespace) -> list[dict]:
    images = [post["picture"], *post["crops"][:NUM_CROPS]]
    images += [post["picture"]] * (1 + NUM_CROPS - len(images))  # a detector that found fewer: same work
    rows = []
    for dtype in args.dtypes:

        def run(dtype=dtype):
            pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
            with torch.inference_mode(), torch.autocast("cpu", DTYPES[dtype], enabled=dtype != "float32"):
                return model.mmib.get_image_features(pixel_values[None])

        seconds, flops = measure(run, args.repeats)
        rows.append(stage_row("vision: image + 4 crops, resize + tower", dtype, seconds, flops, peaks, "5 x 224x224"))
    return rows


def text_rows(model, processor, posts: list[dict], peaks: dict[str, float], args: argparse.Namespace) -> list[dict]:
    words = [post["words"] for post in posts]
    features = torch.randn(len(posts), 1 + NUM_CROPS, model.config.vision_feature_size)
    rows = []
    for dtype in args.dtypes:

        def run(dtype=dtype):
            inputs = processor(words)
            inputs.pop("pixel_values", None)
            inputs["image_mask"] = torch.ones(len(posts), 1 + NUM_CROPS, dtype=torch.bool)
            with torch.inference_mode(), torch.autocast("cpu", DTYPES[dtype], enabled=dtype != "float32"):
                return model(**inputs, image_features=features).predictions

        seconds, flops = measure(run, args.repeats)
        tokens = processor(words)["input_ids"].shape
        rows.append(
            stage_row(
                "text: tokens, text tower, APEnc, fusion, CRF (per post)",
                dtype,
                seconds / len(posts),
                flops / len(posts),
                peaks,
                f"{tokens[0]} posts x {tokens[1]} tokens at once",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="Twitter-2015 folder (default: the shared data).")
    parser.add_argument("--detectors", nargs="*", default=["detr-resnet-50", "grounding-dino-tiny"])
    parser.add_argument("--detector_input_size", type=int, nargs=2, default=None, help="Smoke runs: small.")
    parser.add_argument("--towers", choices=["paper", "tiny"], default="paper", help="tiny: smoke runs only.")
    parser.add_argument("--posts", type=int, default=32, help="Posts the text stage encodes at once.")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)
    unknown = set(args.detectors) - set(DETECTORS)
    if unknown:
        parser.error(f"unknown detectors {sorted(unknown)}; known: {sorted(DETECTORS)}")
    torch.set_num_threads(args.threads)
    quiet_logging()
    load_before = load_average()
    peaks = {dtype: matmul_peak(DTYPES[dtype]) for dtype in DTYPES}
    posts = sample_posts(args.data_dir or str(default_data_dir("twitter2015")), 1)
    post = posts[0]
    text_posts = (posts * args.posts)[: args.posts]
    seconds, _ = measure(lambda: load_image(post["image"]), args.repeats)
    rows = [
        stage_row(
            "image decoding", "-", seconds, 0.0, peaks, f"{post['picture'].size[0]}x{post['picture'].size[1]} JPEG"
        )
    ]
    for name in args.detectors:
        rows += detection_rows(name, post, peaks, args)
        print(rows[-1], flush=True)
    post.setdefault("crops", [])
    model, processor = build_mmib(args.towers)
    rows += vision_rows(model, processor, post, peaks, args)
    rows += text_rows(model, processor, text_posts, peaks, args)
    peaks_after = {dtype: matmul_peak(DTYPES[dtype]) for dtype in DTYPES}
    headers = ["stage", "dtype", "GFLOP", "s", "GFLOP/s", "of peak", "note"]
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        values = [
            row[key] for key in ("stage", "dtype", "gflop", "seconds", "gflop_per_s", "fraction_of_peak", "note")
        ]
        print("| " + " | ".join("-" if value is None else str(value) for value in values) + " |")
    print(
        f"{args.threads} threads; matmul 2048^2 peak GFLOP/s before: "
        + ", ".join(f"{dtype} {value:.0f}" for dtype, value in peaks.items())
        + "; after: "
        + ", ".join(f"{dtype} {value:.0f}" for dtype, value in peaks_after.items())
        + f"; load average before / after: {load_before} / {load_average()}"
    )
    report = {
        "machine": {**machine_note(), "threads": args.threads},
        "args": {**vars(args), "data_dir": "twitter2015"},
        "peaks_gflop_per_s": {"before": peaks, "after": peaks_after},
        "load_average": {"before": load_before, "after": load_average()},
        "rows": rows,
    }
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
