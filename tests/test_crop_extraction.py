"""`extract_missing_crops`: the crops of posts read by `mmib.data` filled in, own crops kept, the missing-media
counts updated, and a changed selection of the same pictures detected from the cache."""

import json

import pytest
from PIL import Image

from detector_folders import count_calls, hand_box, noise_image, save_detr
from mmib.crop_extraction import extract_missing_crops
from mmib.data import load_jsonl, missing_media_report
from mmib.object_extraction_mmib import MMIBObjectExtractor


@pytest.fixture(scope="module")
def detr_dir(tmp_path_factory) -> str:
    return save_detr(tmp_path_factory.mktemp("detr"))


@pytest.fixture
def data(tmp_path):
    """NER posts: two images (one also posted as a renamed copy), one post with its own crop, one without image."""
    (tmp_path / "images").mkdir()
    noise_image((70, 50), seed=1).save(tmp_path / "images" / "a.png")
    noise_image((50, 90), seed=2).save(tmp_path / "images" / "b.png")
    (tmp_path / "images" / "a-copy.png").write_bytes((tmp_path / "images" / "a.png").read_bytes())
    noise_image((20, 20), seed=3).save(tmp_path / "images" / "own.png")
    rows = [
        {"image": "images/a.png"},
        {"image": "images/b.png", "crops": ["images/own.png"]},
        {"image": None},
        {"image": "images/a-copy.png"},
        {"image": "images/b.png"},
    ]
    files = {}
    for split in ("train", "test"):
        files[split] = tmp_path / f"{split}.jsonl"
        post = {"words": ["Messi", "in", "Paris"], "tags": ["B-PER", "O", "B-LOC"]}
        lines = [json.dumps({**post, **row}) for row in rows]
        files[split].write_text("\n".join(lines) + "\n")
    return load_jsonl(files, task="ner")


def test_crops_filled_own_crops_kept_and_counted(detr_dir, data, tmp_path):
    extractor = MMIBObjectExtractor.from_pretrained(detr_dir, cache_dir=tmp_path / "cache")
    filled, reports = extract_missing_crops(data, extractor, tmp_path / "objects", show_progress=False)
    assert extractor.stats["detected_images"] == 2  # a.png (and its copy) and b.png, across both splits
    train = filled["train"]
    assert train.column_names == data["train"].column_names and train.features == data["train"].features
    assert [len(crops) for crops in train["crops"]] == [1, 1, 0, 1, 1]
    assert train["crops"][1] == data["train"]["crops"][1]  # its own crop
    for image, crops in zip(train["image"], train["crops"]):
        if image is not None and crops and "own" not in crops[0]:
            with Image.open(crops[0]) as crop, Image.open(image) as picture:
                assert crop.tobytes() == picture.convert("RGB").crop(hand_box(picture.size)).tobytes()
    assert (reports["train"].with_objects, reports["train"].own_crops, reports["train"].no_image) == (3, 1, 1)
    before, after = missing_media_report(data["train"]), missing_media_report(train)
    assert after.crops_found == before.crops_found + 3 == 4


def test_another_selection_is_served_by_the_cache(detr_dir, data, tmp_path):
    first = MMIBObjectExtractor.from_pretrained(detr_dir, cache_dir=tmp_path / "cache")
    extract_missing_crops(data, first, tmp_path / "objects", show_progress=False)
    subset = data.filter(lambda row, index: index != 0, with_indices=True)
    rerun = MMIBObjectExtractor.from_pretrained(detr_dir, cache_dir=tmp_path / "cache")
    calls = count_calls(rerun)
    filled, reports = extract_missing_crops(subset, rerun, tmp_path / "objects", show_progress=False)
    # A new selection is a new posts file (its records start empty), but every picture is in the cache.
    assert len(list((tmp_path / "objects" / "posts").glob("train-*.jsonl"))) == 2
    assert reports["train"].detected == 2 and calls[0] == 0
    assert [len(crops) for crops in filled["train"]["crops"]] == [1, 0, 1, 1]
