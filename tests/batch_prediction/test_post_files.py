"""Post files for `mmib explain` and `mmib predict`: `read_posts` takes raw `text` like `mmib predict`."""

import json
from pathlib import Path

import pytest


def write_lines(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_posts_takes_raw_text_like_mmib_predict(tmp_path):
    """`mmib explain` reads posts with read_posts: a file written for `mmib predict` (raw text) works for both."""
    from mmib.data import read_posts
    from mmib.posts_mmib import prepare_post

    rows = [{"id": "t", "text": "RT @ann: Paris, at last!"}, {"id": "w", "words": ["Paris", "at", "last"]}]
    path = write_lines(tmp_path / "posts.jsonl", rows)
    posts = read_posts(path)
    assert [post["words"] for post in posts] == [prepare_post(row).words for row in rows]
    assert posts[0]["words"] == ["RT", "@ann", ":", "Paris", ",", "at", "last", "!"]
    for bad, message in (({"text": "a", "words": ["a"]}, "either text or words"), ({"text": 3}, "'text' must be")):
        with pytest.raises(ValueError, match=rf"posts\.jsonl:1: .*{message}"):
            read_posts(write_lines(tmp_path / "posts.jsonl", [bad]))
