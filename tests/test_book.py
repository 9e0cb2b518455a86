"""The book's frame: toc, chapter shape, committed outputs, the notebook helpers and the page checker.

No test here executes a notebook (``make nbval`` does, in smoke mode) or builds the book (``make book``);
they check that nothing can be silently skipped or left broken between those runs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
import yaml

from glare_core import notebook
from glare_core.backbone import create_backbone

ROOT = Path(__file__).resolve().parent.parent


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


book_toc = _load_tool("book_toc")
BOOK = ROOT / "book"
TOC_NOTEBOOKS = book_toc.toc_notebooks(ROOT / "_toc.yml")


def _load(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


# ==================== engine and config
def test_jupyter_book_is_1x_and_pinned_below_2():
    version = importlib.metadata.version("jupyter-book")
    assert version.split(".")[0] == "1", f"jupyter-book {version} installed; the book needs 1.x (pin <2)"
    pyproject = (ROOT / "pyproject.toml").read_text()
    pins = re.findall(r'"jupyter-book([^"]*)"', pyproject)
    assert pins and all("<2" in pin for pin in pins), f"pyproject.toml must pin jupyter-book <2, found {pins}"


def test_config_builds_offline_from_committed_outputs():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"  # the string, not YAML's boolean false
    assert isinstance(config["execute"]["timeout"], int) and config["execute"]["timeout"] >= 600
    assert config["only_build_toc_files"] is True
    for pattern in (
        "tests",
        "glare_core",
        ".venv",
        "_build",
        "results",
        "runs",
        "README.md",
        "CONTRIBUTING.md",
    ):
        assert pattern in config["exclude_patterns"], pattern
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert config["repository"]["url"] == "https://github.com/glare-book/glare-book"
    for bib in config["bibtex_bibfiles"]:
        assert (ROOT / bib).is_file(), bib
    for name, folder in config["sphinx"].get("local_extensions", {}).items():
        assert (ROOT / folder / f"{name}.py").is_file(), f"local extension {name} not in {folder}"


def test_colab_link_is_the_launch_button_of_the_config():
    """The badge opens what the launch button opens: {colab_url}/github/{repo}/blob/{branch}/{path}"""
    assert book_toc.colab_link("book/global.ipynb", ROOT / "_config.yml") == (
        "https://colab.research.google.com/github/glare-book/glare-book/blob/main/book/global.ipynb"
    )
    assert book_toc.COLAB_BADGE_IMAGE.startswith("https://"), "a relative badge image is broken in Colab"
    assert book_toc.main(["badges"]) == 0


def test_badges_follow_the_repository_url_of_the_config(tmp_path):
    """Change repository.url in one place, run ``book_toc badges --fix``: every badge follows."""
    (tmp_path / "book").mkdir()
    shutil.copy(ROOT / "book" / "global.ipynb", tmp_path / "book" / "global.ipynb")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/global\n")
    config = (ROOT / "_config.yml").read_text().replace("glare-book/glare-book", "someone/fork")
    (tmp_path / "_config.yml").write_text(config.replace("branch: main", "branch: dev"))
    problems = book_toc.check_badges(tmp_path / "_toc.yml")
    assert len(problems) == 1 and "someone/fork/blob/dev/book/global.ipynb" in problems[0]
    assert book_toc.check_badges(tmp_path / "_toc.yml", fix=True) == []
    first = _load(tmp_path / "book" / "global.ipynb").cells[0].source
    assert "https://colab.research.google.com/github/someone/fork/blob/dev/book/global.ipynb" in first


def test_repository_url_is_the_same_everywhere():
    """Notebooks (badges, set-up cells) and the package name the repository of _config.yml, and no other."""
    config_repo = book_toc.repository_url(ROOT / "_config.yml").removeprefix("https://github.com/")
    texts = {str(p.relative_to(ROOT)): "\n".join(c.source for c in _load(p).cells) for p in TOC_NOTEBOOKS}
    texts |= {str(p.relative_to(ROOT)): p.read_text() for p in (ROOT / "glare_core").rglob("*.py")}
    texts |= {name: (ROOT / name).read_text() for name in ("README.md", "CONTRIBUTING.md", "pyproject.toml")}
    found = {}
    for name, text in texts.items():
        for repo in re.findall(r"github(?:\.com)?/([\w.-]+/[\w.-]+)", text):
            repo = repo.removesuffix(".git")
            if "glare" in repo.lower():
                found.setdefault(repo, set()).add(name)
    assert set(found) == {config_repo}, f"_config.yml says {config_repo}; elsewhere: {found}"


# ==================== table of contents
def test_toc_lists_only_existing_pages():
    pages = book_toc.toc_files(ROOT / "_toc.yml")
    assert pages[0] == BOOK / "index.ipynb", "the root page is book/index.ipynb (chapter 0)"
    missing = [str(p) for p in pages if not p.is_file()]
    assert not missing, f"_toc.yml lists pages that do not exist: {missing}"
    assert len(set(pages)) == len(pages), "a page is listed twice in _toc.yml"


def test_every_notebook_of_the_book_is_in_the_toc():
    on_disk = {
        p for p in BOOK.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts and "_build" not in p.parts
    }
    assert on_disk == set(TOC_NOTEBOOKS), (
        f"not in _toc.yml (never built, never tested): {sorted(map(str, on_disk - set(TOC_NOTEBOOKS)))}"
    )


def test_book_toc_cli_prints_the_notebooks(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert book_toc.main(["notebooks"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(p.relative_to(ROOT)) for p in TOC_NOTEBOOKS]
    script = subprocess.run(  # as the Makefile runs it: a script of tools/, not a module of the library
        [sys.executable, "tools/book_toc.py", "notebooks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert script.stdout.split() == printed


def test_book_toc_cli_fails_on_a_missing_page(tmp_path, capsys):
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: index\nchapters:\n  - file: missing_chapter\n")
    (tmp_path / "index.ipynb").write_text(nbformat.writes(nbformat.v4.new_notebook()))
    assert book_toc.main(["files", "--toc", str(toc)]) == 1
    assert "missing_chapter" in capsys.readouterr().err
    with pytest.raises(ValueError, match="jb-book"):
        toc.write_text("format: jb-article\nroot: index\n")
        book_toc.toc_entries(toc)


def test_nbval_collects_every_toc_notebook(tmp_path):
    """Run pytest's collection with nbval on the toc's notebooks: none may be skipped or collect nothing."""
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "--nbval-lax", "-p", "no:cacheprovider"]
    cmd += [str(p) for p in TOC_NOTEBOOKS]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for path in TOC_NOTEBOOKS:
        items = [line for line in proc.stdout.splitlines() if line.startswith(f"{path.relative_to(ROOT)}::")]
        code_cells = [c for c in _load(path).cells if c.cell_type == "code"]
        assert len(items) == len(code_cells), (
            f"nbval collected {len(items)} of {len(code_cells)} cells of {path}"
        )


# ==================== chapter shape
@pytest.fixture(params=TOC_NOTEBOOKS, ids=lambda p: p.stem)
def chapter(request) -> tuple[Path, nbformat.NotebookNode]:
    return request.param, _load(request.param)


def test_chapter_opens_with_goals_prerequisites_times_and_colab_badge(chapter):
    path, nb = chapter
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "first cell: a markdown title"
    text = first.source
    for part in ("Learning goals", "Prerequisites", "Colab T4", "CPU"):
        assert part in text, f"{path.name}: first cell lacks {part!r}"
    badge = book_toc.colab_badge(path.relative_to(ROOT), ROOT / "_config.yml")
    assert badge in text, (
        f"{path.name}: no Open in Colab badge {badge} (python tools/book_toc.py badges --fix)"
    )
    assert "{cpu_time}" not in text, f"{path.name}: run-time placeholder left in the first cell"


def test_chapter_has_exactly_one_setup_cell(chapter):
    path, nb = chapter
    setup_cells = [
        c for c in nb.cells if c.cell_type == "code" and "from glare_core.notebook import setup" in c.source
    ]
    assert len(setup_cells) == 1, f"{path.name}: {len(setup_cells)} setup cells"
    assert re.search(r"\bsetup\(", setup_cells[0].source)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0] is setup_cells[0], f"{path.name}: the setup cell must be the first code cell"


#: A solution a reader can reveal in Colab, Jupyter and the built book alike: an HTML <details> block (MyST's
#: ``:::{dropdown}`` shows as plain text in Colab and Jupyter). The blank lines let Markdown and maths render.
SOLUTION_BLOCK = re.compile(
    r"^(?P<ind>[ \t]*)<details>\n(?P=ind)<summary>Solution</summary>\n\n(?P<body>.*?)\n\n(?P=ind)</details>$",
    re.M | re.S,
)


def test_chapter_ends_with_summary_and_graded_exercises_with_hidden_solutions(chapter):
    path, nb = chapter
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert re.search(r"^## Summary\s*$", markdown, re.M), f"{path.name}: no '## Summary'"
    match = re.search(r"^## Exercises\s*$", markdown, re.M)
    assert match, f"{path.name}: no '## Exercises'"
    exercises = markdown[match.end() :]
    graded = re.findall(r"^\d+\. (★+) ", exercises, re.M)
    assert graded, f"{path.name}: exercises are not graded (a numbered list starting with ★, ★★ or ★★★)"
    assert ":::{dropdown}" not in markdown and "{toggle}" not in markdown, (
        f"{path.name}: a MyST dropdown/toggle shows as plain text in Colab and Jupyter; use <details>"
    )
    blocks = list(SOLUTION_BLOCK.finditer(exercises))
    assert len(blocks) == len(graded), (
        f"{path.name}: {len(graded)} exercises but {len(blocks)} solution blocks of the form "
        "'<details>' / '<summary>Solution</summary>' / blank line / ... / blank line / '</details>'"
    )
    assert markdown.count("<details>") == markdown.count("</details>") == len(blocks), (
        f"{path.name}: a <details> block outside the exercises or not closed"
    )
    for block in blocks:
        assert "<details>" not in block["body"], f"{path.name}: a solution block contains another <details>"


def test_chapter_outputs_are_committed_without_errors(chapter):
    path, nb = chapter
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any(c.outputs for c in code), f"{path.name}: no outputs committed (execute it in full mode)"
    for i, cell in enumerate(code):
        for out in cell.outputs:
            assert out.output_type != "error", (
                f"{path.name}, code cell {i}: committed error {out.get('ename')}"
            )
            if out.output_type == "stream" and out.name == "stderr":
                assert "Traceback" not in out.text, f"{path.name}, code cell {i}: traceback on stderr"


#: The experiment tables under results/ (a folder of cells/*.json, each stamped with its ``finished`` time).
RESULT_TABLES = sorted({p.parent.parent.name for p in (ROOT / "results").glob("*/cells/*.json")})


def _tables_read(nb: nbformat.NotebookNode) -> set[str]:
    """The result tables a chapter's code reads: ``results/<table>``, ``RESULTS_DIR, "<table>"`` or a call's
    first argument ``f("<table>", ...)`` (``get_table("main")``); not ``cfg["steps"]`` nor a tuple of keys."""
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    if not re.search(r"RESULTS_DIR|get_table\(|results/", code):
        return set()
    pattern = r"results/{t}\b|(?:\w\(|RESULTS_DIR\s*[,/])\s*[\"']{t}[\"']"
    return {t for t in RESULT_TABLES if re.search(pattern.format(t=t), code)}


def _executed_at(nb: nbformat.NotebookNode) -> str | None:
    """When the committed outputs were produced: the last ``iopub.status.idle`` that nbconvert recorded."""
    stamps = [
        c.metadata.get("execution", {}).get("iopub.status.idle") for c in nb.cells if c.cell_type == "code"
    ]
    return max((s for s in stamps if s), default=None)


def _utc(stamp: str):
    from datetime import datetime, timezone

    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


#: Chapters whose stale outputs are known and waiting, with the reason (an xfail, never a silent pass).
STALE_KNOWN: dict[str, str] = {}


def test_chapter_outputs_are_newer_than_the_results_they_read(chapter):
    """A chapter that shows a results table must have been executed after the table's last cell finished."""
    path, nb = chapter
    tables = _tables_read(nb)
    if not tables:
        return
    executed = _executed_at(nb)
    assert executed, (
        f"{path.name} reads {sorted(tables)} but its outputs carry no execution time (run nbconvert)"
    )
    stale = {}
    for table in sorted(tables):
        finished = [
            json.loads(f.read_text()).get("finished")
            for f in (ROOT / "results" / table / "cells").glob("*.json")
        ]
        newest = max((_utc(f) for f in finished if f), default=None)
        if newest is not None and newest > _utc(executed):
            stale[table] = newest.isoformat()
    command = f"GLARE_SMOKE=0 jupyter execute --inplace --timeout=1800 {path.relative_to(ROOT)}"
    if stale and path.name in STALE_KNOWN:
        pytest.xfail(f"{path.name} is stale ({stale}): {STALE_KNOWN[path.name]}; re-execute: {command}")
    assert not stale, (
        f"{path.name}: outputs from {executed}, older than the results they read (newest cell finished: "
        f"{stale}); re-execute it: {command}"
    )


def _tracked() -> set[str] | None:
    """Every path git tracks in this checkout, with every folder above them (None outside a git checkout)."""
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout:
        return None
    paths = set(out.stdout.split())
    return paths | {str(Path(p).parents[i]) for p in paths for i in range(len(Path(p).parts) - 1)}


def _results_paths_read(nb: nbformat.NotebookNode) -> set[str]:
    """The literal ``results/...`` paths a chapter's code names (not those completed by an f-string)."""
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return {m.group(0).rstrip("/.") for m in re.finditer(r"results/[\w./-]+(?![\w{])", code)}


def test_chapters_read_only_committed_results(chapter):
    """A file or folder under results/ that a chapter reads is committed (or a table that has no cell yet):
    an ignored or forgotten file reads fine on the machine that wrote it and nowhere else."""
    path, nb = chapter
    tracked = _tracked()
    if tracked is None:
        pytest.skip("not a git checkout")
    from glare_core.study.tables import TABLES

    missing = sorted(
        p for p in _results_paths_read(nb) if p not in tracked and p.removeprefix("results/") not in TABLES
    )
    assert not missing, f"{path.name} reads {missing}, which git does not track (ignored? not added?)"


def test_committed_results_check_catches_an_untracked_file():
    absent = "results/study/runs/none_such/metrics.jsonl"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f'load("{absent}", f"results/x_{{k}}")')]
    read = _results_paths_read(nb)
    assert absent in read and "results/x_" not in read
    tracked = _tracked()
    if tracked is not None:
        assert absent not in tracked and "results/study/cells" in tracked


def test_stale_output_check_catches_an_old_chapter():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('load_cells(RESULTS_DIR, "main")\nsteps = cfg["steps"]')]
    nb.cells[0].metadata["execution"] = {"iopub.status.idle": "2000-01-01T00:00:00.000000Z"}
    assert "main" in RESULT_TABLES and _tables_read(nb) == {"main"}
    assert _utc(_executed_at(nb)) < _utc("2000-01-02T00:00:00+00:00")


def test_chapter_stores_no_widget_state(chapter):
    path, nb = chapter
    assert "widgets" not in nb.metadata, (
        f"{path.name} stores ipywidgets state: the book would load require.js and the widget manager "
        "from CDNs "
        "for widgets that cannot run anyway. Remove it: nb.metadata.pop('widgets') and nbformat.write."
    )


def test_glossary_terms_and_citations_resolve():
    glossary = (BOOK / "glossary.md").read_text()
    block = glossary.split("```{glossary}", 1)[1].split("```", 1)[0]
    terms = {line.strip().lower() for line in block.splitlines() if line and not line.startswith(" ")}
    bib_keys = set(re.findall(r"@\w+\{([^,]+),", (BOOK / "references.bib").read_text()))
    sources = [glossary] + [
        c.source for p in TOC_NOTEBOOKS for c in _load(p).cells if c.cell_type == "markdown"
    ]
    for text in sources:
        for ref in re.findall(r"(?<!`)\{term\}`([^`\n]+)`", text):
            target = re.search(r"<([^>]+)>$", ref)
            name = (target.group(1) if target else ref).strip().lower()
            assert name in terms, f"{{term}} {ref!r} has no glossary entry"
        for keys in re.findall(r"(?<!`)\{cite(?::\w+)?\}`([^`\n]+)`", text):
            for key in keys.split(","):
                assert key.strip() in bib_keys, f"citation {key!r} not in references.bib"


# ==================== notebook helpers
def test_setup_in_smoke_mode(monkeypatch):
    monkeypatch.setenv("GLARE_SMOKE", "1")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    env = notebook.setup(seed=3, verbose=False)
    assert env.smoke and not env.colab and env.seed == 3
    assert env.device.type in ("cpu", "cuda")
    assert env.pick(100, 2) == 2
    import os

    assert os.environ.get("TQDM_DISABLE") == "1"
    a = torch.rand(3)
    notebook.seed_everything(3)
    assert torch.equal(a, torch.rand(3)), "setup(seed=3) must seed torch like seed_everything(3)"


@pytest.mark.parametrize("suffix", [".json", ".pt", ".npz"])
def test_load_or_compute_saves_then_loads(tmp_path, monkeypatch, suffix):
    monkeypatch.delenv("GLARE_SMOKE", raising=False)
    monkeypatch.delenv("GLARE_RECOMPUTE", raising=False)
    calls = []

    def compute():
        calls.append(1)
        return {"miou": torch.tensor([0.5, 0.25]).numpy()} if suffix == ".npz" else {"miou": [0.5, 0.25]}

    path = tmp_path / "sub" / f"result{suffix}"
    first = notebook.load_or_compute(path, compute, verbose=False)
    second = notebook.load_or_compute(path, compute, verbose=False)
    assert len(calls) == 1 and path.is_file()
    assert [float(x) for x in first["miou"]] == [float(x) for x in second["miou"]] == [0.5, 0.25]
    notebook.load_or_compute(path, compute, force=True, verbose=False)
    assert len(calls) == 2


def test_the_save_results_take_the_value_then_the_path(tmp_path):
    """``notebook.save_result`` and ``evaluation.save_result`` read alike: value first, the path returned."""
    from glare_core import evaluation

    value = {"miou": 0.5}
    for module in (notebook, evaluation):
        path = tmp_path / module.__name__ / "r.json"
        assert module.save_result(value, path) == path
        assert module.load_result(path) == value


def test_load_or_compute_in_smoke_mode_never_saves(tmp_path, monkeypatch):
    monkeypatch.setenv("GLARE_SMOKE", "1")
    path = tmp_path / "result.json"
    assert notebook.load_or_compute(path, lambda: {"a": 1}, verbose=False) == {"a": 1}
    assert not path.exists()


def test_load_or_compute_bad_files_name_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("GLARE_SMOKE", raising=False)
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json.*delete it"):
        notebook.load_or_compute(bad, lambda: {}, verbose=False)
    with pytest.raises(ValueError, match="unknown result format"):
        notebook.load_or_compute(tmp_path / "x.csv", lambda: {}, verbose=False)
    assert json.loads(json.dumps({"ok": True}))  # sanity: json module untouched by the failure


def test_cls_attention_heads_average_is_the_backbone_attention():
    torch.manual_seed(0)
    backbone = create_backbone("test_vit").eval()
    images = torch.rand(2, 3, 48, 64)
    per_head, grid = notebook.cls_attention_heads(backbone, images)
    with torch.no_grad():
        out = backbone(images)
    heads = backbone.vit.blocks[-1].attn.num_heads
    assert per_head.shape == (2, heads, grid[0] * grid[1]) and grid == out.grid
    torch.testing.assert_close(per_head.mean(1), out.attn)
    # an independent reference: the full attention matrix from q, k of the last block
    captured = {}
    block = backbone.vit.blocks[-1]
    hook = block.norm1.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    with torch.no_grad():
        backbone(images, return_attn=False)
    hook.remove()
    qkv = block.attn.qkv(captured["x"])
    B, T, _ = qkv.shape
    q, k, _ = qkv.reshape(B, T, 3, heads, -1).permute(2, 0, 3, 1, 4)
    ref = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)[
        :, :, 0, T - grid[0] * grid[1] :
    ]
    torch.testing.assert_close(per_head, ref, atol=1e-5, rtol=1e-4)


def test_figure_helpers():
    labels = torch.tensor([[0, 1], [255, 1]])
    rgb = notebook.colorize_labels(labels, [(10, 20, 30), (40, 50, 60)])
    assert rgb.shape == (2, 2, 3) and rgb[0, 0].tolist() == [10, 20, 30] and rgb[1, 0].tolist() == [0, 0, 0]
    import matplotlib

    matplotlib.use("Agg")
    fig = notebook.show_images([torch.zeros(3, 8, 12, dtype=torch.uint8), rgb], titles=["a", "b"], ncols=2)
    assert len(fig.axes) == 2
    import matplotlib.pyplot as plt

    plt.close(fig)


# ==================== student edition
def test_strip_solutions_removes_each_block_and_nothing_else():
    se = _load_tool("student_edition")
    text = (
        "1. ★ Question one?\n\n   <details>\n   <summary>Solution</summary>\n\n   $x^2$ and\n\n"
        "   ```python\n   print(1)\n   ```\n\n   </details>\n\n2. ★★ Question two.\n\n   <details>\n"
        "   <summary>Solution</summary>\n\n   Two.\n\n   </details>\n\n<details>\n<summary>More</summary>\n\n"
        "kept\n\n</details>\n"
    )
    stripped, n = se.strip_solutions(text)
    assert n == 2
    kept = "<details>\n<summary>More</summary>\n\nkept\n\n</details>\n"
    assert stripped == "1. ★ Question one?\n\n2. ★★ Question two.\n\n" + kept
    with pytest.raises(ValueError, match="line 4"):
        se.strip_solutions("1. ★ Q?\n\n   <details>\n   <summary>Solution</summary>\n\n   open block\n")


def test_student_edition_has_every_exercise_and_no_solution(tmp_path):
    se = _load_tool("student_edition")
    out = tmp_path / "student"
    removed = se.write_student_edition(ROOT, out)
    for path in TOC_NOTEBOOKS:
        rel = str(path.relative_to(ROOT))
        original, copy = _load(path), _load(out / rel)
        exercises = "\n".join(c.source for c in original.cells if c.cell_type == "markdown").split(
            "## Exercises"
        )[-1]
        assert removed.get(rel, 0) == len(re.findall(r"^\d+\. ★", exercises, re.M)), rel
        text = "\n".join(c.source for c in copy.cells if c.cell_type == "markdown")
        assert "<summary>Solution" not in text and "<details>" not in text, rel
        assert len(re.findall(r"^\d+\. ★", text.split("## Exercises")[-1], re.M)) == removed[rel], rel
        assert [c.get("outputs") for c in copy.cells] == [c.get("outputs") for c in original.cells], rel
    assert (out / "_toc.yml").read_text() == (ROOT / "_toc.yml").read_text()
    assert (out / "_config.yml").is_file() and (out / "book" / "references.bib").is_file()
    with pytest.raises(ValueError, match="overwrite"):
        se.write_student_edition(ROOT, ROOT / "book" / "student")


# ==================== page checker
def _load_check_pages():
    return _load_tool("check_pages")


def test_check_pages_lists_pages_and_follows_redirects(tmp_path):
    cp = _load_check_pages()
    (tmp_path / "book").mkdir()
    (tmp_path / "_static").mkdir()
    (tmp_path / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=book/index.html" />')
    (tmp_path / "book" / "index.html").write_text("<html><body>hi</body></html>")
    (tmp_path / "_static" / "x.html").write_text("")
    assert cp.list_pages(tmp_path) == ["book/index.html", "index.html"]
    assert cp.redirect_target(tmp_path, "index.html") == "book/index.html"
    assert cp.redirect_target(tmp_path, "book/index.html") is None


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)"
)
def test_check_pages_catches_a_missing_image_raw_maths_and_a_console_error(tmp_path, capsys):
    cp = _load_check_pages()
    (tmp_path / "index.html").write_text("<html><body><main><p>fine</p></main></body></html>")
    (tmp_path / "broken.html").write_text(
        "<html><body><main><img src='nope.png'><p>$$x^2$$</p>"
        "<script>console.error('boom')</script></main></body></html>"
    )
    code = cp.main(["--html", str(tmp_path), "--mathjax", str(tmp_path / "none")])
    assert code == 2  # a --mathjax folder without MathJax is a setup error
    mathjax = tmp_path / "mj"
    mathjax.mkdir()
    (mathjax / "tex-mml-chtml.js").write_text("")
    code = cp.main(["--html", str(tmp_path), "--mathjax", str(mathjax)])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "ok   index.html" in out
    assert "missing image" in out and "unrendered maths" in out and "boom" in out
