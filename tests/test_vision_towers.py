"""Every vision tower family on tiny random configs: pooling, save/reload, a training step, tower folders, the
feature-cache fingerprint, the tower's own image processor, and any vision model with a pooled output."""

import itertools
import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModel,
    BertModel,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    ConvNextConfig,
    ConvNextImageProcessor,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipTextConfig,
    SiglipVisionConfig,
    TimmWrapperConfig,
    ViTConfig,
    ViTImageProcessor,
)

from conftest import IMAGE_SIZE, make_image, make_image_processor, tiny_config, tiny_text_config, tiny_vision_config
from mmib import (
    MMIBForTokenClassification,
    MMIBProcessor,
    build_model_and_processor,
    load_model_and_processor,
)
from mmib.features import vision_fingerprint
from mmib.vision_towers_mmib import load_image_processor
from model_batches import NUM_SLOTS, three_post_batch

TRANSFORMER_SHAPE = dict(
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=IMAGE_SIZE,
    patch_size=8,
)


def tiny_vision_configs() -> dict:
    return {
        "resnet": tiny_vision_config(),
        "convnext": ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2),
        "vit": ViTConfig(**TRANSFORMER_SHAPE),
        "clip_vision_model": CLIPVisionConfig(**TRANSFORMER_SHAPE),
        "siglip_vision_model": SiglipVisionConfig(**TRANSFORMER_SHAPE),
        # timm's own test architecture: a 4-stage EfficientNet of ~0.2M parameters with a 1x1 conv head.
        "timm_wrapper": TimmWrapperConfig(architecture="test_efficientnet"),
    }


FAMILIES = list(tiny_vision_configs())


def expected_pooled(family: str, tower: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Each family's documented pooling, computed by hand from the tower's parts."""
    if family == "timm_wrapper":
        return tower.timm_model.forward_features(pixel_values).mean(dim=(2, 3))
    states = tower(pixel_values=pixel_values).last_hidden_state
    if family == "resnet":
        return states.mean(dim=(2, 3))
    if family == "convnext":
        return tower.layernorm(states.mean(dim=(2, 3)))
    if family == "vit":
        return states[:, 0]
    if family == "clip_vision_model":
        return tower.post_layernorm(states[:, 0])
    return tower.head(states)  # siglip_vision_model: attention pooling over all patches


def make_model(family: str, **kwargs) -> MMIBForTokenClassification:
    torch.manual_seed(0)
    return MMIBForTokenClassification(tiny_config(vision_config=tiny_vision_configs()[family], **kwargs))


def make_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    word_index = torch.tensor([[1, 2, 4], [1, 3, -1]])
    labels = torch.randint(0, 9, (2, 3), generator=generator)
    labels[word_index < 0] = -100
    return {
        "input_ids": torch.randint(5, 64, (2, 6), generator=generator),
        "word_index": word_index,
        "labels": labels,
        "pixel_values": torch.randn(2, 3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "image_mask": torch.tensor([[True, True, False], [True, False, True]]),
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_image_features_pool_as_documented(family):
    model = make_model(family).eval()
    pixel_values = torch.randn(2, 3, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        features = model.mmib.get_image_features(pixel_values)
        expected = expected_pooled(family, model.mmib.vision_model, pixel_values.flatten(0, 1))
    assert features.shape == (2, 3, model.config.vision_feature_size)
    torch.testing.assert_close(features.flatten(0, 1), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["vit", "resnet", "timm_wrapper"])
def test_mean_pooling_averages_patches_or_positions(family):
    model = make_model(family, vision_feature_pooling="mean").eval()
    pixel_values = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        features = model.mmib.get_image_features(pixel_values)
        states = model.mmib.vision_model(pixel_values=pixel_values).last_hidden_state
    expected = states.mean(dim=1) if states.dim() == 3 else states.mean(dim=(2, 3))
    torch.testing.assert_close(features, expected)
    assert features.shape[-1] == model.config.vision_feature_size


def test_cls_pooling_of_a_convolutional_tower_is_an_error():
    model = make_model("resnet", vision_feature_pooling="cls").eval()
    with pytest.raises(ValueError, match="convolutional"):
        model.mmib.get_image_features(torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE))


def test_timm_feature_size_is_the_head_width_for_pooler_and_the_map_width_otherwise():
    # mobilenetv3's head adds a 1x1 conv after pooling: 576 channels in the feature map, 1024 after the head.
    timm_config = TimmWrapperConfig(architecture="mobilenetv3_small_100")
    assert tiny_config(vision_config=timm_config).vision_feature_size == 1024
    assert tiny_config(vision_config=timm_config, vision_feature_pooling="mean").vision_feature_size == 576


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_reload_give_equal_outputs(family, tmp_path):
    model = make_model(family).eval()
    model.save_pretrained(tmp_path)
    reloaded = MMIBForTokenClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.vision_config.model_type == model.config.vision_config.model_type
    assert reloaded.config.vision_feature_pooling == model.config.vision_feature_pooling
    batch = make_batch()
    with torch.no_grad():
        before, after = model(**batch), reloaded(**batch)
    # Equal up to float32 rounding: memory-mapped safetensors weights may take another (unaligned) GEMM kernel.
    torch.testing.assert_close(after.logits, before.logits, rtol=1e-5, atol=1e-6)
    assert torch.equal(after.predictions, before.predictions)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_training_step_trains_mmib_and_leaves_the_frozen_tower_alone(family):
    model = make_model(family).train()
    tower_before = {name: tensor.clone() for name, tensor in model.mmib.vision_model.state_dict().items()}
    projection_before = model.mmib.vision_projection.weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    output = model(**make_batch())
    (output.loss + output.kl_vision + output.alignment_loss).backward()
    assert model.mmib.vision_projection.weight.grad.abs().sum() > 0
    assert model.classifier.weight.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in model.mmib.vision_model.parameters())
    optimizer.step()
    assert not torch.equal(model.mmib.vision_projection.weight, projection_before)
    # Frozen means no gradient and no drifting BatchNorm statistics either.
    for name, tensor in model.mmib.vision_model.state_dict().items():
        assert torch.equal(tensor, tower_before[name]), name


def test_an_unfrozen_tower_gets_gradients():
    model = make_model("timm_wrapper", freeze_vision_encoder=False).train()
    model(**make_batch()).loss.backward()
    assert all(parameter.grad is not None for parameter in model.mmib.vision_model.parameters())


def test_fingerprint_differs_per_tower_and_pooling():
    image_processor = make_image_processor()
    fingerprints = {family: vision_fingerprint(make_model(family).mmib, image_processor) for family in FAMILIES}
    assert len(set(fingerprints.values())) == len(FAMILIES)
    assert vision_fingerprint(make_model("vit").mmib, image_processor) == fingerprints["vit"]
    mean_pooled = make_model("vit", vision_feature_pooling="mean").mmib
    assert vision_fingerprint(mean_pooled, image_processor) != fingerprints["vit"]


@pytest.fixture(scope="module")
def text_tower_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("text-tower")
    torch.manual_seed(1)
    BertModel(tiny_text_config()).save_pretrained(folder)
    return folder


def dual_encoder(family: str) -> torch.nn.Module:
    """A tiny CLIP or SigLIP checkpoint: text and vision halves, of which MMIB takes the vision half."""
    text_shape = dict(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2)
    if family == "clip_vision_model":
        config = CLIPConfig(text_config=CLIPTextConfig(**text_shape), vision_config=tiny_vision_configs()[family])
        return CLIPModel(config)
    config = SiglipConfig(text_config=SiglipTextConfig(**text_shape), vision_config=tiny_vision_configs()[family])
    return SiglipModel(config)


@pytest.mark.parametrize("family", FAMILIES)
def test_from_text_vision_pretrained_loads_a_tower_folder(family, text_tower_folder, tmp_path):
    torch.manual_seed(2)
    if family in ("clip_vision_model", "siglip_vision_model"):
        saved = dual_encoder(family)
        expected = saved.vision_model.state_dict()
    else:
        saved = AutoModel.from_config(tiny_vision_configs()[family])
        expected = saved.state_dict()
    saved.save_pretrained(tmp_path)
    model = MMIBForTokenClassification.from_text_vision_pretrained(
        str(text_tower_folder), str(tmp_path), apenc_num_attention_heads=4, num_crops=2, id2label={0: "O"}
    )
    loaded = model.mmib.vision_model.state_dict()
    assert model.config.vision_config.model_type == family
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)


def own_image_processor(family: str):
    """Each family's own image processor class, at the tiny towers' image size."""
    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    if family == "clip_vision_model":
        return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=square)
    if family == "siglip_vision_model":
        return SiglipImageProcessor(size=square)
    if family == "vit":
        return ViTImageProcessor(size=square, image_mean=[0.4, 0.5, 0.6])
    return make_image_processor()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_checkpoint_keeps_the_fingerprint_it_was_built_with(family, text_tower_folder, tokenizer, tmp_path):
    """As in training: towers from folders, a cache fingerprint, then the checkpoint saved and read back; a cache
    built before saving must match the checkpoint (saving adds `auto_map` and drops the towers' folder names)."""
    tower = tmp_path / "tower"
    torch.manual_seed(3)
    if family in ("clip_vision_model", "siglip_vision_model"):
        dual_encoder(family).save_pretrained(tower)
    else:
        AutoModel.from_config(tiny_vision_configs()[family]).save_pretrained(tower)
    if family != "timm_wrapper":  # a timm tower's config.json holds its preprocessing (pretrained_cfg)
        own_image_processor(family).save_pretrained(tower)
    model, processor = build_model_and_processor(
        "ner",
        str(text_tower_folder),
        str(tower),
        id2label=["O"],
        num_crops=2,
        tokenizer=tokenizer,
        apenc_num_attention_heads=4,
    )
    built = vision_fingerprint(model.mmib, processor.image_processor)
    model.save_pretrained(tmp_path / "checkpoint")
    processor.save_pretrained(tmp_path / "checkpoint")
    reloaded, reloaded_processor = load_model_and_processor(tmp_path / "checkpoint")
    assert type(reloaded_processor.image_processor) is type(processor.image_processor)
    assert vision_fingerprint(reloaded.mmib, reloaded_processor.image_processor) == built


def test_a_random_timm_tower_keeps_timms_initialisation(text_tower_folder):
    torch.manual_seed(0)
    model = MMIBForTokenClassification.from_text_vision_pretrained(
        str(text_tower_folder),
        TimmWrapperConfig(architecture="test_efficientnet"),
        apenc_num_attention_heads=4,
        id2label={0: "O"},
    ).eval()
    with torch.no_grad():
        features = model.mmib.get_image_features(torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE))
    # transformers' N(0, 0.02) initialisation of timm convolutions gives features of std ~1e-14 here.
    assert features.std() > 1e-3


def test_load_image_processor_reads_the_towers_own_settings(tmp_path):
    transformers_tower, timm_tower, bare_tower = tmp_path / "vit", tmp_path / "timm", tmp_path / "bare"
    ConvNextImageProcessor(size={"shortest_edge": 48}, image_mean=[0.1, 0.2, 0.3]).save_pretrained(transformers_tower)
    processor = load_image_processor(str(transformers_tower))
    assert isinstance(processor, ConvNextImageProcessor) and list(processor.image_mean) == [0.1, 0.2, 0.3]

    timm_config = TimmWrapperConfig(architecture="test_efficientnet").to_dict()
    timm_config["pretrained_cfg"] = {"input_size": [3, 40, 40], "mean": [0.5] * 3, "std": [0.25] * 3, "crop_pct": 1.0}
    timm_tower.mkdir()
    (timm_tower / "config.json").write_text(json.dumps(timm_config))
    processor = load_image_processor(str(timm_tower))
    assert type(processor).__name__ == "TimmWrapperImageProcessor"
    assert processor.data_config["std"] == (0.25, 0.25, 0.25) and processor.data_config["input_size"] == (3, 40, 40)
    pixels = processor(images=[torch.zeros(3, 64, 80, dtype=torch.uint8).permute(1, 2, 0).numpy()])["pixel_values"]
    # Black pixels normalised with mean 0.5, std 0.25, center-cropped to the configured 40 x 40.
    assert pixels.shape == (1, 3, 40, 40) and torch.allclose(pixels, torch.full_like(pixels, -2.0))

    bare_tower.mkdir()
    AutoModel.from_config(tiny_vision_config()).config.save_pretrained(bare_tower)
    with pytest.raises(ValueError, match="bare has no image processor settings"):
        load_image_processor(str(bare_tower))


def test_a_timm_image_processor_survives_the_mmib_processor_round_trip(tmp_path, tokenizer):
    timm_tower = tmp_path / "timm"
    timm_tower.mkdir()
    timm_config = TimmWrapperConfig(architecture="test_efficientnet").to_dict()
    timm_config["pretrained_cfg"] = {"input_size": [3, 40, 40], "mean": [0.5] * 3, "std": [0.25] * 3, "crop_pct": 0.8}
    (timm_tower / "config.json").write_text(json.dumps(timm_config))
    processor = MMIBProcessor(load_image_processor(str(timm_tower)), tokenizer, num_crops=1)
    processor.save_pretrained(tmp_path / "checkpoint")
    reloaded = MMIBProcessor.from_pretrained(tmp_path / "checkpoint")
    assert reloaded.image_processor.data_config == processor.image_processor.data_config
    image = make_image(0, size=(64, 48))
    torch.testing.assert_close(
        reloaded([["the", "city"]], images=[image])["pixel_values"],
        processor([["the", "city"]], images=[image])["pixel_values"],
        rtol=0,
        atol=0,
    )


def test_any_vision_model_with_a_pooled_output_works():
    from transformers import ViTConfig

    torch.manual_seed(0)
    vision_config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=30,
    )
    model = MMIBForTokenClassification(tiny_config(vision_config=vision_config)).eval()
    assert model.config.vision_feature_size == 24
    batch = three_post_batch()
    with torch.no_grad():
        outputs = model(**batch)
        features = model.mmib.get_image_features(batch["pixel_values"])
        # Independently: the ViT's own CLS token (its default pooling), one image at a time.
        assert model.config.vision_feature_pooling == "cls"
        for post, slot in itertools.product(range(3), range(NUM_SLOTS)):
            image = batch["pixel_values"][post, slot][None]
            expected = model.mmib.vision_model(pixel_values=image).last_hidden_state[0, 0]
            assert torch.allclose(features[post, slot], expected, atol=1e-5)
        from_features = model(**{**batch, "pixel_values": None, "image_features": features})
        changed = batch["pixel_values"].clone()
        changed[0, 0] = torch.randn(3, IMAGE_SIZE, IMAGE_SIZE)
        after_change = model(**{**batch, "pixel_values": changed})
    assert torch.allclose(outputs.logits, from_features.logits, atol=1e-5)
    # The ViT features reach the head: a different present image changes post 0, and only post 0.
    assert (after_change.logits[0] - outputs.logits[0]).abs().max() > 1e-5
    assert torch.allclose(after_change.logits[1:], outputs.logits[1:], atol=1e-6)
