"""`config.latent_logvar_init`: fresh latents start near-deterministic (issue 26); saved models keep theirs."""

import math

import pytest
import torch

from conftest import tiny_config
from mmib import MMIBForRelationClassification, MMIBModel


def _text_latents(model: MMIBModel, seed: int = 0):
    torch.manual_seed(seed)
    input_ids = torch.randint(5, 60, (3, 7))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 5:] = 0
    output = model(input_ids, attention_mask=attention_mask)
    return output, attention_mask.bool()


@pytest.mark.parametrize("value", [-6.0, -2.0])
def test_fresh_latents_start_at_the_configured_logvar(value):
    torch.manual_seed(0)
    model = MMIBModel(tiny_config(latent_logvar_init=value)).train()
    output, mask = _text_latents(model)
    # the log-variance is the same constant at every position and dimension, whatever the input
    torch.testing.assert_close(output.text_latent_logvar, torch.full_like(output.text_latent_logvar, value))
    # KL per valid position and dimension: 0.5 * (mean^2 + e^c - 1 - c)
    mean = output.text_latent_mean.float()[mask]
    expected_kl = 0.5 * (mean.pow(2).mean() + math.exp(value) - 1.0 - value)
    torch.testing.assert_close(output.kl_text, expected_kl)


def test_sample_noise_has_the_configured_spread():
    torch.manual_seed(0)
    model = MMIBModel(tiny_config(latent_logvar_init=-2.0)).train()
    states = torch.randn(4, 50, 32)
    mask = torch.ones(4, 50, dtype=torch.bool)
    encoder = model.text_variational_encoder
    torch.manual_seed(1)
    latents, mean, logvar, _ = encoder(states, mask)
    # 6,400 draws of exp(-1) * eps: the sample std is within 3% of exp(-1)
    assert (latents - mean).std().item() == pytest.approx(math.exp(-1.0), rel=0.03)


def test_none_keeps_the_default_layer_norm_and_the_rest_of_the_weights():
    torch.manual_seed(0)
    default = MMIBModel(tiny_config(latent_logvar_init=None))
    torch.manual_seed(0)
    started = MMIBModel(tiny_config())
    for encoder in (default.text_variational_encoder, default.vision_variational_encoder):
        norm = encoder.logvar_encoder.output_layer_norm
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and torch.equal(norm.bias, torch.zeros(32))
    for encoder in (started.text_variational_encoder, started.vision_variational_encoder):
        norm = encoder.logvar_encoder.output_layer_norm
        assert torch.equal(norm.weight, torch.zeros(32)) and torch.equal(norm.bias, torch.full((32,), -6.0))
    # every other weight is drawn as before: the new start consumes no random numbers
    changed = {
        name
        for name, parameter in started.state_dict().items()
        if not torch.equal(parameter, default.state_dict()[name])
    }
    assert changed == {
        f"{modality}_variational_encoder.logvar_encoder.output_layer_norm.{field}"
        for modality in ("text", "vision")
        for field in ("weight", "bias")
    }


def test_saved_models_keep_their_log_variance_weights(tmp_path):
    torch.manual_seed(0)
    model = MMIBForRelationClassification(tiny_config(latent_logvar_init=None, id2label={0: "None", 1: "r"}))
    norm = model.mmib.text_variational_encoder.logvar_encoder.output_layer_norm
    with torch.no_grad():
        norm.weight.fill_(0.5)
        norm.bias.fill_(0.25)
    model.save_pretrained(tmp_path)
    config = model.config
    config.latent_logvar_init = -6.0  # a checkpoint loaded into code whose default differs keeps its own weights
    loaded = MMIBForRelationClassification.from_pretrained(tmp_path, config=config)
    loaded_norm = loaded.mmib.text_variational_encoder.logvar_encoder.output_layer_norm
    assert torch.equal(loaded_norm.weight, torch.full((32,), 0.5))
    assert torch.equal(loaded_norm.bias, torch.full((32,), 0.25))


def test_without_the_refinement_regularizer_there_is_no_log_variance():
    model = MMIBModel(tiny_config(use_refinement_regularizer=False))
    assert model.text_variational_encoder.logvar_encoder is None
    output, _ = _text_latents(model.train())
    assert output.text_latent_logvar is None and output.kl_text is None
