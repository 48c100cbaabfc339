"""`mmib predict` posts/s with an image per post, without and with object extraction, side by side in one run.

The MMIB model is `bench_common`'s (MiniLM text tower, ResNet-50-shaped vision tower, 4 crop slots, random
weights), saved once without and once with a recorded extractor. The posts are the Twitter-2015 sample posts that
have an image, written as JSON lines with `text` and `image` and no crops; each variant runs `predict_file` (what
`mmib predict --input` runs) in this process with a fresh detection cache, `--num_workers 0`, and is timed without
the loading of the checkpoint and the detector. Variants:

- `no extraction`: `--no_object_detector` (the whole image only, crop slots empty);
- `tiny DETR`: the tests' tiny random DETR (the cost of the extraction step itself: opening, hashing, cropping and
  four more images through the vision tower);
- `DETR-R50`: a random DETR with ResNet-50 (real size and FLOPs, default image processor, shortest edge 800);
  `--detector_size tiny` makes it a tiny one of the same family (a smoke run of the script: times mean nothing).

    OMP_NUM_THREADS=1 python benchmarks/bench_prediction_objects.py --posts 3 \
        --output_json benchmarks/prediction_objects.json
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from real_size_detectors import detr_config, detr_image_processor
from transformers import DetrForObjectDetection

from bench_common import build_model, build_processor, cpu_flags, load_posts, machine_note, quiet_logging
from mmib import MMIBPredictor
from mmib.batch_prediction import predict_file
from mmib.crop_filling_mmib import CropFiller
from mmib.data.registry import default_data_dir
from mmib.object_extraction_mmib import MMIBObjectExtractor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from detector_folders import save_detr  # noqa: E402


def save_detr_r50(folder: Path, size: str = "real") -> str:
    torch.manual_seed(0)
    DetrForObjectDetection(detr_config(size)).save_pretrained(folder)
    detr_image_processor(size).save_pretrained(folder)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", help="Twitter-2015 folder (default: the shared data folder).")
    parser.add_argument("--posts", type=int, default=3)
    parser.add_argument(
        "--detector_size",
        choices=["real", "tiny"],
        default="real",
        help="`tiny`: the DETR-R50 variant becomes a tiny DETR, a smoke run (times mean nothing).",
    )
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args()
    args.data_dir = str(args.data_dir or default_data_dir("twitter2015"))
    quiet_logging()
    machine_before = {**machine_note(), **cpu_flags(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    rows = []
    for split in ("train", "validation", "test"):
        rows += [row for row in load_posts(args.data_dir, split)[0] if row["image"] is not None]
    rows = rows[: args.posts]
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        posts = scratch / "posts.jsonl"
        posts.write_text(
            "".join(
                json.dumps({"id": row["id"], "text": " ".join(row["words"]), "image": row["image"]}) + "\n"
                for row in rows
            )
        )
        processor = build_processor()
        model = build_model(["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"], seed=0)
        r50 = "DETR-R50" if args.detector_size == "real" else "DETR-R50 (tiny)"
        detectors = {"tiny DETR": save_detr(scratch / "tiny"), r50: save_detr_r50(scratch / "r50", args.detector_size)}
        checkpoint = scratch / "mmib"
        model.save_pretrained(checkpoint)
        processor.save_pretrained(checkpoint)
        for name, detector in [("no extraction", False), *detectors.items()]:
            predictor = MMIBPredictor.from_pretrained(
                str(checkpoint), dtype="float32", object_detector=detector, batch_size=8
            )
            if predictor.object_extractor is not None:
                # Every box counts (threshold 0), the worst case for selection and cropping.
                settings = {**predictor.object_extractor.to_dict(), "threshold": 0.0, "min_size": 1}
                extractor = MMIBObjectExtractor.from_dict(settings)
                predictor.crop_filler = CropFiller(predictor.processor.num_crops, extractor=extractor)
            predictor(json.loads(posts.read_text().splitlines()[0]))  # warm-up
            if predictor.object_extractor is not None:
                predictor.object_extractor.cache.clear()
            start = time.perf_counter()
            predict_file(predictor, str(posts), str(scratch / f"{len(results)}.jsonl"), 8, 0, True, False)
            seconds = time.perf_counter() - start
            output = [json.loads(line) for line in (scratch / f"{len(results)}.jsonl").read_text().splitlines()]
            results[name] = {
                "posts": len(output),
                "seconds": round(seconds, 2),
                "posts_per_second": round(len(output) / seconds, 4),
                "objects_per_post": [len(row.get("objects", [])) for row in output],
            }
            print(name, results[name], flush=True)
    base = results["no extraction"]["posts_per_second"]
    print(f"{'variant':<16}{'posts/s':>10}{'s / post':>10}{'x slower':>10}")
    for name, result in results.items():
        rate = result["posts_per_second"]
        print(f"{name:<16}{rate:>10.3f}{1 / rate:>10.2f}{base / rate:>10.1f}")
    report = {"machine_before": machine_before, "machine_after": machine_note(), "args": vars(args), **results}
    report["args"]["data_dir"] = Path(args.data_dir).name
    print(machine_before)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
