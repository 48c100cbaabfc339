"""mmib.analysis.modality_gap: gap statistics on known cases, entity/object pairs from a hand forward, and the
`mmib modality-gap` command."""

import json

import numpy as np
import pytest

from mmib.analysis.modality_gap import collect_pairs, gap_statistics, run_modality_gap
from mmib.data import load_jsonl


def test_gap_statistics_known_cases():
    text = np.array([[1.0, 0.0], [-1.0, 0.0]])
    image = np.array([[5.0, 0.0], [3.0, 0.0]])
    statistics_ = gap_statistics(text, image)
    assert statistics_.centroid_distance == pytest.approx(4.0)
    assert statistics_.spread_text == pytest.approx(1.0) and statistics_.spread_image == pytest.approx(1.0)
    assert statistics_.gap == pytest.approx(4.0)
    # Spreads 1 and 3 pool to sqrt((1 + 9) / 2); the same centre gives no gap; scaling both clouds changes nothing.
    assert gap_statistics(text, 3 * image - np.array([8.0, 0.0])).gap == pytest.approx(4.0 / np.sqrt(5.0))
    assert gap_statistics(text, -text).gap == pytest.approx(0.0)
    assert gap_statistics(7 * text, 7 * image).gap == pytest.approx(4.0)


def test_pairs_are_entity_and_object_means(checkpoint, posts_file, hand_tensors):
    _, model, processor = checkpoint
    rows = load_jsonl({"test": str(posts_file)})["test"]
    pairs = collect_pairs(model, processor, rows)
    # The text-only post c has no object: its entity is left out.
    assert [(pair["id"], pair["type"]) for pair in pairs] == [("a", "PER"), ("a", "LOC"), ("b", "LOC")]
    batch = processor(list(rows["words"]), images=list(rows["image"]), crops=list(rows["crops"]))
    tensors = hand_tensors(model, batch)
    john_smith = batch["word_index"][0, :2]
    np.testing.assert_allclose(
        pairs[0]["entity"], tensors["text_latents"][0, john_smith].mean(0), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(pairs[2]["object"], tensors["vision_latents"][1, 0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pairs[0]["object"], tensors["vision_latents"][0].mean(0), rtol=1e-4, atol=1e-5)


def test_modality_gap_command_writes_the_gap_of_each_checkpoint(checkpoint, posts_file, tmp_path):
    folder, _, _ = checkpoint
    results = run_modality_gap([folder, folder], str(posts_file), tmp_path, labels=["one", "two"])
    assert [result["label"] for result in results] == ["one", "two"]
    assert results[0]["num_pairs"] == 3 and results[0]["gap"] == pytest.approx(results[1]["gap"])
    assert json.loads((tmp_path / "modality_gap.json").read_text()) == results
    assert (tmp_path / "modality_gap.png").stat().st_size > 1000
