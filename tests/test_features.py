"""The image feature cache and the collator: cached features must give the model exactly what pixels give it."""

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import ConvNextImageProcessor, ConvNextImageProcessorPil

from conftest import make_image, make_image_processor, make_tokenizer, tiny_config
from mmib import MMIBForRelationClassification, MMIBForTokenClassification, MMIBProcessor
from mmib.training.collator import MMIBDataCollator
from mmib.features import ImageFeatureStore, vision_fingerprint, vision_settings


@pytest.fixture
def image_files(tmp_path) -> dict[str, str]:
    files = {}
    for index in range(3):
        path = tmp_path / f"image{index}.png"  # lossless, so the file decodes to make_image(index)
        make_image(index).save(path)
        files[f"image{index}"] = str(path)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    files["corrupt"] = str(corrupt)
    return files


@pytest.fixture
def model() -> MMIBForTokenClassification:
    torch.manual_seed(0)
    return MMIBForTokenClassification(tiny_config()).eval()


def ner_rows(files: dict[str, str]) -> list[dict]:
    return [
        {
            "words": ["john", "smith", "visits", "london"],
            "ner_tags": [1, 2, 0, 3],
            "image": files["image0"],
            "crops": [files["image1"], files["corrupt"]],
        },
        {"words": ["i", "love", "paris"], "ner_tags": [0, 0, 3], "image": None, "crops": []},
        {
            "words": ["rt", "@", "the", "city"],
            "ner_tags": [0, 0, 0, 0],
            "image": files["image2"],
            "crops": [files["image0"], files["image1"], files["image2"]],
        },
    ]


def test_store_computes_each_file_once_and_masks_unreadable_ones(model, image_files, caplog):
    processor = make_image_processor()
    paths = [image_files["image0"], image_files["image0"], image_files["corrupt"], image_files["image1"], None]
    with caplog.at_level(logging.WARNING):
        store = ImageFeatureStore.build(model.mmib, processor, paths, batch_size=2)
    assert len(store) == 2
    assert store.unreadable == [image_files["corrupt"]]
    assert "could not be decoded" in caplog.text and "corrupt.jpg" in caplog.text
    with torch.no_grad():
        pixels = processor(images=[make_image(0), make_image(1)], return_tensors="pt")["pixel_values"]
        expected = model.mmib.get_image_features(pixels)
    torch.testing.assert_close(store.features_of(image_files["image0"]), expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(store.features_of(image_files["image1"]), expected[1], atol=1e-5, rtol=1e-5)

    features, mask = store.lookup(
        [image_files["image0"], None], [[image_files["corrupt"], image_files["image1"]], []], 2
    )
    assert mask.tolist() == [[True, False, True], [False, False, False]]
    assert features.shape == (2, 3, model.config.vision_feature_size)
    assert torch.equal(features[0, 0], store.features_of(image_files["image0"]))
    assert not features[1].any()


def test_cache_round_trip_content_keys_and_fingerprint(model, image_files, tmp_path):
    processor = make_image_processor()
    cache = str(tmp_path / "cache")
    paths = [image_files["image0"], image_files["image1"], image_files["corrupt"]]
    built = ImageFeatureStore.build(model.mmib, processor, paths, cache_dir=cache, batch_size=1, shard_size=1)
    assert len(list((tmp_path / "cache").glob("shard-*.safetensors"))) == 2  # one image each (+ the unreadable key)
    loaded = ImageFeatureStore.load(cache, verify=True)
    assert len(loaded) == 2 and loaded.fingerprint == built.fingerprint
    assert torch.equal(loaded.features_of(image_files["image0"]), built.features_of(image_files["image0"]))
    assert image_files["corrupt"] in loaded

    # Keys are the files' content: a copy under another name hits the cache, no tower run needed.
    copy = tmp_path / "renamed" / "copy.png"
    copy.parent.mkdir()
    shutil.copy(image_files["image1"], copy)
    assert torch.equal(loaded.features_of(str(copy)), built.features_of(image_files["image1"]))
    calls = []
    hook = model.mmib.vision_model.register_forward_hook(lambda *_: calls.append(1))
    reused = ImageFeatureStore.build(model.mmib, processor, [*paths, str(copy)], cache_dir=cache)
    hook.remove()
    assert calls == [] and reused.unreadable == [image_files["corrupt"]]

    # Another vision tower makes the shards stale: they are recomputed and replaced.
    torch.manual_seed(1)
    other = MMIBForTokenClassification(tiny_config()).eval()
    recomputed = ImageFeatureStore.build(other.mmib, processor, paths, cache_dir=cache)
    assert recomputed.fingerprint != built.fingerprint
    assert not torch.allclose(recomputed.features_of(image_files["image0"]), built.features_of(image_files["image0"]))
    assert ImageFeatureStore.load(cache).fingerprint == recomputed.fingerprint


def test_fingerprint_of_a_fixed_tiny_tower_is_unchanged(model):
    """A changed hash silently recomputes every user's feature cache: change it only on purpose (and bump FORMAT)."""
    golden = "95126c79de08833851db9d697f1d57775fcb3a8dd1f0ae031af6fcbf08ae8985"  # main at 64db95d
    assert vision_fingerprint(model.mmib, make_image_processor()) == golden


def test_fingerprint_follows_weights_and_preprocessing_not_bookkeeping(model):
    processor = make_image_processor()
    reference = vision_fingerprint(model.mmib, processor)

    # What saving and reloading a checkpoint adds or rewrites, and labels, change no feature.
    processor.auto_map = {"AutoProcessor": "processing_mmib.MMIBProcessor"}
    processor.processor_class = "MMIBProcessor"
    processor._processor_class = "MMIBProcessor"
    processor.image_processor_type = "SomethingElse"
    vision_config = model.config.vision_config
    vision_config._name_or_path = "/somewhere/else"
    vision_config.transformers_version = "4.0.0"
    vision_config.architectures = ["ResNetForImageClassification"]
    vision_config.id2label, vision_config.label2id = {0: "cat"}, {"cat": 0}
    assert vision_fingerprint(model.mmib, processor) == reference

    # Every preprocessing field, the processor's class (its resize), the tower's weights and buffers, its config
    # and the pooling change the features.
    changes = {
        "size": lambda: setattr(processor, "size", {"shortest_edge": 48}),
        "mean": lambda: setattr(processor, "image_mean", [0.5, 0.456, 0.406]),
        "std": lambda: setattr(processor, "image_std", [0.2, 0.224, 0.225]),
        "crop_pct": lambda: setattr(processor, "crop_pct", 1.0),
        "resample": lambda: setattr(processor, "resample", 2),
        "do_normalize": lambda: setattr(processor, "do_normalize", False),
        "weight": lambda: model.mmib.vision_model.embedder.embedder.convolution.weight.data[0, 0, 0, 0].add_(1e-3),
        "buffer": lambda: model.mmib.vision_model.embedder.embedder.normalization.running_mean.add_(1e-3),
        "config": lambda: setattr(vision_config, "hidden_act", "gelu"),
        "pooling": lambda: setattr(model.config, "vision_feature_pooling", "mean"),
    }
    seen = {reference}
    for name, change in changes.items():
        change()
        fingerprint = vision_fingerprint(model.mmib, processor)
        assert fingerprint not in seen, name
        seen.add(fingerprint)

    fields = {"size": {"shortest_edge": 32}, "crop_pct": 0.875}
    pil_backend, torch_backend = ConvNextImageProcessorPil(**fields), ConvNextImageProcessor(**fields)
    settings = [vision_settings(model.mmib, backend) for backend in (pil_backend, torch_backend)]
    assert settings[0]["image_processor"] == settings[1]["image_processor"]
    assert vision_fingerprint(model.mmib, pil_backend) != vision_fingerprint(model.mmib, torch_backend)


def test_build_runs_the_tower_on_the_given_device(model, image_files):
    """On a CPU-only machine the meta device stands for the GPU: the tower and its inputs must be there when it
    runs (the features cannot come back from it, so the run stops at the tower)."""

    class Stop(Exception):
        pass

    seen = []

    def record(tower, args, kwargs):
        seen.append((next(tower.parameters()).device.type, kwargs["pixel_values"].device.type))
        raise Stop

    model.mmib.vision_model.register_forward_pre_hook(record, with_kwargs=True)
    with pytest.raises(Stop):
        ImageFeatureStore.build(model.mmib, make_image_processor(), [image_files["image0"]], device="meta")
    assert seen == [("meta", "meta")]


def test_build_resumes_and_repairs_truncated_or_corrupt_shards(model, image_files, tmp_path, caplog):
    processor = make_image_processor()
    cache = tmp_path / "cache"
    paths = [image_files["image0"], image_files["image1"], image_files["image2"]]
    full = ImageFeatureStore.build(model.mmib, processor, paths, cache_dir=str(cache), batch_size=1, shard_size=1)
    shards = sorted(cache.glob("shard-*.safetensors"))
    assert len(shards) == 3
    # A killed build leaves a temporary file and complete shards only: a later build ignores and removes the former.
    (cache / ".shard-x.safetensors.123.partial").write_bytes(b"half a shard")
    truncated, flipped = shards[0], shards[1]
    truncated.write_bytes(truncated.read_bytes()[:-7])
    data = bytearray(flipped.read_bytes())
    data[-3] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="truncated") as error:
        ImageFeatureStore.load(str(cache))
    assert truncated.name in str(error.value) and "rebuild" in str(error.value)
    truncated_again = truncated.read_bytes()
    with caplog.at_level(logging.WARNING):
        repaired = ImageFeatureStore.build(
            model.mmib, processor, paths, cache_dir=str(cache), batch_size=1, shard_size=1
        )
    assert (
        "corrupt feature cache shard" in caplog.text and truncated.name in caplog.text and flipped.name in caplog.text
    )
    assert not list(cache.glob("*.partial")) and truncated_again
    for path in paths:
        torch.testing.assert_close(repaired.features_of(path), full.features_of(path))
    ImageFeatureStore.load(str(cache), verify=True)


def test_load_rejects_a_foreign_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "shard-weights.safetensors"))
    with pytest.raises(ValueError, match="not an MMIB image feature shard"):
        ImageFeatureStore.load(str(tmp_path))
    with pytest.raises(ValueError, match="holds no MMIB image feature shard"):
        ImageFeatureStore.load(str(tmp_path / "empty"))


BUILD_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from conftest import make_image_processor, tiny_config
from mmib import MMIBForTokenClassification
from mmib.features import ImageFeatureStore, vision_fingerprint, vision_settings
torch.manual_seed(0)
model = MMIBForTokenClassification(tiny_config()).eval()
store = ImageFeatureStore.build(
    model.mmib, make_image_processor(), sys.argv[3:], cache_dir=sys.argv[2], shard_size=2, num_workers=1
)
print(len(store))
"""


def test_two_processes_building_the_same_cache_do_not_corrupt_it(model, tmp_path):
    paths = []
    for index in range(8):
        path = tmp_path / f"img{index}.png"
        make_image(index).save(path)
        paths.append(str(path))
    cache = str(tmp_path / "cache")
    tests_dir = str(Path(__file__).parent)
    command = [sys.executable, "-c", BUILD_SCRIPT, tests_dir, cache, *paths]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert [output.strip() for output, _ in outputs] == ["8", "8"]
    loaded = ImageFeatureStore.load(cache, verify=True)
    assert len(loaded) == 8
    assert not list(Path(cache).glob("*.partial"))
    store = ImageFeatureStore.build(model.mmib, make_image_processor(), paths)
    for path in paths:
        torch.testing.assert_close(loaded.features_of(path), store.features_of(path))


def test_cached_features_and_pixels_give_the_same_outputs(model, image_files):
    processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="ner", num_crops=2)
    rows = ner_rows(image_files)
    store = ImageFeatureStore.build(
        model.mmib, processor.image_processor, [p for row in rows for p in [row["image"], *row["crops"]]]
    )
    cached = MMIBDataCollator(processor, store)(rows)
    assert "pixel_values" not in cached and cached["image_features"].shape == (3, 3, 16)
    # Both paths mask the corrupt crop in its own slot (crops beyond num_crops=2 are dropped).
    raw = MMIBDataCollator(processor)(rows)
    assert raw["image_mask"].tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert torch.equal(cached["image_mask"], raw["image_mask"])
    assert torch.equal(cached["labels"], raw["labels"]) and torch.equal(cached["word_index"], raw["word_index"])
    with torch.no_grad():
        from_cache, from_pixels = model(**cached), model(**raw)
    assert torch.allclose(from_cache.logits, from_pixels.logits, atol=1e-5)
    assert torch.allclose(from_cache.loss, from_pixels.loss, atol=1e-5)


def test_relation_rows_collate_with_spans_and_labels(image_files):
    torch.manual_seed(0)
    processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="re", num_crops=2)
    model = MMIBForRelationClassification(tiny_config(id2label={0: "None", 1: "/per/loc/place_of_residence"}))
    model.resize_token_embeddings(len(processor.tokenizer))
    model.eval()
    rows = [
        {
            "words": ["john", "visits", "london", "festival"],
            "head_span": [0, 1],
            "tail_span": [2, 3],
            "relation": 1,
            "image": image_files["image0"],
            "crops": [image_files["image1"]],
        },
        {
            "words": ["paris", "and", "london"],
            "head_span": [2, 3],
            "tail_span": [0, 1],
            "relation": 0,
            "image": None,
            "crops": [],
        },
    ]
    batch = MMIBDataCollator(processor)(rows)
    # By hand, the second post padded to the first one's length.
    tokens = [processor.tokenizer.convert_ids_to_tokens(ids) for ids in batch["input_ids"].tolist()]
    assert tokens[0] == ["[CLS]", "<s>", "john", "</s>", "visits", "<o>", "london", "</o>", "festival", "[SEP]"]
    assert tokens[1] == ["[CLS]", "<o>", "paris", "</o>", "and", "<s>", "london", "</s>", "[SEP]", "[PAD]"]
    assert batch["entity_positions"].tolist() == [[[1, 3], [5, 7]], [[5, 7], [1, 3]]]
    assert batch["labels"].tolist() == [1, 0]
    assert batch["image_mask"].tolist() == [[True, True, False], [False, False, False]]
    expected_pixels = make_image_processor()(images=[make_image(0), make_image(1)], return_tensors="pt")
    torch.testing.assert_close(batch["pixel_values"][0, :2], expected_pixels["pixel_values"])
    assert not batch["pixel_values"][0, 2].any() and not batch["pixel_values"][1].any()

    # Each row gives, inside the padded batch, the logits it gives alone (a path with no padding and no other post).
    with torch.no_grad():
        batch_logits = model(**batch).logits
        for index, row in enumerate(rows):
            alone = model(**MMIBDataCollator(processor)([row])).logits
            torch.testing.assert_close(batch_logits[index], alone[0], atol=1e-5, rtol=1e-5)
