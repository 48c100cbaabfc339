"""The pipeline side of `bench_vs_pipeline.py`, a process of its own that imports only what a transformers user
imports (torch, transformers): run from the benchmark's own file it imported `mmib` too, a cost on the pipeline's
side that is not the pipeline's.

    python benchmarks/pipeline_worker.py TOWER posts.jsonl out.jsonl --dtype bfloat16 --labels O B-PER I-PER ...
"""

import argparse
import json

import torch
import transformers
from transformers import AutoTokenizer, BertForTokenClassification, pipeline


def run_pipeline(
    tower: str, input_path: str, output_path: str, batch_size: int, labels: list[str], dtype: str
) -> None:
    """A token-classification pipeline over the tower (weights in `dtype`) on the posts' `text`, JSON lines out."""
    transformers.utils.logging.set_verbosity_error()
    model = BertForTokenClassification.from_pretrained(
        tower, id2label=dict(enumerate(labels)), dtype=getattr(torch, dtype)
    )
    tagger = pipeline(
        "token-classification",
        model=model.eval(),
        tokenizer=AutoTokenizer.from_pretrained(tower),
        aggregation_strategy="simple",
        device="cpu",
    )
    texts = [json.loads(line)["text"] for line in open(input_path, encoding="utf-8")]
    with open(output_path, "w", encoding="utf-8") as output:
        for index, entities in enumerate(tagger(texts, batch_size=batch_size)):
            entities = [{**entity, "score": float(entity["score"])} for entity in entities]
            output.write(json.dumps({"id": index, "entities": entities}, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tower", help="A BertModel folder (the MMIB checkpoint's text tower).")
    parser.add_argument("input", help="JSON-lines posts with a `text` field.")
    parser.add_argument("output", help="JSON-lines entities, one line per post.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--labels", nargs="+", required=True, help="The tagger's labels (its head is random).")
    args = parser.parse_args()
    run_pipeline(args.tower, args.input, args.output, args.batch_size, args.labels, args.dtype)


if __name__ == "__main__":
    main()
