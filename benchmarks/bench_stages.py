"""The cost of a new post, stage by stage, at the paper's sizes: FLOPs, seconds, GFLOP/s and the fraction of a matmul
peak measured in the same run for the stage's dtype.

Random weights of the real configs, nothing downloaded: MMIB around a BERT-base text tower (`BertConfig()`, the
uncased vocabulary of the bundled MiniLM tokenizer) and a ResNet-50 vision tower (`ResNetConfig()`), 4 crops; the
detectors DETR-R50 and Grounding DINO tiny of `real_size_detectors.py`. A new post is a Twitter-2015 sample image
(the one closest to 600 x 800 pixels) and its words. Stages:

1. image decoding: `load_image` of the file (EXIF-upright RGB);
2. detection: `MMIBObjectExtractor` with its defaults on the picture, beside the bare forward of the same detector
   (its processor + forward) in fp32 and with bf16 weights;
3. vision: the image and its 4 crops resized and normalised by the image processor (a row of its own), then the 5
   images at 224 x 224 through the vision tower as the predictor runs it (`prepare_for_inference`: channels-last
   convolution weights; in bf16 the linear and convolution weights cast once, under autocast), beside the weights
   as loaded (fp32, contiguous; in bf16 under autocast: the predictor before issue 25) and the bare tower (its
   transformers module, a copy with the same weights) on the same pixels, channels-last, fp32 or bf16 weights;
4. text: tokenization of `--posts` posts (a row of its own), then text tower, APEnc fusion, emission head and CRF
   decoding of them at once (with the vision features given) as the predictor runs it, per post, beside (in bf16)
   autocast over the weights as loaded and the bare text tower on the same tokens.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matrix products and convolutions; the grid sampling
of deformable attention and element-wise work are not counted). The peak is the fastest of 10 2048 x 2048 matmuls in
each dtype, measured before and after the stages; a stage's fraction of peak divides its median rate by the larger of
the two. "of bare" is a
stage's GFLOP/s over its bare module's in the same dtype. `--profile` adds the top operators (torch.profiler, share of
self CPU time) of the MMIB vision and text stages to the report.
Targets: vision and text stages at >= 60% of their dtype's peak; detection (extractor) within 1.2x of the fastest
bare forward.

    python benchmarks/bench_stages.py --posts 32 --repeats 2 --output_json benchmarks/stages.json
    python benchmarks/bench_stages.py --detectors --posts 32 --repeats 5 --profile   # vision and text only
"""

import argparse
import copy
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_object_extraction import bare_forward, load_average, sample_posts
from real_size_detectors import DETECTORS, build_detector
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoTokenizer, BertConfig, ResNetConfig

from bench_common import machine_note, median, minilm_path, quiet_logging
from mmib import MMIBConfig, MMIBForTokenClassification, MMIBProcessor
from mmib.checkpoints_mmib import prepare_for_inference
from mmib.data.registry import default_data_dir
from mmib.image_loading_mmib import load_image
from mmib.object_extraction_mmib import MMIBObjectExtractor
from mmib.object_settings_mmib import ObjectExtractionSettings
from mmib.vision_towers_mmib import resnet_image_processor

NUM_CROPS = 4
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """
    GFLOP/s of a `size x size` matmul in `dtype`: the fastest of `repeats` after a warm-up (the peak; a shared
    machine's load only slows calls down, so the fastest is the closest to the hardware's rate).
    """
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(dtype)
    right = torch.randn(size, size, generator=generator).to(dtype)
    torch.mm(left, right)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(left, right)
        timings.append(time.perf_counter() - start)
    return 2 * size**3 / min(timings) / 1e9


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


def measure_interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """
    [`measure`] of several runs of one stage, interleaved (each repeat times every run once, starting one run
    further each time), so that a load that comes and goes on a shared machine weighs on each about the same:
    `{label: (seconds, FLOPs)}`.
    """
    flops = {}
    for label, run in runs.items():
        with FlopCounterMode(display=False) as counter:
            run()
        flops[label] = float(counter.get_total_flops())
        run()
    timings = {label: [] for label in runs}
    labels = list(runs)
    for repeat in range(repeats):
        shift = repeat % len(labels)
        for label in labels[shift:] + labels[:shift]:
            run = runs[label]
            start = time.perf_counter()
            run()
            timings[label].append(time.perf_counter() - start)
    return {label: (median(timings[label]), flops[label]) for label in runs}


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


def stage_row(name: str, dtype: str, seconds: float, flops: float, note: str = "", bare: dict | None = None) -> dict:
    """A table row; `bare`: the row of the bare module the stage compares with (same dtype)."""
    rate = flops / seconds / 1e9 if flops else None
    row = {
        "stage": name,
        "dtype": dtype,
        "gflop": round(flops / 1e9, 2),
        "seconds": round(seconds, 4),
        "gflop_per_s": None if rate is None else round(rate, 1),
        "fraction_of_peak": None,
        "of_bare": None,
        "note": note,
    }
    if bare is not None and rate is not None:
        row["of_bare"] = round(rate / bare["gflop_per_s"], 2)
    return row


def add_fractions_of_peak(rows: list[dict], peaks: dict[str, float]) -> None:
    """Each row's GFLOP/s over the peak of its dtype (`peaks`: the larger of the measurements before and after)."""
    for row in rows:
        if row["gflop_per_s"] is not None and row["dtype"] in peaks:
            row["fraction_of_peak"] = round(row["gflop_per_s"] / peaks[row["dtype"]], 2)


def top_operators(run: Callable[[], object], count: int = 8) -> list[list]:
    """`[operator, share of self CPU time]` of one call of `run` under torch.profiler, the `count` largest."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run()
    events = [event for event in profiler.key_averages() if event.self_cpu_time_total > 0]
    total = sum(event.self_cpu_time_total for event in events)
    events.sort(key=lambda event: event.self_cpu_time_total, reverse=True)
    return [[event.key, round(event.self_cpu_time_total / total, 3)] for event in events[:count]]


def as_predictor_runs(model: MMIBForTokenClassification, dtype: str) -> MMIBForTokenClassification:
    """A copy of `model` laid out as `MMIBPredictor.from_pretrained` lays it out for `dtype`."""
    return prepare_for_inference(copy.deepcopy(model), DTYPES[dtype])


def autocast(dtype: str):
    return torch.autocast("cpu", DTYPES[dtype], enabled=dtype != "float32")


def detection_rows(name: str, post: dict, args: argparse.Namespace) -> list[dict]:
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
        rows.append(stage_row(f"detection {name}: bare forward", label, bare, flops, f"input {size}"))
    fastest = min(row["seconds"] for row in rows)
    note = f"input {size}; {seconds / fastest:.2f}x the fastest bare forward"
    rows.append(stage_row(f"detection {name}: extractor (defaults)", dtype, seconds, flops, note))
    crops = [obj.crop for obj in extract()[0]]
    post.setdefault("crops", crops)
    return rows


def vision_rows(model, processor, post: dict, args: argparse.Namespace) -> list[dict]:
    images = [post["picture"], *post["crops"][:NUM_CROPS]]
    images += [post["picture"]] * (1 + NUM_CROPS - len(images))  # a detector that found fewer: same work
    seconds, _ = measure(lambda: processor.image_processor(images, return_tensors="pt"), args.repeats, False)
    pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    size = "x".join(str(edge) for edge in pixel_values.shape[-2:])
    rows = [stage_row("vision: resize + normalise image + 4 crops", "-", seconds, 0.0, f"5 images to {size}")]
    tower = "vision: image + 4 crops through the tower"
    for dtype in args.dtypes:
        bare_model = copy.deepcopy(model.mmib.vision_model).to(memory_format=torch.channels_last)
        bare_model = bare_model.to(DTYPES[dtype])
        bare_pixels = pixel_values.to(DTYPES[dtype]).contiguous(memory_format=torch.channels_last)
        # The weights as loaded: fp32, contiguous (the predictor before issue 25; in bf16 under autocast).
        variants = {"predictor": as_predictor_runs(model, dtype), "weights as loaded": model}

        def run(variant, dtype=dtype):
            # As `MMIBModel._image_inputs` feeds the tower: pixels in the tower's dtype.
            with torch.inference_mode(), autocast(dtype):
                return variant.mmib.get_image_features(pixel_values[None].to(variant.mmib.vision_model.dtype))

        def run_bare(bare_model=bare_model, bare_pixels=bare_pixels):
            with torch.inference_mode():
                return bare_model(pixel_values=bare_pixels)

        runs = {"bare tower": run_bare} | {
            label: functools.partial(run, variant) for label, variant in variants.items()
        }
        timed = measure_interleaved(runs, args.repeats)
        note = f"{type(bare_model).__name__}, {'bf16 weights' if dtype != 'float32' else 'fp32'}, channels-last"
        bare = stage_row(f"{tower}: bare tower", dtype, *timed["bare tower"], note)
        for label in variants:
            rows.append(stage_row(f"{tower}: {label}", dtype, *timed[label], f"5 x {size}", bare))
        if args.profile:
            rows[-len(variants)]["top_operators"] = top_operators(runs["predictor"])
        rows.append(bare)
    return rows


def text_rows(model, processor, posts: list[dict], args: argparse.Namespace) -> list[dict]:
    words = [post["words"] for post in posts]
    features = torch.randn(len(posts), 1 + NUM_CROPS, model.config.vision_feature_size)

    def tokenize():
        inputs = processor(words)
        inputs.pop("pixel_values", None)
        inputs["image_mask"] = torch.ones(len(posts), 1 + NUM_CROPS, dtype=torch.bool)
        return inputs

    seconds, _ = measure(tokenize, args.repeats, False)
    inputs = tokenize()
    shape = f"{inputs['input_ids'].shape[0]} posts x {inputs['input_ids'].shape[1]} tokens at once"
    rows = [stage_row("text: tokenization (per post)", "-", seconds / len(posts), 0.0, shape)]
    side = "text: text tower, APEnc, fusion, CRF (per post)"
    tower_inputs = {key: inputs[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in inputs}
    for dtype in args.dtypes:
        bare_model = copy.deepcopy(model.mmib.text_model).to(DTYPES[dtype])
        variants = {"predictor": as_predictor_runs(model, dtype)}
        if dtype != "float32":  # in fp32 the text side's weights are as loaded
            variants["weights as loaded"] = model

        def run(variant, dtype=dtype):
            with torch.inference_mode(), autocast(dtype):
                return variant(**inputs, image_features=features).predictions

        def run_bare(bare_model=bare_model):
            with torch.inference_mode():
                return bare_model(**tower_inputs)

        runs = {"bare text tower": run_bare} | {
            label: functools.partial(run, variant) for label, variant in variants.items()
        }
        timed = {
            label: (seconds / len(posts), flops / len(posts))
            for label, (seconds, flops) in measure_interleaved(runs, args.repeats).items()
        }
        note = f"{type(bare_model).__name__}, {'bf16 weights' if dtype != 'float32' else 'fp32'}"
        bare = stage_row(f"{side}: bare text tower", dtype, *timed["bare text tower"], note)
        for label in variants:
            rows.append(stage_row(f"{side}: {label}", dtype, *timed[label], shape, bare))
        if args.profile:
            rows[-len(variants)]["top_operators"] = top_operators(runs["predictor"])
        rows.append(bare)
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
    parser.add_argument("--profile", action="store_true", help="Top operators of the vision and text stages.")
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
    width, height = post["picture"].size
    rows = [stage_row("image decoding", "-", seconds, 0.0, f"{width}x{height} JPEG")]
    for name in args.detectors:
        rows += detection_rows(name, post, args)
        print(rows[-1], flush=True)
    post.setdefault("crops", [])
    model, processor = build_mmib(args.towers)
    rows += vision_rows(model, processor, post, args)
    rows += text_rows(model, processor, text_posts, args)
    peaks_after = {dtype: matmul_peak(DTYPES[dtype]) for dtype in DTYPES}
    add_fractions_of_peak(rows, {dtype: max(peaks[dtype], peaks_after[dtype]) for dtype in DTYPES})
    columns = {
        "stage": "stage",
        "dtype": "dtype",
        "gflop": "GFLOP",
        "seconds": "s",
        "gflop_per_s": "GFLOP/s",
        "fraction_of_peak": "of peak",
        "of_bare": "of bare",
        "note": "note",
    }
    print("| " + " | ".join(columns.values()) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join("-" if row[key] is None else str(row[key]) for key in columns) + " |")
    for row in rows:
        if "top_operators" in row:
            operators = ", ".join(f"{name} {share:.0%}" for name, share in row["top_operators"])
            print(f"{row['stage']} ({row['dtype']}): {operators}")
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
