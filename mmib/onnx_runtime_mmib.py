"""
The ONNX Runtime backend of prediction: an MMIB head whose text side runs as the graph `mmib export-onnx` wrote.

The exported graph holds the text side (text tower, APEnc, cross-modal layers and the head's linear layer) and takes
the pooled image features of the image and its crops and their mask as inputs. Around it, [`MMIBOnnxRuntimeModel`]
keeps the torch parts: the vision tower (images and crops not found in a feature cache go through it, as in torch),
the input checks and the CRF (Viterbi and span scores, the same code as the torch backend). It is called like the
torch head, so the predictor and its NER -> RE stage use either without knowing which.

The folder (`onnx/` inside the checkpoint by default) holds `mmib_onnx.json` (the manifest: task, graph inputs,
exporter, the checkpoint's weight files, the onnxruntime version, the speed and agreement measured at export) and the
graphs: `model.onnx` (and `model.int8.onnx` with dynamic int8 weights), and the same graphs as ONNX Runtime optimised
them at export (`model.optimized.onnx`, ...), which a session opens without optimising again.

Start-up loads only what the backend needs beside the graph: the config, the processor and the CRF's transition
scores (read from the safetensors file, [`read_weights`]); the vision tower is built from the checkpoint's weights
at the first post that brings an image the feature cache does not hold. The weights are checked against the export
by their recorded sizes and modification times, and hashed only when those differ.

`--backend auto` ([`resolve_backend`]) reads the manifest's measurement at the run's thread count (the export measures
at 1 thread and at the current count): the fastest (backend, dtype) that kept at least [`AUTO_MIN_AGREEMENT`] of the
measured posts' tags equal to torch fp32, on a machine with the same CPU kernels flags; without an export or a
measurement of this machine it is the torch backend with `resolve_dtype`'s rule.

Travels with checkpoints as remote code: `onnxruntime` is imported only when the backend is chosen (inside a `try`,
which transformers' remote-code import check skips), and raises an `ImportError` naming `pip install mmib[onnx]`.
"""

import hashlib
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from transformers import AutoModel, PreTrainedConfig, ProcessorMixin

from .checkpoints_mmib import load_config_and_processor, native_bf16, read_weights, resolve_dtype
from .crf_mmib import MMIBCRF
from .modeling_mmib import MMIBModel
from .processing_mmib import check_tokenizer_matches_embeddings
from .vision_towers_mmib import attention_fallback

logger = logging.getLogger(__name__)

__all__ = [
    "AUTO_MIN_AGREEMENT",
    "BACKENDS",
    "MANIFEST_NAME",
    "ONNX_FILES",
    "OPTIMIZED_FILES",
    "MMIBOnnxRuntimeModel",
    "cpu_kernel_flags",
    "default_onnx_dir",
    "has_export",
    "load_onnx_checkpoint",
    "read_manifest",
    "resolve_backend",
    "weights_files",
    "weights_fingerprint",
]

BACKENDS = ("auto", "torch", "onnxruntime")
MANIFEST_NAME = "mmib_onnx.json"
MANIFEST_VERSION = 1
# The graph of each compute dtype of the onnxruntime backend.
ONNX_FILES = {"float32": "model.onnx", "int8": "model.int8.onnx"}
# Each graph as ONNX Runtime's CPU provider optimised it at export (ORT_ENABLE_EXTENDED: operator fusions, no layout
# tied to the exporting CPU). Valid for the onnxruntime version that wrote it (recorded in the manifest).
OPTIMIZED_FILES = {"float32": "model.optimized.onnx", "int8": "model.int8.optimized.onnx"}
# `--backend auto` keeps a path only if at least this fraction of posts got exactly the tags of torch fp32.
AUTO_MIN_AGREEMENT = 0.98
# CPU flags that decide which kernels run: a measurement made where they differ does not say what is fastest here.
KERNEL_FLAGS = ("avx2", "avx512_f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
# Environment variables that cap torch's CPU kernels below the CPU's flags (as to reproduce a CPU without AVX-512).
# ONNX Runtime ignores them (it picks its kernels from the CPU alone), so a measurement made with other caps than
# those in effect says nothing about which path is fastest here.
KERNEL_CAP_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def default_onnx_dir(checkpoint: str | Path) -> Path:
    """The `onnx/` folder inside a checkpoint folder, where `mmib export-onnx` writes by default."""
    return Path(checkpoint) / "onnx"


def weights_fingerprint(checkpoint: str | Path) -> str:
    """SHA-256 of the checkpoint's safetensors weight files (in name order): a graph exported from other weights is
    refused rather than silently predicting with them."""
    digest = hashlib.sha256()
    files = sorted(Path(checkpoint).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{checkpoint} holds no *.safetensors weights.")
    for path in files:
        digest.update(path.name.encode())
        file_digest = hashlib.sha256()
        with open(path, "rb") as weights:
            while chunk := weights.read(1 << 24):
                file_digest.update(chunk)
        digest.update(file_digest.digest())
    return digest.hexdigest()


def weights_files(checkpoint: str | Path) -> dict[str, list[int]]:
    """Size and modification time (ns) of each safetensors weight file: recorded at export, so that a start-up whose
    files still have them skips [`weights_fingerprint`] (a file rewritten since changes its time)."""
    stats = {path.name: path.stat() for path in sorted(Path(checkpoint).glob("*.safetensors"))}
    return {name: [stat.st_size, stat.st_mtime_ns] for name, stat in stats.items()}


def has_export(onnx_dir: str | Path) -> bool:
    """Whether `onnx_dir` holds an export manifest (checked when it is read)."""
    return (Path(onnx_dir) / MANIFEST_NAME).is_file()


def cpu_kernel_flags() -> dict[str, Any]:
    """The CPU capabilities (torch's cpuinfo) that choose the kernels of both backends, and under `kernel_caps` the
    `KERNEL_CAP_VARIABLES` set in the environment (absent when none is)."""
    flags = torch.cpu.get_capabilities()
    result = {name: bool(flags.get(name)) for name in KERNEL_FLAGS}
    caps = {name: os.environ[name] for name in KERNEL_CAP_VARIABLES if os.environ.get(name)}
    if caps:
        result["kernel_caps"] = caps
    return result


def read_manifest(onnx_dir: str | Path, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """
    The manifest of an exported folder, checked.

    Args:
        onnx_dir (`str` or `Path`): the folder `mmib export-onnx` wrote.
        checkpoint (`str` or `Path`, *optional*): the checkpoint folder the graph must come from: its weight files
            must have the sizes and modification times recorded at export, or else the recorded SHA-256.

    Raises:
        FileNotFoundError: the folder, its manifest or the float32 graph is missing.
        ValueError: the manifest is not valid JSON, has another format version, or was exported from other weights.
    """
    onnx_dir = Path(onnx_dir)
    hint = f"run `mmib export-onnx {checkpoint or 'CHECKPOINT'}{'' if checkpoint else ' --output ' + str(onnx_dir)}`"
    path = onnx_dir / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No ONNX export in {onnx_dir} ({MANIFEST_NAME} missing): {hint}.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a valid ONNX export manifest ({error}): {hint} again.") from error
    if not isinstance(manifest, dict) or manifest.get("format_version") != MANIFEST_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise ValueError(f"{path} has format_version {version!r}, expected {MANIFEST_VERSION}: {hint} again.")
    for key in ("task", "inputs", "files", "weights_sha256"):
        if key not in manifest:
            raise ValueError(f"{path} lacks the field {key!r}: {hint} again.")
    graph = onnx_dir / manifest["files"].get("float32", ONNX_FILES["float32"])
    if not graph.is_file():
        raise FileNotFoundError(f"{graph} is missing (named by {path}): {hint} again.")
    if (
        checkpoint is not None
        and Path(checkpoint).is_dir()
        and manifest.get("weights_files") != weights_files(checkpoint)
    ):
        if manifest["weights_sha256"] != weights_fingerprint(checkpoint):
            raise ValueError(
                f"The ONNX export in {onnx_dir} was made from other weights than those of {checkpoint} (stale "
                f"export): {hint} again."
            )
    return manifest


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            "The onnxruntime backend needs the onnxruntime package: pip install 'mmib[onnx]'."
        ) from error
    return onnxruntime


class _ImageSide:
    """
    The encoder's image inputs for the graph, as the torch encoder makes them (the same methods: cached slots,
    pixels through the vision tower, zeros for no image), with the vision tower built from the checkpoint's weights
    at its first use: text-only posts and cached images never load it.
    """

    get_image_features = MMIBModel.get_image_features
    _image_inputs = MMIBModel._image_inputs

    def __init__(self, config: PreTrainedConfig, checkpoint: str | Path):
        self.config = config
        self.checkpoint = Path(checkpoint)
        self._vision_model = None

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def vision_dtype(self) -> torch.dtype:
        """The tower runs in fp32, the graph's input dtype (known without building the tower)."""
        return torch.float32

    @property
    def vision_model(self) -> torch.nn.Module:
        """The vision tower with the checkpoint's weights, built at the first access."""
        if self._vision_model is None:
            attention_fallback(self.config.vision_config)
            tower = AutoModel.from_config(self.config.vision_config)
            tower.load_state_dict(read_weights(self.checkpoint, "mmib.vision_model."))
            self._vision_model = tower.float().eval().requires_grad_(False)
        return self._vision_model


def _open_session(onnx_dir: Path, manifest: dict[str, Any], dtype: str, num_threads: int) -> tuple[Any, str | None]:
    """
    An ONNX Runtime session of the `dtype` graph: the one optimised at export, opened with graph optimisation off,
    if it was written by this onnxruntime version; else the plain graph, optimised now (the reason is logged and
    returned).
    """
    onnxruntime = _import_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    optimized = manifest.get("optimized_files", {}).get(dtype)
    exported_by = manifest.get("onnxruntime")
    fallback = None
    if optimized is None:
        fallback = "the export holds no optimised graph (written before mmib saved one)"
    elif exported_by != onnxruntime.__version__:
        fallback = f"its optimised graph was written by onnxruntime {exported_by}, this is {onnxruntime.__version__}"
    elif not (onnx_dir / optimized).is_file():
        fallback = f"{onnx_dir / optimized} is missing"
    if fallback is None:
        graph = onnx_dir / optimized
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    else:
        graph = onnx_dir / manifest["files"].get(dtype, ONNX_FILES[dtype])
        logger.warning(
            f"{onnx_dir}: opening the plain {dtype} graph and optimising it at start-up: {fallback}. `mmib "
            "export-onnx` again saves the optimised graph for this version."
        )
    session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    return session, fallback


class MMIBOnnxRuntimeModel:
    r"""
    An MMIB head (NER or RE) whose text side runs in ONNX Runtime, called like the torch head. Build it with
    [`load_onnx_checkpoint`].

    Args:
        config ([`PreTrainedConfig`]): the checkpoint's `MMIBConfig`.
        task (`str`): `"ner"` or `"re"` (the processor's).
        onnx_dir (`str` or `Path`): the folder `mmib export-onnx` wrote.
        checkpoint (`str` or `Path`): the local checkpoint folder, whose weights the export must match and whose
            CRF and vision tower serve the parts outside the graph.
        dtype (`str`, *optional*, defaults to `"float32"`): which graph: `"float32"` or `"int8"` (dynamic int8
            weights, written by `mmib export-onnx --int8`).
        num_threads (`int`, *optional*): ONNX Runtime's intra-op threads; defaults to torch's (which follows
            `OMP_NUM_THREADS`), so that both backends use the same cores.

    Attributes:
        graph_fallback (`str` or `None`): why the plain graph was opened (and optimised at start-up) instead of the
            one optimised at export; `None` when the optimised graph serves.
    """

    def __init__(
        self,
        config: PreTrainedConfig,
        task: str,
        onnx_dir: str | Path,
        checkpoint: str | Path,
        dtype: str = "float32",
        num_threads: int | None = None,
    ):
        self.onnx_dir = Path(onnx_dir)
        self.manifest = read_manifest(self.onnx_dir, checkpoint)
        if self.manifest["task"] != task:
            raise ValueError(f"The ONNX export in {onnx_dir} is of task {self.manifest['task']!r}, not {task!r}.")
        if dtype not in ONNX_FILES:
            raise ValueError(f"The onnxruntime backend runs {' or '.join(ONNX_FILES)}, not {dtype!r}.")
        graph = self.onnx_dir / self.manifest["files"].get(dtype, ONNX_FILES[dtype])
        if not graph.is_file():
            raise FileNotFoundError(
                f"{graph} is missing: the {dtype} graph is written by `mmib export-onnx CHECKPOINT --int8`."
            )
        self.config = config
        self.task = task
        self.compute_dtype = dtype
        self.input_names = list(self.manifest["inputs"])
        self.crf = None
        if task == "ner":
            self.crf = MMIBCRF(config.num_labels)
            self.crf.load_state_dict(read_weights(checkpoint, "crf."))
            self.crf.eval()
        self.image_side = None if config.text_only else _ImageSide(config, checkpoint)
        self.session, self.graph_fallback = _open_session(
            self.onnx_dir, self.manifest, dtype, num_threads or torch.get_num_threads()
        )

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def mmib(self) -> _ImageSide | None:
        """The encoder's image side: its vision tower computes the image features the graph takes."""
        return self.image_side

    def eval(self) -> "MMIBOnnxRuntimeModel":
        return self

    def __call__(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        word_index: torch.LongTensor | None = None,
        entity_positions: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_features: torch.FloatTensor | None = None,
        image_mask: torch.Tensor | None = None,
        image_feature_mask: torch.Tensor | None = None,
    ) -> SimpleNamespace:
        """
        The head's outputs for processor inputs: `logits` (emissions `(B, W, K)` or relation logits `(B, R)`, fp32)
        and, for NER, `predictions` (the CRF's Viterbi path, -100 at padding), as the torch head in eval mode.
        """
        task_input = word_index if self.task == "ner" else entity_positions
        name = "word_index" if self.task == "ner" else "entity_positions"
        if task_input is None:
            raise ValueError(f"{name} is required (from MMIBProcessor).")
        inputs = {"input_ids": input_ids, name: task_input}
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs["attention_mask"] = attention_mask
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        inputs["token_type_ids"] = token_type_ids
        if self.image_side is not None:
            features, mask = self.image_side._image_inputs(
                pixel_values, image_features, image_mask, input_ids.shape[0], image_feature_mask
            )
            inputs["image_features"], inputs["image_mask"] = features.float(), mask.bool()
        feeds = {key: inputs[key].contiguous().numpy() for key in self.input_names}
        feeds = {key: value.astype("int64") if value.dtype.kind == "i" else value for key, value in feeds.items()}
        (logits,) = self.session.run(None, feeds)
        logits = torch.from_numpy(logits)
        if self.task == "re":
            return SimpleNamespace(logits=logits)
        return SimpleNamespace(logits=logits, predictions=self.crf.decode(logits, word_index >= 0))


def load_onnx_checkpoint(
    checkpoint: str | Path,
    onnx_dir: str | Path | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> tuple[MMIBOnnxRuntimeModel, ProcessorMixin]:
    """
    The onnxruntime backend's counterpart of `load_checkpoint`: the checkpoint's processor and an
    [`MMIBOnnxRuntimeModel`] on its export, without loading the torch model.

    Args:
        checkpoint (`str` or `Path`): a local checkpoint folder.
        onnx_dir (`str` or `Path`, *optional*): its export (default: `checkpoint/onnx`).
        dtype (`str`, *optional*, defaults to `"float32"`): `"float32"` or `"int8"`.
        trust_remote_code (`bool`): load the checkpoint's own code (not needed when `mmib` is installed).

    Raises:
        FileNotFoundError, ValueError: see [`read_manifest`] and `load_config_and_processor`; also a tokenizer with
            more tokens than the exported text embeddings.
    """
    config, processor = load_config_and_processor(str(checkpoint), trust_remote_code=trust_remote_code)
    onnx_dir = default_onnx_dir(checkpoint) if onnx_dir is None else onnx_dir
    model = MMIBOnnxRuntimeModel(config, processor.task, onnx_dir, checkpoint, dtype=dtype)
    rows = model.manifest.get("embedding_rows")
    if rows is not None:
        check_tokenizer_matches_embeddings(processor, rows, source=str(checkpoint))
    return model, processor


def resolve_backend(
    backend: str,
    dtype: str | torch.dtype,
    device: torch.device,
    onnx_dir: str | Path | None,
) -> tuple[str, str | torch.dtype, str]:
    """
    The backend and dtype a checkpoint runs with, for `--backend` and `--dtype`.

    - `torch`: `dtype` as given (`resolve_dtype` applies).
    - `onnxruntime`: the exported graph of `dtype` (`auto` = `float32`; `bfloat16` is refused).
    - `auto`: the manifest's measurement in `onnx_dir` if it was made on a CPU with this CPU's kernel flags: the
      fastest measured (backend, dtype) whose posts kept the tags of torch fp32 at least `AUTO_MIN_AGREEMENT` of
      the time, among those matching `dtype` (any, for `auto`), at torch's current thread count (or the measured
      count nearest to it). Otherwise (no export, no measurement of this machine, not a CPU): `torch`.

    Returns:
        `(backend, dtype, reason)`: `backend` is `"torch"` or `"onnxruntime"`, `dtype` a `--dtype` value or
        dtype, `reason` a short note for the log.
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}: expected {', '.join(BACKENDS)}.")
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise ValueError(f"The onnxruntime backend runs on the CPU, not on {device}.")
        if name not in ("auto", *ONNX_FILES):
            raise ValueError(f"The onnxruntime backend runs float32 or int8, not {name}.")
        return "onnxruntime", "float32" if name == "auto" else name, "requested"
    if backend == "torch":
        return "torch", dtype, "requested"
    if device.type != "cpu":
        return "torch", dtype, f"auto: torch on {device}"
    onnx_dir = None if onnx_dir is None else Path(onnx_dir)
    if onnx_dir is None or not has_export(onnx_dir):
        return "torch", dtype, "auto: torch (no ONNX export)"
    measurement = read_manifest(onnx_dir).get("measurement")
    if not measurement or measurement.get("cpu_kernel_flags") != cpu_kernel_flags():
        return "torch", dtype, "auto: torch (the ONNX export has no measurement made on a CPU like this one)"
    if name == "auto":
        allowed = {"float32", "int8", "bfloat16" if native_bf16(device) else "float32"}
    else:
        allowed = {name}
    threads, rows = _rows_at_nearest_threads(measurement, torch.get_num_threads())
    candidates = [
        row
        for row in rows
        if row["dtype"] in allowed and row["agreement"] >= AUTO_MIN_AGREEMENT and row["posts_per_s"] > 0
    ]
    if not candidates:
        return "torch", dtype, "auto: torch (no measured path kept the agreement)"
    best = max(candidates, key=lambda row: row["posts_per_s"])
    dtype = best["dtype"] if best["backend"] == "onnxruntime" else resolve_dtype(best["dtype"], device)[0]
    where = f"{threads} thread{'s' * (threads != 1)}"
    if threads != torch.get_num_threads():
        where += f" (the measured count nearest to this run's {torch.get_num_threads()})"
    return (
        best["backend"],
        dtype,
        f"auto: {best['posts_per_s']:.0f} posts/s at export on {where}, {best['agreement']:.1%} of posts as fp32",
    )


def _rows_at_nearest_threads(measurement: dict[str, Any], threads: int) -> tuple[int, list[dict[str, Any]]]:
    """The measured rows of the thread count nearest to `threads` (the fewer on a tie), and that count. A row
    without `threads` (an export measured at one count) has the measurement's."""
    default = measurement.get("threads")
    default = default[0] if isinstance(default, list) and default else default
    by_threads: dict[int, list[dict[str, Any]]] = {}
    for row in measurement["paths"]:
        by_threads.setdefault(row.get("threads", default) or threads, []).append(row)
    if not by_threads:
        return threads, []
    nearest = min(by_threads, key=lambda count: (abs(count - threads), count))
    return nearest, by_threads[nearest]
