"""Who imports whom at import time: training, building and the analyses load checkpoints through
`checkpoints_mmib` and never import the predictor or the object extractor when their modules are imported (the
training run imports the extractor only when a detector is given, the pipeline's code only to save it)."""

import ast
from pathlib import Path

import pytest

import mmib

MMIB = Path(mmib.__file__).parent
PREDICTION = {
    "mmib.predictor_mmib",
    "mmib.pipeline_mmib",
    "mmib.crop_filling_mmib",
    "mmib.relation_stage_mmib",
    "mmib.object_extraction_mmib",
    "mmib.object_detectors_mmib",
    "mmib.detection_cache_mmib",
    "mmib.object_boxes_mmib",
    "mmib.crop_extraction",
    "mmib.onnx_runtime_mmib",
    "mmib.onnx_export",
}
CHECKED = sorted(
    ["mmib.building"]
    + [f"mmib.training.{path.stem}" for path in (MMIB / "training").glob("*.py") if path.stem != "__init__"]
    + [f"mmib.analysis.{path.stem}" for path in (MMIB / "analysis").glob("*.py") if path.stem != "__init__"]
)


def module_file(name: str) -> Path | None:
    """The file of an `mmib` module or package, `None` for a name that is not one (e.g. a class)."""
    path = MMIB.parent.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def top_level_statements(tree: ast.Module):
    """The statements that run at import time: the module's own, inside `if` / `try` too, except `if
    TYPE_CHECKING:` blocks; never a function's or a class's body."""
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                pending += node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        else:
            yield node


def imported_at_import_time(name: str) -> set[str]:
    """The `mmib` modules that importing `name` imports, its own and its parent packages' imports followed (the
    top-level `mmib/__init__.py`, the public facade that imports every part, left out)."""
    package = name if module_file(name).name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in top_level_statements(ast.parse(module_file(name).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("mmib.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module == "mmib" or module.startswith("mmib."):
                found.add(module)
                # `from .x import y` also imports the submodule `x.y` when y is one.
                found |= {f"{module}.{alias.name}" for alias in node.names if module_file(f"{module}.{alias.name}")}
    with_parents = set()
    for module in found:
        parts = module.split(".")
        with_parents |= {".".join(parts[:end]) for end in range(2, len(parts) + 1)}
    return {module for module in with_parents if module_file(module) is not None}


def import_closure(name: str) -> dict[str, str]:
    """Every module importing `name` reaches, with the module that imports it."""
    seen, pending = {}, [name]
    while pending:
        current = pending.pop()
        for module in imported_at_import_time(current):
            if module not in seen and module != name:
                seen[module] = current
                pending.append(module)
    return seen


def test_the_checked_modules_exist():
    assert "mmib.training.run" in CHECKED and "mmib.analysis.contribution" in CHECKED
    assert all(module_file(name) for name in CHECKED)


@pytest.mark.parametrize("name", CHECKED)
def test_training_building_and_analyses_do_not_import_prediction(name):
    closure = import_closure(name)
    reached = {module: closure[module] for module in sorted(PREDICTION & set(closure))}
    assert not reached, f"{name} imports at import time: {reached} (module: imported by)"


def test_the_check_sees_an_import_through_a_package(tmp_path):
    closure = import_closure("mmib.training.run")
    assert {"mmib.checkpoints_mmib", "mmib.building", "mmib.data", "mmib.features.store"} <= set(closure)
