"""The model's per-modality tensors X (projected tower features) and Z (latents), read through forward hooks on
the public submodules of [`MMIBModel`]. The analyses load checkpoints with `checkpoints_mmib.load_checkpoint`."""

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

# Submodule of MMIBModel -> captured tensor. The variational encoders return (latents, mean, logvar); the latents
# are the mean in eval mode.
HOOKED_MODULES = {
    "text_projection": "text_inputs",
    "vision_projection": "vision_inputs",
    "text_variational_encoder": "text_latents",
    "vision_variational_encoder": "vision_latents",
}


@dataclass
class Intermediates:
    r"""
    Tensors of one forward pass. B = batch, L = tokens, N = image slots (whole image + crops), d = latent size.

    Args:
        text_inputs (`torch.FloatTensor` of shape `(B, L, d)`): X^T, the projected text-tower states.
        text_latents (`torch.FloatTensor` of shape `(B, L, d)`): Z^T (= its mean in eval mode).
        vision_inputs (`torch.FloatTensor` of shape `(B, N, d)`, *optional*): X^V, the projected image features;
            `None` for a model without a vision pathway.
        vision_latents (`torch.FloatTensor` of shape `(B, N, d)`, *optional*): Z^V.
    """

    text_inputs: torch.Tensor
    text_latents: torch.Tensor
    vision_inputs: torch.Tensor | None = None
    vision_latents: torch.Tensor | None = None


def _encoder(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "mmib", model)


@contextmanager
def capture_intermediates(model: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """
    Within the block, every forward pass of `model` (an MMIB model with or without a head) stores X^T, Z^T, X^V
    and Z^V, detached, in the yielded dict (keys as [`Intermediates`] fields; vision keys are absent when the model
    has no vision pathway or did not run it).
    """
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for module_name, key in HOOKED_MODULES.items():
        module = getattr(_encoder(model), module_name, None)
        if module is None:
            continue

        def hook(_module, _inputs, output, key=key):
            captured[key] = (output[0] if isinstance(output, tuple) else output).detach()

        handles.append(module.register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def encoder_intermediates(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Intermediates:
    """Runs the encoder of `model` in eval mode on `batch` (processor output) and returns its X and Z tensors."""
    # Whatever the encoder's forward accepts (word_index and labels are the heads'), so new inputs pass through.
    accepted = inspect.signature(_encoder(model).forward).parameters
    encoder_inputs = {name: value for name, value in batch.items() if name in accepted}
    with capture_intermediates(model) as captured, torch.inference_mode():
        _encoder(model)(**encoder_inputs)
    return Intermediates(**captured)
