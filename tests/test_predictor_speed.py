"""The parts of prediction made faster in issue 19: worker count, NER -> RE images, int8 (entity scores: test_crf)."""

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import make_image
from mmib import MMIBPredictor
from mmib.batch_prediction.streaming import default_num_workers
from mmib.checkpoints_mmib import resolve_dtype
from mmib.features import vision_fingerprint
from mmib.quantization_mmib import INT8_PARTS, quantize_int8
from prediction_checkpoints import agreement, save_ner_checkpoint, save_re_checkpoint

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "twitter2017-sample" / "test.jsonl"


@pytest.fixture(scope="module")
def ner_path(tmp_path_factory) -> str:
    return save_ner_checkpoint(tmp_path_factory.mktemp("ner"))


@pytest.mark.parametrize(
    "device, cores, threads, expected",
    [("cpu", 2, 2, 0), ("cpu", 2, 1, 1), ("cpu", 3, 2, 1), ("cpu", 16, 4, 2), ("cpu", 1, 4, 0), ("cuda", 2, 2, 2)],
)
def test_workers_only_where_the_model_leaves_cores_free(monkeypatch, device, cores, threads, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert default_num_workers(torch.device(device)) == expected


def test_ner_to_relations_runs_each_posts_images_through_the_tower_once(ner_path, tmp_path):
    re_path = save_re_checkpoint(tmp_path / "re")
    predictor = MMIBPredictor.from_pretrained(ner_path, relation_model=re_path, dtype="float32", keep_none=True)
    tower = predictor.relation_model.mmib.get_image_features
    seen = []

    def counting(pixel_values):
        seen.append(pixel_values.shape[0])
        return tower(pixel_values)

    predictor.relation_model.mmib.get_image_features = counting
    posts = [
        {"text": "RT @john: John Smith visits London and Paris!", "image": make_image(1), "crops": [make_image(2)]},
        {"text": "john smith meets paris in london", "image": make_image(3)},
    ]
    results = predictor(posts)
    pairs = [len(result["relations"]) for result in results]
    assert min(pairs) >= 2, pairs
    # Three images in all (two whole images and one crop), each through the tower once, whatever the pairs.
    assert sum(seen) == 3
    # The same labels and scores as the relation model on each marked pair with the raw images.
    for post, result in zip(posts, results):
        for relation in result["relations"]:
            head, tail = (result["entities"][relation[key]] for key in ("head", "tail"))
            inputs = predictor.relation_processor(
                result["words"],
                images=post["image"],
                crops=post.get("crops"),
                head_spans=(head["word_start"], head["word_end"]),
                tail_spans=(tail["word_start"], tail["word_end"]),
            )
            with torch.no_grad():
                probabilities = predictor.relation_model(**inputs).logits.softmax(-1)[0]
            assert relation["score"] == pytest.approx(float(probabilities.max()), abs=1e-5)


def test_int8_quantises_the_text_and_fusion_layers_and_leaves_the_rest(ner_path):
    predictor = MMIBPredictor.from_pretrained(ner_path, dtype="float32")
    model = predictor.model
    # The tiny ResNet has no Linear layer; vision transformers (ViT, CLIP) do.
    model.mmib.vision_model.probe = torch.nn.Linear(2, 2)
    fingerprint = vision_fingerprint(model.mmib, predictor.processor.image_processor)
    linear = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    parts = tuple(f"mmib.{part}." for part in INT8_PARTS)
    expected = {name for name in linear if name.startswith(parts)}
    assert any(name.startswith("mmib.text_model.") for name in expected)
    assert any(name.startswith("mmib.text_to_vision_encoder.") for name in expected)
    quantize_int8(model)
    quantized = {
        name for name, module in model.named_modules() if isinstance(module, torch.ao.nn.quantized.dynamic.Linear)
    }
    assert quantized == expected
    assert type(model.classifier) is torch.nn.Linear and type(model.mmib.vision_model.probe) is torch.nn.Linear
    assert vision_fingerprint(model.mmib, predictor.processor.image_processor) == fingerprint


def test_int8_dtype_is_opt_in_and_cpu_only():
    assert resolve_dtype("int8", torch.device("cpu")) == (torch.qint8, "requested")
    assert resolve_dtype("auto", torch.device("cpu"))[0] in (torch.float32, torch.bfloat16)
    model = torch.nn.Linear(2, 2)
    model.to("meta")
    with pytest.raises(ValueError, match="CPU only"):
        quantize_int8(model)


def test_int8_agrees_with_float32_on_the_shipped_test_posts(ner_path, tmp_path):
    """int8 against fp32 on the 102 shipped test posts, with an image on every other post.

    The trained MiniLM checkpoint's agreement is measured by benchmarks/bench_int8.py (RESULTS.md). A random tiny
    model has near ties between labels; its classifier is scaled up so that entities appear, and the bar here is per
    word tag (>= 98%) and per post (>= 90%)."""
    posts = []
    for index, line in enumerate(open(SAMPLE, encoding="utf-8")):
        post = {"words": json.loads(line)["words"]}
        if index % 2:
            post["image"] = make_image(index % 5)
        posts.append(post)
    sharp = MMIBPredictor.from_pretrained(ner_path, dtype="float32")
    with torch.no_grad():
        sharp.model.classifier.weight *= 20
        sharp.model.classifier.bias *= 20
    sharp.model.save_pretrained(tmp_path)
    sharp.processor.save_pretrained(tmp_path)
    predictors = {
        dtype: MMIBPredictor.from_pretrained(str(tmp_path), dtype=dtype, batch_size=16)
        for dtype in ("float32", "int8")
    }
    results = {dtype: predictor(posts) for dtype, predictor in predictors.items()}
    # The fused states feed the head: int8 weights per channel keep them within 0.2% (3-bit weights: 0.8%).
    inputs = predictors["float32"].processor(
        [post["words"] for post in posts[:40]], images=[post.get("image") for post in posts[:40]]
    )
    with torch.no_grad():
        states = {
            dtype: predictor.model(**inputs, output_hidden_states=True).hidden_states[-1]
            for dtype, predictor in predictors.items()
        }
    assert (states["int8"] - states["float32"]).norm() / states["float32"].norm() < 2e-3

    agree = agreement(results["float32"], results["int8"])
    assert agree.entities > 50
    assert agree.tags >= 0.98 and agree.posts >= 0.90, agree
    assert max(agree.score_gaps) < 0.1, max(agree.score_gaps)


def test_int8_end_to_end_through_mmib_predict(ner_path, tmp_path, monkeypatch, capsys):
    """`mmib predict --dtype int8`: the model that predicts holds the dynamic int8 layers, and its scores differ from
    float32's (by more than zero, by little)."""
    from mmib.cli import main

    loaded = []
    from_pretrained = MMIBPredictor.from_pretrained

    def recording(*args, **kwargs):
        loaded.append(from_pretrained(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(MMIBPredictor, "from_pretrained", staticmethod(recording))
    image = tmp_path / "post.png"
    make_image(4).save(image)
    scores = {}
    for dtype in ("float32", "int8"):
        post = ["--text", "RT @john: John Smith visits London and Paris!", "--image", str(image)]
        main(["predict", ner_path, *post, "--dtype", dtype, "--quiet"])
        row = json.loads(capsys.readouterr().out)
        scores[dtype] = [entity["score"] for entity in row["entities"]]
    quantized = [
        name
        for name, module in loaded[1].model.named_modules()
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear)
    ]
    assert not any(isinstance(module, torch.ao.nn.quantized.dynamic.Linear) for module in loaded[0].model.modules())
    assert any(name.startswith("mmib.text_model.") for name in quantized)
    assert any(name.startswith("mmib.text_to_vision_encoder.") for name in quantized)
    assert len(scores["int8"]) == len(scores["float32"]) > 0
    differences = [abs(a - b) for a, b in zip(scores["int8"], scores["float32"])]
    assert 0 < max(differences) < 0.05, differences
