"""The analyses: contribution scores and the modality gap against hand computations on a tiny model, the ablation
and β-sweep bookkeeping (aggregation, resuming, commands) with a stand-in for training, and the CLI's parsing."""

import csv
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_image, make_image_processor, make_tokenizer, tiny_config
from mmib import MMIBForTokenClassification, MMIBProcessor
from mmib.analysis import ablation, beta_sweep
from mmib.analysis.contribution import contribution_scores, explain_posts
from mmib.analysis.intermediates import encoder_intermediates
from mmib.analysis.modality_gap import collect_pairs, gap_statistics, run_modality_gap
from mmib.post_processing_mmib import entity_spans
from mmib.analysis.runs import TrainingRun, training_command
from mmib.cli import _parser
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


def test_hooks_capture_the_tensors_of_a_hand_forward(checkpoint, posts_file):
    _, model, processor = checkpoint
    rows = load_jsonl({"test": str(posts_file)})["test"]
    batch = processor(list(rows["words"]), images=list(rows["image"]), crops=list(rows["crops"]))
    captured = encoder_intermediates(model, batch)
    for name, tensor in hand_tensors(model, batch).items():
        torch.testing.assert_close(getattr(captured, name), tensor, msg=name)


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


def test_entity_spans():
    assert entity_spans(["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-ORG", "I-ORG"]) == [
        (0, 2, "PER"),
        (3, 4, "LOC"),
        (4, 5, "LOC"),
        (5, 7, "ORG"),
    ]


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


def test_ablation_tables_and_resuming(tmp_path, monkeypatch):
    monkeypatch.setattr(ablation, "check_switches", lambda: None)
    config = tmp_path / "config.yaml"
    config.write_text("config_overrides: apenc_num_attention_heads=6\n")
    trainer = FakeTrainer(tmp_path / "out")
    summaries = ablation.run_ablation(
        str(config), [1, 2, 3], tmp_path / "out", ["--num_train_epochs", "1"], runner=trainer
    )
    assert len(trainer.commands) == 15
    no_ar = next(command for command in trainer.commands if "no_ar/seed-2" in " ".join(command))
    assert (
        no_ar[no_ar.index("--config_overrides") + 1] == "apenc_num_attention_heads=6,use_alignment_regularizer=false"
    )
    assert no_ar[no_ar.index("--seed") + 1] == "2" and "--num_train_epochs" in no_ar
    assert not list((tmp_path / "out").glob("*/seed-*/checkpoint-*"))

    with open(tmp_path / "out" / "ablation.csv", newline="") as handle:
        rows = {row["variant"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["full", "no_rr", "no_ar", "no_rr_ar", "text_only"]
    assert float(rows["no_ar"]["dev_f1_mean"]) == pytest.approx(0.82)
    assert float(rows["no_ar"]["dev_f1_std"]) == pytest.approx(statistics.stdev([0.81, 0.82, 0.83]), abs=1e-6)
    assert float(rows["text_only"]["test_f1_mean"]) == pytest.approx(0.26)
    assert float(rows["text_only"]["test_f1_delta"]) == pytest.approx(0.26 - 0.86)
    assert float(rows["full"]["test_f1_delta"]) == 0
    table = (tmp_path / "out" / "ablation.md").read_text()
    assert "| without L_ar | 82.00 ± 1.00 | 76.00 ± 2.00 | -10.00 | -10.00 |" in table
    assert summaries[4].test_f1 == pytest.approx([0.28, 0.26, 0.24])

    # Finished runs are read, not redone; a run without results is redone.
    trainer.commands.clear()
    ablation.run_ablation(str(config), [1, 2, 3], tmp_path / "out", runner=trainer)
    assert trainer.commands == []
    (tmp_path / "out" / "no_rr" / "seed-3" / "all_results.json").unlink()
    ablation.run_ablation(str(config), [1, 2, 3], tmp_path / "out", runner=trainer)
    assert len(trainer.commands) == 1 and "no_rr/seed-3" in " ".join(trainer.commands[0])


def test_ablation_refuses_a_config_without_the_switches(monkeypatch):
    monkeypatch.setattr(ablation, "SWITCHES", (*ablation.SWITCHES, "no_such_switch"))
    with pytest.raises(RuntimeError, match="no_such_switch"):
        ablation.check_switches()


def test_sweep_series_share_runs_and_plot(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("num_train_epochs: 1\n")
    trainer = FakeTrainer(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        beta_sweep.run_sweep(str(tmp_path / "missing.yaml"), tmp_path / "out", runner=trainer)
    points = beta_sweep.run_sweep(
        str(config), tmp_path / "out", beta_text=[0.0, 1.0], beta_vision=[0.1, 1.0], seeds=[1, 2], runner=trainer
    )
    # Series: (0, 1), (1, 1) | (1, 0.1), (1, 1) | both over {0, 0.1, 1}: (0, 0), (0.1, 0.1), (1, 1) -> 5 settings.
    assert len(points) == 7
    assert len(trainer.commands) == 5 * 2
    flags = [
        (float(command[command.index("--beta_text") + 1]), float(command[command.index("--beta_vision") + 1]))
        for command in trainer.commands
    ]
    assert sorted(set(flags)) == [(0, 0), (0, 1), (0.1, 0.1), (1, 0.1), (1, 1)]
    both = [point for point in points if point.series == "both"]
    assert [(point.beta_text, point.beta_vision) for point in both] == [(0.0, 0.0), (0.1, 0.1), (1.0, 1.0)]
    assert both[2].mean_std("test") == pytest.approx((0.47, statistics.stdev([0.48, 0.46])))
    with open(tmp_path / "out" / "beta_sweep.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["series"] for row in rows] == ["beta_text"] * 2 + ["beta_vision"] * 2 + ["both"] * 3
    assert float(rows[0]["dev_f1_mean"]) == pytest.approx(0.515)
    for extension in ("png", "svg"):
        assert (tmp_path / "out" / f"beta_sweep.{extension}").stat().st_size > 1000
    with pytest.raises(ValueError, match=">= 0"):
        beta_sweep.run_sweep(str(config), tmp_path / "out", beta_text=[-1.0], runner=trainer)


def test_training_command_order_and_values(tmp_path):
    run = TrainingRun("x/seed-4", 4, config_overrides={"text_only": True}, flags={"beta_text": 0.5})
    config = tmp_path / "c.yaml"
    config.write_text("config_overrides: apenc_num_attention_heads=6\n")
    command = training_command(str(config), run, tmp_path / "x", ["--config_overrides", "latent_size=8"], tmp_path)
    assert command[:3] == [sys.executable, "-m", "mmib.training.run"]
    assert command[command.index("--config_overrides", 5) + 1] == "latent_size=8,text_only=true"
    assert command[-4:] == ["--seed", "4", "--output_dir", str(tmp_path / "x")]
    assert command[command.index("--image_feature_cache") + 1] == str(tmp_path / "image-features-seed4.safetensors")


def test_cli_passes_unknown_flags_to_training_and_keeps_seed_apart_from_seeds():
    args, rest = _parser().parse_known_args(
        ["ablate", "c.yaml", "--seeds", "1", "2", "--output_dir", "d", "--seed", "9", "--text_model_name_or_path", "t"]
    )
    assert args.seeds == [1, 2] and args.output_dir == "d"
    assert rest == ["--seed", "9", "--text_model_name_or_path", "t"]
