"""Seconds per image of object extraction (`MMIBObjectExtractor`) on this CPU, with detectors of the real sizes.

No weights are downloaded: the detectors are built from their default config classes with random weights, which
have the real architectures and so the real FLOPs:

- Grounding DINO tiny (`GroundingDinoConfig()`: Swin-T backbone, BERT-base text encoder, 900 queries), queried
  with the post's content words through the real BERT uncased vocabulary (the bundled MiniLM tokenizer);
- DETR ResNet-50 (`DetrConfig` with transformers' `ResNetConfig()`, i.e. ResNet-50, 100 queries).

Both use their default image processors (shortest edge 800, longest 1333). Images are the Twitter-2015 sample
images of `../shared/data`, each with its post's words. The score threshold is 0 so that post-processing, NMS and
cropping run on every box (the worst case). Random weights put the boxes anywhere; only the time is meaningful.
`--detector_size tiny` builds tiny random detectors of the same two families instead (small images, a few layers):
a smoke run of the script, whose times mean nothing.

    python benchmarks/bench_object_extraction.py --images 3 --output_json benchmarks/object_extraction.json
"""

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    DetrConfig,
    DetrForObjectDetection,
    DetrImageProcessor,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
    ResNetConfig,
    SwinConfig,
)

from bench_common import load_posts, machine_note, median, minilm_path, quiet_logging
from mmib.data.registry import default_data_dir
from mmib.image_loading_mmib import load_image
from mmib.object_extraction_mmib import MMIBObjectExtractor

# The image processors' resize of the tiny detectors (the real ones keep their defaults: 800 / 1333).
TINY_IMAGE_SIZE = {"shortest_edge": 48, "longest_edge": 64}


def cpu_flags() -> dict[str, bool]:
    """The matrix-instruction flags of /proc/cpuinfo that decide CPU inference speed."""
    flags = set()
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {name: name in flags for name in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")}


def grounding_dino_tiny(size: str = "real") -> MMIBObjectExtractor:
    """Grounding DINO tiny with random weights (`size="tiny"`: a few-layer one of the same family)."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    if size == "real":
        config, image_processor = GroundingDinoConfig(), GroundingDinoImageProcessor()
    else:
        config = GroundingDinoConfig(
            backbone_config=SwinConfig(
                image_size=64,
                patch_size=4,
                embed_dim=8,
                depths=[1, 1, 1, 1],
                num_heads=[1, 1, 1, 1],
                window_size=2,
                out_features=["stage2", "stage3", "stage4"],
            ),
            text_config=BertConfig(
                vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2
            ),
            d_model=32,
            encoder_layers=1,
            decoder_layers=2,  # the box heads of layers 1.. are tied to layer 0's: one layer has none to tie
            encoder_ffn_dim=16,
            decoder_ffn_dim=16,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            num_queries=20,
            num_feature_levels=3,
            encoder_n_points=2,
            decoder_n_points=2,
        )
        image_processor = GroundingDinoImageProcessor(size=TINY_IMAGE_SIZE)
    model = GroundingDinoForObjectDetection(config)
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    name = f"random {'tiny ' if size == 'tiny' else ''}GroundingDinoConfig"
    return MMIBObjectExtractor(model, processor, detector=name, threshold=0.0, min_size=1)


def detr_config(size: str = "real") -> DetrConfig:
    """DETR with a ResNet-50 backbone (`size="tiny"`: a tiny ResNet and a one-layer transformer)."""
    if size == "real":
        backbone = ResNetConfig(out_features=["stage4"])
        return DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone)
    backbone = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], out_features=["stage4"]
    )
    return DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=backbone,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=6,
    )


def detr_image_processor(size: str = "real") -> DetrImageProcessor:
    return DetrImageProcessor() if size == "real" else DetrImageProcessor(size=TINY_IMAGE_SIZE)


def detr_resnet50(size: str = "real") -> MMIBObjectExtractor:
    torch.manual_seed(0)
    model = DetrForObjectDetection(detr_config(size))
    name = f"random {'tiny DETR' if size == 'tiny' else 'DETR-R50'} config"
    return MMIBObjectExtractor(model, detr_image_processor(size), detector=name, threshold=0.0, min_size=1)


def time_extractor(extractor: MMIBObjectExtractor, rows: list[dict], repeats: int) -> dict:
    """Seconds per image (median over `repeats` passes; the memory cache is cleared before each pass)."""
    images = [load_image(row["image"], pad=False) for row in rows]
    words = [row["words"] for row in rows]
    extractor(images[:1], words=words[:1])  # warm-up: first-call allocations and oneDNN kernel selection
    passes = []
    for _ in range(repeats):
        extractor.cache.clear()
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
    parser.add_argument("--data_dir", help="Twitter-2015 folder (default: the shared data folder).")
    parser.add_argument("--images", type=int, default=4, help="Sample images per pass.")
    parser.add_argument("--repeats", type=int, default=2, help="Timed passes per detector.")
    parser.add_argument(
        "--detector_size",
        choices=["real", "tiny"],
        default="real",
        help="`tiny`: tiny random detectors of the same families, a smoke run (times mean nothing).",
    )
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args()
    args.data_dir = str(args.data_dir or default_data_dir("twitter2015"))
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
        extractor = build(args.detector_size)
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
