"""Object extraction (paper §III-B2) on tiny random detectors saved to folders and loaded through `from_pretrained`.

The DETR detectors have their last box and class layers set to constants, so every query predicts one known box
with one known score: boxes, clipping, rounding and crops are checked against hand computations, in float32 (the
default `dtype="auto"` is bfloat16 on a CPU with AVX512-BF16: its boxes are checked against float32's).
"""

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps
from real_size_detectors import letter_clip_tokenizer
from transformers import (
    BertConfig,
    BertTokenizer,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
    Owlv2Config,
    Owlv2ForObjectDetection,
    Owlv2ImageProcessor,
    Owlv2Processor,
    SwinConfig,
)

from detector_folders import BOX, count_calls, detr_score, exif_rotated_jpeg, hand_box, noise_image, save_detr
from mmib.crop_extraction import extract_objects
from mmib.crop_filling_mmib import CropFiller
from mmib.data import load_jsonl, load_twitter_ner
from mmib.image_loading_mmib import UnreadableImageError
from mmib.object_boxes_mmib import DetectedObject, box_iou, select_objects
from mmib.object_detectors_mmib import load_detector
from mmib.object_extraction_mmib import MMIBObjectExtractor
from mmib.object_queries_mmib import post_queries
from mmib.object_settings_mmib import DETECTION_FIELDS, ObjectExtractionSettings

FIELDS = [item.name for item in dataclasses.fields(ObjectExtractionSettings)]

WORDS = ["cat", "dog", "man", "ball", "kevin", "durant", "messi", "paris", "car", "tree", "psg", "joins"]


@pytest.fixture(scope="module")
def detr_dir(tmp_path_factory) -> str:
    return save_detr(tmp_path_factory.mktemp("detr"))


@pytest.fixture(scope="module")
def gdino_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + WORDS
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(vocab)})
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            image_size=64,
            patch_size=4,
            embed_dim=8,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            window_size=2,
            out_features=["stage2", "stage3", "stage4"],
        ),
        text_config=BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            max_position_embeddings=64,
        ),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=20,
        max_text_len=32,
        num_feature_levels=3,
        encoder_n_points=2,
        decoder_n_points=2,
    )
    path = tmp_path_factory.mktemp("grounding-dino")
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 48, "longest_edge": 64})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def owlv2_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    tokenizer = letter_clip_tokenizer()
    config = Owlv2Config(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        projection_dim=16,
    )
    path = tmp_path_factory.mktemp("owlv2")
    Owlv2ForObjectDetection(config).save_pretrained(path)
    image_processor = Owlv2ImageProcessor(size={"height": 32, "width": 32})
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return str(path)


# --------------------------------------------------------------------------------------------------------------
# Queries


def test_post_queries_rule():
    words = "RT @nba : Kevin Durant and the Warriors win in #Oakland http://t.co/x 2017 ! win WIN cats,".split()
    assert post_queries(words) == ["Kevin Durant", "Warriors", "win", "Oakland", "cats"]
    assert post_queries(words, max_queries=2) == ["Kevin Durant", "Warriors"]
    # Relation: head and tail entity texts first, without '@' / '#', even beyond the cap.
    words = "great night as Messi joins @PSG in Paris".split()
    assert post_queries(words, head_span=[3, 4], tail_span=[5, 6], max_queries=3) == ["Messi", "PSG", "great"]
    assert post_queries(["the", "@x", "http://a.b", "12", "!!", "of"]) == []


# --------------------------------------------------------------------------------------------------------------
# Selection against brute force


def brute_force_selection(boxes, scores, queries, size, threshold, nms_iou, min_size, num_crops):
    width, height = size
    candidates = []
    for (x0, y0, x1, y1), score, query in zip(boxes, scores, queries):
        box = (
            max(0, math.floor(x0)),
            max(0, math.floor(y0)),
            min(width, math.ceil(x1)),
            min(height, math.ceil(y1)),
        )
        if score > threshold and box[2] - box[0] >= min_size and box[3] - box[1] >= min_size:
            candidates.append((score, box, query))
    candidates.sort(key=lambda item: (-item[0], item[1], item[2]))

    def iou(a, b):
        inter_w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
        inter_h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = inter_w * inter_h
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    kept = []
    for candidate in candidates:
        if all(iou(candidate[1], other[1]) <= nms_iou for other in kept):
            kept.append(candidate)
    return [(box, score, query) for score, box, query in kept[:num_crops]]


@pytest.mark.parametrize("seed", range(25))
def test_selection_matches_brute_force(seed):
    rng = random.Random(seed)
    size = (rng.randint(20, 300), rng.randint(20, 300))
    count = rng.randint(0, 40)
    boxes = []
    for _ in range(count):
        x0, y0 = rng.uniform(-30, size[0]), rng.uniform(-30, size[1])
        boxes.append((x0, y0, x0 + rng.uniform(0, 150), y0 + rng.uniform(0, 150)))
    # Few distinct scores, so ties are common and their order matters.
    scores = [rng.choice([0.2, 0.3, 0.5, 0.7, 0.9]) for _ in range(count)]
    queries = [rng.choice(["a", "b", "c"]) for _ in range(count)]
    settings = dict(
        threshold=0.3,
        nms_iou=rng.choice([0.3, 0.5, 0.7]),
        min_size=rng.choice([1, 8]),
        num_crops=rng.choice([1, 4, 50]),
    )
    selected = select_objects(
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(scores), queries, size, **settings
    )
    # float32 inputs as a detector gives them; the brute force reads the same float32 values.
    boxes32 = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4).double().tolist()
    scores32 = torch.tensor(scores).double().tolist()
    expected = brute_force_selection(boxes32, scores32, queries, size, **settings)
    assert [(o.box, o.score, o.query) for o in selected] == expected


def test_box_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float64)
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0], [20.0, 20.0, 30.0, 30.0], [3.0, 3.0, 3.0, 9.0]], dtype=torch.float64)
    assert box_iou(a, b).tolist() == [[25 / 175, 0.0, 0.0]]


# --------------------------------------------------------------------------------------------------------------
# Boxes and crops through a real detector


def test_detr_box_and_crop_by_hand(detr_dir):
    extractor = MMIBObjectExtractor.from_pretrained(detr_dir, threshold=0.5, dtype="float32")
    image = noise_image((101, 57))
    (objects,) = extractor([image])
    expected = hand_box(image.size)
    assert expected == (35, 28, 66, 57)  # 35.35 -> 35, 28.5 -> 28, 65.65 -> 66, 62.7 -> clipped to 57
    # Every query predicts the same box: NMS leaves one.
    assert [o.box for o in objects] == [expected]
    assert objects[0].score == pytest.approx(detr_score(), abs=1e-6)
    assert objects[0].query == "cat"
    assert objects[0].crop.tobytes() == image.crop(expected).tobytes()
    assert objects[0].to_dict() == {"box": list(expected), "score": objects[0].score, "query": "cat"}


def test_threshold_and_no_box(tmp_path):
    score = detr_score((0.0, 0.0, 0.0, 0.0))  # 0.25
    detector = save_detr(tmp_path / "flat", class_logits=(0.0, 0.0, 0.0, 0.0))
    below = MMIBObjectExtractor.from_pretrained(detector, threshold=score + 1e-3)
    assert below([noise_image((64, 64))]) == [[]]
    assert below.stats["without_objects"] == 1 and below.stats["detected_images"] == 1
    above = MMIBObjectExtractor.from_pretrained(detector, threshold=score - 1e-3)
    assert len(above([noise_image((64, 64))])[0]) == 1


def test_exif_rotated_jpeg(detr_dir, tmp_path):
    path = exif_rotated_jpeg(tmp_path / "rotated.jpg", (83, 41))
    extractor = MMIBObjectExtractor.from_pretrained(detr_dir, dtype="float32")
    (objects,) = extractor([path])
    with Image.open(path) as stored:
        upright = ImageOps.exif_transpose(stored).convert("RGB")
    assert upright.size == (41, 83)
    assert hand_box((41, 83)) == (14, 41, 27, 83)
    assert [o.box for o in objects] == [(14, 41, 27, 83)]
    assert objects[0].crop.tobytes() == upright.crop((14, 41, 27, 83)).tobytes()


def test_grayscale_rgba_huge_and_banner_images(detr_dir):
    # float32: to the pixel on a 6001-pixel side (bfloat16 boxes are within 0.4% of the side, see below).
    extractor = MMIBObjectExtractor.from_pretrained(detr_dir, dtype="float32")
    gray = noise_image((101, 57), mode="L")
    rgba = noise_image((101, 57), mode="RGBA")
    rgba.putalpha(0)  # fully transparent: MMIB's rule composites on white
    huge = noise_image((6001, 4001), seed=1)
    banner = noise_image((1001, 31), seed=2)  # beyond MMIB's aspect-ratio limit of 20
    results = extractor([gray, rgba, huge, banner])
    for image, objects in zip([gray, rgba, huge, banner], results):
        (obj,) = objects
        assert obj.box == hand_box(image.size)
        assert obj.crop.mode == "RGB"
    assert results[0][0].crop.tobytes() == gray.convert("RGB").crop(results[0][0].box).tobytes()
    assert set(results[1][0].crop.getdata()) == {(255, 255, 255)}
    assert results[2][0].box == (2100, 2000, 3901, 4001)
    assert results[2][0].crop.tobytes() == huge.crop((2100, 2000, 3901, 4001)).tobytes()
    assert results[3][0].crop.tobytes() == banner.crop(hand_box(banner.size)).tobytes()


# --------------------------------------------------------------------------------------------------------------
# Precision, batching and input size


def nearest_box_distance(boxes, others) -> float:
    """The largest distance in pixels (max over coordinates) from a box of `boxes` to its nearest in `others`."""
    return max(min(max(abs(a - b) for a, b in zip(box, other)) for other in others) for box in boxes)


@pytest.mark.parametrize("family", ["detr", "grounding-dino"])
def test_bfloat16_boxes_are_within_a_pixel_of_float32(family, gdino_dir, tmp_path):
    detector = save_detr(tmp_path / "random-detr", box=None) if family == "detr" else gdino_dir
    images = [noise_image((160, 120), seed=20), noise_image((97, 181), seed=21)]
    words = [["cat", "dog", "ball"], ["Kevin", "Durant", "tree"]]
    every_box = dict(threshold=0.0, min_size=0, nms_iou=1.0, num_crops=100)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        extractor = MMIBObjectExtractor.from_pretrained(detector, dtype=dtype, **every_box)
        assert extractor.dtype == getattr(torch, dtype) and extractor.settings.dtype == dtype
        runs[dtype] = extractor(images, words=words)
    for full, half in zip(runs["float32"], runs["bfloat16"]):
        assert len(full) == len(half) > 2
        assert nearest_box_distance([o.box for o in full], [o.box for o in half]) <= 1
        assert nearest_box_distance([o.box for o in half], [o.box for o in full]) <= 1
        assert len({o.box for o in full}) > 2, "the boxes depend on the pixels"


def test_a_bfloat16_detector_is_post_processed_in_float32(detr_dir):
    """On a 6001-pixel side, bf16 arithmetic after the detector would move the box by tens of pixels (bf16 holds
    6001 as 6016); in fp32 the box is the hand box of the detector's own bf16 prediction."""
    huge = noise_image((6001, 4001), seed=1)
    (objects,) = MMIBObjectExtractor.from_pretrained(detr_dir, dtype="bfloat16")([huge])
    predicted = tuple(torch.tensor(BOX).logit().bfloat16().sigmoid().double().tolist())
    assert max(abs(a - b) for a, b in zip(objects[0].box, hand_box(huge.size, predicted))) <= 1


def test_auto_dtype_is_bfloat16_where_it_is_native(detr_dir, gdino_dir, monkeypatch):
    import mmib.object_detectors_mmib as detectors

    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(detectors, "native_bf16", lambda device, native=native: native)
        for extractor in (
            MMIBObjectExtractor.from_pretrained(detr_dir),
            MMIBObjectExtractor(
                *load_detector(detr_dir, dtype="float32"), ObjectExtractionSettings(detector=detr_dir)
            ),
        ):
            assert extractor.dtype == expected and extractor.settings.dtype == str(expected).removeprefix("torch.")
            assert extractor([noise_image((50, 40))])[0][0].query == "cat"
        # Deformable attention samples at bf16 positions (NaN on the CPU): float32 under auto, bf16 when asked.
        assert MMIBObjectExtractor.from_pretrained(gdino_dir).dtype == torch.float32
        assert MMIBObjectExtractor.from_pretrained(gdino_dir, dtype="bfloat16").dtype == torch.bfloat16


def test_prediction_runs_its_detector_by_the_auto_rule_unless_asked_for_float32(detr_dir, gdino_dir, monkeypatch):
    """A predictor computing in bf16 must not force bf16 on a deformable-attention detector (NaN on the CPU)."""
    import mmib.object_detectors_mmib as detectors

    monkeypatch.setattr(detectors, "native_bf16", lambda device: True)
    for detector, auto in ((detr_dir, torch.bfloat16), (gdino_dir, torch.float32)):
        for compute, expected in ((torch.bfloat16, auto), (torch.float32, torch.float32)):
            extractor = CropFiller(2, None, detector).extractor(torch.device("cpu"), compute)
            assert extractor.dtype == expected, (detector, compute)


def test_only_images_of_one_size_share_a_detector_call(detr_dir):
    images = [noise_image((90, 70), seed=30), noise_image((50, 120), seed=31), noise_image((90, 70), seed=32)]
    images += [noise_image((50, 120), seed=33), noise_image((90, 70), seed=34)]
    random_detector = save_detr(Path(detr_dir).parent / "random-batching", box=None)
    one_by_one = MMIBObjectExtractor.from_pretrained(random_detector, batch_size=1, dtype="float32", min_size=1)
    alone = one_by_one(images)
    extractor = MMIBObjectExtractor.from_pretrained(random_detector, batch_size=2, dtype="float32", min_size=1)
    shapes = []
    forward = extractor.model.forward

    def recorded(**inputs):
        shapes.append((tuple(inputs["pixel_values"].shape), bool(inputs["pixel_mask"].all())))
        return forward(**inputs)

    extractor.model.forward = recorded
    batched = extractor(images)
    # (90, 70) -> 48 x 61 pixels, (50, 120) -> 27 x 64: never padded to each other (the mask is all ones).
    assert shapes == [((2, 3, 48, 61), True), ((1, 3, 48, 61), True), ((2, 3, 64, 27), True)]
    assert [[(o.box, o.query) for o in objects] for objects in batched] == [
        [(o.box, o.query) for o in objects] for objects in alone
    ]
    assert [o.score for objects in batched for o in objects] == pytest.approx(
        [o.score for objects in alone for o in objects], abs=1e-5
    )


def test_input_size_sets_the_processors_edges_and_is_recorded(detr_dir, owlv2_dir):
    extractor = MMIBObjectExtractor.from_pretrained(detr_dir, input_size=[24, 40])
    shapes = []
    forward = extractor.model.forward
    extractor.model.forward = lambda **inputs: shapes.append(tuple(inputs["pixel_values"].shape)) or forward(**inputs)
    extractor([noise_image((101, 57)), noise_image((30, 60))])
    # 101 x 57: short edge 24 would make the long one 42 > 40: the long edge is 40, the short 57 * 40 / 101 -> 23.
    assert sorted(shapes) == [(1, 3, 23, 40), (1, 3, 40, 20)]
    assert extractor.to_dict()["input_size"] == [24, 40]
    assert MMIBObjectExtractor.from_dict(extractor.to_dict()).adapter.size == {"shortest_edge": 24, "longest_edge": 40}
    assert MMIBObjectExtractor.from_pretrained(owlv2_dir).to_dict()["input_size"] is None
    with pytest.raises(ValueError, match="fixed size"):
        MMIBObjectExtractor.from_pretrained(owlv2_dir, input_size=[24, 40])


# --------------------------------------------------------------------------------------------------------------
# Text-queried detectors, repeatability, cache, settings


def test_grounding_dino_same_crops_in_two_runs(gdino_dir):
    images = [noise_image((90, 70), seed=4), noise_image((50, 120), seed=5)]
    words = [["a", "cat", "and", "a", "dog"], ["Kevin", "Durant", "with", "the", "ball"]]
    runs = []
    for _ in range(2):
        extractor = MMIBObjectExtractor.from_pretrained(gdino_dir, threshold=0.0, min_size=1, batch_size=2)
        results = extractor(images, words=words)
        runs.append([[(o.box, o.score, o.query, o.crop.tobytes()) for o in objects] for objects in results])
    assert runs[0] == runs[1]
    assert all(len(objects) == 4 for objects in runs[0])
    for image, objects in zip(images, runs[0]):
        for box, _, _, crop in objects:
            assert 0 <= box[0] < box[2] <= image.width and 0 <= box[1] < box[3] <= image.height
            assert crop == image.crop(box).tobytes()


def test_grounding_dino_without_a_box_above_the_threshold(gdino_dir):
    # The processor labels an empty selection with one empty text: no box, no object, no error.
    extractor = MMIBObjectExtractor.from_pretrained(gdino_dir, threshold=1.0)
    assert extractor([noise_image((60, 60))], words=[["cat", "dog"]]) == [[]]
    assert extractor.stats["without_objects"] == 1


def test_grounding_dino_post_without_query_is_not_detected(gdino_dir):
    extractor = MMIBObjectExtractor.from_pretrained(gdino_dir)
    calls = count_calls(extractor)
    assert extractor([noise_image((40, 40))], words=[["the", "@who", "http://t.co"]]) == [[]]
    assert calls[0] == 0 and extractor.stats["no_query"] == 1 and extractor.stats["without_objects"] == 1


def test_owlv2_boxes_belong_to_their_image_queries(owlv2_dir):
    extractor = MMIBObjectExtractor.from_pretrained(owlv2_dir, threshold=0.0, min_size=1, nms_iou=1.0, batch_size=2)
    words = [["cat", "dog", "ball", "tree"], ["man"]]
    results = extractor([noise_image((80, 60), seed=6), noise_image((60, 80), seed=7)], words=words)
    assert [len(objects) for objects in results] == [4, 4]
    # The second image's query list is padded to four by the processor: no box may come from the padding.
    assert {o.query for o in results[1]} == {"man"}
    assert {o.query for o in results[0]} <= {"cat", "dog", "ball", "tree"}


def test_cache_detects_a_renamed_copy_once(detr_dir, tmp_path):
    original = tmp_path / "a.png"
    noise_image((101, 57), seed=8).save(original)
    renamed = tmp_path / "retweet.png"
    shutil.copyfile(original, renamed)
    cache = tmp_path / "cache"
    extractor = MMIBObjectExtractor.from_pretrained(detr_dir, cache_dir=cache)
    calls = count_calls(extractor)
    first = extractor([original])
    second = extractor([renamed])
    assert calls[0] == 1 and extractor.stats["cache_hits"] == 1

    def seen(objects):
        return [(o.box, o.score, o.crop.tobytes()) for o in objects]

    assert seen(first[0]) == seen(second[0])
    # Two copies in one call: one detection. A fresh extractor on the same disk cache: none.
    both = MMIBObjectExtractor.from_pretrained(detr_dir)
    both_calls = count_calls(both)
    both([original, renamed])
    assert both_calls[0] == 1 and both.stats["detected_images"] == 1
    fresh = MMIBObjectExtractor.from_pretrained(detr_dir, cache_dir=cache)
    fresh_calls = count_calls(fresh)
    assert [o.box for o in fresh([renamed])[0]] == [o.box for o in first[0]]
    assert fresh_calls[0] == 0
    # Other settings are another key.
    other = MMIBObjectExtractor.from_pretrained(detr_dir, cache_dir=cache, min_size=2)
    other_calls = count_calls(other)
    other([renamed])
    assert other_calls[0] == 1


def test_settings_round_trip(gdino_dir, detr_dir):
    extractor = MMIBObjectExtractor.from_pretrained(
        gdino_dir,
        query_rule="categories",
        categories=["cat", "dog"],
        threshold=0.05,
        nms_iou=0.4,
        min_size=3,
        num_crops=2,
        text_threshold=0.2,
    )
    settings = json.loads(json.dumps(extractor.to_dict()))
    assert settings == {
        "detector": gdino_dir, "revision": None, "kind": "zero-shot", "model_type": "grounding-dino",
        "query_rule": "categories", "categories": ["cat", "dog"], "max_queries": 16, "threshold": 0.05,
        "text_threshold": 0.2, "nms_iou": 0.4, "min_size": 3, "input_size": [48, 64], "num_crops": 2,
    }  # fmt: skip
    restored = MMIBObjectExtractor.from_dict(settings)
    assert restored.to_dict() == settings
    image = noise_image((70, 70), seed=9)
    assert [(o.box, o.score) for o in restored([image])[0]] == [(o.box, o.score) for o in extractor([image])[0]]
    with pytest.raises(ValueError, match="Unknown object-extraction settings"):
        MMIBObjectExtractor.from_dict({**settings, "thresold": 0.1})
    with pytest.raises(ValueError, match="settings record a closed-set detr"):
        MMIBObjectExtractor.from_dict({**settings, "kind": "closed-set", "model_type": "detr"})
    with pytest.raises(ValueError, match="callable query_rule cannot be recorded"):
        MMIBObjectExtractor.from_pretrained(gdino_dir, query_rule=lambda words, head, tail: ["cat"]).to_dict()


def test_a_record_of_the_previous_layout_loads(detr_dir):
    """The `object_extraction` record that train_mmib.py saved with checkpoints before the settings object."""
    record = {
        "detector": detr_dir, "revision": None, "kind": "closed-set", "model_type": "detr", "query_rule": "all",
        "categories": None, "max_queries": 16, "threshold": 0.5, "text_threshold": 0.25, "nms_iou": 0.5,
        "min_size": 8, "num_crops": 4,
    }  # fmt: skip
    # It loads; today's record adds the input size the processor resized to.
    current = {**record, "input_size": [48, 64]}
    assert MMIBObjectExtractor.from_pretrained(detr_dir).to_dict() == current
    assert MMIBObjectExtractor.from_dict(json.loads(json.dumps(record))).to_dict() == current


def test_cache_key_changes_with_each_setting_that_changes_detections(detr_dir, tmp_path):
    model, processor = load_detector(detr_dir)
    copy = shutil.copytree(detr_dir, tmp_path / "copy")
    base = ObjectExtractionSettings(detector=detr_dir, dtype="float32")
    changed = {
        "detector": str(copy),
        "revision": "v2",
        "query_rule": "categories",
        "categories": ["dog"],
        "max_queries": 3,
        "threshold": 0.25,
        "text_threshold": 0.5,
        "nms_iou": 0.75,
        "min_size": 2,
        "input_size": [40, 60],
        "num_crops": 2,
        "dtype": "bfloat16",
    }
    same = {"trust_remote_code": True, "batch_size": 3, "device": "cpu", "cache_dir": str(tmp_path / "cache")}
    assert set(changed) == set(DETECTION_FIELDS) and set(changed) | set(same) == set(FIELDS)

    def key(**changes):
        settings = base.replace(**changes)
        if "categories" in changes:
            settings = settings.replace(query_rule="categories")
        return MMIBObjectExtractor(model, processor, settings).cache_key("0" * 64, ["cat"])

    reference = key()
    assert reference == key() == key(query_rule="all", threshold=0.5), "resolved defaults are the same settings"
    for name, value in changed.items():
        if name == "query_rule":
            value_key = key(query_rule="categories", categories=["cat"])
            assert value_key != key(categories=["dog"]), "categories"
        else:
            value_key = key(**{name: value})
        assert value_key != reference, name
    for name, value in same.items():
        assert key(**{name: value}) == reference, name


def test_closed_set_query_rules(detr_dir):
    with pytest.raises(ValueError, match="closed-set detector"):
        MMIBObjectExtractor.from_pretrained(detr_dir, query_rule="post")
    with pytest.raises(ValueError, match=r"\['horse'\] are not classes"):
        MMIBObjectExtractor.from_pretrained(detr_dir, query_rule="categories", categories=["horse"])
    dogs_only = MMIBObjectExtractor.from_pretrained(detr_dir, query_rule="categories", categories=["dog"])
    assert dogs_only([noise_image((50, 50))]) == [[]]  # every box is a cat
    cats = MMIBObjectExtractor.from_pretrained(detr_dir, query_rule="categories", categories=["cat"])
    assert [o.query for o in cats([noise_image((50, 50))])[0]] == ["cat"]


def test_unreadable_image(detr_dir, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    extractor = MMIBObjectExtractor.from_pretrained(detr_dir)
    with pytest.raises(UnreadableImageError, match="broken.jpg"):
        extractor([broken])
    results = extractor([broken, noise_image((50, 50)), tmp_path / "missing.jpg"], on_unreadable="mask")
    assert results[0] is None and results[2] is None and len(results[1]) == 1
    assert extractor.stats["unreadable"] == 2


# --------------------------------------------------------------------------------------------------------------
# Data sets


def write_posts(folder: Path) -> Path:
    """Six JSON-lines RE posts: 3 to detect (two share one image's content), own crops, no image, unreadable."""
    (folder / "images").mkdir(parents=True)
    noise_image((101, 57), seed=10).save(folder / "images" / "a.png")
    shutil.copyfile(folder / "images" / "a.png", folder / "images" / "a-retweet.png")
    noise_image((80, 90), seed=11).save(folder / "images" / "b.png")
    noise_image((30, 30), seed=12).save(folder / "images" / "own_crop.png")
    (folder / "images" / "broken.jpg").write_bytes(b"not an image")
    rows = [
        {"id": "p0", "image": "images/a.png"},
        {"id": "p1", "image": "images/a-retweet.png"},
        {"id": "p2", "image": "images/b.png"},
        {"id": "p3", "image": "images/b.png", "crops": ["images/own_crop.png"]},
        {"id": "p4", "image": None},
        {"id": "p5", "image": "images/broken.jpg"},
    ]
    path = folder / "posts.jsonl"
    with path.open("w") as handle:
        for row in rows:
            row.update(words=["Messi", "joins", "PSG"], head=[0, 1], tail=[2, 3], relation="member_of")
            handle.write(json.dumps(row) + "\n")
    return path


def test_extract_objects_jsonl(detr_dir, tmp_path):
    source = write_posts(tmp_path / "data")
    extractor = MMIBObjectExtractor.from_pretrained(detr_dir, batch_size=2, dtype="float32")
    report = extract_objects(extractor, source, tmp_path / "out", show_progress=False)
    counts = {key: getattr(report, key) for key in ("posts", "own_crops", "no_image", "unreadable", "with_objects")}
    assert counts == {"posts": 6, "own_crops": 1, "no_image": 1, "unreadable": 1, "with_objects": 3}
    assert report.unreadable_files == [str(tmp_path / "data" / "images" / "broken.jpg")]
    assert extractor.stats["detected_images"] == 2  # the retweet is a cache hit
    data = load_jsonl({"test": report.jsonl_files["posts"]}, task="re")["test"]
    assert [len(crops) for crops in data["crops"]] == [1, 1, 1, 1, 0, 0]
    with Image.open(data["crops"][2][0]) as crop, Image.open(tmp_path / "data" / "images" / "b.png") as image:
        assert crop.tobytes() == image.crop(hand_box(image.size)).tobytes()
    assert data["crops"][3] == [str(tmp_path / "data" / "images" / "own_crop.png")]
    rows = [json.loads(line) for line in Path(report.jsonl_files["posts"]).read_text().splitlines()]
    expected = {"box": list(hand_box((101, 57))), "score": pytest.approx(detr_score()), "query": "cat"}
    assert rows[0]["objects"] == [expected]
    assert json.loads((tmp_path / "out" / "extraction_report.json").read_text())["unreadable"] == 1


def test_extract_objects_resumes_after_interrupt(detr_dir, tmp_path):
    source = write_posts(tmp_path / "data")
    extractor = MMIBObjectExtractor.from_pretrained(detr_dir, batch_size=1)
    calls = count_calls(extractor)
    forward = extractor.model.forward

    def interrupted(*args, **kwargs):
        if calls[0] == 1:
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    extractor.model.forward = interrupted
    with pytest.raises(KeyboardInterrupt):
        extract_objects(extractor, source, tmp_path / "out", show_progress=False)
    records = sorted((tmp_path / "out" / ".records" / "posts").glob("*.json"))
    assert [path.name for path in records] == ["0.json", "1.json"]  # a.png detected, its retweet from the cache
    stamps = {path: path.stat().st_mtime_ns for path in records}
    rerun = MMIBObjectExtractor.from_pretrained(detr_dir, batch_size=1)
    rerun_calls = count_calls(rerun)
    report = extract_objects(rerun, source, tmp_path / "out", show_progress=False)
    assert rerun_calls[0] == 1  # only b.png
    assert report.resumed == 2 and report.with_objects == 3 and report.unreadable == 1
    assert {path: path.stat().st_mtime_ns for path in records} == stamps


@pytest.mark.slow
def test_extract_objects_resumes_after_kill(detr_dir, tmp_path):
    source = write_posts(tmp_path / "data")
    script = textwrap.dedent(
        f"""
        import os, signal
        from mmib.object_extraction_mmib import MMIBObjectExtractor
        from mmib.crop_extraction import extract_objects
        extractor = MMIBObjectExtractor.from_pretrained({detr_dir!r}, batch_size=1)
        forward, calls = extractor.model.forward, [0]
        def killed(*args, **kwargs):
            calls[0] += 1
            if calls[0] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return forward(*args, **kwargs)
        extractor.model.forward = killed
        extract_objects(extractor, {str(source)!r}, {str(tmp_path / "out")!r}, show_progress=False)
        """
    )
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert process.returncode == -signal.SIGKILL, process.stderr
    records = tmp_path / "out" / ".records" / "posts"
    assert sorted(path.name for path in records.glob("*.json")) == ["0.json", "1.json"]
    assert not list((tmp_path / "out").rglob("*.tmp"))
    rerun = MMIBObjectExtractor.from_pretrained(detr_dir, batch_size=1)
    calls = count_calls(rerun)
    report = extract_objects(rerun, source, tmp_path / "out", show_progress=False)
    assert calls[0] == 1 and report.resumed == 2 and report.with_objects == 3


def test_extract_objects_twitter_folder(detr_dir, tmp_path):
    data_dir = tmp_path / "twitter2017"
    (data_dir / "twitter2017_images").mkdir(parents=True)
    for split, ids in {"train.txt": ["10", "11"], "valid.txt": ["20"], "test.txt": ["30", "31"]}.items():
        text = "".join(f"IMGID:{post_id}\nMessi\tB-PER\njoins\tO\nPSG\tB-ORG\n\n" for post_id in ids)
        (data_dir / split).write_text(text)
    for post_id in ["10", "11", "20", "30"]:
        noise_image((64, 48), seed=int(post_id)).save(data_dir / "twitter2017_images" / f"{post_id}.jpg")
    extractor = MMIBObjectExtractor.from_pretrained(detr_dir)
    report = extract_objects(extractor, data_dir, tmp_path / "crops", show_progress=False)
    assert (report.posts, report.with_objects, report.no_image) == (5, 4, 1)
    assert json.loads(Path(report.crop_dicts["validation"]).read_text()) == {"20.jpg": ["20_crop_0.png"]}
    data = load_twitter_ner(data_dir, crop_dir=tmp_path / "crops", crop_dicts=report.crop_dicts)
    assert [len(crops) for crops in data["test"]["crops"]] == [1, 0]
    assert all(os.path.isfile(path) for split in data.values() for crops in split["crops"] for path in crops)


def test_detected_object_dict_round_trip():
    obj = DetectedObject(box=(1, 2, 3, 4), score=0.5, query="cat")
    assert DetectedObject.from_dict(json.loads(json.dumps(obj.to_dict()))) == obj


def test_extract_objects_names_a_bad_line(detr_dir, tmp_path):
    source = tmp_path / "posts.jsonl"
    lines = [json.dumps({"words": ["a", "b"], "image": None}), "", json.dumps({"words": ["a"], "head": [0, 2]})]
    source.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=r"posts.jsonl:3: 'head' span \[0, 2\] is not within"):
        extract_objects(MMIBObjectExtractor.from_pretrained(detr_dir), source, tmp_path / "out", show_progress=False)
    with pytest.raises(ValueError, match="would overwrite the source"):
        extract_objects(MMIBObjectExtractor.from_pretrained(detr_dir), source, tmp_path, show_progress=False)
