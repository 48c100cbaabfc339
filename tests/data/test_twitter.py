"""mmib.data.twitter: the Twitter-2015/2017 CoNLL reader (rows, labels, line endings, bad lines named by file and line,
missing images counted, crops)."""

import json
import logging

import datasets
import pytest
import torch

from dataset_files import T17_LABELS, TRAIN, touch, write_twitter
from mmib.data import (
    load_twitter_ner,
    missing_media_report,
)


def names_of(dataset: datasets.Dataset, column: str = "ner_tags") -> list[list[str]]:
    feature = dataset.features[column].feature
    return [[feature.int2str(tag) for tag in tags] for tags in dataset[column]]


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


def test_explicit_crop_dict_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_twitter_ner(write_twitter(tmp_path / "t"), crop_dicts={"train": tmp_path / "nope.pth"})
