"""`mmib predict` as a whole process against transformers' token-classification pipeline, on the same posts and tower.

python benchmarks/bench_vs_pipeline.py runs/full-text-twitter2017 --posts 2000 --rounds 2 --threads 1 2 \
    [--relation_model DIR] [--before NAME=DIR ...] [--mmib_variants 'int8=--dtype int8' ...] \
    [--variants text image ner_re memory] [--pipeline_dtypes float32 bfloat16] [--backend onnxruntime ...] \
    [--cpu_isa avx2] [--output_json FILE]

Posts: the raw Twitter-2017 test posts (`--data_dir`, words joined by spaces), repeated to `--posts`. Every
measurement is a fresh process timed from its start to its end (imports and model loading included), its peak memory
the maximum resident set of it or its largest worker (GNU `/usr/bin/time`). Within a variant the sides run
interleaved, the order rotated each round (A B, B A, ...), and the summary is the ratio of median posts/s. Both sides
get the same `OMP_NUM_THREADS` / `MKL_NUM_THREADS` (each value of `--threads`). `--cpu_isa avx2` runs every side
with AVX2 kernels forced (`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`), as on a
CPU without AVX-512. Before the timed runs the `mmib` package's byte code is compiled (`compileall`), as `pip install`
does: where `PYTHONDONTWRITEBYTECODE` is set, a source checkout would otherwise compile every module at each start,
which the pipeline's installed transformers never does.

Variants (side B over side A):
- `text`: `pipeline("token-classification", aggregation_strategy="simple", batch_size=B)` over a plain
  `BertForTokenClassification` on the checkpoint's MiniLM tower, its weights in each of `--pipeline_dtypes` (A,
  one side per dtype, the first the baseline) vs `mmib predict MODEL --input posts.jsonl --output out.jsonl
  --batch_size B --quiet` (B), all writing JSON lines.
- `image`: `mmib predict` on the text posts (A) vs the same posts with an image each, served by
  `--image_feature_cache` (a cache of the images built with the checkpoint's tower before the timed runs) (B).
- `ner_re`: `mmib predict` with an image per post through the cache on the Twitter-2017 test posts for which the
  checkpoint predicts 3-5 entities (A) vs the same with `--relation_model` (NER -> RE on the ordered pairs of
  predicted entities whose types match the relation checkpoint's type signatures) (B), and with `--all_pairs` too
  (every ordered pair); the entities, classified and skipped pairs per post are printed. Without
  `--relation_model` an RE checkpoint with random heads is built on the NER checkpoint's text and vision towers,
  recording the type signatures its relation names spell (as `mmib train` on MNRE does): throughput does not
  depend on trained weights.
- `memory`: peak memory of `mmib predict` text-only at `--memory_posts` sizes (largest minus smallest).
- with `--before NAME=DIR` (a folder holding an older `mmib` package, e.g. `git archive <commit> mmib | tar -x -C
  DIR`), `text` and `ner_re` also run that package's `mmib predict` as further sides, so before/after ratios come
  from the same run; `--mmib_variants NAME=FLAGS` adds `mmib predict` sides with other flags (e.g. `--dtype int8`).
- `--pipeline_dtypes float32 bfloat16`: one pipeline side per weight dtype (`pipeline bfloat16` loads the tower in
  bf16); the `text` summary gives every side's ratio to each of them.
- `--backend NAME ...` adds `text` sides `mmib predict --backend NAME`. For `onnxruntime` the checkpoint is first
  exported (untimed, `mmib export-onnx MODEL --output TMP --int8`) and two sides run: `mmib onnxruntime float32` and
  `mmib onnxruntime int8`; the share of posts whose tags equal those of `mmib predict --dtype float32 --backend
  torch` is printed for every `mmib` side of `text` (the `--backend auto` rule keeps a path at >= 98%).
"""

import argparse
import compileall
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

from bench_common import REPO_ROOT, minilm_path, repo_relative, rotated
from mmib.data.registry import default_data_dir
from mmib.data.twitter import read_conll

IMAGE_FOLDERS = [REPO_ROOT.parent / "shared" / "data", REPO_ROOT / "examples"]
RELATION_LABELS = REPO_ROOT.parent / "shared" / "data" / "mnre" / "ours_rel2id.json"
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
AVX2_ENVIRONMENT = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def machine_properties() -> dict:
    """CPU flags that decide the kernels, cores this process may use, library versions and the load average."""
    flags = set()
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo", encoding="ascii", errors="replace"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    model_name = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    return {
        "cpu": model_name,
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average_1_5_15min": [round(value, 2) for value in os.getloadavg()],
    }


def write_posts(path: Path, texts: list[str], size: int, images: list[str] | None = None) -> None:
    with open(path, "w", encoding="utf-8") as output:
        for index in range(size):
            row = {"id": index, "text": texts[index % len(texts)]}
            if images:
                row["image"] = images[index % len(images)]
            output.write(json.dumps(row, ensure_ascii=False) + "\n")


# The pipeline's tagger has a random head over Twitter-2017's labels: its speed does not depend on the head.
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]


def timed(command: list[str], env: dict) -> tuple[float, float]:
    """
    Wall seconds from start to exit, and the peak resident set in MB of the process (or its largest worker).

    The peak comes from GNU time (`/usr/bin/time -f %M`), which forks the command from its own small process: on
    Linux a child's `ru_maxrss` starts at the RSS of the process it was forked from, and this one holds torch (and,
    after building the cache, a model), so `wait4` here would report that floor for every command.
    """
    with tempfile.NamedTemporaryFile("r") as report:
        start = time.perf_counter()
        process = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", report.name, *command], env=env, stdout=subprocess.DEVNULL
        )
        seconds = time.perf_counter() - start
        if process.returncode != 0:
            raise SystemExit(f"failed: {' '.join(command)}")
        peak_kb = int(report.read().split()[-1])
    return seconds, peak_kb / 1024


def mmib_command(model: str, input_path: Path, output_path: Path, batch_size: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mmib.cli",
        "predict",
        model,
        "--input",
        str(input_path),
        "--output",
        str(output_path),
        "--batch_size",
        str(batch_size),
        "--quiet",
        *extra,
    ]


def environment(threads: int, pythonpath: str, cpu_isa: str = "native") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=pythonpath)
    if cpu_isa == "avx2":
        env.update(AVX2_ENVIRONMENT)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def build_relation_checkpoint(ner_path: str, folder: Path, relation_labels: Path) -> str:
    """
    An RE checkpoint on the NER checkpoint's towers (its config with the relation labels of the `relation_labels`
    JSON file and the type signatures their names spell, as `mmib train` records them on MNRE, where every relation
    occurs in training; its text and vision tower weights; the RE head and MMIB layers random): one feature cache
    serves both, and throughput does not depend on trained weights.
    """
    from mmib import MMIBForRelationClassification, MMIBPredictor, MMIBProcessor
    from mmib.data.labels import relation_type_signatures

    ner = MMIBPredictor.from_pretrained(ner_path, dtype="float32", device="cpu")
    labels = json.loads(Path(relation_labels).read_text())
    id2label = {index: label for label, index in labels.items()}
    config = type(ner.model.config).from_dict({**ner.model.config.to_dict(), "id2label": id2label, "label2id": labels})
    config.relation_type_signatures = relation_type_signatures(labels)
    torch.manual_seed(0)
    model = MMIBForRelationClassification(config)
    model.mmib.text_model.load_state_dict(ner.model.mmib.text_model.state_dict())
    model.mmib.vision_model.load_state_dict(ner.model.mmib.vision_model.state_dict())
    processor = MMIBProcessor(
        ner.processor.image_processor, ner.processor.tokenizer, task="re", num_crops=config.num_crops, max_length=80
    )
    model.resize_token_embeddings(len(processor.tokenizer))
    relation_dir = folder / "relation"
    model.eval().save_pretrained(relation_dir)
    processor.save_pretrained(relation_dir)
    # A re-saved timm image processor loses its `pretrained_cfg`; the NER checkpoint's saved settings are complete.
    saved = relation_dir / "processor_config.json"
    settings = json.loads(saved.read_text())
    settings["image_processor"] = json.loads((Path(ner_path) / "processor_config.json").read_text())["image_processor"]
    saved.write_text(json.dumps(settings, indent=2))
    return str(relation_dir)


def build_cache(model: str, images: list[str], cache_dir: str) -> None:
    from mmib import MMIBPredictor
    from mmib.features import ImageFeatureStore

    predictor = MMIBPredictor.from_pretrained(model, dtype="float32", device="cpu")
    ImageFeatureStore.build(predictor.model.mmib, predictor.processor.image_processor, images, cache_dir=cache_dir)


def mean_counts(path: Path) -> str:
    """Entities, classified pairs and pairs skipped by type per post of an NER -> RE output (`keep_none` off: the
    classified pairs are the ordered pairs less the skipped and left-out ones)."""
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    entities = [len(row.get("entities", [])) for row in rows]
    skipped = [row.get("pairs_skipped_by_type", 0) for row in rows]
    classified = [n * (n - 1) - s - row.get("pairs_left_out", 0) for n, s, row in zip(entities, skipped, rows)]
    means = [statistics.mean(values) for values in (entities, classified, skipped)]
    return "predicted entities per post {:.2f}, pairs classified {:.2f}, skipped by type {:.2f}".format(*means)


def texts_with_predicted_entities(model: str, texts: list[str], folder: Path, low: int, high: int) -> list[str]:
    """The posts for which `model` predicts `low`..`high` entities (one untimed `mmib predict` run)."""
    write_posts(folder / "all.jsonl", texts, len(texts))
    env = environment(2, str(REPO_ROOT))
    command = mmib_command(model, folder / "all.jsonl", folder / "all-out.jsonl", 32)
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in open(folder / "all-out.jsonl", encoding="utf-8")]
    return [text for text, row in zip(texts, rows) if low <= len(row.get("entities", [])) <= high]


def run_variant(name: str, sides: dict[str, tuple[list[str], dict, int]], rounds: int, results: list) -> None:
    """Runs each side `rounds` times, interleaved and rotated; appends one record per run to `results`."""
    for round_index in range(rounds):
        for side in rotated(list(sides), round_index):
            command, env, posts = sides[side]
            seconds, peak_mb = timed(command, env)
            record = {
                "variant": name,
                "side": side,
                "threads": int(env["OMP_NUM_THREADS"]),
                "round": round_index,
                "posts": posts,
                "seconds": round(seconds, 3),
                "posts_per_s": round(posts / seconds, 2),
                "peak_mb": round(peak_mb, 1),
                "load_average_1min": round(os.getloadavg()[0], 2),
            }
            results.append(record)
            print(json.dumps(record), flush=True)


def summarise(results: list[dict], name: str, threads: int, baseline: str) -> list[str]:
    lines = []
    runs = [r for r in results if r["variant"] == name and r["threads"] == threads]
    sides = list(dict.fromkeys(r["side"] for r in runs))
    rate = {side: statistics.median(r["posts_per_s"] for r in runs if r["side"] == side) for side in sides}
    for side in sides:
        rounds = sorted({r["round"] for r in runs})
        per_round = [
            next(r["posts_per_s"] for r in runs if r["side"] == side and r["round"] == k)
            / next(r["posts_per_s"] for r in runs if r["side"] == baseline and r["round"] == k)
            for k in rounds
        ]
        peak = max(r["peak_mb"] for r in runs if r["side"] == side)
        # The median of the per-round ratios is robust to one round that another job on the machine slowed down.
        lines.append(
            f"{name:7s} {threads} thr  {side:28s} {rate[side]:7.1f} posts/s  {rate[side] / rate[baseline]:5.2f}x "
            f"{baseline}, median of rounds {statistics.median(per_round):5.2f}x "
            f"(rounds {', '.join(f'{x:.2f}' for x in per_round)})  peak {peak:6.0f} MB"
        )
    return lines


def pipeline_side(dtype: str) -> str:
    return "pipeline" if dtype == "float32" else f"pipeline {dtype}"


def backend_flags(model: str, backends: list[str], folder: Path, env: dict) -> dict[str, str]:
    """`mmib predict` flags of the `--backend` sides by name; exports the checkpoint (untimed) for onnxruntime."""
    sides = {}
    for backend in backends:
        if backend != "onnxruntime":
            sides[backend] = f"--backend {backend}"
            continue
        onnx_dir = folder / "onnx"
        command = [sys.executable, "-m", "mmib.cli", "export-onnx", model, "--output", str(onnx_dir), "--int8"]
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for dtype in ("float32", "int8"):
            sides[f"onnxruntime {dtype}"] = f"--backend onnxruntime --dtype {dtype} --onnx_dir {onnx_dir}"
    return sides


def agreement_lines(sides: dict, model: str, folder: Path, env: dict, batch_size: int, threads: int) -> list[str]:
    """The share of posts each `mmib` side of `text` tagged exactly as `mmib predict --dtype float32` (torch)."""
    reference = folder / "reference.jsonl"
    command = mmib_command(model, folder / "text.jsonl", reference, batch_size, "--dtype", "float32")
    subprocess.run([*command, "--backend", "torch"], env=env, check=True, stdout=subprocess.DEVNULL)
    expected = [json.loads(line)["tags"] for line in open(reference, encoding="utf-8")]
    lines = []
    for side, (command, _, _) in sides.items():
        if not side.startswith("mmib"):
            continue
        output = Path(command[command.index("--output") + 1])
        tags = [json.loads(line)["tags"] for line in open(output, encoding="utf-8")]
        same = sum(a == b for a, b in zip(tags, expected)) / len(expected)
        lines.append(f"text    {threads} thr  {side:28s} posts tagged as torch fp32: {same:.1%}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="An MMIB NER checkpoint on the MiniLM text tower.")
    parser.add_argument("--relation_model", help="An MMIB RE checkpoint with the same vision tower (else built).")
    parser.add_argument(
        "--before",
        nargs="+",
        default=[],
        metavar="NAME=DIR",
        help="Older mmib packages (DIR holds its mmib/ folder), further sides `mmib NAME` in `text` and `ner_re`.",
    )
    parser.add_argument(
        "--mmib_variants",
        nargs="+",
        default=[],
        metavar="NAME=FLAGS",
        help="Further `mmib predict` sides in `text` with extra flags, e.g. 'int8=--dtype int8'.",
    )
    parser.add_argument("--data_dir", help="Twitter-2017 folder (default: the shared data folder).")
    parser.add_argument(
        "--image_dirs",
        nargs="+",
        default=[str(folder) for folder in IMAGE_FOLDERS],
        help="Folders searched for the posts' *.jpg images (default: the shared data and examples/).",
    )
    parser.add_argument(
        "--relation_labels",
        default=str(RELATION_LABELS),
        help="The `rel2id` JSON of the built RE checkpoint (default: MNRE's ours_rel2id.json in the shared data).",
    )
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--variants", nargs="+", default=["text", "image", "ner_re", "memory"])
    parser.add_argument("--memory_posts", type=int, nargs="+", default=[500, 4000])
    parser.add_argument("--mmib_args", default="", help="Extra flags for every `mmib predict` (e.g. '--dtype int8').")
    parser.add_argument("--cpu_isa", default="native", choices=["native", "avx2"], help="avx2: AVX2 kernels forced.")
    parser.add_argument("--output_json")
    parser.add_argument(
        "--pipeline_dtypes",
        nargs="+",
        default=["float32"],
        choices=["float32", "bfloat16"],
        help="Pipeline sides in `text`, one per weight dtype (default float32).",
    )
    parser.add_argument(
        "--backend",
        nargs="+",
        default=[],
        choices=["torch", "onnxruntime", "auto"],
        help="Further `text` sides `mmib predict --backend NAME` (onnxruntime: float32 and int8, exported first).",
    )
    args = parser.parse_args()
    if args.model is None:
        parser.error("the MMIB checkpoint is required")
    for package in [REPO_ROOT / "mmib", *(Path(item.split("=", 1)[1]) / "mmib" for item in args.before)]:
        compileall.compile_dir(package, quiet=1)
    machine_before = machine_properties()
    print(f"machine: {json.dumps(machine_before)}", flush=True)
    posts = read_conll(Path(args.data_dir or default_data_dir("twitter2017")) / "test.txt")
    texts = [" ".join(post.words) for post in posts]
    # One image per post at most: the cache holds only the images the posts use.
    images = sorted(str(path) for folder in args.image_dirs for path in Path(folder).rglob("*.jpg"))[: args.posts]
    extra = args.mmib_args.split()
    here = str(REPO_ROOT)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        write_posts(folder / "text.jsonl", texts, args.posts)
        write_posts(folder / "image.jsonl", texts, args.posts, images)
        if "ner_re" in args.variants:
            texts_with_entities = texts_with_predicted_entities(args.model, texts, folder, 3, 5)
            print(f"posts with 3-5 predicted entities: {len(texts_with_entities)} of {len(texts)}", flush=True)
            if not texts_with_entities:
                # A model that predicts 3-5 entities in no post (a random smoke-test checkpoint): every post.
                print("no post has 3-5 predicted entities: ner_re runs on all posts", flush=True)
                texts_with_entities = texts
            write_posts(folder / "entities.jsonl", texts_with_entities, args.posts, images)
        cache_dir = str(folder / "cache")
        relation_model = args.relation_model
        if "ner_re" in args.variants and relation_model is None:
            relation_model = build_relation_checkpoint(args.model, folder, args.relation_labels)
        if {"image", "ner_re"} & set(args.variants):
            build_cache(args.model, images, cache_dir)
        out = folder / "out.jsonl"
        cached = ["--image_feature_cache", cache_dir]
        pipeline = [sys.executable, str(Path(__file__).with_name("pipeline_worker.py")), minilm_path()]
        pipeline += [str(folder / "text.jsonl"), str(out), "--batch_size", str(args.batch_size), "--labels", *LABELS]
        own_output = folder / "out-mmib.jsonl"  # read again for the agreement: no other side writes it
        backend_sides = backend_flags(args.model, args.backend, folder, environment(max(args.threads), here))
        summary = [f"cpu_isa {args.cpu_isa}, batch {args.batch_size}, {args.posts} posts per run"]
        for threads in args.threads:
            env = environment(threads, here, args.cpu_isa)
            relation_command = mmib_command(
                args.model,
                folder / "entities.jsonl",
                folder / "relations.jsonl",
                args.batch_size,
                *extra,
                *cached,
                "--relation_model",
                str(relation_model),
            )
            variants = {
                "text": {
                    **{
                        pipeline_side(dtype): ([*pipeline, "--dtype", dtype], env, args.posts)
                        for dtype in args.pipeline_dtypes
                    },
                    "mmib": (
                        mmib_command(args.model, folder / "text.jsonl", own_output, args.batch_size, *extra),
                        env,
                        args.posts,
                    ),
                },
                "image": {
                    "mmib text": (
                        mmib_command(args.model, folder / "text.jsonl", out, args.batch_size, *extra),
                        env,
                        args.posts,
                    ),
                    "mmib image (cache)": (
                        mmib_command(args.model, folder / "image.jsonl", out, args.batch_size, *extra, *cached),
                        env,
                        args.posts,
                    ),
                },
                "ner_re": {
                    "mmib NER": (
                        mmib_command(args.model, folder / "entities.jsonl", out, args.batch_size, *extra, *cached),
                        env,
                        args.posts,
                    ),
                    "mmib NER->RE": (relation_command, env, args.posts),
                    "mmib NER->RE --all_pairs": (
                        [*relation_command, "--all_pairs", "--output", str(folder / "all-pairs.jsonl")],
                        env,
                        args.posts,
                    ),
                },
            }
            for name, directory in (item.split("=", 1) for item in args.before):
                before_env = environment(threads, str(Path(directory).resolve()), args.cpu_isa)
                command = mmib_command(args.model, folder / "text.jsonl", out, args.batch_size)
                variants["text"][f"mmib {name}"] = (command, before_env, args.posts)
                command = [*variants["ner_re"]["mmib NER->RE"][0]]
                variants["ner_re"][f"mmib NER->RE {name}"] = (command, before_env, args.posts)
            named_flags = [item.split("=", 1) for item in args.mmib_variants]
            for name, flags in [*named_flags, *backend_sides.items()]:
                outputs = folder / f"out-{len(variants['text'])}.jsonl"
                command = mmib_command(args.model, folder / "text.jsonl", outputs, args.batch_size, *flags.split())
                variants["text"][f"mmib {name}"] = (command, env, args.posts)
            for name, baseline in (
                ("text", pipeline_side(args.pipeline_dtypes[0])),
                ("image", "mmib text"),
                ("ner_re", "mmib NER"),
            ):
                if name in args.variants:
                    run_variant(name, variants[name], args.rounds, results)
                    summary += summarise(results, name, threads, baseline)
                if name == "text" and name in args.variants:
                    for dtype in args.pipeline_dtypes[1:]:
                        summary += summarise(results, "text", threads, pipeline_side(dtype))
                    if backend_sides:
                        summary += agreement_lines(variants["text"], args.model, folder, env, args.batch_size, threads)
            if "ner_re" in args.variants:
                summary.append(f"ner_re  {threads} thr  typed: {mean_counts(folder / 'relations.jsonl')}")
            if "memory" in args.variants:
                for size in args.memory_posts:
                    write_posts(folder / f"memory-{size}.jsonl", texts, size)
                    command = mmib_command(args.model, folder / f"memory-{size}.jsonl", out, args.batch_size, *extra)
                    run_variant("memory", {f"mmib {size} posts": (command, env, size)}, 1, results)
                peaks = [r["peak_mb"] for r in results if r["variant"] == "memory" and r["threads"] == threads]
                summary.append(
                    f"memory  {threads} thr  peak {' / '.join(f'{peak:.0f}' for peak in peaks)} MB at "
                    f"{' / '.join(map(str, args.memory_posts))} posts: {peaks[-1] - peaks[0]:+.0f} MB"
                )
    machine_after = machine_properties()
    print("\n".join(summary))
    print(f"machine after: {json.dumps(machine_after)}")
    if args.output_json:
        report = {
            "machine_before": machine_before,
            "machine_after": machine_after,
            "args": {key: repo_relative(value) for key, value in vars(args).items()},
            "summary": summary,
            "runs": results,
        }
        Path(args.output_json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
