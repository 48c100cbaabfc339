"""Tests for the dataset readers in mmib.data (small files in tmp_path, plus one pass over the real data)."""

import json
import logging
import os
from pathlib import Path

import datasets
import pytest
import torch

from conftest import SHARED_DATA
from mmib.data import (
    MissingMediaReport,
    bio_label_names,
    load_jsonl,
    load_mnre,
    load_twitter_ner,
    missing_media_report,
    read_crop_dict,
    read_relation_labels,
    write_jsonl,
)

T17_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]

# train ends without a blank line (like the UMT Twitter-2015 files); post 2 has an orphan I- tag,
# a lone U+00A0 token and a U+FE0F token, which must be kept verbatim.
TRAIN = (
    "IMGID:100\nRT\tO\nJohn\tB-PER\nSmith\tI-PER\nin\tO\nLondon\tB-LOC\n\n"
    "IMGID:200\nBlackburn\tB-MISC\nFestival\tI-MISC\nAcme\tI-ORG\n\u00a0\tO\n\ufe0f\tO"
)
VALID = "IMGID:300\nParis\tB-LOC\nrocks\tO\n\n"
TEST = "IMGID:400\nAcme\tB-ORG\n\n\nIMGID:500\nhi\tO\n\n"


def write_twitter(folder: Path, train: str = TRAIN, valid: str = VALID, test: str = TEST) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train.txt", train), ("valid.txt", valid), ("test.txt", test)):
        (folder / name).write_text(text, encoding="utf-8", newline="")
    return folder


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG fake")
    return path


def names_of(dataset: datasets.Dataset, column: str = "ner_tags") -> list[list[str]]:
    feature = dataset.features[column].feature
    return [[feature.int2str(tag) for tag in tags] for tags in dataset[column]]


# ------------------------------------------------------------------------------------------------------------
# Twitter-2015 / 2017 reader


def test_twitter_reader_rows_labels_and_eof_flush(tmp_path):
    data = load_twitter_ner(write_twitter(tmp_path / "twitter2099"))
    assert set(data) == {"train", "validation", "test"}
    train = data["train"]
    assert train.num_rows == 2
    assert train.features["ner_tags"].feature.names == T17_LABELS
    assert train["id"] == ["100", "200"]
    assert train[1]["words"] == ["Blackburn", "Festival", "Acme", "\u00a0", "\ufe0f"]
    assert names_of(train)[1] == ["B-MISC", "I-MISC", "I-ORG", "O", "O"]
    assert data["test"]["id"] == ["400", "500"]
    assert data["validation"].features == train.features


def test_twitter_reader_crlf_file(tmp_path):
    folder = write_twitter(tmp_path / "crlf", train=TRAIN.replace("\n", "\r\n"))
    train = load_twitter_ner(folder)["train"]
    assert train[0]["words"] == ["RT", "John", "Smith", "in", "London"]
    assert names_of(train)[0] == ["O", "B-PER", "I-PER", "O", "B-LOC"]


def test_bio_label_order_puts_known_types_first():
    assert bio_label_names(["ZZZ", "MISC", "EVT", "PER", "OTHER", "LOC"]) == [
        "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-OTHER", "I-OTHER",
        "B-EVT", "I-EVT", "B-ZZZ", "I-ZZZ",
    ]  # fmt: skip


def test_twitter_reader_explicit_label_names(tmp_path):
    labels = T17_LABELS + ["B-EVT", "I-EVT"]
    data = load_twitter_ner(write_twitter(tmp_path / "t"), label_names=labels)
    assert data["train"].features["ner_tags"].feature.names == labels
    with pytest.raises(ValueError, match=r"train\.txt:3: unknown tag 'B-PER'"):
        load_twitter_ner(tmp_path / "t", label_names=["O", "B-LOC", "I-LOC"])
    with pytest.raises(ValueError, match="not a BIO tag"):
        load_twitter_ner(tmp_path / "t", label_names=["O", "PER"])


def test_twitter_unknown_tag_in_dev_names_file_and_line(tmp_path):
    folder = write_twitter(tmp_path / "t", valid="IMGID:300\nParis\tB-LOC\nWHO\tB-EVT\n")
    with pytest.raises(ValueError, match=r"valid\.txt:3: unknown tag 'B-EVT'"):
        load_twitter_ner(folder)


@pytest.mark.parametrize(
    "train, line, message",
    [
        ("IMGID:1\nfoo O\n", 2, "no TAB"),
        ("IMGID:1\nfoo\tO\nbar\t\n", 3, "empty tag"),
        ("IMGID:1\nfoo\tO\n\tO\n", 3, "empty token"),
        ("foo\tO\nIMGID:1\nbar\tO\n", 1, "outside a post"),
        ("IMGID:1\nfoo\tO\n\nbar\tO\n", 4, "outside a post"),
        ("IMGID:1\nfoo\tO\nIMGID:\nbar\tO\n", 3, "empty IMGID"),
        ("IMGID:1\nfoo\tO\n\nIMGID:2\n\nIMGID:3\nx\tO\n", 4, "has no tokens"),
        ("IMGID:1\nfoo\tO\nbar\tX\n", 3, "not a BIO tag"),
        ("IMGID:1\nfoo\tO\nbar\tE-PER\n", 3, "not a BIO tag"),
    ],
)
def test_twitter_malformed_lines_name_file_and_line(tmp_path, train, line, message):
    folder = write_twitter(tmp_path / "t", train=train)
    with pytest.raises(ValueError, match=rf"train\.txt:{line}: .*{message}"):
        load_twitter_ner(folder)


def test_twitter_empty_file_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"test\.txt: no posts"):
        load_twitter_ner(write_twitter(tmp_path / "t", test="\n\n"))


def test_twitter_images_missing_are_counted_and_logged(tmp_path, caplog):
    folder = write_twitter(tmp_path / "twitter2099")
    image = touch(folder / "twitter2099_images" / "100.jpg")
    with caplog.at_level(logging.WARNING, logger="mmib.data"):
        data = load_twitter_ner(folder)
    assert data["train"]["image"] == [str(image), None]
    report = missing_media_report(data)
    assert report["train"].images_found == 1
    assert report["train"].images_missing == 1
    assert report["train"].missing_images == [str(folder / "twitter2099_images" / "200.jpg")]
    assert report["test"].images_missing == 2
    media_warnings = [r for r in caplog.records if "images missing" in r.getMessage()]
    assert len(media_warnings) == 3  # one per split
    assert "200.jpg" in media_warnings[0].getMessage()
    no_dict_warnings = [r for r in caplog.records if "no crop dictionary" in r.getMessage()]
    assert len(no_dict_warnings) == 3


def test_twitter_crops_from_pth_dict_with_weights_only(tmp_path):
    folder = write_twitter(tmp_path / "twitter2099")
    crop_names = ["0_crop_a.png", "0_crop_b.png", "0_crop_c.png"]
    torch.save({"100.jpg": crop_names, "300.jpg": ["0_crop_z.png"]}, folder / "twitter2099_train_dict.pth")
    crops = folder / "twitter2099_aux_images" / "train" / "crops"
    found = [touch(crops / "0_crop_a.png"), touch(crops / "0_crop_c.png")]
    train = load_twitter_ner(folder, num_crops=3)["train"]
    assert train[0]["crops"] == [str(path) for path in found]
    assert train[1]["crops"] == []
    report = missing_media_report(train)
    assert (report.crops_found, report.crops_missing, report.crop_entries_missing) == (2, 1, 1)
    assert report.missing_crops == [str(crops / "0_crop_b.png")]
    assert load_twitter_ner(folder, num_crops=1)["train"][0]["crops"] == [str(found[0])]
    # Without num_crops the reader keeps every listed crop; the processor decides how many slots there are.
    assert load_twitter_ner(folder)["train"][0]["crops"] == [str(path) for path in found]


def test_twitter_crops_from_json_dict_and_custom_folders(tmp_path):
    folder = write_twitter(tmp_path / "text")
    crop_dict = tmp_path / "dicts" / "valid.json"
    crop_dict.parent.mkdir()
    crop_dict.write_text(json.dumps({"300.jpg": ["a.png", "b.png"]}))
    crop = touch(tmp_path / "aux" / "val" / "crops" / "b.png")
    image = touch(tmp_path / "pics" / "300.jpg")
    data = load_twitter_ner(
        folder, image_dir=tmp_path / "pics", crop_dir=tmp_path / "aux", crop_dicts={"validation": crop_dict}
    )
    assert data["validation"][0]["image"] == str(image)
    assert data["validation"][0]["crops"] == [str(crop)]
    assert missing_media_report(data)["train"].crops_missing == 0  # no dictionary for train: no crops expected


def test_read_crop_dict_formats_and_errors(tmp_path):
    pth = tmp_path / "mre.pth"
    torch.save({0: ["0_a.png"], 1: ["1_a.png", "1_b.png"]}, pth)
    assert read_crop_dict(pth) == {"0": ["0_a.png"], "1": ["1_a.png", "1_b.png"]}
    as_json = tmp_path / "mre.json"
    as_json.write_text(json.dumps({"0": ["0_a.png"], "1": ["1_a.png", "1_b.png"]}))
    assert read_crop_dict(as_json) == read_crop_dict(pth)

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(pth.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated.pth"):
        read_crop_dict(truncated)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(ValueError, match="garbage.json"):
        read_crop_dict(garbage)
    wrong = tmp_path / "wrong.pth"
    torch.save(["not", "a", "dict"], wrong)
    with pytest.raises(ValueError, match="wrong.pth.*expected a dict"):
        read_crop_dict(wrong)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        read_crop_dict(tmp_path / "absent.pth")


class _Payload:
    """An arbitrary object: a weights_only load must refuse to unpickle it."""


def test_read_crop_dict_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"1.jpg": _Payload()}, path)
    with pytest.raises(ValueError, match="evil.pth"):
        read_crop_dict(path)


def test_explicit_crop_dict_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_twitter_ner(write_twitter(tmp_path / "t"), crop_dicts={"train": tmp_path / "nope.pth"})


def test_report_survives_map_and_save_to_disk(tmp_path):
    data = load_twitter_ner(write_twitter(tmp_path / "t"))
    mapped = data["train"].map(lambda row: {"n": len(row["words"])})
    assert missing_media_report(mapped) == missing_media_report(data["train"])
    data.save_to_disk(tmp_path / "saved")
    assert missing_media_report(datasets.load_from_disk(tmp_path / "saved")) == missing_media_report(data)
    with pytest.raises(ValueError, match="no MMIB missing-media report"):
        missing_media_report(datasets.Dataset.from_list([{"a": 1}]))


def test_missing_media_report_json_round_trip():
    report = MissingMediaReport(split="train", num_rows=2, images_missing=1, missing_images=["/x/1.jpg"])
    assert MissingMediaReport.from_json(report.to_json()) == report


# ------------------------------------------------------------------------------------------------------------
# MNRE reader

REL2ID = {"None": 0, "/per/per/peer": 1, "/per/org/member_of": 2}


def mnre_line(token=("Messi", "joins", "PSG", "today"), h=(0, 1), t=(2, 3), rel="/per/org/member_of", img="a.jpg"):
    record = {
        "token": list(token),
        "h": {"name": " ".join(token[h[0] : h[1]]), "pos": list(h)},
        "t": {"name": " ".join(token[t[0] : t[1]]), "pos": list(t)},
        "img_id": img,
        "relation": rel,
    }
    return repr(record)  # a Python literal with single quotes, like the upstream files


def write_mnre(root: Path, train_lines=None) -> Path:
    (root / "txt").mkdir(parents=True, exist_ok=True)
    (root / "ours_rel2id.json").write_text(json.dumps(REL2ID))
    train_lines = train_lines or [mnre_line(), mnre_line(h=(2, 3), t=(0, 1), rel="None", img="b.jpg")]
    (root / "txt" / "ours_train.txt").write_text("\n".join(train_lines) + "\n")
    (root / "txt" / "ours_val.txt").write_text(mnre_line(rel="/per/per/peer", t=(1, 4)) + "\n")
    (root / "txt" / "ours_test.txt").write_text(mnre_line(img="c.jpg"))
    return root


def test_mnre_reader_rows_images_and_crops(tmp_path):
    root = write_mnre(tmp_path / "mnre")
    image = touch(root / "img_org" / "train" / "a.jpg")
    crop = touch(root / "img_vg" / "train" / "crops" / "1_crop_0.png")
    torch.save({0: ["0_crop_0.png"], 1: ["1_crop_0.png"]}, root / "txt" / "mre_train_dict.pth")
    data = load_mnre(root)
    train = data["train"]
    assert train.features["relation"].names == ["None", "/per/per/peer", "/per/org/member_of"]
    assert train[0] == {
        "id": "0",
        "words": ["Messi", "joins", "PSG", "today"],
        "head_span": [0, 1],
        "tail_span": [2, 3],
        "relation": 2,
        "image": str(image),
        "crops": [],
    }
    assert train[1]["relation"] == 0
    assert train[1]["image"] is None
    assert train[1]["crops"] == [str(crop)]
    assert data["validation"][0]["tail_span"] == [1, 4]
    report = missing_media_report(data)["train"]
    assert (report.images_found, report.images_missing, report.crops_found, report.crops_missing) == (1, 1, 1, 1)


@pytest.mark.parametrize(
    "bad, message",
    [
        (mnre_line(h=(3, 5)), r"h\.pos.*span \[3, 5\]"),
        (mnre_line(t=(2, 2)), r"t\.pos.*span \[2, 2\]"),
        (mnre_line(h=(-1, 1)), r"h\.pos"),
        ("{'token': ['a'], 'h': {'pos': [0, 1]}", "not a Python literal"),
        ("__import__('os').system('echo pwned')", "not a Python literal"),
        ("['a', 'b']", "expected a dict literal"),
        (mnre_line().replace("'img_id'", "'image_id'"), "missing field 'img_id'"),
        (mnre_line(rel="/per/per/enemy"), "unknown relation '/per/per/enemy'"),
    ],
)
def test_mnre_bad_line_names_file_and_line(tmp_path, bad, message):
    root = write_mnre(tmp_path / "mnre", train_lines=[mnre_line(), "", bad])
    with pytest.raises(ValueError, match=rf"ours_train\.txt:3: .*{message}"):
        load_mnre(root)


def test_read_relation_labels_validates_ids(tmp_path):
    path = tmp_path / "rel2id.json"
    path.write_text(json.dumps({"None": 0, "b": 2}))
    with pytest.raises(ValueError, match="rel2id.json"):
        read_relation_labels(path)
    path.write_text(json.dumps({"b": 1, "None": 0}))
    assert read_relation_labels(path) == ["None", "b"]


# ------------------------------------------------------------------------------------------------------------
# JSON lines


def write_lines(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


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
        ("ner", '["a"]', "expected a JSON object"),
        ("ner", {"words": ["a", "b"]}, "missing field 'tags'"),
        ("ner", {"words": ["a", "b"], "tags": ["O"]}, "'tags' has 1 items but 'words' has 2"),
        ("ner", {"words": [], "tags": []}, "'words' must be a non-empty list"),
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


# ------------------------------------------------------------------------------------------------------------
# The real benchmark files (counts from ../shared/data/SOURCES.md)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared benchmark data not available")
def test_real_benchmark_files_counts(caplog):
    caplog.set_level(logging.ERROR, logger="mmib.data")
    t17 = load_twitter_ner(SHARED_DATA / "twitter2017")
    assert {split: t17[split].num_rows for split in t17} == {"train": 3373, "validation": 723, "test": 723}
    assert t17["train"].features["ner_tags"].feature.names == T17_LABELS
    assert sum(word == "\ufe0f" for words in t17["train"]["words"] for word in words) == 102
    b_per = t17["train"].features["ner_tags"].feature.str2int("B-PER")
    assert sum(tag == b_per for tags in t17["train"]["ner_tags"] for tag in tags) == 2943

    t15 = load_twitter_ner(SHARED_DATA / "twitter2015")
    assert {split: t15[split].num_rows for split in t15} == {"train": 4000, "validation": 1000, "test": 3257}
    assert t15["train"].features["ner_tags"].feature.names == [name.replace("MISC", "OTHER") for name in T17_LABELS]
    t15_report = missing_media_report(t15)
    assert {split: report.images_found for split, report in t15_report.items()} == {
        "train": 5, "validation": 5, "test": 5}  # fmt: skip
    assert len(os.listdir(SHARED_DATA / "twitter2015" / "twitter2015_images")) == 15
    assert t15_report["validation"].crop_entries_missing == 1  # 1351353.jpg has no crop entry
    assert all(report.crops_found == 0 and report.crops_missing > 0 for report in t15_report.values())

    mnre = load_mnre(SHARED_DATA / "mnre")
    assert {split: mnre[split].num_rows for split in mnre} == {"train": 12247, "validation": 1624, "test": 1614}
    relations = mnre["train"].features["relation"].names
    assert len(relations) == 23
    assert relations[0] == "None"
    assert relations[22] == "/misc/loc/held_on"
    mnre_report = missing_media_report(mnre)
    assert {split: report.images_found for split, report in mnre_report.items()} == {
        "train": 49, "validation": 7, "test": 51}  # fmt: skip
    assert {split: report.crops_found for split, report in mnre_report.items()} == {
        "train": 16, "validation": 12, "test": 22}  # fmt: skip


def test_the_registry_dispatches_each_dataset_to_its_reader_and_task(tmp_path, monkeypatch):
    from mmib.data.registry import READERS, default_data_dir, load_dataset, task_of

    twitter, mnre = write_twitter(tmp_path / "shared" / "twitter2017"), write_mnre(tmp_path / "shared" / "mnre")
    posts = write_lines(tmp_path / "posts.jsonl", [{"words": ["a", "b"], "tags": ["B-PER", "O"]}])
    task, data = load_dataset("twitter2017", data_dir=twitter)
    assert task == "ner" and data["train"][0]["words"] == load_twitter_ner(twitter)["train"][0]["words"]
    task, data = load_dataset("mnre", data_dir=mnre)
    assert task == "re" and "relation" in data["train"].features
    task, data = load_dataset("jsonl", files={"test": posts})
    assert task == "ner" and list(data) == ["test"] and data["test"][0]["words"] == ["a", "b"]
    assert [task_of(name, "re") for name in READERS] == ["ner", "ner", "re", "re"]
    with pytest.raises(ValueError, match="Unknown dataset 'twitter2019': expected one of twitter2015, .*jsonl"):
        load_dataset("twitter2019")
    with pytest.raises(ValueError, match="jsonl dataset needs its files"):
        load_dataset("jsonl")
    monkeypatch.setenv("MMIB_SHARED_DATA", str(tmp_path / "shared"))
    assert default_data_dir("mnre") == mnre
    assert load_dataset("twitter2017")[1]["test"]["words"] == load_twitter_ner(twitter)["test"]["words"]


def test_read_posts_takes_raw_text_like_mmib_predict(tmp_path):
    """`mmib explain` reads posts with read_posts: a file written for `mmib predict` (raw text) works for both."""
    from mmib.data import read_posts
    from mmib.posts_mmib import prepare_post

    rows = [{"id": "t", "text": "RT @ann: Paris, at last!"}, {"id": "w", "words": ["Paris", "at", "last"]}]
    path = write_lines(tmp_path / "posts.jsonl", rows)
    posts = read_posts(path)
    assert [post.words for post in posts] == [prepare_post(row).words for row in rows]
    assert posts[0].words == ["RT", "@ann", ":", "Paris", ",", "at", "last", "!"]
    for bad, message in (({"text": "a", "words": ["a"]}, "either text or words"), ({"text": 3}, "text must be")):
        with pytest.raises(ValueError, match=rf"posts\.jsonl:1: .*{message}"):
            read_posts(write_lines(tmp_path / "posts.jsonl", [bad]))
