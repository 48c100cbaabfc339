"""``evaluate`` metric module: entity-level NER precision / recall / F1 (seqeval), offline.

Load it with ``evaluate.load("<path to this folder>")`` or :func:`mmib.training.metrics.load_metric` (``"ner"``).
``evaluate`` copies this script into its module cache, so it imports ``mmib.training.metrics`` as an installed package.
"""

import datasets
import evaluate

from mmib.training.metrics import ner_scores

_DESCRIPTION = """Entity-level micro precision, recall and F1 of BIO tag sequences (plus per-type scores),
computed with seqeval. mode="conlleval" (default) chunks like conlleval.pl; mode="strict" only counts entities
that are well formed under `scheme` (default "IOB2")."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted tag lists (BIO strings), one per post.
    references: list of gold tag lists, same shape.
    mode: "conlleval" (default) or "strict".
    scheme: seqeval scheme name for strict mode (default "IOB2").
Returns:
    precision, recall, f1 (micro, floats in [0, 1]), support (gold entities) and per_type
    {type: {precision, recall, f1, support}}.
Example:
    >>> metric = evaluate.load("mmib/training/evaluate_metrics/mmib_ner")
    >>> metric.compute(predictions=[["B-PER", "I-PER", "O"]], references=[["B-PER", "I-PER", "O"]])["f1"]
    1.0
"""

_CITATION = """@misc{seqeval, title={seqeval: A Python framework for sequence labeling evaluation},
author={Hiroki Nakayama}, year={2018}, url={https://github.com/chakki-works/seqeval}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MmibNer(evaluate.Metric):
    """Entity-level NER scores computed by :func:`mmib.training.metrics.ner_scores`."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.Value("string")),
                    "references": datasets.List(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references, mode: str = "conlleval", scheme: str = "IOB2") -> dict:
        return ner_scores(references, predictions, mode=mode, scheme=scheme)
