"""Checkpoint loading: save/load round trips, the loaders' refusals and checkpoints saved by earlier versions."""

import json
import os

import pytest
import torch
import transformers
import transformers.utils.hub
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoProcessor,
)

from conftest import (
    REPO,
    SMALL,
    ner_inputs,
    re_inputs,
)
from mmib import (
    AUTO_CLASSES,
    MMIBConfig,
    MMIBForRelationClassification,
    MMIBForTokenClassification,
    MMIBModel,
    MMIBProcessor,
    build_model_and_processor,
    load_model_and_processor,
)
from model_batches import HEADS, RELATIONS, build

FIXTURES = REPO / "tests" / "fixtures"


def test_checkpoint_files_are_safetensors_with_remote_code(ner_checkpoint):
    folder, _, _ = ner_checkpoint
    files = set(os.listdir(folder))
    assert {"model.safetensors", "config.json", "configuration_mmib.py", "modeling_mmib.py"} <= files
    assert "processing_mmib.py" in files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    auto_map = json.load(open(os.path.join(folder, "config.json")))["auto_map"]
    assert auto_map["AutoModel"] == "modeling_mmib.MMIBModel"
    assert auto_map["AutoModelForTokenClassification"] == "modeling_mmib.MMIBForTokenClassification"
    assert auto_map["AutoModelForSequenceClassification"] == "modeling_mmib.MMIBForRelationClassification"


def test_in_process_auto_classes_reproduce_outputs(ner_checkpoint):
    folder, inputs, logits = ner_checkpoint
    assert isinstance(AutoConfig.from_pretrained(folder), MMIBConfig)
    model = AutoModelForTokenClassification.from_pretrained(folder).eval()
    assert type(model) is MMIBForTokenClassification
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor) is MMIBProcessor and processor.num_crops == 2
    reloaded_inputs = ner_inputs(processor)
    assert all(torch.equal(reloaded_inputs[key], inputs[key]) for key in inputs)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, logits)
    base = AutoModel.from_pretrained(folder)
    assert type(base) is MMIBModel
    assert torch.equal(base.vision_projection.weight, model.mmib.vision_projection.weight)


def test_relation_checkpoint_keeps_markers_and_resized_embeddings(re_checkpoint):
    folder, inputs, logits = re_checkpoint
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert type(model) is MMIBForRelationClassification
    assert model.get_input_embeddings().num_embeddings == len(processor.tokenizer)
    assert torch.equal(re_inputs(processor)["input_ids"], inputs["input_ids"])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, logits)


@pytest.mark.parametrize("task", ["ner", "re"])
def test_save_load_round_trip(task, tmp_path):
    model, batch = build(task)
    model.save_pretrained(tmp_path)
    reloaded = HEADS[task][0].from_pretrained(tmp_path).eval()
    base = MMIBModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        first, second = model(**batch), reloaded(**batch)
        encoder_inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_mask")}
        states = base(**encoder_inputs).last_hidden_state
        expected_states = model.mmib(**encoder_inputs).last_hidden_state
    assert torch.equal(first.logits, second.logits) and torch.equal(first.loss, second.loss)
    assert torch.equal(states, expected_states)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    expected = {auto: f"modeling_mmib.{cls.__name__}" for cls, auto in AUTO_CLASSES.items()}
    assert auto_map == {"AutoConfig": "configuration_mmib.MMIBConfig", **expected}
    # In-process registration comes from the same table: the task's Auto class and AutoModel load this checkpoint.
    for model_class, auto_class in AUTO_CLASSES.items():
        if model_class in (MMIBModel, HEADS[task][0]):
            assert type(getattr(transformers, auto_class).from_pretrained(tmp_path)) is model_class


def test_a_checkpoint_saved_by_the_earlier_version_still_loads():
    """Saved by commit a538ccd (before the attention interface, the argument order and the ablation switches)."""
    folder = FIXTURES / "ner-tiny-a538ccd"
    stored = load_file(folder / "expected_outputs.safetensors")
    inputs = {key.removeprefix("input."): value for key, value in stored.items() if key.startswith("input.")}
    model = MMIBForTokenClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        outputs = model(**inputs)
    assert torch.allclose(outputs.logits, stored["expected.logits"], atol=1e-6)
    assert torch.equal(outputs.predictions, stored["expected.predictions"])
    # Without labels an eval-mode head skips the regularizers; the base model computes them by default.
    assert outputs.kl_text is None
    with torch.no_grad():
        outputs = model.mmib(**{key: value for key, value in inputs.items() if key != "word_index"})
    for name in ("kl_text", "kl_vision", "alignment_loss"):
        assert outputs[name].item() == pytest.approx(stored[f"expected.{name}"].item(), rel=1e-5), name


def test_checkpoints_saved_by_the_pre_reorganisation_main_still_predict(monkeypatch):
    """NER and RE folders (weights, processor, remote code) saved by main at 64db95d, before the reorganisation."""
    from mmib import MMIBPredictor

    folder = FIXTURES / "ner-re-tiny-64db95d"
    expected = json.loads((folder / "expected_outputs.json").read_text())
    posts = [json.loads(line) for line in (folder / "posts.jsonl").read_text().splitlines()]
    monkeypatch.chdir(folder)  # the image path in posts.jsonl is relative to the fixture
    ner = MMIBPredictor.from_pretrained("ner", device="cpu", dtype="float32")
    both = MMIBPredictor.from_pretrained("ner", relation_model="re", device="cpu", dtype="float32", keep_none=True)
    for name, predictor in (("ner", ner), ("ner_re", both)):
        assert predictor(posts) == approx_floats(expected[name]), name


def approx_floats(value):
    """`value` with every float compared within 1e-5 (scores may move in the last bits across versions; rounding
    both sides would flip at a rounding boundary)."""
    if isinstance(value, float):
        return pytest.approx(value, abs=1e-5)
    if isinstance(value, dict):
        return {key: approx_floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [approx_floats(item) for item in value]
    return value


@pytest.mark.parametrize("model_class", [MMIBModel, MMIBForTokenClassification, MMIBForRelationClassification])
@pytest.mark.parametrize(
    ("tower", "found"),
    [("text", "'bert' checkpoint \\(BertModel\\)"), ("vision", "'resnet' checkpoint \\(ResNetModel\\)")],
)
def test_from_pretrained_on_another_model_type_says_what_it_found_and_what_to_do(towers, model_class, tower, found):
    with pytest.raises(ValueError, match=rf"{found}, not an MMIB one .*build_model_and_processor.*from_text_vision"):
        model_class.from_pretrained(towers[tower])
    with pytest.raises(ValueError, match="not an MMIB one"):
        MMIBConfig.from_pretrained(towers[tower])


def test_a_saved_mmib_checkpoint_still_loads(towers, tmp_path):
    model, processor = build_model_and_processor("ner", towers["text"], towers["vision"], ["O", "B-PER"], **SMALL)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = MMIBForTokenClassification.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_a_tokenizer_larger_than_the_embeddings_is_refused_at_load(towers, tmp_path):
    model, processor = build_model_and_processor("ner", towers["text"], towers["vision"], ["O", "B-PER"], **SMALL)
    processor.tokenizer.add_tokens(["brandnewword", "anotherone"])
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    rows = model.get_input_embeddings().num_embeddings
    with pytest.raises(ValueError, match=rf"has {rows + 2} tokens but the model's text embeddings have {rows} rows"):
        load_model_and_processor(tmp_path)
    # Resized as the message says, the pair loads.
    model.resize_token_embeddings(len(processor.tokenizer))
    model.save_pretrained(tmp_path)
    loaded, _ = load_model_and_processor(tmp_path)
    assert loaded.get_input_embeddings().num_embeddings == rows + 2


def test_load_round_trip_and_refusals(towers, tmp_path):
    torch.manual_seed(2)
    model, processor = build_model_and_processor(
        "re", towers["text"], towers["vision"], id2label=RELATIONS, num_crops=2, max_length=40, **SMALL
    )
    model.eval().save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded_model, loaded_processor = load_model_and_processor(tmp_path, task="re", num_crops=2)
    assert (loaded_processor.num_crops, loaded_processor.max_length) == (2, 40)
    inputs = re_inputs(processor)
    assert all(torch.equal(re_inputs(loaded_processor)[key], inputs[key]) for key in inputs)
    with torch.no_grad():
        torch.testing.assert_close(loaded_model.eval()(**inputs).logits, model(**inputs).logits)

    with pytest.raises(ValueError, match="does task 're', not 'ner'"):
        load_model_and_processor(tmp_path, task="ner")
    with pytest.raises(ValueError, match="built with num_crops=2, not 4"):
        load_model_and_processor(tmp_path, num_crops=4)
    with pytest.raises(ValueError, match="built with max_length=40, not 80"):
        load_model_and_processor(tmp_path, max_length=80)

    # A processor edited out of step with the model config is refused at load, naming both values.
    processor_file = tmp_path / "processor_config.json"
    saved = json.loads(processor_file.read_text())
    processor_file.write_text(json.dumps({**saved, "num_crops": 3}))
    with pytest.raises(ValueError, match="num_crops=3 but the model config of .* has num_crops=2"):
        load_model_and_processor(tmp_path)


def test_read_weights_reads_the_tensors_of_a_prefix_as_safetensors_does(tmp_path):
    from safetensors.torch import save_file

    from mmib.checkpoints_mmib import read_weights

    generator = torch.Generator().manual_seed(0)
    tensors = {
        "crf.transitions": torch.randn(3, 3, generator=generator),
        "crf.start_transitions": torch.randn(3, generator=generator).to(torch.bfloat16),
        "crf.steps": torch.tensor([7, -2], dtype=torch.int64),
        "crf.empty": torch.zeros(0, 4),
        "crf_like.other": torch.randn(2, generator=generator),
        "mmib.text_model.weight": torch.randn(4, 2, generator=generator),
    }
    save_file(tensors, tmp_path / "model.safetensors")
    save_file({"crf.mask": torch.tensor([True, False])}, tmp_path / "model-00002.safetensors")
    read = read_weights(tmp_path, "crf.")
    expected = {**{k: v for k, v in tensors.items() if k.startswith("crf.")}, "crf.mask": torch.tensor([True, False])}
    assert read.keys() == {name.removeprefix("crf.") for name in expected}
    for name, tensor in expected.items():
        got = read[name.removeprefix("crf.")]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape and torch.equal(got, tensor), name
    assert read_weights(tmp_path, "mmib.")["text_model.weight"].equal(tensors["mmib.text_model.weight"])
    (tmp_path / "model-00002.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(ValueError, match="model-00002.safetensors is not a safetensors file"):
        read_weights(tmp_path, "crf.")
    with pytest.raises(FileNotFoundError, match="holds no \\*.safetensors"):
        read_weights(tmp_path / "nothing", "crf.")
