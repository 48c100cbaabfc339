"""The vision tower's own image processor, for any tower family that `MMIBConfig.vision_config` accepts."""

import json
from pathlib import Path

from transformers import AutoImageProcessor, BaseImageProcessor

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
