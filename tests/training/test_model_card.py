"""mmib.training.model_card: the card's model-index parses and holds the scores; the published cards in
`model_cards/` are what `scripts/render_model_cards.py` renders from the one template."""

import runpy
import sys
from pathlib import Path

from huggingface_hub import ModelCard

from mmib.training.model_card import PUBLISHED, TEMPLATE, ModelCardInfo, render_model_card


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


REPO = Path(__file__).resolve().parents[2]
PUBLISHED_DIR = REPO / "model_cards"


def test_published_cards_are_what_the_template_renders(tmp_path, monkeypatch, capsys):
    # The script as a user runs it, in this process (no second import of torch).
    monkeypatch.setattr(sys, "argv", ["render_model_cards.py", str(tmp_path), "--configs", str(REPO / "configs")])
    runpy.run_path(str(REPO / "scripts" / "render_model_cards.py"), run_name="__main__")
    rendered = sorted(path.name for path in tmp_path.iterdir())
    assert capsys.readouterr().out.split() == [str(tmp_path / card.file_name) for card in PUBLISHED]
    assert rendered == sorted(path.name for path in PUBLISHED_DIR.glob("*.md"))
    for name in rendered:
        assert (tmp_path / name).read_bytes() == (PUBLISHED_DIR / name).read_bytes(), (
            f"model_cards/{name} is stale: run `python scripts/render_model_cards.py model_cards`"
        )


def test_published_cards_hold_the_config_the_paper_and_the_measured_runs():
    card = ModelCard.load(PUBLISHED_DIR / "mmib-twitter17.md")
    # Not trained here: no results of its own, hence no model-index.
    assert card.data.eval_results is None and "## Results" not in card.text
    assert "| MMIB | 87.34 | 87.86 | 87.60 |" in card.text
    assert "| 76.27 | 73.93 | 79.57 | **76.65** |" in card.text
    assert "configs/full_text_twitter2017.yaml" in card.text and "jefferyYu/UMT" in card.text
    # What the config sets, as `mmib train` parses it: configs/twitter2017.yaml says lr 3e-5, 30 epochs.
    assert "Learning rate 3e-05, batch size 8 per device × 1 process(es), 30.0 epoch(s), seed 42" in card.text
    assert 'from_pretrained("your-name/mmib-twitter17"' in card.text
    mnre = ModelCard.load(PUBLISHED_DIR / "mmib-mnre.md")
    assert mnre.data.pipeline_tag == "text-classification" and "| MMIB | 83.49 | 82.97 | 83.23 |" in mnre.text
    assert "**58.68**" in mnre.text and "3 crop slots, 80 tokens per post" in mnre.text
