"""Tests for mmib.training.metrics and the local evaluate metric modules (hand-worked expectations)."""

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import evaluate
import pytest
from seqeval.scheme import IOB2

from mmib.training.metrics import load_metric, metric_module_path, ner_scores, re_scores

# Two posts, hand-scored below.
GOLD = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC", "I-MISC"]]
PRED = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "I-MISC", "I-MISC"]]


def test_orphan_inside_tag_conlleval_vs_strict():
    gold = [["B-PER", "I-PER", "O"]]
    pred = [["I-PER", "I-PER", "O"]]
    # conlleval: an I- without B- opens a chunk, so the PER entity [0, 2) is found.
    lenient = ner_scores(gold, pred)
    assert (lenient["precision"], lenient["recall"], lenient["f1"]) == (1.0, 1.0, 1.0)
    # strict IOB2: the orphan I- sequence is not an entity -> nothing predicted, one gold entity missed.
    strict = ner_scores(gold, pred, mode="strict")
    assert (strict["precision"], strict["recall"], strict["f1"]) == (0.0, 0.0, 0.0)
    assert strict["support"] == 1
    assert strict["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_ner_scores_conlleval_by_hand():
    # predicted entities: PER ok, ORG (gold LOC) wrong, ORG ok, MISC from the orphan I- ok -> 3 of 4 correct.
    scores = ner_scores(GOLD, PRED)
    assert scores["precision"] == pytest.approx(3 / 4)
    assert scores["recall"] == pytest.approx(3 / 4)
    assert scores["f1"] == pytest.approx(3 / 4)
    assert scores["support"] == 4
    per_type = scores["per_type"]
    assert set(per_type) == {"PER", "LOC", "ORG", "MISC"}
    assert per_type["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert per_type["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert per_type["ORG"]["precision"] == pytest.approx(1 / 2)
    assert per_type["ORG"]["recall"] == 1.0
    assert per_type["ORG"]["f1"] == pytest.approx(2 / 3)
    assert per_type["MISC"]["f1"] == 1.0


def test_ner_scores_strict_by_hand():
    # strict: the orphan I-MISC I-MISC is dropped -> 3 predicted, 2 correct, 4 gold.
    scores = ner_scores(GOLD, PRED, mode="strict", scheme=IOB2)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 4)
    assert scores["f1"] == pytest.approx(4 / 7)
    assert scores["per_type"]["MISC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert ner_scores(GOLD, PRED, mode="strict", scheme="IOB2") == scores


def brute_force_entities(posts: list[list[str]], strict: bool) -> set[tuple[int, str, int, int]]:
    """(post, type, start, end) of every entity, chunked by an independent reading of the two rules.

    conlleval: B-X opens an entity, I-X continues an open X entity and otherwise opens one. strict IOB2: only B-X
    opens an entity, which runs over the following I-X; an I- that continues nothing belongs to no entity.
    """
    found = set()
    for post_index, tags in enumerate(posts):
        start = 0
        while start < len(tags):
            prefix, _, kind = tags[start].partition("-")
            opens = prefix == "B" or (prefix == "I" and not strict)
            if not opens:
                start += 1
                continue
            end = start + 1
            while end < len(tags) and tags[end] == f"I-{kind}":
                end += 1
            found.add((post_index, kind, start, end))
            start = end
    return found


def brute_force_scores(gold: list[list[str]], pred: list[list[str]], strict: bool) -> dict[str, float]:
    gold_entities, pred_entities = brute_force_entities(gold, strict), brute_force_entities(pred, strict)
    correct = len(gold_entities & pred_entities)
    precision = correct / len(pred_entities) if pred_entities else 0.0
    recall = correct / len(gold_entities) if gold_entities else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": len(gold_entities)}


@pytest.mark.parametrize("mode", ["conlleval", "strict"])
def test_ner_scores_equal_brute_force_on_random_tags(mode):
    rng = random.Random(13)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    for _ in range(200):
        lengths = [rng.randint(1, 7) for _ in range(rng.randint(1, 4))]
        gold = [[rng.choice(tags) for _ in range(length)] for length in lengths]
        # Predictions are the gold tags with some tags changed, so that the scores spread over [0, 1].
        pred = [[rng.choice(tags) if rng.random() < 0.3 else tag for tag in post] for post in gold]
        scores = ner_scores(gold, pred, mode=mode)
        expected = brute_force_scores(gold, pred, strict=mode == "strict")
        for key in ("precision", "recall", "f1"):
            assert isinstance(scores[key], float)
            assert scores[key] == pytest.approx(expected[key]), (gold, pred, key)
        assert scores["support"] == expected["support"]
        for kind in ("PER", "LOC", "ORG"):
            only = [[tag if tag.endswith(kind) else "O" for tag in post] for post in gold]
            only_pred = [[tag if tag.endswith(kind) else "O" for tag in post] for post in pred]
            per_type = brute_force_scores(only, only_pred, strict=mode == "strict")
            if kind in scores["per_type"]:
                assert scores["per_type"][kind]["f1"] == pytest.approx(per_type["f1"]), (gold, pred, kind)
                assert scores["per_type"][kind]["support"] == per_type["support"]
            else:
                assert per_type["support"] == 0


@pytest.mark.parametrize("gold, pred", [([], []), ([["O", "O"]], [["O", "O"]]), ([[]], [[]])])
def test_ner_scores_without_entities_are_zero(gold, pred):
    assert ner_scores(gold, pred) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "per_type": {}}
    assert ner_scores(gold, pred, mode="strict")["f1"] == 0.0


def test_ner_scores_errors():
    with pytest.raises(ValueError, match="mode"):
        ner_scores(GOLD, PRED, mode="lenient")
    with pytest.raises(ValueError, match="scheme"):
        ner_scores(GOLD, PRED, mode="strict", scheme="BILOU2")
    with pytest.raises(ValueError, match="post 1"):
        ner_scores(GOLD, [PRED[0], PRED[1][:3]])
    with pytest.raises(ValueError, match="posts"):
        ner_scores(GOLD, PRED[:1])


def test_re_scores_by_hand():
    gold = ["/per/per/peer", "None", "/org/loc/locate_at", "None", "/per/per/peer"]
    pred = ["/per/per/peer", "/per/per/peer", "None", "None", "/per/org/member_of"]
    scores = re_scores(gold, pred)
    # non-None: 3 gold, 3 predicted, 1 correct; "None"/"None" counts only for accuracy.
    assert scores["precision"] == pytest.approx(1 / 3)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(1 / 3)
    assert (scores["num_gold"], scores["num_pred"], scores["num_correct"]) == (3, 3, 1)
    assert scores["accuracy"] == pytest.approx(2 / 5)


def test_re_scores_all_none_predictions_divide_by_zero_to_zero():
    scores = re_scores(["/per/per/peer", "None"], ["None", "None"])
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.0, 0.0, 0.0)
    empty = re_scores([], [])
    assert (empty["precision"], empty["recall"], empty["f1"], empty["accuracy"]) == (0.0, 0.0, 0.0, 0.0)


def test_re_scores_precision_recall_differ_and_custom_none_label():
    scores = re_scores(["a", "b", "O"], ["a", "O", "O"], none_label="O")
    assert scores["precision"] == 1.0
    assert scores["recall"] == 0.5
    assert scores["f1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="labels"):
        re_scores(["a"], ["a", "b"])


def test_evaluate_ner_module_matches_function():
    metric = load_metric("ner")
    assert metric.compute(predictions=PRED, references=GOLD) == ner_scores(GOLD, PRED)
    assert metric.compute(predictions=PRED, references=GOLD, mode="strict") == ner_scores(GOLD, PRED, mode="strict")


def test_evaluate_re_module_matches_function():
    gold = ["/per/per/peer", "None", "/org/loc/locate_at"]
    pred = ["/per/per/peer", "/per/per/peer", "None"]
    metric = load_metric("re")
    assert metric.compute(predictions=pred, references=gold) == re_scores(gold, pred)
    metric.add_batch(predictions=pred[:2], references=gold[:2])
    metric.add_batch(predictions=pred[2:], references=gold[2:])
    assert metric.compute() == re_scores(gold, pred)


def test_evaluate_load_accepts_folder_and_script_paths():
    folder = metric_module_path("ner")
    by_script = evaluate.load(str(folder / "mmib_ner.py"))
    assert by_script.compute(predictions=PRED, references=GOLD)["f1"] == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="task"):
        metric_module_path("pos")
