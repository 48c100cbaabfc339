"""Tiny random NER and RE checkpoints saved to folders, shared by the prediction, pipeline and app tests."""

from pathlib import Path

import torch

from conftest import make_image_processor, make_tokenizer, tiny_config
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
