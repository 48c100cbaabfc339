"""
`mmib export-onnx`: the text side of an MMIB checkpoint as an ONNX graph for the onnxruntime backend.

The graph holds the text tower, the APEnc layers, the cross-modal layers and the head's linear layer(s); it takes the
processor's text inputs (`input_ids`, `attention_mask`, `token_type_ids` where the tokenizer makes them), the head's
input (`word_index` or `entity_positions`) and, unless the model is text-only, the pooled vision-tower features of
the image and its crops `image_features` `(B, N, D)` with their mask `image_mask` `(B, N)`; batch, length, words and
image slots are dynamic. Its output is `logits`: CRF emissions `(B, W, K)` or relation logits `(B, R)`.

Why the vision tower stays in torch: its features are cached per image (`--image_feature_cache`), towers come from
five families (some through timm) with their own pooling rules, and the tower already runs at the matmul peak in
torch with channels-last bf16; a second graph would add an exporter risk per family for a stage the cache skips.

The exporter is torch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`); if it fails, or its graph does not
reproduce torch on inputs of other shapes, the TorchScript exporter (`dynamo=False`) is used and the manifest says
so, with the dynamo error. Installed-only module (needs `onnx`, `onnxscript` and `onnxruntime`: `mmib[onnx]`).
"""

import json
import os
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoints_mmib import load_checkpoint, native_bf16
from .onnx_runtime_mmib import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    ONNX_FILES,
    OPTIMIZED_FILES,
    cpu_kernel_flags,
    default_onnx_dir,
    weights_files,
    weights_fingerprint,
)

__all__ = ["export_onnx", "measure_paths"]

OPSET = 18
# Largest |difference| of logits between torch fp32 and the exported graph accepted at export.
EXPORT_TOLERANCE = 1e-4
EXAMPLE_POSTS = (
    ["RT", "@john", ":", "John", "Smith", "visits", "London", "and", "Paris", "!"],
    ["new", "post", ":", "blackburn", "festival"],
)
CHECK_POSTS = (["i", "love", "the", "city", "#london"], ["a"], ["John", "Smith", "met", "Mary", "in", "Paris", "."])


class _TextSide(nn.Module):
    """The part of an MMIB head that the graph holds: the encoder from image features on, and the head's layers."""

    def __init__(self, model: nn.Module, input_names: Sequence[str]):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.input_names, inputs))
        task_input = named.pop("word_index", None)
        if task_input is None:
            task_input = named.pop("entity_positions")
        states = self.model.mmib(**named, compute_regularizers=False, return_dict=True).last_hidden_state
        return self.model.head_logits(states, task_input)


def _graph_inputs(model: nn.Module, processor, posts: Sequence[list[str]], slots: int, seed: int) -> dict:
    """Processor inputs for `posts` as the graph takes them, with random image features in `slots` slots."""
    kwargs = {}
    if processor.task == "re":
        kwargs = {"head_spans": [(0, 1)] * len(posts), "tail_spans": [(len(p) - 1, len(p)) for p in posts]}
    encoded = processor([list(words) for words in posts], **kwargs)
    inputs = {name: encoded[name] for name in encoded if name not in ("pixel_values", "image_mask")}
    if not model.config.text_only:
        generator = torch.Generator().manual_seed(seed)
        size = model.config.vision_feature_size
        inputs["image_features"] = torch.randn(len(posts), slots, size, generator=generator)
        mask = torch.ones(len(posts), slots, dtype=torch.bool)
        mask[-1] = False
        mask[0, -1] = False
        inputs["image_mask"] = mask
    return inputs


def _dynamic_axes(names: Sequence[str]) -> dict[str, dict[int, str]]:
    axes = {
        "input_ids": {0: "batch", 1: "length"},
        "attention_mask": {0: "batch", 1: "length"},
        "token_type_ids": {0: "batch", 1: "length"},
        "word_index": {0: "batch", 1: "words"},
        "entity_positions": {0: "batch"},
        "image_features": {0: "batch", 1: "slots"},
        "image_mask": {0: "batch", 1: "slots"},
    }
    return {name: axes[name] for name in names}


def _export(module: _TextSide, example: dict, path: Path, dynamo: bool, task: str) -> None:
    names = list(example)
    output_axes = {0: "batch", 1: "words"} if task == "ner" else {0: "batch"}
    if dynamo:
        # `_TextSide.forward` takes `*inputs`: one entry, the tuple of their shapes.
        shapes = {
            "inputs": tuple(
                {axis: torch.export.Dim.DYNAMIC for axis in axes} for axes in _dynamic_axes(names).values()
            )
        }
        torch.onnx.export(
            module,
            tuple(example.values()),
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_shapes=shapes,
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    else:
        # The tracer warns at every Python branch on a tensor (the input checks, transformers' mask helpers): those
        # are constant for valid inputs, and the exported graph is compared with torch on other shapes below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                module,
                tuple(example.values()),
                str(path),
                input_names=names,
                output_names=["logits"],
                dynamic_axes={**_dynamic_axes(names), "logits": output_axes},
                opset_version=OPSET,
                dynamo=False,
            )


def _save_optimized(graph: Path, optimized: Path) -> None:
    """Writes `graph` as ONNX Runtime's CPU provider optimises it (`ORT_ENABLE_EXTENDED`: fusions, no layout tied
    to this CPU), so that `mmib predict` opens it without optimising again."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(optimized)
    onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def _largest_difference(model: nn.Module, session_path: Path, checks: Sequence[dict]) -> float:
    """Largest |logits| difference between torch and the graph at `session_path` over `checks` (opened without
    further optimisation: an optimised graph is compared as `mmib predict` runs it)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(str(session_path), options, providers=["CPUExecutionProvider"])
    module = _TextSide(model, []).eval()
    worst = 0.0
    for inputs in checks:
        module.input_names = list(inputs)
        with torch.inference_mode():
            expected = module(*inputs.values())
        (got,) = session.run(None, {name: value.numpy() for name, value in inputs.items()})
        worst = max(worst, (torch.from_numpy(got) - expected).abs().max().item())
    return worst


def export_onnx(
    checkpoint: str | Path,
    output: str | Path | None = None,
    int8: bool = False,
    measure_posts: Sequence[dict] | None = None,
    batch_size: int = 32,
    measure_threads: Sequence[int] | None = None,
) -> dict[str, Any]:
    """
    Exports a checkpoint's text side (see the module docstring) and writes the manifest.

    Args:
        checkpoint (`str` or `Path`): a local checkpoint folder (NER or RE).
        output (`str` or `Path`, *optional*): the export folder (default: `onnx/` inside the checkpoint).
        int8 (`bool`, *optional*): also write `model.int8.onnx`, ONNX Runtime's dynamic int8 quantisation of the
            graph's matrix products.
        measure_posts (`Sequence[dict]`, *optional*): posts (`text` or `words`) on which every path the
            `--backend auto` rule chooses from is timed and compared with torch fp32 (tags per post); the result is
            recorded in the manifest with this CPU's kernel flags.
        batch_size (`int`, *optional*, defaults to 32): posts per forward in the measurement.
        measure_threads (`Sequence[int]`, *optional*): the thread counts to measure at (default: 1 and torch's
            current count); see [`measure_paths`].

    Returns:
        The manifest written.

    Raises:
        RuntimeError: neither exporter gave a graph that reproduces torch within `EXPORT_TOLERANCE`.
    """
    import onnxruntime

    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"{checkpoint} is not a checkpoint folder (export-onnx needs a local folder).")
    output = default_onnx_dir(checkpoint) if output is None else Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model, processor = load_checkpoint(checkpoint, dtype=torch.float32)
    model = model.eval()
    slots = 1 + max(processor.num_crops, 2)
    example = _graph_inputs(model, processor, EXAMPLE_POSTS, slots, seed=0)
    checks = [example, _graph_inputs(model, processor, CHECK_POSTS, slots + 1, seed=1)]
    checks.append(_graph_inputs(model, processor, CHECK_POSTS[:1], 1, seed=2))
    graph = output / ONNX_FILES["float32"]
    (output / MANIFEST_NAME).unlink(missing_ok=True)
    exporter, dynamo_error, difference = "dynamo", None, None
    try:
        _export(_TextSide(model, list(example)).eval(), example, graph, dynamo=True, task=processor.task)
        difference = _largest_difference(model, graph, checks)
        if difference > EXPORT_TOLERANCE:
            raise RuntimeError(f"its logits differ from torch by {difference:.2e}")
    except Exception as error:  # the exporter's failures have no common type; the fallback is reported
        exporter, dynamo_error = "torchscript", f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
        _export(_TextSide(model, list(example)).eval(), example, graph, dynamo=False, task=processor.task)
        difference = _largest_difference(model, graph, checks)
        if difference > EXPORT_TOLERANCE:
            raise RuntimeError(
                f"The exported graph's logits differ from torch by {difference:.2e} (> {EXPORT_TOLERANCE}); dynamo "
                f"exporter: {dynamo_error}."
            ) from error
    for leftover in output.glob("*.onnx.data"):
        leftover.unlink()
    files = {"float32": ONNX_FILES["float32"]}
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(graph, output / ONNX_FILES["int8"], weight_type=QuantType.QInt8)
        files["int8"] = ONNX_FILES["int8"]
    else:
        (output / ONNX_FILES["int8"]).unlink(missing_ok=True)
        (output / OPTIMIZED_FILES["int8"]).unlink(missing_ok=True)
    optimized_files = {}
    for dtype, name in files.items():
        _save_optimized(output / name, output / OPTIMIZED_FILES[dtype])
        optimized_files[dtype] = OPTIMIZED_FILES[dtype]
    optimized_difference = _largest_difference(model, output / OPTIMIZED_FILES["float32"], checks)
    if optimized_difference > EXPORT_TOLERANCE:
        raise RuntimeError(
            f"ONNX Runtime's optimised graph differs from torch by {optimized_difference:.2e} (> {EXPORT_TOLERANCE})."
        )
    manifest = {
        "format_version": MANIFEST_VERSION,
        "task": processor.task,
        "inputs": list(example),
        "output": "logits",
        "files": files,
        "exporter": exporter,
        "dynamo_error": dynamo_error,
        "opset": OPSET,
        "torch": torch.__version__,
        "max_abs_logit_difference": difference,
        "optimized_files": optimized_files,
        "onnxruntime": onnxruntime.__version__,
        "max_abs_logit_difference_optimized": optimized_difference,
        "embedding_rows": model.get_input_embeddings().num_embeddings,
        "weights_sha256": weights_fingerprint(checkpoint),
        "weights_files": weights_files(checkpoint),
    }
    # Written before the measurement, which loads the graph through the manifest as `mmib predict` does.
    (output / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if measure_posts:
        manifest["measurement"] = measure_paths(checkpoint, output, measure_posts, batch_size, threads=measure_threads)
        (output / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def measure_paths(
    checkpoint: str | Path,
    onnx_dir: str | Path,
    posts: Sequence[dict],
    batch_size: int = 32,
    rounds: int = 3,
    threads: Sequence[int] | None = None,
) -> dict[str, Any]:
    """
    Posts per second of each path `--backend auto` chooses from, at each thread count, and the fraction of posts
    whose tags (NER) or labels (RE) equal torch fp32's at that count: torch fp32, torch bf16 (where this CPU
    multiplies bf16 natively), onnxruntime fp32 and, when exported, onnxruntime int8. Which path is fastest depends
    on the threads (at 1 thread on an AVX512-BF16 CPU torch bf16 beats ONNX Runtime fp32, which has no bf16 kernels;
    at 2 the order can turn), so `auto` reads the rows of the count it runs with. At each count every path predicts
    the posts once to warm up; then `rounds` rounds time each path once, in an order rotated each round (so that a
    change of the machine's load falls on all paths alike), and the median is recorded.

    Args:
        threads (`Sequence[int]`, *optional*): thread counts (torch's and ONNX Runtime's intra-op threads); default
            1 and torch's current count.

    Returns:
        The manifest's `measurement`: CPU kernel flags, the thread counts, posts, batch size, rounds, load average,
        and one row per (threads, backend, dtype).
    """
    current = torch.get_num_threads()
    threads = sorted(set(threads or (1, current)))
    if min(threads) < 1:
        raise ValueError(f"Thread counts must be >= 1, got {threads}.")
    rows = []
    try:
        for count in threads:
            torch.set_num_threads(count)
            rows += _measure_at_current_threads(checkpoint, onnx_dir, posts, batch_size, rounds)
    finally:
        torch.set_num_threads(current)
    return {
        "cpu_kernel_flags": cpu_kernel_flags(),
        "threads": threads,
        "posts": len(posts),
        "batch_size": batch_size,
        "rounds": rounds,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "paths": rows,
    }


def _measure_at_current_threads(
    checkpoint: str | Path, onnx_dir: str | Path, posts: Sequence[dict], batch_size: int, rounds: int
) -> list[dict[str, Any]]:
    from .predictor_mmib import MMIBPredictor

    device = torch.device("cpu")
    paths = [("torch", "float32")]
    if native_bf16(device):
        paths.append(("torch", "bfloat16"))
    paths.append(("onnxruntime", "float32"))
    if (Path(onnx_dir) / ONNX_FILES["int8"]).is_file():
        paths.append(("onnxruntime", "int8"))
    predictors, agreement, reference = {}, {}, None
    for backend, dtype in paths:
        predictor = MMIBPredictor.from_pretrained(
            str(checkpoint),
            dtype=dtype,
            device=device,
            backend=backend,
            onnx_dir=str(onnx_dir),
            batch_size=batch_size,
            object_detector=False,
        )
        results = predictor(list(posts))
        failed = next((result for result in results if "error" in result), None)
        if failed is not None:
            raise ValueError(f"The measurement post {failed['id']!r} cannot be predicted: {failed['error']}")
        outputs = [result.get("tags", result.get("label")) for result in results]
        reference = outputs if reference is None else reference
        agreement[backend, dtype] = sum(a == b for a, b in zip(outputs, reference)) / len(outputs)
        predictors[backend, dtype] = predictor
    seconds = {path: [] for path in paths}
    for round_index in range(rounds):
        shift = round_index % len(paths)
        for path in paths[shift:] + paths[:shift]:
            start = time.perf_counter()
            predictors[path](list(posts))
            seconds[path].append(time.perf_counter() - start)
    return [
        {
            "threads": torch.get_num_threads(),
            "backend": backend,
            "dtype": dtype,
            "posts_per_s": round(len(posts) / statistics.median(seconds[backend, dtype]), 2),
            "agreement": agreement[backend, dtype],
        }
        for backend, dtype in paths
    ]
