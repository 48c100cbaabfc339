"""Posts at volume for the Ray, endpoint and benchmark tests: hundreds of posts built from the shipped Twitter-2017
sample (its words and its 15 images), tiny NER (with a recorded DETR extractor) and RE checkpoints saved as
`mmib train` saves them, `mmib predict`'s rows for a post file, and the row comparison."""

import base64
import json
import shutil
from pathlib import Path

import pytest

from detector_folders import save_detr
from mmib.cli import main as cli_main
from mmib.integrations.endpoints import save_endpoint_handler
from mmib.object_extraction_mmib import MMIBObjectExtractor
from prediction_checkpoints import ner_model_and_processor, save_ner_model, save_re_checkpoint

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "twitter2017-sample"
IMAGES = sorted((SAMPLE / "images").glob("*.jpg"))


def save_checkpoints(folder: Path) -> tuple[str, str]:
    """`(ner, re)`: tiny checkpoints with their endpoint handler; the NER one records a tiny DETR extractor, so that
    posts with an image and no crops get extracted crops and `objects`."""
    detr = save_detr(folder / "detr")
    model, processor = ner_model_and_processor()
    processor.object_extraction = MMIBObjectExtractor.from_pretrained(detr, num_crops=2).to_dict()
    ner = save_ner_model(model, processor, folder / "ner")
    re = save_re_checkpoint(folder / "re")
    for checkpoint in (ner, re):
        save_endpoint_handler(checkpoint)
    return ner, re


def sample_words() -> list[list[str]]:
    return [
        json.loads(line)["words"]
        for split in ("train", "validation", "test")
        for line in (SAMPLE / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    ]


def make_posts(folder: Path, count: int) -> list[dict]:
    """`count` posts with ids `p0`, `p1`, ...: in turn text only, an image, an image and two crops, an image to be
    detected, a raw `text`; images are paths relative to `folder` (the sample images are copied into
    `folder/images`)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for image in IMAGES:
        shutil.copyfile(image, folder / "images" / image.name)
        images.append(f"images/{image.name}")
    words = sample_words()
    posts = []
    for index in range(count):
        post = {"id": f"p{index}", "words": words[index % len(words)]}
        kind = index % 5
        if kind in (1, 2, 3):
            post["image"] = images[index % len(images)]
        if kind == 2:
            post["crops"] = [images[(index + 1) % len(images)], images[(index + 2) % len(images)]]
        if kind == 4:
            post = {"id": post["id"], "text": " ".join(post["words"])}
        posts.append(post)
    return posts


BAD_POSTS = [
    {"id": "bad-missing-image", "text": "John Smith in London", "image": "images/missing.jpg"},
    {"id": "bad-empty", "words": []},
    {"id": "bad-text-type", "text": 12},
]


def write_jsonl(path: Path, posts: list[dict], extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps(post) for post in posts] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def with_image_bytes(post: dict, folder: Path, as_base64: bool = False) -> dict:
    """`post` with its image and crops as the encoded file bytes (or base64 text) instead of paths."""

    def encode(name: str) -> bytes | str:
        data = (folder / name).read_bytes()
        return base64.b64encode(data).decode() if as_base64 else data

    post = dict(post)
    if "image" in post:
        post["image"] = encode(post["image"])
    if "crops" in post:
        post["crops"] = [encode(crop) for crop in post["crops"]]
    return post


def mmib_predict_rows(ner: str, posts_file: Path, relation_model: str | None = None) -> dict:
    """`mmib predict`'s rows for a post file, by id."""
    output = posts_file.with_suffix(".predicted.jsonl")
    arguments = ["predict", ner, "--input", str(posts_file), "--output", str(output), "--quiet", "--dtype", "float32"]
    cli_main(arguments + (["--relation_model", relation_model] if relation_model else []))
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    return {row["id"]: row for row in rows}


def without_nulls(row: dict) -> dict:
    return {key: value for key, value in row.items() if value is not None}


def assert_same_row(row: dict, expected: dict) -> None:
    """The row of another engine against `mmib predict`'s: the same fields (nulls dropped), scores within 1e-5,
    the error message without `mmib predict`'s `line N: ` prefix."""
    row = without_nulls(row)
    assert set(row) == set(expected), (row.get("id"), sorted(row), sorted(expected))
    for key, value in expected.items():
        if key == "error":
            assert value.split(": ", 1)[1] == row[key] if value.startswith("line ") else value == row[key]
        else:
            assert row[key] == pytest.approx(value, abs=1e-5) if key == "score" else _approx(row[key], value), key


def _approx(value, expected) -> bool:
    """Equality with every float within 1e-5."""
    if isinstance(expected, dict):
        return (
            isinstance(value, dict)
            and set(value) == set(expected)
            and all(_approx(value[key], expected[key]) for key in expected)
        )
    if isinstance(expected, list):
        return isinstance(value, list) and len(value) == len(expected) and all(map(_approx, value, expected))
    if isinstance(expected, float):
        return abs(value - expected) <= 1e-5
    return value == expected
