"""
NER text encoding of [`MMIBProcessor`]: word-level labels, whole-word truncation and `word_index`.

This file travels to the Hub as remote code next to `processing_mmib.py`: it imports only torch, transformers and
sibling files.
"""

import logging
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from .text_encoding_mmib import check_all_or_none, first_token_positions, tokenize_words

logger = logging.getLogger(__name__)


def encode_ner(
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    batch_words: list[list[str]],
    labels: list[Any],
) -> dict[str, torch.Tensor]:
    """
    Tokenizes a batch of posts word by word and keeps, from the left, the whole words whose sub-words fit in
    `max_length` tokens (special tokens included).

    A post whose first word alone does not fit keeps no word: its `word_index` row is all -1 and its `labels` row
    all -100, so the rest of the batch is unaffected; a warning names the post, and post-processing tags all its
    words `O` and counts them in `truncated_words`.

    Args:
        tokenizer ([`PreTrainedTokenizerBase`]): the text tower's tokenizer.
        max_length (`int`): token budget per post.
        batch_words (`list[list[str]]`): checked, non-empty posts.
        labels (`list`): per post a list of label ids (one per word) or `None`.

    Returns:
        The tokenizer's inputs, `word_index` `(B, W)` (first sub-word of each kept word, -1 padding, W >= 1) and,
        with labels, `labels` `(B, W)` (-100 padding).
    """
    for index, (post, post_labels) in enumerate(zip(batch_words, labels)):
        if post_labels is not None and len(post_labels) != len(post):
            raise ValueError(f"labels[{index}] has {len(post_labels)} entries but post {index} has {len(post)} words.")
    check_all_or_none(labels)

    batch_words, batch_counts = tokenize_words(tokenizer, batch_words)
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    kept_words = []
    for index, (post, counts) in enumerate(zip(batch_words, batch_counts)):
        num_kept, used = 0, 0
        while num_kept < len(post) and used + counts[num_kept] <= budget:
            used += counts[num_kept]
            num_kept += 1
        if num_kept == 0:
            logger.warning(
                "Post %d: its first word has %d sub-words, more than the %d that max_length=%d leaves; none of its "
                "%d words is kept, they are all tagged O.",
                index,
                counts[0],
                budget,
                max_length,
                len(post),
            )
        kept_words.append(post[:num_kept])

    text_inputs, batch_positions = first_token_positions(tokenizer, kept_words)
    # At least one column, so that a batch in which no post keeps a word still has a (B, 1) all -1 word_index.
    num_words = max(1, max(len(post) for post in kept_words))
    word_index = torch.full((len(kept_words), num_words), -1, dtype=torch.long)
    for index, positions in enumerate(batch_positions):
        word_index[index, : len(positions)] = torch.tensor(positions, dtype=torch.long)
    text_inputs["word_index"] = word_index
    if labels[0] is not None:
        label_tensor = torch.full((len(kept_words), num_words), -100, dtype=torch.long)
        for index, (kept, post_labels) in enumerate(zip(kept_words, labels)):
            label_tensor[index, : len(kept)] = torch.tensor(
                [int(label) for label in post_labels[: len(kept)]], dtype=torch.long
            )
        text_inputs["labels"] = label_tensor
    return text_inputs
