"""mmib.data.mnre: the MNRE reader (rows, images, crops), bad lines named by file and line, relation label ids."""

import json

import pytest
import torch

from dataset_files import mnre_line, touch, write_mnre
from mmib.data import (
    load_mnre,
    missing_media_report,
    read_relation_labels,
)


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
