"""mmib.data.jsonl: the package's JSON-lines reader and writer (relative media, label inference, bad records named by
file and line, round trips) and the word/span rules it shares with prediction."""

import json

import pytest

from dataset_files import touch, write_lines, write_mnre, write_twitter
from mmib.data import (
    load_jsonl,
    load_mnre,
    load_twitter_ner,
    missing_media_report,
    write_jsonl,
)


def test_jsonl_ner_reader_resolves_relative_media(tmp_path):
    image = touch(tmp_path / "posts" / "images" / "p1.jpg")
    crop = touch(tmp_path / "posts" / "crops" / "p1_0.png")
    train = write_lines(
        tmp_path / "posts" / "train.jsonl",
        [
            {"id": "p1", "words": ["Messi", "in", "Paris"], "tags": ["B-PER", "O", "B-LOC"],
             "image": "images/p1.jpg", "crops": ["crops/p1_0.png", "crops/p1_1.png"]},
            {"words": ["hello"], "tags": ["O"], "image": None},
        ],
    )  # fmt: skip
    data = load_jsonl({"train": train})
    row = data["train"][0]
    assert row["id"] == "p1"
    assert row["image"] == str(image)
    assert row["crops"] == [str(crop)]
    assert data["train"][1]["id"] == "1"
    assert data["train"][1]["image"] is None
    assert data["train"].features["ner_tags"].feature.names == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    report = missing_media_report(data)["train"]
    assert (report.images_found, report.images_missing, report.crops_missing) == (1, 0, 1)

    other = touch(tmp_path / "elsewhere" / "images" / "p1.jpg")
    assert load_jsonl({"train": train}, image_root=tmp_path / "elsewhere")["train"][0]["image"] == str(other)


def test_jsonl_re_reader_and_label_inference(tmp_path):
    record = {"words": ["Messi", "joins", "PSG"], "head": [0, 1], "tail": [2, 3], "relation": "/per/org/member_of"}
    train = write_lines(tmp_path / "train.jsonl", [record, {**record, "relation": "None"}])
    test = write_lines(tmp_path / "test.jsonl", [{**record, "relation": "/per/per/peer"}])
    with pytest.raises(ValueError, match=r"test\.jsonl:1: unknown relation '/per/per/peer'"):
        load_jsonl({"train": train, "test": test}, task="re")
    labels = ["None", "/per/per/peer", "/per/org/member_of"]
    data = load_jsonl({"train": train, "test": test}, task="re", label_names=labels)
    assert data["train"]["relation"] == [2, 0]
    assert data["test"][0]["head_span"] == [0, 1]
    inferred = load_jsonl({"train": train}, task="re")["train"].features["relation"].names
    assert inferred == ["None", "/per/org/member_of"]


@pytest.mark.parametrize(
    "task, bad, message",
    [
        ("ner", '{"words": ["a"], "tags": ["O"]', "malformed JSON"),
        ("ner", '["a"]', "must be a JSON object"),
        ("ner", {"words": ["a", "b"]}, "missing field 'tags'"),
        ("ner", {"words": ["a", "b"], "tags": ["O"]}, "'tags' has 1 items but 'words' has 2"),
        ("ner", {"words": [], "tags": []}, "the post has no words"),
        ("ner", {"words": ["a"], "tags": ["B-PER"], "id": True}, "'id' must be a string or an integer"),
        ("ner", {"text": "a b", "tags": ["B-PER"]}, "'tags' has 1 items but 'words' has 2"),
        ("ner", {"words": ["a"], "tags": ["B-PER"], "image": 3}, "'image' must be"),
        ("ner", {"words": ["a"], "tags": ["B-ORG"]}, "unknown tag 'B-ORG'"),
        ("re", {"words": ["a", "b"], "head": [0, 1], "tail": [1, 3], "relation": "x"}, "'tail' span"),
        ("re", {"words": ["a", "b"], "head": [0, 1], "relation": "x"}, "missing field 'tail'"),
    ],
)
def test_jsonl_bad_record_names_file_and_line(tmp_path, task, bad, message):
    good = {"words": ["a"], "tags": ["B-PER"]} if task == "ner" else {
        "words": ["a", "b"], "head": [0, 1], "tail": [1, 2], "relation": "x"}  # fmt: skip
    path = write_lines(tmp_path / "train.jsonl", [good, "", bad])
    labels = ["O", "B-PER", "I-PER"] if task == "ner" else ["None", "x"]
    with pytest.raises(ValueError, match=rf"train\.jsonl:3: .*{message}"):
        load_jsonl({"train": path}, task=task, label_names=labels)


def test_training_and_prediction_share_the_word_and_span_rules(tmp_path):
    """One rule (posts_mmib.words_field / span_field) for JSON-lines training records and for predicted posts."""
    from mmib.posts_mmib import prepare_post

    record = {"words": ["a", " ", "b"], "head": [0, 1], "tail": [2, 3], "relation": "x"}
    path = write_lines(tmp_path / "train.jsonl", [record])
    # A whitespace-only word is a word for both.
    assert load_jsonl({"train": path}, task="re", label_names=["None", "x"])["train"][0]["tail_span"] == [2, 3]
    assert prepare_post(record, needs_spans=True).tail == (2, 3)
    for span in ([True, 2], [0, 1.0], [2, 2], [0, 4], "01"):
        path = write_lines(tmp_path / "train.jsonl", [{**record, "tail": span}])
        post = prepare_post({**record, "tail": span}, needs_spans=True)
        with pytest.raises(ValueError, match=r"train\.jsonl:1: .*'tail'"):
            load_jsonl({"train": path}, task="re", label_names=["None", "x"])
        assert post.error_kind == "invalid field" and "'tail'" in post.error, span


def test_jsonl_reads_the_posts_of_mmib_predict(tmp_path):
    """The one post reader: a raw `text` is split as `mmib predict` splits it, `crops: null` is no crops."""
    from mmib.posts_mmib import prepare_post

    text = "RT @ann: Messi in Paris!"
    tags = ["O", "O", "O", "B-PER", "O", "B-LOC", "O"]
    path = write_lines(tmp_path / "train.jsonl", [{"id": 7, "text": text, "tags": tags, "crops": None}])
    row = load_jsonl({"train": path})["train"][0]
    assert row["words"] == prepare_post(text).words == ["RT", "@ann", ":", "Messi", "in", "Paris", "!"]
    assert (row["id"], row["ner_tags"], row["crops"]) == ("7", [0, 0, 0, 1, 0, 3, 0], [])


def test_jsonl_unknown_task(tmp_path):
    with pytest.raises(ValueError, match="task"):
        load_jsonl({"train": tmp_path / "x.jsonl"}, task="pos")


def test_write_jsonl_round_trip_ner(tmp_path):
    folder = write_twitter(tmp_path / "twitter2099")
    touch(folder / "twitter2099_images" / "100.jpg")
    original = load_twitter_ner(folder)
    out = folder / "export" / "train.jsonl"
    out.parent.mkdir()
    assert write_jsonl(original["train"], out) == 2
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert first["image"] == str(folder / "twitter2099_images" / "100.jpg")  # outside the folder: absolute
    labels = original["train"].features["ner_tags"].feature.names
    reloaded = load_jsonl({"train": out}, label_names=labels)
    assert reloaded["train"].to_list() == original["train"].to_list()


def test_write_jsonl_round_trip_re_with_relative_media(tmp_path):
    root = write_mnre(tmp_path / "mnre")
    image = touch(root / "img_org" / "train" / "a.jpg")
    original = load_mnre(root)["train"]
    out = root / "train.jsonl"
    write_jsonl(original, out)
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert first["image"] == "img_org/train/a.jpg"  # inside the output folder: relative
    assert first["relation"] == "/per/org/member_of"
    reloaded = load_jsonl({"train": out}, task="re", label_names=original.features["relation"].names)["train"]
    assert reloaded.to_list() == original.to_list()
    assert reloaded[0]["image"] == str(image)
