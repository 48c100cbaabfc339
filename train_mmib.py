"""Train and evaluate MMIB for multimodal NER (Twitter-2015/2017) or relation extraction (MNRE), or on own posts.

    python train_mmib.py configs/demo.yaml --seed 1         # arguments from a YAML or JSON file, then flags
    python train_mmib.py --dataset twitter2017 --output_dir runs/t17 ...
    accelerate launch train_mmib.py ...                     # Accelerate places the model (GPU, DDP, bf16)

Steps: read the data -> build the processor and the model -> cache the frozen vision tower's image features ->
train with `MMIBTrainer`, choosing the best checkpoint on validation F1 -> evaluate validation and, once, test at
that checkpoint -> write `all_results.json`, `test_predictions.jsonl`, the checkpoint (model, processor, remote
code) and a model card (README.md) to `--output_dir`, and push it with `--push_to_hub`.
"""

import json
import logging
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import transformers
import yaml
from transformers import AutoConfig, HfArgumentParser, TrainingArguments, set_seed

from mmib import build_model_and_processor, load_model_and_processor
from mmib.building import TASK_DEFAULTS, check_local_folder
from mmib.collator import MMIBDataCollator
from mmib.data import load_jsonl, load_mnre, load_twitter_ner, missing_media_report
from mmib.features import ImageFeatureStore
from mmib.model_card import ModelCardInfo, render_model_card
from mmib.pipeline_mmib import save_pipeline_code
from mmib.predictor_mmib import native_bf16, resolve_device
from mmib.predictions import (
    build_compute_metrics,
    gold_ner_tags,
    per_type_scores,
    relation_labels_from_logits,
)
from mmib.trainer import MMIBTrainer

logger = logging.getLogger("train_mmib")

REPO_ROOT = Path(__file__).resolve().parent
CARD_TEMPLATE = REPO_ROOT / "model_cards" / "mmib_model_card_template.md"
DEFAULT_DATA_DIRS = {name: f"../shared/data/{name}" for name in ("twitter2015", "twitter2017", "mnre")}


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


@dataclass
class DataArguments:
    """Which posts to read."""

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


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, MMIBTrainingArguments]:
    """Flags, or a YAML / JSON file of them as the first argument followed by flags that override it.

    `--bf16 auto` (or `--bf16=auto`, `bf16: auto` in the file) becomes `--bf16 true` where every device the run
    computes on multiplies bf16 natively (`bf16_is_native`), else `--bf16 false`; `--use_cpu` makes the CPU the
    device even on a GPU machine."""
    parser = HfArgumentParser((ModelArguments, DataArguments, MMIBTrainingArguments))
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        with open(argv[0], encoding="utf-8") as handle:
            values = yaml.safe_load(handle) if argv[0].endswith((".yaml", ".yml")) else json.load(handle)
        argv = [argument for name, value in values.items() for argument in _as_flags(name, value)] + argv[1:]
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
    (`mmib.predictor_mmib.native_bf16`). Elsewhere bf16 is emulated and slower than fp32 (15x for a training step
    on an AVX2-only CPU in benchmarks/RESULTS.md)."""
    return all(native_bf16(device) for device in training_devices(use_cpu))


def _as_flags(name: str, value) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [f"--{name}", *(json.dumps(item) if isinstance(item, bool) else str(item) for item in values)]


def load_data(data_args: DataArguments, num_crops: int) -> tuple[str, datasets.DatasetDict]:
    """Returns `(task, DatasetDict)` for the chosen dataset."""
    if data_args.dataset == "jsonl":
        files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
        missing = [split for split, path in files.items() if not path]
        if missing:
            raise ValueError(f"--dataset jsonl needs --{missing[0]}_file (all of train/validation/test).")
        return data_args.task, load_jsonl(files, task=data_args.task, image_root=data_args.image_dir)
    if data_args.dataset not in DEFAULT_DATA_DIRS:
        raise ValueError(f"Unknown --dataset {data_args.dataset!r}: twitter2015, twitter2017, mnre or jsonl.")
    data_dir = data_args.data_dir or str(REPO_ROOT / DEFAULT_DATA_DIRS[data_args.dataset])
    media = {"image_dir": data_args.image_dir, "crop_dir": data_args.crop_dir, "num_crops": num_crops}
    if data_args.dataset == "mnre":
        return "re", load_mnre(data_dir, **media)
    return "ner", load_twitter_ner(data_dir, **media)


def select_samples(data: datasets.DatasetDict, data_args: DataArguments) -> datasets.DatasetDict:
    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_test_samples,
    }
    return datasets.DatasetDict(
        {
            split: dataset.select(range(min(len(dataset), limits[split]))) if limits.get(split) else dataset
            for split, dataset in data.items()
        }
    )


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
    return parsed


def build_processor_and_model(model_args: ModelArguments, task: str, label_names: list[str]):
    """The processor and the model, from an MMIB checkpoint or from two towers (see `mmib.building`)."""
    weights = {
        name: getattr(model_args, name)
        for name in ("beta_text", "beta_vision", "alignment_weight")
        if getattr(model_args, name) is not None
    }
    if model_args.model_name_or_path:
        model, processor = load_model_and_processor(
            model_args.model_name_or_path,
            task=task,
            num_crops=model_args.num_crops,
            max_length=model_args.max_length,
            **weights,
        )
        if list(model.config.id2label.values()) != list(label_names):
            raise ValueError(
                f"The checkpoint's labels {list(model.config.id2label.values())} differ from the dataset's "
                f"{label_names}."
            )
        return processor, model
    model, processor = build_model_and_processor(
        task,
        model_args.text_model_name_or_path,
        model_args.vision_model_name_or_path,
        id2label=label_names,
        num_crops=model_args.num_crops,
        max_length=model_args.max_length,
        random_vision_weights=model_args.random_vision_weights,
        **weights,
        **parse_config_overrides(model_args.config_overrides),
    )
    return processor, model


def crops_per_post(model_args: ModelArguments, task: str) -> int:
    """Crop slots per post, from the one place that sets them: the checkpoint, else --num_crops or the task
    default that `build_model_and_processor` will also use."""
    if model_args.model_name_or_path:
        check_local_folder(model_args.model_name_or_path, "MMIB checkpoint")
        return AutoConfig.from_pretrained(model_args.model_name_or_path).num_crops
    return model_args.num_crops if model_args.num_crops is not None else TASK_DEFAULTS[task]["num_crops"]


def media_summary(data: datasets.DatasetDict, feature_store: ImageFeatureStore | None) -> dict:
    reports = missing_media_report(data)
    summary = {
        split: {
            "posts": report.num_rows,
            "images_found": report.images_found,
            "images_missing": report.images_missing,
            "crops_found": report.crops_found,
            "crops_missing": report.crops_missing,
        }
        for split, report in reports.items()
    }
    if feature_store is not None:
        summary["unreadable_image_files"] = len(feature_store.unreadable)
    return summary


def write_test_predictions(path: Path, task: str, test: datasets.Dataset, output, processor, id2label) -> None:
    """One JSON line per test post: words, gold and predicted tags with entities (NER) or relations (RE)."""
    with open(path, "w", encoding="utf-8") as handle:
        if task == "ner":
            # Words cut by truncation have no prediction: post-processing tags them O, as the metrics do.
            processed = processor.post_process_token_classification(
                output.predictions.tolist(), list(test["words"]), id2label
            )
            for row, gold, post in zip(test, gold_ner_tags(test), processed):
                record = {"id": row["id"], "words": row["words"], "gold": gold, **post}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            return
        names = test.features["relation"].names
        predicted = relation_labels_from_logits(output.predictions, id2label)
        for row, label in zip(test, predicted):
            record = {
                "id": row["id"],
                "words": row["words"],
                "head_span": row["head_span"],
                "tail_span": row["tail_span"],
                "gold": names[row["relation"]],
                "prediction": label,
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def build_model_card(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: MMIBTrainingArguments,
    task: str,
    data: datasets.DatasetDict,
    model,
    media: dict,
    validation_metrics: dict,
    test_output,
):
    """The run's model card, with the validation and test scores in its model-index."""
    output_dir = Path(training_args.output_dir)
    return render_model_card(
        ModelCardInfo(
            task=task,
            model_name=Path(training_args.hub_model_id or output_dir.name).name,
            repo_id=training_args.hub_model_id or str(output_dir),
            dataset_name=data_args.dataset,
            dataset_description=data_args.dataset if data_args.dataset != "jsonl" else "own posts (JSON lines)",
            text_model=model_args.model_name_or_path or model_args.text_model_name_or_path,
            vision_model=model_args.model_name_or_path or model_args.vision_model_name_or_path,
            vision_state="random weights" if model_args.random_vision_weights else "pretrained, frozen",
            command="python train_mmib.py " + " ".join(shlex.quote(argument) for argument in sys.argv[1:]),
            split_sizes={split: len(dataset) for split, dataset in data.items()},
            media_summary=json.dumps(media),
            validation_metrics={
                key[5:]: value for key, value in validation_metrics.items() if key.startswith("eval_")
            },
            test_metrics={key[5:]: value for key, value in test_output.metrics.items() if key.startswith("test_")},
            hyperparameters={
                "beta_text": model.config.beta_text,
                "beta_vision": model.config.beta_vision,
                "alignment_weight": model.config.alignment_weight,
                "learning_rate": training_args.learning_rate,
                "batch_size": training_args.per_device_train_batch_size,
                "world_size": training_args.world_size,
                "epochs": training_args.num_train_epochs,
                "seed": training_args.seed,
                "hardware": "CPU" if training_args.use_cpu or not torch.cuda.is_available() else "GPU",
            },
            ner_mode=data_args.ner_metric_mode,
            smoke_note=data_args.smoke_note,
            per_type=per_type_scores(test_output.metrics, "test"),
        ),
        str(CARD_TEMPLATE),
    )


def main() -> None:
    model_args, data_args, training_args = parse_arguments(sys.argv[1:])
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.should_log else logging.WARNING,
    )
    transformers.utils.logging.set_verbosity_warning()
    set_seed(training_args.seed)
    if training_args.bf16 and not bf16_is_native(training_args.use_cpu):
        logger.warning(
            "--bf16 on %s without native bf16 (CUDA compute capability 8.0+, or a CPU with AVX512-BF16 / AMX): bf16 "
            "autocast is emulated and slower than fp32 here (about 15x for a training step on an AVX2-only CPU in "
            "benchmarks/RESULTS.md). --bf16 auto decides by the hardware.",
            ", ".join(str(device) for device in training_devices(training_args.use_cpu)),
        )

    is_relation = data_args.dataset == "mnre" or (data_args.dataset == "jsonl" and data_args.task == "re")
    task, data = load_data(data_args, crops_per_post(model_args, "re" if is_relation else "ner"))
    data = select_samples(data, data_args)
    label_column = "ner_tags" if task == "ner" else "relation"
    label_feature = data["train"].features[label_column]
    label_names = label_feature.feature.names if task == "ner" else label_feature.names
    processor, model = build_processor_and_model(model_args, task, label_names)

    feature_store = None
    if model.config.freeze_vision_encoder and not model.config.text_only:
        paths = [path for dataset in data.values() for path in dataset["image"]]
        paths += [path for dataset in data.values() for crops in dataset["crops"] for path in crops]
        # The main process fills --image_feature_cache first; the other processes then read it.
        with training_args.main_process_first(desc="image features"):
            feature_store = ImageFeatureStore.build(
                model.mmib,
                processor.image_processor,
                paths,
                batch_size=model_args.feature_batch_size,
                cache_dir=model_args.image_feature_cache,
                num_workers=training_args.dataloader_num_workers,
                device=training_args.device,
            )
    media = media_summary(data, feature_store)
    logger.info("Images and crops: %s", json.dumps(media))

    collator = MMIBDataCollator(processor, feature_store)
    trainer = MMIBTrainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=collator,
        processing_class=processor,
        compute_metrics=build_compute_metrics(
            task, data["validation"], model.config.id2label, data_args.ner_metric_mode
        ),
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    validation_metrics = trainer.evaluate(metric_key_prefix="eval")

    # The test set is scored once, at the checkpoint chosen on validation.
    trainer.compute_metrics = build_compute_metrics(
        task, data["test"], model.config.id2label, data_args.ner_metric_mode
    )
    test_output = trainer.predict(data["test"], metric_key_prefix="test")

    if feature_store is None:
        # Pixel path: unreadable files were masked and counted as they were collated (in this process; dataloader
        # workers log each file they mask).
        media["unreadable_image_files"] = len(collator.unreadable)
    results = {
        **{
            f"train_{key}" if not key.startswith("train") else key: value
            for key, value in train_result.metrics.items()
        },
        **validation_metrics,
        **test_output.metrics,
        "task": task,
        "world_size": training_args.world_size,
        "best_model_checkpoint": trainer.state.best_model_checkpoint,
        "media": media,
    }
    if trainer.is_world_process_zero():
        output_dir = Path(training_args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "all_results.json").write_text(json.dumps(results, indent=2))
        write_test_predictions(
            output_dir / "test_predictions.jsonl", task, data["test"], test_output, processor, model.config.id2label
        )
        trainer.model_card = build_model_card(
            model_args, data_args, training_args, task, data, model, media, validation_metrics, test_output
        )
    # Every process takes part in saving; the main one writes the model, processor, remote code and card, and
    # pushes them with --push_to_hub. An NER checkpoint also carries the `mmib-ner` pipeline's code, put in the
    # folder first so that the push uploads it.
    if task == "ner" and trainer.is_world_process_zero():
        save_pipeline_code(model, training_args.output_dir)
    trainer.save_model()
    trainer.create_model_card()
    if trainer.is_world_process_zero():
        print(
            json.dumps({key: value for key, value in results.items() if key.startswith(("eval_", "test_"))}, indent=2)
        )


if __name__ == "__main__":
    main()
