"""What speed work must not change: tags, entities, scores and relations of a fixed tiny model on the shipped posts.

`fixtures/prediction-golden.json` was written by `golden_outputs` with the code before the speed work of issue 19
(commit c92a09a: two data-loader workers, marginals over every word, rows written one by one, NER -> RE running
each post's images through the tower once per entity pair). Regenerate it only for a deliberate change of the
outputs: `python tests/test_prediction_golden.py`.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_image
from mmib import MMIBPredictor
from mmib.batch_prediction import predict_file
from prediction_checkpoints import save_ner_checkpoint, save_re_checkpoint

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "twitter2017-sample" / "test.jsonl"
GOLDEN = Path(__file__).resolve().parent / "fixtures" / "prediction-golden.json"
# Scores are compared to this absolute tolerance: a different but equivalent summation order moves the last bits.
SCORE_TOLERANCE = 1e-5


def write_posts(folder: Path) -> Path:
    """The 102 shipped test posts as raw text; every third post with one of three small images."""
    for seed in range(3):
        make_image(seed).save(folder / f"image{seed}.png")
    path = folder / "posts.jsonl"
    with open(path, "w", encoding="utf-8") as output:
        for index, line in enumerate(open(SAMPLE, encoding="utf-8")):
            row = {"id": json.loads(line)["id"], "text": " ".join(json.loads(line)["words"])}
            if index % 3 == 0:
                row["image"] = f"image{index % 9 // 3}.png"
            output.write(json.dumps(row) + "\n")
    return path


def _predictor(folder: Path, relations: bool) -> MMIBPredictor:
    ner = save_ner_checkpoint(folder / "ner")
    relation = save_re_checkpoint(folder / "re") if relations else None
    predictor = MMIBPredictor.from_pretrained(
        ner,
        relation_model=relation,
        dtype="float32",
        device="cpu",
        batch_size=8,
        keep_none=True,
        max_pairs_per_post=6,
    )
    # Sharper emissions, a bias to O and transitions into I- tags: entities of 1-3 words of all four types, 0-4 per
    # post (not only the biased B-PER / B-LOC singletons everywhere).
    with torch.no_grad():
        predictor.model.classifier.weight *= 8
        predictor.model.classifier.bias[0] += 2.5
        for begin in (1, 3, 5, 7):
            predictor.model.crf.transitions[begin, begin + 1] += 2.0
            predictor.model.crf.transitions[begin + 1, begin + 1] += 1.0
    return predictor


def golden_outputs(folder: Path) -> dict[str, list[dict]]:
    """`mmib predict`'s file path on the posts of [`write_posts`]: NER alone, and NER -> RE (every pair kept)."""
    posts = write_posts(folder)
    outputs = {}
    for name, relations in (("ner", False), ("ner_re", True)):
        predictor = _predictor(folder / name, relations)
        predict_file(predictor, str(posts), str(folder / f"{name}.jsonl"), batch_size=8, quiet=True)
        outputs[name] = [json.loads(line) for line in open(folder / f"{name}.jsonl", encoding="utf-8")]
    return outputs


def _without_scores(rows: list[dict]) -> tuple[list[dict], list[float]]:
    stripped, scores = [], []
    for row in rows:
        row = json.loads(json.dumps(row))
        for item in row["entities"] + row.get("relations", []):
            scores.append(item.pop("score"))
        stripped.append(row)
    return stripped, scores


@pytest.mark.parametrize("name", ["ner", "ner_re"])
def test_outputs_equal_those_before_the_speed_work(name, tmp_path):
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))[name]
    actual = golden_outputs(tmp_path)[name]
    expected_rows, expected_scores = _without_scores(expected)
    actual_rows, actual_scores = _without_scores(actual)
    assert actual_rows == expected_rows
    assert actual_scores == pytest.approx(expected_scores, abs=SCORE_TOLERANCE)


def test_the_golden_outputs_exercise_what_the_speed_work_touches():
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    entities = [entity for row in golden["ner"] for entity in row["entities"]]
    lengths = {entity["word_end"] - entity["word_start"] for entity in entities}
    assert len(golden["ner"]) == 102 and len(entities) > 100 and max(lengths) >= 3
    assert sum(not row["entities"] for row in golden["ner"]) > 0  # posts without entities
    relations = [relation for row in golden["ner_re"] for relation in row["relations"]]
    assert len(relations) > 100 and len({relation["label"] for relation in relations}) > 1
    assert any("pairs_left_out" in row for row in golden["ner_re"])
    with_image = [row for index, row in enumerate(golden["ner_re"]) if index % 3 == 0 and row["relations"]]
    assert len(with_image) > 10


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    with tempfile.TemporaryDirectory() as folder:
        GOLDEN.write_text(json.dumps(golden_outputs(Path(folder)), indent=1, ensure_ascii=False) + "\n")
