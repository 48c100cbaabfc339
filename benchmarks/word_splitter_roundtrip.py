"""Round trip of the tweet word splitter on Twitter-2015/2017: join each post's words with spaces, split again.

python benchmarks/word_splitter_roundtrip.py [--data_dir ../shared/data] [--show 5]

Prints, per dataset (train+dev+test), the share of posts whose words come back identical, and a few failures.
"""

import argparse
from pathlib import Path

from mmib.data import load_twitter_ner
from mmib.word_splitting_mmib import split_words


def round_trip(posts: list[list[str]]) -> tuple[float, list[tuple[list[str], list[str]]]]:
    failures = []
    for words in posts:
        split = [word for word, _, _ in split_words(" ".join(words))]
        if split != words:
            failures.append((words, split))
    return 1 - len(failures) / len(posts), failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--show", type=int, default=5, help="failures to print per dataset")
    args = parser.parse_args()
    for name in ("twitter2015", "twitter2017"):
        splits = load_twitter_ner(Path(args.data_dir) / name)
        posts = [words for split in splits.values() for words in split["words"]]
        share, failures = round_trip(posts)
        print(f"{name}: {share:.2%} of {len(posts)} posts round-trip ({len(failures)} differ)")
        for words, split in failures[: args.show]:
            difference = [(a, b) for a, b in zip(words, split) if a != b][:1]
            print(f"  data {len(words)} words, split {len(split)}; first difference {difference}")


if __name__ == "__main__":
    main()
