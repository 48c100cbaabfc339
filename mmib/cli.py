"""`mmib` command line: run a trained MMIB checkpoint on a post.

mmib predict runs/demo-twitter2017 --text "Kawhi Leonard wins the fan vote in Toronto" --image post.jpg
mmib predict runs/mnre --words Messi joins PSG --head 0 1 --tail 2 3 --image post.jpg --crops a.png b.png
"""

import argparse
import json
from collections.abc import Sequence

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
    return parser


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
    args = _parser().parse_args(argv)
    words = args.words if args.words is not None else args.text.split()
    print(json.dumps(predict(args.model, words, args.image, args.crops, args.head, args.tail), ensure_ascii=False))


if __name__ == "__main__":
    main()
