"""mmib.training.evaluation: prediction decoding with truncation, compute_metrics and per-type scores."""

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features
from transformers import EvalPrediction

from conftest import NER_LABELS, ner_dataset
from mmib.training.evaluation import build_compute_metrics, ner_tags_from_predictions, per_type_scores


def test_truncated_words_are_predicted_o_and_scored():
    dataset = ner_dataset()
    id2label = dict(enumerate(NER_LABELS))
    # Post b lost its last two words to truncation: they are filled with O and counted.
    predictions = np.array([[1, 2, 0, 3], [0, 0, -100, -100]])
    tags, truncated = ner_tags_from_predictions(predictions, dataset, id2label)
    assert tags == [["B-PER", "I-PER", "O", "B-LOC"], ["O", "O", "O", "O"]]
    assert truncated == 2
    metrics = build_compute_metrics("ner", dataset, id2label)(EvalPrediction(predictions, None))
    # Gold: PER, LOC (post a), LOC (post b); predicted: PER, LOC. P = 2/2, R = 2/3.
    assert metrics["precision"] == 1.0 and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(0.8) and metrics["truncated_words"] == 2
    with pytest.raises(ValueError, match="3 predictions for 2 dataset rows"):
        ner_tags_from_predictions(np.zeros((3, 4), dtype=int), dataset, id2label)


def test_more_labels_than_words_is_an_error_naming_the_row():
    """A Viterbi path never has more labels than words: if one had, cutting it silently would hide a bug."""
    dataset = ner_dataset()
    predictions = np.array([[1, 2, 0, 3, -100], [0, 0, 0, 0, 0]])
    assert [len(words) for words in dataset["words"]] == [4, 4]
    with pytest.raises(ValueError, match=r"predictions\[1\] has 5 labels but post 1 has 4 words"):
        ner_tags_from_predictions(predictions, dataset, dict(enumerate(NER_LABELS)))


def test_relation_metrics_ignore_none():
    features = Features({"relation": ClassLabel(names=["None", "/per/per/peer", "/loc/loc/contain"])})
    dataset = Dataset.from_list([{"relation": 1}, {"relation": 0}, {"relation": 2}, {"relation": 1}], features)
    logits = np.array([[0, 5, 0], [0, 0, 5], [5, 0, 0], [0, 5, 0]], dtype=float)
    metrics = build_compute_metrics("re", dataset, {0: "None", 1: "/per/per/peer", 2: "/loc/loc/contain"})(
        EvalPrediction(logits, None)
    )
    # Predicted non-None: peer, contain, peer (2 correct); gold non-None: peer, contain, peer.
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(0.5)


def test_per_type_scores_come_back_from_flat_metrics():
    dataset = ner_dataset()
    metrics = build_compute_metrics("ner", dataset, dict(enumerate(NER_LABELS)))(
        EvalPrediction(np.array([[1, 2, 0, 3], [0, 0, 0, 0]]), None)
    )
    metrics = {f"test_{key}": value for key, value in metrics.items()}
    scores = per_type_scores(metrics, "test")
    assert scores["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert scores["LOC"]["recall"] == 0.5 and scores["LOC"]["support"] == 2
