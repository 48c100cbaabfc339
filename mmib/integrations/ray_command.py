"""
`mmib predict-ray`: `mmib predict` on Ray Data for users who do not write Python (see `mmib.integrations.ray`).
Ray is imported only when the command runs, so that `mmib --help` works without it.

mmib predict-ray runs/ner --input posts.jsonl --output out/ [--output_format parquet] [--detection_stage]
"""

import argparse

from ..predictor_arguments import add_predictor_arguments, predictor_kwargs

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `mmib predict-ray`."""
    parser.add_argument("model", help="Folder or Hub id of an MMIB checkpoint (model + processor).")
    parser.add_argument("--input", required=True, help="Posts: a .jsonl / .parquet file or folder, any Ray path.")
    parser.add_argument("--output", required=True, help="Folder the result files are written to.")
    parser.add_argument("--input_format", choices=["json", "parquet"], help="Default: from the input's extension.")
    parser.add_argument("--output_format", choices=["json", "parquet"], default="json", help="Default: json.")
    parser.add_argument("--address", help="Ray cluster to join (default: the running one, else a local one).")
    parser.add_argument("--concurrency", type=int, default=2, help="MMIB actors (one model each).")
    parser.add_argument("--num_threads", type=int, default=1, help="Torch threads per actor.")
    parser.add_argument("--num_gpus", type=float, default=0.0, help="GPUs per MMIB actor.")
    parser.add_argument("--detection_stage", action="store_true", help="Cut object crops in an actor pool of its own.")
    parser.add_argument("--detector_concurrency", type=int, default=1, help="Detection actors.")
    parser.add_argument("--detector_num_gpus", type=float, default=0.0, help="GPUs per detection actor.")
    # The predictor's own flags, as `mmib predict` has them.
    add_predictor_arguments(parser)


def run(args: argparse.Namespace, _: list[str]) -> None:
    """Runs `mmib predict-ray`."""
    from .ray import run_pipeline

    summary = run_pipeline(
        args.input,
        args.output,
        args.model,
        input_format=args.input_format,
        output_format=args.output_format,
        address=args.address,
        detection_stage=args.detection_stage,
        concurrency=args.concurrency,
        detector_concurrency=args.detector_concurrency,
        num_gpus=args.num_gpus,
        detector_num_gpus=args.detector_num_gpus,
        num_threads=args.num_threads,
        **predictor_kwargs(args),
    )
    print(f"mmib: {summary['posts']} posts, {summary['errors']} errors, written to {args.output}", flush=True)
