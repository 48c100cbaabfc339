"""Object extraction and prediction with a detector whose boxes and scores depend on the pixels: the coloured-square
detector of `square_detector_code.py`, loaded from a folder as remote code like any detector family.

Its processor here keeps each image's size (`do_resize=False`), so every box and score is known by hand: the
orientation of the picture, the order of the crop slots, `num_crops` truncation, the mapping of boxes found in a
padded banner back into the banner, and what the NER and relation models read are all observable.
"""

import pytest
import torch
from PIL import Image
from square_detector import GREEN, RED, save_square_detector, squares_image

from mmib import MMIBPredictor
from mmib.object_extraction_mmib import DetectionError, MMIBObjectExtractor
from prediction_checkpoints import ner_model_and_processor, save_ner_model, save_re_checkpoint

TEXT = "John Smith visits London with his cat"
# A 96 x 64 picture: a 32 x 32 red square and a 16 x 16 green one.
SIZE = (96, 64)
RED_BOX, GREEN_BOX = (8, 8, 40, 40), (60, 30, 76, 46)


@pytest.fixture(scope="module")
def exact_dir(tmp_path_factory) -> str:
    return save_square_detector(tmp_path_factory.mktemp("exact"), do_resize=False)


def extractor_of(folder: str, **settings) -> MMIBObjectExtractor:
    return MMIBObjectExtractor.from_pretrained(folder, trust_remote_code=True, min_size=1, **settings)


def two_squares(red=RED_BOX, green=GREEN_BOX) -> Image.Image:
    return squares_image(SIZE, [(RED, red), (GREEN, green)])


def score_of(box, size=SIZE) -> float:
    return 0.5 + 0.5 * (box[2] - box[0]) * (box[3] - box[1]) / (size[0] * size[1])


def test_boxes_scores_order_and_crops_follow_the_pixels(exact_dir):
    extractor = extractor_of(exact_dir)
    image = two_squares()
    (objects,) = extractor([image])
    assert [(o.box, o.query) for o in objects] == [(RED_BOX, "red"), (GREEN_BOX, "green")]
    assert [o.score for o in objects] == pytest.approx([score_of(RED_BOX), score_of(GREEN_BOX)])
    for obj in objects:
        assert obj.crop.tobytes() == image.crop(obj.box).tobytes()
    # The bigger square scores higher and takes the first slot, whatever its colour.
    swapped = two_squares(red=(60, 30, 76, 46), green=(8, 8, 40, 40))
    assert [o.query for o in extractor([swapped])[0]] == ["green", "red"]
    # num_crops keeps the best.
    assert [(o.box, o.query) for o in extractor_of(exact_dir, num_crops=1)([image])[0]] == [(RED_BOX, "red")]


def exif_rotated_png(path, orientation: int = 6):
    """Stored 60 x 40 with a red 20 x 10 box in the top-left corner; orientation 6 displays it rotated 90 degrees
    clockwise (40 x 60): the stored pixel (x, y) is displayed at (39 - y, x), so the box is (30, 0, 40, 20)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    squares_image((60, 40), [(RED, (0, 0, 20, 10))]).save(path, exif=exif)
    return path


def test_boxes_are_in_the_upright_picture(exact_dir, tmp_path):
    path = exif_rotated_png(tmp_path / "rotated.png")
    (objects,) = extractor_of(exact_dir)([path])
    assert [o.box for o in objects] == [(30, 0, 40, 20)]
    assert set(objects[0].crop.getdata()) == {RED}


def test_a_banner_is_detected_padded_and_its_boxes_mapped_back(exact_dir):
    # 800 x 20 (ratio 40) is detected padded to 800 x 40, the banner in rows 10..29.
    banner = squares_image((800, 20), [(RED, (100, 0, 120, 20))])
    (objects,) = extractor_of(exact_dir)([banner])
    assert [o.box for o in objects] == [(100, 0, 120, 20)]
    assert set(objects[0].crop.getdata()) == {RED}


def test_an_image_the_detector_fails_on_costs_only_its_own_objects(tmp_path):
    # A processor that shrinks the longest side to 8 pixels makes even the padded 10000 x 1 banner 0 pixels high.
    folder = save_square_detector(tmp_path / "tiny", shortest_edge=8, longest_edge=8)
    banner = tmp_path / "banner.png"
    squares_image((10000, 1), [(RED, (0, 0, 5000, 1))]).save(banner)
    extractor = extractor_of(folder, batch_size=2)
    errors = []
    results = extractor([two_squares(), banner], on_unreadable="mask", errors=errors)
    assert [o.query for o in results[0]] == ["red", "green"] and results[1] is None
    assert errors[0] is None and isinstance(errors[1], DetectionError)
    assert str(banner) in str(errors[1]) and "height=0" in str(errors[1])
    assert extractor.stats["failed"] == 1
    with pytest.raises(DetectionError, match="banner.png"):
        extractor([banner])


# --------------------------------------------------------------------------------------------------------------
# Prediction: the crops the models read


def recorded_checkpoint(folder, detector: str, num_crops: int = 2) -> str:
    model, processor = ner_model_and_processor()
    processor.object_extraction = extractor_of(detector, num_crops=num_crops).to_dict()
    return save_ner_model(model, processor, folder)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> MMIBPredictor:
    """The same NER model without an extractor: it reads the crops a post brings."""
    model, processor = ner_model_and_processor()
    folder = save_ner_model(model, processor, tmp_path_factory.mktemp("plain"))
    return MMIBPredictor.from_pretrained(folder, dtype="float32", object_detector=False)


def entity_scores(row: dict) -> list[float]:
    return [entity["score"] for entity in row["entities"]]


def test_prediction_reads_the_crops_of_the_boxes_in_slot_order(exact_dir, plain, tmp_path):
    path = tmp_path / "post.png"
    image = two_squares()
    image.save(path)
    folder = recorded_checkpoint(tmp_path / "ner", exact_dir)
    predictor = MMIBPredictor.from_pretrained(folder, dtype="float32", detector_trust_remote_code=True)
    filled = []
    add_objects = predictor.crop_filler.add_objects

    def spy(posts, device):
        add_objects(posts, device)
        filled.extend(posts)

    predictor.crop_filler.add_objects = spy
    row = predictor({"text": TEXT, "image": str(path)})
    assert [(tuple(o["box"]), o["query"]) for o in row["objects"]] == [(RED_BOX, "red"), (GREEN_BOX, "green")]
    crops = [image.crop(RED_BOX), image.crop(GREEN_BOX)]
    # Slot k holds the crop of the k-th object (the model treats its crop slots alike, so only this shows order).
    assert [crop.tobytes() for crop in filled[0].crops] == [crop.tobytes() for crop in crops]
    by_hand = plain({"text": TEXT, "image": image, "crops": crops})
    assert entity_scores(row) == pytest.approx(entity_scores(by_hand), abs=1e-6)
    # One crop fewer changes the scores.
    first_only = plain({"text": TEXT, "image": image, "crops": crops[:1]})
    assert entity_scores(first_only) != pytest.approx(entity_scores(row), abs=1e-6)
    # A checkpoint recording num_crops=1 reads the best crop only.
    one = recorded_checkpoint(tmp_path / "one", exact_dir, num_crops=1)
    row_one = MMIBPredictor.from_pretrained(one, dtype="float32", detector_trust_remote_code=True)(
        {"text": TEXT, "image": str(path)}
    )
    assert [o["query"] for o in row_one["objects"]] == ["red"]
    assert entity_scores(row_one) == pytest.approx(entity_scores(first_only), abs=1e-6)


def test_prediction_boxes_of_an_upright_picture_and_of_a_banner(exact_dir, tmp_path):
    folder = recorded_checkpoint(tmp_path / "ner", exact_dir)
    predictor = MMIBPredictor.from_pretrained(folder, dtype="float32", detector_trust_remote_code=True)
    rotated = exif_rotated_png(tmp_path / "rotated.png")
    banner = tmp_path / "banner.png"
    squares_image((2000, 1), [(RED, (100, 0, 600, 1))]).save(banner)
    rows = predictor([{"text": TEXT, "image": str(rotated)}, {"text": TEXT, "image": str(banner)}])
    assert [o["box"] for o in rows[0]["objects"]] == [[30, 0, 40, 20]]
    # Detected padded to 2000 x 100; the box is mapped back into the 1-pixel-high picture.
    assert [o["box"] for o in rows[1]["objects"]] == [[100, 0, 600, 1]]


def test_the_relation_stage_reads_the_extracted_crops(exact_dir, tmp_path):
    path = tmp_path / "post.png"
    image = two_squares()
    image.save(path)
    folder = recorded_checkpoint(tmp_path / "ner", exact_dir)
    relation = save_re_checkpoint(tmp_path / "re")
    predictor = MMIBPredictor.from_pretrained(
        folder, relation_model=relation, dtype="float32", keep_none=True, detector_trust_remote_code=True
    )
    (row,) = predictor([{"text": TEXT, "image": str(path)}])
    assert row["relations"], "the biased tiny model should find entity pairs"
    crops = [image.crop(RED_BOX), image.crop(GREEN_BOX)]

    def relation_scores(post_crops):
        scores = []
        for pair in row["relations"]:
            head, tail = (row["entities"][pair[key]] for key in ("head", "tail"))
            inputs = predictor.relation_processor(
                row["words"],
                images=image,
                crops=post_crops,
                head_spans=(head["word_start"], head["word_end"]),
                tail_spans=(tail["word_start"], tail["word_end"]),
            )
            with torch.no_grad():
                scores.append(float(predictor.relation_model(**inputs).logits.softmax(-1)[0].max()))
        return scores

    predicted = [pair["score"] for pair in row["relations"]]
    assert predicted == pytest.approx(relation_scores(crops), abs=1e-5)
    assert predicted != pytest.approx(relation_scores([]), abs=1e-5), "the crops must change the relation input"
