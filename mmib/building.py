"""Build a matching MMIB model and processor for a task, or load a saved pair and check that they match.

`build_model_and_processor` is the one place where a new pair is assembled: task defaults, the RE entity markers and
the embedding resize they need, the label maps and the image processor of the vision tower. `num_crops` and
`max_length` are given once there and land in both halves; `load_model_and_processor` refuses a saved pair whose
halves disagree. `train_mmib.py` uses both. Both refuse a path that can only be a folder and is not one
([`check_local_folder`]) before anything asks the Hub about it.
"""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import (
    AutoConfig,
    AutoTokenizer,
    BaseImageProcessor,
    PreTrainedTokenizerBase,
)

from .checkpoints_mmib import load_checkpoint
from .modeling_mmib import MMIBForRelationClassification, MMIBForTokenClassification, MMIBPreTrainedModel
from .processing_mmib import MMIBProcessor, check_processor_matches_config, check_tokenizer_matches_embeddings
from .vision_towers_mmib import IMAGENET_MEAN, IMAGENET_STD, image_processor_for, resnet_image_processor

# The paper's settings: 4 crops and 128 tokens for Twitter-2015/2017 NER, 3 crops and 80 tokens for MNRE.
TASK_DEFAULTS = {"ner": {"num_crops": 4, "max_length": 128}, "re": {"num_crops": 3, "max_length": 80}}
MODEL_CLASSES = {"ner": MMIBForTokenClassification, "re": MMIBForRelationClassification}
# What makes the folders that this repository's configs name but does not ship, by folder name.
FOLDER_MAKERS = {
    "efficientnet-lite0": "python scripts/convert_efficientnet_lite0.py {path} (examples/run_demo.sh runs it)",
}


def looks_local(path: str | os.PathLike) -> bool:
    """
    Whether `path` names a folder rather than a Hub repository: a path object; a string starting with `./`, `../`,
    `/`, `~` or `runs/` (where this repository's scripts write), or ending with a separator; or one that no Hub id
    can be (more than one `/`, a Windows path, `..`; see `huggingface_hub.utils.validate_repo_id`).
    """
    if isinstance(path, os.PathLike):
        return True
    if path.startswith(("./", "../", "/", "~", "runs/")) or path.endswith(("/", os.sep)):
        return True
    try:
        validate_repo_id(path)
    except HFValidationError:
        return True
    return False


def check_local_folder(path: str | os.PathLike, what: str) -> None:
    """
    Refuses a `path` that looks local ([`looks_local`]) but is not a folder, naming it and, for the folders of
    `FOLDER_MAKERS`, the command that makes it. Called before anything loads `path`, so that a folder not made yet
    is reported as such rather than looked up on the Hub ("Check your internet connection").

    Args:
        path (`str` or `os.PathLike`): a folder or a Hub id.
        what (`str`): what the path is for, e.g. `"vision tower"`, for the message.

    Raises:
        FileNotFoundError: `path` looks local and is not a folder.
    """
    if os.path.isdir(path) or not looks_local(path):
        return
    found = "a file, not a folder" if os.path.exists(path) else "missing"
    maker = FOLDER_MAKERS.get(Path(path).name)
    if maker is not None:
        hint = f"Make it first: {maker.format(path=path)}."
    elif what == "MMIB checkpoint":
        hint = "train_mmib.py writes a checkpoint folder to its --output_dir; give that folder or a Hub id (org/name)."
    else:
        hint = "Give a folder written by save_pretrained, or a Hub id (org/name)."
    raise FileNotFoundError(f"The {what} folder {path} ({os.path.abspath(path)}) is {found}. {hint}")


def build_model_and_processor(
    task: str,
    text_model_name_or_path: str | os.PathLike,
    vision_model_name_or_path: str | os.PathLike,
    id2label: Mapping[int, str] | Sequence[str],
    num_crops: int | None = None,
    max_length: int | None = None,
    random_vision_weights: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None,
    image_processor: BaseImageProcessor | None = None,
    **config_kwargs: Any,
) -> tuple[MMIBPreTrainedModel, MMIBProcessor]:
    r"""
    Builds a fresh MMIB model around two pretrained towers, and the processor that matches it.

    Args:
        task (`str`): `"ner"` ([`MMIBForTokenClassification`]) or `"re"` ([`MMIBForRelationClassification`]).
        text_model_name_or_path (`str`): Hub id or folder of a BERT-like text tower and its tokenizer.
        vision_model_name_or_path (`str`): Hub id or folder of the vision tower; its `preprocessor_config.json`, if
            any, gives the image processor (else the standard ResNet one, see [`resnet_image_processor`]).
        id2label (`dict[int, str]` or `list[str]`): the BIO tags (NER) or relations (RE).
        num_crops (`int`, *optional*): object crops per post; defaults to the task's (`TASK_DEFAULTS`: NER 4, RE 3).
            Written to both `model.config.num_crops` and `processor.num_crops`.
        max_length (`int`, *optional*): tokens per post; defaults to the task's (NER 128, RE 80).
        random_vision_weights (`bool`, *optional*, defaults to `False`): build the vision tower from the config at
            `vision_model_name_or_path` with random weights (offline smoke runs).
        tokenizer ([`PreTrainedTokenizerBase`], *optional*): a tokenizer to use instead of the text tower's; it is
            not changed (the RE markers go into the processor's copy).
        image_processor ([`BaseImageProcessor`], *optional*): an image processor to use instead of the default.
        config_kwargs: other [`MMIBConfig`] fields (`beta_text`, `latent_size`, `entity_pooling`, ...).

    Returns:
        `(model, processor)`: the model in train mode, with its text embeddings resized to
        `len(processor.tokenizer)` when the RE markers enlarged the vocabulary.

    Raises:
        ValueError: unknown task, or settings that do not fit the text tower.
        FileNotFoundError: a tower path that looks local is not a folder ([`check_local_folder`]).

    Example:

    ```python
    >>> from mmib import build_model_and_processor

    >>> model, processor = build_model_and_processor(
    ...     "re", "bert-base-cased", "microsoft/resnet-50", id2label=["None", "/per/org/member_of"]
    ... )
    ```
    """
    if task not in MODEL_CLASSES:
        raise ValueError(f"Unknown task {task!r}: expected one of {tuple(MODEL_CLASSES)}.")
    check_local_folder(text_model_name_or_path, "text tower")
    check_local_folder(vision_model_name_or_path, "vision tower")
    num_crops = TASK_DEFAULTS[task]["num_crops"] if num_crops is None else num_crops
    max_length = TASK_DEFAULTS[task]["max_length"] if max_length is None else max_length
    if not isinstance(id2label, Mapping):
        id2label = dict(enumerate(id2label))
    processor = MMIBProcessor(
        image_processor or image_processor_for(vision_model_name_or_path),
        tokenizer or AutoTokenizer.from_pretrained(text_model_name_or_path),
        task=task,
        num_crops=num_crops,
        max_length=max_length,
    )
    vision = (
        AutoConfig.from_pretrained(vision_model_name_or_path) if random_vision_weights else vision_model_name_or_path
    )
    model = MODEL_CLASSES[task].from_text_vision_pretrained(
        text_model_name_or_path,
        vision,
        num_crops=num_crops,
        id2label={int(index): label for index, label in id2label.items()},
        **config_kwargs,
    )
    if len(processor.tokenizer) > model.get_input_embeddings().num_embeddings:
        # The RE markers <s> </s> <o> </o> were added to the processor's tokenizer.
        model.resize_token_embeddings(len(processor.tokenizer))
    check_processor_matches_config(processor, model.config, source=str(text_model_name_or_path))
    return model, processor


def load_model_and_processor(model_name_or_path: str | os.PathLike, **kwargs: Any) -> tuple[Any, MMIBProcessor]:
    """
    [`~mmib.checkpoints_mmib.load_checkpoint`] after refusing a path that looks local and is not a folder
    ([`check_local_folder`]), so that a folder not made yet is reported as such rather than looked up on the Hub.
    """
    check_local_folder(model_name_or_path, "MMIB checkpoint")
    return load_checkpoint(str(model_name_or_path), **kwargs)


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_CLASSES",
    "TASK_DEFAULTS",
    "build_model_and_processor",
    "check_local_folder",
    "check_tokenizer_matches_embeddings",
    "image_processor_for",
    "load_checkpoint",
    "load_model_and_processor",
    "looks_local",
    "resnet_image_processor",
]
