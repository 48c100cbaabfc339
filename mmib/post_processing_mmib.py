"""
Post-processing of [`MMIBProcessor`]: word-level label ids -> BIO tags and entity spans (NER), relation logits ->
label and probability (RE).

Travels with checkpoints as remote code (see CONTRIBUTING.md).
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def extract_entities(tags: list[str], words: Sequence[str]) -> list[dict[str, Any]]:
    """
    Chunks BIO tags conlleval-style: `B-X` starts an entity, `I-X` continues an entity of type `X` and starts a new
    one after `O` or after a different type; every other tag is outside.

    Returns:
        `[{"text", "type", "start", "end"}]` in word offsets, `end` exclusive, `text = " ".join(words[start:end])`.
    """
    entities = []
    current_type, start = None, 0
    for position, tag in enumerate([*tags, "O"]):
        prefix, _, entity_type = tag.partition("-")
        continues = prefix == "I" and entity_type == current_type
        if current_type is not None and not continues:
            entities.append(
                {"text": " ".join(words[start:position]), "type": current_type, "start": start, "end": position}
            )
            current_type = None
        if prefix in ("B", "I") and entity_type and not continues:
            current_type, start = entity_type, position
    return entities


def token_classification_results(
    predictions: torch.Tensor | Sequence[Sequence[int]],
    words: Sequence[str] | Sequence[Sequence[str]],
    id2label: Mapping[int, str],
) -> list[dict[str, Any]]:
    """See [`MMIBProcessor.post_process_token_classification`]."""
    if isinstance(predictions, torch.Tensor):
        predictions = predictions.tolist()
    if len(words) > 0 and isinstance(words[0], str):
        words = [words]
        if len(predictions) > 0 and not isinstance(predictions[0], Sequence):
            predictions = [predictions]
    if len(predictions) != len(words):
        raise ValueError(f"predictions has {len(predictions)} posts but words has {len(words)}.")

    results = []
    for index, (post_predictions, post) in enumerate(zip(predictions, words)):
        label_ids = [int(label_id) for label_id in post_predictions if int(label_id) != -100]
        if len(label_ids) > len(post):
            raise ValueError(
                f"predictions[{index}] has {len(label_ids)} labels but post {index} has {len(post)} words."
            )
        truncated_words = len(post) - len(label_ids)
        tags = [id2label[label_id] for label_id in label_ids] + ["O"] * truncated_words
        results.append({"tags": tags, "entities": extract_entities(tags, post), "truncated_words": truncated_words})
    return results


def relation_classification_results(logits: torch.Tensor, id2label: Mapping[int, str]) -> list[dict[str, Any]]:
    """See [`MMIBProcessor.post_process_relation_classification`]."""
    logits = torch.as_tensor(logits, dtype=torch.float32)
    if logits.dim() == 1:
        logits = logits.unsqueeze(0)
    scores, label_ids = logits.softmax(dim=-1).max(dim=-1)
    return [{"label": id2label[int(label_id)], "score": float(score)} for score, label_id in zip(scores, label_ids)]
