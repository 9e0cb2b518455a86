"""Measured times and the plan: ``results/timings.json``, estimates per cell, ``glare experiment --dry-run``.

Each finished cell records its pre-training seconds per step, probe, feature-extraction and k-NN seconds
(:func:`record_cell_timings`); ``--measure`` times a few steps of every distinct row setting
(:func:`measure_step_times`, :func:`measure_segmentation_times`). :func:`plan` lists a table's cells, done
or not, with the time estimated from those medians (:func:`estimate_cell`).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import paths
from .configs import adapter_cell, cost_key, probe_config, probe_datasets, seg_config, train_config
from .report import markdown_table
from .stats import median
from .store import (
    ResultFileError,
    cell_done,
    load_cells,
    machine,
    now,
    results_path,
    save_record,
    stale_reason,
)
from .tables import Cell, Table, get_table

TIMINGS_FILE = "timings.json"
#: Kinds of measured times in ``timings.json``: seconds per pre-training step, per probe head (training and
#: evaluation), per feature extraction, per k-NN run, per light-decoder step (segmentation tables).
TIMING_KINDS = ("pretrain", "probe", "features", "knn", "segmentation")


def read_timings(results_dir: Path) -> dict[str, Any]:
    """``<results_dir>/timings.json``: {kind: {key: entry}} for each of :data:`TIMING_KINDS`."""
    path = Path(results_dir) / TIMINGS_FILE
    if not path.exists():
        return {k: {} for k in TIMING_KINDS}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ResultFileError(
            f"{path}: not valid JSON ({e}). Fix: delete it (it is rebuilt from runs)."
        ) from e
    for k in TIMING_KINDS:
        data.setdefault(k, {})
    return data


def record_timing(results_dir: Path, kind: str, key: str, seconds: float, source: str) -> None:
    """Add one measured time (seconds per step for ``pretrain``, seconds per cell for ``probe`` / ``knn``)."""
    data = read_timings(results_dir)
    entry = data[kind].setdefault(key, {"samples": []})
    entry["samples"] = (entry["samples"] + [round(float(seconds), 3)])[-20:]
    entry["median"] = median(entry["samples"])
    entry["last_source"] = source
    entry["last_measured"] = now()
    entry["cpu"] = machine().get("cpu")
    save_record(data, Path(results_dir) / TIMINGS_FILE)


def record_cell_timings(results_dir: Path, record: dict[str, Any]) -> None:
    """Record the times a finished cell measured (a reused pre-training's steps are not measured again)."""
    src = f"{record['table']}/{record['row']}__{record['dataset']}__seed{record['seed']}"
    pre = record.get("pretrain")
    if pre and pre.get("seconds_per_step") and pre.get("mode") != "reused":
        record_timing(results_dir, "pretrain", pre["cost_key"], pre["seconds_per_step"], src)
    if "segmentation" in record["config"]:
        seg, ev = record["config"]["segmentation"], record["evaluation"]["timings"]
        key = segmentation_timing_key(record["dataset"], seg, record["terms"], record.get("threads") or "all")
        record_timing(results_dir, "segmentation", key, ev["step_s"], src)
        if ev["train_features_s"] > 0 and ev["val_features_s"] > 0:
            fkey = features_timing_key(record["dataset"], seg)
            record_timing(results_dir, "features", fkey, ev["train_features_s"] + ev["val_features_s"], src)
        return
    ev, probe = record["evaluation"]["timings"], record["config"]["probe"]
    record_timing(
        results_dir,
        "probe",
        probe_timing_key(record["dataset"], probe),
        ev["probe_train_s"] + ev["probe_eval_s"],
        src,
    )
    if not (ev.get("train_features_cached") or ev.get("val_features_cached")):
        key = features_timing_key(record["dataset"], probe)
        record_timing(results_dir, "features", key, ev["train_features_s"] + ev["val_features_s"], src)
    knn = record.get("knn")
    if knn and not knn.get("cached"):
        record_timing(results_dir, "knn", json.dumps(knn["settings"], sort_keys=True), knn["seconds"], src)


def probe_timing_key(dataset: str, probe: dict[str, Any]) -> str:
    """Timing key of the probe head's training + evaluation (features excluded)."""
    p = {k: v for k, v in probe.items() if k not in ("seed", "cache", "num_workers")}
    return f"{dataset}|{json.dumps(p, sort_keys=True)}"


def segmentation_timing_key(dataset: str, seg: dict[str, Any], terms: Sequence[str], threads: Any) -> str:
    """Timing key of one light-decoder training step: what its cost depends on (input size, decoder width,
    batch, label scale, precision, the extra terms, torch threads)."""
    p = {
        k: seg.get(k)
        for k in ("size", "layers", "hidden_dim", "batch_size", "label_scale", "train_precision")
    }
    return f"{dataset}|{'+'.join(terms) or 'decoder'}|threads{threads}|{json.dumps(p, sort_keys=True)}"


def features_timing_key(dataset: str, probe: dict[str, Any]) -> str:
    """Timing key of the probe's feature extraction (train + val, not cached)."""
    p = {k: probe.get(k) for k in ("size", "layers", "precision", "feature_batch_size")}
    return f"{dataset}|{json.dumps(p, sort_keys=True)}"


def step_seconds(run_dir: Path, batch_size: int) -> list[float]:
    """Per-step seconds of a run from its ``metrics.jsonl`` (batch / images_per_s), every step once."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            out.append(batch_size / rec["images_per_s"])
        except (json.JSONDecodeError, KeyError, ZeroDivisionError):
            continue
    return out


def estimate_cell(
    cell: Cell,
    timings: dict[str, Any],
    smoke: bool = False,
    runs_dir: Path | None = None,
    features: bool = True,
) -> dict[str, Any]:
    """Estimated seconds of a cell from measured times: pre-training (steps x seconds per step of the same
    cost key), probe (feature extraction without cache + head training and evaluation, same dataset and
    protocol) and k-NN. Unmeasured parts are None and listed in ``unmeasured``. An upper bound where
    features would come from the cache (the base row's later seeds).

    Segmentation tables (:func:`_estimate_segmentation`): ``probe`` is the decoder's steps x measured seconds
    per step (plus feature extraction when ``features``), and the pre-training is 0 when the adapter's run
    folder under ``runs_dir`` is finished."""
    if cell.table.kind == "segmentation":
        return _estimate_segmentation(cell, timings, smoke, runs_dir, features)
    est: dict[str, Any] = {"pretrain": 0.0, "probe": None, "knn": 0.0, "unmeasured": []}
    if cell.row.pretrain:
        cfg = train_config(cell, smoke)
        entry = timings["pretrain"].get(cost_key(cfg))
        steps = cfg.steps or cfg.total_steps(cfg.limit or 1)
        est["pretrain"] = entry["median"] * steps if entry else None
        est["steps"] = steps
        if entry is None:
            est["unmeasured"].append(f"pretrain {cost_key(cfg)}")
    probe = probe_config(cell).to_dict()
    head = timings["probe"].get(probe_timing_key(cell.dataset.name, probe))
    feats = timings.get("features", {}).get(features_timing_key(cell.dataset.name, probe))
    est["probe"] = head["median"] + feats["median"] if head and feats else None
    if head is None:
        est["unmeasured"].append("probe head")
    if feats is None:
        est["unmeasured"].append("probe features")
    if cell.knn:
        entry = None
        for key, e in timings["knn"].items():
            if all(json.loads(key).get(k) == v for k, v in cell.table.knn_settings.items()):
                entry = e
        est["knn"] = entry["median"] if entry else None
        if entry is None:
            est["unmeasured"].append("knn")
    parts = [est["pretrain"], est["probe"], est["knn"]]
    est["total"] = None if any(p is None for p in parts) else sum(parts)
    est["known"] = sum(p for p in parts if p is not None)
    return est


def _estimate_segmentation(
    cell: Cell, timings: dict[str, Any], smoke: bool, runs_dir: Path | None, features: bool
) -> dict[str, Any]:
    est: dict[str, Any] = {"pretrain": 0.0, "probe": None, "knn": 0.0, "unmeasured": [], "reused": False}
    if cell.row.pretrain:
        src = adapter_cell(cell, smoke)
        run_dir = src.run_dir(runs_dir or paths.runs_dir())
        cfg = train_config(src, smoke)
        est["steps"] = cfg.steps or cfg.total_steps(cfg.limit or 1)
        if (run_dir / "summary.json").exists() and (run_dir / "adapter.safetensors").exists():
            est["reused"] = True
        else:
            entry = timings["pretrain"].get(cost_key(cfg))
            est["pretrain"] = entry["median"] * est["steps"] if entry else None
            if entry is None:
                est["unmeasured"].append(f"pretrain {cost_key(cfg)}")
    seg = seg_config(cell)
    threads = cell.table.threads or "all"
    entry = timings["segmentation"].get(
        segmentation_timing_key(cell.dataset.name, seg.to_dict(), cell.row.terms, threads)
    )
    decoder = entry["median"] * seg.steps if entry else None
    if entry is None:
        est["unmeasured"].append("decoder step")
    feats = 0.0
    if features:
        f = timings["features"].get(features_timing_key(cell.dataset.name, seg.to_dict()))
        feats = f["median"] if f else None
        if f is None:
            est["unmeasured"].append("features")
    est["decoder"], est["features"] = decoder, feats
    est["probe"] = None if decoder is None or feats is None else decoder + feats
    parts = [est["pretrain"], est["probe"]]
    est["total"] = None if any(x is None for x in parts) else sum(parts)
    est["known"] = sum(x for x in (est["pretrain"], decoder, feats) if x is not None)
    return est


def _feature_owner(cell: Cell) -> str:
    """Which frozen features a segmentation cell extracts: the base's, or seed k's adapted backbone's."""
    return f"adapted seed {cell.seed}" if cell.row.pretrain else "base"


def measure_segmentation_times(
    table: Table, results_dir: Path, steps: int = 20, smoke: bool = False
) -> dict[str, float]:
    """Time ``steps`` light-decoder steps of every distinct term set of a segmentation table, on the frozen
    base's features of the first dataset (extracted, or read from the feature cache), with the table's
    protocol and threads; record seconds per step in ``results_dir/timings.json``. Returns {key: seconds}.
    """
    import torch

    from ..config import preset
    from ..neighbours.segmentation import train_segmentation
    from ..weights import load_base

    cell0 = table.cells()[0]
    backbone = load_base(preset(table.preset).base, verbose=False)
    threads = torch.get_num_threads()
    if table.threads:
        torch.set_num_threads(table.threads)
    out: dict[str, float] = {}
    try:
        train_ds, val_ds = probe_datasets(cell0.dataset)
        seen: set[tuple[str, ...]] = set()
        for cell in table.cells():
            terms = tuple(cell.row.terms)
            if terms in seen or cell.dataset != cell0.dataset:
                continue
            seen.add(terms)
            seg = dataclasses.replace(seg_config(cell), steps=steps, warmup_steps=1)
            print(
                f"[experiment] measuring {steps} decoder steps with terms {terms or '(none)'} ...", flush=True
            )
            r = train_segmentation(backbone, train_ds, val_ds, seg, extra_terms=terms)
            key = segmentation_timing_key(cell.dataset.name, seg.to_dict(), terms, table.threads or "all")
            src = f"measure {table.name}/{cell.row.name}"
            record_timing(results_dir, "segmentation", key, r["timings"]["step_s"], src)
            t = r["timings"]
            if t["train_features_s"] > 0 and t["val_features_s"] > 0:
                fkey = features_timing_key(cell.dataset.name, seg.to_dict())
                record_timing(results_dir, "features", fkey, t["train_features_s"] + t["val_features_s"], src)
            out[key] = t["step_s"]
    finally:
        torch.set_num_threads(threads)
    return out


def measure_step_times(
    table: Table, results_dir: Path, steps: int = 4, smoke: bool = False
) -> dict[str, float]:
    """Time ``steps`` pre-training steps for every distinct cost key of ``table`` (in a temporary folder) and
    record the median of all but the first step in ``results_dir/timings.json``. Returns {key: seconds}."""
    import tempfile

    from ..train import pretrain

    out: dict[str, float] = {}
    seen: set[str] = set()
    for cell in table.cells():
        if not cell.row.pretrain:
            continue
        cfg = train_config(cell, smoke)
        key = cost_key(cfg)
        if key in seen:
            continue
        seen.add(key)
        cfg.steps, cfg.checkpoint_every, cfg.head_warmup_steps = steps, 10**9, 0
        with tempfile.TemporaryDirectory(prefix="glare-measure-") as tmp:
            print(f"[experiment] measuring {steps} steps of {key} ...", flush=True)
            pretrain(cfg, tmp)
            times = step_seconds(Path(tmp), cfg.batch_size)
        sec = median(times[1:] or times)
        if sec is not None:
            record_timing(results_dir, "pretrain", key, sec, f"measure {table.name}/{cell.row.name}")
            out[key] = sec
    return out


def _fmt_seconds(s: float | None) -> str:
    """``"12.3 min"`` below an hour, ``"1.25 h"`` from there, ``"unmeasured"`` for None."""
    if s is None:
        return "unmeasured"
    return f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.2f} h"


def plan(table: Table, results_dir: Path, smoke: bool = False, runs_dir: Path | None = None) -> str:
    """The dry-run text: every cell, done or not, with its estimated time from measured timings.

    Segmentation tables: feature extraction is counted once per frozen backbone (the base; each seed's
    adapted model) and not at all when a finished cell already extracted (and cached) it; pre-training is
    counted only when the adapter's run folder under ``runs_dir`` is not finished."""
    if table.kind == "bench":
        done = (Path(results_dir) / table.name / "bench.json").exists()
        return f"{table.name}: {table.title}\n  bench.json {'done' if done else 'to run'} (a few minutes)"
    timings = read_timings(results_dir)
    lines = [f"{table.name}: {table.title}", f"  results: {Path(results_dir) / table.name}"]
    total, unmeasured, todo = 0.0, 0, 0
    extracted = {_feature_owner(c) for c in table.cells() if cell_done(c, results_dir)}
    adapters: set[str] = set()
    for cell in table.cells():
        if cell_done(cell, results_dir):
            reason = stale_reason(cell, results_dir, smoke)
            lines.append(f"  [done] {cell.key}" + (f"  (STALE: {reason})" if reason else ""))
            continue
        todo += 1
        if table.kind == "segmentation":
            owner = _feature_owner(cell)
            est = estimate_cell(cell, timings, smoke, runs_dir, features=owner not in extracted)
            extracted.add(owner)
            if cell.row.pretrain and owner in adapters and not est["reused"]:  # pre-trained by an earlier row
                est["known"] -= est["pretrain"] or 0.0
                est["pretrain"], est["reused"] = 0.0, True
                est["unmeasured"] = [u for u in est["unmeasured"] if not u.startswith("pretrain")]
                est["total"] = None if est["unmeasured"] else est["known"]
            if cell.row.pretrain:
                adapters.add(owner)
        else:
            est = estimate_cell(cell, timings, smoke)
        total += est["known"]
        unmeasured += est["total"] is None
        pre = (
            "reused" if est.get("reused") else _fmt_seconds(est["pretrain"]) if cell.row.pretrain else "none"
        )
        if table.kind == "segmentation":
            feats = "cached" if not est["features"] else _fmt_seconds(est["features"])
            detail = f"pretrain {pre}, features {feats}, decoder {_fmt_seconds(est['decoder'])}"
        else:
            detail = f"pretrain {pre}, probe {_fmt_seconds(est['probe'])}"
        if cell.knn:
            detail += f", k-NN {_fmt_seconds(est['knn'])}"
        mark = "" if est["total"] is not None else "  (UNMEASURED: " + ", ".join(est["unmeasured"]) + ")"
        lines.append(f"  [todo] {cell.key}: ~{_fmt_seconds(est['known'])} ({detail}){mark}")
    lines.append(
        f"  {todo} cell(s) to run, estimated {_fmt_seconds(total)} of measured time"
        + (f" plus {unmeasured} cell(s) with unmeasured parts" if unmeasured else "")
        + " (medians from results/timings.json on the machine named there)"
    )
    return "\n".join(lines)


#: The study's tables, in the order their costs are reported.
STUDY_TABLES = ("study", "study_secondary", "study_neighbours")


def study_costs(
    results_dir: str | Path | None = None, tables: Sequence[str] = STUDY_TABLES
) -> dict[str, Any]:
    """What the finished cells of the study cost, from their own records (minutes of one thread each).

    Returns ``{"rows": [...], "cell_hours": h, "cells": n, "machines": [...]}``; a row per (table, row,
    dataset) with ``n`` cells and the medians of ``wall`` (the whole cell), ``pretrain`` (a run trained by
    this cell: steps x seconds per step), ``s_per_step``, ``images_per_s``, ``probe`` (feature extraction and
    the probe head of the first readout), ``knn``; None where no cell measured it (a reused run, a table
    without k-NN). ``machines`` names each distinct (CPU, torch capability, precision) the cells ran on."""
    results_dir = results_path(results_dir)
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    machines, hours = set(), 0.0
    for table in tables:
        for c in load_cells(results_dir, table):
            groups.setdefault((table, c["row"], c["dataset"]), []).append(c)
            m = c.get("machine") or {}
            precision = (c.get("evaluation") or {}).get("machine", {}).get("precision") or m.get("precision")
            precision = precision or "precision not recorded"  # neighbour cells before the runner kept it
            machines.add(f"{m.get('cpu', '?')} ({m.get('cpu_capability', '?')}), {precision}")
            hours += c.get("wall_time_s", 0.0) / 3600

    def minutes(cells, get):
        values = [v / 60 for v in (get(c) for c in cells) if v is not None]
        return median(values)

    def own(c):  # the cell's pre-training record when this cell trained the run ({} when none or reused)
        pre = c.get("pretrain") or {}
        return pre if pre.get("mode") in ("new", "resumed") else {}

    rows = []
    for (table, row, dataset), cells in groups.items():
        rows.append(
            {
                "table": table,
                "row": row,
                "dataset": dataset,
                "n": len(cells),
                "wall": minutes(cells, lambda c: c.get("wall_time_s")),
                "pretrain": minutes(cells, lambda c: own(c).get("step_seconds_total")),
                "s_per_step": median([v for v in (own(c).get("seconds_per_step") for c in cells) if v]),
                "images_per_s": median(
                    [v for v in ((own(c).get("summary") or {}).get("images_per_s") for c in cells) if v]
                ),
                "probe": minutes(
                    cells, lambda c: ((c.get("evaluation") or {}).get("timings") or {}).get("total_s")
                ),
                "knn": minutes(cells, lambda c: (c.get("knn") or {}).get("seconds")),
            }
        )
    return {
        "rows": rows,
        "cell_hours": hours,
        "cells": sum(len(v) for v in groups.values()),
        "machines": sorted(machines),
    }


def study_costs_markdown(costs: dict[str, Any]) -> str:
    """:func:`study_costs` as a markdown table (minutes; one thread per cell), with the projected total of the
    planned cells: each group's median cell times its planned number, where a cell of it has finished."""

    def fmt(v, digits=1):
        return "-" if v is None else f"{v:.{digits}f}"

    rows, projected, unmeasured = [], 0.0, 0
    measured = {(r["table"], r["row"], r["dataset"]): r for r in costs["rows"]}
    for table in STUDY_TABLES:
        planned = Counter((table, c.row.name, c.dataset.name) for c in get_table(table).cells())
        for key, n_planned in planned.items():
            r = measured.get(key)
            if r is None or r["wall"] is None:
                unmeasured += n_planned
                continue
            projected += r["wall"] * n_planned / 60
            rows.append(
                [
                    f"{key[0]}/{key[1]}",
                    key[2],
                    f"{r['n']} of {n_planned}",
                    fmt(r["wall"]),
                    fmt(r["pretrain"]),
                    fmt(r["s_per_step"], 2),
                    fmt(r["images_per_s"]),
                    fmt(r["probe"]),
                    fmt(r["knn"]),
                ]
            )
    header = ["arm", "dataset", "cells", "cell", "pre-training", "s / step", "images / s", "probe", "k-NN"]
    text = markdown_table(header, rows)
    text += (
        f"\n\nMedian minutes per cell, one thread; measured on {'; '.join(costs['machines']) or '-'}. "
        f"Finished: {costs['cells']} cells, {costs['cell_hours']:.1f} cell-hours. Projected for the measured "
        f"arms' planned cells: {projected:.1f} cell-hours"
        + (f", plus {unmeasured} planned cells of arms with no finished cell yet." if unmeasured else ".")
    )
    return text
