"""mmib.training.collator: cached features give the model exactly what pixels give it; relation rows collate."""

import torch

from conftest import make_image, make_image_processor, make_tokenizer, tiny_config
from mmib import MMIBForRelationClassification, MMIBProcessor
from mmib.features import ImageFeatureStore
from mmib.training.collator import MMIBDataCollator


def ner_rows(files: dict[str, str]) -> list[dict]:
    return [
        {
            "words": ["john", "smith", "visits", "london"],
            "ner_tags": [1, 2, 0, 3],
            "image": files["image0"],
            "crops": [files["image1"], files["corrupt"]],
        },
        {"words": ["i", "love", "paris"], "ner_tags": [0, 0, 3], "image": None, "crops": []},
        {
            "words": ["rt", "@", "the", "city"],
            "ner_tags": [0, 0, 0, 0],
            "image": files["image2"],
            "crops": [files["image0"], files["image1"], files["image2"]],
        },
    ]


def test_cached_features_and_pixels_give_the_same_outputs(model, image_files):
    processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="ner", num_crops=2)
    rows = ner_rows(image_files)
    store = ImageFeatureStore.build(
        model.mmib, processor.image_processor, [p for row in rows for p in [row["image"], *row["crops"]]]
    )
    cached = MMIBDataCollator(processor, store)(rows)
    assert "pixel_values" not in cached and cached["image_features"].shape == (3, 3, 16)
    # Both paths mask the corrupt crop in its own slot (crops beyond num_crops=2 are dropped).
    raw = MMIBDataCollator(processor)(rows)
    assert raw["image_mask"].tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert torch.equal(cached["image_mask"], raw["image_mask"])
    assert torch.equal(cached["labels"], raw["labels"]) and torch.equal(cached["word_index"], raw["word_index"])
    with torch.no_grad():
        from_cache, from_pixels = model(**cached), model(**raw)
    assert torch.allclose(from_cache.logits, from_pixels.logits, atol=1e-5)
    assert torch.allclose(from_cache.loss, from_pixels.loss, atol=1e-5)


def test_relation_rows_collate_with_spans_and_labels(image_files):
    torch.manual_seed(0)
    processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="re", num_crops=2)
    model = MMIBForRelationClassification(tiny_config(id2label={0: "None", 1: "/per/loc/place_of_residence"}))
    model.resize_token_embeddings(len(processor.tokenizer))
    model.eval()
    rows = [
        {
            "words": ["john", "visits", "london", "festival"],
            "head_span": [0, 1],
            "tail_span": [2, 3],
            "relation": 1,
            "image": image_files["image0"],
            "crops": [image_files["image1"]],
        },
        {
            "words": ["paris", "and", "london"],
            "head_span": [2, 3],
            "tail_span": [0, 1],
            "relation": 0,
            "image": None,
            "crops": [],
        },
    ]
    batch = MMIBDataCollator(processor)(rows)
    # By hand, the second post padded to the first one's length.
    tokens = [processor.tokenizer.convert_ids_to_tokens(ids) for ids in batch["input_ids"].tolist()]
    assert tokens[0] == ["[CLS]", "<s>", "john", "</s>", "visits", "<o>", "london", "</o>", "festival", "[SEP]"]
    assert tokens[1] == ["[CLS]", "<o>", "paris", "</o>", "and", "<s>", "london", "</s>", "[SEP]", "[PAD]"]
    assert batch["entity_positions"].tolist() == [[[1, 3], [5, 7]], [[5, 7], [1, 3]]]
    assert batch["labels"].tolist() == [1, 0]
    assert batch["image_mask"].tolist() == [[True, True, False], [False, False, False]]
    expected_pixels = make_image_processor()(images=[make_image(0), make_image(1)], return_tensors="pt")
    torch.testing.assert_close(batch["pixel_values"][0, :2], expected_pixels["pixel_values"])
    assert not batch["pixel_values"][0, 2].any() and not batch["pixel_values"][1].any()

    # Each row gives, inside the padded batch, the logits it gives alone (a path with no padding and no other post).
    with torch.no_grad():
        batch_logits = model(**batch).logits
        for index, row in enumerate(rows):
            alone = model(**MMIBDataCollator(processor)([row])).logits
            torch.testing.assert_close(batch_logits[index], alone[0], atol=1e-5, rtol=1e-5)
