"""Object extraction at prediction time (issue 18): the extractor recorded with a checkpoint's processor cuts the
crops of new posts in `MMIBPredictor`, `mmib predict`, the pipeline (without mmib), the app and `mmib explain`.

The detector is the tiny DETR of `test_object_extraction.py`: every query predicts one known box of class `cat`
with one known score, so each extracted object is known by hand.
"""

import json
import logging
import textwrap
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from conftest import make_image, run_without_mmib
from detector_folders import (
    count_calls,
    detr_score,
    exif_rotated_jpeg,
    hand_box,
    save_detr,
    save_extracting_checkpoint,
)
from mmib import MMIBPredictor, MMIBProcessor
from mmib.cli import main as cli_main
from mmib.image_loading_mmib import load_image
from mmib.object_extraction_mmib import MMIBObjectExtractor
from prediction_checkpoints import save_re_checkpoint

TEXT = "John Smith visits London with his cat"
SIZE = (40, 30)


@pytest.fixture(scope="module")
def detr_dir(tmp_path_factory) -> str:
    return save_detr(tmp_path_factory.mktemp("detr"))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, detr_dir) -> tuple[str, dict]:
    """An NER checkpoint (2 crop slots) whose processor records the DETR extractor."""
    settings = MMIBObjectExtractor.from_pretrained(detr_dir, num_crops=2).to_dict()
    return save_extracting_checkpoint(tmp_path_factory.mktemp("recorded"), settings), settings


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> str:
    """The same NER checkpoint without a recorded extractor (trained on a dataset's crops)."""
    return save_extracting_checkpoint(tmp_path_factory.mktemp("plain"), None)


@pytest.fixture
def image_path(tmp_path) -> Path:
    path = tmp_path / "post.png"
    make_image(5, SIZE).save(path)
    return path


def expected_objects(size=SIZE) -> list[dict]:
    return [{"box": list(hand_box(size)), "score": pytest.approx(detr_score(), abs=1e-5), "query": "cat"}]


def test_recorded_settings_survive_save_and_load(recorded):
    folder, settings = recorded
    assert json.loads((Path(folder) / "processor_config.json").read_text())["object_extraction"] == settings
    assert MMIBProcessor.from_pretrained(folder).object_extraction == settings
    assert Path(settings["detector"]).is_dir()
    assert (settings["kind"], settings["query_rule"], settings["num_crops"]) == ("closed-set", "all", 2)


def test_post_without_crops_gets_the_extracted_crops_and_objects(recorded, plain, image_path):
    folder, _ = recorded
    predictor = MMIBPredictor.from_pretrained(folder, dtype="float32")
    row = predictor({"id": "a", "text": TEXT, "image": str(image_path)})
    assert row["objects"] == expected_objects()
    # The model read exactly that crop: the same as giving it by hand to a checkpoint without an extractor.
    crop = Image.open(image_path).convert("RGB").crop(hand_box(SIZE))
    by_hand = MMIBPredictor.from_pretrained(plain, dtype="float32")(
        {"id": "a", "text": TEXT, "image": str(image_path), "crops": [crop]}
    )
    assert "objects" not in by_hand
    assert [(e["text"], e["type"]) for e in row["entities"]] == [(e["text"], e["type"]) for e in by_hand["entities"]]
    assert [e["score"] for e in row["entities"]] == pytest.approx([e["score"] for e in by_hand["entities"]], abs=1e-6)
    without = MMIBPredictor.from_pretrained(plain, dtype="float32", object_detector=False)
    scores = [e["score"] for e in without({"text": TEXT, "image": str(image_path)})["entities"]]
    assert scores != pytest.approx([e["score"] for e in row["entities"]], abs=1e-6), "the crop must change the input"


def test_post_with_its_own_crops_keeps_them(recorded, image_path):
    folder, _ = recorded
    predictor = MMIBPredictor.from_pretrained(folder, dtype="float32")
    own = {"text": TEXT, "image": str(image_path), "crops": [str(image_path)]}
    row = predictor(own)
    assert "objects" not in row
    assert not predictor.crop_filler.resolved, "the detector must not even be loaded"
    reference = MMIBPredictor.from_pretrained(folder, dtype="float32", object_detector=False)(own)
    assert [e["score"] for e in row["entities"]] == pytest.approx([e["score"] for e in reference["entities"]])


def test_flags_override_and_turn_off(recorded, plain, detr_dir, image_path, capsys):
    folder, _ = recorded
    flags = ["--object_detector", detr_dir, "--dtype", "float32", "--quiet"]
    cli_main(["predict", plain, "--text", TEXT, "--image", str(image_path), *flags])
    assert json.loads(capsys.readouterr().out)["objects"] == expected_objects()
    cli_main(["predict", folder, "--text", TEXT, "--image", str(image_path), "--no_object_detector", "--quiet"])
    assert "objects" not in json.loads(capsys.readouterr().out)
    other = MMIBPredictor.from_pretrained(plain, object_detector=detr_dir)
    assert other.crop_filler.settings() == {"detector": detr_dir, "num_crops": 2}


def test_missing_crops_are_reported_once(plain, image_path, caplog):
    predictor = MMIBPredictor.from_pretrained(plain, dtype="float32")
    post = {"text": TEXT, "image": str(image_path)}
    with caplog.at_level(logging.WARNING):
        predictor([post, post])
        predictor(post)
        predictor({"text": TEXT})
    messages = [record.getMessage() for record in caplog.records if "object crops" in record.getMessage()]
    assert len(messages) == 1, messages
    assert "trained with 2 object crops" in messages[0] and "--object_detector ID_OR_PATH" in messages[0]
    caplog.clear()
    silent = MMIBPredictor.from_pretrained(plain, dtype="float32", object_detector=False)
    with caplog.at_level(logging.WARNING):
        silent(post)
    assert not [record for record in caplog.records if "object crops" in record.getMessage()]


def test_ner_to_re_detects_an_image_once(recorded, tmp_path, image_path):
    folder, _ = recorded
    relation = save_re_checkpoint(tmp_path / "re")
    predictor = MMIBPredictor.from_pretrained(folder, relation_model=relation, dtype="float32", keep_none=True)
    calls = count_calls(predictor.object_extractor)
    copy = tmp_path / "renamed copy.png"
    copy.write_bytes(image_path.read_bytes())
    rows = predictor([{"text": TEXT, "image": str(image_path)}])
    assert rows[0]["relations"], "the biased tiny model should find entity pairs"
    rows += predictor([{"text": TEXT, "image": str(copy)}])
    assert calls[0] == 1
    assert predictor.object_extractor.stats["detected_images"] == 1
    assert rows[0]["objects"] == rows[1]["objects"] == expected_objects()


def test_whole_image_and_crops_share_the_exif_orientation(recorded, tmp_path):
    folder, _ = recorded
    path = exif_rotated_jpeg(tmp_path / "rotated.jpg", (83, 41))
    with Image.open(path) as stored:
        upright = ImageOps.exif_transpose(stored).convert("RGB")
    assert load_image(path).tobytes() == upright.tobytes()
    assert load_image(Image.open(path)).size == (41, 83)
    row = MMIBPredictor.from_pretrained(folder, dtype="float32")({"text": TEXT, "image": str(path)})
    assert row["objects"] == expected_objects((41, 83))


PIPELINE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from transformers import pipeline
    folder, image_path, text = sys.argv[1:4]
    tagger = pipeline(model=folder, trust_remote_code=True)
    entities = tagger({"text": text, "image": image_path})
    extractor = tagger.predictor.object_extractor
    print(json.dumps({
        "settings": tagger.processor.object_extraction,
        "extractor": extractor.to_dict(),
        "module": type(extractor).__module__,
        "detected_images": extractor.stats["detected_images"],
        "row": tagger.predictor({"text": text, "image": image_path}),
        "entities": entities,
    }))
    """
)


def test_pipeline_without_mmib_cuts_the_recorded_crops(recorded, image_path, tmp_path):
    folder, settings = recorded
    result = run_without_mmib(PIPELINE_SCRIPT, folder, str(image_path), TEXT, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert output["settings"] == output["extractor"] == settings
    assert "transformers_modules" in output["module"]
    assert output["detected_images"] == 1, "the second call must come from the cache"
    assert f"Loading object detector {settings['detector']} (revision main) recorded" in result.stderr
    expected = MMIBPredictor.from_pretrained(folder, dtype="float32")({"text": TEXT, "image": str(image_path)})
    assert output["row"]["objects"] == expected["objects"] == expected_objects()
    assert [e["score"] for e in output["entities"]] == pytest.approx(
        [e["score"] for e in expected["entities"]], abs=1e-5
    )
