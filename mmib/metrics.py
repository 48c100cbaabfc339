"""Old import path; use `mmib.training.metrics`."""

from .training.metrics import NER_MODES, load_metric, metric_module_path, ner_scores, re_scores  # noqa: F401
