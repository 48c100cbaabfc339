"""`mmib explain` on a post without crops: the recorded extractor's objects get contribution scores, drawn as boxes."""

import json

import pytest
from PIL import Image

from conftest import make_image
from detector_folders import hand_box, save_detr, save_extracting_checkpoint
from mmib.analysis import plotting
from mmib.analysis.contribution import explain_posts
from mmib.object_extraction_mmib import MMIBObjectExtractor

TEXT = "John Smith visits London with his cat"
SIZE = (40, 30)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[str, dict]:
    """An NER checkpoint whose processor records the tiny DETR extractor (2 crops)."""
    detector = save_detr(tmp_path_factory.mktemp("detr"))
    settings = MMIBObjectExtractor.from_pretrained(detector, num_crops=2).to_dict()
    return save_extracting_checkpoint(tmp_path_factory.mktemp("recorded"), settings), settings


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> str:
    return save_extracting_checkpoint(tmp_path_factory.mktemp("plain"), None)


def test_explain_scores_and_draws_the_extracted_objects(recorded, plain, tmp_path, monkeypatch):
    folder, _ = recorded
    make_image(5, SIZE).save(tmp_path / "post.png")
    crop = Image.open(tmp_path / "post.png").convert("RGB").crop(hand_box(SIZE))
    crop.save(tmp_path / "crop.png")
    (tmp_path / "posts.jsonl").write_text(json.dumps({"id": "p1", "text": TEXT, "image": "post.png"}) + "\n")
    (tmp_path / "own.jsonl").write_text(
        json.dumps({"id": "p1", "text": TEXT, "image": "post.png", "crops": ["crop.png"]}) + "\n"
    )
    drawn = []
    original = plotting.plot_object_boxes

    def spy(image, boxes, scores, labels, stem, **kwargs):
        drawn.append((image.size, boxes, scores, labels, kwargs["image_score"]))
        return original(image, boxes, scores, labels, stem, **kwargs)

    monkeypatch.setattr("mmib.analysis.contribution.plot_object_boxes", spy)
    (record,) = explain_posts(folder, str(tmp_path / "posts.jsonl"), tmp_path / "out")
    assert record["image_slots"] == [
        {"slot": "image", "file": str(tmp_path / "post.png")},
        {"slot": "object 0: cat", "box": list(hand_box(SIZE))},
    ]
    # The same scores as the crop given as a file to the checkpoint without an extractor.
    (by_hand,) = explain_posts(plain, str(tmp_path / "own.jsonl"), tmp_path / "own")
    assert record["image_scores"] == pytest.approx(by_hand["image_scores"], abs=1e-5)
    assert drawn == [(SIZE, [list(hand_box(SIZE))], record["image_scores"][1:], ["cat"], record["image_scores"][0])]
    assert (tmp_path / "out" / "p1_objects.png").is_file() and (tmp_path / "out" / "p1.png").is_file()
    assert not (tmp_path / "own" / "p1_objects.png").exists()
