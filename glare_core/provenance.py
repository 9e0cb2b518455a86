"""Which code produced a result: the git commit at the start and whether the package had uncommitted changes.

Results record both (``git_commit``, ``git_dirty``) beside the machine
(:func:`glare_core.system.machine_info`).
"""

from __future__ import annotations

import subprocess

from .errors import ProvenanceError
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


def confirmatory_code_state(preregistration: str) -> dict[str, str | bool | None]:
    """:func:`code_state` for a confirmatory result, plus ``preregistration_commit``: the last commit of the
    pre-registration file (a path in the repository).

    Raises:
        ProvenanceError: ``glare_core/`` has uncommitted changes (or git cannot tell), or the pre-registration
            is not committed or has uncommitted changes; the message names the fix.
    """
    code = code_state()
    if code["git_dirty"] is not False:
        state = "has uncommitted changes" if code["git_dirty"] else "cannot be checked (no git checkout?)"
        raise ProvenanceError(
            f"glare_core/ {state}: a confirmatory cell must run on committed code, so that its record names "
            "the code that ran. Fix: commit (or stash) the changes in glare_core/, then run again."
        )
    commit = (_git("log", "-1", "--format=%H", "--", preregistration) or "").strip()
    changed = _git("status", "--porcelain", "--", preregistration)
    if not commit or changed is None or changed.strip():
        raise ProvenanceError(
            f"{preregistration}: the pre-registration is not committed as it stands; the study's cells "
            "record its commit and must not start before it. Fix: commit the file, then run again."
        )
    return {**code, "preregistration_commit": commit}
