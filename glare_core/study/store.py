"""The result files: cell JSONs (read, checked, written), whether a cell is done or stale, benchmark files.

Layout (see ``results/README.md``; the folder is :func:`glare_core.paths.results_dir` unless given)::

    results/<table>/cells/<row>__<dataset>__seed<k>.json   one finished cell: config, metrics, commit, machine
    results/<table>/cells.csv                               one line per cell
    results/<table>/summary.csv, summary.md                 mean +- std over seeds per (row, dataset)
    results/<table>/per_class_iou.csv                       mean per-class IoU per (row, dataset)
    results/<table>/*.png                                   figures (glare_core.study.figures)
    results/efficiency/bench*.json                          the training-step benchmark, one file a machine
    results/timings.json                                    measured step / probe / k-NN times (--dry-run)
    runs/experiments/<table>/<cell>/                        pre-training run folders (git-ignored)

Every number in a cell JSON is measured by the runner on the machine recorded beside it (:func:`machine`);
:func:`save_record` is the one writer of the study's JSON files (atomically).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

from .. import paths
from .configs import adapter_cell, probe_config, seg_config, train_config
from .tables import Cell

SCHEMA_VERSION = 1


#: Keys every cell JSON must have (checked when a cell is read back).
REQUIRED_KEYS = ("schema", "table", "row", "dataset", "seed", "metrics", "config", "git_commit", "machine")


class ResultFileError(ValueError):
    """A result file that cannot be read or lacks required fields; the message names the file and the fix."""


def results_path(results_dir: str | Path | None) -> Path:
    """``results_dir``, or :func:`glare_core.paths.results_dir` when it is None (every reader's default)."""
    return Path(results_dir) if results_dir is not None else paths.results_dir()


def save_record(record: dict[str, Any], path: str | Path) -> Path:
    """Write a cell JSON, ``bench.json`` or ``timings.json`` as indented JSON, atomically (a temporary file
    and ``os.replace``: a reader sees the old file or the new one), creating its folder. Returns ``path``."""
    from ..runs import atomic_write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
    return path


def machine() -> dict[str, Any]:
    """CPU, cores, torch version, threads, load average, GPU (:func:`glare_core.system.machine_info`)."""
    try:
        from ..system import machine_info

        info = machine_info()
    except Exception:  # noqa: BLE001 - provenance must never stop a run
        import torch

        info = {"cpu": platform.processor() or "unknown", "cores": os.cpu_count(), "torch": torch.__version__}
    info["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    # 16 bits of the host name's SHA-256: the same machine gives the same number in every process (Python's
    # own hash() of a string is salted per process)
    info["hostname_hash"] = int(hashlib.sha256(platform.node().encode()).hexdigest()[:4], 16)
    return info


def now() -> str:
    """The current UTC time, ISO 8601 to the second (a cell's ``started`` and ``finished``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_cell(path: str | Path) -> dict[str, Any]:
    """Read and check one cell JSON.

    Raises:
        ResultFileError: naming the file, when it is not JSON or lacks a required field, with the fix.
    """
    path = Path(path)
    fix = f"Fix: delete {path} and rerun `glare experiment <table>` to recompute this cell."
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ResultFileError(f"{path}: cannot read the result file ({e}). {fix}") from e
    except json.JSONDecodeError as e:
        raise ResultFileError(f"{path}: not valid JSON ({e}). {fix}") from e
    if not isinstance(data, dict):
        raise ResultFileError(f"{path}: expected a JSON object, got {type(data).__name__}. {fix}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ResultFileError(f"{path}: missing field(s) {missing}. {fix}")
    m = data["metrics"]
    if not isinstance(m, dict) or not isinstance(m.get("miou"), int | float) or not 0 <= m["miou"] <= 1:
        raise ResultFileError(f"{path}: metrics.miou must be a number in [0, 1], got {m!r:.80}. {fix}")
    expected = f"{data['row']}__{data['dataset']}__seed{data['seed']}"
    if path.stem != expected:
        raise ResultFileError(
            f"{path}: the file describes cell {expected!r}, but is named {path.name}. {fix}"
        )
    return data


def load_cells(results_dir: str | Path, table: str) -> list[dict[str, Any]]:
    """Every cell JSON of a table (sorted by file name); [] when there is none."""
    folder = Path(results_dir) / table / "cells"
    return [read_cell(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def cell_done(cell: Cell, results_dir: Path) -> bool:
    """True when the cell's JSON exists (its content is checked when the table is reported)."""
    return cell.result_path(results_dir).exists()


#: Config keys that change speed or logging only; a run folder may be resumed with other values.
RUNTIME_KEYS = ("num_threads", "num_workers", "log_every", "precision", "telemetry_every", "snapshot_steps")


#: Training-config fields added after runs were recorded, with the value that reproduces what those runs did
#: (a record or run folder without them is read as having these; ``trunk_*``: the cached trunk of
#: ``glare_core.trunk``, off by default).
TRAIN_ADDED = {
    "clip_grad_mode": "global",
    "trunk_blocks": None,
    "trunk_pairs": 4,
    "trunk_seed": 0,
    "trunk_storage": "fp16",
    "snapshot_steps": [],
}
#: Objective fields (``objective.*``) added after runs were recorded, read the same way.
OBJECTIVE_ADDED = {"region_overlap_only": False}


def with_added_fields(saved: dict[str, Any]) -> dict[str, Any]:
    """A recorded training config with the fields added since (:data:`TRAIN_ADDED`,
    :data:`OBJECTIVE_ADDED`) set to the values that reproduce it, where it lacks them."""
    saved = {**TRAIN_ADDED, **saved}
    if isinstance(saved.get("objective"), dict):
        saved["objective"] = {**OBJECTIVE_ADDED, **saved["objective"]}
    return saved


#: Recorded config keys that do not change a cell's numbers (compared by :func:`stale_reason`). The precision
#: is recorded with each cell but is not part of its identity: ``"auto"`` picks it per machine, and bf16 and
#: float32 features differ by rounding only.
_PROBE_RUNTIME = ("cache", "num_workers", "feature_batch_size", "eval_batch_size", "precision")


#: Probe fields added after cells were recorded, with the value that reproduces what those cells did.
_PROBE_ADDED = {"inference": "resize", "slide_scale": 1.0, "slide_stride": 2 / 3}


_SEG_RUNTIME = ("cache", "feature_batch_size", "eval_batch_size", "precision", "train_precision")


def stale_reason(cell: Cell, results_dir: Path, smoke: bool = False) -> str | None:
    """Why a finished cell no longer matches the table's current definition (None: it matches).

    Compares the recorded probe protocol (segmentation tables: decoder protocol and terms) and training
    config with :func:`probe_config` (:func:`seg_config`) and :func:`train_config` (of :func:`adapter_cell`).
    A stale cell is still skipped by the runner (its JSON exists); delete the file to recompute it with the
    current definition.
    """
    record = read_cell(cell.result_path(results_dir))
    if cell.table.kind == "segmentation":
        want = seg_config(cell).to_dict()
        got = record["config"].get("segmentation") or {}
        diff = sorted(k for k in want if k not in _SEG_RUNTIME and got.get(k) != want[k])
        if diff:
            return "segmentation " + ", ".join(f"{k}={got.get(k)!r} (now {want[k]!r})" for k in diff)
        if list(record.get("terms", [])) != list(cell.row.terms):
            return f"terms {record.get('terms')} (now {list(cell.row.terms)})"
    else:
        want = probe_config(cell).to_dict()
        got = record["config"].get("probe") or {}
        got = {**_PROBE_ADDED, **got}
        diff = sorted(k for k in want if k not in _PROBE_RUNTIME and got.get(k) != want[k])
        if diff:
            return "probe " + ", ".join(f"{k}={got.get(k)!r} (now {want[k]!r})" for k in diff)
    if cell.row.pretrain:
        want_t = train_config(adapter_cell(cell, smoke), smoke).to_dict()
        got_t = with_added_fields(record["config"].get("train") or {})
        diff = sorted(k for k in want_t if k not in RUNTIME_KEYS and got_t.get(k) != want_t[k])
        if diff:
            return "train config " + ", ".join(diff)
        if bf16_teacher(record):
            return BF16_TEACHER_REASON
    return None


BF16_TEACHER_REASON = (
    "its adapter is an EMA teacher averaged in bf16 (recorded before the float32-teacher fix); delete the "
    "cell and its run folder to recompute it"
)


def bf16_teacher(record: dict[str, Any]) -> bool:
    """True when a cell evaluated a teacher whose averaged tensors were stored in bf16.

    Before the fix, every frozen-looking ``nn.Linear`` was cast to the autocast dtype, the teacher's EMA
    copies of the adapters and heads (and of every weight in full fine-tuning) included; LoRA factors are no
    ``nn.Linear`` and were spared, and float32 runs cast nothing. Runs after the fix record ``ema_dtype``
    ("float32") in their summary.
    """
    pretrain = record.get("pretrain") or {}
    summary = pretrain.get("summary") or {}
    train = (record.get("config") or {}).get("train") or {}
    if not train or "ema_dtype" in summary:
        return False
    return train.get("tuning") != "lora" and summary.get("precision", train.get("precision")) != "fp32"


def efficiency_dir(results_dir: str | Path | None) -> Path:
    """``<results>/efficiency``: the benchmark files."""
    return results_path(results_dir) / "efficiency"


def read_bench(results_dir: str | Path | None = None, name: str = "bench.json") -> dict[str, Any]:
    """``results/efficiency/bench.json`` (written by ``glare experiment efficiency``), or another benchmark
    file of that folder by ``name`` (an earlier machine's, e.g. ``bench_amd_epyc.json``)."""
    path = efficiency_dir(results_dir) / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path} not found. Fix: run `glare experiment efficiency`.") from e
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: not valid JSON ({e}). Fix: delete it and rerun `glare experiment efficiency`."
        ) from e


def bench_files(results_dir: str | Path | None = None) -> list[str]:
    """Names of the benchmark files in ``results/efficiency/``: ``bench.json`` first, then earlier machines'
    ``bench_*.json`` in name order."""
    names = (p.name for p in efficiency_dir(results_dir).glob("bench*.json"))
    return sorted(names, key=lambda n: (n != "bench.json", n))


def fp32_variant(bench: dict[str, Any]) -> str:
    """The benchmark's float32 GLARE step: ``glare_fp32`` (forced fp32 of the real step), or ``naive_fp32`` in
    files written before the benchmark timed :func:`glare_core.train.train_step`."""
    return "glare_fp32" if "glare_fp32" in bench["variants"] else "naive_fp32"


def bench_is_earlier(bench: dict[str, Any]) -> bool:
    """True for a file of the earlier benchmark, which timed a re-implemented step (its variants are glare,
    dino_only and naive_fp32, in fixed precisions) rather than :func:`glare_core.train.train_step`."""
    return "step" not in bench and "naive_fp32" in bench["variants"]


def bf16_variant(bench: dict[str, Any]) -> str | None:
    """The benchmark's bf16 GLARE step: ``glare_bf16`` (forced), or ``glare`` in an earlier file (bf16)."""
    v = bench["variants"]
    if "glare_bf16" in v:
        return "glare_bf16"
    return "glare" if v.get("glare", {}).get("precision") == "bf16" else None
