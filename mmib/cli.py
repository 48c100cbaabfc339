"""`mmib` command line: run a trained MMIB checkpoint on a post, and the paper's analyses.

mmib predict runs/demo-twitter2017 --text "Kawhi Leonard wins the fan vote in Toronto" --image post.jpg
mmib predict runs/mnre --words Messi joins PSG --head 0 1 --tail 2 3 --image post.jpg --crops a.png b.png
mmib ablate configs/image_decides_ner.yaml --seeds 1 2 3 --output_dir runs/ablation [train_mmib.py flags]
mmib sweep configs/image_decides_ner.yaml --beta_text 0 0.1 1 --beta_vision 0 0.1 1 --output_dir runs/sweep
mmib explain runs/model --input posts.jsonl --output_dir runs/explain
mmib modality-gap runs/no_ar runs/full --data configs/image_decides_ner.yaml --split test --output_dir runs/gap
"""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoProcessor

from . import MMIBConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmib", description="MMIB multimodal NER and relation extraction.")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="Tag one post (NER) or classify one relation (RE); prints JSON.")
    predict.add_argument("model", help="Folder or Hub id of an MMIB checkpoint (model + processor).")
    text = predict.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="The post, split into words at white space.")
    text.add_argument("--words", nargs="+", help="The post's words.")
    predict.add_argument("--image", help="The post's image file (omit for a text-only post).")
    predict.add_argument("--crops", nargs="*", default=[], help="Object crop files of the image.")
    predict.add_argument("--head", nargs=2, type=int, metavar=("START", "END"), help="RE: head entity word span.")
    predict.add_argument("--tail", nargs=2, type=int, metavar=("START", "END"), help="RE: tail entity word span.")
    _add_analysis_parsers(commands)
    return parser


TRAINING_EPILOG = "Other arguments are passed to every train_mmib.py run (e.g. --text_model_name_or_path DIR)."


def _add_analysis_parsers(commands) -> None:
    ablate = commands.add_parser(
        "ablate",
        allow_abbrev=False,
        help="Train the full model and every ablation with the same seeds; write ablation.csv and ablation.md.",
        epilog=TRAINING_EPILOG,
    )
    ablate.add_argument("config", help="A train_mmib.py config file (YAML / JSON).")
    ablate.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="Training seeds (default 1 2 3).")
    ablate.add_argument("--output_dir", required=True, help="Tables and one folder per run; finished runs are kept.")

    sweep = commands.add_parser(
        "sweep",
        allow_abbrev=False,
        help="The paper's Fig. 4: β_T varied, β_V varied, both varied; write beta_sweep.csv and a plot.",
        epilog=TRAINING_EPILOG,
    )
    sweep.add_argument("config", help="A train_mmib.py config file (YAML / JSON).")
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

    gap = commands.add_parser(
        "modality-gap",
        allow_abbrev=False,
        help="t-SNE of entity and object representations and the modality-gap number.",
    )
    gap.add_argument("models", nargs="+", help="One or more MMIB NER checkpoints (e.g. without, then with L_ar).")
    gap.add_argument("--data", required=True, help="Labelled JSON-lines posts, or a train_mmib.py config file.")
    gap.add_argument("--split", default="test", help="Split of a config's dataset (default test).")
    gap.add_argument("--labels", nargs="+", help="A panel title per checkpoint (default: folder names).")
    gap.add_argument("--max_pairs", type=int, default=150, help="Entity-object pairs drawn (paper: 150).")
    gap.add_argument("--seed", type=int, default=0, help="Seed of the pair sample and of t-SNE.")
    gap.add_argument("--output_dir", required=True)


def predict(
    model_name_or_path: str,
    words: Sequence[str],
    image: str | None = None,
    crops: Sequence[str] = (),
    head: Sequence[int] | None = None,
    tail: Sequence[int] | None = None,
) -> dict:
    """
    Run a checkpoint on one post.

    Returns:
        NER: `{"words", "tags", "entities"}` with entity word offsets (end exclusive). RE: `{"words", "head", "tail",
        "label", "score"}`.
    """
    config = AutoConfig.from_pretrained(model_name_or_path)
    if not isinstance(config, MMIBConfig):
        raise ValueError(f"{model_name_or_path} is not an MMIB checkpoint (model_type {config.model_type!r}).")
    processor = AutoProcessor.from_pretrained(model_name_or_path)
    words = list(words)
    if processor.task == "ner":
        model = AutoModelForTokenClassification.from_pretrained(model_name_or_path).eval()
        inputs = processor([words], images=[image], crops=[list(crops)])
        with torch.inference_mode():
            predictions = model(**inputs).predictions
        return {
            "words": words,
            **processor.post_process_token_classification(predictions, [words], config.id2label)[0],
        }
    if head is None or tail is None:
        raise ValueError("A relation checkpoint needs --head START END and --tail START END.")
    model = AutoModelForSequenceClassification.from_pretrained(model_name_or_path).eval()
    inputs = processor(
        [words], images=[image], crops=[list(crops)], head_spans=[tuple(head)], tail_spans=[tuple(tail)]
    )
    with torch.inference_mode():
        logits = model(**inputs).logits
    result = processor.post_process_relation_classification(logits, config.id2label)[0]
    return {"words": words, "head": list(head), "tail": list(tail), **result}


def main(argv: Sequence[str] | None = None) -> None:
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

        records = explain_posts(args.model, args.input, args.output_dir)
        print(f"{len(records)} posts explained in {args.output_dir}")
        return
    if args.command == "modality-gap":
        from .analysis.modality_gap import run_modality_gap

        results = run_modality_gap(
            args.models, args.data, args.output_dir, args.split, args.labels, args.max_pairs, args.seed
        )
        print(json.dumps(results, indent=2))
        return
    words = args.words if args.words is not None else args.text.split()
    print(json.dumps(predict(args.model, words, args.image, args.crops, args.head, args.tail), ensure_ascii=False))


if __name__ == "__main__":
    main()
