"""
Every rule that depends on the vision tower's family: which towers pool their CLS token, the pooled feature size,
pooling a tower's outputs, attention-kernel fallback, the sub-config of a dual encoder, timm initialisation, the
image processors, and what the feature-cache fingerprint reads about a tower.

Travels with checkpoints as remote code (see CONTRIBUTING.md).
"""

import functools
import hashlib
import json
import os
from pathlib import Path

import torch
from transformers import (
    MODEL_MAPPING,
    AutoImageProcessor,
    AutoModel,
    BaseImageProcessor,
    ConvNextImageProcessor,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.models.auto import CONFIG_MAPPING
from transformers.utils import cached_file, is_timm_available

# ViT and DeiT pool with a dense + tanh layer on the CLS token that is random in image classification checkpoints.
CLS_POOLED_TOWERS = ("vit", "deit")


def default_pooling(vision_config: PreTrainedConfig) -> str:
    """`config.vision_feature_pooling` when none is given: `"cls"` for ViT and DeiT, else the tower's pooler."""
    return "cls" if vision_config.model_type in CLS_POOLED_TOWERS else "pooler"


def feature_size(vision_config: PreTrainedConfig, pooling: str) -> int:
    """
    Size of the pooled vision vector: the last stage width `hidden_sizes[-1]` for CNNs (ResNet, ConvNeXt),
    `hidden_size` for ViT, CLIP and SigLIP vision; for a timm tower the width of its head pooling
    (`head_hidden_size`, e.g. 1024 for MobileNetV3 whose head adds a 1x1 conv) or of its feature map
    (`num_features`) for `"cls"` / `"mean"` pooling.
    """
    if vision_config.model_type == "timm_wrapper":
        num_features, head_hidden_size = _timm_feature_sizes(
            vision_config.architecture, json.dumps(vision_config.model_args, sort_keys=True)
        )
        return head_hidden_size if pooling == "pooler" else num_features
    hidden_sizes = getattr(vision_config, "hidden_sizes", None)
    return hidden_sizes[-1] if hidden_sizes else vision_config.hidden_size


@functools.lru_cache
def _timm_feature_sizes(architecture: str, model_args_json: str) -> tuple[int, int]:
    """`(num_features, head_hidden_size)` of a timm architecture, read off the model built on the meta device (no
    memory, ~50 ms): timm configs do not record them."""
    config = CONFIG_MAPPING["timm_wrapper"](architecture=architecture, model_args=json.loads(model_args_json))
    with torch.device("meta"):
        timm_model = AutoModel.from_config(config).timm_model
    return timm_model.num_features, getattr(timm_model, "head_hidden_size", timm_model.num_features)


def pool_tower_output(outputs, pooling: str, tower_name: str) -> torch.Tensor:
    """
    One vector per image from a vision tower's outputs: its `pooler_output` (`"pooler"`), its CLS token (`"cls"`)
    or the mean of its patches or of its feature map (`"mean"`).

    Args:
        outputs: the tower's output (`pooler_output`, `last_hidden_state`).
        pooling (`str`): `config.vision_feature_pooling`.
        tower_name (`str`): the tower's class name, for the error message.
    """
    if pooling == "pooler":
        if outputs.pooler_output is None:
            raise ValueError(
                f"The {tower_name} vision tower returns no pooler_output: set "
                "config.vision_feature_pooling to 'cls' or 'mean'."
            )
        # ResNet's pooler output keeps its 1 x 1 spatial dimensions; the caller's reshape drops them.
        return outputs.pooler_output
    if outputs.last_hidden_state.dim() == 4:
        if pooling == "cls":
            raise ValueError("vision_feature_pooling='cls' needs a token sequence; this tower is convolutional.")
        return outputs.last_hidden_state.mean(dim=(-2, -1))
    tokens = outputs.last_hidden_state
    return tokens[:, 0] if pooling == "cls" else tokens.mean(dim=1)


KERNEL_SUPPORT_FLAGS = {
    "sdpa": "_supports_sdpa",
    "flash_attention_2": "_supports_flash_attn",
    "flash_attention_3": "_supports_flash_attn",
    "flex_attention": "_supports_flex_attn",
}


def attention_fallback(tower_config: PreTrainedConfig) -> None:
    """
    `attn_implementation="sdpa"` reaches every sub-config. A tower whose class cannot run the requested kernel (a
    ResNet has no attention at all) is given its own default instead of refusing to build.
    """
    flag = KERNEL_SUPPORT_FLAGS.get(tower_config._attn_implementation)
    if flag is not None and not getattr(MODEL_MAPPING[type(tower_config)], flag, False):
        tower_config._attn_implementation = None


def vision_sub_config(config: PreTrainedConfig) -> PreTrainedConfig:
    """The image tower's config: the `vision_config` of a dual encoder (CLIP, SigLIP), whose vision model classes
    load the vision half of its weights, else the config itself."""
    return getattr(config, "vision_config", None) or config


def timm_initialised_tower(config: PreTrainedConfig) -> PreTrainedModel:
    """A random timm tower with timm's own initialisation. transformers draws every timm convolution from
    N(0, 0.02), under which activations vanish through a deep CNN (EfficientNet-Lite0's pooled features come out
    ~1e-20), which would make a "random tower" baseline meaningless."""
    # Guarded so that transformers' remote-code import check (which skips `is_<lib>_available()` blocks) does not
    # require timm for every MMIB checkpoint; only a timm tower needs it.
    if is_timm_available():
        import timm
    else:
        raise ImportError(f"The timm tower {config.architecture!r} needs timm: pip install timm")

    tower = AutoModel.from_config(config)
    fresh = timm.create_model(config.architecture, pretrained=False, num_classes=0, **(config.model_args or {}))
    tower.timm_model.load_state_dict(fresh.state_dict())
    return tower


IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def resnet_image_processor() -> ConvNextImageProcessor:
    """The standard ResNet-50 image processor (that of `microsoft/resnet-50`): short side to 256 (bicubic), center
    crop 224, ImageNet mean and std."""
    return ConvNextImageProcessor(
        size={"shortest_edge": 224},
        crop_pct=0.875,
        resample=3,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )


def image_processor_for(vision_model_name_or_path: str | os.PathLike) -> BaseImageProcessor:
    """The vision tower's own image processor ([`load_image_processor`]) when its folder or Hub
    repository has image processor settings (a `preprocessor_config.json`, or a timm `pretrained_cfg`), else
    [`resnet_image_processor`]."""
    if os.path.isdir(vision_model_name_or_path):
        found = has_image_processor_settings(Path(vision_model_name_or_path))
    else:
        found = cached_file(
            vision_model_name_or_path,
            "preprocessor_config.json",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    return load_image_processor(vision_model_name_or_path) if found else resnet_image_processor()


# transformers towers keep their preprocessing in preprocessor_config.json; timm towers (TimmWrapper) in config.json
# under "pretrained_cfg", which TimmWrapperImageProcessor reads.
_PROCESSOR_FILE = "preprocessor_config.json"
_TIMM_CONFIG_FILE = "config.json"


def load_image_processor(vision_model_name_or_path: str) -> BaseImageProcessor:
    """
    The image processor that a vision tower was trained with: `AutoImageProcessor.from_pretrained` of its folder or
    Hub id (resize, crop, mean/std of that checkpoint; e.g. `TimmWrapperImageProcessor` for a timm tower, made
    savable with an [`MMIBProcessor`]).

    Args:
        vision_model_name_or_path (`str`): the folder or Hub id given as the vision tower.

    Raises:
        `ValueError`: for a folder without image processor settings (neither `preprocessor_config.json` nor a timm
            `config.json` with `pretrained_cfg`): guessing the preprocessing would silently feed the tower wrong
            pixels.
    """
    folder = Path(vision_model_name_or_path)
    if folder.is_dir() and not has_image_processor_settings(folder):
        raise ValueError(
            f"{folder} has no image processor settings ({_PROCESSOR_FILE}, or 'pretrained_cfg' in a timm "
            f"{_TIMM_CONFIG_FILE}), so the tower's preprocessing is unknown. Save the processor the tower was "
            f"trained with there (`image_processor.save_pretrained('{folder}')`)."
        )
    image_processor = AutoImageProcessor.from_pretrained(vision_model_name_or_path)
    if type(image_processor).__name__ == "TimmWrapperImageProcessor":
        # It is built from `pretrained_cfg` but does not keep it, so the copy saved inside an MMIB checkpoint could
        # not be rebuilt. Its resolved `data_config` (size, crop, interpolation, mean, std) is a complete
        # `pretrained_cfg`; stored as an attribute it becomes part of the saved dict.
        image_processor.pretrained_cfg = dict(image_processor.data_config)
    return image_processor


def has_image_processor_settings(folder: Path) -> bool:
    """Whether a tower folder records its preprocessing (transformers or timm layout)."""
    if (folder / _PROCESSOR_FILE).is_file():
        return True
    config_file = folder / _TIMM_CONFIG_FILE
    return config_file.is_file() and "pretrained_cfg" in json.loads(config_file.read_text(encoding="utf-8"))


# Fields that name, label or locate a config or an image processor and change no feature. `save_pretrained` and
# `from_pretrained` add, rewrite or drop them (`auto_map`, `_name_or_path`, `transformers_version`), the task heads'
# labels never reach a frozen tower's pooled output, and `dtype` is covered by the weights' bytes. Fields whose name
# starts with "_" are private state and are left out too.
BOOKKEEPING_FIELDS = frozenset(
    {
        "architectures",
        "auto_map",
        "dtype",
        "feature_extractor_type",
        "id2label",
        "image_processor_type",
        "label2id",
        "name_or_path",
        "output_attentions",
        "output_hidden_states",
        "problem_type",
        "processor_class",
        "return_dict",
        "torch_dtype",
        "transformers_version",
    }
)


def _computation_fields(settings: dict) -> dict:
    return {
        name: value for name, value in settings.items() if name not in BOOKKEEPING_FIELDS and not name.startswith("_")
    }


def vision_settings(model: PreTrainedModel, image_processor: BaseImageProcessor) -> dict:
    """
    Everything that the cached features of an image depend on: the vision tower's config (fields that change the
    computation) and weights, the pooling, and the image processor's class and preprocessing fields (size, crop,
    rescaling, mean and std...). Bookkeeping (`BOOKKEEPING_FIELDS`) is left out, so a model and processor read back
    from the checkpoint they were saved to have the settings they had before.

    The image processor's class counts besides its fields: the torchvision and PIL backends of one processor
    (`ConvNextImageProcessor`, `ConvNextImageProcessorPil`) resize differently, so their pixels differ.

    Args:
        model ([`MMIBModel`]): the model whose vision tower makes the features.
        image_processor ([`BaseImageProcessor`]): the image processor that makes its pixels.

    Returns:
        `dict`: JSON-serialisable settings; the weights appear as the sha256 of their names and bytes.
    """
    weights = hashlib.sha256()
    for name, tensor in sorted(model.vision_model.state_dict().items()):
        weights.update(name.encode())
        weights.update(str(tensor.dtype).encode())
        weights.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {
        "vision_config": _computation_fields(model.config.vision_config.to_dict()),
        "vision_weights_sha256": weights.hexdigest(),
        "vision_feature_pooling": model.config.vision_feature_pooling,
        "image_processor_class": type(image_processor).__name__,
        "image_processor": _computation_fields(image_processor.to_dict()),
    }


__all__ = [
    "CLS_POOLED_TOWERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "attention_fallback",
    "default_pooling",
    "feature_size",
    "has_image_processor_settings",
    "image_processor_for",
    "load_image_processor",
    "pool_tower_output",
    "resnet_image_processor",
    "timm_initialised_tower",
    "vision_settings",
    "vision_sub_config",
]
