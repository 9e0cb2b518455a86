"""The package's import graph: no cycle anywhere (imports inside functions included), and the study's layers.

The graph is read from the source with ``ast``, so an import hidden inside a function counts like one at the
top of a module: a cycle cannot be made to work by importing late. Imports under ``if TYPE_CHECKING:`` are
annotations only (never executed) and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import glare_core

PACKAGE = Path(glare_core.__file__).resolve().parent
#: The study's modules, lowest layer first (``glare_core/study/__init__.py`` says what each holds).
STUDY_LAYERS = ("tables", "configs", "store", "stats", "report", "figures", "timing", "runner")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the glare_core modules it imports anywhere in its source}.

    ``from . import x`` names the submodule ``x`` when there is one, else the package; ``from .a import b``
    names ``a`` (``a.b`` when that is a submodule)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
            for stmt in block.body
            for n in ast.walk(stmt)
        }
        edges = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in files and t != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_reader_sees_imports_inside_functions():
    graph = import_graph()
    assert "glare_core.train" in graph["glare_core.study.runner"]  # imported inside pretrain_cell
    assert "glare_core.study.tables" in graph["glare_core.study.configs"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_package():
    found = cycles(import_graph())
    assert not found, f"import cycles (function-local imports included): {found}"


def test_each_study_module_imports_only_the_layers_below_it():
    graph = import_graph()
    modules = sorted(p.stem for p in (PACKAGE / "study").glob("*.py") if p.stem != "__init__")
    assert sorted(STUDY_LAYERS) == modules
    for i, layer in enumerate(STUDY_LAYERS):
        name = f"glare_core.study.{layer}"
        study = {m.rpartition(".")[2] for m in graph[name] if m.startswith("glare_core.study.")}
        assert study <= set(STUDY_LAYERS[:i]), f"{layer} imports {sorted(study - set(STUDY_LAYERS[:i]))}"
        lines = (PACKAGE / "study" / f"{layer}.py").read_text().count("\n")
        assert lines <= 600, f"study/{layer}.py has {lines} lines; split it by what it does"
