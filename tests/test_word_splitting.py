"""mmib/word_splitting_mmib.py: raw text to words with offsets, as the data files split them."""

import pytest

from conftest import (
    SHARED_DATA,
)
from mmib.word_splitting_mmib import split_words


@pytest.mark.parametrize(
    "text, words",
    [
        (
            "RT @JayKenMinaj: Me at http://t.co/Z3neVBQ7vF!",
            ["RT", "@JayKenMinaj", ":", "Me", "at", "http://t.co/Z3neVBQ7vF!"],
        ),
        ("Trump's #MAGA rally, 10,000 fans...", ["Trump", "'", "s", "#MAGA", "rally", ",", "10,000", "fans", "..."]),
        (
            "great 2-1 win :) w/ @bob \u2764\ufe0f\U0001f602",
            ["great", "2-1", "win", ":)", "w/", "@bob", "\u2764", "\ufe0f", "\U0001f602"],
        ),
        ("a 19-year-old (AT&T) &amp; me…", ["a", "19-year-old", "(", "AT&T", ")", "&amp", ";", "me", "…"]),
        ("May 21, 2017 in N.Y.", ["May", "21,", "2017", "in", "N", ".", "Y", "."]),
    ],
)
def test_split_words_follows_the_data_conventions_with_offsets(text, words):
    split = split_words(text)
    assert [word for word, _, _ in split] == words
    assert all(text[start:end] == word for word, start, end in split)


def test_split_words_round_trips_the_twitter_splits():
    """The measured round-trip shares (benchmarks/word_splitter_roundtrip.py); Twitter-2015's own tokenizer left
    punctuation attached in ~3% of posts (`no!`, `Services.`), which a splitter that splits punctuation cannot redo."""
    from mmib.data.twitter import read_conll

    minimum = {"twitter2015": 0.97, "twitter2017": 0.999}
    for name, share in minimum.items():
        files = [SHARED_DATA / name / split for split in ("train.txt", "valid.txt", "test.txt")]
        if not all(path.is_file() for path in files):
            pytest.skip(f"{name} text splits not found under {SHARED_DATA}")
        posts = [post.words for path in files for post in read_conll(path)]
        same = sum([word for word, _, _ in split_words(" ".join(words))] == words for words in posts)
        assert same / len(posts) >= share, (name, same / len(posts))
