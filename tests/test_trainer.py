"""MMIBTrainer's loss and logs, prediction decoding with truncation, compute_metrics and the model card."""

from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, List, Value
from transformers import EvalPrediction, TrainingArguments

from conftest import NER_LABELS, make_image_processor, make_tokenizer, tiny_config
from mmib import MMIBForTokenClassification, MMIBProcessor
from mmib.collator import MMIBDataCollator
from mmib.model_card import ModelCardInfo, render_model_card
from mmib.predictions import build_compute_metrics, ner_tags_from_predictions, per_type_scores
from mmib.trainer import MMIBTrainer

TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "mmib_model_card_template.md"


def ner_dataset() -> Dataset:
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


def test_compute_loss_adds_the_weighted_regularizers_and_logs_their_means(trainer):
    batch = trainer.data_collator(list(ner_dataset()))
    trainer.model.eval()
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    expected = outputs.task_loss + 0.5 * outputs.kl_text + 0.25 * outputs.kl_vision + 2.0 * outputs.alignment_loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)

    trainer.model.train()
    parts = []
    for _ in range(2):
        with torch.no_grad():
            outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)[1]
        parts.append(outputs)
    logs = {"loss": 1.0}
    trainer.log(logs)
    assert logs["task_loss"] == pytest.approx(round((parts[0].task_loss + parts[1].task_loss).item() / 2, 4), abs=1e-4)
    assert logs["kl_text"] == pytest.approx(round((parts[0].kl_text + parts[1].kl_text).item() / 2, 4), abs=1e-4)
    assert trainer._loss_part_count == 0
    eval_logs = {"eval_loss": 1.0}
    trainer.log(eval_logs)
    assert "task_loss" not in eval_logs


def test_predict_returns_viterbi_paths_and_word_level_metrics(trainer):
    output = trainer.predict(ner_dataset())
    assert output.predictions.shape == (2, 4)
    assert np.isin(output.predictions, np.arange(len(NER_LABELS))).all()
    assert {"test_precision", "test_recall", "test_f1", "test_truncated_words"} <= set(output.metrics)
    assert output.label_ids.tolist() == [[1, 2, 0, 3], [0, 0, 3, 0]]


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
