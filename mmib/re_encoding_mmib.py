"""
RE text encoding of [`MMIBProcessor`]: the entity markers `<s> </s> <o> </o>`, their place in the tokenizer, and
truncation that never cuts the stretch between the two entities; and how entity types are spelt in relation type
signatures (`MMIBConfig.relation_type_signatures`).

This file travels to the Hub as remote code next to `processing_mmib.py`: it imports only torch, transformers and
sibling files.
"""

import copy
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from .text_encoding_mmib import check_all_or_none, first_token_positions, tokenize_words

ENTITY_MARKERS = ("<s>", "</s>", "<o>", "</o>")
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# Entity type names as relation signatures spell them (MNRE's `/per/loc/place_of_birth`): lower case, and the
# Twitter-2015 NER type OTHER under MNRE's name for the same class, misc.
TYPE_ALIASES = {"other": "misc"}


def normalize_entity_type(name: str) -> str:
    """An entity type as relation type signatures spell it: `"PER"` -> `"per"`, `"OTHER"` -> `"misc"`."""
    name = name.casefold()
    return TYPE_ALIASES.get(name, name)


def with_entity_markers(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """
    A tokenizer that knows the entity markers as special tokens.

    The caller's tokenizer is never changed: when a marker is missing, the markers are added to a copy, which is
    returned (its vocabulary is larger by up to 4; resize the text embeddings to `len(tokenizer)`). A tokenizer
    that already has all markers (e.g. one saved by an RE processor) is returned as is.

    Raises:
        ValueError: one of the tokenizer's own special tokens is a marker.
    """
    for attribute in NAMED_SPECIAL_TOKENS:
        token = getattr(tokenizer, attribute, None)
        if token is not None and str(token) in ENTITY_MARKERS:
            raise ValueError(
                f"The tokenizer's {attribute} is {str(token)!r}, which is also an MMIB entity marker "
                f"{ENTITY_MARKERS}; task='re' needs a tokenizer whose own special tokens differ from the markers."
            )
    vocab = tokenizer.get_vocab()
    missing = [marker for marker in ENTITY_MARKERS if marker not in vocab]
    if not missing:
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_tokens(missing, special_tokens=True)
    return tokenizer


def hide_markers(word: str) -> str:
    """
    `word` with the angle brackets of any marker text in it (`<s>` in a post) replaced by `‹ ›`: the markers are
    added tokens, matched anywhere in the text, so a post's own `<s>` would otherwise pose as an entity marker.
    """
    if any(marker in word for marker in ENTITY_MARKERS):
        return word.replace("<", "‹").replace(">", "›")
    return word


def num_fixed_re_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """Tokens every RE post needs besides its words: the special tokens and the 4 markers."""
    return tokenizer.num_special_tokens_to_add(pair=False) + len(ENTITY_MARKERS)


def check_span(span: Any, field: str, index: int, num_words: int) -> tuple[int, int]:
    """A `(start, end)` word span (end exclusive) inside a post of `num_words` words."""
    if isinstance(span, torch.Tensor):
        span = span.tolist()
    if not isinstance(span, Sequence) or len(span) != 2:
        raise ValueError(f"{field}[{index}] (post {index}) must be a (start, end) pair, got {span!r}.")
    start, end = int(span[0]), int(span[1])
    if not 0 <= start < end <= num_words:
        raise ValueError(
            f"{field}[{index}] = {(start, end)} is out of range for post {index} with {num_words} words "
            f"(need 0 <= start < end <= {num_words}, end exclusive)."
        )
    return start, end


def marker_order(head: tuple[int, int], tail: tuple[int, int]) -> list[tuple[int, int]]:
    """
    The four markers of one post in the order they are written: `(word offset, index in ENTITY_MARKERS)` pairs,
    a marker at offset `k` going just before word `k`.

    At one offset: closing markers before opening ones (touching spans: `</s> <o>`); of two closing markers, the
    span that starts later (the inner one) closes first; of two opening markers, the span that ends later (the outer
    one) opens first; identical spans count the head as the outer one (`<s> <o> ... </o> </s>`). So nested,
    identical and touching spans are always well bracketed.
    """
    inserts = []
    for entity, (start, end) in enumerate((head, tail)):
        # Ranks at one offset: closing (0) before opening (1); then inner-first for closing, outer-first for
        # opening; on a full tie (identical spans) the tail (entity 1) is inside the head.
        inserts.append(((start, 1, -end, entity), start, 2 * entity))
        inserts.append(((end, 0, -start, 1 - entity), end, 2 * entity + 1))
    return [(offset, marker) for _, offset, marker in sorted(inserts)]


def encode_re(
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    batch_words: list[list[str]],
    head_spans: list[Any],
    tail_spans: list[Any],
    labels: list[Any],
) -> dict[str, torch.Tensor]:
    """
    Puts the markers around the head (`<s> ... </s>`) and tail (`<o> ... </o>`) spans and tokenizes the posts.

    Every marker goes at its word offset, whatever the two spans share: they may be apart, touch, nest, be identical
    or cross. Markers at one offset follow one rule ([`marker_order`]) that keeps the spans well bracketed:
    closing markers before opening ones; of two closing markers, the inner span's first; of two opening markers, the
    outer span's first; identical spans count the head as the outer one. For example, with head (0, 2) and tail
    (0, 1): `<s> <o> w0 </o> w1 </s>`; head = tail = (0, 1): `<s> <o> w0 </o> </s>`; head (0, 1) and tail (1, 2):
    `<s> w0 </s> <o> w1 </o>`. Crossing spans (head (0, 2), tail (1, 3)) share no offset and cannot be well
    bracketed: `<s> w0 <o> w1 </s> w2 </o>`.

    A word holding a marker's text is read with the marker's angle brackets as `‹ ›` ([`hide_markers`]). Words are
    dropped from the right end, then from the left end, never from the stretch that runs from the first to
    the last marked entity; if that stretch does not fit in `max_length`, a `ValueError` names the post.

    Args:
        tokenizer ([`PreTrainedTokenizerBase`]): a tokenizer with the markers (see [`with_entity_markers`]).
        max_length (`int`): token budget per post, special tokens and markers included.
        batch_words (`list[list[str]]`): checked, non-empty posts.
        head_spans, tail_spans (`list`): one `(start, end)` word span per post.
        labels (`list`): one relation id or `None` per post.

    Returns:
        The tokenizer's inputs, `entity_positions` `(B, 2, 2)` (`[[<s>, </s>], [<o>, </o>]]` token positions) and,
        with labels, `labels` `(B,)`.
    """
    spans = []
    for index, post in enumerate(batch_words):
        head = check_span(head_spans[index], "head_spans", index, len(post))
        tail = check_span(tail_spans[index], "tail_spans", index, len(post))
        spans.append((head, tail))
    check_all_or_none(labels)

    batch_words = [[hide_markers(word) for word in post] for post in batch_words]
    batch_words, batch_counts = tokenize_words(tokenizer, batch_words)
    fixed = num_fixed_re_tokens(tokenizer)
    marked_words, marker_word_indices = [], []
    for index, (post, counts, (head, tail)) in enumerate(zip(batch_words, batch_counts, spans)):
        first, last = min(head[0], tail[0]), max(head[1], tail[1])
        low, high = 0, len(post)
        total = fixed + sum(counts)
        while total > max_length:
            if high > last:
                high -= 1
                total -= counts[high]
            elif low < first:
                total -= counts[low]
                low += 1
            else:
                raise ValueError(
                    f"Post {index}: the head and tail entities and the words between them need {total} tokens "
                    f"with special tokens and markers, more than max_length={max_length}."
                )
        inserts = marker_order(head, tail)
        marked, marker_indices = [], [0] * len(ENTITY_MARKERS)
        insert_position = 0
        for offset in range(low, high + 1):
            while insert_position < len(inserts) and inserts[insert_position][0] == offset:
                marker = inserts[insert_position][1]
                marker_indices[marker] = len(marked)
                marked.append(ENTITY_MARKERS[marker])
                insert_position += 1
            if offset < high:
                marked.append(post[offset])
        marked_words.append(marked)
        marker_word_indices.append(marker_indices)

    text_inputs, batch_positions = first_token_positions(tokenizer, marked_words)
    text_inputs["entity_positions"] = torch.tensor(
        [
            [[positions[indices[0]], positions[indices[1]]], [positions[indices[2]], positions[indices[3]]]]
            for positions, indices in zip(batch_positions, marker_word_indices)
        ],
        dtype=torch.long,
    )
    if labels[0] is not None:
        text_inputs["labels"] = torch.tensor([int(label) for label in labels], dtype=torch.long)
    return text_inputs
