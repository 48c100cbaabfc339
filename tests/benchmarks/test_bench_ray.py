"""benchmarks/bench_ray.py at a smoke size: it runs, times all three sides and reports the ratios."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prediction_checkpoints import save_ner_checkpoint

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_ray_smoke(tmp_path):
    checkpoint = save_ner_checkpoint(tmp_path / "ner")
    report = tmp_path / "ray.json"
    command = [sys.executable, str(REPO / "benchmarks" / "bench_ray.py"), checkpoint, "--posts", "12"]
    command += ["--batch_size", "4", "--with_images", "--output_json", str(report)]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 actors / 1 actor" in result.stdout
    numbers = json.loads(report.read_text())
    assert set(numbers["posts_per_second"]) == {"mmib predict", "ray 1 actor", "ray 2 actors"}
    assert all(value > 0 for value in numbers["posts_per_second"].values())
