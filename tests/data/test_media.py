"""mmib.data.media: crop dictionaries (formats, errors, no unpickling) and the missing-media report."""

import json

import datasets
import pytest
import torch

from dataset_files import write_twitter
from mmib.data import (
    MissingMediaReport,
    load_twitter_ner,
    missing_media_report,
    read_crop_dict,
)


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
