"""
Dynamic int8 quantisation of an MMIB model's text and fusion layers for CPU prediction (`--dtype int8`).

Travels with checkpoints as remote code (the predictor imports it): it imports only torch and the standard library.
"""

import warnings

import torch
from torch import nn

__all__ = ["INT8_PARTS", "quantize_int8"]

# The layers that run over every word: the text tower, the text variational encoder and the two cross-modal APEnc
# layers. The vision tower is convolutional or cached, the vision encoder sees at most 1 + num_crops slots, and the
# head and projections are small; they stay fp32.
INT8_PARTS = ("text_model", "text_variational_encoder", "vision_to_text_encoder", "text_to_vision_encoder")


def quantize_int8(model: nn.Module) -> nn.Module:
    """
    Replaces the `nn.Linear` layers of an MMIB task model's [`INT8_PARTS`] by dynamically quantised int8 ones
    (`torch.ao.quantization.quantize_dynamic`): weights stored as int8 per output channel, activations quantised
    per batch at run time, products accumulated in int32, outputs in fp32. Embeddings, layer norms, softmax, the
    vision tower (so a feature cache built with it stays valid), the head and the CRF stay fp32.

    Args:
        model (`nn.Module`): an `MMIBForTokenClassification` or `MMIBForRelationClassification` in eval mode, on
            the CPU (the quantised kernels are CPU-only).

    Returns:
        The same model, changed in place.

    Raises:
        ValueError: a model that is not on the CPU.
        RuntimeError: a torch without `torch.ao.quantization.quantize_dynamic`.
    """
    if any(parameter.device.type != "cpu" for parameter in model.parameters()):
        raise ValueError("int8 prediction runs on the CPU only: load the model with device='cpu'.")
    quantization = getattr(torch.ao, "quantization", None)
    if quantization is None or not hasattr(quantization, "quantize_dynamic"):
        raise RuntimeError(f"torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic: use float32.")
    with warnings.catch_warnings():
        # torch announces the move of eager-mode quantisation to torchao; the API works as documented here.
        warnings.filterwarnings(
            "ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning
        )
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
        for name in INT8_PARTS:
            part = getattr(model.mmib, name)
            if part is not None:
                quantization.quantize_dynamic(
                    part, {nn.Linear: quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
                )
    return model
