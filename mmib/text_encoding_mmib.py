"""
Word-level text helpers shared by the NER and RE encoders of [`MMIBProcessor`]: input checks, sub-word counts, and
the position of each word's first sub-word.

This file travels to the Hub as remote code next to `processing_mmib.py`: it imports only torch, transformers and
the standard library.
"""

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase


def check_words(words: Any) -> list[list[str]]:
    """Validates a batch of pre-split posts and returns it as lists; errors name the post and word."""
    if isinstance(words, str) or not isinstance(words, Sequence):
        raise TypeError(f"words must be a list of words or a list of such lists, got {type(words).__name__}.")
    batch_words = []
    for index, post in enumerate(words):
        if isinstance(post, str) or not isinstance(post, Sequence):
            raise TypeError(f"words[{index}] (post {index}) must be a list of words, got {type(post).__name__}.")
        if len(post) == 0:
            raise ValueError(f"words[{index}] (post {index}) is empty: every post needs at least one word.")
        for position, word in enumerate(post):
            if not isinstance(word, str):
                raise TypeError(f"words[{index}][{position}] (post {index}) must be a str, got {type(word).__name__}.")
        batch_words.append(list(post))
    return batch_words


def check_all_or_none(labels: list[Any]) -> None:
    """Labels are given for every post of a batch or for none."""
    given = [label is not None for label in labels]
    if any(given) and not all(given):
        missing = given.index(False)
        raise ValueError(f"labels[{missing}] (post {missing}) is None: give labels for every post or for none.")


def tokenize_words(
    tokenizer: PreTrainedTokenizerBase, batch_words: list[list[str]]
) -> tuple[list[list[str]], list[list[int]]]:
    """
    Counts the sub-words of every word and replaces the words that the tokenizer turns into nothing (U+FE0F,
    U+200B, ...) by `tokenizer.unk_token`, so that every word keeps a position.

    Returns:
        `(words, counts)`: the words with vanishing ones replaced, and the sub-word count of each (at least 1).
    """
    encoding = tokenizer(batch_words, is_split_into_words=True, add_special_tokens=False)
    unk_token = str(tokenizer.unk_token)
    replaced, batch_counts = [], []
    for index, post in enumerate(batch_words):
        counts = [0] * len(post)
        for word_id in encoding.word_ids(index):
            if word_id is not None:
                counts[word_id] += 1
        replaced.append([unk_token if count == 0 else word for word, count in zip(post, counts)])
        batch_counts.append([max(count, 1) for count in counts])
    return replaced, batch_counts


def first_token_positions(
    tokenizer: PreTrainedTokenizerBase, batch_words: list[list[str]]
) -> tuple[dict[str, torch.Tensor], list[list[int]]]:
    """
    Tokenizes a batch of (already fitting) posts with special tokens and padding.

    Returns:
        `(text_inputs, positions)`: the tokenizer's model inputs as long tensors, and per post the position of the
        first sub-word of each word.
    """
    encoding = tokenizer(batch_words, is_split_into_words=True, padding=True)
    batch_positions = []
    for index, post in enumerate(batch_words):
        positions = [-1] * len(post)
        for position, word_id in enumerate(encoding.word_ids(index)):
            if word_id is not None and positions[word_id] == -1:
                positions[word_id] = position
        batch_positions.append(positions)
    text_inputs = {
        name: torch.tensor(encoding[name], dtype=torch.long)
        for name in tokenizer.model_input_names
        if name in encoding
    }
    return text_inputs, batch_positions
