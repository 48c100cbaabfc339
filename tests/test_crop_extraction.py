"""`extract_missing_crops`: the crops of posts read by `mmib.data` filled in, own crops kept, the missing-media
counts updated, and a changed selection of the same pictures detected from the cache; `extract_objects` never retries
forever a post whose detection kills the process."""

import json
from pathlib import Path

import pytest
from PIL import Image

from detector_folders import count_calls, hand_box, noise_image, save_detr
from mmib.crop_extraction import MAX_ATTEMPTS, extract_missing_crops, extract_objects
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
    extractor = MMIBObjectExtractor.from_pretrained(detr_dir, cache_dir=tmp_path / "cache", dtype="float32")
    filled, reports = extract_missing_crops(data, extractor, tmp_path / "objects", show_progress=False)
    assert extractor.stats["detected_images"] == 2  # a.png (and its copy) and b.png, across both splits
    train = filled["train"]
    assert train.column_names == data["train"].column_names and train.features == data["train"].features
    assert [len(crops) for crops in train["crops"]] == [1, 1, 0, 1, 1]
    assert train["crops"][1] == data["train"]["crops"][1]  # its own crop
    # Rows 0, 3 and 4 got extracted crops (row 1 brought its own, row 2 has no image): each is its own image's box.
    for index in (0, 3, 4):
        with Image.open(train["crops"][index][0]) as crop, Image.open(train["image"][index]) as picture:
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


class Died(BaseException):
    """The end of a run that no `except Exception` may absorb."""


def test_a_post_whose_detection_kills_the_run_is_given_up_after_max_attempts(detr_dir, tmp_path):
    """The detector dies (`Died`, which no handler of the job catches, as a kill ends the run) on every batch holding
    image 1: the next run detects each post of the dead batch alone, and once `MAX_ATTEMPTS` runs died on it, the
    post is recorded as failed, with the reason, and every other post gets its crops. Images of one size share a
    batch (the extractor never pads one image to another's shape), so the images come in two sizes."""
    (tmp_path / "images").mkdir()
    sizes = [(70, 50), (70, 50), (60, 60), (60, 60)]
    rows, index_of = [], {}
    for index, size in enumerate(sizes):
        noise_image(size, seed=index).save(tmp_path / "images" / f"{index}.png")
        index_of[noise_image(size, seed=index).tobytes()] = index
        rows.append(json.dumps({"words": ["Messi", "in", "Paris"], "image": f"images/{index}.png"}))
    source = tmp_path / "posts.jsonl"
    source.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    detected = []

    def run():
        extractor = MMIBObjectExtractor.from_pretrained(detr_dir, batch_size=2)
        detect = extractor._detect

        def dying(images, queries):
            detected.append([index_of[image.tobytes()] for image in images])
            if 1 in detected[-1]:
                raise Died
            return detect(images, queries)

        extractor._detect = dying
        return extract_objects(extractor, source, out, show_progress=False)

    for attempt in range(MAX_ATTEMPTS):
        with pytest.raises(Died):
            run()
    # Run 1 died on the batch [0, 1]; run 2 retried each alone: 0 was recorded, 1 killed it again.
    assert detected == [[0, 1], [0], [1]]
    detected.clear()
    report = run()
    assert detected == [[2, 3]], "the post that killed two runs is not detected again"
    assert (report.posts, report.with_objects, report.failed, report.resumed) == (4, 3, 1, 1)
    (failure,) = report.failures
    assert failure["file"] == str(tmp_path / "images" / "1.png") and failure["status"] == "failed"
    assert f"died while detecting this image in {MAX_ATTEMPTS} runs" in failure["reason"]
    written = [json.loads(line) for line in Path(report.jsonl_files["posts"]).read_text().splitlines()]
    assert [len(row["crops"]) for row in written] == [1, 0, 1, 1]
    assert not list((out / ".records").rglob("*.attempts"))
    detected.clear()
    assert run().resumed == 4 and detected == []
