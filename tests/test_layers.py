"""The package's import graph runs one way: each module imports only its own layer or lower ones.

Layers, lowest first (README "Architecture"): shared vocabulary -> data -> models -> artifact
manifest -> training / evaluation -> export -> engines -> predict -> serving / bench / explain ->
cli -> demo and the package's public `__init__`. Read from the source with `ast`, so the test needs
nothing imported and fails on the line that breaks the order.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tokenpose"

# module prefix (dotted, below `tokenpose.`) -> layer rank; the longest matching prefix wins.
LAYERS: dict[str, int] = {
    "errors": 0, "files": 0, "keypoints": 0, "cuda": 0, "progress": 0,
    "data": 1,
    "models": 2,
    "manifest": 3,
    "training": 4, "evaluation": 4,
    "evaluation.runner": 7,  # runs an engine over a dataset: above engines, beside predict
    "export": 5,
    "engines": 6,
    "predict": 7,
    "serving": 8, "bench": 8, "explain": 8,
    "cli": 9,
    "demo": 10, "": 10,  # `tokenpose/__init__.py`: the public API, above everything it re-exports
}
# Only optional third-party backends may be imported inside functions; any `tokenpose` import
# inside a function hides a cycle or an upward dependency. The one exception is the CLI layer:
# each command imports the library it calls inside the command, so that `tokenpose --help` does
# not import torch, cv2 or matplotlib (those imports still go down, which this test checks too).
LAZY_LAYERS = ("cli",)
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def _rank(name: str) -> int:
    best, rank = -1, None
    for prefix, r in LAYERS.items():
        if prefix == "":
            match = name == ""
        else:
            match = name == prefix or name.startswith(prefix + ".")
        if match and len(prefix) > best:
            best, rank = len(prefix), r
    if rank is None:
        raise AssertionError(f"tokenpose.{name} belongs to no layer: add it to LAYERS in tests/test_layers.py")
    return rank


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _tokenpose_imports(tree: ast.AST) -> list[tuple[ast.AST, str, bool]]:
    """(node, imported tokenpose module below `tokenpose.`, at module level?) for every import."""
    out = []
    module_level = {id(n) for n in ast.iter_child_nodes(tree)}
    # imports inside `if TYPE_CHECKING:` at module level count as module level
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If):
            module_level |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "tokenpose":
                names = [a.name for a in node.names]
            elif node.module.startswith("tokenpose."):
                names = [node.module[len("tokenpose."):]]
        elif isinstance(node, ast.Import):
            names = [a.name[len("tokenpose."):] if a.name != "tokenpose" else "" for a in node.names
                     if a.name == "tokenpose" or a.name.startswith("tokenpose.")]
        for name in names:
            out.append((node, name, id(node) in module_level))
    return out


def test_every_module_has_a_layer():
    for path in _sources():
        _rank(_module_name(path))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_only(path: Path):
    name = _module_name(path)
    own = _rank(name)
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = []
    for node, target, top in _tokenpose_imports(tree):
        if not top and not name.startswith(LAZY_LAYERS):
            problems.append(f"line {node.lineno}: function-level import of tokenpose.{target}")
            continue
        if _rank(target) > own:
            problems.append(f"line {node.lineno}: imports tokenpose.{target} (layer {_rank(target)}) "
                            f"from layer {own}")
    assert not problems, f"tokenpose/{path.relative_to(PACKAGE)}:\n  " + "\n  ".join(problems)


def test_no_import_cycle_between_modules():
    graph: dict[str, set[str]] = {}
    for path in _sources():
        tree = ast.parse(path.read_text())
        graph[_module_name(path)] = {t for _, t, top in _tokenpose_imports(tree) if top}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [node, dep]))
            if state.get(dep) is None and dep in graph:
                visit(dep, stack + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_modules_and_functions_stay_small():
    problems = []
    for path in _sources():
        text = path.read_text()
        lines = text.count("\n")
        rel = path.relative_to(PACKAGE)
        if lines > MAX_MODULE_LINES:
            problems.append(f"tokenpose/{rel}: {lines} lines (limit {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    problems.append(f"tokenpose/{rel}:{node.lineno} {node.name}: {n} lines "
                                    f"(limit {MAX_FUNCTION_LINES})")
    assert not problems, "\n".join(problems)
