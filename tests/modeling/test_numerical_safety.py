"""Numerical safety: bounded log-variances, long aggressive training and bf16 autocast stay finite."""

import math

import pytest
import torch

from conftest import IMAGE_SIZE, tiny_config
from mmib import MMIBForTokenClassification
from mmib.modeling_mmib import LOGVAR_MAX, LOGVAR_MIN


def random_batch(
    generator: torch.Generator, batch_size: int = 4, length: int = 10, features: bool = False
) -> dict[str, torch.Tensor]:
    """A random NER batch; with `features`, cached image features instead of pixels (no vision tower to run)."""
    word_index = torch.arange(1, 6).repeat(batch_size, 1)
    word_index[0, 3:] = -1
    labels = torch.randint(0, 9, (batch_size, 5), generator=generator).masked_fill(word_index < 0, -100)
    images = (
        {"image_features": 3 * torch.randn(batch_size, 3, 16, generator=generator)}
        if features
        else {"pixel_values": torch.randn(batch_size, 3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)}
    )
    return {
        "input_ids": torch.randint(5, 64, (batch_size, length), generator=generator),
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
        "word_index": word_index,
        "labels": labels,
        **images,
        "image_mask": torch.tensor([[True, True, False]] * (batch_size - 1) + [[False, False, False]]),
    }


def encoder_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in batch.items() if key not in ("word_index", "labels")}


def test_log_variances_are_clamped_so_kl_and_samples_stay_finite():
    torch.manual_seed(0)
    model = MMIBForTokenClassification(tiny_config())
    batch = random_batch(torch.Generator().manual_seed(0))
    with torch.no_grad():
        # Push the text log-variances far beyond any float's exp range (+1e4) and the vision ones far below.
        model.mmib.text_variational_encoder.logvar_encoder.output_layer_norm.bias.fill_(1e4)
        model.mmib.vision_variational_encoder.logvar_encoder.output_layer_norm.bias.fill_(-1e4)
        encoded = model.mmib(**encoder_inputs(batch))
    assert (encoded.text_latent_logvar == LOGVAR_MAX).all() and (encoded.vision_latent_logvar == LOGVAR_MIN).all()
    assert torch.isfinite(encoded.last_hidden_state).all()  # the sample mean + e^10 * eps
    outputs = model(**batch)
    # KL of N(m, e^20) against N(0, 1) per dimension: 0.5 (m^2 + e^20 - 1 - 20), where e^20 dwarfs m^2.
    assert outputs.kl_text.item() == pytest.approx(0.5 * (math.exp(20) - 21), rel=1e-4)
    assert math.isfinite(outputs.kl_vision.item()) and math.isfinite(outputs.loss.item())
    outputs.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def train(
    model: MMIBForTokenClassification, steps: int, learning_rate: float, autocast_dtype=None, features: bool = False
) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(1)
    losses = []
    model.train()
    for _ in range(steps):
        batch = random_batch(generator, features=features)
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
            outputs = model(**batch)
        outputs.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        parts = [outputs.loss, outputs.task_loss, outputs.kl_text, outputs.kl_vision, outputs.alignment_loss]
        assert all(torch.isfinite(part) for part in parts), (len(losses), parts)
        losses.append(outputs.loss.item())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    return losses


@pytest.mark.slow
def test_200_steps_at_lr_1e_3_with_ten_times_the_regularizer_weights_stay_finite():
    torch.manual_seed(0)
    defaults = tiny_config()
    config = tiny_config(
        beta_text=10 * defaults.beta_text,
        beta_vision=10 * defaults.beta_vision,
        alignment_weight=10 * defaults.alignment_weight,
    )
    losses = train(MMIBForTokenClassification(config), steps=200, learning_rate=1e-3, features=True)
    # It also learns something: the last 20 losses are below the first 20.
    assert sum(losses[-20:]) < sum(losses[:20])


def test_bf16_autocast_training_stays_finite():
    torch.manual_seed(0)
    model = MMIBForTokenClassification(tiny_config(freeze_vision_encoder=False))
    losses = train(model, steps=15, learning_rate=1e-3, autocast_dtype=torch.bfloat16)
    assert losses[-1] < losses[0]
