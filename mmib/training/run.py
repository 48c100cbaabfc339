"""Train and evaluate MMIB for multimodal NER (Twitter-2015/2017) or relation extraction (MNRE), or on own posts.

    mmib train configs/demo.yaml --seed 1                   # arguments from a YAML or JSON file, then flags
    mmib train --dataset twitter2017 --output_dir runs/t17 ...
    python train_mmib.py ...                                # the same, from a source checkout
    accelerate launch -m mmib.training.run ...              # Accelerate places the model (GPU, DDP, bf16)

Steps: read the data -> build the processor and the model -> cache the frozen vision tower's image features ->
train with `MMIBTrainer`, choosing the best checkpoint on validation F1 -> evaluate validation and, once, test at
that checkpoint -> write `all_results.json`, `test_predictions.jsonl`, the checkpoint (model, processor, remote
code) and a model card (README.md) to `--output_dir`, and push it with `--push_to_hub`.
"""

import json
import logging
import shlex
import sys
from pathlib import Path

import datasets
import transformers
from transformers import AutoConfig, set_seed

from ..building import TASK_DEFAULTS, build_model_and_processor, check_local_folder, load_model_and_processor
from ..data import missing_media_report
from ..data.labels import relation_type_signatures
from ..data.registry import load_dataset, task_of
from ..features import ImageFeatureStore
from .arguments import (
    DataArguments,
    MMIBTrainingArguments,
    ModelArguments,
    bf16_is_native,
    parse_arguments,
    parse_config_overrides,
    training_devices,
)
from .collator import MMIBDataCollator
from .evaluation import build_compute_metrics, gold_ner_tags, relation_labels_from_logits
from .model_card import card_for_run
from .trainer import MMIBTrainer

logger = logging.getLogger(__name__)


def load_data(data_args: DataArguments, num_crops: int) -> tuple[str, datasets.DatasetDict]:
    """Returns `(task, DatasetDict)` for the chosen dataset (see `mmib.data.registry`)."""
    files = None
    if data_args.dataset == "jsonl":
        files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
        missing = [split for split, path in files.items() if not path]
        if missing:
            raise ValueError(f"--dataset jsonl needs --{missing[0]}_file (all of train/validation/test).")
    return load_dataset(
        data_args.dataset,
        data_dir=data_args.data_dir,
        files=files,
        task=data_args.task,
        image_dir=data_args.image_dir,
        crop_dir=data_args.crop_dir,
        num_crops=num_crops,
    )


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


def extract_crops(
    data: datasets.DatasetDict, data_args: DataArguments, num_crops: int, training_args: MMIBTrainingArguments
) -> tuple[datasets.DatasetDict, dict]:
    """Crops of `--object_detector` for the posts with an image and no crops; returns the data and a summary
    (`settings`: what the processor records, and the counts per split). The detector and its settings are the
    `--object_*` flags (`ObjectExtractionSettings`), its crops the model's `num_crops`."""
    # The extractor is needed only when a detector is given: training does not import it otherwise.
    from ..crop_extraction import extract_missing_crops
    from ..object_extraction_mmib import MMIBObjectExtractor
    from ..object_settings_mmib import ObjectExtractionSettings

    object_dir = Path(data_args.object_dir or Path(training_args.output_dir) / "objects")
    settings = ObjectExtractionSettings.from_namespace(data_args, prefix="object_", num_crops=num_crops)
    settings = settings.replace(
        device=settings.device or str(training_args.device), cache_dir=settings.cache_dir or str(object_dir / "cache")
    )
    extractor = MMIBObjectExtractor.from_settings(settings)
    data, reports = extract_missing_crops(data, extractor, object_dir, show_progress=not training_args.disable_tqdm)
    counts = ("posts", "own_crops", "no_image", "unreadable", "no_query", "with_objects", "without_objects", "objects")
    summary = {
        "settings": extractor.to_dict(),
        "object_dir": str(object_dir),
        "detected_images": extractor.stats["detected_images"],
        **{split: {key: getattr(report, key) for key in counts} for split, report in reports.items()},
    }
    logger.info("Object extraction: %s", json.dumps(summary))
    return data, summary


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


def main(argv: list[str] | None = None, prog: str = "python -m mmib.training.run") -> None:
    """
    One training run.

    Args:
        argv (`list[str]`, *optional*): the arguments (defaults to `sys.argv[1:]`): a config file and/or flags.
        prog (`str`): how the run was started, recorded with `argv` as the model card's `command`.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    model_args, data_args, training_args = parse_arguments(argv, prog=prog)
    command = " ".join([prog, *(shlex.quote(argument) for argument in argv)])
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

    task = task_of(data_args.dataset, data_args.task)
    num_crops = crops_per_post(model_args, task)
    task, data = load_data(data_args, num_crops)
    data = select_samples(data, data_args)
    object_extraction = None
    if data_args.object_detector:
        data, object_extraction = extract_crops(data, data_args, num_crops, training_args)
    label_column = "ner_tags" if task == "ner" else "relation"
    label_feature = data["train"].features[label_column]
    label_names = label_feature.feature.names if task == "ner" else label_feature.names
    processor, model = build_processor_and_model(model_args, task, label_names)
    if object_extraction is not None:
        processor.object_extraction = object_extraction["settings"]
    if task == "re":
        model.config.relation_type_signatures = relation_type_signatures(
            label_names[label] for label in data["train"]["relation"]
        )
        logger.info(
            "Relation type signatures (head, tail) of the training data: %s", model.config.relation_type_signatures
        )

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
    if object_extraction is not None:
        results["object_extraction"] = object_extraction
    if trainer.is_world_process_zero():
        output_dir = Path(training_args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "all_results.json").write_text(json.dumps(results, indent=2))
        write_test_predictions(
            output_dir / "test_predictions.jsonl", task, data["test"], test_output, processor, model.config.id2label
        )
        trainer.model_card = card_for_run(
            model_args, data_args, training_args, task, data, model, media, validation_metrics, test_output, command
        )
    # Every process takes part in saving; the main one writes the model, processor, remote code and card, and
    # pushes them with --push_to_hub. An NER checkpoint also carries the `mmib-ner` pipeline's code, and every
    # checkpoint the Inference Endpoints handler, put in the folder first so that the push uploads them.
    if trainer.is_world_process_zero():
        # Imported here: training does not depend on the prediction stack, it only ships its code.
        from ..integrations.endpoints import save_endpoint_handler
        from ..pipeline_mmib import save_pipeline_code

        if task == "ner":
            save_pipeline_code(model, training_args.output_dir)
        save_endpoint_handler(training_args.output_dir)
    trainer.save_model()
    trainer.create_model_card()
    if trainer.is_world_process_zero():
        print(
            json.dumps({key: value for key, value in results.items() if key.startswith(("eval_", "test_"))}, indent=2)
        )


if __name__ == "__main__":
    main()
