"""Write a student edition of the book: a copy of its sources with every exercise solution removed.

Usage (from the repository root)::

    python tools/student_edition.py --out _build/student-src   # the copy
    make student                                                # the copy, then its HTML build

Every solution in the book is an HTML block that Colab, Jupyter and the built book all render as a closed,
clickable box (the chapter-shape test in ``tests/test_book.py`` enforces the form)::

    <details>
    <summary>Solution</summary>

    the solution: prose, $maths$, fenced code ...

    </details>

This script copies ``_config.yml``, ``_toc.yml`` and ``book/`` into ``--out`` and deletes each such block
(with the blank line before it) from the notebooks' markdown cells and the Markdown pages. Everything else,
committed outputs included, is copied unchanged, so the copy builds with ``jupyter-book build <out> -W
--keep-going`` like the book. It fails if a solution block is left open or a ``<summary>Solution`` survives.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent

#: One solution block: ``<details>`` then ``<summary>Solution</summary>`` at the same indentation (a list
#: item's content indent), up to the ``</details>`` at that indentation; the blank line before it goes too.
SOLUTION = re.compile(
    r"(?:\n[ \t]*)?\n(?P<ind>[ \t]*)<details>[ \t]*\n(?P=ind)<summary>Solution</summary>"
    r".*?\n(?P=ind)</details>[ \t]*$",
    re.M | re.S,
)
#: What must not remain after the removal.
LEFTOVER = re.compile(r"<summary>\s*Solution", re.I)

#: Files and folders that make up the book's sources (paths relative to the repository root).
BOOK_SOURCES = ("_config.yml", "_toc.yml", "book")
IGNORE = shutil.ignore_patterns("_build", ".ipynb_checkpoints", "__pycache__")


def strip_solutions(text: str) -> tuple[str, int]:
    """``text`` without its solution blocks, and how many were removed.

    Raises:
        ValueError: a ``<summary>Solution`` is still there afterwards (a block without its ``</details>``
            at the same indentation, or a summary that is not right under its ``<details>``).
    """
    stripped, count = SOLUTION.subn("", text)
    if LEFTOVER.search(stripped):
        line = stripped[: LEFTOVER.search(stripped).start()].count("\n") + 1
        raise ValueError(
            f"a solution block near line {line} is not of the form '<details>' / "
            "'<summary>Solution</summary>' / ... / '</details>' (same indentation); fix the block"
        )
    return stripped, count


def strip_notebook(path: Path) -> int:
    """Remove the solutions from a notebook's markdown cells in place; returns how many were removed."""
    nb = nbformat.read(path, as_version=4)
    removed = 0
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            try:
                cell.source, n = strip_solutions(cell.source)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
            removed += n
    if removed:
        nbformat.write(nb, path)
    return removed


def write_student_edition(root: Path, out: Path) -> dict[str, int]:
    """Copy the book's sources from ``root`` into ``out`` (replaced if present) without solutions.

    Returns:
        The number of solutions removed, per file (relative to ``out``), for the files that had any.
    """
    root, out = root.resolve(), out.resolve()
    if out == root or root in out.parents and out.relative_to(root).parts[0] in BOOK_SOURCES:
        raise ValueError(
            f"--out {out} would overwrite the book's own sources; pick a folder such as _build/student-src"
        )
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in BOOK_SOURCES:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, out / name, ignore=IGNORE)
        else:
            shutil.copy2(src, out / name)
    removed = {}
    for path in sorted((out / "book").rglob("*")):
        if path.suffix == ".ipynb":
            n = strip_notebook(path)
        elif path.suffix == ".md":
            text, n = strip_solutions(path.read_text(encoding="utf-8"))
            if n:
                path.write_text(text, encoding="utf-8")
        else:
            continue
        if n:
            removed[str(path.relative_to(out))] = n
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "_build" / "student-src", help="where to write the copy"
    )
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="the repository root (default: this checkout)"
    )
    args = parser.parse_args(argv)
    try:
        removed = write_student_edition(args.root, args.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"student edition in {args.out}: {sum(removed.values())} solutions removed from {len(removed)} files"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
