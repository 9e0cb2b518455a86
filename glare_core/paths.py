"""Where data, weights and runs live.

* Data: ``$GLARE_DATA_DIR`` alone when it is set (a wrong value is an error, never a silent fall-back to
  another copy); otherwise ``../shared/data`` beside the checkout, then the user cache
  (``~/.cache/glare/data``), where the Colab download helpers put what they fetch.
* Cache (converted weights, cached features): ``$GLARE_CACHE_DIR``, else ``$XDG_CACHE_HOME/glare``, else
  ``~/.cache/glare``.
* Results (the experiment tables, the benchmark, the committed runs the book reads): :func:`results_dir`,
  i.e. ``$GLARE_RESULTS_DIR``, else the ``results/`` of the checkout holding this package, else the
  ``results/`` of the book checkout around the current folder; experiment run folders go to
  :func:`runs_dir`, ``runs/experiments/`` beside it.
* Environment switches: ``GLARE_SMOKE=1`` shrinks every run (tests, the book's smoke run);
  ``HF_HUB_OFFLINE=1`` forbids hub downloads.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _cache_root() -> Path:
    if os.environ.get("GLARE_CACHE_DIR"):
        return Path(os.environ["GLARE_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "glare"
    return Path.home() / ".cache" / "glare"


def cache_dir() -> Path:
    """The user cache folder for converted weights, cached features and downloads (created on demand)."""
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    return root


def results_dir() -> Path:
    """The results folder: tables (``<table>/cells/*.json``), the benchmark files, ``timings.json``.

    In order: ``$GLARE_RESULTS_DIR`` when set (used as it is, even before a table creates it); the
    ``results/`` of the checkout holding this package (:data:`REPO_ROOT` with ``pyproject.toml`` and
    ``results/``: an editable install or ``PYTHONPATH``); the ``results/`` of the nearest of the current
    folder and its parents that holds ``_toc.yml`` and ``results/`` (a book checkout, with the package
    installed elsewhere, e.g. into site-packages).

    Raises:
        FileNotFoundError: none of them holds a results folder; the message names ``GLARE_RESULTS_DIR``.
    """
    if os.environ.get("GLARE_RESULTS_DIR"):
        return Path(os.environ["GLARE_RESULTS_DIR"]).expanduser().resolve()
    if (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "results").is_dir():
        return REPO_ROOT / "results"
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file() and (folder / "results").is_dir():
            return folder / "results"
    raise FileNotFoundError(
        f"no results folder found: the package at {REPO_ROOT} is not a checkout, and neither {here} nor a "
        "parent holds _toc.yml and results/. Fix: run from the book's checkout, or set GLARE_RESULTS_DIR to "
        "its results/ folder."
    )


def runs_dir() -> Path:
    """The experiment run folders (git-ignored): ``runs/experiments/`` beside :func:`results_dir`."""
    return results_dir().parent / "runs" / "experiments"


def data_roots() -> list[Path]:
    """The folders searched for datasets, in order (existing or not).

    ``$GLARE_DATA_DIR``, when set, is the only one: the user chose it, so a dataset missing there must be an
    error rather than a different copy found elsewhere.
    """
    if os.environ.get("GLARE_DATA_DIR"):
        return [Path(os.environ["GLARE_DATA_DIR"]).expanduser().resolve()]
    roots = []
    roots.append(REPO_ROOT.parent / "shared" / "data")
    roots.append(Path.cwd().parent / "shared" / "data")
    roots.append(_cache_root() / "data")
    unique: list[Path] = []
    for r in roots:
        r = r.resolve()
        if r not in unique:
            unique.append(r)
    return unique


def find_dataset_dir(name: str, *candidates: str) -> Path | None:
    """The first ``root/<candidate>`` folder that exists over :func:`data_roots`, or None.

    ``candidates`` are sub-folder names to try (default: ``name``), e.g. ``("camvid", "CamVid")``.
    """
    for root in data_roots():
        for sub in candidates or (name,):
            path = root / sub
            if path.is_dir():
                return path
    return None


def smoke_mode() -> bool:
    """True when ``GLARE_SMOKE`` is set to a true value: every run shrinks to seconds."""
    return os.environ.get("GLARE_SMOKE", "0").lower() not in ("", "0", "false", "no")


def hub_offline() -> bool:
    """True when hub downloads are forbidden (``HF_HUB_OFFLINE=1``)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("", "0", "false", "no")
