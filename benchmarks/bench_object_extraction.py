"""Seconds per image of object extraction (`MMIBObjectExtractor`) on this CPU, with detectors of the real sizes.

No weights are downloaded: the detectors are built from their default config classes with random weights, which
have the real architectures and so the real FLOPs:

- Grounding DINO tiny (`GroundingDinoConfig()`: Swin-T backbone, BERT-base text encoder, 900 queries), queried
  with the post's content words through the real BERT uncased vocabulary (the bundled MiniLM tokenizer);
- DETR ResNet-50 (`DetrConfig` with transformers' `ResNetConfig()`, i.e. ResNet-50, 100 queries).

Both use their default image processors (shortest edge 800, longest 1333). Images are the Twitter-2015 sample
images of `../shared/data`, each with its post's words. The score threshold is 0 so that post-processing, NMS and
cropping run on every box (the worst case). Random weights put the boxes anywhere; only the time is meaningful.

    python benchmarks/bench_object_extraction.py --images 3 --output_json benchmarks/object_extraction.json
"""

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    DetrConfig,
    DetrForObjectDetection,
    DetrImageProcessor,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
    ResNetConfig,
)

from bench_common import DEFAULT_DATA_DIR, load_posts, machine_note, median, minilm_path, quiet_logging
from mmib.image_loading_mmib import load_image
from mmib.object_extraction_mmib import MMIBObjectExtractor


def cpu_flags() -> dict[str, bool]:
    """The matrix-instruction flags of /proc/cpuinfo that decide CPU inference speed."""
    flags = set()
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {name: name in flags for name in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")}


def grounding_dino_tiny() -> MMIBObjectExtractor:
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig())
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(), tokenizer=AutoTokenizer.from_pretrained(minilm_path())
    )
    return MMIBObjectExtractor(model, processor, detector="random GroundingDinoConfig()", threshold=0.0, min_size=1)


def detr_resnet50() -> MMIBObjectExtractor:
    torch.manual_seed(0)
    config = DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=ResNetConfig(out_features=["stage4"]),
    )
    model = DetrForObjectDetection(config)
    processor = DetrImageProcessor()
    return MMIBObjectExtractor(model, processor, detector="random DETR-R50 config", threshold=0.0, min_size=1)


def time_extractor(extractor: MMIBObjectExtractor, rows: list[dict], repeats: int) -> dict:
    """Seconds per image (median over `repeats` passes; the memory cache is cleared before each pass)."""
    images = [load_image(row["image"], pad=False) for row in rows]
    words = [row["words"] for row in rows]
    extractor(images[:1], words=words[:1])  # warm-up: first-call allocations and oneDNN kernel selection
    passes = []
    for _ in range(repeats):
        extractor._cache.clear()
        start = time.perf_counter()
        extractor(images, words=words)
        passes.append((time.perf_counter() - start) / len(images))
        print(f"  pass {len(passes)}: {passes[-1]:.2f} s / image", flush=True)
    parameters = sum(parameter.numel() for parameter in extractor.model.parameters())
    return {
        "parameters_millions": round(parameters / 1e6, 1),
        "seconds_per_image": round(median(passes), 3),
        "passes": [round(value, 3) for value in passes],
        "image_sizes": [image.size for image in images],
        "queries_per_image": [len(extractor.queries_for(post)) for post in words],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Twitter-2015's sample folder holds images (Twitter-2017's holds none).
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA_DIR.parent / "twitter2015"))
    parser.add_argument("--images", type=int, default=4, help="Sample images per pass.")
    parser.add_argument("--repeats", type=int, default=2, help="Timed passes per detector.")
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args()
    quiet_logging()
    machine_before = {**machine_note(), **cpu_flags()}
    rows = []
    for split in ("train", "validation", "test"):
        rows += [row for row in load_posts(args.data_dir, split)[0] if row["image"] is not None]
    rows = rows[: args.images]
    if not rows:
        raise SystemExit(f"No sample image found under {args.data_dir}.")
    results = {}
    for name, build in (("detr-resnet-50", detr_resnet50), ("grounding-dino-tiny", grounding_dino_tiny)):
        print(f"{name}: building and timing on {len(rows)} images", flush=True)
        extractor = build()
        results[name] = time_extractor(extractor, rows, args.repeats)
        del extractor
        print(name, results[name], flush=True)
    report = {"machine_before": machine_before, "machine_after": machine_note(), "args": vars(args), **results}
    report["args"]["data_dir"] = Path(args.data_dir).name
    print(f"{'detector':<22}{'params (M)':>12}{'s / image':>12}")
    for name, result in results.items():
        print(f"{name:<22}{result['parameters_millions']:>12}{result['seconds_per_image']:>12}")
    print(machine_before)
    print("load average after:", report["machine_after"]["load_average_1_5_15min"])
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
