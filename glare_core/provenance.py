"""Which code produced a result: the git commit at the start and whether the package had uncommitted changes.

Results record both (``git_commit``, ``git_dirty``) beside the machine
(:func:`glare_core.system.machine_info`).
"""

from __future__ import annotations

import subprocess

from .paths import REPO_ROOT


def _git(*args: str) -> str | None:
    """The output of ``git ARGS`` in the repository, or None when git cannot answer (no git, no checkout)."""
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str:
    """``git rev-parse HEAD`` of the repository, or ``"unknown"``."""
    out = _git("rev-parse", "HEAD")
    return out.strip() if out and out.strip() else "unknown"


def git_dirty() -> bool | None:
    """Whether ``glare_core/`` has uncommitted changes (None when git cannot tell)."""
    out = _git("status", "--porcelain", "--", "glare_core")
    return bool(out.strip()) if out is not None else None


def code_state() -> dict[str, str | bool | None]:
    """``{"git_commit", "git_dirty"}``: what a result records of its code, taken when the work starts."""
    return {"git_commit": git_commit(), "git_dirty": git_dirty()}
