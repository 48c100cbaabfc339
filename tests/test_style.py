"""The project's lint and format rules hold over the whole repository (ruff, pinned in the `test` extra), and test
modules share helpers through helper modules or conftest.py, never by importing another test module."""

import re
import subprocess
import sys

import pytest

from conftest import REPO

CHECKED = ["mmib", "tests", "benchmarks", "scripts", "examples", "app.py", "train_mmib.py"]


def ruff(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *arguments, *CHECKED], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("command", [("check",), ("format", "--check")], ids=["check", "format"])
def test_ruff_passes(command):
    result = ruff(*command, "--no-cache")
    assert result.returncode == 0, f"ruff {' '.join(command)} (fix with `ruff check --fix` / `ruff format`):\n" + (
        result.stdout[-6000:] + result.stderr[-2000:]
    )


def test_test_modules_do_not_import_each_other():
    importing = re.compile(r"^\s*(?:from|import)\s+(test_\w+)", re.MULTILINE)
    offenders = {
        str(path.relative_to(REPO)): importing.findall(path.read_text(encoding="utf-8"))
        for path in [*(REPO / "tests").rglob("*.py"), *(REPO / "benchmarks").glob("*.py")]
        if "fixtures" not in path.parts
    }
    offenders = {path: names for path, names in offenders.items() if names}
    assert not offenders, f"move the shared helpers into a helper module or conftest.py: {offenders}"
