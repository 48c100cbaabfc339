"""Every MMIB forward refuses what a user can get wrong with a ValueError naming the argument and what it expected."""

import pytest
import torch

from conftest import IMAGE_SIZE, tiny_config
from mmib import MMIBForRelationClassification, MMIBForTokenClassification, MMIBModel, modeling_mmib

B, L, W, N = 3, 8, 4, 3  # posts, tokens, words, image slots (num_crops=2)


def ner_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(5, 64, (B, L), generator=generator),
        "attention_mask": torch.ones(B, L, dtype=torch.long),
        "token_type_ids": torch.zeros(B, L, dtype=torch.long),
        "word_index": torch.tensor([[1, 2, 4, 6], [1, 3, -1, -1], [1, 2, 3, 5]]),
        "labels": torch.tensor([[1, 0, 3, 0], [0, 0, -100, -100], [0, 2, 8, 0]]),
        "pixel_values": torch.randn(B, N, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "image_mask": torch.ones(B, N, dtype=torch.bool),
    }


def re_batch() -> dict[str, torch.Tensor]:
    batch = {key: value for key, value in ner_batch().items() if key not in ("word_index", "labels")}
    batch["entity_positions"] = torch.tensor([[[1, 3], [4, 6]], [[1, 2], [3, 4]], [[0, 2], [5, 7]]])
    batch["labels"] = torch.tensor([0, 3, 1])
    return batch


def with_features(batch: dict, features: torch.Tensor) -> dict:
    return {**{key: value for key, value in batch.items() if key != "pixel_values"}, "image_features": features}


def nan_features() -> torch.Tensor:
    features = torch.zeros(B, N, 16)
    features[1, 2, 5] = float("nan")
    return features


# (name, change of the batch, message). The feature width of tiny_config is 16.
COMMON_CASES = [
    ("input_ids 1-d", lambda b: {**b, "input_ids": b["input_ids"][0]}, r"input_ids has shape \(8,\), expected"),
    ("input_ids float", lambda b: {**b, "input_ids": b["input_ids"].float()}, r"input_ids must hold integer ids"),
    ("input_ids bool", lambda b: {**b, "input_ids": b["input_ids"] > 9}, r"input_ids must hold integer ids"),
    ("input_ids list", lambda b: {**b, "input_ids": b["input_ids"].tolist()}, r"input_ids must be a torch.Tensor"),
    ("input_ids too large", lambda b: {**b, "input_ids": b["input_ids"] + 64}, r"input_ids holds \d+, outside .*63\]"),
    ("input_ids negative", lambda b: {**b, "input_ids": b["input_ids"] - 100}, r"input_ids holds -\d+, outside"),
    (
        "attention_mask shape",
        lambda b: {**b, "attention_mask": b["attention_mask"][:, :5]},
        r"attention_mask has shape",
    ),
    ("token_type_ids shape", lambda b: {**b, "token_type_ids": b["token_type_ids"][:2]}, r"token_type_ids has shape"),
    ("token_type_ids float", lambda b: {**b, "token_type_ids": b["token_type_ids"].float()}, "token_type_ids must"),
    (
        "pixel_values 4-d",
        lambda b: {**b, "pixel_values": b["pixel_values"][:, 0]},
        r"pixel_values has shape \(3, 3, 32, 32\)",
    ),
    (
        "pixel_values 1 channel",
        lambda b: {**b, "pixel_values": b["pixel_values"][:, :, :1]},
        r"pixel_values has shape .*, 3, height",
    ),
    ("pixel_values batch", lambda b: {**b, "pixel_values": b["pixel_values"][:2]}, r"pixel_values has shape \(2,"),
    (
        "pixel_values uint8",
        lambda b: {**b, "pixel_values": b["pixel_values"].to(torch.uint8)},
        "pixel_values must be floating",
    ),
    (
        "image_features width",
        lambda b: with_features(b, torch.zeros(B, N, 5)),
        r"image_features has shape .*vision_feature_size = 16",
    ),
    ("image_features 2-d", lambda b: with_features(b, torch.zeros(B, 16)), r"image_features has shape \(3, 16\)"),
    ("image_features NaN", lambda b: with_features(b, nan_features()), "image_features contains NaN or infinite"),
    ("image_features inf", lambda b: with_features(b, torch.full((B, N, 16), float("inf"))), "NaN or infinite"),
    (
        "image_features long",
        lambda b: with_features(b, torch.zeros(B, N, 16, dtype=torch.long)),
        "image_features must be floating",
    ),
    ("image_mask slots", lambda b: {**b, "image_mask": b["image_mask"][:, :2]}, r"image_mask has shape \(3, 2\)"),
    ("image_mask 1-d", lambda b: {**b, "image_mask": b["image_mask"][0]}, r"image_mask has shape \(3,\)"),
    (
        "both image inputs",
        lambda b: {**b, "image_features": torch.zeros(B, N, 16)},
        "pass image_feature_mask to say which slots",
    ),
    ("mask without images", lambda b: {**b, "pixel_values": None}, "neither pixel_values nor image_features"),
]
NER_CASES = [
    (
        "word_index past the end",
        lambda b: {**b, "word_index": b["word_index"] + 6},
        r"word_index holds \d+, outside the valid range \[0, 7\] or -1",
    ),
    ("word_index below -1", lambda b: {**b, "word_index": b["word_index"] - 3}, r"word_index holds -\d+, outside"),
    ("word_index float", lambda b: {**b, "word_index": b["word_index"].float()}, "word_index must hold integer"),
    ("word_index batch", lambda b: {**b, "word_index": b["word_index"][:1]}, r"word_index has shape \(1, 4\)"),
    (
        "labels too large",
        lambda b: {**b, "labels": b["labels"] + 9},
        r"labels holds \d+, outside the valid range \[0, 8\] or -100",
    ),
    ("labels -1", lambda b: {**b, "labels": b["labels"].masked_fill(b["labels"] == 0, -1)}, r"labels holds -1"),
    (
        "labels shape",
        lambda b: {**b, "labels": b["labels"][:, :3]},
        r"labels has shape \(3, 3\), expected \(batch_size, num_words\)",
    ),
    ("labels float", lambda b: {**b, "labels": b["labels"].float()}, "labels must hold integer"),
    (
        "labels -100 at a word",
        lambda b: {**b, "labels": b["labels"].masked_fill(b["labels"] == 3, -100)},
        "every word needs a label",
    ),
    ("word_index missing", lambda b: {**b, "word_index": None}, "word_index is required"),
]
RE_CASES = [
    (
        "entity_positions past the end",
        lambda b: {**b, "entity_positions": b["entity_positions"] + 5},
        r"entity_positions holds \d+, outside the valid range \[0, 7\]",
    ),
    (
        "entity_positions negative",
        lambda b: {**b, "entity_positions": -b["entity_positions"] - 1},
        "entity_positions holds -",
    ),
    (
        "entity_positions shape",
        lambda b: {**b, "entity_positions": b["entity_positions"][:, 0]},
        r"entity_positions has shape \(3, 2\), expected",
    ),
    (
        "entity_positions float",
        lambda b: {**b, "entity_positions": b["entity_positions"].float()},
        "entity_positions must hold integer",
    ),
    (
        "relation labels too large",
        lambda b: {**b, "labels": b["labels"] + 9},
        r"labels holds \d+, outside the valid range \[0, 8\]",
    ),
    ("relation labels -100", lambda b: {**b, "labels": torch.tensor([0, -100, 1])}, r"labels holds -100"),
    (
        "relation labels 2-d",
        lambda b: {**b, "labels": b["labels"][:, None]},
        r"labels has shape \(3, 1\), expected \(batch_size,\)",
    ),
    ("entity_positions missing", lambda b: {**b, "entity_positions": None}, "entity_positions is required"),
]


@pytest.fixture(scope="module")
def models() -> dict:
    torch.manual_seed(0)
    config = tiny_config()
    return {
        "ner": MMIBForTokenClassification(config).eval(),
        "re": MMIBForRelationClassification(config).eval(),
        "base": MMIBModel(config).eval(),
    }


@pytest.mark.parametrize(
    ("name", "change", "message"), COMMON_CASES + NER_CASES, ids=lambda x: x if isinstance(x, str) else ""
)
def test_token_classification_refuses_bad_inputs(models, name, change, message):
    with torch.no_grad():
        models["ner"](**ner_batch())  # the unchanged batch is fine
        with pytest.raises(ValueError, match=message):
            models["ner"](**change(ner_batch()))


@pytest.mark.parametrize(
    ("name", "change", "message"), COMMON_CASES + RE_CASES, ids=lambda x: x if isinstance(x, str) else ""
)
def test_relation_classification_refuses_bad_inputs(models, name, change, message):
    with torch.no_grad():
        models["re"](**re_batch())
        with pytest.raises(ValueError, match=message):
            models["re"](**change(re_batch()))


@pytest.mark.parametrize(("name", "change", "message"), COMMON_CASES, ids=lambda x: x if isinstance(x, str) else "")
def test_base_model_refuses_bad_inputs(models, name, change, message):
    def encoder(batch):
        return {key: value for key, value in batch.items() if key not in ("word_index", "labels")}

    with torch.no_grad():
        models["base"](**encoder(ner_batch()))
        with pytest.raises(ValueError, match=message):
            models["base"](**encoder(change(ner_batch())))


@pytest.mark.parametrize(
    ("model_name", "expected"),
    [("ner", {"check_inputs": 1, "check_task_inputs": 1}), ("re", {"check_inputs": 1, "check_task_inputs": 1})]
    + [("base", {"check_inputs": 1, "check_task_inputs": 0})],
)
def test_each_check_runs_once_per_forward(models, monkeypatch, model_name, expected):
    """A head runs through the bare model: the checks are split between them, not repeated (issue 22)."""
    calls = {"check_inputs": 0, "check_task_inputs": 0}
    for function in calls:
        real = getattr(modeling_mmib, function)

        def counted(*args, real=real, function=function, **kwargs):
            calls[function] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(modeling_mmib, function, counted)
    batch = re_batch() if model_name == "re" else ner_batch()
    if model_name == "base":
        batch = {key: value for key, value in batch.items() if key not in ("word_index", "labels")}
    with torch.no_grad():
        models[model_name](**batch)
    assert calls == expected
    models[model_name].train()
    try:
        models[model_name](**batch)  # training mode (labels, regularizers) runs the same checks
    finally:
        models[model_name].eval()
    assert calls == {function: 2 * count for function, count in expected.items()}


def test_text_only_model_ignores_image_inputs_but_checks_text():
    model = MMIBForTokenClassification(tiny_config(text_only=True)).eval()
    batch = ner_batch()
    with torch.no_grad():
        model(**{**batch, "pixel_values": batch["pixel_values"][:, 0]})  # ignored, as documented
        with pytest.raises(ValueError, match="input_ids must hold integer ids"):
            model(**{**batch, "input_ids": batch["input_ids"].float()})


def test_value_checks_are_skipped_while_compiling(models, monkeypatch):
    """Under torch.compile the data-dependent checks would break the graph; shapes are still checked."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    batch = ner_batch()
    with torch.no_grad():
        models["ner"](**with_features(batch, nan_features()))
        with pytest.raises(ValueError, match="attention_mask has shape"):
            models["ner"](**{**batch, "attention_mask": batch["attention_mask"][:, :5]})
