"""mmib.building: one call builds a matching model + processor; loading a saved pair refuses mismatches."""

from pathlib import Path

import pytest
import torch
import transformers.utils.hub
from transformers import AutoTokenizer, BertModel, ConvNextImageProcessor, ResNetModel

from conftest import IMAGE_SIZE, SMALL, make_image, make_tokenizer
from mmib import (
    MMIBForRelationClassification,
    MMIBForTokenClassification,
    build_model_and_processor,
    load_model_and_processor,
)
from mmib.building import looks_local

REPO = Path(__file__).resolve().parents[1]

RELATIONS = ["None", "/per/loc/place_of_residence"]


def re_inputs(processor):
    return processor(
        [["john", "visits", "london"], ["paris", "and", "london"]],
        images=[make_image(0), None],
        crops=[[make_image(1)], []],
        head_spans=[(0, 1), (2, 3)],
        tail_spans=[(2, 3), (0, 1)],
    )


def test_relation_pair_matches_and_the_callers_tokenizer_is_unchanged(towers):
    caller = AutoTokenizer.from_pretrained(towers["text"])
    vocab_before = caller.get_vocab()
    model, processor = build_model_and_processor(
        "re", towers["text"], towers["vision_with_processor"], id2label=RELATIONS, tokenizer=caller, **SMALL
    )
    assert caller.get_vocab() == vocab_before and "<s>" not in caller.get_vocab()
    assert isinstance(model, MMIBForRelationClassification) and model.training
    # The task defaults, written once into both halves.
    assert (processor.task, processor.num_crops, processor.max_length) == ("re", 3, 80)
    assert model.config.num_crops == 3
    assert model.config.id2label == {0: "None", 1: "/per/loc/place_of_residence"}
    # Embeddings resized for the 4 markers; the pretrained rows and the rest of the text tower are kept.
    bert = BertModel.from_pretrained(towers["text"])
    embeddings = model.get_input_embeddings().weight
    assert embeddings.shape[0] == len(processor.tokenizer) == len(vocab_before) + 4
    assert torch.equal(embeddings[: len(vocab_before)], bert.get_input_embeddings().weight)
    for name, tensor in model.mmib.text_model.state_dict().items():
        if "word_embeddings" not in name:
            assert torch.equal(tensor, bert.state_dict()[name]), name
    # The vision tower's own image processor (32 px), not the 224 px default.
    assert processor.image_processor.size.shortest_edge == IMAGE_SIZE
    inputs = re_inputs(processor)
    assert inputs["pixel_values"].shape[1:] == (4, 3, 32, 32)
    with torch.no_grad():
        assert model.eval()(**inputs).logits.shape == (2, 2)


def test_ner_pair_with_the_resnet_default_and_own_settings(towers):
    torch.manual_seed(1)
    model, processor = build_model_and_processor(
        "ner", towers["text"], towers["vision"], id2label=["O", "B-PER", "I-PER"], num_crops=2, max_length=64, **SMALL
    )
    assert isinstance(model, MMIBForTokenClassification)
    assert (processor.task, processor.num_crops, processor.max_length, model.config.num_crops) == ("ner", 2, 64, 2)
    assert model.get_input_embeddings().weight.shape[0] == len(processor.tokenizer) == len(make_tokenizer())
    image_processor = processor.image_processor
    assert isinstance(image_processor, ConvNextImageProcessor)
    assert (image_processor.size.shortest_edge, image_processor.crop_pct) == (224, 0.875)
    assert list(image_processor.image_mean) == [0.485, 0.456, 0.406]

    random_model, _ = build_model_and_processor(
        "ner", towers["text"], towers["vision"], id2label=["O"], random_vision_weights=True, **SMALL
    )
    pretrained = ResNetModel.from_pretrained(towers["vision"]).state_dict()
    assert not torch.equal(
        random_model.mmib.vision_model.state_dict()["embedder.embedder.convolution.weight"],
        pretrained["embedder.embedder.convolution.weight"],
    )
    assert torch.equal(
        model.mmib.vision_model.state_dict()["embedder.embedder.convolution.weight"],
        pretrained["embedder.embedder.convolution.weight"],
    )


def test_build_errors(towers):
    with pytest.raises(ValueError, match="Unknown task 'pos'"):
        build_model_and_processor("pos", towers["text"], towers["vision"], id2label=["O"])
    with pytest.raises(ValueError, match="max_length=200 but the text tower .* max_position_embeddings=128"):
        build_model_and_processor("ner", towers["text"], towers["vision"], id2label=["O"], max_length=200, **SMALL)


@pytest.fixture
def hub_lookups(monkeypatch) -> list[str]:
    """Every repository that transformers asks the Hub for (each lookup then fails, as offline)."""
    asked = []

    def hub(repo_id, *args, **kwargs):
        asked.append(repo_id)
        raise OSError(f"{repo_id} is not on this offline Hub")

    monkeypatch.setattr(transformers.utils.hub, "hf_hub_download", hub)
    monkeypatch.setattr(transformers.utils.hub, "snapshot_download", hub)
    return asked


@pytest.mark.parametrize(
    "path, local",
    [
        ("./tower", True),
        ("../tower", True),
        ("/data/towers/bert", True),
        ("runs/efficientnet-lite0", True),
        ("towers/bert/v2", True),
        ("bert/", True),
        (Path("bert"), True),
        ("bert-base-cased", False),
        ("microsoft/resnet-50", False),
    ],
)
def test_looks_local_separates_folders_from_hub_ids(path, local):
    assert looks_local(path) is local


def test_a_missing_local_tower_or_checkpoint_is_reported_before_any_hub_lookup(
    towers, hub_lookups, monkeypatch, tmp_path
):
    """`python train_mmib.py configs/demo_twitter2017.yaml` before `examples/run_demo.sh` made the demo tower."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        build_model_and_processor("ner", towers["text"], "runs/efficientnet-lite0", id2label=["O", "B-PER"])
    message = str(error.value)
    assert "vision tower folder runs/efficientnet-lite0" in message and "is missing" in message
    assert "python scripts/convert_efficientnet_lite0.py runs/efficientnet-lite0" in message
    with pytest.raises(FileNotFoundError, match=r"text tower folder \./nowhere/bert .*save_pretrained"):
        build_model_and_processor("ner", "./nowhere/bert", towers["vision"], id2label=["O", "B-PER"])
    with pytest.raises(FileNotFoundError, match=r"MMIB checkpoint folder runs/mmib-t17 .*--output_dir"):
        load_model_and_processor("runs/mmib-t17")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="model.safetensors .* is a file, not a folder"):
        load_model_and_processor("./model.safetensors")
    from mmib.training import arguments, run

    model_args = arguments.ModelArguments(model_name_or_path="runs/mmib-t17")
    with pytest.raises(FileNotFoundError, match="MMIB checkpoint folder runs/mmib-t17"):
        run.crops_per_post(model_args, "ner")
    assert hub_lookups == []
    # A Hub id is still looked up on the Hub.
    with pytest.raises(OSError):
        load_model_and_processor("someone/mmib-t17")
    assert hub_lookups and set(hub_lookups) == {"someone/mmib-t17"}
