"""Build the shipped Twitter-2017 demo sample (`examples/twitter2017-sample/`) from the full text splits.

The sample holds the first posts of each canonical split plus every post whose image exists among the public
sample images (`twitter2017/ritual_samples/`, renamed to their IMGID through `MAPPING.tsv`). All other posts have
no image file and are text-only (their image slot is masked). Run from the repository root:

    python examples/make_twitter2017_sample.py --data_dir ../shared/data/twitter2017
"""

import argparse
import csv
import shutil
from pathlib import Path

import datasets

from mmib.data import load_twitter_ner, write_jsonl

SPLIT_SIZES = {"train": 300, "validation": 100, "test": 100}
CANONICAL_SPLITS = {"train": "train", "valid": "validation", "test": "test"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="../shared/data/twitter2017")
    parser.add_argument("--output_dir", default="examples/twitter2017-sample")
    args = parser.parse_args()
    data_dir, output_dir = Path(args.data_dir), Path(args.output_dir)
    image_dir = output_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)

    with open(data_dir / "ritual_samples" / "MAPPING.tsv", encoding="utf-8") as handle:
        mapping = list(csv.DictReader(handle, delimiter="\t"))
    with_image = {split: set() for split in SPLIT_SIZES}
    for row in mapping:
        shutil.copyfile(data_dir / "ritual_samples" / row["ritual_path"], image_dir / row["canonical_image_name"])
        with_image[CANONICAL_SPLITS[row["canonical_split"]]].add(int(row["canonical_index"]))

    data = load_twitter_ner(data_dir, image_dir=image_dir)
    for split, size in SPLIT_SIZES.items():
        indexes = sorted(set(range(size)) | with_image[split])
        sample: datasets.Dataset = data[split].select(indexes)
        count = write_jsonl(sample, output_dir / f"{split}.jsonl")
        print(f"{split}: {count} posts, {sum(row['image'] is not None for row in sample)} with an image")


if __name__ == "__main__":
    main()
