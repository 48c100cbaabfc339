"""The Inference Endpoints handler (issue 23): `handler.py` saved with every NER and RE checkpoint, run where `mmib`
cannot be imported, against `mmib predict` on the same posts; the payload rules and in-memory images."""

import base64
import json
from pathlib import Path

import pytest

import mmib.handler
from conftest import run_without_mmib
from mmib.handler import EndpointHandler, decode_images
from mmib.image_loading_mmib import load_image
from scale_posts import BAD_POSTS, assert_same_row, make_posts, mmib_predict_rows, save_checkpoints, write_jsonl


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[str, str]:
    return save_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def posts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("posts")
    # Absolute image paths: the endpoint has no input file to resolve relative ones against.
    posts = []
    for post in make_posts(folder, 15) + BAD_POSTS:
        post = dict(post)
        if "image" in post:
            post["image"] = str(folder / post["image"])
        if "crops" in post:
            post["crops"] = [str(folder / crop) for crop in post["crops"]]
        posts.append(post)
    return folder, posts, write_jsonl(folder / "posts.jsonl", posts)


HANDLER_SCRIPT = """
import base64, json, sys
sys.path.insert(0, sys.argv[1])
from handler import EndpointHandler
posts = json.loads(open(sys.argv[2]).read())
relation = sys.argv[3] if len(sys.argv) > 3 else None
handler = EndpointHandler(sys.argv[1], relation_model=relation, dtype="float32")
# The first post's image as base64 data, the others as paths.
first = dict(posts[0])
first["image"] = base64.b64encode(open(first["image"], "rb").read()).decode()
rows = handler({"inputs": [first] + posts[1:], "parameters": {"batch_size": 4}})
single = handler({"inputs": posts[0]})
print(json.dumps({"rows": rows, "single": single, "module": type(handler.predictor).__module__}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("with_relations", [False, True], ids=["ner", "ner-re"])
def test_handler_without_mmib_gives_the_rows_of_mmib_predict(checkpoints, posts, tmp_path, with_relations):
    ner, re = checkpoints
    folder, items, posts_file = posts
    items = [items[1], items[0], *items[2:]]
    (tmp_path / "posts.json").write_text(json.dumps(items))
    expected = mmib_predict_rows(ner, posts_file, relation_model=re if with_relations else None)
    arguments = [ner, str(tmp_path / "posts.json")] + ([re] if with_relations else [])
    result = run_without_mmib(HANDLER_SCRIPT, *arguments, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert "transformers_modules" in output["module"]
    rows = output["rows"]
    assert [row["id"] for row in rows] == [item["id"] for item in items]
    for row in rows:
        assert_same_row(row, expected[row["id"]])
    assert len(output["single"]) == 1
    assert_same_row(output["single"][0], expected[items[0]["id"]])
    assert any("objects" in row for row in rows)
    assert any(row.get("relations") for row in rows) == with_relations


def test_payload_rules(checkpoints, posts):
    handler = EndpointHandler(checkpoints[0], dtype="float32")
    with pytest.raises(ValueError, match='"inputs"'):
        handler({"posts": []})
    with pytest.raises(ValueError, match="Unknown parameters \\['beam'\\]"):
        handler({"inputs": "a b", "parameters": {"beam": 2}})
    with pytest.raises(ValueError, match="a post or a list of posts"):
        handler({"inputs": 3})
    rows = handler({"inputs": ["John Smith", {"id": "x", "text": "a", "image": "bm90IGFuIGltYWdl"}]})
    assert [row["id"] for row in rows] == [0, "x"]
    assert "tags" in rows[0]
    assert rows[1] == {
        "id": "x",
        "error": "image: neither an existing file nor base64 image data (cannot identify image file "
        + rows[1]["error"].split("cannot identify image file ", 1)[1],
    }
    assert handler.predictor.batch_size == 32
    handler({"inputs": "a b", "parameters": {"batch_size": 1}})
    assert handler.predictor.batch_size == 32, "parameters apply to one call only"
    with pytest.raises(ValueError, match="need a relation model"):
        handler({"inputs": "a b", "parameters": {"keep_none": True}})


def test_images_in_memory_decode_like_their_files(posts):
    folder, items, _ = posts
    path = items[1]["image"]
    data = open(path, "rb").read()
    expected = load_image(path)
    for value in (data, base64.b64encode(data).decode(), "data:image/jpeg;base64," + base64.b64encode(data).decode()):
        decoded = decode_images({"image": value, "crops": [{"bytes": data, "path": None}]}, 10**9)
        for image in (decoded["image"], decoded["crops"][0]):
            assert load_image(image).tobytes() == expected.tobytes()
    assert decode_images({"image": path}, 10**9)["image"] == path
    with pytest.raises(ValueError, match="crops\\[0\\]: cannot decode the image data .*more than the limit of 100"):
        decode_images({"crops": [data]}, 100)


def test_saved_checkpoints_carry_the_handler(checkpoints):
    for checkpoint in checkpoints:
        folder = Path(checkpoint)
        assert (folder / "handler.py").read_bytes() == Path(mmib.handler.__file__).read_bytes()
        assert (folder / "predictor_mmib.py").is_file() and (folder / "posts_mmib.py").is_file()
