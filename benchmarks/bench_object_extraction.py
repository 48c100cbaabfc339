"""Seconds per image of object extraction (`MMIBObjectExtractor`, defaults) beside the bare forward of its detector.

For each detector family (`real_size_detectors.py`: random weights of the real configs, nothing downloaded), on the
Twitter-2015 sample images closest to 600 x 800 pixels, each with its post's words, side by side in one run:

- bare forward: the detector's own processor and forward on one image at a time, in fp32 and with bf16 weights
  (no post-processing, no selection, no crops);
- the extractor with its defaults (`dtype="auto"`: bf16 weights where the CPU multiplies bf16 natively; images of
  one size batched, never padded to another's), on the same PIL images in one call, post-processing and crops
  included; with `--one_per_forward`, also with `batch_size=1`.

The ratio extractor / fastest bare forward is the extractor's overhead (target: at most 1.2). The bf16 boxes' largest
distance from the fp32 ones (raw `pred_boxes` in image pixels) is printed too; with random weights it says how far
bf16 rounding moves a box, not how good the boxes are.

    python benchmarks/bench_object_extraction.py --images 3 --output_json benchmarks/object_extraction.json
"""

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch
from real_size_detectors import DETECTORS, build_detector

from bench_common import machine_note, median, quiet_logging
from mmib.checkpoints_mmib import native_bf16
from mmib.data import load_twitter_ner
from mmib.data.registry import default_data_dir
from mmib.image_loading_mmib import load_image
from mmib.object_extraction_mmib import MMIBObjectExtractor
from mmib.object_settings_mmib import ObjectExtractionSettings


def sample_posts(data_dir: str, count: int) -> list[dict]:
    """The `count` posts whose images are closest to 600 x 800 pixels in area, with their opened images."""
    data = load_twitter_ner(data_dir)
    rows = [row for split in data.values() for row in split.to_list() if row["image"] is not None]
    for row in rows:
        row["picture"] = load_image(row["image"], pad=False)
    rows.sort(key=lambda row: (abs(row["picture"].width * row["picture"].height - 600 * 800), row["image"]))
    if not rows:
        raise SystemExit(f"No sample image found under {data_dir}.")
    return rows[:count]


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def bare_forward(extractor: MMIBObjectExtractor, model: torch.nn.Module, images, queries) -> tuple[float, list]:
    """Seconds per image of the processor + forward, one image at a time; the raw boxes (fp32, image pixels)."""
    boxes = []
    start = time.perf_counter()
    with torch.inference_mode():
        for image, image_queries in zip(images, queries):
            inputs = extractor.adapter.inputs([image], [image_queries])
            dtype = next(model.parameters()).dtype
            inputs = {key: value.to(dtype) if value.is_floating_point() else value for key, value in inputs.items()}
            outputs = model(**inputs)
            scale = torch.tensor([image.width, image.height, image.width, image.height])
            boxes.append(outputs.pred_boxes[0].float() * scale)
    return (time.perf_counter() - start) / len(images), boxes


def time_family(name: str, rows: list[dict], args: argparse.Namespace) -> dict:
    model32, processor = build_detector(name)
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    settings = ObjectExtractionSettings(detector=f"random {name}", input_size=args.input_size)
    extractor = MMIBObjectExtractor(copy.deepcopy(model32), processor, settings)
    one_per_forward = None
    if args.one_per_forward:
        one_per_forward = MMIBObjectExtractor(extractor.model, processor, settings.replace(batch_size=1))
    images = [row["picture"] for row in rows]
    words = [row["words"] for row in rows]
    queries = [extractor.queries_for(post) for post in words]
    timings: dict[str, list[float]] = {"bare_fp32": [], "bare_bf16": [], "extractor": []}
    if one_per_forward is not None:
        timings["extractor_batch_size_1"] = []
    # Warm-up on one image (first-call allocations, oneDNN kernel selection), not counted.
    bare_forward(extractor, model32, images[:1], queries[:1])
    bare_forward(extractor, model16, images[:1], queries[:1])
    for runner in (extractor, one_per_forward):
        if runner is not None:
            runner(images[:1], words=words[:1])
    box_distance = 0.0
    for round_index in range(args.repeats):
        seconds32, boxes32 = bare_forward(extractor, model32, images, queries)
        seconds16, boxes16 = bare_forward(extractor, model16, images, queries)
        box_distance = max(float((a - b).abs().max()) for a, b in zip(boxes32, boxes16))
        passes = {"bare_fp32": seconds32, "bare_bf16": seconds16}
        for key, runner in (("extractor", extractor), ("extractor_batch_size_1", one_per_forward)):
            if runner is None:
                continue
            runner.cache.clear()
            start = time.perf_counter()
            runner(images, words=words)
            passes[key] = (time.perf_counter() - start) / len(images)
        for key, value in passes.items():
            timings[key].append(value)
        print(
            f"  {name} round {round_index + 1}: " + ", ".join(f"{key} {value:.2f} s" for key, value in passes.items())
        )
    result = {key: round(median(values), 3) for key, values in timings.items()}
    inputs = [extractor.adapter.inputs([image], [image_queries]) for image, image_queries in zip(images, queries)]
    result.update(
        parameters_millions=round(sum(p.numel() for p in model32.parameters()) / 1e6, 1),
        extractor_dtype=str(extractor.dtype).removeprefix("torch."),
        input_sizes=[list(item["pixel_values"].shape[-2:]) for item in inputs],
        queries_per_image=[len(image_queries) for image_queries in queries],
        extractor_over_fastest_bare=round(result["extractor"] / min(result["bare_fp32"], result["bare_bf16"]), 2),
        bf16_box_distance_px=round(box_distance, 2),
        load_average_after=load_average(),
    )
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="Twitter-2015 folder (default: the shared data).")
    parser.add_argument("--families", nargs="+", default=list(DETECTORS), choices=list(DETECTORS))
    parser.add_argument("--images", type=int, default=3, help="Sample images per pass.")
    parser.add_argument("--repeats", type=int, default=1, help="Timed passes after a warm-up image.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--input_size", type=int, nargs=2, default=None, help="The extractor's input_size (smoke runs: small)."
    )
    parser.add_argument("--one_per_forward", action="store_true", help="Also time the extractor at batch_size 1.")
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_logging()
    machine = {**machine_note(), "native_bf16": native_bf16(torch.device("cpu")), "threads": args.threads}
    rows = sample_posts(args.data_dir or str(default_data_dir("twitter2015")), args.images)
    print(f"images (width x height): {[row['picture'].size for row in rows]}; load before: {load_average()}")
    results = {}
    report = {"machine": machine, "args": {**vars(args), "data_dir": "twitter2015"}, "results": results}
    report["images"] = [list(row["picture"].size) for row in rows]
    for name in args.families:
        results[name] = time_family(name, rows, args)
        print(name, results[name], flush=True)
        if args.output_json:
            Path(args.output_json).write_text(json.dumps(report, indent=2))
    headers = ["detector", "params M", "input (h x w)", "bare fp32", "bare bf16", "extractor", "ext / best bare"]
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for name, result in results.items():
        sizes = ", ".join(f"{h}x{w}" for h, w in result["input_sizes"])
        print(
            f"| {name} | {result['parameters_millions']} | {sizes} | {result['bare_fp32']} | {result['bare_bf16']} | "
            f"{result['extractor']} ({result['extractor_dtype']}) | {result['extractor_over_fastest_bare']} |"
        )
    print(f"s / image, {args.threads} threads; load average before/after: {machine['load_average_1_5_15min']} / "
          f"{load_average()}")  # fmt: skip
    return report


if __name__ == "__main__":
    main()
