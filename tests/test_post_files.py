"""The one post reader: a file written for `mmib predict` (raw `text` or `words`) is read the same by `mmib explain`,
and every post it cannot use stops `read_posts` naming the file and line."""

import io
import json
import sys

import pytest
from PIL import Image

from mmib.cli import main as cli_main
from mmib.post_files import iter_lines, prepare_line, read_posts
from mmib.posts_mmib import prepare_post
from prediction_checkpoints import save_ner_checkpoint


def write_lines(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_one_file_works_for_mmib_predict_and_mmib_explain(tmp_path, capsys):
    folder = save_ner_checkpoint(tmp_path / "ner")
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "post.jpg")
    rows = [
        {"id": "raw", "text": "RT @ann: Kawhi Leonard in Toronto!", "image": "post.jpg"},
        {"id": "split", "words": ["Messi", "joins", "PSG"]},
    ]
    posts = write_lines(tmp_path / "posts.jsonl", [json.dumps(row) for row in rows])
    cli_main(["predict", folder, "--input", str(posts), "--output", str(tmp_path / "out.jsonl"), "--num_workers", "0"])
    predicted = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    cli_main(["explain", folder, "--input", str(posts), "--output_dir", str(tmp_path / "explain")])
    assert capsys.readouterr().out.strip().endswith("2 posts explained in " + str(tmp_path / "explain"))
    explained = json.loads((tmp_path / "explain" / "contributions.json").read_text())
    assert [row.get("error") for row in predicted] == [None, None]
    assert [record["id"] for record in explained] == [row["id"] for row in predicted] == ["raw", "split"]
    assert [record["words"] for record in explained] == [row["words"] for row in predicted]
    assert explained[0]["words"] == ["RT", "@ann", ":", "Kawhi", "Leonard", "in", "Toronto", "!"]
    assert [record["text"] for record in explained] == [row["text"] for row in predicted]
    assert explained[0]["image_slots"] == [{"slot": "image", "file": str(tmp_path / "post.jpg")}]
    assert explained[1]["image_slots"] == [] and explained[1]["image_scores"] == []


def test_read_posts_returns_prepared_posts_numbered_by_line(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    lines = [json.dumps({"text": "Paris at last", "crops": ["a.png", "a.png", "a.png"]}), "", "  ", '{"words": ["x"]}']
    posts = read_posts(write_lines(tmp_path / "posts.jsonl", lines), max_crops=2)
    assert [post.id for post in posts] == [1, 4]
    assert posts[0].words == prepare_post({"text": "Paris at last"}).words == ["Paris", "at", "last"]
    crop = str(tmp_path / "a.png")
    assert len(posts[0].crops) == 2 and posts[0].image_files == [None, crop, crop]
    other_root = read_posts(tmp_path / "posts.jsonl", image_root=tmp_path / "elsewhere", max_crops=0)
    assert other_root[0].image_files == [None]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"text": "ok"}', "", '{"text": '], r"posts\.jsonl:3: malformed JSON"),
        (['{"words": []}'], r"posts\.jsonl:1: the post has no words"),
        (['{"text": "a", "words": ["a"]}'], r"posts\.jsonl:1: give either text or words"),
        (['{"text": "a", "image": "missing.jpg"}'], r"posts\.jsonl:1: image: file not found: .*missing\.jpg"),
        (['{"text": "a", "image": "broken.jpg"}'], r"posts\.jsonl:1: image: .*broken\.jpg"),
        (["", "   "], r"posts\.jsonl: no posts"),
    ],
)
def test_read_posts_refuses_a_post_it_cannot_use_naming_file_and_line(tmp_path, lines, message):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=message):
        read_posts(write_lines(tmp_path / "posts.jsonl", lines))


def test_iter_lines_reads_stdin_and_prepare_line_reports_malformed_json(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"text": "a b"}\n\n{oops\n'))
    lines = list(iter_lines("-"))
    assert [number for number, _ in lines] == [1, 3]
    posts = [prepare_line(number, line, prepare_post) for number, line in lines]
    assert posts[0].words == ["a", "b"] and posts[0].id == 1
    assert posts[1].id == 3 and posts[1].error_kind == "malformed JSON" and posts[1].error.startswith("malformed JSON")


def test_read_posts_takes_raw_text_like_mmib_predict(tmp_path):
    """`mmib explain` reads posts with read_posts: a file written for `mmib predict` (raw text) works for both."""
    rows = [{"id": "t", "text": "RT @ann: Paris, at last!"}, {"id": "w", "words": ["Paris", "at", "last"]}]
    path = write_lines(tmp_path / "posts.jsonl", [json.dumps(row) for row in rows])
    posts = read_posts(path)
    assert [post.words for post in posts] == [prepare_post(row).words for row in rows]
    assert posts[0].words == ["RT", "@ann", ":", "Paris", ",", "at", "last", "!"]
    for bad, message in (({"text": "a", "words": ["a"]}, "either text or words"), ({"text": 3}, "'text' must be")):
        with pytest.raises(ValueError, match=rf"posts\.jsonl:1: .*{message}"):
            read_posts(write_lines(tmp_path / "posts.jsonl", [json.dumps(bad)]))
