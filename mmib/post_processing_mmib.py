"""
Post-processing of [`MMIBProcessor`]: word-level label ids -> BIO tags and entity spans (NER), relation logits ->
label and probability (RE).

Travels with checkpoints as remote code (see CONTRIBUTING.md).
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def entity_spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """
    The one BIO chunker, conlleval-style: `B-X` starts an entity, `I-X` continues an entity of type `X` and starts a
    new one after `O` or after a different type (an orphan `I-`); every other tag (also `B-` with no type) is outside.

    Returns:
        `[(start, end, type)]` in word offsets, `end` exclusive.
    """
    spans = []
    current_type, start = None, 0
    for position, tag in enumerate([*tags, "O"]):
        prefix, _, entity_type = tag.partition("-")
        continues = prefix == "I" and entity_type == current_type
        if current_type is not None and not continues:
            spans.append((start, position, current_type))
            current_type = None
        if prefix in ("B", "I") and entity_type and not continues:
            current_type, start = entity_type, position
    return spans


def extract_entities(tags: Sequence[str], words: Sequence[str]) -> list[dict[str, Any]]:
    """
    The entities of [`entity_spans`] as `[{"text", "type", "start", "end"}]` in word offsets, `end` exclusive,
    `text = " ".join(words[start:end])`.
    """
    return [
        {"text": " ".join(words[start:end]), "type": entity_type, "start": start, "end": end}
        for start, end, entity_type in entity_spans(tags)
    ]


def word_tags(
    label_ids: Sequence[int], num_words: int, id2label: Mapping[int, str], index: int = 0
) -> tuple[list[str], int]:
    """
    The one truncation O-fill: one tag per word from a post's predicted label ids (-100 entries dropped); words cut
    by truncation have no prediction and are tagged `O`, as the metrics score them.

    Args:
        label_ids (`Sequence[int]`): the post's predicted label ids, -100 where there is no word.
        num_words (`int`): the post's words.
        id2label (`Mapping[int, str]`): the model's labels.
        index (`int`): the post's index, for the error message.

    Returns:
        `(tags, truncated_words)`.

    Raises:
        ValueError: more labels than words (a bug upstream, not something to cut silently).
    """
    label_ids = [int(label_id) for label_id in label_ids if int(label_id) != -100]
    if len(label_ids) > num_words:
        raise ValueError(f"predictions[{index}] has {len(label_ids)} labels but post {index} has {num_words} words.")
    truncated_words = num_words - len(label_ids)
    return [id2label[label_id] for label_id in label_ids] + ["O"] * truncated_words, truncated_words


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
        tags, truncated_words = word_tags(post_predictions, len(post), id2label, index)
        results.append({"tags": tags, "entities": extract_entities(tags, post), "truncated_words": truncated_words})
    return results


def relation_classification_results(logits: torch.Tensor, id2label: Mapping[int, str]) -> list[dict[str, Any]]:
    """See [`MMIBProcessor.post_process_relation_classification`]."""
    logits = torch.as_tensor(logits, dtype=torch.float32)
    if logits.dim() == 1:
        logits = logits.unsqueeze(0)
    scores, label_ids = logits.softmax(dim=-1).max(dim=-1)
    return [{"label": id2label[int(label_id)], "score": float(score)} for score, label_id in zip(scores, label_ids)]
