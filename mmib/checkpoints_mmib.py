"""
Loading MMIB checkpoints and the device / precision policy: the one checkpoint loader ([`load_checkpoint`]) and the
rules that choose where and in which dtype a model runs ([`resolve_device`], [`native_bf16`], [`resolve_dtype`],
[`prepare_for_inference`]).

The predictor, the pipeline, training (`mmib.building`) and the analyses load through this module; it does not
import the predictor or the object extractor, so training does not depend on them.

Travels with checkpoints as remote code (see CONTRIBUTING.md).
"""

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoProcessor,
    PreTrainedConfig,
    PreTrainedModel,
    ProcessorMixin,
)

from .processing_mmib import check_processor_matches_config, check_tokenizer_matches_embeddings

__all__ = [
    "DTYPES",
    "TASK_AUTO_CLASSES",
    "load_checkpoint",
    "load_config_and_processor",
    "native_bf16",
    "prepare_for_inference",
    "read_weights",
    "resolve_device",
    "resolve_dtype",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.qint8}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as given, else CUDA when present (this process's GPU under a launcher), else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


# oneDNN's ISA caps below AVX512_CORE_BF16 (the values `ONEDNN_MAX_CPU_ISA` takes): bf16 products are emulated.
ONEDNN_ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def native_bf16(device: torch.device) -> bool:
    """
    Whether `device` multiplies bf16 natively, where bf16 autocast is faster than fp32 rather than emulated and
    slower: a CUDA device of compute capability 8.0 or higher (Ampere on; T4 and V100 emulate bf16, although
    `torch.cuda.is_bf16_supported()` says yes there), or a CPU with AVX512-BF16 or AMX (an AVX512 CPU without them
    emulates it, although oneDNN reports bf16 support there). Other devices count as not native.

    The CUDA answer is that of `device` itself, not of the current device; the CPU flags come from
    `torch.cpu.get_capabilities()` (cpuinfo), which every platform torch runs on answers. Kernels capped below
    AVX-512 (`ONEDNN_MAX_CPU_ISA=AVX2`, `ATEN_CPU_CAPABILITY=avx2`, as to reproduce a CPU without AVX-512) emulate
    bf16 on any CPU: not native.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        flags = torch.cpu.get_capabilities()
        capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ONEDNN_ISAS_WITHOUT_BF16
        capped |= torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2", "VSX", "ZVECTOR")
        return bool(flags.get("avx512_bf16") or flags.get("amx_bf16")) and not capped
    return False


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> tuple[torch.dtype, str]:
    """
    The compute dtype for `--dtype auto|float32|bfloat16|int8` (bf16 runs under autocast, see [`MMIBPredictor`];
    `int8` (`torch.qint8`) is dynamic int8 quantisation of the text and fusion layers on the CPU, see
    [`quantize_int8`]; `auto` never picks it: it costs F1, see docs/prediction.md).

    `auto` takes bfloat16 only where `device` multiplies it natively ([`native_bf16`]), else float32: emulated bf16
    is slower than fp32. `train_mmib.py --bf16 auto` follows the same rule.

    Returns:
        `(dtype, reason)`, the reason being a short human-readable note for the log.
    """
    if isinstance(dtype, torch.dtype):
        return dtype, "requested"
    if dtype in DTYPES:
        return DTYPES[dtype], "requested"
    if dtype != "auto":
        raise ValueError(f"Unknown dtype {dtype!r}: expected auto, float32, bfloat16 or int8.")
    if native_bf16(device):
        return torch.bfloat16, f"auto: native bf16 on {device}"
    return torch.float32, f"auto: no native bf16 on {device} (needs CUDA compute capability 8.0, AVX512-BF16 or AMX)"


# Layers cast to a half-precision compute dtype: those whose weights only ever enter matrix products (autocast casts
# them at every call anyway), and embeddings (which start the text tower's residual stream).
HALF_PRECISION_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Embedding)


def prepare_for_inference(model: PreTrainedModel, compute_dtype: torch.dtype) -> PreTrainedModel:
    """
    Lays out a loaded model's weights for applying it under `compute_dtype` (in place; returns the model).

    - Convolution weights become channels-last, the layout [`MMIBModel.get_image_features`] gives the pixels, so that
      oneDNN does not reorder every weight at every call.
    - For a half-precision `compute_dtype` (bf16 or fp16, run under autocast), the weights and biases of the linear
      and convolution layers are cast to it once: autocast casts exactly these tensors to the same dtype at every
      forward otherwise, computing the same products. The embeddings are cast too, so that the text tower's residual
      stream (embeddings, then each layer's output added to its input) runs in that dtype as in a bf16 model; under
      autocast over fp32 embeddings it stays fp32 and every linear layer casts its input again. Normalisations keep
      their fp32 weights (and compute in fp32), the CRF and the entity scores stay fp32. On the MiniLM checkpoint of
      docs/speed.md, `mmib predict` then finds the entities of fp32 on 720 of 723 Twitter-2017 test posts (autocast
      over fp32 weights: 721; every weight but the CRF's cast: 717 in-process) and on 102 of 102 shipped sample
      posts; the text side's speed is in docs/speed.md.

    Call it after anything that reads the weights as saved (the feature-cache fingerprint hashes their dtype).
    """
    model.to(memory_format=torch.channels_last)
    if compute_dtype in (torch.bfloat16, torch.float16):
        for module in model.modules():
            if isinstance(module, HALF_PRECISION_LAYERS):
                module.to(compute_dtype)
    return model


TASK_AUTO_CLASSES = {"ner": AutoModelForTokenClassification, "re": AutoModelForSequenceClassification}


def load_config_and_processor(
    model_name_or_path: str,
    task: str | None = None,
    num_crops: int | None = None,
    max_length: int | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedConfig, ProcessorMixin]:
    """
    A saved MMIB checkpoint's config and processor, checked against each other and the caller, without its weights:
    [`load_checkpoint`] adds the model; the onnxruntime backend needs no torch model.

    Args:
        model_name_or_path (`str`): folder or Hub id of a checkpoint saved with its processor.
        task (`str`, *optional*): the task the caller expects (`"ner"` or `"re"`).
        num_crops, max_length (`int`, *optional*): values the caller expects. They are fixed once a model is
            built, so a value that differs from the checkpoint's is refused rather than silently ignored.
        trust_remote_code (`bool`): load the checkpoint's own code (not needed when `mmib` is installed).

    Raises:
        ValueError: not an MMIB checkpoint; the processor and the model config disagree (`num_crops`,
            `max_length` beyond the text tower's positions); or the checkpoint differs from `task`, `num_crops` or
            `max_length`.
    """
    config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    if config.model_type != "mmib":
        raise ValueError(
            f"{model_name_or_path} is not an MMIB checkpoint (model_type {config.model_type!r}, expected 'mmib')."
        )
    processor = AutoProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    if task is not None and processor.task != task:
        raise ValueError(f"The checkpoint {model_name_or_path} does task {processor.task!r}, not {task!r}.")
    for name, value in (("num_crops", num_crops), ("max_length", max_length)):
        if value is not None and value != getattr(processor, name):
            raise ValueError(
                f"The checkpoint {model_name_or_path} was built with {name}={getattr(processor, name)}, not {value}; "
                f"{name} is fixed once a model is built (leave it unset to use the checkpoint's)."
            )
    check_processor_matches_config(processor, config, source=str(model_name_or_path))
    return config, processor


def load_checkpoint(
    model_name_or_path: str,
    task: str | None = None,
    num_crops: int | None = None,
    max_length: int | None = None,
    trust_remote_code: bool = False,
    **model_kwargs: Any,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    The one checkpoint loader: a saved MMIB checkpoint (model + processor), checked against itself and the caller.
    The predictor, the pipeline, training (`load_model_and_processor`) and the analyses all load through it.

    Args:
        model_name_or_path (`str`): folder or Hub id of a checkpoint saved with its processor.
        task, num_crops, max_length, trust_remote_code: see [`load_config_and_processor`].
        model_kwargs: passed to the model's `from_pretrained` (e.g. `beta_text`, `dtype`).

    Returns:
        `(model, processor)`; the model class follows `processor.task`.

    Raises:
        ValueError: see [`load_config_and_processor`]; also a tokenizer larger than the text embeddings.
    """
    _, processor = load_config_and_processor(model_name_or_path, task, num_crops, max_length, trust_remote_code)
    model = TASK_AUTO_CLASSES[processor.task].from_pretrained(
        model_name_or_path, trust_remote_code=trust_remote_code, **model_kwargs
    )
    check_tokenizer_matches_embeddings(processor, model, source=str(model_name_or_path))
    return model, processor


# safetensors dtype names (the file format's header) and the torch dtypes they store.
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_weights(checkpoint: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """
    The tensors of a local checkpoint's `*.safetensors` files whose names start with `prefix`, the prefix removed,
    read without loading the others: the onnxruntime backend takes the CRF (a few hundred bytes) and, when a post
    brings an image, the vision tower from a checkpoint whose text side is the exported graph. The safetensors
    layout (an 8-byte little-endian header size, a JSON header of dtype / shape / byte range per tensor, the bytes)
    is read with the standard library, as this module travels with checkpoints.

    Raises:
        FileNotFoundError: the folder holds no `*.safetensors` file.
        ValueError: a header that is not safetensors, or a dtype outside `SAFETENSORS_DTYPES`.
    """
    files = sorted(Path(checkpoint).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{checkpoint} holds no *.safetensors weights.")
    tensors = {}
    for path in files:
        with open(path, "rb") as weights:
            try:
                (size,) = struct.unpack("<Q", weights.read(8))
                header = json.loads(weights.read(size))
            except (struct.error, UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ValueError(f"{path} is not a safetensors file ({error}).") from error
            for name, entry in header.items():
                if name == "__metadata__" or not name.startswith(prefix):
                    continue
                if entry["dtype"] not in SAFETENSORS_DTYPES:
                    raise ValueError(f"{path}: tensor {name} has dtype {entry['dtype']}, which is not read here.")
                start, end = entry["data_offsets"]
                weights.seek(8 + size + start)
                data = bytearray(weights.read(end - start))
                dtype = SAFETENSORS_DTYPES[entry["dtype"]]
                # `torch.frombuffer` refuses an empty buffer (a tensor with a zero dimension).
                tensor = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
                tensors[name.removeprefix(prefix)] = tensor.reshape(entry["shape"])
    return tensors
