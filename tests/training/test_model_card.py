"""mmib.training.model_card: the card's model-index parses and holds the scores."""

from huggingface_hub import ModelCard

from mmib.training.model_card import TEMPLATE, ModelCardInfo, render_model_card


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
    loaded = ModelCard.load(tmp_path / "README.md")
    values = {(r.dataset_split, r.metric_type): r.metric_value for r in loaded.data.eval_results}
    assert values[("test", "precision")] == 81.23 and values[("validation", "f1")] == 74.67
    assert loaded.data.license == "apache-2.0" and "AutoModelForTokenClassification" in loaded.text
    assert "| PER | 90.00 | 80.00 | 85.00 | 10 |" in loaded.text
    assert "Smoke-scale" not in loaded.text
    # A run on a benchmark shows the paper's results beside its own.
    assert "| MMIB | 87.34 | 87.86 | 87.60 |" in loaded.text
