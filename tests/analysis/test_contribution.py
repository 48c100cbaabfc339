"""mmib.analysis.contribution (`mmib explain`): contribution scores are the row sums of X Z^T, checked against a hand
forward of a tiny model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_image, make_image_processor, make_tokenizer, tiny_config
from mmib import MMIBForTokenClassification, MMIBProcessor
from mmib.analysis.contribution import contribution_scores, explain_posts
from mmib.data import load_jsonl

POSTS = [
    {"id": "a", "words": ["john", "smith", "visits", "london"], "tags": ["B-PER", "I-PER", "O", "B-LOC"], "crops": 2},
    {"id": "b", "words": ["i", "love", "paris", "!"], "tags": ["O", "O", "B-LOC", "O"], "crops": 0},
    {
        "id": "c",
        "words": ["new", "post", "at", "the", "festival"],
        "tags": ["O", "O", "O", "O", "B-ORG"],
        "crops": None,
    },
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[str, MMIBForTokenClassification, MMIBProcessor]:
    folder = tmp_path_factory.mktemp("ner")
    torch.manual_seed(0)
    model = MMIBForTokenClassification(tiny_config()).eval()
    processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="ner", num_crops=2)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder), model, processor


@pytest.fixture(scope="module")
def posts_file(tmp_path_factory) -> Path:
    """Three labelled posts: with an image and two crops, with an image only, and text-only."""
    folder = tmp_path_factory.mktemp("posts")
    lines = []
    for index, post in enumerate(POSTS):
        record = {"id": post["id"], "words": post["words"], "tags": post["tags"], "image": None, "crops": []}
        if post["crops"] is not None:
            make_image(10 * index).save(folder / f"{post['id']}.png")
            record["image"] = f"{post['id']}.png"
            for crop in range(post["crops"]):
                make_image(10 * index + crop + 1, size=(20, 20)).save(folder / f"{post['id']}_{crop}.png")
                record["crops"].append(f"{post['id']}_{crop}.png")
        lines.append(json.dumps(record))
    (folder / "posts.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "posts.jsonl"


def hand_tensors(model, batch) -> dict[str, torch.Tensor]:
    """X and Z of both modalities from the submodules, called one by one (eval mode: Z = the latent mean)."""
    encoder = model.mmib
    with torch.no_grad():
        text_states = encoder.text_model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
        ).last_hidden_state
        text_inputs = encoder.text_projection(text_states)
        text_mask = batch["attention_mask"].bool()
        features = torch.zeros(*batch["image_mask"].shape, model.config.vision_feature_size)
        features[batch["image_mask"]] = encoder.get_image_features(batch["pixel_values"][batch["image_mask"]])
        vision_inputs = encoder.vision_projection(features)
        return {
            "text_inputs": text_inputs,
            # An APEnc layer returns (states, attention weights).
            "text_latents": encoder.text_variational_encoder.mean_encoder(text_inputs, text_inputs, text_mask)[0],
            "vision_inputs": vision_inputs,
            "vision_latents": encoder.vision_variational_encoder.mean_encoder(
                vision_inputs, vision_inputs, batch["image_mask"]
            )[0],
        }


def brute_force_row_sums(inputs: torch.Tensor, latents: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    """Â_i = Σ_j X_i · Z_j over valid j, with explicit loops (the paper's definition)."""
    scores = []
    for post in range(inputs.shape[0]):
        valid = [j for j in range(inputs.shape[1]) if mask[post, j]]
        scores.append(
            [
                sum(float(inputs[post, i] @ latents[post, j]) for j in valid) if mask[post, i] else 0.0
                for i in range(inputs.shape[1])
            ]
        )
    return scores


def test_contribution_scores_are_row_sums_of_x_z_transposed():
    generator = torch.Generator().manual_seed(0)
    inputs, latents = torch.randn(2, 5, 3, generator=generator), torch.randn(2, 5, 3, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1]])
    expected = torch.tensor(brute_force_row_sums(inputs, latents, mask))
    torch.testing.assert_close(contribution_scores(inputs, latents, mask), expected)


def test_explain_scores_equal_a_hand_computation(checkpoint, posts_file, tmp_path):
    folder, model, processor = checkpoint
    # One batch of posts of 4, 4 and 5 words: word_index is padded for the shorter ones.
    records = explain_posts(folder, str(posts_file), tmp_path, batch_size=3)
    rows = load_jsonl({"test": str(posts_file)})["test"]
    batch = processor(list(rows["words"]), images=list(rows["image"]), crops=list(rows["crops"]))
    tensors = hand_tensors(model, batch)
    text = brute_force_row_sums(tensors["text_inputs"], tensors["text_latents"], batch["attention_mask"])
    vision = brute_force_row_sums(tensors["vision_inputs"], tensors["vision_latents"], batch["image_mask"])
    assert [record["id"] for record in records] == ["a", "b", "c"]
    assert [len(record["word_scores"]) for record in records] == [4, 4, 5]
    for post, record in enumerate(records):
        length = int(batch["attention_mask"][post].sum())
        np.testing.assert_allclose(record["token_scores"], text[post][:length], rtol=1e-4, atol=1e-4)
        first_subwords = batch["word_index"][post][: len(record["words"])].tolist()
        np.testing.assert_allclose(
            record["word_scores"], [text[post][i] for i in first_subwords], rtol=1e-4, atol=1e-4
        )
        present = [slot for slot in range(3) if batch["image_mask"][post, slot]]
        np.testing.assert_allclose(
            record["image_scores"], [vision[post][slot] for slot in present], rtol=1e-4, atol=1e-4
        )
        assert (tmp_path / f"{record['id']}.png").stat().st_size > 1000
    assert [slot["slot"] for slot in records[0]["image_slots"]] == ["image", "crop 0", "crop 1"]
    assert records[2]["image_scores"] == []
    assert json.loads((tmp_path / "contributions.json").read_text()) == records
