"""Tiny offline building blocks shared by the tests: random towers, a word-level vocabulary, small images."""

import importlib.util
import itertools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType, SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch
from datasets import ClassLabel, Dataset, Features, List, Value
from PIL import Image
from transformers import BertConfig, BertModel, BertTokenizer, ConvNextImageProcessor, ResNetConfig, ResNetModel

from mmib import MMIBConfig, MMIBForRelationClassification, MMIBForTokenClassification, MMIBPredictor, MMIBProcessor
from mmib.crf_mmib import MMIBCRF
from mmib.modeling_mmib import MMIBModel

# The benchmark data live in ../shared/data beside the repository (override with MMIB_SHARED_DATA).
SHARED_DATA = Path(os.environ.get("MMIB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
VOCAB_WORDS = (
    "rt new post blackburn festival of voice 2017 i love the city london paris john smith visits met meets "
    "at in and a to is @ # : . , ! ? - 's"
).split()
IMAGE_SIZE = 32


def tiny_text_config(vocab_size: int = 64) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
    )


def tiny_vision_config() -> ResNetConfig:
    return ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")


def tiny_config(**kwargs) -> MMIBConfig:
    defaults = dict(
        text_config=tiny_text_config(),
        vision_config=tiny_vision_config(),
        apenc_num_attention_heads=4,
        apenc_intermediate_size=48,
        num_crops=2,
        id2label=dict(enumerate(NER_LABELS)),
    )
    defaults.update(kwargs)
    return MMIBConfig(**defaults)


def make_tokenizer() -> BertTokenizer:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = ["##s", "##ing", "##ed", "##er"]
    vocab = {token: index for index, token in enumerate(specials + VOCAB_WORDS + pieces)}
    return BertTokenizer(vocab=vocab, do_lower_case=True)


def make_image_processor() -> ConvNextImageProcessor:
    return ConvNextImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_pct=0.875)


def make_image(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), mode="RGB")


REPO = Path(__file__).resolve().parents[1]


def save_tiny_towers(root: Path, tokenizer, shortest_edge: int) -> tuple[str, str]:
    """A tiny random BERT with `tokenizer` and a tiny random ResNet with the ResNet image processor resized to
    `shortest_edge`, saved under `root`; returns the two folders."""
    torch.manual_seed(0)
    BertModel(tiny_text_config(vocab_size=len(tokenizer))).save_pretrained(root / "text")
    tokenizer.save_pretrained(root / "text")
    ResNetModel(tiny_vision_config()).save_pretrained(root / "vision")
    preprocessor = json.loads((REPO / "configs" / "resnet-tiny-random" / "preprocessor_config.json").read_text())
    preprocessor["size"] = {"shortest_edge": shortest_edge}
    (root / "vision" / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return str(root / "text"), str(root / "vision")


# APEnc sizes that fit the tiny towers (hidden size 32), for `build_model_and_processor`.
SMALL = {"apenc_num_attention_heads": 4, "apenc_intermediate_size": 48}


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> dict[str, str]:
    """A tiny BERT with its tokenizer, and a tiny ResNet with and without an image processor of its own."""
    root = tmp_path_factory.mktemp("towers")
    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    BertModel(tiny_text_config(vocab_size=len(tokenizer))).save_pretrained(root / "text")
    tokenizer.save_pretrained(root / "text")
    vision = ResNetModel(tiny_vision_config())
    vision.save_pretrained(root / "vision")
    vision.save_pretrained(root / "vision_with_processor")
    make_image_processor().save_pretrained(root / "vision_with_processor")
    return {name: str(root / name) for name in ("text", "vision", "vision_with_processor")}


def load_script(path: Path, name: str):
    """A script outside the package (app.py, examples/, benchmarks/) imported as the module `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as an import would: its dataclasses look their module up.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_app():
    """app.py sits at the repository root, outside the package."""
    pytest.importorskip("gradio")
    return load_script(REPO / "app.py", "mmib_app")


@pytest.fixture
def tower_images(monkeypatch) -> list[int]:
    """Counts the images that go through any MMIB model's vision tower."""
    counts = []
    original = MMIBModel.get_image_features

    def counting(self, pixel_values):
        counts.append(pixel_values.reshape(-1, *pixel_values.shape[-3:]).shape[0])
        return original(self, pixel_values)

    monkeypatch.setattr(MMIBModel, "get_image_features", counting)
    return counts


def accelerate_cpu_launcher(num_processes: int = 2) -> list[str]:
    """`accelerate launch` of `num_processes` real gloo ranks on the CPU (run it with ACCELERATE_USE_CPU=1), on a
    free port so that two such tests never meet."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
    ]


# Run as `python -c WITHOUT_MMIB_PRELUDE script args`: hides the venv's editable install of mmib (a meta-path finder
# and a path-hook entry from its .pth file, which survive an unset PYTHONPATH), then runs `script` as __main__.
WITHOUT_MMIB_PRELUDE = """\
import importlib.util, runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path if not p.startswith("__editable__")]
sys.path_importer_cache.clear()
assert importlib.util.find_spec("mmib") is None, "mmib is importable: the test would not prove anything"
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_without_mmib(
    script: str, *args: str, tmp_path: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Runs the Python source `script` with `args` in a fresh process where `mmib` cannot be imported, as for a user
    who loads a checkpoint with `trust_remote_code=True` only: no PYTHONPATH, the editable install hidden, cwd and the
    remote-code cache (HF_MODULES_CACHE) under `tmp_path`."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    environment.pop("PYTHONPATH", None)
    script_file = tmp_path / "script_without_mmib.py"
    script_file.write_text(script)
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_MMIB_PRELUDE, str(script_file), *args],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# CPU flags as `torch.cpu.get_capabilities()` (cpuinfo) reports them, for `fake_cpu_flags`.
AVX2_FLAGS = ("avx", "avx2", "fma3", "f16c")
AVX512_FLAGS = (*AVX2_FLAGS, "avx512_f", "avx512_cd", "avx512_bw", "avx512_dq", "avx512_vl", "avx512_vnni")


def fake_cpu_flags(monkeypatch: pytest.MonkeyPatch, flags: Sequence[str]) -> None:
    """Makes cpuinfo (`torch.cpu.get_capabilities`) report an x86 CPU with exactly `flags`, and ATen the kernels it
    would pick for them (`torch.backends.cpu.get_cpu_capability`)."""
    capabilities = MappingProxyType({"architecture": "x86_64", **dict.fromkeys(flags, True)})
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    kernels = "AVX512" if {"avx512_f", "amx_tile"} & set(flags) else "AVX2" if "avx2" in flags else "DEFAULT"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: kernels)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)


def fake_cuda_devices(
    monkeypatch: pytest.MonkeyPatch, capabilities: Sequence[tuple[int, int]], current: int = 0
) -> None:
    """Makes torch see CUDA devices of these compute capabilities, `current` the current one. Each can create bf16
    tensors, as a T4 (7.5) or V100 (7.0) can by emulation, so `torch.cuda.is_bf16_supported()` says yes to all."""

    def properties(device: torch.device | str | int | None = None) -> SimpleNamespace:
        index = torch.device(device).index if isinstance(device, torch.device | str) else device
        major, minor = capabilities[current if index is None else index]
        return SimpleNamespace(major=major, minor=minor, name=f"fake sm_{major}{minor}")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)


@pytest.fixture
def tokenizer() -> BertTokenizer:
    return make_tokenizer()


@pytest.fixture
def image_processor() -> ConvNextImageProcessor:
    return make_image_processor()


# Two posts for the checkpoint round trips: the second has a word (U+FE0F) that tokenises to nothing.
CHECKPOINT_WORDS = [["john", "smith", "visits", "london"], ["rt", "@", "paris", "\ufe0f", "festival"]]


def ner_inputs(processor: MMIBProcessor) -> dict[str, torch.Tensor]:
    return dict(processor(CHECKPOINT_WORDS, images=[make_image(0), None], crops=[[make_image(1)], []]))


def re_inputs(processor: MMIBProcessor) -> dict[str, torch.Tensor]:
    return dict(
        processor(
            CHECKPOINT_WORDS,
            images=[make_image(0), make_image(2)],
            crops=[[make_image(1)], []],
            head_spans=[(0, 2), (2, 3)],
            tail_spans=[(3, 4), (4, 5)],
        )
    )


@pytest.fixture(scope="module")
def ner_checkpoint(tmp_path_factory) -> tuple[str, dict, torch.Tensor]:
    """A saved tiny NER model and processor, the inputs of `ner_inputs` and the model's logits on them."""
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
    """A saved tiny RE model (markers added, embeddings resized) and processor, `re_inputs` and the logits."""
    folder = str(tmp_path_factory.mktemp("re"))
    torch.manual_seed(0)
    processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="re", num_crops=2)
    relations = {0: "None", 1: "/per/loc/place_of_residence"}
    model = MMIBForRelationClassification(tiny_config(id2label=relations, entity_pooling="span_mean"))
    model.resize_token_embeddings(len(processor.tokenizer))
    model.eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    inputs = re_inputs(processor)
    with torch.no_grad():
        logits = model(**inputs).logits
    return folder, inputs, logits


@pytest.fixture(scope="module")
def ner_path(tmp_path_factory) -> str:
    """A saved tiny NER checkpoint with its processor and pipeline code (`prediction_checkpoints`)."""
    from prediction_checkpoints import save_ner_checkpoint  # it imports this module

    return save_ner_checkpoint(tmp_path_factory.mktemp("ner"))


@pytest.fixture(scope="module")
def predictor(ner_path) -> MMIBPredictor:
    return MMIBPredictor.from_pretrained(ner_path, dtype="float32", device="cpu", batch_size=2)


def ner_dataset(image_folder: Path | None = None) -> Dataset:
    """Two posts; with `image_folder`, each with an image and a crop written there (so that every loss part counts),
    else without images."""
    features = Features(
        {
            "id": Value("string"),
            "words": List(Value("string")),
            "ner_tags": List(ClassLabel(names=NER_LABELS)),
            "image": Value("string"),
            "crops": List(Value("string")),
        }
    )
    rows = [
        {
            "id": "a",
            "words": ["john", "smith", "visits", "london"],
            "ner_tags": [1, 2, 0, 3],
            "image": None,
            "crops": [],
        },
        {"id": "b", "words": ["i", "love", "paris", "!"], "ner_tags": [0, 0, 3, 0], "image": None, "crops": []},
    ]
    if image_folder is not None:
        for index, row in enumerate(rows):
            row["image"], row["crops"] = str(image_folder / f"{index}.png"), [str(image_folder / f"{index}-crop.png")]
            make_image(2 * index).save(row["image"])
            make_image(2 * index + 1).save(row["crops"][0])
    return Dataset.from_list(rows, features=features)


def all_path_scores(crf: MMIBCRF, emissions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All label paths of one post (`(W, K)` emissions) and their scores: `(K**W, W)` paths, `(K**W,)` scores."""
    num_words, num_labels = emissions.shape
    paths = torch.tensor(list(itertools.product(range(num_labels), repeat=num_words)))
    scores = crf.start_transitions[paths[:, 0]] + crf.end_transitions[paths[:, -1]]
    scores = scores + emissions[torch.arange(num_words), paths].sum(dim=1)
    scores = scores + crf.transitions[paths[:, :-1], paths[:, 1:]].sum(dim=1)
    return paths, scores


@pytest.fixture
def image_files(tmp_path) -> dict[str, str]:
    """Three PNG images `image0..2` (decoding to `make_image(index)`) and a `corrupt` JPEG, as paths."""
    files = {}
    for index in range(3):
        path = tmp_path / f"image{index}.png"  # lossless, so the file decodes to make_image(index)
        make_image(index).save(path)
        files[f"image{index}"] = str(path)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    files["corrupt"] = str(corrupt)
    return files


@pytest.fixture
def model() -> MMIBForTokenClassification:
    """The seed-0 tiny NER model in eval mode."""
    torch.manual_seed(0)
    return MMIBForTokenClassification(tiny_config()).eval()
