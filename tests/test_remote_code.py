"""The remote-code rule: the `mmib/*_mmib.py` files travel inside checkpoints and may import only torch, transformers,
PIL, the standard library and each other; saving copies exactly them; they run in a process without mmib."""

import ast
import sys
from pathlib import Path

import pytest
import torch
from transformers.dynamic_module_utils import get_imports

import mmib
from conftest import make_image, make_image_processor, make_tokenizer, run_without_mmib, tiny_config
from mmib import MMIBForRelationClassification, MMIBForTokenClassification, MMIBProcessor
from mmib.pipeline_mmib import save_pipeline_code

MMIB = Path(mmib.__file__).parent
TRAVELLING = sorted(path.name for path in MMIB.glob("*_mmib.py"))
ALLOWED = {"torch", "transformers", "PIL"} | sys.stdlib_module_names


def sibling_imports(path: Path) -> list[str]:
    """Every reason the AST of `path` breaks the sibling-import rule (`from .x_mmib import Y` only, never mmib)."""
    siblings = {name.removesuffix(".py") for name in TRAVELLING}
    problems = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            problems += [f"L{node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] == "mmib"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "mmib":
            problems.append(f"L{node.lineno}: from {node.module} import")
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            source = "." * node.level + (node.module or "")
            # `from . import x` is not copied by save_pretrained (transformers follows `from .x import` only).
            if node.level != 1 or node.module not in siblings:
                problems.append(f"L{node.lineno}: from {source} import (not a travelling sibling)")
    return problems


def test_the_module_lists_are_what_the_package_holds():
    assert {"configuration_mmib.py", "modeling_mmib.py", "processing_mmib.py", "pipeline_mmib.py"} <= set(TRAVELLING)


@pytest.mark.parametrize("name", TRAVELLING)
def test_travelling_modules_import_only_the_allowed(name):
    path = MMIB / name
    # transformers' own check when it loads remote code: it also sees imports inside functions.
    assert set(get_imports(path)) <= ALLOWED, f"{name} imports {sorted(set(get_imports(path)) - ALLOWED)}"
    assert sibling_imports(path) == [], f"{name}: {sibling_imports(path)}"


def test_the_import_check_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad_mmib.py"
    bad.write_text(
        "import numpy\nimport mmib.data\nfrom mmib import features\nfrom . import crf_mmib\n"
        "from ..x import y\nfrom .training import run\nfrom .crf_mmib import MMIBCRF\n"
        "def lazy():\n    import timm\n"
        "try:\n    import scipy\nexcept ImportError:\n    pass\n"
    )
    assert set(get_imports(bad)) - ALLOWED == {"mmib", "numpy", "timm"}
    assert [problem.split(":")[0] for problem in sibling_imports(bad)] == ["L2", "L3", "L4", "L5", "L6"]


def test_save_pretrained_copies_exactly_the_travelling_modules(tmp_path):
    torch.manual_seed(0)
    ner_model = MMIBForTokenClassification(tiny_config())
    ner_processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="ner", num_crops=2)
    save_pipeline_code(ner_model, tmp_path / "ner")
    ner_model.save_pretrained(tmp_path / "ner")
    ner_processor.save_pretrained(tmp_path / "ner")
    re_processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="re", num_crops=2)
    re_model = MMIBForRelationClassification(tiny_config(id2label={0: "None", 1: "/per/per/peer"}))
    re_model.resize_token_embeddings(len(re_processor.tokenizer))
    re_model.save_pretrained(tmp_path / "re")
    re_processor.save_pretrained(tmp_path / "re")

    copied = {path.name for folder in ("ner", "re") for path in (tmp_path / folder).glob("*.py")}
    # A travelling file that no saved object reaches is dead remote code; a copied file outside the list is a
    # sub-package that leaked into checkpoints.
    never_copied, not_travelling = sorted(set(TRAVELLING) - copied), sorted(copied - set(TRAVELLING))
    assert copied == set(TRAVELLING), f"never copied: {never_copied}; copied but not travelling: {not_travelling}"
    for name in copied:
        for folder in ("ner", "re"):
            if (tmp_path / folder / name).exists():
                assert (tmp_path / folder / name).read_bytes() == (MMIB / name).read_bytes()


REMOTE_SCRIPT = """
import sys
import torch
from transformers import AutoConfig, AutoModel, AutoProcessor, {auto_class}
folder, inputs_file, task_class = sys.argv[1], sys.argv[2], sys.argv[3]
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
assert type(config).__name__ == "MMIBConfig", type(config)
model = {auto_class}.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__name__ == task_class and "transformers_modules" in type(model).__module__
base = AutoModel.from_pretrained(folder, trust_remote_code=True)
assert type(base).__name__ == "MMIBModel"
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
assert type(processor).__name__ == "MMIBProcessor"
inputs = torch.load(inputs_file, weights_only=True)
with torch.no_grad():
    logits = model(**inputs).logits
torch.save(logits, inputs_file + ".out")
"""


@pytest.mark.parametrize(
    "fixture_name, auto_class, task_class",
    [
        ("ner_checkpoint", "AutoModelForTokenClassification", "MMIBForTokenClassification"),
        ("re_checkpoint", "AutoModelForSequenceClassification", "MMIBForRelationClassification"),
    ],
)
def test_remote_code_in_a_process_without_mmib(request, tmp_path, fixture_name, auto_class, task_class):
    folder, inputs, logits = request.getfixturevalue(fixture_name)
    inputs_file = str(tmp_path / "inputs.pt")
    torch.save(inputs, inputs_file)
    script = REMOTE_SCRIPT.format(auto_class=auto_class)
    result = run_without_mmib(script, folder, inputs_file, task_class, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(inputs_file + ".out", weights_only=True), logits)


PROCESSOR_SCRIPT = """
import sys
import torch
from transformers import AutoProcessor
checkpoint, image = sys.argv[1], sys.argv[2]
processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
assert "transformers_modules" in type(processor).__module__
out = processor(["John", "visited", "New", "York"], images=image, head_spans=(0, 1), tail_spans=(2, 4))
expected = torch.load("expected.pt", weights_only=True)
assert out.keys() == expected.keys() and all(torch.equal(out[k], expected[k]) for k in out)
print(type(processor).__name__, processor.task, processor.num_crops, processor.max_length)
"""

PROCESSOR_MODULES = (
    "processing_mmib.py",
    "text_encoding_mmib.py",
    "ner_encoding_mmib.py",
    "re_encoding_mmib.py",
    "image_loading_mmib.py",
    "post_processing_mmib.py",
)


def test_remote_code_processor_round_trip(tmp_path):
    processor = MMIBProcessor(make_image_processor(), make_tokenizer(), task="re", num_crops=2, max_length=24)
    checkpoint = tmp_path / "checkpoint"
    processor.save_pretrained(checkpoint)
    assert all((checkpoint / name).is_file() for name in PROCESSOR_MODULES)
    image = tmp_path / "image.png"
    make_image(0).save(image)
    expected = processor(["John", "visited", "New", "York"], images=str(image), head_spans=(0, 1), tail_spans=(2, 4))
    torch.save(dict(expected), tmp_path / "expected.pt")
    result = run_without_mmib(PROCESSOR_SCRIPT, str(checkpoint), str(image), tmp_path=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[0] == "MMIBProcessor re 2 24"
