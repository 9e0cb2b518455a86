"""Where results are found: ``$GLARE_RESULTS_DIR``, the checkout holding the package, the book checkout around
the current folder, else an error naming the variable (``glare_core.paths.results_dir``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from glare_core import paths


@pytest.fixture
def layout(tmp_path: Path, monkeypatch) -> Path:
    """A package installed outside any checkout (``site/``), a book checkout (``book/``) without results."""
    monkeypatch.delenv("GLARE_RESULTS_DIR", raising=False)
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setattr(paths, "REPO_ROOT", site)
    book = tmp_path / "book"
    (book / "chapters").mkdir(parents=True)
    (book / "_toc.yml").write_text("root: index\n")
    monkeypatch.chdir(book / "chapters")
    return tmp_path


def test_the_variable_comes_first(layout, monkeypatch):
    (layout / "site" / "pyproject.toml").write_text("")
    (layout / "site" / "results").mkdir()
    monkeypatch.setenv("GLARE_RESULTS_DIR", str(layout / "mine"))
    assert paths.results_dir() == (layout / "mine").resolve()
    assert paths.runs_dir() == (layout / "runs" / "experiments").resolve()


def test_then_the_checkout_holding_the_package(layout):
    (layout / "book" / "results").mkdir()
    (layout / "site" / "results").mkdir()
    assert paths.results_dir() == layout / "book" / "results"  # site/ has no pyproject.toml: not a checkout
    (layout / "site" / "pyproject.toml").write_text("")
    assert paths.results_dir() == layout / "site" / "results"
    assert paths.runs_dir() == layout / "site" / "runs" / "experiments"


def test_then_the_book_checkout_around_the_current_folder(layout, monkeypatch):
    (layout / "book" / "results").mkdir()
    assert paths.results_dir() == (layout / "book" / "results").resolve()
    monkeypatch.chdir(layout / "book")
    assert paths.results_dir() == (layout / "book" / "results").resolve()


def test_no_results_anywhere_names_the_variable(layout):
    with pytest.raises(FileNotFoundError, match="GLARE_RESULTS_DIR"):
        paths.results_dir()
    (layout / "book" / "chapters" / "results").mkdir()  # results/ without _toc.yml beside it: not a book
    with pytest.raises(FileNotFoundError, match="GLARE_RESULTS_DIR"):
        paths.results_dir()


def test_the_chapters_stored_results_follow_the_results_folder(layout, monkeypatch):
    from glare_core import notebook
    from glare_core.notebook import resolve_result_path

    monkeypatch.setattr(notebook, "REPO_ROOT", paths.REPO_ROOT)  # its fall-back: the package's folder
    # no results folder anywhere (Colab): relative to the current folder, as before
    assert resolve_result_path("results/probe/x.json") == Path.cwd() / "results" / "probe" / "x.json"
    monkeypatch.setenv("GLARE_RESULTS_DIR", str(layout / "mine"))
    assert resolve_result_path("results/probe/x.json") == (layout / "mine" / "probe" / "x.json").resolve()
    assert resolve_result_path(layout / "abs.json") == layout / "abs.json"
