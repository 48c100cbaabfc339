"""Prediction with an image feature cache: same results as the vision tower, hits never opened nor run through the
tower, foreign caches refused, `mmib predict --image_feature_cache`.

The cache is built from the model and processor before they are saved, as a training run builds it, so prediction
from the saved folder meets what saving adds to the checkpoint (`auto_map` in the image processor's settings)."""

import json
import shutil

import pytest
import torch

import mmib.posts_mmib as posts_mmib
from conftest import make_image
from mmib import MMIBPredictor
from mmib.batch_prediction import predict_file
from mmib.cli import main as cli_main
from mmib.features import ImageFeatureStore
from prediction_checkpoints import ner_model_and_processor, save_ner_checkpoint, save_ner_model, save_re_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Images a, b (cached), c (not cached), a renamed copy of a, a JSON-lines input, and the NER checkpoint
    `checkpoint` with its cache `cache` of a and b, built before the checkpoint was saved."""
    folder = tmp_path_factory.mktemp("posts")
    for seed, name in enumerate("abc"):
        make_image(seed, (40 + 8 * seed, 30)).save(folder / f"{name}.png")
    shutil.copy(folder / "a.png", folder / "renamed.png")
    model, processor = ner_model_and_processor()
    paths = [str(folder / "a.png"), str(folder / "b.png")]
    ImageFeatureStore.build(model.mmib, processor.image_processor, paths, cache_dir=str(folder / "cache"))
    save_ner_model(model, processor, folder / "checkpoint")
    rows = [
        {
            "id": "hits and a missed crop",
            "text": "John Smith visits London",
            "image": "a.png",
            "crops": ["b.png", "c.png"],
        },
        {"id": "renamed copy", "text": "Paris and London", "image": "renamed.png", "crops": ["c.png"]},
        {"id": "miss", "text": "Smith in Paris", "image": "c.png", "crops": ["a.png"]},
        {"id": "text only", "text": "John in London"},
        {"id": "all hits", "text": "London London", "image": str(folder / "b.png"), "crops": ["a.png", "b.png"]},
        {"id": "missing file", "text": "John", "image": "missing.png"},
    ]
    (folder / "posts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


# Image slots of posts.jsonl that go through the vision tower: all 10 without the cache, only c.png's 3 with it.
TOWER_IMAGES = {"plain": 10, "cached": 3}


@pytest.fixture(scope="module")
def ner_path(files) -> str:
    return str(files / "checkpoint")


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def assert_same_predictions(cached: list[dict], plain: list[dict]):
    assert len(cached) == len(plain)
    for with_cache, without in zip(cached, plain):
        scores = [entity.pop("score") for entity in with_cache.get("entities", [])]
        expected = [entity.pop("score") for entity in without.get("entities", [])]
        assert with_cache == without
        assert scores == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_cached_features_give_the_towers_predictions(ner_path, files, tmp_path, num_workers):
    plain = MMIBPredictor.from_pretrained(ner_path, dtype="float32", device="cpu", batch_size=3)
    cached = MMIBPredictor.from_pretrained(
        ner_path, dtype="float32", device="cpu", batch_size=3, image_feature_cache=str(files / "cache")
    )
    for name, predictor in (("plain", plain), ("cached", cached)):
        predict_file(
            predictor, str(files / "posts.jsonl"), str(tmp_path / f"{name}.jsonl"), 3, num_workers, quiet=True
        )
    rows = read_jsonl(tmp_path / "cached.jsonl")
    assert sum(len(row.get("entities", [])) for row in rows) > 0
    assert "missing.png" in rows[-1]["error"]
    assert_same_predictions(rows, read_jsonl(tmp_path / "plain.jsonl"))


def test_hits_are_not_opened_and_misses_are(ner_path, files, monkeypatch):
    predictor = MMIBPredictor.from_pretrained(
        ner_path, dtype="float32", device="cpu", image_feature_cache=str(files / "cache")
    )
    opened = []

    def recording_load_image(value, *args, **kwargs):
        opened.append(str(value))
        return original(value, *args, **kwargs)

    original = posts_mmib.load_image
    monkeypatch.setattr(posts_mmib, "load_image", recording_load_image)
    post = predictor.prepare({"text": "a b", "image": "renamed.png", "crops": ["c.png", "b.png"]}, 0, str(files))
    assert opened == [str(files / "c.png")]
    assert post.image is None and post.crops[0] is not None and post.crops[1] is None
    assert sorted(post.cached_features) == [0, 2]


def test_a_cache_of_another_tower_is_refused(files, tmp_path):
    other = save_ner_checkpoint(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="another vision tower or image processor"):
        MMIBPredictor.from_pretrained(other, dtype="float32", device="cpu", image_feature_cache=str(files / "cache"))


def test_cli_image_feature_cache(ner_path, files, tmp_path, tower_images):
    outputs = {}
    for name, extra in (("plain", []), ("cached", ["--image_feature_cache", str(files / "cache")])):
        outputs[name] = tmp_path / f"{name}.jsonl"
        arguments = ["predict", ner_path, "--input", str(files / "posts.jsonl"), "--output", str(outputs[name])]
        cli_main(arguments + ["--dtype", "float32", "--num_workers", "0", "--quiet"] + extra)
        assert sum(tower_images) == TOWER_IMAGES[name], name
        tower_images.clear()
    assert_same_predictions(read_jsonl(outputs["cached"]), read_jsonl(outputs["plain"]))


def test_ner_to_re_uses_the_cache_for_the_relation_model_too(ner_path, files, tmp_path):
    re_path = save_re_checkpoint(tmp_path / "re")  # same seed: the same tower as the NER checkpoint's
    kwargs = {"relation_model": re_path, "dtype": "float32", "device": "cpu"}
    plain = MMIBPredictor.from_pretrained(ner_path, **kwargs)
    cached = MMIBPredictor.from_pretrained(ner_path, image_feature_cache=str(files / "cache"), **kwargs)
    post = {"text": "John Smith visits London and Paris", "image": str(files / "renamed.png")}
    post["crops"] = [str(files / "c.png")]
    with_cache, without = cached(post), plain(post)
    assert cached.prepare(post).cached_features.keys() == {0}
    assert len(without["relations"]) > 0
    assert [r["label"] for r in with_cache["relations"]] == [r["label"] for r in without["relations"]]
    scores = [r["score"] for r in with_cache["relations"]]
    assert scores == pytest.approx([r["score"] for r in without["relations"]], abs=1e-5)


def test_a_bf16_predictor_takes_the_cache_of_its_saved_tower(ner_path, files, tmp_path, tower_images):
    """bf16 casts the tower's convolution weights at loading, after the cache (built with the fp32 tower as saved)
    was checked against them: the cache is taken, its hits skip the tower, and the entities are those of bf16
    without the cache."""
    predictors = {
        name: MMIBPredictor.from_pretrained(ner_path, dtype="bfloat16", device="cpu", batch_size=3, **extra)
        for name, extra in (("plain", {}), ("cached", {"image_feature_cache": str(files / "cache")}))
    }
    assert predictors["cached"].model.mmib.vision_model.dtype == torch.bfloat16
    rows = {}
    for name, predictor in predictors.items():
        predict_file(predictor, str(files / "posts.jsonl"), str(tmp_path / f"{name}.jsonl"), 3, 0, quiet=True)
        assert sum(tower_images) == TOWER_IMAGES[name], name
        tower_images.clear()
        rows[name] = read_jsonl(tmp_path / f"{name}.jsonl")
    assert [row.get("tags") for row in rows["cached"]] == [row.get("tags") for row in rows["plain"]]
