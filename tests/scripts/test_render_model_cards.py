"""scripts/render_model_cards.py: the published cards in `model_cards/` are what it renders from the one template
(`mmib/training/model_card_template.md`), each training config and the results measured here."""

import runpy
import sys
from pathlib import Path

from huggingface_hub import ModelCard

from mmib.training.published_cards import PUBLISHED

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
    assert "| 78.41 | 77.33 | 80.06 | **78.66** |" in card.text  # the new log-variance start, seeds 42-44
    assert "configs/full_text_twitter2017.yaml" in card.text and "jefferyYu/UMT" in card.text
    # What the config sets, as `mmib train` parses it: configs/twitter2017.yaml says lr 3e-5, 30 epochs.
    assert "Learning rate 3e-05, batch size 8 per device × 1 process(es), 30.0 epoch(s), seed 42" in card.text
    assert 'from_pretrained("your-name/mmib-twitter17"' in card.text
    mnre = ModelCard.load(PUBLISHED_DIR / "mmib-mnre.md")
    assert mnre.data.pipeline_tag == "text-classification" and "| MMIB | 83.49 | 82.97 | 83.23 |" in mnre.text
    assert "**58.68**" in mnre.text and "3 crop slots, 80 tokens per post" in mnre.text
    assert "| 55.69 | 67.43 | 54.85 | **60.42** |" in mnre.text  # the new log-variance start, seeds 42-44
