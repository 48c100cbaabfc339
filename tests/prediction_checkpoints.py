"""Tiny random NER and RE checkpoints saved to folders, a JSON-lines post file, and how far two predictions of the
same posts agree, shared by the prediction, pipeline, CLI and app tests."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from conftest import make_image, make_image_processor, make_tokenizer, tiny_config
from mmib import MMIBForRelationClassification, MMIBForTokenClassification, MMIBProcessor
from mmib.pipeline_mmib import save_pipeline_code

RELATIONS = {0: "None", 1: "/per/loc/place_of_residence", 2: "/per/per/peer"}


def ner_model_and_processor(seed: int = 0) -> tuple[MMIBForTokenClassification, MMIBProcessor]:
    """A tiny random NER model and its processor, in memory (not saved yet, as during a training run)."""
    torch.manual_seed(seed)
    model = MMIBForTokenClassification(tiny_config()).eval()
    # Random CRFs rarely leave O; a bias towards B-PER / B-LOC makes entities appear in every test post.
    with torch.no_grad():
        model.classifier.bias[1] += 1.0
        model.classifier.bias[3] += 1.0
    return model, MMIBProcessor(make_image_processor(), make_tokenizer(), task="ner", num_crops=2)


def save_ner_model(model: MMIBForTokenClassification, processor: MMIBProcessor, folder: Path) -> str:
    """Save an NER model, its processor and the `mmib-ner` pipeline code to `folder`, as `train_mmib.py` does."""
    save_pipeline_code(model, folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def save_ner_checkpoint(folder: Path, seed: int = 0) -> str:
    return save_ner_model(*ner_model_and_processor(seed), folder)


def save_re_checkpoint(folder: Path, seed: int = 0) -> str:
    torch.manual_seed(seed)
    processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="re", num_crops=2)
    model = MMIBForRelationClassification(tiny_config(id2label=RELATIONS))
    model.resize_token_embeddings(len(processor.tokenizer))
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


POSTS = [
    "RT @john: John Smith visits London and Paris!",
    "i love the city #london http://t.co/x1 :)",
    "new post : blackburn festival of voice 2017",
]


def write_input(folder: Path) -> Path:
    make_image(3).save(folder / "post.png")
    lines = [
        json.dumps({"id": "a", "text": POSTS[0], "image": "post.png"}),
        "{not json",
        "",
        json.dumps({"words": ["john", "smith"], "crops": ["post.png"]}),
        json.dumps({"text": POSTS[1], "image": "missing.jpg"}),
        json.dumps({"text": " "}),
        json.dumps({"text": POSTS[2]}),
    ]
    path = folder / "posts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@dataclass
class Agreement:
    """How far the NER rows of two predictions of the same posts agree ([`agreement`])."""

    entities: int  # entities of the reference rows
    posts: float  # share of the posts with the same entity spans and types
    tags: float  # share of the word tags that are equal
    score_gaps: list[float]  # |score difference| of each entity of the posts that agree


def agreement(reference: list[dict], other: list[dict]) -> Agreement:
    """Compares two lists of `mmib predict` NER rows of the same posts (e.g. float32 against bfloat16 or int8)."""

    def spans(row: dict) -> list[tuple[int, int, str]]:
        return [(entity["word_start"], entity["word_end"], entity["type"]) for entity in row["entities"]]

    pairs = list(zip(reference, other, strict=True))
    agreeing = [(a, b) for a, b in pairs if spans(a) == spans(b)]
    same_tags = sum(x == y for a, b in pairs for x, y in zip(a["tags"], b["tags"], strict=True))
    return Agreement(
        entities=sum(len(row["entities"]) for row in reference),
        posts=len(agreeing) / len(pairs),
        tags=same_tags / sum(len(a["tags"]) for a, _ in pairs),
        score_gaps=[abs(x["score"] - y["score"]) for a, b in agreeing for x, y in zip(a["entities"], b["entities"])],
    )
