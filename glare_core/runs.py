"""Run folders: what :func:`glare_core.train.pretrain` checks before it writes anything, and how it writes.

A run folder holds ``config.json``, ``metrics.jsonl``, ``checkpoint.pt``, ``adapter.safetensors`` (and the
student's ``adapter_student.safetensors``) and ``summary.json`` (:data:`RUN_FILES`). The rules, so that no run
is lost and no file runs code:

* A new run refuses a folder that already holds a run, unless the caller asks to overwrite it
  (:func:`check_run_folder`); an unwritable folder is found before any work is done (:func:`check_writable`).
* A resumed run keeps its recorded configuration: only :data:`RESUME_SAFE_KEYS` (threads, workers, logging,
  checkpoint interval, folder name) may change (:func:`config_changes`), and the comparison happens before
  anything is written.
* Checkpoints are read with ``torch.load(weights_only=True)`` only (:func:`load_checkpoint`): a file that
  holds anything but tensors and plain data is refused, and every failure names the file and the fix.
* Nothing is written in place: JSON and checkpoints go to a temporary file that replaces the old one in one
  ``os.replace`` (:func:`atomic_write`); temporaries a kill left behind are removed at the next start
  (:func:`remove_stale_temporaries`).
* A checkpoint is written only if every trained tensor and gradient is finite and not absurdly large
  (:func:`check_finite_state`), so "the last good checkpoint" is good.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from .errors import CheckpointError, NonFiniteError, RunFolderError

RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "adapter.safetensors",
    "adapter_student.safetensors",
    "summary.json",
)
"""The files a run writes into its folder."""

RESUME_SAFE_KEYS = (
    "num_threads",
    "num_workers",
    "log_every",
    "checkpoint_every",
    "output_dir",
    "telemetry_every",
    "snapshot_steps",
)
"""Config keys that change speed, logging, the extra files or where the run lives, never its numbers: a
resumed run may use other values. Any other difference from the recorded config is refused."""

MAX_ABS_WEIGHT = 1e6
"""Trained tensors larger than this in magnitude count as diverged (adapters and heads stay below ~10)."""

CHECKPOINT_KEYS = ("step", "model", "optimizer", "rng")
"""Keys every training checkpoint has."""


# ---------------------------------------------------------------------------- the folder
def existing_run_files(out: Path) -> list[str]:
    """The :data:`RUN_FILES` present in ``out`` (empty if the folder does not exist)."""
    return [name for name in RUN_FILES if (out / name).exists()]


def check_writable(out: Path) -> None:
    """Refuse an output folder that cannot be created or written, before any work is done.

    Raises:
        RunFolderError: naming the folder (or the file in the way) and the fix.
    """
    out = Path(out)
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise RunFolderError(
            f"output folder {out}: {probe} is a file, not a folder. Fix: choose another --out."
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunFolderError(
            f"output folder {out}: {probe} is not writable. Fix: choose a writable --out (or fix its "
            "permissions)."
        )


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run in a folder that already holds one (data would be lost).

    Args:
        out: the run folder.
        resume: the caller resumes the run in ``out`` (then the folder must hold a checkpoint).
        overwrite: the caller asked to replace the run in ``out``.

    Raises:
        RunFolderError: when ``out`` holds a run and neither ``resume`` nor ``overwrite`` is set, or both are.
        FileNotFoundError: ``resume`` without a checkpoint in ``out``.
    """
    out = Path(out)
    check_writable(out)
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other; choose one")
    if resume:
        if not (out / "checkpoint.pt").exists():
            raise FileNotFoundError(
                f"--resume: no checkpoint at {out / 'checkpoint.pt'}; run without --resume to start afresh"
            )
        return
    found = existing_run_files(out)
    if found and not overwrite:
        raise RunFolderError(
            f"output folder {out} already holds a run ({', '.join(found)}). Nothing was changed. Fix: "
            "continue it with --resume, choose a new --out, or replace it with --overwrite."
        )


def clear_run_files(out: Path) -> None:
    """Delete a previous run's :data:`RUN_FILES` from ``out`` (``--overwrite``); other files are kept."""
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            (Path(out) / name).unlink()


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete the partial ``.<name>.*.tmp`` files an interrupted atomic write left in ``out``; returns them.

    Only call it when no other process writes into ``out`` (at the start of a run, on the main rank).
    """
    removed = []
    for name in RUN_FILES:
        for tmp in Path(out).glob(f".{name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


# ---------------------------------------------------------------------------- configs
def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"objective.views.global_size": 168, ...}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def config_changes(
    saved: Mapping[str, Any],
    wanted: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
    allowed: Iterable[str] = RESUME_SAFE_KEYS,
) -> list[str]:
    """The dotted keys whose values differ between two config dicts, ignoring ``allowed`` ones.

    Args:
        saved, wanted: the recorded and the requested config (nested dicts, as ``TrainConfig.to_dict()``).
        defaults: the config class's defaults (``TrainConfig().to_dict()``): a field added to the config after
            the run was recorded counts as unchanged when ``wanted`` holds its default value.

    Returns:
        ``["rank: 8 -> 4", ...]``, sorted by key; empty when the configs agree.
    """
    a, b = flatten(saved), flatten(wanted)
    if defaults is not None:
        a = {**{k: v for k, v in flatten(defaults).items() if k not in a and k in b}, **a}
    allowed = set(allowed)
    return [
        f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
        for key in sorted(set(a) | set(b))
        if key not in allowed and a.get(key) != b.get(key)
    ]


def check_resume_config(
    out: Path, saved: Mapping[str, Any], wanted: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> None:
    """Refuse to resume the run in ``out`` with settings other than the recorded ones.

    Raises:
        RunFolderError: listing the changed keys, with the fix.
    """
    changes = config_changes(saved, wanted, defaults)
    if changes:
        shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
        raise RunFolderError(
            f"--resume {out}: the run was recorded with other settings ({shown}). A run must finish with the "
            f"settings it started with; only {', '.join(RESUME_SAFE_KEYS)} may change. Nothing was changed. "
            "Fix: drop these overrides, or start a new run in a new --out."
        )


# ---------------------------------------------------------------------------- checkpoints
def _legacy_numpy_globals() -> list[Any]:
    """numpy's array and scalar reconstruction, which older checkpoints used (the numpy RNG state, learning
    rates as numpy floats): they build numbers from bytes and call nothing else, so allowing them keeps
    ``weights_only=True`` safe."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    dtypes = [type(np.dtype(t)) for t in ("uint32", "float64", "float32", "int64")]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtypes]


def safe_torch_load(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` that names the file on every failure.

    Only tensors and plain data (dicts, lists, numbers, strings) are read; a file that holds other objects
    (e.g. a ``__reduce__`` payload that would run code) is refused before any of it runs.

    Raises:
        CheckpointError: missing, truncated, corrupt, foreign or unsafe file; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise CheckpointError(
                f"{path}: refused to load this {what}: it holds a Python object ({found.group(1)}) other "
                "than tensors and plain data, which could run code. A file written by glare_core never does. "
                "Fix: do not use this file; restore your own copy or start afresh in a new folder."
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        raise CheckpointError(
            f"{path}: cannot read this {what} ({detail.group(1) if detail else e}); it is corrupt or not a "
            "torch file. Fix: restore it from a copy, or start afresh in a new folder."
        ) from None
    except (EOFError, RuntimeError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as e:
        raise CheckpointError(
            f"{path}: cannot read this {what} ({type(e).__name__}: {e}); it is truncated or not a "
            "torch file. Fix: restore it from a copy, or start afresh in a new folder."
        ) from e


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training checkpoint safely (:func:`safe_torch_load`) and check it has what a resume reads.

    Raises:
        CheckpointError: naming the file: unsafe, unreadable, or not a glare training checkpoint.
    """
    ckpt = safe_torch_load(path, "checkpoint")
    missing = (
        [k for k in CHECKPOINT_KEYS if k not in ckpt] if isinstance(ckpt, dict) else list(CHECKPOINT_KEYS)
    )
    if missing:
        raise CheckpointError(
            f"{path}: not a glare training checkpoint (missing {missing}). Fix: point --out at a folder "
            "written by glare pretrain, or start afresh in a new folder."
        )
    return ckpt


def check_finite_state(
    named: Iterable[tuple[str, torch.Tensor]], where: str, error: type[Exception] = NonFiniteError
) -> None:
    """Refuse NaN, infinite or diverged (> :data:`MAX_ABS_WEIGHT`) tensors before they are saved or used.

    Args:
        named: ``(name, tensor)`` pairs, e.g. trained weights, their gradients and the EMA teacher.
        where: what is about to be written or read (for the message).
        error: the exception to raise (:class:`CheckpointError` for a file that was read).

    Raises:
        NonFiniteError: (or ``error``) naming the first bad tensors.
    """
    bad = []
    for name, tensor in named:
        if tensor is None or not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        t = tensor.detach()
        if not torch.isfinite(t).all():
            bad.append(f"{name} (non-finite)")
        elif t.abs().max().item() > MAX_ABS_WEIGHT:
            bad.append(f"{name} (max |x| {t.abs().max().item():.3g})")
    if bad and error is NonFiniteError:
        raise NonFiniteError(
            f"{where}: {len(bad)} tensors diverged, e.g. {', '.join(bad[:4])}; nothing was written. Lower "
            "the learning rate (--set lr=...) and resume from the last checkpoint, or start afresh."
        )
    if bad:
        raise error(
            f"{where}: {len(bad)} tensors are NaN, infinite or absurdly large, e.g. {', '.join(bad[:4])}; "
            "the file comes from a diverged or damaged run. Fix: use another file, or train it again."
        )


def check_finite_values(values: Mapping[str, float], where: str) -> None:
    """Refuse NaN or infinite numbers (a probe's losses, a metric) with an error naming them."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise NonFiniteError(f"{where}: non-finite values {bad}. Lower the learning rate and run again.")


# ---------------------------------------------------------------------------- writing
@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` (``.<name>.<random>.tmp``) for a writer that takes a file name (e.g.
    ``safetensors``' ``save_file``): when the block ends it replaces ``path`` in one ``os.replace``, with the
    permissions a plain ``open`` gives; when the block raises it is removed and ``path`` is left as it was.

    Example::

        with atomic_path(out) as tmp:
            save_file(tensors, str(tmp))
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _usual_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | Path, write: Callable[[IO[Any]], object], binary: bool = False) -> None:
    """Write a file through a temporary file in the same folder and ``os.replace`` (:func:`atomic_path`):
    readers see the old file or the new one, never a partial one, and a failed write leaves no temporary file
    behind.

    Args:
        path: the file.
        write: writes the content to the open temporary file (text, or bytes with ``binary=True``).
        binary: open the temporary file in binary mode.
    """
    with atomic_path(path) as tmp, open(tmp, "wb" if binary else "w") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write` of a text."""
    atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str | Path, obj: Any, sort_keys: bool = False) -> None:
    """:func:`atomic_write_text` of ``json.dumps(obj, indent=2, sort_keys=sort_keys)``."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def _usual_permissions(path: str | Path) -> None:
    """``mkstemp`` creates 0600; give the file the permissions a plain ``open`` would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def read_summary(out: Path) -> dict[str, Any] | None:
    """The run's ``summary.json``, or None if it is missing or unreadable."""
    try:
        summary = json.loads((Path(out) / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return summary if isinstance(summary, dict) else None
