"""mmib.features.store: ImageFeatureStore computes each file once, masks unreadable ones, round-trips, resumes and
repairs shards, runs on the given device, and survives two processes building one cache."""

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, make_image, make_image_processor, tiny_config
from mmib import MMIBForTokenClassification
from mmib.features import ImageFeatureStore


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
    truncated, flipped, intact = shards
    truncated.write_bytes(truncated.read_bytes()[:-7])
    data = bytearray(flipped.read_bytes())
    data[-3] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="truncated") as error:
        ImageFeatureStore.load(str(cache))
    assert truncated.name in str(error.value) and "rebuild" in str(error.value)
    damaged = {path: path.read_bytes() for path in (truncated, flipped)}
    intact_stamp = intact.stat().st_mtime_ns
    encoded = []
    model.mmib.vision_model.register_forward_hook(
        lambda tower, args, kwargs, output: encoded.append(len((args or [kwargs.get("pixel_values")])[0])),
        with_kwargs=True,
    )
    with caplog.at_level(logging.WARNING):
        repaired = ImageFeatureStore.build(
            model.mmib, processor, paths, cache_dir=str(cache), batch_size=1, shard_size=1
        )
    assert (
        "corrupt feature cache shard" in caplog.text and truncated.name in caplog.text and flipped.name in caplog.text
    )
    # The resume recomputes exactly the two damaged shards (one image each) and leaves the intact one alone.
    assert encoded == [1, 1]
    assert intact.stat().st_mtime_ns == intact_stamp
    assert not list(cache.glob("*.partial"))
    assert len(list(cache.glob("shard-*.safetensors"))) == 3
    assert all(not path.exists() or path.read_bytes() != damaged[path] for path in damaged)
    for path in paths:
        torch.testing.assert_close(repaired.features_of(path), full.features_of(path))
    ImageFeatureStore.load(str(cache), verify=True)


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
    tests_dir = str(REPO / "tests")
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
