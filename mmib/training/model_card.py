"""
Model cards for MMIB checkpoints: one Jinja template (`model_card_template.md`, package data) rendered with a
`model-index` of the results, for every training run and for the cards of the checkpoints this project publishes
(`published_cards.py`).
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .evaluation import per_type_scores

if TYPE_CHECKING:
    from .arguments import DataArguments, MMIBTrainingArguments, ModelArguments

TEMPLATE = Path(__file__).with_name("model_card_template.md")
CARD_TASKS = {
    "ner": {
        "title": "multimodal named entity recognition",
        "task_type": "token-classification",
        "task_name": "Multimodal Named Entity Recognition",
        "auto_class": "AutoModelForTokenClassification",
        "head": "linear-chain CRF over the first sub-word of every word",
        "metric_note": "Entity-level micro scores over words (seqeval, {mode} chunking).",
        "usage": (
            'inputs = processor([["Messi", "arrives", "in", "Paris"]], images=["post.jpg"])\n'
            "outputs = model(**inputs)\n"
            'print(processor.post_process_token_classification(outputs.predictions, [["Messi", "arrives", "in", '
            '"Paris"]], model.config.id2label))'
        ),
    },
    "re": {
        "title": "multimodal relation extraction",
        "task_type": "text-classification",
        "task_name": "Multimodal Relation Extraction",
        "auto_class": "AutoModelForSequenceClassification",
        "head": "relation classifier over the two entity-marker states",
        "metric_note": "Micro scores over all relations except `None`.",
        "usage": (
            'inputs = processor([["Messi", "joins", "PSG"]], images=["post.jpg"], head_spans=[(0, 1)], '
            "tail_spans=[(2, 3)])\n"
            "outputs = model(**inputs)\n"
            "print(processor.post_process_relation_classification(outputs.logits, model.config.id2label))"
        ),
    },
}


@dataclass(frozen=True)
class Scores:
    """Precision, recall and F1 in percent, as a paper or a results table prints them."""

    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class MeasuredRun:
    """
    A run measured on this project's machine, reported beside a published card.

    Args:
        setup (`str`): what it trained and how it differs from the card's checkpoint.
        when (`str`): date, machine and load.
        validation_f1 (`float`): F1 (percent) on the validation set, where the checkpoint was chosen.
        test (`Scores`): test scores (percent), evaluated once.
        wall_time (`str`): the whole command's time.
    """

    setup: str
    when: str
    validation_f1: float
    test: Scores
    wall_time: str


@dataclass(frozen=True)
class Benchmark:
    """What every card of a model trained on one of the paper's benchmarks says about the data and the paper."""

    title: str
    description: str
    split_sizes: dict[str, int]
    media: str
    paper: dict[str, Scores]
    terms: str


# Twitter-2015/2017 texts: the UMT release (jefferyYu/UMT), crops: the TMR / HVPNeT dictionaries; MNRE: the MNRE-2
# release (thecharm/MNRE). None of these repositories states a data license (see the data folder's SOURCES.md).
_TWITTER_TERMS = (
    "the texts come from the UMT release (jefferyYu/UMT), whose README says that using the datasets means accepting "
    "the copyrights set by Twitter and the dataset providers; no data license is stated, so treat the data and "
    "models trained on it as research-only, and do not redistribute the data (e.g. on the Hub)."
)
_PROVIDER_CROPS = "one image per post and up to {crops} object crops per image, cut by the providers' grounding tool"
BENCHMARKS = {
    "twitter2015": Benchmark(
        title="Twitter-2015",
        description="Twitter-2015 (Zhang et al., 2018): tweets with one image, entity types PER, LOC, ORG, MISC",
        split_sizes={"train": 4000, "validation": 1000, "test": 3257},
        media=_PROVIDER_CROPS.format(crops=4),
        paper={
            "MMIB": Scores(74.44, 77.68, 76.02),
            "MMIB without L_rr": Scores(73.36, 76.61, 74.95),
            "MMIB without L_ar": Scores(74.05, 75.75, 74.89),
            "MMIB without L_rr and L_ar": Scores(74.02, 74.81, 74.42),
        },
        terms=_TWITTER_TERMS,
    ),
    "twitter2017": Benchmark(
        title="Twitter-2017",
        description="Twitter-2017 (Lu et al., 2018): tweets with one image, entity types PER, LOC, ORG, MISC",
        split_sizes={"train": 3373, "validation": 723, "test": 723},
        media=_PROVIDER_CROPS.format(crops=4),
        paper={
            "MMIB": Scores(87.34, 87.86, 87.60),
            "MMIB without L_rr": Scores(86.67, 87.56, 87.11),
            "MMIB without L_ar": Scores(85.79, 88.07, 86.91),
            "MMIB without L_rr and L_ar": Scores(87.15, 85.86, 86.50),
        },
        terms=_TWITTER_TERMS,
    ),
    "mnre": Benchmark(
        title="MNRE",
        description="MNRE (Zheng et al., 2021; the MNRE-2 splits): entity pairs in tweets with one image, 23 "
        "relations including `None`",
        split_sizes={"train": 12247, "validation": 1624, "test": 1614},
        media=_PROVIDER_CROPS.format(crops=3),
        paper={
            "MMIB": Scores(83.49, 82.97, 83.23),
            "MMIB without L_rr": Scores(82.10, 81.71, 81.91),
            "MMIB without L_ar": Scores(82.48, 80.93, 81.70),
            "MMIB without L_rr and L_ar": Scores(80.62, 80.00, 80.31),
        },
        terms="the MNRE release (thecharm/MNRE) is built from tweets and states no data license; follow Twitter's "
        "and the providers' terms, treat the data and models trained on it as research-only, and do not "
        "redistribute the data (e.g. on the Hub).",
    ),
}
_OWN_DATA_TERMS = "your own posts: the terms under which you collected them."


@dataclass
class ModelCardInfo:
    """
    What a card says about one checkpoint. Metric dictionaries hold `precision`, `recall`, `f1` in [0, 1]; a card
    without them (a published checkpoint not trained here) has no results table and no `model-index`.
    """

    task: str
    model_name: str
    repo_id: str
    dataset_name: str
    dataset_description: str
    text_model: str
    vision_model: str
    vision_state: str
    command: str
    split_sizes: dict[str, int]
    media_summary: str
    hyperparameters: dict[str, Any]
    validation_metrics: dict[str, Any] | None = None
    test_metrics: dict[str, Any] | None = None
    ner_mode: str = "conlleval"
    smoke_note: str | None = None
    per_type: dict[str, dict[str, float]] = field(default_factory=dict)
    status_title: str = ""
    status_note: str | None = None
    measured_here: Sequence[MeasuredRun] = ()
    measured_commands: str = ""
    limitations: Sequence[str] = ()


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def render_model_card(info: ModelCardInfo, template_path: str | Path = TEMPLATE) -> ModelCard:
    """
    Render the card template with a `model-index` holding the validation and test precision, recall and F1.

    Args:
        info ([`ModelCardInfo`]): the run to describe.
        template_path (`str`, *optional*): the Jinja template; defaults to the package's `model_card_template.md`.

    Returns:
        `huggingface_hub.ModelCard`; `.save(path)` writes it, `.data.eval_results` holds the parsed results.
    """
    task = CARD_TASKS[info.task]
    splits = [
        (split, metrics)
        for split, metrics in (("validation", info.validation_metrics), ("test", info.test_metrics))
        if metrics is not None
    ]
    eval_results = [
        EvalResult(
            task_type=task["task_type"],
            task_name=task["task_name"],
            dataset_type=info.dataset_name,
            dataset_name=info.dataset_name,
            dataset_split=split,
            metric_type=metric,
            metric_name=metric.capitalize(),
            metric_value=round(100 * metrics[metric], 2),
        )
        for split, metrics in splits
        for metric in ("precision", "recall", "f1")
    ]
    card_data = ModelCardData(
        language="en",
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag=task["task_type"],
        tags=["mmib", "multimodal", "information-bottleneck", info.task],
        model_name=info.model_name,
        eval_results=eval_results or None,
    )
    result_rows = [
        {
            "split": split,
            "precision": _percent(metrics["precision"]),
            "recall": _percent(metrics["recall"]),
            "f1": _percent(metrics["f1"]),
            "posts": info.split_sizes.get(split, ""),
        }
        for split, metrics in splits
    ]
    per_type_rows = [
        {
            "type": name,
            "precision": _percent(scores["precision"]),
            "recall": _percent(scores["recall"]),
            "f1": _percent(scores["f1"]),
            "support": scores["support"],
        }
        for name, scores in sorted(info.per_type.items())
    ]
    benchmark = BENCHMARKS.get(info.dataset_name)
    paper_rows = [
        {"name": name, "precision": f"{row.precision:.2f}", "recall": f"{row.recall:.2f}", "f1": f"{row.f1:.2f}"}
        for name, row in (benchmark.paper.items() if benchmark else ())
    ]
    measured_rows = [
        {
            "setup": run.setup,
            "validation_f1": f"{run.validation_f1:.2f}",
            "precision": f"{run.test.precision:.2f}",
            "recall": f"{run.test.recall:.2f}",
            "f1": f"**{run.test.f1:.2f}**",
            "wall_time": run.wall_time,
            "when": run.when,
        }
        for run in info.measured_here
    ]
    hyper = info.hyperparameters
    return ModelCard.from_template(
        card_data,
        template_path=template_path,
        model_name=info.model_name,
        task_title=task["title"],
        head_description=task["head"],
        text_model=info.text_model,
        vision_model=info.vision_model,
        vision_state=info.vision_state,
        smoke_scale=info.smoke_note is not None,
        smoke_note=info.smoke_note or "",
        status_title=info.status_title,
        status_note=info.status_note,
        paper_rows=paper_rows,
        dataset_title=benchmark.title if benchmark else "",
        measured_rows=measured_rows,
        measured_commands=info.measured_commands,
        dataset_terms=benchmark.terms if benchmark else _OWN_DATA_TERMS,
        limitations=list(info.limitations),
        task_metric_note=task["metric_note"].format(mode=info.ner_mode),
        result_rows=result_rows,
        per_type_rows=per_type_rows,
        dataset_description=info.dataset_description,
        split_sizes=", ".join(f"{split} {size}" for split, size in info.split_sizes.items()),
        media_summary=info.media_summary,
        command=info.command,
        auto_class=task["auto_class"],
        repo_id=info.repo_id,
        usage_example=task["usage"],
        **hyper,
    )


def card_for_run(
    model_args: "ModelArguments",
    data_args: "DataArguments",
    training_args: "MMIBTrainingArguments",
    task: str,
    data: datasets.DatasetDict,
    model: Any,
    media: dict,
    validation_metrics: dict,
    test_output,
    command: str,
) -> ModelCard:
    """The run's model card, with the validation and test scores in its model-index; `command` started the run."""
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
            command=command,
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
    )
