"""The package's import graph (``tools/import_graph.py``): no cycle anywhere (imports inside functions
included), every module in its layer importing only its own or lower layers, and the study's layers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
import_graph_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_graph_tool)
PACKAGE = import_graph_tool.PACKAGE
cycles, import_graph, problems = (
    import_graph_tool.cycles,
    import_graph_tool.import_graph,
    import_graph_tool.problems,
)
#: The study's modules, lowest layer first (``glare_core/study/__init__.py`` says what each holds).
STUDY_LAYERS = ("tables", "configs", "store", "stats", "report", "analysis", "figures", "timing", "runner")


def test_the_graph_reader_sees_imports_inside_functions():
    graph = import_graph()
    assert "glare_core.train" in graph["glare_core.study.runner"]  # imported inside pretrain_cell
    assert "glare_core.study.tables" in graph["glare_core.study.configs"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_package():
    found = cycles(import_graph())
    assert not found, f"import cycles (function-local imports included): {found}"


def test_every_module_imports_only_its_layer_or_lower_ones():
    assert problems(import_graph()) == []
    fake = {"glare_core.paths": {"glare_core.train"}, "glare_core.train": set(), "glare_core.extra": set()}
    assert problems(fake) == [
        "glare_core.extra: in no layer of tools/import_graph.py's LAYERS; add it",
        "glare_core.paths (foundations) imports glare_core.train (training), a higher layer",
    ]


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
