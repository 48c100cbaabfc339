"""Every script under benchmarks/ and scripts/ runs end to end at a smoke size: a few generated posts and images,
tiny random checkpoints, 1 thread, its report written to a temporary folder. An import or a flag that breaks fails
here, not on the next person who runs the script. The figures of a smoke run mean nothing."""

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import REPO, make_tokenizer, save_tiny_towers
from prediction_checkpoints import save_ner_checkpoint

# Not runnable on its own: the shared set-up that the benchmark scripts import.
HELPER_MODULES = {"benchmarks/bench_common.py", "benchmarks/real_size_detectors.py"}

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "O", "B-ORG", "O", "B-MISC", "I-MISC"]
WORDS = "john smith visits london with acme and the blackburn festival of voice today rt @ paris".split()


@dataclass(frozen=True)
class Smoke:
    """What a smoke run gets: its output folder, the generated data and a tiny NER checkpoint."""

    out: Path
    data: Path  # twitter2015/, twitter2017/ (CoNLL splits and images), mnre_rel2id.json, vision/ (a tiny ResNet)
    checkpoint: str

    def arguments(self, template: str) -> list[str]:
        return shlex.split(
            template.format(
                out=self.out,
                data=self.data,
                twitter2015=self.data / "twitter2015",
                twitter2017=self.data / "twitter2017",
                checkpoint=self.checkpoint,
                json=self.out / "report.json",
                tiny_tower=self.data / "vision",
            )
        )


def write_twitter(folder: Path, posts_per_split: int) -> None:
    """Twitter CoNLL splits (`IMGID:` blocks, 6 tagged words a post) with a 64x48 JPEG per post."""
    images = folder / f"{folder.name}_images"
    images.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    post_id = 0
    for split in ("train", "valid", "test"):
        blocks = []
        for _ in range(posts_per_split):
            post_id += 1
            lines = [f"IMGID:{post_id}"]
            for position in range(6):
                index = (post_id * 5 + position) % len(WORDS)
                lines.append(f"{WORDS[index]}\t{LABELS[index % len(LABELS)]}")
            blocks.append("\n".join(lines))
            pixels = torch.randint(0, 256, (48, 64, 3), generator=generator, dtype=torch.uint8)
            Image.fromarray(pixels.numpy(), mode="RGB").save(images / f"{post_id}.jpg")
        (folder / f"{split}.txt").write_text("\n\n".join(blocks) + "\n\n", encoding="utf-8")


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory) -> tuple[Path, str]:
    data = tmp_path_factory.mktemp("data")
    write_twitter(data / "twitter2017", posts_per_split=12)
    write_twitter(data / "twitter2015", posts_per_split=4)
    (data / "mnre_rel2id.json").write_text(json.dumps({"None": 0, "/per/loc/place_of_residence": 1}))
    save_tiny_towers(data, make_tokenizer(), shortest_edge=32)
    checkpoint = save_ner_checkpoint(tmp_path_factory.mktemp("ner-checkpoint"))
    return data, checkpoint


# One entry per script: its smoke arguments (`{placeholders}` filled from a `Smoke`, then split as a shell would)
# and whether it is slow: over a minute on the shared 2-core machine (several processes, training runs, ResNet-50
# on pixels); the others take 20-45 s there, most of it importing torch and transformers.
SCRIPTS: dict[str, tuple[str, bool]] = {
    "benchmarks/bench_bf16_demo.py": (
        "'--train_args=--vision_model_name_or_path {tiny_tower} --max_steps 1 --max_train_samples 4 "
        "--max_eval_samples 4 --max_test_samples 4 --per_device_eval_batch_size 4 --dataloader_num_workers 0 "
        "--save_strategy no --eval_strategy no' --output_json {json}",
        True,
    ),
    "benchmarks/bench_cost_curves.py": (
        "--data_dir {twitter2017} --words 8 --crops 1 --batch_sizes 2 --repeats 1 --threads 1 "
        "--output_json {json} --output_png {out}/curves.png",
        True,
    ),
    "benchmarks/bench_feature_cache.py": (
        "--data_dir {twitter2017} --num_images 64 --shard_size 32 --num_files 3 --batch_size 2 --steps 1 "
        "--build_files 2 --build_rounds 1 --workers 0 --threads 1 --output_json {json}",
        True,
    ),
    "benchmarks/bench_inference.py": (
        "--data_dir {twitter2017} --num_posts 2 --batch_sizes 2 --rounds 1 --warmup_posts 1 --image_size 64 48 "
        "--crop_size 32 --threads 1 --output_json {json}",
        True,
    ),
    "benchmarks/bench_input_checks.py": ("--repeats 1 --threads 1 --batch_size 2 --length 8", False),
    "benchmarks/bench_int8.py": (
        "{checkpoint} --data_dir {twitter2017} --rounds 1 --batch_size 4 --output_json {json}",
        False,
    ),
    "benchmarks/bench_object_extraction.py": (
        "--data_dir {twitter2015} --families detr-resnet-50 yolos-tiny --input_size 64 96 --images 2 --repeats 1 "
        "--threads 1 --one_per_forward --output_json {json}",
        False,
    ),
    "benchmarks/bench_prediction.py": (
        "{checkpoint} --sizes 2 --dtype float32 --batch_size 2 --num_workers 0 --output_json {json}",
        True,
    ),
    "benchmarks/bench_prediction_objects.py": (
        "--data_dir {twitter2015} --posts 1 --detector_size tiny --output_json {json}",
        False,
    ),
    "benchmarks/bench_stages.py": (
        "--data_dir {twitter2015} --towers tiny --detectors detr-resnet-50 --detector_input_size 64 96 --posts 2 "
        "--repeats 1 --threads 1 --output_json {json}",
        True,
    ),
    "benchmarks/bench_training_step.py": (
        "--data_dir {twitter2017} --batch_size 2 --num_batches 1 --warmup_steps 0 --steps 1 --memory_steps 1 "
        "--variants authors cached --threads 1 --output_json {json}",
        True,
    ),
    "benchmarks/bench_vision_towers.py": (
        "--data_dir {twitter2017} --num_posts 2 --batch_size 2 --rounds 1 --image_size 64 48 --crop_size 32 "
        "--threads 1 --output_json {json}",
        False,
    ),
    "benchmarks/bench_vs_pipeline.py": (
        "{checkpoint} --data_dir {twitter2017} --image_dirs {twitter2017} --relation_labels {data}/mnre_rel2id.json "
        "--posts 3 --batch_size 2 --rounds 1 --threads 1 --memory_posts 2 3 --pipeline_dtypes float32 bfloat16 "
        "--backend onnxruntime --cpu_isa avx2 --output_json {json}",
        True,
    ),
    "benchmarks/bench_vs_plain.py": (
        "--data_dir {twitter2017} --rounds 1 --warmup 0 --num_batches 1 --train_batch_size 2 --eval_batch_size 2 "
        "--pixel_posts 1 --threads 1 --output_json {json}",
        False,
    ),
    "benchmarks/profile_step.py": (
        "--data_dir {twitter2017} --steps 1 --rows 5 --threads 1 --train_batch_size 2 --eval_batch_size 2",
        False,
    ),
    "benchmarks/word_splitter_roundtrip.py": ("--data_dir {data} --show 2", False),
    "scripts/convert_efficientnet_lite0.py": ("{out}/efficientnet-lite0", False),
    "scripts/render_model_cards.py": ("{out}/model_cards", False),
}


def script_files() -> set[str]:
    paths = [path for folder in ("benchmarks", "scripts") for path in (REPO / folder).glob("*.py")]
    return {str(path.relative_to(REPO)) for path in paths} - HELPER_MODULES


# Scripts whose smoke run checks more than a report (ratios, both models' sizes) have a test file of their own; a
# worker process of a benchmark runs in that benchmark's smoke run.
OWN_SMOKE_TESTS = {
    "benchmarks/bench_ray.py": "tests/benchmarks/test_bench_ray.py",
    "benchmarks/bench_re_text_floor.py": "tests/benchmarks/test_re_text_floor.py",
    "benchmarks/pipeline_worker.py": "benchmarks/bench_vs_pipeline.py",
}


def test_every_script_has_a_smoke_run():
    covered = SCRIPTS.keys() | OWN_SMOKE_TESTS.keys()
    assert script_files() - covered == set(), "add the new script's smoke arguments to SCRIPTS"
    assert covered - script_files() == set(), "SCRIPTS or OWN_SMOKE_TESTS names a script that no longer exists"
    for script, test_file in OWN_SMOKE_TESTS.items():
        assert Path(script).name in (REPO / test_file).read_text(encoding="utf-8"), (
            f"{test_file} does not run {script}"
        )


@pytest.mark.parametrize(
    "script", [pytest.param(name, marks=[pytest.mark.slow] if slow else []) for name, (_, slow) in SCRIPTS.items()]
)
def test_script_runs_at_smoke_size(script, smoke_data, tmp_path):
    data, checkpoint = smoke_data
    smoke = Smoke(out=tmp_path, data=data, checkpoint=checkpoint)
    arguments = smoke.arguments(SCRIPTS[script][0])
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MMIB_SHARED_DATA": str(data),  # what a script finds without --data_dir: the generated posts, never real data
    }
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(REPO / script), *arguments],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    seconds = time.perf_counter() - start
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    print(f"{script}: {seconds:.1f} s")
    if "--output_json" in arguments:
        assert json.loads((tmp_path / "report.json").read_text()), f"{script} wrote an empty report"
    else:
        assert result.stdout.strip(), f"{script} printed nothing"
