"""`mmib` command line: train MMIB, apply trained checkpoints to posts, and run the paper's analyses. `COMMANDS` is
the table of subcommands; each row adds its arguments and runs, importing what it needs only then (so `mmib predict
--help` does not load the training stack). A new command is one row.

mmib train configs/demo.yaml --seed 1 --output_dir runs/demo       # `mmib train --help` lists every training flag
mmib predict runs/demo-twitter2017 --text "Kawhi Leonard wins the fan vote in Toronto" --image post.jpg
mmib predict runs/demo-twitter2017 --input posts.jsonl --output predictions.jsonl [--relation_model runs/mnre]
mmib predict runs/mnre --words Messi joins PSG --head 0 1 --tail 2 3 --image post.jpg --crops a.png b.png
accelerate launch --multi_gpu --num_processes 2 -m mmib.cli predict MODEL --input posts.jsonl --output out.jsonl
mmib predict-ray runs/demo-twitter2017 --input posts/ --output out/ --concurrency 2 [--detection_stage]
mmib ablate configs/image_decides_ner.yaml --seeds 1 2 3 --output_dir runs/ablation [mmib train flags]
mmib sweep configs/image_decides_ner.yaml --beta_text 0 0.1 1 --beta_vision 0 0.1 1 --output_dir runs/sweep
mmib export-onnx runs/demo-twitter2017 [--int8] [--measure_posts posts.jsonl]   # then predict --backend onnxruntime
mmib explain runs/model --input posts.jsonl --output_dir runs/explain
mmib extract-objects ../shared/data/twitter2017 --detector IDEA-Research/grounding-dino-tiny --output_dir crops/t17
mmib modality-gap runs/no_ar runs/full --data configs/image_decides_ner.yaml --split test --output_dir runs/gap
"""

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .integrations import ray_command
from .predictor_arguments import (
    add_object_detector_arguments,
    add_predictor_arguments,
    object_detector,
    predictor_kwargs,
)

TRAINING_EPILOG = "Other arguments are passed to every `mmib train` run (e.g. --text_model_name_or_path DIR)."


@dataclass(frozen=True)
class Command:
    """
    One `mmib` subcommand.

    Args:
        help (`str`): the line `mmib --help` shows.
        run (`Callable[[argparse.Namespace | None, list[str]], None]`): runs the command with its parsed arguments
            and the arguments left over (the unknown flags of a `passes_training_flags` command; the whole argument
            list of a command without `add_arguments`, whose arguments are then `None`).
        add_arguments (`Callable[[argparse.ArgumentParser], None]`, *optional*): adds the command's arguments;
            `None` hands the raw arguments to `run` (a command with its own parser, like `train`).
        passes_training_flags (`bool`): unknown flags are `mmib train` flags for every run, not an error.
    """

    help: str
    run: Callable[[argparse.Namespace | None, list[str]], None]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    passes_training_flags: bool = False


def _train(_: None, argv: list[str]) -> None:
    from .training.run import main as train

    # The training run's HfArgumentParser owns its flags and its --help.
    train(argv, prog="mmib train")


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="Folder or Hub id of an MMIB checkpoint (model + processor).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="JSON-lines posts, one object per line ('-' = stdin).")
    source.add_argument("--text", help="One raw post, split into words by the tweet word splitter.")
    source.add_argument("--words", nargs="+", help="One post's words.")
    parser.add_argument("--output", default="-", help="JSON-lines results for --input ('-' = stdout, the default).")
    parser.add_argument("--image", help="One post: its image file (omit for a text-only post).")
    parser.add_argument("--crops", nargs="*", default=[], help="One post: object crop files of the image.")
    parser.add_argument("--head", nargs=2, type=int, metavar=("START", "END"), help="One post, RE: head word span.")
    parser.add_argument("--tail", nargs=2, type=int, metavar=("START", "END"), help="One post, RE: tail word span.")
    add_predictor_arguments(parser)
    parser.add_argument(
        "--num_workers",
        type=int,
        help="Data loader processes decoding posts/images (default: as many as there are cores the model's "
        "threads leave free, at most 2; none on a 2-core CPU).",
    )
    parser.add_argument("--quiet", action="store_true", help="No progress bar and no dtype/summary lines.")
    parser.add_argument("--strict", action="store_true", help="Exit non-zero at the first row with an error.")


def _single_post(args: argparse.Namespace) -> dict:
    post = {"text": args.text} if args.text is not None else {"words": args.words}
    post.update(image=args.image, crops=args.crops)
    if args.head is not None:
        post["head"] = args.head
    if args.tail is not None:
        post["tail"] = args.tail
    return post


def _predict(args: argparse.Namespace, _: list[str]) -> None:
    from .batch_prediction import StrictModeError, predict_file
    from .predictor_mmib import MMIBPredictor

    # Data loader workers are forked after the tokenizer has run; its own thread pool must stay off in them.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Under `accelerate launch` only the main process reports.
    silent = args.quiet or int(os.environ.get("RANK", "0")) != 0
    log = (lambda message: None) if silent else (lambda message: print(f"mmib: {message}", file=sys.stderr))
    predictor = MMIBPredictor.from_pretrained(args.model, **predictor_kwargs(args))
    num_workers = args.num_workers
    # Loaded before the data loader forks, so that its workers share the detector; a CUDA detector cannot run in
    # forked workers.
    if predictor.object_extractor is not None and predictor.device.type == "cuda":
        num_workers = 0
    log(
        f"device {predictor.device}, dtype {str(predictor.dtype).removeprefix('torch.')} ({predictor.dtype_reason}), "
        f"backend {predictor.backend} ({predictor.backend_reason})"
    )
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


def _export_onnx_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="A local MMIB checkpoint folder (NER or RE).")
    parser.add_argument("--output", metavar="DIR", help="The export folder (default: MODEL/onnx).")
    parser.add_argument("--int8", action="store_true", help="Also write the dynamic int8 graph (--dtype int8).")
    parser.add_argument(
        "--measure_posts",
        metavar="FILE",
        help="JSON-lines posts: time every path --backend auto chooses from and compare its tags with fp32 here; "
        "the result is recorded in the export (without it, auto keeps torch).",
    )
    parser.add_argument("--batch_size", type=int, default=32, help="Posts per forward in the measurement.")
    parser.add_argument(
        "--measure_threads",
        type=int,
        nargs="+",
        metavar="N",
        help="Thread counts to measure at (default: 1 and this run's count); auto reads the count it runs with.",
    )


def _export_onnx(args: argparse.Namespace, _: list[str]) -> None:
    from .onnx_export import export_onnx
    from .post_files import read_posts

    posts = None
    if args.measure_posts is not None:
        posts = [
            {"id": post.id, "words": post.words, "image": post.image, "crops": post.crops}
            | ({"head": post.head, "tail": post.tail} if post.head is not None else {})
            for post in read_posts(args.measure_posts, decode_images=False)
        ]
    manifest = export_onnx(
        args.model,
        args.output,
        int8=args.int8,
        measure_posts=posts,
        batch_size=args.batch_size,
        measure_threads=args.measure_threads,
    )
    print(json.dumps(manifest, indent=2))


def _ablate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="An `mmib train` config file (YAML / JSON).")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="Training seeds (default 1 2 3).")
    parser.add_argument("--output_dir", required=True, help="Tables and one folder per run; finished runs are kept.")


def _ablate(args: argparse.Namespace, training_flags: list[str]) -> None:
    from .analysis.ablation import run_ablation

    run_ablation(args.config, args.seeds, args.output_dir, training_flags)
    print((Path(args.output_dir) / "ablation.md").read_text(encoding="utf-8"))


def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="An `mmib train` config file (YAML / JSON).")
    parser.add_argument("--beta_text", nargs="+", type=float, help="β_T values (default: the paper's 0 .. 2).")
    parser.add_argument("--beta_vision", nargs="+", type=float, help="β_V values (default: the paper's 0 .. 2).")
    parser.add_argument("--both", nargs="+", type=float, help="Values of β_T = β_V (default: all values above).")
    parser.add_argument("--fixed", type=float, default=1.0, help="The β held fixed in the first two series (1.0).")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1], help="Training seeds per point (default 1).")
    parser.add_argument("--output_dir", required=True, help="CSV, plot and one folder per run.")


def _sweep(args: argparse.Namespace, training_flags: list[str]) -> None:
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


def _explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="An MMIB NER checkpoint folder.")
    parser.add_argument("--input", required=True, help="JSON-lines posts, as for `mmib predict --input`.")
    parser.add_argument("--output_dir", required=True)
    add_object_detector_arguments(parser)


def _explain(args: argparse.Namespace, _: list[str]) -> None:
    from .analysis.contribution import explain_posts

    records = explain_posts(
        args.model,
        args.input,
        args.output_dir,
        object_detector=object_detector(args),
        detector_trust_remote_code=args.detector_trust_remote_code,
    )
    print(f"{len(records)} posts explained in {args.output_dir}")


def _modality_gap_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", help="One or more MMIB NER checkpoints (e.g. without, then with L_ar).")
    parser.add_argument("--data", required=True, help="Labelled JSON-lines posts, or an `mmib train` config file.")
    parser.add_argument("--split", default="test", help="Split of a config's dataset (default test).")
    parser.add_argument("--labels", nargs="+", help="A panel title per checkpoint (default: folder names).")
    parser.add_argument("--max_pairs", type=int, default=150, help="Entity-object pairs drawn (paper: 150).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the pair sample and of t-SNE.")
    parser.add_argument("--output_dir", required=True)


def _modality_gap(args: argparse.Namespace, _: list[str]) -> None:
    from .analysis.modality_gap import run_modality_gap

    results = run_modality_gap(
        args.models, args.data, args.output_dir, args.split, args.labels, args.max_pairs, args.seed
    )
    print(json.dumps(results, indent=2))


def _extract_objects_arguments(extract: argparse.ArgumentParser) -> None:
    from .crop_extraction import DATASETS
    from .object_settings_mmib import add_arguments

    extract.description = (
        "Writes the crops and crop dictionaries the readers read (docs/data-layout.md, 'Making crops')."
    )
    extract.add_argument("source", help="A JSON-lines file, or a twitter2015 / twitter2017 / mnre benchmark folder.")
    extract.add_argument("--output_dir", required=True, help="Crops, dictionaries, records and the report go here.")
    extract.add_argument("--dataset", choices=DATASETS, help="Default: jsonl for a file, else the folder's name.")
    extract.add_argument("--image_dir", help="Image folder, if not the benchmark's default (JSON lines: the root).")
    # The detector's flags: one per field of ObjectExtractionSettings, with its name and default.
    add_arguments(extract, required=("detector",))
    extract.add_argument("--quiet", action="store_true", help="No progress bar.")


def _extract_objects(args: argparse.Namespace, _: list[str]) -> None:
    import torch
    from accelerate import PartialState

    from .crop_extraction import extract_objects
    from .object_extraction_mmib import MMIBObjectExtractor
    from .object_settings_mmib import ObjectExtractionSettings

    settings = ObjectExtractionSettings.from_namespace(args)
    # Without `cpu=True` accelerate sees no GPU and runs every launched process alone on the whole input.
    on_cpu = not torch.cuda.is_available() or (settings.device or "").startswith("cpu")
    state = PartialState(cpu=on_cpu)
    extractor = MMIBObjectExtractor.from_settings(
        settings.replace(
            device=settings.device or str(state.device),
            cache_dir=settings.cache_dir or str(Path(args.output_dir) / "cache"),
        )
    )
    report = extract_objects(
        extractor, args.source, args.output_dir, args.dataset, args.image_dir, show_progress=not args.quiet
    )
    if state.is_main_process:
        print(json.dumps(asdict(report), indent=2, ensure_ascii=False))


COMMANDS: dict[str, Command] = {
    "train": Command("Train and evaluate a model (see `mmib train --help`).", _train),
    "predict": Command(
        "Tag posts (NER, optionally NER -> RE) or classify relations (RE); writes JSON.", _predict, _predict_arguments
    ),
    "predict-ray": Command(
        "`mmib predict` on Ray Data (docs/scale.md): .jsonl / .parquet posts in, a folder of rows out.",
        ray_command.run,
        ray_command.add_arguments,
    ),
    "export-onnx": Command(
        "Write the text side of a checkpoint as an ONNX graph for `mmib predict --backend onnxruntime`.",
        _export_onnx,
        _export_onnx_arguments,
    ),
    "ablate": Command(
        "Train the full model and every ablation with the same seeds; write ablation.csv and ablation.md.",
        _ablate,
        _ablate_arguments,
        passes_training_flags=True,
    ),
    "sweep": Command(
        "The paper's Fig. 4: β_T varied, β_V varied, both varied; write beta_sweep.csv and a plot.",
        _sweep,
        _sweep_arguments,
        passes_training_flags=True,
    ),
    "explain": Command(
        "Contribution scores (row sums of X·Zᵀ) per word, image and crop: JSON and a PNG per post.",
        _explain,
        _explain_arguments,
    ),
    "modality-gap": Command(
        "t-SNE of entity and object representations and the modality-gap number.",
        _modality_gap,
        _modality_gap_arguments,
    ),
    "extract-objects": Command(
        "Make object crops for a JSON-lines split or a benchmark folder (resumable; splits under accelerate).",
        _extract_objects,
        _extract_objects_arguments,
    ),
}


def _parser() -> argparse.ArgumentParser:
    """The `mmib` parser built from `COMMANDS` (commands with their own parser are listed for --help only)."""
    parser = argparse.ArgumentParser(prog="mmib", description="MMIB multimodal NER and relation extraction.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        if command.add_arguments is None:
            subparsers.add_parser(name, help=command.help, add_help=False)
            continue
        # No abbreviations: a training flag (--seed) must not be taken for a prefix of a command's own (--seeds).
        subparser = subparsers.add_parser(
            name,
            help=command.help,
            allow_abbrev=False,
            epilog=TRAINING_EPILOG if command.passes_training_flags else None,
        )
        command.add_arguments(subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Runs `mmib <command> ...` (`argv` defaults to the process's arguments)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = COMMANDS.get(argv[0]) if argv else None
    if command is not None and command.add_arguments is None:
        command.run(None, argv[1:])
        return
    args, rest = _parser().parse_known_args(argv)
    command = COMMANDS[args.command]
    if rest and not command.passes_training_flags:
        raise SystemExit(f"mmib {args.command}: unrecognized arguments: {' '.join(rest)}")
    command.run(args, rest)


if __name__ == "__main__":
    main()
