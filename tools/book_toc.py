"""The book's table of contents as data: which pages ``_toc.yml`` lists, which are notebooks, and their links.

``python tools/book_toc.py notebooks`` prints the notebooks (one path a line, relative to the current
folder, normally the repository root); the Makefile runs nbval on exactly these, so a chapter in the toc is
never silently skipped.
``python tools/book_toc.py files`` prints every page.
``python tools/book_toc.py badges`` checks that every notebook opens with the Open-in-Colab badge that
``_config.yml`` implies (``repository.url``, ``repository.branch``, ``repository.path_to_book`` and
``launch_buttons.colab_url``, the settings the built book's launch button reads); ``--fix`` rewrites them.
The repository URL is therefore written once, in ``_config.yml``. Build tooling of the book, not part of the
library (``tests/test_book.py`` loads it from this file).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path

#: The checkout this file belongs to (``tools/..``): where ``_toc.yml`` and ``_config.yml`` live.
ROOT = Path(__file__).resolve().parent.parent


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

    toc_path = Path(toc_path) if toc_path is not None else ROOT / "_toc.yml"
    if not toc_path.is_file():
        raise FileNotFoundError(f"{toc_path}: no table of contents; run from the repository root")
    toc = yaml.safe_load(toc_path.read_text())
    if not isinstance(toc, dict) or toc.get("format") != "jb-book":
        raise ValueError(f"{toc_path}: expected a Jupyter Book 1.x toc with 'format: jb-book'")
    return list(_entries(toc))


def toc_files(toc_path: str | Path | None = None) -> list[Path]:
    """Every page of the toc as a path (absolute, resolved against the toc's folder), in reading order."""
    toc_path = Path(toc_path) if toc_path is not None else ROOT / "_toc.yml"
    root = toc_path.resolve().parent
    return [resolve_page(root, entry) for entry in toc_entries(toc_path)]


def toc_notebooks(toc_path: str | Path | None = None) -> list[Path]:
    """The notebooks of the toc (the pages that nbval runs), in reading order."""
    return [p for p in toc_files(toc_path) if p.suffix == ".ipynb"]


#: The badge image, an absolute URL: a relative path is broken in Colab (the notebook is opened from GitHub).
COLAB_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
#: A Markdown Open-in-Colab badge: ``[![Open in Colab](image)](link)``.
BADGE = re.compile(r"\[!\[Open in Colab\]\((?P<image>[^)\s]+)\)\]\((?P<link>[^)\s]+)\)")


def book_config(config_path: str | Path | None = None) -> dict:
    """``_config.yml`` as a dict (default: the repository's)."""
    import yaml

    config_path = Path(config_path) if config_path is not None else ROOT / "_config.yml"
    return yaml.safe_load(config_path.read_text())


def repository_url(config_path: str | Path | None = None) -> str:
    """The book's repository, ``repository.url`` of ``_config.yml`` (e.g. ``https://github.com/o/name``)."""
    return str(book_config(config_path)["repository"]["url"]).rstrip("/")


def colab_link(notebook: str | Path, config_path: str | Path | None = None) -> str:
    """The Colab URL that opens ``notebook`` (a path relative to the book's root) from the repository.

    Built like Jupyter Book's own launch button: ``{colab_url}/github/{owner}/{name}/blob/{branch}/{path}``.
    """
    config = book_config(config_path)
    repo = config["repository"]
    url = str(repo["url"]).rstrip("/")
    if not url.startswith("https://github.com/"):
        raise ValueError(f"repository.url {url!r}: Colab opens notebooks from GitHub only")
    owner_name = url.removeprefix("https://github.com/").removesuffix(".git")
    prefix = str(repo.get("path_to_book") or "").strip("/")
    path = "/".join(part for part in (prefix, Path(notebook).as_posix()) if part)
    colab = str(config["launch_buttons"]["colab_url"]).rstrip("/")
    return f"{colab}/github/{owner_name}/blob/{repo.get('branch', 'main')}/{path}"


def colab_badge(notebook: str | Path, config_path: str | Path | None = None) -> str:
    """The Markdown badge a notebook's first cell carries."""
    return f"[![Open in Colab]({COLAB_BADGE_IMAGE})]({colab_link(notebook, config_path)})"


def check_badges(toc_path: str | Path | None = None, fix: bool = False) -> list[str]:
    """Problems with the notebooks' Open-in-Colab badges (``fix=True`` rewrites them first).

    Every notebook of the toc must carry exactly one badge, in its first cell, equal to :func:`colab_badge`.
    """
    import nbformat

    toc_path = Path(toc_path) if toc_path is not None else ROOT / "_toc.yml"
    root = toc_path.resolve().parent
    config_path = root / "_config.yml"
    problems = []
    for path in toc_notebooks(toc_path):
        rel = path.relative_to(root)
        nb = nbformat.read(path, as_version=4)
        expected = colab_badge(rel, config_path)
        first = nb.cells[0].source if nb.cells else ""
        found = BADGE.findall("\n".join(c.source for c in nb.cells if c.cell_type == "markdown"))
        if fix and len(found) == 1 and BADGE.search(first) and BADGE.search(first).group(0) != expected:
            nb.cells[0].source = first.replace(BADGE.search(first).group(0), expected)
            nbformat.write(nb, path)
            first = nb.cells[0].source
        if len(found) != 1 or expected not in first:
            got = BADGE.search(first).group(0) if BADGE.search(first) else "none"
            problems.append(f"{rel}: {len(found)} badges; the first cell's is {got}, expected {expected}")
    return problems


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").splitlines()[0]
    parser = argparse.ArgumentParser(prog="python tools/book_toc.py", description=doc)
    parser.add_argument(
        "what",
        choices=["notebooks", "files", "badges"],
        help="list the notebooks, or every page; or check the notebooks' Colab badges against _config.yml",
    )
    parser.add_argument("--toc", default=None, help="path to _toc.yml (default: the repository's)")
    parser.add_argument(
        "--fix", action="store_true", help="with 'badges': rewrite the badges from _config.yml"
    )
    args = parser.parse_args(argv)
    toc_path = Path(args.toc) if args.toc else ROOT / "_toc.yml"
    if args.what == "badges":
        problems = check_badges(toc_path, fix=args.fix)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        if not problems:
            print(f"{len(toc_notebooks(toc_path))} notebooks carry the Colab badge that _config.yml implies")
        return 1 if problems else 0
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
