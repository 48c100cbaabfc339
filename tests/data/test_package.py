"""mmib.data as a package: its modules import one another without a cycle (type-checking imports included) and no
module imports another's private names."""

import ast
from pathlib import Path

import mmib.data

DATA = Path(mmib.data.__file__).parent


def sibling_imports(folder: Path) -> dict[str, list[tuple[str, str]]]:
    """`{module: [(imported sibling, imported name), ...]}` of every `from .x import y` in the folder's modules."""
    found = {}
    for path in sorted(folder.glob("*.py")):
        imports = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                imports += [(node.module.split(".")[0], alias.name) for alias in node.names]
        found[path.stem] = imports
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search, as the path that closes it."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                found.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_cycle_search_finds_a_cycle():
    assert cycles({"media": {"rows"}, "rows": {"media"}, "jsonl": {"rows"}}) == [["rows", "media", "rows"]]
    assert cycles({"jsonl": {"rows", "media"}, "rows": {"media"}, "media": set()}) == []


def test_data_modules_import_without_a_cycle():
    graph = {module: {sibling for sibling, _ in imports} for module, imports in sibling_imports(DATA).items()}
    assert cycles(graph) == []


def test_no_private_name_crosses_a_module():
    private = [
        f"{module} imports {name} from .{sibling}"
        for module, imports in sibling_imports(DATA).items()
        for sibling, name in imports
        if name.startswith("_")
    ]
    assert private == []
