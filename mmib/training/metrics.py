"""Evaluation metrics for MMIB: entity-level NER scores and relation-classification scores.

Both functions take plain label strings, so they serve the Trainer's ``compute_metrics``, the CLI and the
local ``evaluate`` metric modules shipped in ``mmib/training/evaluate_metrics`` alike:

- :func:`ner_scores`: entity-level micro precision / recall / F1 (plus per-type scores) computed with
  ``seqeval.metrics``. The default ``mode="conlleval"`` chunks like ``conlleval.pl`` (seqeval's default, an
  ``I-`` tag without a preceding ``B-`` still opens an entity); ``mode="strict"`` only accepts entities that are
  well formed under ``scheme`` (IOB2 by default), so an orphan ``I-`` tag produces no entity.
- :func:`re_scores`: micro precision / recall / F1 over all relations except the "no relation" label.
- :func:`load_metric`: the matching ``evaluate`` module, loaded offline from the package folder.

Every ratio whose denominator is zero is reported as 0.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import seqeval.scheme
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.metrics.sequence_labeling import precision_recall_fscore_support as conlleval_prfs
from seqeval.metrics.v1 import precision_recall_fscore_support as strict_prfs
from seqeval.scheme import Entities

if TYPE_CHECKING:
    import evaluate

NER_MODES = ("conlleval", "strict")
METRIC_MODULES = {"ner": "mmib_ner", "re": "mmib_re"}
EVALUATE_METRICS_DIR = Path(__file__).resolve().parent / "evaluate_metrics"


def _resolve_scheme(scheme: str | type[seqeval.scheme.Token]) -> type[seqeval.scheme.Token]:
    """Turns a scheme name such as ``"IOB2"`` into the ``seqeval.scheme`` class.

    Args:
        scheme: a ``seqeval.scheme.Token`` subclass or the name of one (``"IOB2"``, ``"IOBES"``, ...).

    Returns:
        The scheme class.

    Raises:
        ValueError: if the name is not a seqeval tagging scheme.
    """
    if isinstance(scheme, str):
        resolved = getattr(seqeval.scheme, scheme, None)
    else:
        resolved = scheme
    if not (isinstance(resolved, type) and issubclass(resolved, seqeval.scheme.Token)):
        raise ValueError(f"unknown seqeval tagging scheme {scheme!r}; use e.g. 'IOB2', 'IOE2' or 'IOBES'")
    return resolved


def _check_tag_sequences(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> None:
    """Checks that gold and predicted tags have the same number of posts and words per post.

    Raises:
        ValueError: naming the first post whose lengths differ.
    """
    if len(true_tags) != len(pred_tags):
        raise ValueError(f"got {len(true_tags)} gold posts but {len(pred_tags)} predicted posts")
    for index, (gold, pred) in enumerate(zip(true_tags, pred_tags)):
        if len(gold) != len(pred):
            raise ValueError(f"post {index}: {len(gold)} gold tags but {len(pred)} predicted tags")


def ner_scores(
    true_tags: Sequence[Sequence[str]],
    pred_tags: Sequence[Sequence[str]],
    mode: str = "conlleval",
    scheme: str | type[seqeval.scheme.Token] = "IOB2",
) -> dict[str, Any]:
    """Entity-level micro precision / recall / F1 of BIO tag sequences, computed with seqeval.

    Args:
        true_tags: gold tags, one list of BIO strings per post.
        pred_tags: predicted tags, same shape as ``true_tags``.
        mode: ``"conlleval"`` (seqeval's default chunking, compatible with conlleval.pl) or ``"strict"``
            (only entities well formed under ``scheme`` count).
        scheme: tagging scheme used in strict mode, a ``seqeval.scheme`` class or its name. Ignored in
            conlleval mode.

    Returns:
        ``{"precision", "recall", "f1"}`` micro averages (floats in [0, 1]), ``"support"`` (number of gold
        entities) and ``"per_type"``: ``{type: {"precision", "recall", "f1", "support"}}`` for every entity
        type found in the gold or predicted tags. No posts or no entities at all give zeros.

    Raises:
        ValueError: on an unknown mode or scheme, or when the gold and predicted shapes differ.
    """
    if mode not in NER_MODES:
        raise ValueError(f"unknown NER scoring mode {mode!r}; expected one of {NER_MODES}")
    resolved_scheme = _resolve_scheme(scheme)
    _check_tag_sequences(true_tags, pred_tags)
    gold = [list(tags) for tags in true_tags]
    pred = [list(tags) for tags in pred_tags]
    if not gold:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "per_type": {}}
    if mode == "strict":
        types = Entities(gold, resolved_scheme).unique_tags | Entities(pred, resolved_scheme).unique_tags
        score = partial(strict_prfs, gold, pred, zero_division=0, scheme=resolved_scheme)
    else:
        types = {entity[0] for entity in get_entities(gold) + get_entities(pred)}
        score = partial(conlleval_prfs, gold, pred, zero_division=0)
    per_type = zip(sorted(types), *score(average=None))
    return {
        **_scores(*score(average="micro")),
        "per_type": {name: _scores(*values) for name, *values in per_type},
    }


def _scores(precision: float, recall: float, f1: float, support: int) -> dict[str, Any]:
    """Packs one seqeval (precision, recall, f1, support) tuple as plain Python numbers."""
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(support)}


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, or 0.0 when the denominator is zero."""
    return numerator / denominator if denominator else 0.0


def re_scores(true: Sequence[str], pred: Sequence[str], none_label: str = "None") -> dict[str, Any]:
    """Micro precision / recall / F1 of relation labels, ignoring the "no relation" label.

    P = correct non-None predictions / non-None predictions; R = correct non-None predictions / non-None gold
    labels. A zero denominator gives 0.0.

    Args:
        true: gold relation label per instance.
        pred: predicted relation label per instance.
        none_label: the label meaning "no relation".

    Returns:
        ``{"precision", "recall", "f1"}`` (floats in [0, 1]), ``"num_gold"``, ``"num_pred"`` and
        ``"num_correct"`` (counts of non-None labels) and ``"accuracy"`` over all instances (None included).

    Raises:
        ValueError: if ``true`` and ``pred`` differ in length.
    """
    if len(true) != len(pred):
        raise ValueError(f"got {len(true)} gold labels but {len(pred)} predicted labels")
    num_gold = sum(label != none_label for label in true)
    num_pred = sum(label != none_label for label in pred)
    num_correct = sum(gold == guess != none_label for gold, guess in zip(true, pred))
    precision = _ratio(num_correct, num_pred)
    recall = _ratio(num_correct, num_gold)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "num_gold": num_gold,
        "num_pred": num_pred,
        "num_correct": num_correct,
        "accuracy": _ratio(sum(gold == guess for gold, guess in zip(true, pred)), len(true)),
    }


def metric_module_path(task: str) -> Path:
    """Folder of the local ``evaluate`` metric module for a task.

    Args:
        task: ``"ner"`` or ``"re"``.

    Returns:
        The folder, loadable with ``evaluate.load(str(path))``.

    Raises:
        ValueError: on an unknown task.
    """
    if task not in METRIC_MODULES:
        raise ValueError(f"unknown task {task!r}; expected one of {tuple(METRIC_MODULES)}")
    return EVALUATE_METRICS_DIR / METRIC_MODULES[task]


def load_metric(task: str) -> evaluate.EvaluationModule:
    """Loads the package's ``evaluate`` metric module for a task, without touching the Hub.

    Args:
        task: ``"ner"`` (entity P/R/F1 via :func:`ner_scores`) or ``"re"`` (via :func:`re_scores`).

    Returns:
        The loaded ``evaluate`` module; call ``.compute(predictions=..., references=...)`` on it.
    """
    import evaluate

    return evaluate.load(str(metric_module_path(task)))
