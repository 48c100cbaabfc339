"""Old import path; use `mmib.training.evaluation`."""

from .training.evaluation import (  # noqa: F401
    build_compute_metrics,
    gold_ner_tags,
    ner_tags_from_predictions,
    per_type_scores,
    relation_labels_from_logits,
)
