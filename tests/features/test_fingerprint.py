"""mmib.features.fingerprint: the vision fingerprint of a fixed tiny tower is unchanged, and it follows the weights and
preprocessing, not bookkeeping."""

from transformers import ConvNextImageProcessor, ConvNextImageProcessorPil

from conftest import make_image_processor
from mmib.features import vision_fingerprint, vision_settings


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
