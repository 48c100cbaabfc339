"""Trainer predictions -> word tags or relation labels of the dataset rows, and their scores.

`Trainer.predict` returns predictions in dataset order. For NER they are Viterbi paths over the words the processor
kept; words cut by truncation (posts longer than `max_length` tokens) are predicted `O` here, counted in
`truncated_words`, and scored against the full gold tags, so every word of every post is evaluated.
"""

from collections.abc import Callable
from typing import Any

import datasets
import numpy as np
import torch
from transformers import EvalPrediction

from ..data.rows import gold_ner_tags
from ..post_processing_mmib import relation_classification_results, word_tags
from .metrics import ner_scores, re_scores

PER_TYPE_KEYS = ("precision", "recall", "f1", "support")


def ner_tags_from_predictions(
    predictions: np.ndarray, dataset: datasets.Dataset, id2label: dict[int, str]
) -> tuple[list[list[str]], int]:
    """
    Args:
        predictions (`np.ndarray` of shape `(N, W)`): label ids per word, -100 after the kept words.
        dataset (`datasets.Dataset`): the N NER rows the predictions were made for, in order.
        id2label (`dict[int, str]`): the model's labels.

    Returns:
        `(tags, truncated_words)`: one tag per word of every row, and how many words were filled with `O`.
    """
    if len(predictions) != len(dataset):
        raise ValueError(f"{len(predictions)} predictions for {len(dataset)} dataset rows.")
    tags, truncated_words = [], 0
    for index, (row, words) in enumerate(zip(predictions, dataset["words"])):
        post_tags, truncated = word_tags(row, len(words), id2label, index)
        tags.append(post_tags)
        truncated_words += truncated
    return tags, truncated_words


def per_type_scores(metrics: dict[str, Any], prefix: str) -> dict[str, dict[str, float]]:
    """`{type: {precision, recall, f1, support}}` back from the flat `<prefix>_<type>_<key>` metrics."""
    types = [
        key[len(prefix) + 1 : -len("_support")]
        for key in metrics
        if key.startswith(prefix) and key.endswith("_support")
    ]
    return {name: {key: metrics[f"{prefix}_{name}_{key}"] for key in PER_TYPE_KEYS} for name in types}


def relation_labels_from_logits(logits: np.ndarray, id2label: dict[int, str]) -> list[str]:
    """Arg-max relation of each row of `(N, R)` logits."""
    return [result["label"] for result in relation_classification_results(torch.as_tensor(logits), id2label)]


def build_compute_metrics(
    task: str, dataset: datasets.Dataset, id2label: dict[int, str], ner_mode: str = "conlleval"
) -> Callable[[EvalPrediction], dict[str, Any]]:
    """
    A `compute_metrics` for `Trainer` that scores predictions against the full rows of `dataset`.

    NER returns `precision`, `recall`, `f1`, `truncated_words` and, per entity type, `<type>_precision`,
    `<type>_recall`, `<type>_f1` and `<type>_support`; RE returns `precision`, `recall`, `f1` (micro, without
    `None`) and `accuracy`.
    """
    if task == "ner":
        gold = gold_ner_tags(dataset)

        def compute_ner(prediction: EvalPrediction) -> dict[str, Any]:
            predicted, truncated_words = ner_tags_from_predictions(prediction.predictions, dataset, id2label)
            scores = ner_scores(gold, predicted, mode=ner_mode)
            per_type = {
                f"{name}_{key}": values[key] for name, values in scores["per_type"].items() for key in PER_TYPE_KEYS
            }
            return {
                "precision": scores["precision"],
                "recall": scores["recall"],
                "f1": scores["f1"],
                "truncated_words": truncated_words,
                **per_type,
            }

        return compute_ner

    names = dataset.features["relation"].names
    gold_relations = [names[label] for label in dataset["relation"]]

    def compute_re(prediction: EvalPrediction) -> dict[str, Any]:
        scores = re_scores(gold_relations, relation_labels_from_logits(prediction.predictions, id2label))
        return {key: scores[key] for key in ("precision", "recall", "f1", "accuracy")}

    return compute_re
