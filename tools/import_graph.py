"""The import structure of ``glare_core``: which module imports which, in layers; whether any import cycles.

    python tools/import_graph.py            # every module with its layer and the package modules it imports
    python tools/import_graph.py --check    # exit 1 on an import cycle or an import of a higher layer

The graph is read from the source with ``ast``, so an import inside a function counts like one at the top of
a module (a cycle cannot be made to work by importing late); imports under ``if TYPE_CHECKING:`` are
annotations only and do not count. ``tests/test_imports.py`` runs the check. CONTRIBUTING.md
("Architecture") says what each layer holds.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "glare_core"

#: The package's layers, lowest first: a module may import modules of its own layer or of lower ones only.
#: Each entry names top-level modules or packages of ``glare_core`` (a package's submodules share its layer).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundations",
        ("errors", "paths", "rng", "schedules", "distributed", "metrics", "precision", "provenance", "runs",
         "system", "sources"),
    ),
    ("model parts", ("backbone", "heads", "uniadapter", "lora", "tuning", "views", "patch_augment")),
    ("data and weights", ("data", "weights", "features")),
    ("the method", ("teacher", "losses", "feed", "trunk", "telemetry", "objective")),
    ("training", ("config", "checkpoint", "run_report", "train")),
    ("evaluation", ("probe", "evaluation", "knn", "neighbours")),
    ("study, book and command line",
     ("bench", "study", "bootstrap", "notebook", "diagrams", "plots", "commands", "cli", "__main__")),
)  # fmt: skip


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the package's modules it imports anywhere in its source}.

    ``from . import x`` names the submodule ``x`` when there is one, else the package; ``from .a import b``
    names ``a`` (``a.b`` when that is a submodule)."""
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        parent = name if path.name == "__init__.py" else name.rpartition(".")[0]
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
                    base = parent.split(".")[: len(parent.split(".")) - node.level + 1]
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


def layer_of(module: str) -> int | None:
    """The layer index of a ``glare_core.x[.y]`` module; None for the package itself or an unlisted module."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return next((i for i, (_, names) in enumerate(LAYERS) if parts[1] in names), None)


def problems(graph: dict[str, set[str]]) -> list[str]:
    """Cycles, unlisted modules and imports of a higher layer, one line each; empty if the structure holds."""
    found = [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    for module in sorted(graph):
        mine = layer_of(module)
        if mine is None:
            if module != "glare_core":
                found.append(f"{module}: in no layer of tools/import_graph.py's LAYERS; add it")
            continue
        for target in sorted(graph[module]):
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                found.append(
                    f"{module} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]}), a higher layer"
                )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/import_graph.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 on a cycle or an upward import")
    args = parser.parse_args(argv)
    graph = import_graph()
    if not args.check:
        for i, (title, _) in enumerate(LAYERS):
            print(f"{i}. {title}")
            for module in sorted(m for m in graph if layer_of(m) == i):
                imports = sorted(t.removeprefix("glare_core.") for t in graph[module])
                print(f"   {module.removeprefix('glare_core.'):<34} <- {' '.join(imports) or '-'}")
    found = problems(graph)
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
