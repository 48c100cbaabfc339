"""mmib.analysis.modality_gap: gap statistics on known cases, entity/object pairs from a hand forward, and the
`mmib modality-gap` command."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_image, make_image_processor, make_tokenizer, tiny_config
from mmib import MMIBForTokenClassification, MMIBProcessor
from mmib.analysis.modality_gap import collect_pairs, gap_statistics, run_modality_gap
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


def test_pairs_are_entity_and_object_means(checkpoint, posts_file):
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
