"""MMIBTrainer's loss and logs, prediction decoding with truncation, compute_metrics and the model card."""

from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, List, Value
from test_modeling import all_path_scores
from torch import nn
from transformers import EvalPrediction, TrainingArguments

from conftest import NER_LABELS, make_image, make_image_processor, make_tokenizer, tiny_config
from mmib import MMIBForTokenClassification, MMIBProcessor
from mmib.training.collator import MMIBDataCollator
from mmib.training.model_card import TEMPLATE, ModelCardInfo, render_model_card
from mmib.training.evaluation import build_compute_metrics, ner_tags_from_predictions, per_type_scores
from mmib.training.trainer import LOSS_PARTS, MMIBTrainer



def ner_dataset(image_folder: Path | None = None) -> Dataset:
    """Two posts; with `image_folder`, each with an image and a crop written there (so that every loss part counts),
    else without images."""
    features = Features(
        {
            "id": Value("string"),
            "words": List(Value("string")),
            "ner_tags": List(ClassLabel(names=NER_LABELS)),
            "image": Value("string"),
            "crops": List(Value("string")),
        }
    )
    rows = [
        {
            "id": "a",
            "words": ["john", "smith", "visits", "london"],
            "ner_tags": [1, 2, 0, 3],
            "image": None,
            "crops": [],
        },
        {"id": "b", "words": ["i", "love", "paris", "!"], "ner_tags": [0, 0, 3, 0], "image": None, "crops": []},
    ]
    if image_folder is not None:
        for index, row in enumerate(rows):
            row["image"], row["crops"] = str(image_folder / f"{index}.png"), [str(image_folder / f"{index}-crop.png")]
            make_image(2 * index).save(row["image"])
            make_image(2 * index + 1).save(row["crops"][0])
    return Dataset.from_list(rows, features=features)


@pytest.fixture
def trainer(tmp_path) -> MMIBTrainer:
    torch.manual_seed(0)
    model = MMIBForTokenClassification(tiny_config(beta_text=0.5, beta_vision=0.25, alignment_weight=2.0))
    processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="ner", num_crops=2)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        remove_unused_columns=False,
        label_names=["labels"],
        per_device_eval_batch_size=2,
    )
    dataset = ner_dataset()
    return MMIBTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=dataset,
        data_collator=MMIBDataCollator(processor),
        processing_class=processor,
        compute_metrics=build_compute_metrics("ner", dataset, model.config.id2label),
    )


def test_compute_loss_adds_the_weighted_regularizers_and_logs_their_means(trainer, tmp_path):
    batch = trainer.data_collator(list(ner_dataset(tmp_path)))
    trainer.model.eval()
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    part = {name: outputs[name].item() for name in LOSS_PARTS}
    # The task loss by brute force: the mean CRF negative log-likelihood of the two posts' gold tags.
    nlls = []
    for post, gold in enumerate(batch["labels"].tolist()):
        paths, scores = all_path_scores(trainer.model.crf, outputs.logits[post])
        nlls.append((scores.logsumexp(0) - scores[paths.tolist().index(gold)]).item())
    assert part["task_loss"] == pytest.approx(sum(nlls) / 2, rel=1e-5)
    # The fixture's weights: beta_text 0.5, beta_vision 0.25, alignment_weight 2.0. Each term moves the loss far
    # beyond the tolerance, and the two KLs differ, so that a term left out or two weights swapped shows.
    terms = [0.5 * part["kl_text"], 0.25 * part["kl_vision"], 2.0 * part["alignment_loss"]]
    assert min(abs(term) for term in terms) > 1e-3 * abs(part["task_loss"])
    assert abs(part["kl_text"] - part["kl_vision"]) * 0.25 > 1e-3 * abs(part["task_loss"])
    expected = part["task_loss"] + 0.5 * part["kl_text"] + 0.25 * part["kl_vision"] + 2.0 * part["alignment_loss"]
    assert loss.item() == pytest.approx(expected, rel=1e-6)

    trainer.model.train()
    parts = []
    for _ in range(2):
        with torch.no_grad():
            outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)[1]
        parts.append({name: outputs[name].item() for name in LOSS_PARTS})
    assert parts[0]["kl_text"] != parts[1]["kl_text"]  # sampled latents: the two passes differ
    logs = {"loss": 1.0}
    trainer.log(logs)
    for name in LOSS_PARTS:
        assert logs[name] == pytest.approx(round((parts[0][name] + parts[1][name]) / 2, 4), abs=1e-4), name
    assert trainer._loss_part_count == 0
    eval_logs = {"eval_loss": 1.0}
    trainer.log(eval_logs)
    assert "task_loss" not in eval_logs


class TwoReplicas(nn.Module):
    """What `nn.DataParallel` does with two GPUs, on the CPU: each half of the batch goes through the module, and the
    outputs are gathered as its `gather` does (0-dim tensors become one value per replica, the others are
    concatenated along the batch)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, **inputs):
        halves = [{name: value[index::2] for name, value in inputs.items()} for index in range(2)]
        outputs = [self.module(**half) for half in halves]
        return type(outputs[0])(
            **{
                name: torch.stack([out[name] for out in outputs])
                if outputs[0][name].dim() == 0
                else torch.cat([out[name] for out in outputs])
                for name in outputs[0].keys()
            }
        )


def test_a_data_parallel_training_step_averages_loss_and_parts_over_the_replicas(trainer, monkeypatch, tmp_path):
    """`python train_mmib.py` on two GPUs without a launcher: the Trainer wraps the model in `nn.DataParallel`."""
    monkeypatch.setattr(trainer.args, "_n_gpu", 2)  # what TrainingArguments finds on such a machine
    batch = trainer.data_collator(list(ner_dataset(tmp_path)))
    replicas = TwoReplicas(trainer.model).train()
    # By hand: each replica's half of the batch alone, with the same sampled latents (same seed, same order).
    torch.manual_seed(7)
    with torch.no_grad():
        halves = [trainer.model(**{name: value[index::2] for name, value in batch.items()}) for index in range(2)]
    by_replica = [{name: half[name].item() for name in ("loss", *LOSS_PARTS)} for half in halves]
    for part in by_replica:
        weighted = 0.5 * part["kl_text"] + 0.25 * part["kl_vision"] + 2.0 * part["alignment_loss"]
        assert part["loss"] == pytest.approx(part["task_loss"] + weighted, rel=1e-6)
    assert by_replica[0]["task_loss"] != pytest.approx(by_replica[1]["task_loss"], rel=1e-3)

    torch.manual_seed(7)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this step is taken out of
    loss = trainer.training_step(replicas, batch)
    assert loss.item() == pytest.approx((by_replica[0]["loss"] + by_replica[1]["loss"]) / 2, rel=1e-5)
    assert all(p.grad is not None for p in trainer.model.classifier.parameters())
    logs = {"loss": loss.item()}
    trainer.log(logs)
    for name in LOSS_PARTS:
        mean = (by_replica[0][name] + by_replica[1][name]) / 2
        assert logs[name] == pytest.approx(round(mean, 4), abs=1e-4), name


def bio_entities(tags: list[str]) -> set[tuple[int, int, str]]:
    """(start, end, type) spans of a BIO sequence, written out for the test (an I- without its B- starts nothing)."""
    spans, start, kind = set(), None, None
    for position, tag in enumerate([*tags, "O"]):
        if start is not None and tag != f"I-{kind}":
            spans.add((start, position, kind))
            start = None
        if tag.startswith("B-"):
            start, kind = position, tag[2:]
    return spans


def test_predict_returns_viterbi_paths_and_word_level_metrics(trainer):
    model = trainer.model
    label_id = {name: index for index, name in enumerate(NER_LABELS)}
    with torch.no_grad():
        # Transitions that spell B-PER I-PER O B-LOC over four words, far above the tiny random emissions.
        model.crf.start_transitions.fill_(-5.0)
        model.crf.start_transitions[label_id["B-PER"]] = 5.0
        model.crf.end_transitions.fill_(-5.0)
        model.crf.end_transitions[label_id["B-LOC"]] = 5.0
        model.crf.transitions.fill_(-5.0)
        for previous, current in [("B-PER", "I-PER"), ("I-PER", "O"), ("O", "B-LOC")]:
            model.crf.transitions[label_id[previous], label_id[current]] = 5.0
    output = trainer.predict(ner_dataset())

    model.eval()
    batch = trainer.data_collator(list(ner_dataset()))
    with torch.no_grad():
        logits = model(**batch).logits
    for post in range(2):
        paths, scores = all_path_scores(model.crf, logits[post])
        assert output.predictions[post].tolist() == paths[scores.argmax()].tolist()
    designed = [label_id[tag] for tag in ("B-PER", "I-PER", "O", "B-LOC")]
    assert output.predictions.tolist() == [designed, designed]
    assert output.label_ids.tolist() == [[1, 2, 0, 3], [0, 0, 3, 0]]

    gold = [bio_entities([NER_LABELS[i] for i in row]) for row in output.label_ids.tolist()]
    predicted = [bio_entities([NER_LABELS[i] for i in row]) for row in output.predictions.tolist()]
    correct = sum(len(g & p) for g, p in zip(gold, predicted))
    precision = correct / sum(map(len, predicted))
    recall = correct / sum(map(len, gold))
    assert (correct, precision, recall) == (2, 0.5, pytest.approx(2 / 3))
    assert output.metrics["test_precision"] == pytest.approx(precision)
    assert output.metrics["test_recall"] == pytest.approx(recall)
    assert output.metrics["test_f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert output.metrics["test_truncated_words"] == 0


def test_truncated_words_are_predicted_o_and_scored():
    dataset = ner_dataset()
    id2label = dict(enumerate(NER_LABELS))
    # Post b lost its last two words to truncation: they are filled with O and counted.
    predictions = np.array([[1, 2, 0, 3], [0, 0, -100, -100]])
    tags, truncated = ner_tags_from_predictions(predictions, dataset, id2label)
    assert tags == [["B-PER", "I-PER", "O", "B-LOC"], ["O", "O", "O", "O"]]
    assert truncated == 2
    metrics = build_compute_metrics("ner", dataset, id2label)(EvalPrediction(predictions, None))
    # Gold: PER, LOC (post a), LOC (post b); predicted: PER, LOC. P = 2/2, R = 2/3.
    assert metrics["precision"] == 1.0 and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(0.8) and metrics["truncated_words"] == 2
    with pytest.raises(ValueError, match="3 predictions for 2 dataset rows"):
        ner_tags_from_predictions(np.zeros((3, 4), dtype=int), dataset, id2label)


def test_more_labels_than_words_is_an_error_naming_the_row():
    """A Viterbi path never has more labels than words: if one had, cutting it silently would hide a bug."""
    dataset = ner_dataset()
    predictions = np.array([[1, 2, 0, 3, -100], [0, 0, 0, 0, 0]])
    assert [len(words) for words in dataset["words"]] == [4, 4]
    with pytest.raises(ValueError, match=r"predictions\[1\] has 5 labels but post 1 has 4 words"):
        ner_tags_from_predictions(predictions, dataset, dict(enumerate(NER_LABELS)))


def test_relation_metrics_ignore_none():
    features = Features({"relation": ClassLabel(names=["None", "/per/per/peer", "/loc/loc/contain"])})
    dataset = Dataset.from_list([{"relation": 1}, {"relation": 0}, {"relation": 2}, {"relation": 1}], features)
    logits = np.array([[0, 5, 0], [0, 0, 5], [5, 0, 0], [0, 5, 0]], dtype=float)
    metrics = build_compute_metrics("re", dataset, {0: "None", 1: "/per/per/peer", 2: "/loc/loc/contain"})(
        EvalPrediction(logits, None)
    )
    # Predicted non-None: peer, contain, peer (2 correct); gold non-None: peer, contain, peer.
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(0.5)


def test_model_card_model_index_parses_and_holds_the_scores(tmp_path):
    info = ModelCardInfo(
        task="ner",
        model_name="mmib-test",
        repo_id="me/mmib-test",
        dataset_name="twitter2017",
        dataset_description="Twitter-2017",
        text_model="bert-base-cased",
        vision_model="microsoft/resnet-50",
        vision_state="pretrained, frozen",
        command="python train_mmib.py configs/twitter2017.yaml",
        split_sizes={"train": 3373, "validation": 723, "test": 723},
        media_summary="{}",
        validation_metrics={"precision": 0.8, "recall": 0.7, "f1": 0.74666},
        test_metrics={"precision": 0.81234, "recall": 0.7, "f1": 0.75},
        hyperparameters={
            "beta_text": 0.1,
            "beta_vision": 0.1,
            "alignment_weight": 1.0,
            "learning_rate": 3e-5,
            "batch_size": 8,
            "world_size": 1,
            "epochs": 30,
            "seed": 42,
            "hardware": "GPU",
        },
        per_type={"PER": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10}},
    )
    card = render_model_card(info, str(TEMPLATE))
    card.save(tmp_path / "README.md")
    from huggingface_hub import ModelCard

    loaded = ModelCard.load(tmp_path / "README.md")
    values = {(r.dataset_split, r.metric_type): r.metric_value for r in loaded.data.eval_results}
    assert values[("test", "precision")] == 81.23 and values[("validation", "f1")] == 74.67
    assert loaded.data.license == "apache-2.0" and "AutoModelForTokenClassification" in loaded.text
    assert "| PER | 90.00 | 80.00 | 85.00 | 10 |" in loaded.text
    assert "Smoke-scale" not in loaded.text


def test_per_type_scores_come_back_from_flat_metrics():
    dataset = ner_dataset()
    metrics = build_compute_metrics("ner", dataset, dict(enumerate(NER_LABELS)))(
        EvalPrediction(np.array([[1, 2, 0, 3], [0, 0, 0, 0]]), None)
    )
    metrics = {f"test_{key}": value for key, value in metrics.items()}
    scores = per_type_scores(metrics, "test")
    assert scores["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert scores["LOC"]["recall"] == 0.5 and scores["LOC"]["support"] == 2
