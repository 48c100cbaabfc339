"""No code path unpickles a file: every torch.load is weights_only=True, and nothing calls pickle/np.load with
pickles allowed. Checked on the source so that a new call site cannot slip in."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    path
    for folder in ("mmib", "examples", "benchmarks", "tests")
    for path in (REPO / folder).rglob("*.py")
    if path.name != "test_safe_loading.py"
) + [REPO / "train_mmib.py"]


def unsafe_calls(path: Path, root: Path = REPO) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {keyword.arg: ast.unparse(keyword.value) for keyword in node.keywords}
        if name.endswith("torch.load") and keywords.get("weights_only") != "True":
            found.append(f"{path.relative_to(root)}:{node.lineno}: {name} without weights_only=True")
        if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load", "cloudpickle.load"):
            found.append(f"{path.relative_to(root)}:{node.lineno}: {name}")
        if name.endswith(("np.load", "numpy.load")) and keywords.get("allow_pickle") == "True":
            found.append(f"{path.relative_to(root)}:{node.lineno}: {name} with allow_pickle=True")
    return found


def test_the_scan_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle, torch, numpy as np\n"
        "torch.load('a')\ntorch.load('b', weights_only=False)\npickle.load(open('c', 'rb'))\n"
        "np.load('d', allow_pickle=True)\ntorch.load('e', weights_only=True)\n"
    )
    assert [line.split(": ", 1)[0].rsplit(":", 1)[1] for line in unsafe_calls(bad, root=tmp_path)] == [
        "2",
        "3",
        "4",
        "5",
    ]


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(REPO)))
def test_no_unpickling(path):
    assert unsafe_calls(path) == []
