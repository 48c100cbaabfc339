"""`mmib` command line: train MMIB, apply trained checkpoints to posts, and run the paper's analyses. Parses arguments
and dispatches.

mmib train configs/demo.yaml --seed 1 --output_dir runs/demo       # `mmib train --help` lists every training flag
mmib predict runs/demo-twitter2017 --text "Kawhi Leonard wins the fan vote in Toronto" --image post.jpg
mmib predict runs/demo-twitter2017 --input posts.jsonl --output predictions.jsonl [--relation_model runs/mnre]
mmib predict runs/mnre --words Messi joins PSG --head 0 1 --tail 2 3 --image post.jpg --crops a.png b.png
accelerate launch --multi_gpu --num_processes 2 -m mmib.cli predict MODEL --input posts.jsonl --output out.jsonl
mmib ablate configs/image_decides_ner.yaml --seeds 1 2 3 --output_dir runs/ablation [mmib train flags]
mmib sweep configs/image_decides_ner.yaml --beta_text 0 0.1 1 --beta_vision 0 0.1 1 --output_dir runs/sweep
mmib explain runs/model --input posts.jsonl --output_dir runs/explain
mmib modality-gap runs/no_ar runs/full --data configs/image_decides_ner.yaml --split test --output_dir runs/gap
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .batch_prediction import StrictModeError, predict_file
from .predictor_mmib import MMIBPredictor


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmib", description="MMIB multimodal NER and relation extraction.")
    commands = parser.add_subparsers(dest="command", required=True)
    # Listed for --help only: main() hands `mmib train ...` to the training run's own HfArgumentParser.
    commands.add_parser("train", help="Train and evaluate a model (see `mmib train --help`).", add_help=False)
    predict = commands.add_parser(
        "predict", help="Tag posts (NER, optionally NER -> RE) or classify relations (RE); writes JSON."
    )
    predict.add_argument("model", help="Folder or Hub id of an MMIB checkpoint (model + processor).")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="JSON-lines posts, one object per line ('-' = stdin).")
    source.add_argument("--text", help="One raw post, split into words by the tweet word splitter.")
    source.add_argument("--words", nargs="+", help="One post's words.")
    predict.add_argument("--output", default="-", help="JSON-lines results for --input ('-' = stdout, the default).")
    predict.add_argument("--image", help="One post: its image file (omit for a text-only post).")
    predict.add_argument("--crops", nargs="*", default=[], help="One post: object crop files of the image.")
    predict.add_argument("--head", nargs=2, type=int, metavar=("START", "END"), help="One post, RE: head word span.")
    predict.add_argument("--tail", nargs=2, type=int, metavar=("START", "END"), help="One post, RE: tail word span.")
    predict.add_argument("--relation_model", help="RE checkpoint run on every ordered pair of predicted entities.")
    predict.add_argument("--max_pairs_per_post", type=int, default=240, help="Entity pairs classified per post.")
    predict.add_argument("--keep_none", action="store_true", help="Keep relations labelled None.")
    predict.add_argument("--batch_size", type=int, default=32, help="Posts per forward pass.")
    predict.add_argument("--num_workers", type=int, default=2, help="Data loader processes decoding posts/images.")
    predict.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="Weights' dtype.")
    predict.add_argument("--device", help="cuda, cuda:1, cpu, ... (default: cuda when present).")
    predict.add_argument("--quiet", action="store_true", help="No progress bar and no dtype/summary lines.")
    predict.add_argument("--strict", action="store_true", help="Exit non-zero at the first row with an error.")
    predict.add_argument(
        "--image_feature_cache",
        metavar="DIR",
        help="Feature cache (ImageFeatureStore) built with this model's tower: images found in it by content skip it.",
    )
    _add_object_detector_arguments(predict)
    _add_analysis_parsers(commands)
    return parser


def _add_object_detector_arguments(parser) -> None:
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


def _object_detector(args) -> str | bool | None:
    return False if args.no_object_detector else args.object_detector


TRAINING_EPILOG = "Other arguments are passed to every `mmib train` run (e.g. --text_model_name_or_path DIR)."


def _add_analysis_parsers(commands) -> None:
    ablate = commands.add_parser(
        "ablate",
        allow_abbrev=False,
        help="Train the full model and every ablation with the same seeds; write ablation.csv and ablation.md.",
        epilog=TRAINING_EPILOG,
    )
    ablate.add_argument("config", help="An `mmib train` config file (YAML / JSON).")
    ablate.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="Training seeds (default 1 2 3).")
    ablate.add_argument("--output_dir", required=True, help="Tables and one folder per run; finished runs are kept.")

    sweep = commands.add_parser(
        "sweep",
        allow_abbrev=False,
        help="The paper's Fig. 4: β_T varied, β_V varied, both varied; write beta_sweep.csv and a plot.",
        epilog=TRAINING_EPILOG,
    )
    sweep.add_argument("config", help="An `mmib train` config file (YAML / JSON).")
    sweep.add_argument("--beta_text", nargs="+", type=float, help="β_T values (default: the paper's 0 .. 2).")
    sweep.add_argument("--beta_vision", nargs="+", type=float, help="β_V values (default: the paper's 0 .. 2).")
    sweep.add_argument("--both", nargs="+", type=float, help="Values of β_T = β_V (default: all values above).")
    sweep.add_argument("--fixed", type=float, default=1.0, help="The β held fixed in the first two series (1.0).")
    sweep.add_argument("--seeds", nargs="+", type=int, default=[1], help="Training seeds per point (default 1).")
    sweep.add_argument("--output_dir", required=True, help="CSV, plot and one folder per run.")

    explain = commands.add_parser(
        "explain",
        allow_abbrev=False,
        help="Contribution scores (row sums of X·Zᵀ) per word, image and crop: JSON and a PNG per post.",
    )
    explain.add_argument("model", help="An MMIB NER checkpoint folder.")
    explain.add_argument("--input", required=True, help="Posts as JSON lines (words, image, crops).")
    explain.add_argument("--output_dir", required=True)
    _add_object_detector_arguments(explain)

    gap = commands.add_parser(
        "modality-gap",
        allow_abbrev=False,
        help="t-SNE of entity and object representations and the modality-gap number.",
    )
    gap.add_argument("models", nargs="+", help="One or more MMIB NER checkpoints (e.g. without, then with L_ar).")
    gap.add_argument("--data", required=True, help="Labelled JSON-lines posts, or an `mmib train` config file.")
    gap.add_argument("--split", default="test", help="Split of a config's dataset (default test).")
    gap.add_argument("--labels", nargs="+", help="A panel title per checkpoint (default: folder names).")
    gap.add_argument("--max_pairs", type=int, default=150, help="Entity-object pairs drawn (paper: 150).")
    gap.add_argument("--seed", type=int, default=0, help="Seed of the pair sample and of t-SNE.")
    gap.add_argument("--output_dir", required=True)


def _single_post(args: argparse.Namespace) -> dict:
    post = {"text": args.text} if args.text is not None else {"words": args.words}
    post.update(image=args.image, crops=args.crops)
    if args.head is not None:
        post["head"] = args.head
    if args.tail is not None:
        post["tail"] = args.tail
    return post


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "train":
        from .training.run import main as train

        train(argv[1:], prog="mmib train")
        return
    args, training_flags = _parser().parse_known_args(argv)
    if training_flags and args.command not in ("ablate", "sweep"):
        raise SystemExit(f"mmib {args.command}: unrecognized arguments: {' '.join(training_flags)}")
    if args.command == "ablate":
        from .analysis.ablation import run_ablation

        run_ablation(args.config, args.seeds, args.output_dir, training_flags)
        print((Path(args.output_dir) / "ablation.md").read_text(encoding="utf-8"))
        return
    if args.command == "sweep":
        from .analysis.beta_sweep import PAPER_BETAS, run_sweep

        run_sweep(
            args.config,
            args.output_dir,
            beta_text=args.beta_text or PAPER_BETAS,
            beta_vision=args.beta_vision or PAPER_BETAS,
            both=args.both,
            fixed=args.fixed,
            seeds=args.seeds,
            extra_args=training_flags,
        )
        print((Path(args.output_dir) / "beta_sweep.csv").read_text(encoding="utf-8"))
        return
    if args.command == "explain":
        from .analysis.contribution import explain_posts

        records = explain_posts(
            args.model,
            args.input,
            args.output_dir,
            object_detector=_object_detector(args),
            detector_trust_remote_code=args.detector_trust_remote_code,
        )
        print(f"{len(records)} posts explained in {args.output_dir}")
        return
    if args.command == "modality-gap":
        from .analysis.modality_gap import run_modality_gap

        results = run_modality_gap(
            args.models, args.data, args.output_dir, args.split, args.labels, args.max_pairs, args.seed
        )
        print(json.dumps(results, indent=2))
        return
    # Data loader workers are forked after the tokenizer has run; its own thread pool must stay off in them.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Under `accelerate launch` only the main process reports.
    silent = args.quiet or int(os.environ.get("RANK", "0")) != 0
    log = (lambda message: None) if silent else (lambda message: print(f"mmib: {message}", file=sys.stderr))
    predictor = MMIBPredictor.from_pretrained(
        args.model,
        relation_model=args.relation_model,
        dtype=args.dtype,
        device=args.device,
        batch_size=args.batch_size,
        max_pairs_per_post=args.max_pairs_per_post,
        keep_none=args.keep_none,
        image_feature_cache=args.image_feature_cache,
        object_detector=_object_detector(args),
        detector_trust_remote_code=args.detector_trust_remote_code,
    )
    num_workers = args.num_workers
    # Loaded before the data loader forks, so that its workers share the detector; a CUDA detector cannot run in
    # forked workers.
    if predictor.object_extractor is not None and predictor.device.type == "cuda":
        num_workers = 0
    log(f"device {predictor.device}, dtype {str(predictor.dtype).removeprefix('torch.')} ({predictor.dtype_reason})")
    if args.input is None:
        result = predictor(_single_post(args))
        print(json.dumps(result, ensure_ascii=False))
        if "error" in result:
            raise SystemExit(1)
        return
    try:
        summary = predict_file(
            predictor, args.input, args.output, args.batch_size, num_workers, args.quiet, args.strict
        )
    except StrictModeError as error:
        print(f"mmib: {error}", file=sys.stderr)
        raise SystemExit(1) from error
    log(str(summary))


if __name__ == "__main__":
    main()
