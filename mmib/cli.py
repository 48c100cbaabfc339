"""`mmib` command line: apply trained MMIB checkpoints to posts. Parses arguments and dispatches.

mmib predict runs/demo-twitter2017 --text "Kawhi Leonard wins the fan vote in Toronto" --image post.jpg
mmib predict runs/demo-twitter2017 --input posts.jsonl --output predictions.jsonl [--relation_model runs/mnre]
mmib predict runs/mnre --words Messi joins PSG --head 0 1 --tail 2 3 --image post.jpg --crops a.png b.png
accelerate launch --multi_gpu --num_processes 2 -m mmib.cli predict MODEL --input posts.jsonl --output out.jsonl
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence

from .jsonl_prediction import StrictModeError, predict_file
from .prediction_mmib import MMIBPredictor


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmib", description="MMIB multimodal NER and relation extraction.")
    commands = parser.add_subparsers(dest="command", required=True)
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
    return parser


def _single_post(args: argparse.Namespace) -> dict:
    post = {"text": args.text} if args.text is not None else {"words": args.words}
    post.update(image=args.image, crops=args.crops)
    if args.head is not None:
        post["head"] = args.head
    if args.tail is not None:
        post["tail"] = args.tail
    return post


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
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
    )
    log(f"device {predictor.device}, dtype {str(predictor.dtype).removeprefix('torch.')} ({predictor.dtype_reason})")
    if args.input is None:
        result = predictor(_single_post(args))
        print(json.dumps(result, ensure_ascii=False))
        if "error" in result:
            raise SystemExit(1)
        return
    try:
        summary = predict_file(
            predictor, args.input, args.output, args.batch_size, args.num_workers, args.quiet, args.strict
        )
    except StrictModeError as error:
        print(f"mmib: {error}", file=sys.stderr)
        raise SystemExit(1) from error
    log(str(summary))


if __name__ == "__main__":
    main()
