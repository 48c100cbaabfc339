"""mmib.analysis.contribution (`mmib explain`): contribution scores are the row sums of X Z^T, checked against a hand
forward of a tiny model."""

import json

import numpy as np
import torch

from mmib.analysis.contribution import contribution_scores, explain_posts
from mmib.data import load_jsonl


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


def test_explain_scores_equal_a_hand_computation(checkpoint, posts_file, tmp_path, hand_tensors):
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
