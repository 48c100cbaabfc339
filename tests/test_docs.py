"""docs/prediction.md names every `mmib predict` flag (read from the command's real parser) and every field of a
predicted row (collected from real predictions of the fixture checkpoints: NER, NER -> RE with pairs left out and
a pair too long for the relation model, RE alone, object extraction and an error row); the README and
docs/testing.md state test counts only as dated measurements."""

import argparse
import re
from pathlib import Path

import pytest

from conftest import make_image
from detector_folders import save_detr
from mmib import MMIBPredictor
from mmib.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
PREDICTION_DOC = REPO / "docs" / "prediction.md"
TESTING_DOC = REPO / "docs" / "testing.md"
MEASURED = "## Measured"
# "24 of 729 tests", "729 passed", "12 tests" (not "the Twitter-2017 test split"): a count of the suite's tests.
TEST_COUNT = re.compile(r"(?<![\w-])\d+ (?:of \d+ )?(?:tests|passed)\b")
DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "ner-re-tiny-64db95d"


def predict_flags() -> set[str]:
    parser = argparse.ArgumentParser()
    COMMANDS["predict"].add_arguments(parser)
    return {option for option in parser._option_string_actions if option.startswith("--")} - {"--help"}


def field_names(value) -> set[str]:
    """Every key of every dict in `value`, nested ones included."""
    if isinstance(value, dict):
        return set(value).union(*(field_names(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(field_names(item) for item in value))
    return set()


def undocumented_flags(text: str) -> list[str]:
    return sorted(flag for flag in predict_flags() if not re.search(rf"{re.escape(flag)}(?![\w-])", text))


def undocumented_fields(fields: set[str], text: str) -> list[str]:
    return sorted(name for name in fields if f"`{name}`" not in text and f'"{name}"' not in text)


@pytest.fixture(scope="module")
def predicted_fields(tmp_path_factory) -> set[str]:
    folder = tmp_path_factory.mktemp("docs")
    image = folder / "post.png"
    make_image(5, (40, 30)).save(image)
    ner, relation = str(FIXTURE / "ner"), str(FIXTURE / "re")
    joint = MMIBPredictor.from_pretrained(ner, relation_model=relation, dtype="float32", max_pairs_per_post=3)
    # A word of 123 tokens between two entities: the NER model (128 tokens) reads the post, the relation model needs
    # 4 markers more and cannot take pairs across it.
    long_post = {"words": ["john", "." * 123, "smith"]}
    keep_none = MMIBPredictor.from_pretrained(ner, relation_model=relation, dtype="float32", keep_none=True)
    detected = MMIBPredictor.from_pretrained(ner, dtype="float32", object_detector=save_detr(folder / "detr"))
    rows = [
        *joint([long_post, {"text": " "}]),
        keep_none({"text": "John Smith visits London", "image": str(image)}),
        detected({"text": "John Smith visits London with his cat", "image": str(image)}),
        MMIBPredictor.from_pretrained(relation, dtype="float32")(
            {"words": ["john", "in", "paris"], "head": [0, 1], "tail": [2, 3]}
        ),
    ]
    fields = field_names(rows)
    # The rows reach every kind of output: a change that stops one (and so hides its fields) fails here first.
    assert {"entities", "relations", "pairs_left_out", "relation_errors", "objects", "label", "error"} <= fields
    return fields


def test_every_predict_flag_is_in_the_prediction_doc():
    assert {"--input", "--object_detector", "--no_object_detector"} <= predict_flags()
    assert undocumented_flags(PREDICTION_DOC.read_text(encoding="utf-8")) == []


def test_every_output_field_is_in_the_prediction_doc(predicted_fields):
    assert undocumented_fields(predicted_fields, PREDICTION_DOC.read_text(encoding="utf-8")) == []


def test_the_checks_find_what_is_missing(predicted_fields):
    text = PREDICTION_DOC.read_text(encoding="utf-8")
    # `--object_detector` named only inside `--object_detector_x` does not count; nor does a field without quotes.
    without_flag = text.replace("--object_detector", "--object_detector_x")
    assert undocumented_flags(without_flag) == ["--object_detector"]
    without_field = text.replace("`pairs_left_out`", "pairs_left_out").replace('"pairs_left_out"', "")
    assert undocumented_fields(predicted_fields, without_field) == ["pairs_left_out"]


def undated_test_counts(text: str) -> list[str]:
    """
    The test counts of a document that are not dated measurements: any before its `## Measured` section (counts go
    stale with every change), and any in a paragraph of that section that names no date.
    """
    current, _, measured = text.partition(MEASURED)
    stale = TEST_COUNT.findall(current)
    for paragraph in measured.split("\n\n"):
        if not DATE.search(paragraph):
            stale += TEST_COUNT.findall(paragraph)
    return stale


def test_test_counts_are_only_dated_measurements():
    for path in (REPO / "README.md", TESTING_DOC):
        assert undated_test_counts(path.read_text(encoding="utf-8")) == [], path
    assert TEST_COUNT.findall(TESTING_DOC.read_text(encoding="utf-8").partition(MEASURED)[2])
    # The checks find the kinds of count the docs once held.
    assert undated_test_counts("(marker `slow`, 24 of 729 tests on 2026-12-01)") == ["24 of 729 tests"]
    assert undated_test_counts("the Twitter-2017 test split, 3 tests") == ["3 tests"]
    assert undated_test_counts(f"{MEASURED}\n\n2026-12-01: **729 passed**\n\nLater: 800 passed") == ["800 passed"]
