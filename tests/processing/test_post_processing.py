"""mmib/post_processing_mmib.py: the one BIO chunker (as the scorer chunks), token and relation results, truncation."""

import numpy as np
import pytest
import torch

from mmib.post_processing_mmib import entity_spans
from processor_parts import ID2LABEL, LABEL2ID


def test_entity_spans_chunk_exactly_like_the_scorer():
    """The one chunker against seqeval's conlleval chunking (what the metrics score) on 2,000 random sequences."""
    from seqeval.metrics.sequence_labeling import get_entities

    from mmib.post_processing_mmib import entity_spans

    generator = np.random.default_rng(0)
    alphabet = ["O"] + [f"{prefix}-{kind}" for prefix in "BI" for kind in ("PER", "LOC", "ORG")]
    for _ in range(2000):
        tags = [alphabet[index] for index in generator.integers(0, len(alphabet), generator.integers(0, 12))]
        expected = [(start, end + 1, kind) for kind, start, end in get_entities(tags)]
        assert entity_spans(tags) == expected, tags


def test_post_process_token_classification_chunks_like_conlleval(ner_processor):
    words = [
        ["John", "Smith", "visits", "New", "York", "!"],
        ["rt", "London", "festival", "of", "voice"],
        ["John", "Smith", "London"],
    ]
    tags = [
        ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"],
        ["O", "I-LOC", "B-MISC", "I-MISC", "I-ORG"],  # I- after O starts; I- of another type starts anew
        ["B-PER", "B-PER", "I-LOC"],  # B- after B- of the same type starts anew; entity at the very end
    ]
    predictions = torch.full((3, 6), -100)
    for row, post_tags in enumerate(tags):
        predictions[row, : len(post_tags)] = torch.tensor([LABEL2ID[tag] for tag in post_tags])

    results = ner_processor.post_process_token_classification(predictions, words, ID2LABEL)
    assert [result["tags"] for result in results] == tags
    assert results[0]["entities"] == [
        {"text": "John Smith", "type": "PER", "start": 0, "end": 2},
        {"text": "New York", "type": "LOC", "start": 3, "end": 5},
    ]
    assert results[1]["entities"] == [
        {"text": "London", "type": "LOC", "start": 1, "end": 2},
        {"text": "festival of", "type": "MISC", "start": 2, "end": 4},
        {"text": "voice", "type": "ORG", "start": 4, "end": 5},
    ]
    assert results[2]["entities"] == [
        {"text": "John", "type": "PER", "start": 0, "end": 1},
        {"text": "Smith", "type": "PER", "start": 1, "end": 2},
        {"text": "London", "type": "LOC", "start": 2, "end": 3},
    ]

    as_lists = ner_processor.post_process_token_classification(
        [[LABEL2ID[tag] for tag in post_tags] for post_tags in tags], words, ID2LABEL
    )
    assert as_lists == results


def test_post_process_token_classification_truncated_and_single(ner_processor):
    words = ["I", "love", "New", "York"]
    result = ner_processor.post_process_token_classification([0, 0, LABEL2ID["B-LOC"]], words, ID2LABEL)
    assert result == [
        {
            "tags": ["O", "O", "B-LOC", "O"],
            "entities": [{"text": "New", "type": "LOC", "start": 2, "end": 3}],
            "truncated_words": 1,
        }
    ]
    with pytest.raises(ValueError, match=r"predictions\[0\] has 5 labels but post 0 has 4 words"):
        ner_processor.post_process_token_classification([[0] * 5], [words], ID2LABEL)


def test_post_process_relation_classification(re_processor):
    id2label = {0: "None", 1: "/per/loc/place_of_residence", 2: "/misc/misc/part_of"}
    logits = torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 1.0]])
    results = re_processor.post_process_relation_classification(logits, id2label)
    assert [result["label"] for result in results] == ["/per/loc/place_of_residence", "None"]
    expected = logits.softmax(-1).max(-1).values
    assert results[0]["score"] == pytest.approx(float(expected[0]))
    assert results[1]["score"] == pytest.approx(float(expected[1]))
    assert re_processor.post_process_relation_classification(logits[1], id2label)[0]["label"] == "None"


def test_entity_spans():
    assert entity_spans(["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-ORG", "I-ORG"]) == [
        (0, 2, "PER"),
        (3, 4, "LOC"),
        (4, 5, "LOC"),
        (5, 7, "ORG"),
    ]
