"""mmib.data.registry: one dispatch from dataset name to reader and task, and the real benchmark files' counts."""

import logging
import os

import pytest

from conftest import SHARED_DATA
from dataset_files import T17_LABELS, write_lines, write_mnre, write_twitter
from mmib.data import (
    load_mnre,
    load_twitter_ner,
    missing_media_report,
)


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
