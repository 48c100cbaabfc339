"""
The predictor's command-line options, shared by the prediction commands (`mmib predict`, `mmib predict-ray`): one
list of flags and one mapping of them onto `MMIBPredictor.from_pretrained`, so that the commands cannot drift
apart. The object-detector flags also serve `mmib explain`.
"""

import argparse
from typing import Any

__all__ = ["add_object_detector_arguments", "add_predictor_arguments", "object_detector", "predictor_kwargs"]


def add_object_detector_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Flags choosing how posts with an image and no crops get their crops (docs/objects.md)."""
    detector = parser.add_mutually_exclusive_group()
    detector.add_argument(
        "--object_detector",
        metavar="ID_OR_PATH",
        help="Detector cutting the crops of posts with an image and no crops (default: the checkpoint's own).",
    )
    detector.add_argument(
        "--no_object_detector", action="store_true", help="No object extraction, even if the checkpoint records one."
    )
    parser.add_argument(
        "--detector_trust_remote_code", action="store_true", help="Let the detector run its own code from its repo."
    )


def object_detector(args: argparse.Namespace) -> str | bool | None:
    """The `object_detector` argument of the predictor: `False` for --no_object_detector."""
    return False if args.no_object_detector else args.object_detector


def add_predictor_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of [`MMIBPredictor.from_pretrained`] besides the checkpoint, as one group of flags."""
    group = parser.add_argument_group(
        "predictor", "How the checkpoint predicts (the same in every prediction command)."
    )
    group.add_argument(
        "--relation_model",
        help="RE checkpoint run on the ordered pairs of predicted entities whose types match a type signature it "
        "records (every pair if it records none).",
    )
    group.add_argument(
        "--all_pairs",
        action="store_true",
        help="NER -> RE: classify every ordered pair, also those of types no relation signature allows.",
    )
    group.add_argument("--max_pairs_per_post", type=int, default=240, help="Entity pairs classified per post.")
    group.add_argument("--keep_none", action="store_true", help="Keep relations labelled None.")
    group.add_argument("--batch_size", type=int, default=32, help="Posts per forward pass (predict-ray: per batch).")
    group.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "int8"],
        help="Compute precision: auto = bfloat16 where the hardware has it natively, else float32; int8 = dynamic "
        "int8 text and fusion layers (CPU only, opt-in: its cost in F1 is in docs/prediction.md).",
    )
    group.add_argument("--device", help="cuda, cuda:1, cpu, ... (default: cuda when present).")
    group.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnxruntime"],
        help="onnxruntime = the text side as exported by `mmib export-onnx` (CPU; float32 or int8); auto = the path "
        "the export measured fastest among those keeping >= 98%% of posts as fp32, else torch (docs/prediction.md).",
    )
    group.add_argument("--onnx_dir", metavar="DIR", help="The export of MODEL (default: MODEL/onnx).")
    group.add_argument(
        "--image_feature_cache",
        metavar="DIR",
        help="Feature cache (ImageFeatureStore) built with this model's tower: images found in it by content skip it.",
    )
    add_object_detector_arguments(group)


def predictor_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The [`MMIBPredictor.from_pretrained`] arguments (besides the checkpoint) that [`add_predictor_arguments`]'s
    flags give."""
    return {
        "relation_model": args.relation_model,
        "dtype": args.dtype,
        "device": args.device,
        "batch_size": args.batch_size,
        "max_pairs_per_post": args.max_pairs_per_post,
        "keep_none": args.keep_none,
        "all_pairs": args.all_pairs,
        "image_feature_cache": args.image_feature_cache,
        "object_detector": object_detector(args),
        "detector_trust_remote_code": args.detector_trust_remote_code,
        "backend": args.backend,
        "onnx_dir": args.onnx_dir,
    }
