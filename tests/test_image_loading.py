"""The one image loader (mmib/image_loading_mmib.py) and its unreadable-file policy, on every path reading images."""

import logging
import re
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertModel, ResNetModel

from conftest import (
    SMALL,
    make_image,
    make_image_processor,
    make_tokenizer,
    tiny_config,
    tiny_text_config,
    tiny_vision_config,
)
from mmib import (
    MMIBForTokenClassification,
    MMIBPredictor,
    MMIBProcessor,
    UnreadableImageError,
    build_model_and_processor,
    image_loading_mmib,
    load_image,
)
from mmib.features import ImageFeatureStore
from mmib.training.collator import MMIBDataCollator


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


def write_png_bomb(path, width: int, height: int) -> None:
    """A valid 1 x 1 PNG whose header is rewritten to declare `width` x `height` pixels: a few dozen bytes."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    # Signature (8), IHDR length (4), b"IHDR" (4), then width and height; the chunk CRC follows its 13 data bytes.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


@pytest.fixture
def bad_files(tmp_path) -> dict[str, str]:
    files = {}

    def path(name):
        files[name] = str(tmp_path / name)
        return tmp_path / name

    write_png_bomb(path("bomb.png"), 100_000, 100_000)
    write_png_bomb(path("mild_bomb.png"), 10_000, 10_000)  # above our limit, below PIL's own error threshold
    path("empty.jpg").write_bytes(b"")
    make_image(1, size=(64, 64)).save(tmp_path / "full.jpg")
    path("truncated.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    path("corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    path("text.jpg").write_text("this is not an image")
    return files


@pytest.fixture
def odd_files(tmp_path) -> dict[str, str]:
    files = {}

    def path(name):
        files[name] = str(tmp_path / name)
        return tmp_path / name

    frames = [Image.new("RGB", (20, 10), color) for color in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path("animated.gif"), save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(path("cmyk.jpg"), quality=100)
    Image.fromarray(np.full((10, 20), 40000, dtype=np.uint16)).save(path("gray16.png"))
    Image.new("P", (20, 10), 3).save(path("palette.png"))
    Image.new("RGBA", (20, 10), (0, 0, 0, 0)).save(path("transparent.png"))
    Image.new("LA", (20, 10), (0, 0)).save(path("transparent_gray.png"))
    Image.new("RGB", (1, 5000), (10, 20, 30)).save(path("tall.png"))
    Image.new("RGB", (5000, 1), (10, 20, 30)).save(path("wide.png"))
    return files


@pytest.mark.parametrize(
    "name", ["bomb.png", "mild_bomb.png", "empty.jpg", "truncated.jpg", "corrupt.png", "text.jpg"]
)
def test_bad_file_raises_naming_it_or_is_masked(bad_files, name, caplog):
    with warnings.catch_warnings():
        # No PIL DecompressionBombWarning (nor any other warning) may escape.
        warnings.simplefilter("error")
        with pytest.raises(UnreadableImageError, match=rf"{name} \(images, post 4\)") as raised:
            load_image(bad_files[name], "images, post 4")
        with caplog.at_level(logging.WARNING):
            assert load_image(bad_files[name], on_unreadable="mask") is None
    assert name in caplog.text
    assert not isinstance(raised.value, Image.DecompressionBombError)


def test_bomb_message_gives_the_declared_size_and_the_setting(bad_files, monkeypatch):
    with pytest.raises(UnreadableImageError, match=r"10000 x 10000 = 100000000 pixels.*MMIB_MAX_IMAGE_PIXELS"):
        load_image(bad_files["mild_bomb.png"])
    # The limit is a setting: per call, and module-wide (read from MMIB_MAX_IMAGE_PIXELS at import).
    with pytest.raises(UnreadableImageError, match="more than the limit of 100"):
        load_image(make_file_of(bad_files, 20, 10), max_pixels=100)
    monkeypatch.setattr(image_loading_mmib, "MAX_IMAGE_PIXELS", 199)
    with pytest.raises(UnreadableImageError, match="more than the limit of 199"):
        load_image(make_file_of(bad_files, 20, 10))
    monkeypatch.setattr(image_loading_mmib, "MAX_IMAGE_PIXELS", 200)
    assert load_image(make_file_of(bad_files, 20, 10)).size == (20, 10)


def make_file_of(files: dict, width: int, height: int) -> str:
    path = files["empty.jpg"].replace("empty.jpg", f"plain_{width}x{height}.png")
    Image.new("RGB", (width, height), (1, 2, 3)).save(path)
    return path


def test_odd_but_valid_images_become_rgb_by_the_documented_rules(odd_files):
    def pixels(name):
        image = load_image(odd_files[name])
        assert image.mode == "RGB"
        return image

    animated = pixels("animated.gif")
    assert animated.size == (20, 10) and animated.getpixel((0, 0)) == (255, 0, 0)  # the first frame
    red = pixels("cmyk.jpg").getpixel((5, 5))
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    assert pixels("gray16.png").getpixel((0, 0)) == (40000 // 256,) * 3  # scaled, not clipped to 255
    assert pixels("palette.png").size == (20, 10)
    assert pixels("transparent.png").getpixel((3, 3)) == (255, 255, 255)  # composited on white, not black
    assert pixels("transparent_gray.png").getpixel((3, 3)) == (255, 255, 255)
    tall, wide = pixels("tall.png"), pixels("wide.png")
    # Padded with white to an aspect ratio of 20 (250 x 5000), the original column in the middle.
    assert tall.size == (250, 5000) and wide.size == (5000, 250)
    assert tall.getpixel((124, 100)) == (10, 20, 30) and tall.getpixel((0, 100)) == (255, 255, 255)
    # The same rules for an image handed over already open.
    assert load_image(Image.new("RGBA", (4, 4), (9, 9, 9, 0))).getpixel((0, 0)) == (255, 255, 255)


def test_every_path_reads_odd_images_and_refuses_or_masks_bad_ones(bad_files, odd_files):
    torch.manual_seed(0)
    model = MMIBForTokenClassification(tiny_config()).eval()
    processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="ner", num_crops=2)
    odd = sorted(odd_files.values())
    inputs = processor([["john"]] * len(odd), images=odd)
    assert inputs["pixel_values"].shape[:2] == (len(odd), 3) and torch.isfinite(inputs["pixel_values"]).all()
    assert inputs["image_mask"][:, 0].all()
    for name, path in bad_files.items():
        with pytest.raises(UnreadableImageError, match=rf"{name} \(crops\[0\]\[0\], post 0\)"):
            processor([["john"]], crops=[[path]])

    bad = sorted(bad_files.values())
    store = ImageFeatureStore.build(model.mmib, processor.image_processor, odd + bad)
    assert store.unreadable == bad
    rows = [{"words": ["john"], "ner_tags": [1], "image": path, "crops": []} for path in odd + bad]
    collator = MMIBDataCollator(processor)
    from_pixels, from_cache = collator(rows), MMIBDataCollator(processor, store)(rows)
    assert collator.unreadable == set(bad)
    expected = [True] * len(odd) + [False] * len(bad)
    assert from_pixels["image_mask"][:, 0].tolist() == from_cache["image_mask"][:, 0].tolist() == expected
    with torch.no_grad():
        torch.testing.assert_close(model(**from_pixels).logits, model(**from_cache).logits, atol=1e-5, rtol=1e-5)


def test_prediction_refuses_a_bomb_naming_it_and_reads_odd_images(bad_files, odd_files, tmp_path):
    """`mmib predict` (the predictor) reads its files through the same loader; a bad file is that post's error row."""
    text, vision = tmp_path / "text", tmp_path / "vision"
    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    BertModel(tiny_text_config(vocab_size=len(tokenizer))).save_pretrained(text)
    tokenizer.save_pretrained(text)
    ResNetModel(tiny_vision_config()).save_pretrained(vision)
    model, processor = build_model_and_processor(
        "ner",
        str(text),
        str(vision),
        ["O", "B-PER", "I-PER"],
        num_crops=2,
        image_processor=make_image_processor(),
        **SMALL,
    )
    model.save_pretrained(tmp_path / "checkpoint")
    processor.save_pretrained(tmp_path / "checkpoint")
    predictor = MMIBPredictor.from_pretrained(str(tmp_path / "checkpoint"), dtype="float32")
    bomb = predictor({"words": ["john", "smith"], "image": bad_files["bomb.png"]})
    assert re.search(r"bomb\.png \(image\): .*10000000000 pixels.*MMIB_MAX_IMAGE_PIXELS", bomb["error"]), bomb
    empty = predictor({"words": ["john", "smith"], "crops": [bad_files["empty.jpg"]]})
    assert re.search(r"crops\[0\]: .*empty\.jpg", empty["error"]), empty
    result = predictor(
        {"words": ["john", "smith"], "image": odd_files["tall.png"], "crops": [odd_files["animated.gif"]]}
    )
    assert "error" not in result and len(result["tags"]) == 2
