"""What the analysis tests share: a saved tiny NER checkpoint, three labelled posts, a hand forward of the
encoder, and a stand-in for training runs."""

import json
from pathlib import Path

import pytest
import torch

from conftest import make_image, make_image_processor, make_tokenizer, tiny_config
from mmib import MMIBForTokenClassification, MMIBProcessor

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


def hand_forward(model, batch) -> dict[str, torch.Tensor]:
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


@pytest.fixture
def hand_tensors():
    """`hand_tensors(model, batch)`: X and Z of both modalities from the submodules, called one by one."""
    return hand_forward


def fake_scores(name: str) -> dict:
    """Deterministic F1s per run name, as a stand-in for training."""
    variant, seed = name.split("/seed-")
    base = {"full": 0.9, "no_rr": 0.85, "no_ar": 0.8, "no_rr_ar": 0.7, "text_only": 0.3}.get(variant, 0.5)
    return {"eval_f1": base + 0.01 * int(seed), "test_f1": base - 0.02 * int(seed)}


class FakeTrainer:
    """Writes all_results.json like train_mmib.py and records every command it was given."""

    def __init__(self, output_root: Path):
        self.output_root = output_root
        self.commands = []

    def __call__(self, command: list[str], output_dir: Path) -> None:
        self.commands.append(command)
        output_dir.mkdir(parents=True, exist_ok=True)
        name = output_dir.relative_to(self.output_root).as_posix()
        (output_dir / "all_results.json").write_text(json.dumps(fake_scores(name)))
        (output_dir / "checkpoint-3").mkdir()


@pytest.fixture
def fake_trainer(tmp_path) -> FakeTrainer:
    """A stand-in for training runs under `tmp_path / "out"`."""
    return FakeTrainer(tmp_path / "out")
