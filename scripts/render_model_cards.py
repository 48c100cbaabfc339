"""Render the model cards of the checkpoints this project publishes (`mmib.training.published_cards.PUBLISHED`)
from the one card template that `train_mmib.py` uses, each training config and the results measured here.

    python scripts/render_model_cards.py model_cards [--configs configs]

`tests/scripts/test_render_model_cards.py` runs this script and compares its output with `model_cards/` byte for
byte: after changing the template, a config or a measured result, run it and commit the cards.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

from mmib.training.published_cards import render_published

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="Folder for the cards (the repository's model_cards/).")
    parser.add_argument(
        "--configs", default=str(CONFIGS), help="The training configs' folder (default: the repository's configs/)."
    )
    args = parser.parse_args(argv)
    for path in render_published(args.output_dir, args.configs):
        print(path)


if __name__ == "__main__":
    main()
