"""The arguments of an MMIB training run: dataclasses for `HfArgumentParser`, config files, `--bf16 auto`."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from ..checkpoints_mmib import native_bf16, resolve_device
from ..object_settings_mmib import arguments_dataclass


@dataclass
class ModelArguments:
    """Which towers or checkpoint to start from, and the MMIB settings to change."""

    text_model_name_or_path: str = field(
        default="bert-base-cased", metadata={"help": "Hub id or folder of the BERT-like text tower."}
    )
    vision_model_name_or_path: str = field(
        default="microsoft/resnet-50", metadata={"help": "Hub id or folder of the vision tower."}
    )
    random_vision_weights: bool = field(
        default=False,
        metadata={
            "help": "Build the vision tower from the config at --vision_model_name_or_path with random weights "
            "(offline smoke runs: no pretrained image weights are available there)."
        },
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "An MMIB checkpoint to continue from, instead of the two towers."}
    )
    num_crops: int | None = field(default=None, metadata={"help": "Object crops per post (NER 4, RE 3)."})
    max_length: int | None = field(default=None, metadata={"help": "Tokens per post (NER 128, RE 80)."})
    beta_text: float | None = field(default=None, metadata={"help": "Weight of KL_text (config: 0.1)."})
    beta_vision: float | None = field(default=None, metadata={"help": "Weight of KL_vision (config: 0.1)."})
    alignment_weight: float | None = field(default=None, metadata={"help": "Weight of L_align (config: 1.0)."})
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Other MMIBConfig fields for a new model, as `name=value,name=value` "
            "(e.g. `latent_size=384,apenc_num_attention_heads=6,kl_reduction=sum`)."
        },
    )
    image_feature_cache: str | None = field(
        default=None,
        metadata={
            "help": "A folder that keeps the frozen tower's image features (sharded safetensors keyed by file "
            "content; resumable, safe to share between runs)."
        },
    )
    feature_batch_size: int = field(default=32, metadata={"help": "Images per pass when caching features."})


# `--object_<name>` for every field of the extractor's settings, with the same defaults as `mmib extract-objects`;
# the number of crops is the model's (`--num_crops`).
ObjectExtractionArguments = arguments_dataclass("ObjectExtractionArguments", prefix="object_", skip=("num_crops",))


@dataclass
class DataArguments(ObjectExtractionArguments):
    """
    Which posts to read, and the object detector that gives posts with an image and no crops their crops before
    training (`--object_detector`, see `mmib extract-objects` and docs/data-layout.md; its settings are saved with
    the processor).
    """

    dataset: str = field(default="twitter2017", metadata={"help": "twitter2015 | twitter2017 | mnre | jsonl"})
    data_dir: str | None = field(
        default=None, metadata={"help": "Benchmark folder (default: ../shared/data/<dataset> beside the repo)."}
    )
    image_dir: str | None = field(default=None, metadata={"help": "Image folder, if not the default layout."})
    crop_dir: str | None = field(default=None, metadata={"help": "Crop folder, if not the default layout."})
    task: str = field(default="ner", metadata={"help": "For --dataset jsonl: ner | re."})
    train_file: str | None = field(default=None, metadata={"help": "JSON-lines train file (--dataset jsonl)."})
    validation_file: str | None = field(default=None, metadata={"help": "JSON-lines validation file."})
    test_file: str | None = field(default=None, metadata={"help": "JSON-lines test file."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N train posts."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation posts."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Use only the first N test posts."})
    object_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where extracted crops, records and the detection cache go (default <output_dir>/objects; share "
            "it between runs so that no picture is detected twice)."
        },
    )
    ner_metric_mode: str = field(
        default="conlleval", metadata={"help": "conlleval (default chunking) | strict (IOB2 entities only)."}
    )
    smoke_note: str | None = field(
        default=None, metadata={"help": "Marks the model card as a smoke-scale run, with this explanation."}
    )


@dataclass
class MMIBTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the paper's optimisation and dev-set model selection as defaults."""

    learning_rate: float = field(default=3e-5, metadata={"help": "AdamW learning rate (paper: 3e-5)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (paper: 0.01)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Batch size per device (paper: 8)."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Evaluation batch size per device."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate on validation."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save a checkpoint."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (best included)."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Reload the best validation checkpoint."})
    metric_for_best_model: str = field(default="f1", metadata={"help": "Validation metric choosing it."})
    greater_is_better: bool = field(default=True, metadata={"help": "Higher metric is better."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Rows are processed in the collator."})
    label_names: list[str] = field(default_factory=lambda: ["labels"], metadata={"help": "Label input names."})
    logging_steps: float = field(default=50, metadata={"help": "Log every N steps."})


def parse_arguments(
    argv: list[str], prog: str | None = None
) -> tuple[ModelArguments, DataArguments, MMIBTrainingArguments]:
    """Flags, or a YAML / JSON file of them as the first argument followed by flags that override it.

    `--bf16 auto` (or `--bf16=auto`, `bf16: auto` in the file) becomes `--bf16 true` where every device the run
    computes on multiplies bf16 natively (`bf16_is_native`), else `--bf16 false`; `--use_cpu` makes the CPU the
    device even on a GPU machine."""
    parser = HfArgumentParser((ModelArguments, DataArguments, MMIBTrainingArguments), prog=prog)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        values = read_config_file(argv[0])
        argv = [argument for name, value in values.items() for argument in as_flags(name, value)] + argv[1:]
    if not any(_is_bf16_auto(argv, index) for index in range(len(argv))):
        return parser.parse_args_into_dataclasses(args=argv)
    # A first pass reads --use_cpu in whichever form it was given; the second one parses the decided bf16.
    use_cpu = parser.parse_args_into_dataclasses(args=_with_bf16(argv, False))[2].use_cpu
    return parser.parse_args_into_dataclasses(args=_with_bf16(argv, bf16_is_native(use_cpu)))


def _is_bf16_auto(argv: list[str], index: int) -> bool:
    return argv[index] == "--bf16=auto" or (argv[index] == "auto" and index > 0 and argv[index - 1] == "--bf16")


def _with_bf16(argv: list[str], bf16: bool) -> list[str]:
    """`argv` with each `--bf16 auto` replaced by `--bf16 <bf16>`."""
    value = str(bf16).lower()
    return [
        (f"--bf16={value}" if argument == "--bf16=auto" else value) if _is_bf16_auto(argv, index) else argument
        for index, argument in enumerate(argv)
    ]


def training_devices(use_cpu: bool) -> list[torch.device]:
    """The devices `Trainer` computes on: the CPU with `--use_cpu` or without CUDA, this process's GPU under a
    launcher (`LOCAL_RANK`), else every visible GPU (`Trainer` wraps the model in `nn.DataParallel`)."""
    if use_cpu or not torch.cuda.is_available():
        return [torch.device("cpu")]
    if "LOCAL_RANK" in os.environ:
        return [resolve_device()]
    return [torch.device("cuda", index) for index in range(torch.cuda.device_count())]


def bf16_is_native(use_cpu: bool) -> bool:
    """Whether every training device multiplies bf16 natively, the rule of `mmib predict --dtype auto`
    (`mmib.checkpoints_mmib.native_bf16`). Elsewhere bf16 is emulated and slower than fp32 (15x for a training step
    on an AVX2-only CPU in benchmarks/RESULTS.md)."""
    return all(native_bf16(device) for device in training_devices(use_cpu))


def read_config_file(path: str | os.PathLike) -> dict:
    """
    The arguments in a YAML (`.yaml`, `.yml`) or JSON (`.json`) file, `{}` for an empty file: the one reader of
    config files for training, the analyses' runs and the modality gap.

    Raises:
        ValueError: another suffix, or a file that does not hold a mapping, naming the file.
    """
    path = Path(path)
    if path.suffix not in (".yaml", ".yml", ".json"):
        raise ValueError(f"{path}: a config file must be .yaml, .yml or .json.")
    with open(path, encoding="utf-8") as handle:
        values = yaml.safe_load(handle) if path.suffix in (".yaml", ".yml") else json.loads(handle.read() or "{}")
    values = values or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of argument names to values.")
    return values


def as_flags(name: str, value) -> list[str]:
    """`name`, `value` of a config file -> command-line flags (booleans as JSON `true` / `false`, lists spread)."""
    values = value if isinstance(value, list) else [value]
    return [f"--{name}", *(json.dumps(item) if isinstance(item, bool) else str(item) for item in values)]


# Fields that the model and its processor share, given by their own flags (the processor gets them too).
FLAG_OWNED_FIELDS = frozenset({"num_crops", "max_length"})


def parse_config_overrides(overrides: str | None) -> dict:
    """`"a=1,b=x"` -> `{"a": 1, "b": "x"}` with JSON values where they parse (numbers, booleans)."""
    parsed = {}
    for item in filter(None, (overrides or "").split(",")):
        name, separator, value = item.partition("=")
        if not separator:
            raise ValueError(f"--config_overrides item {item!r} is not name=value.")
        try:
            parsed[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            parsed[name.strip()] = value.strip()
    for name in FLAG_OWNED_FIELDS.intersection(parsed):
        raise ValueError(
            f"--config_overrides cannot set {name}: it is a processor setting too; use --{name} {parsed[name]}."
        )
    return parsed
