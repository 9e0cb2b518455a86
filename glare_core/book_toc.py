"""The book's table of contents as data: which pages ``_toc.yml`` lists, and which of them are notebooks.

``python -m glare_core.book_toc notebooks`` prints the notebooks (one path a line, relative to the current
folder, normally the repository root); the Makefile runs nbval on exactly these, so a chapter in the toc is
never silently skipped.
``python -m glare_core.book_toc files`` prints every page. Not part of the GLARE method.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from .paths import REPO_ROOT

#: The suffixes a toc entry without one may have, in the order Jupyter Book tries them.
PAGE_SUFFIXES = (".ipynb", ".md", ".rst")


def _entries(node) -> Iterator[str]:
    """Every ``file:`` (and the ``root:``) of a jb-book toc, in reading order."""
    if isinstance(node, dict):
        if "root" in node:
            yield str(node["root"])
        if "file" in node:
            yield str(node["file"])
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key, []) or []:
                yield from _entries(child)
    elif isinstance(node, list):
        for child in node:
            yield from _entries(child)


def resolve_page(root: Path, entry: str) -> Path:
    """The file a toc entry names (``book/index`` -> ``book/index.ipynb``); the entry as is if none exists."""
    path = root / entry
    if path.suffix in PAGE_SUFFIXES:
        return path
    for suffix in PAGE_SUFFIXES:
        candidate = path.with_name(path.name + suffix)
        if candidate.exists():
            return candidate
    return path


def toc_entries(toc_path: str | Path | None = None) -> list[str]:
    """The raw entries of ``_toc.yml`` (root first), e.g. ``["book/index", "book/ssl_vits", ...]``."""
    import yaml

    toc_path = Path(toc_path) if toc_path is not None else REPO_ROOT / "_toc.yml"
    if not toc_path.is_file():
        raise FileNotFoundError(f"{toc_path}: no table of contents; run from the repository root")
    toc = yaml.safe_load(toc_path.read_text())
    if not isinstance(toc, dict) or toc.get("format") != "jb-book":
        raise ValueError(f"{toc_path}: expected a Jupyter Book 1.x toc with 'format: jb-book'")
    return list(_entries(toc))


def toc_files(toc_path: str | Path | None = None) -> list[Path]:
    """Every page of the toc as a path (absolute, resolved against the toc's folder), in reading order."""
    toc_path = Path(toc_path) if toc_path is not None else REPO_ROOT / "_toc.yml"
    root = toc_path.resolve().parent
    return [resolve_page(root, entry) for entry in toc_entries(toc_path)]


def toc_notebooks(toc_path: str | Path | None = None) -> list[Path]:
    """The notebooks of the toc (the pages that nbval runs), in reading order."""
    return [p for p in toc_files(toc_path) if p.suffix == ".ipynb"]


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").splitlines()[0]
    parser = argparse.ArgumentParser(prog="python -m glare_core.book_toc", description=doc)
    parser.add_argument("what", choices=["notebooks", "files"], help="list the notebooks, or every page")
    parser.add_argument("--toc", default=None, help="path to _toc.yml (default: the repository's)")
    args = parser.parse_args(argv)
    toc_path = Path(args.toc) if args.toc else REPO_ROOT / "_toc.yml"
    pages = toc_notebooks(toc_path) if args.what == "notebooks" else toc_files(toc_path)
    root = toc_path.resolve().parent
    missing = [p for p in pages if not p.exists()]
    for page in pages:
        try:
            print(page.relative_to(Path.cwd().resolve()))
        except ValueError:
            print(page.relative_to(root))
    if missing:
        print(f"error: {toc_path} lists missing pages: {', '.join(map(str, missing))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
