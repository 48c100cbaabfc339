"""The one image loader (mmib/image_loading_mmib.py) and its unreadable-file policy, on every path reading images."""

import logging

import pytest
import torch
from PIL import Image

from conftest import make_image, make_image_processor, make_tokenizer, tiny_config
from mmib import MMIBForTokenClassification, MMIBProcessor, UnreadableImageError, load_image
from mmib.training.collator import MMIBDataCollator
from mmib.features import ImageFeatureStore


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    good = tmp_path / "good.png"
    make_image(0).save(good)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    truncated = tmp_path / "truncated.jpg"
    make_image(1, size=(64, 64)).save(tmp_path / "full.jpg")
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    return {
        "good": str(good),
        "corrupt": str(corrupt),
        "truncated": str(truncated),
        "missing": str(tmp_path / "missing.jpg"),
    }


def test_load_image_reads_paths_and_pil_images_as_rgb(files):
    loaded = load_image(files["good"])
    assert loaded.mode == "RGB" and list(loaded.getdata()) == list(make_image(0).getdata())
    gray = Image.new("L", (5, 4), 77)
    assert list(load_image(gray).getdata()) == [(77, 77, 77)] * 20
    assert load_image(None) is None and load_image(None, on_unreadable="mask") is None


@pytest.mark.parametrize("name", ["corrupt", "truncated"])
def test_undecodable_file_raises_a_value_error_naming_it_or_is_masked(files, name, caplog):
    with pytest.raises(
        UnreadableImageError, match=rf"Cannot read image file .*{name}\.jpg \(crops\[0\]\[1\], post 0\)"
    ):
        load_image(files[name], "crops[0][1], post 0")
    assert issubclass(UnreadableImageError, ValueError)
    with caplog.at_level(logging.WARNING):
        assert load_image(files[name], on_unreadable="mask") is None
    assert f"{name}.jpg" in caplog.text


def test_missing_file_raises_or_is_masked(files, caplog):
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg \(images, post 2\)"):
        load_image(files["missing"], "images, post 2")
    with caplog.at_level(logging.WARNING):
        assert load_image(files["missing"], on_unreadable="mask") is None
    assert "missing.jpg" in caplog.text


def test_bad_arguments(files):
    with pytest.raises(TypeError, match="images, post 0: an image must be a PIL.Image.Image"):
        load_image(3, "images, post 0")
    with pytest.raises(ValueError, match="on_unreadable"):
        load_image(files["good"], on_unreadable="skip")


def test_processor_cache_and_collator_follow_the_one_policy(files):
    """The processor raises on a bad file it is handed; on data sets, the pixel collator and the feature cache
    both mask the slot and count the file, and give the model the same inputs."""
    torch.manual_seed(0)
    model = MMIBForTokenClassification(tiny_config()).eval()
    processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="ner", num_crops=2)
    with pytest.raises(UnreadableImageError, match=r"corrupt\.jpg \(crops\[0\]\[0\], post 0\)"):
        processor(["john"], crops=[files["corrupt"]])

    rows = [
        {
            "words": ["john", "visits", "london"],
            "ner_tags": [1, 0, 3],
            "image": files["truncated"],
            "crops": [files["corrupt"], files["good"]],
        },
        {"words": ["i", "love", "paris"], "ner_tags": [0, 0, 3], "image": files["good"], "crops": []},
    ]
    paths = [path for row in rows for path in [row["image"], *row["crops"]]]
    store = ImageFeatureStore.build(model.mmib, processor.image_processor, paths)
    assert store.unreadable == sorted([files["corrupt"], files["truncated"]])
    pixel_collator = MMIBDataCollator(processor)
    from_pixels, from_cache = pixel_collator(rows), MMIBDataCollator(processor, store)(rows)
    assert pixel_collator.unreadable == {files["corrupt"], files["truncated"]}
    expected_mask = [[False, False, True], [True, False, False]]
    assert from_pixels["image_mask"].tolist() == from_cache["image_mask"].tolist() == expected_mask
    with torch.no_grad():
        logits_pixels, logits_cache = model(**from_pixels).logits, model(**from_cache).logits
    torch.testing.assert_close(logits_pixels, logits_cache, atol=1e-5, rtol=1e-5)
