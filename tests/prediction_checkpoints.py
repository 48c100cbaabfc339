"""Tiny random NER and RE checkpoints saved to folders, shared by the prediction, pipeline and app tests."""

from pathlib import Path

import torch

from conftest import make_image_processor, make_tokenizer, tiny_config
from mmib import MMIBForRelationClassification, MMIBForTokenClassification, MMIBProcessor
from mmib.pipeline_mmib import save_pipeline_code

RELATIONS = {0: "None", 1: "/per/loc/place_of_residence", 2: "/per/per/peer"}


def save_ner_checkpoint(folder: Path, seed: int = 0) -> str:
    torch.manual_seed(seed)
    model = MMIBForTokenClassification(tiny_config()).eval()
    # Random CRFs rarely leave O; a bias towards B-PER / B-LOC makes entities appear in every test post.
    with torch.no_grad():
        model.classifier.bias[1] += 1.0
        model.classifier.bias[3] += 1.0
    processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="ner", num_crops=2)
    save_pipeline_code(model, folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def save_re_checkpoint(folder: Path, seed: int = 0) -> str:
    torch.manual_seed(seed)
    processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="re", num_crops=2)
    model = MMIBForRelationClassification(tiny_config(id2label=RELATIONS))
    model.resize_token_embeddings(len(processor.tokenizer))
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)
