"""``evaluate`` metric module: relation-classification precision / recall / F1 without "None", offline.

Load it with ``evaluate.load("<path to this folder>")`` or :func:`mmib.training.metrics.load_metric` (``"re"``).
``evaluate`` copies this script into its module cache, so it imports ``mmib.training.metrics`` as an installed package.
"""

import datasets
import evaluate

from mmib.training.metrics import re_scores

_DESCRIPTION = """Micro precision, recall and F1 over all relation labels except the "no relation" label
(P = correct non-None / predicted non-None, R = correct non-None / gold non-None; 0.0 on zero division)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted relation labels (strings).
    references: list of gold relation labels (strings).
    none_label: the "no relation" label (default "None").
Returns:
    precision, recall, f1 (floats in [0, 1]), num_gold, num_pred, num_correct (non-None counts), accuracy.
Example:
    >>> metric = evaluate.load("mmib/training/evaluate_metrics/mmib_re")
    >>> metric.compute(predictions=["/per/per/peer", "None"], references=["/per/per/peer", "None"])["f1"]
    1.0
"""

_CITATION = """@article{mmib, title={Multimodal Information Bottleneck for multimodal named entity recognition
and relation extraction}, note={metric as in the MNRE evaluation: micro P/R/F1 excluding None}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MmibRe(evaluate.Metric):
    """Relation scores computed by :func:`mmib.training.metrics.re_scores`."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, none_label: str = "None") -> dict:
        return re_scores(references, predictions, none_label=none_label)
