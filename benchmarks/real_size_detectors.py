"""Detectors of the real sizes with random weights, built from their configs (nothing is downloaded), for the
benchmarks `bench_object_extraction.py` and `bench_stages.py`.

Random weights have the real architectures and so the real FLOPs; their boxes are anywhere, so only times (and
precision differences) are meaningful. Each builder returns `(model, processor)`, the model in fp32 and eval mode.
The configs follow the published checkpoints' `config.json` (written out here, since nothing is downloaded):

- `detr-resnet-50`: `DetrConfig` with transformers' `ResNetConfig()` (ResNet-50), 100 queries; `DetrImageProcessor`
  (shortest edge 800, longest 1333);
- `grounding-dino-tiny`: `GroundingDinoConfig()` (Swin-T backbone, BERT-base text encoder, 900 queries), queried
  through the real BERT uncased vocabulary (the bundled MiniLM tokenizer); shortest edge 800, longest 1333;
- `rt-detr-r18`: `RTDetrConfig` with a ResNet-18-vd backbone (basic blocks 2-2-2-2), hybrid encoder of expansion
  0.5, 3 decoder layers, 300 queries (PekingU/rtdetr_r18vd); 640 x 640;
- `d-fine-s`: `DFineConfig` with the HGNetV2-B0 backbone, depth multiplier 0.34, expansion 0.5, 3 decoder layers
  (ustc-community/dfine-small-coco); 640 x 640;
- `yolos-tiny`: `YolosConfig` of DeiT-tiny (192 wide, 12 layers, 3 heads), 100 detection tokens (hustvl/yolos-tiny);
  shortest edge 512, longest 1333;
- `owlv2-base`: `Owlv2Config` (CLIP ViT-B/16 at 960 x 960, 3,600 patches), queried through a letter vocabulary
  (OWLv2 pads every query to 16 tokens, so the vocabulary does not change its cost).
"""

from collections.abc import Callable
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    CLIPTokenizer,
    DetrConfig,
    DetrForObjectDetection,
    DetrImageProcessor,
    DFineConfig,
    DFineForObjectDetection,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
    HGNetV2Config,
    Owlv2Config,
    Owlv2ForObjectDetection,
    Owlv2ImageProcessor,
    Owlv2Processor,
    ResNetConfig,
    RTDetrConfig,
    RTDetrForObjectDetection,
    RTDetrImageProcessor,
    RTDetrResNetConfig,
    YolosConfig,
    YolosForObjectDetection,
    YolosImageProcessor,
)

from bench_common import minilm_path

# The image processors' resize of the tiny DETR (`size="tiny"`, smoke runs of `bench_prediction_objects.py`).
TINY_IMAGE_SIZE = {"shortest_edge": 48, "longest_edge": 64}


def detr_config(size: str = "real", **kwargs: Any) -> DetrConfig:
    """
    DETR with a ResNet-50 backbone (`size="tiny"`: a tiny ResNet and a one-layer transformer, 6 queries, as the
    tests' detectors are too); `kwargs` are further `DetrConfig` arguments (e.g. `id2label`).
    """
    if size == "real":
        backbone = ResNetConfig(out_features=["stage4"])
        return DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, **kwargs)
    backbone = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], out_features=["stage4"]
    )
    return DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=backbone,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=6,
        **kwargs,
    )


def detr_image_processor(size: str = "real") -> DetrImageProcessor:
    """DETR's image processor; `size="tiny"` resizes to `TINY_IMAGE_SIZE`."""
    return DetrImageProcessor() if size == "real" else DetrImageProcessor(size=TINY_IMAGE_SIZE)


def detr_resnet50() -> tuple[torch.nn.Module, Any]:
    return DetrForObjectDetection(detr_config()), detr_image_processor()


def grounding_dino_tiny() -> tuple[torch.nn.Module, Any]:
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(), tokenizer=AutoTokenizer.from_pretrained(minilm_path())
    )
    return GroundingDinoForObjectDetection(GroundingDinoConfig()), processor


def rt_detr_r18() -> tuple[torch.nn.Module, Any]:
    backbone = RTDetrResNetConfig(
        layer_type="basic",
        depths=[2, 2, 2, 2],
        hidden_sizes=[64, 128, 256, 512],
        downsample_in_bottleneck=False,
        out_features=["stage2", "stage3", "stage4"],
    )
    config = RTDetrConfig(
        backbone_config=backbone, encoder_in_channels=[128, 256, 512], hidden_expansion=0.5, decoder_layers=3
    )
    return RTDetrForObjectDetection(config), RTDetrImageProcessor()


def d_fine_s() -> tuple[torch.nn.Module, Any]:
    backbone = HGNetV2Config(
        stem_channels=[3, 16, 16],
        stage_in_channels=[16, 64, 256, 512],
        stage_mid_channels=[16, 32, 64, 128],
        stage_out_channels=[64, 256, 512, 1024],
        hidden_sizes=[64, 256, 512, 1024],
        stage_num_blocks=[1, 1, 2, 1],
        stage_numb_of_layers=[3, 3, 3, 3],
        stage_kernel_size=[3, 3, 5, 5],
        stage_downsample=[False, True, True, True],
        stage_light_block=[False, False, True, True],
        use_learnable_affine_block=True,
        out_features=["stage2", "stage3", "stage4"],
    )
    config = DFineConfig(
        backbone_config=backbone,
        encoder_in_channels=[256, 512, 1024],
        hidden_expansion=0.5,
        depth_mult=0.34,
        decoder_layers=3,
    )
    return DFineForObjectDetection(config), RTDetrImageProcessor()


def yolos_tiny() -> tuple[torch.nn.Module, Any]:
    config = YolosConfig(
        hidden_size=192,
        num_hidden_layers=12,
        num_attention_heads=3,
        intermediate_size=768,
        image_size=[800, 1333],
        use_mid_position_embeddings=False,
    )
    return YolosForObjectDetection(config), YolosImageProcessor(size={"shortest_edge": 512, "longest_edge": 1333})


def letter_clip_tokenizer() -> CLIPTokenizer:
    """
    A CLIP tokenizer of single letters (`a`, `a</w>`, ...), its start and end tokens last: OWLv2 masks a query
    whose first token id is 0, so the start token must not be 0 (as in CLIP's vocabulary). Queries are padded to 16
    tokens, as by OWLv2's own tokenizer.
    """
    vocab = {"!": 0}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[f"{letter}</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


def owlv2_base() -> tuple[torch.nn.Module, Any]:
    tokenizer = letter_clip_tokenizer()
    config = Owlv2Config(vision_config={"image_size": 960})  # OWLv2's 960 x 960 (the class default is OWL-ViT's 768)
    config.text_config.bos_token_id = tokenizer.bos_token_id
    config.text_config.eos_token_id = config.text_config.pad_token_id = tokenizer.eos_token_id
    return Owlv2ForObjectDetection(config), Owlv2Processor(image_processor=Owlv2ImageProcessor(), tokenizer=tokenizer)


DETECTORS: dict[str, Callable[[], tuple[torch.nn.Module, Any]]] = {
    "detr-resnet-50": detr_resnet50,
    "grounding-dino-tiny": grounding_dino_tiny,
    "rt-detr-r18": rt_detr_r18,
    "d-fine-s": d_fine_s,
    "yolos-tiny": yolos_tiny,
    "owlv2-base": owlv2_base,
}


def build_detector(name: str, seed: int = 0) -> tuple[torch.nn.Module, Any]:
    """The detector `name` of `DETECTORS` with random weights (seeded), in fp32 and eval mode, and its processor."""
    torch.manual_seed(seed)
    model, processor = DETECTORS[name]()
    return model.eval(), processor
