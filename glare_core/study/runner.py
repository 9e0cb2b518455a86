"""Running cells: pre-train (or reuse a run folder), evaluate with the probe or a light decoder, k-NN.

Resuming: a cell whose JSON exists is skipped (nothing else is read, so ``runs/`` may be gone); a cell whose
run folder holds a ``checkpoint.pt`` but no finished export continues through
``pretrain(cfg, run_dir, resume=True)``; a finished run folder is not trained again (only evaluated).
A segmentation cell on an adapted backbone reuses the run folder of its adapter's cell when finished, else
pre-trains there, and records which parameters inference uses (:func:`inference_parameter_check`).

torch and the training code are imported inside the functions, like in :mod:`glare_core.study.configs`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import paths
from ..provenance import code_state, confirmatory_code_state
from .analysis import write_analysis
from .configs import adapter_cell, cost_key, probe_config, probe_datasets, seg_config, train_config
from .figures import table_figures
from .report import write_table_report
from .stats import median
from .store import (
    RUNTIME_KEYS,
    SCHEMA_VERSION,
    ResultFileError,
    cell_done,
    machine,
    now,
    results_path,
    save_record,
    stale_reason,
    with_added_fields,
)
from .tables import Cell, Table
from .timing import record_cell_timings, step_seconds


def pretrain_cell(cell: Cell, runs_dir: Path, smoke: bool = False) -> tuple[Any, dict[str, Any]]:
    """Pre-train a cell in its run folder (resuming or reusing it); returns (config, info)."""
    from ..train import CHECKPOINT, pretrain

    cfg = train_config(cell, smoke)
    run_dir = cell.run_dir(runs_dir)
    check_run_config(run_dir, cfg)
    finished = (run_dir / "summary.json").exists() and (run_dir / "adapter.safetensors").exists()
    resumable = (run_dir / CHECKPOINT).exists()
    t0 = time.perf_counter()
    if finished:
        summary = json.loads((run_dir / "summary.json").read_text())
        mode = "reused"
    else:
        mode = "resumed" if resumable else "new"
        if resumable:
            print(f"[experiment] {cell.key}: resuming pre-training from {run_dir / CHECKPOINT}", flush=True)
        if resumable:
            summary = pretrain(cfg, run_dir, resume=True)
        else:  # the folder holds at most a start without a checkpoint, found to be this cell's above
            summary = pretrain(cfg, run_dir, overwrite=True)
    steps = step_seconds(run_dir, cfg.batch_size)
    info = {
        "run_dir": str(run_dir),
        "mode": mode,
        "summary": summary,
        "session_seconds": time.perf_counter() - t0,
        "step_seconds_total": sum(steps),
        "seconds_per_step": median(steps[1:] or steps),
        "steps_timed": len(steps),
        "cost_key": cost_key(cfg),
    }
    return cfg, info


def check_run_config(run_dir: Path, cfg) -> None:
    """Refuse to resume or reuse a run folder whose ``config.json`` is not this cell's config (up to
    :data:`RUNTIME_KEYS`).

    Raises:
        ResultFileError: naming the folder and the first differing keys, with the fix.
    """
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ResultFileError(f"{path}: not valid JSON ({e}). Fix: delete {run_dir} to start afresh.") from e
    want = cfg.to_dict()
    saved = with_added_fields(saved)
    diff = sorted(k for k in set(saved) | set(want) if k not in RUNTIME_KEYS and saved.get(k) != want.get(k))
    if diff:
        raise ResultFileError(
            f"{run_dir}: its config.json differs from this cell's config in {diff[:6]} (another table "
            f"definition or a smoke run?). Fix: delete {run_dir} to pre-train this cell afresh."
        )


def _cell_identity(cell: Cell, smoke: bool) -> dict[str, Any]:
    """The fields that name a cell in its result JSON (first in every cell record)."""
    return {
        "schema": SCHEMA_VERSION,
        "table": cell.table.name,
        "row": cell.row.name,
        "row_label": cell.row.label,
        "row_group": cell.row.group,
        "dataset": cell.dataset.name,
        "dataset_label": cell.dataset.label,
        "seed": cell.seed,
        "smoke": smoke,
    }


def _cell_setup(cell: Cell, base_name: str) -> dict[str, Any]:
    """The set-up a cell's record names first in its ``config``: the base model, the row, the dataset and the
    table's preset."""
    return {
        "base": base_name,
        "row": dataclasses.asdict(cell.row),
        "dataset": dataclasses.asdict(cell.dataset),
        "table_preset": cell.table.preset,
    }


def _code_at_start(cell: Cell) -> dict[str, Any]:
    """The code a cell starts with (:func:`~glare_core.provenance.code_state`); a cell of a pre-registered
    table also records the pre-registration's commit and refuses to start on uncommitted code
    (:func:`~glare_core.provenance.confirmatory_code_state`)."""
    if cell.table.preregistration:
        return confirmatory_code_state(cell.table.preregistration)
    return code_state()


def _cell_provenance(cell: Cell, code: dict[str, Any], started: str, t0: float) -> dict[str, Any]:
    """Where and when a cell was computed: the code at its start (commit, uncommitted changes, the
    pre-registration's commit), machine, threads, start and end, wall time since ``t0``."""
    return {
        **code,
        "machine": machine(),
        "threads": cell.table.threads,
        "started": started,
        "finished": now(),
        "wall_time_s": time.perf_counter() - t0,
    }


def _cell_backbone(cell: Cell, train_cfg: Any, pre: dict[str, Any] | None) -> tuple[str, Any]:
    """The base model's name and the backbone a cell evaluates: the adapted one of its pre-training run
    (``pre``, ``train_cfg``), or, for a row without pre-training, the base model of the table's preset."""
    from ..config import preset
    from ..teacher import apply_adapter
    from ..weights import load_base

    if pre is None:
        base_name = preset(cell.table.preset).base
        return base_name, load_base(base_name, verbose=False)
    base_name = train_cfg.base
    adapter = Path(pre["run_dir"]) / cell.table.export
    return base_name, apply_adapter(load_base(base_name, verbose=False), adapter)


@contextlib.contextmanager
def _table_threads(cell: Cell) -> Iterator[None]:
    """Run with the table's torch thread count (``Table.threads``, when set); the previous count after."""
    import torch

    threads = torch.get_num_threads()
    if cell.table.threads:
        torch.set_num_threads(cell.table.threads)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _cell_metrics(
    scores: dict[str, Any], pre: dict[str, Any] | None, probe_seconds: float, knn: dict[str, Any] | None
) -> dict[str, Any]:
    """The metrics every cell records: the segmentation scores, k-NN (None without), the pre-training's
    trainable parameters and time, and the seconds the probe (or decoder) took."""
    return {
        "miou": scores["miou"],
        "pixel_acc": scores["pixel_acc"],
        "mean_acc": scores["mean_acc"],
        "per_class_iou": scores["per_class_iou"],
        "knn_top1": knn["top1"] if knn else None,
        "knn_top5": knn["top5"] if knn else None,
        "trainable_params": int(pre["summary"].get("trainable_params", 0)) if pre else 0,
        "pretrain_minutes": (pre["step_seconds_total"] / 60) if pre else 0.0,
        "pretrain_seconds_per_step": pre["seconds_per_step"] if pre else None,
        "probe_seconds": probe_seconds,
        "knn_seconds": knn["seconds"] if knn else None,
    }


def run_cell(cell: Cell, results_dir: Path, runs_dir: Path, smoke: bool = False) -> dict[str, Any]:
    """Run one cell end to end and write its JSON (atomically); returns the record.

    The probe reads the table's readouts from one feature extraction (the first is the cell's ``miou``);
    a table may add probes of the run's snapshots and of a transfer dataset (:func:`_further_probes`) and k-NN
    forgetting.
    """
    if cell.table.kind == "segmentation":
        return run_segmentation_cell(cell, results_dir, runs_dir, smoke)

    from ..evaluation import evaluate_readouts

    started, t0, code = now(), time.perf_counter(), _code_at_start(cell)
    train_cfg, pre = pretrain_cell(cell, runs_dir, smoke) if cell.row.pretrain else (None, None)
    base_name, backbone = _cell_backbone(cell, train_cfg, pre)

    probe = _uncached_if_adapted(probe_config(cell), pre)
    readouts = dict(cell.table.readouts) or {"probe": probe.layers}
    with _table_threads(cell):
        train_ds, val_ds = probe_datasets(cell.dataset)
        results = evaluate_readouts(backbone, train_ds, val_ds, readouts, probe)
        evaluation = next(iter(results.values()))
        further = _further_probes(cell, base_name, backbone, pre)
        knn = None
        if cell.knn:
            from ..knn import knn_forgetting

            knn = knn_forgetting(backbone, **cell.table.knn_settings)

    t = evaluation["timings"]  # one extraction for every readout, then a probe per readout
    probe_seconds = t["train_features_s"] + t["val_features_s"]
    for r in results.values():
        probe_seconds += r["timings"]["probe_train_s"] + r["timings"]["probe_eval_s"]
    metrics = _cell_metrics(evaluation, pre, probe_seconds, knn)
    record = {
        **_cell_identity(cell, smoke),
        "metrics": metrics,
        "readouts": {name: _scores(r) for name, r in results.items()} if cell.table.readouts else None,
        **further,
        "config": {
            **_cell_setup(cell, base_name),
            "table_overrides": list(cell.table.overrides),
            "train": train_cfg.to_dict() if train_cfg is not None else None,
            "probe": probe.to_dict(),
            "adapter_file": cell.table.export if pre else None,
            "knn": knn["settings"] if knn else None,
        },
        "pretrain": pre,
        "evaluation": {k: v for k, v in evaluation.items() if k not in ("per_class_iou", "config")},
        "knn": knn,
        **_cell_provenance(cell, code, started, t0),
    }
    save_record(record, cell.result_path(results_dir))
    return record


def _uncached_if_adapted(probe: Any, pre: dict[str, Any] | None) -> Any:
    """The probe protocol without the disk cache for an adapted backbone (``pre``: its pre-training): its
    features are read once (the base's are reused by every seed), and three readouts of 468 CamVid images
    at 448 x 336 take about 0.8 GB. The cache changes no number (it is not part of a cell's identity)."""
    return dataclasses.replace(probe, cache=False) if pre is not None else probe


def _scores(result: dict[str, Any]) -> dict[str, Any]:
    """What a cell keeps of one further probe: scores, blocks read, the confusion matrix, seconds."""
    keep = ("miou", "pixel_acc", "mean_acc", "per_class_iou", "confusion_matrix")
    return {
        **{k: result[k] for k in keep},
        "layers": result["backbone"]["layers"],
        "probe_seconds": result["timings"]["probe_train_s"] + result["timings"]["probe_eval_s"],
    }


def _further_probes(cell: Cell, base_name: str, backbone: Any, pre: dict[str, Any] | None) -> dict[str, Any]:
    """The probes a table adds to a pre-trained cell, at its first readout: ``snapshots`` ({step: scores}
    of the student's adapters saved after that step, in cells of ``snapshot_seeds``) and ``transfer``
    ({dataset: scores} of the cell's adapted ``backbone`` on each transfer target of this cell's dataset).
    Empty for a cell without pre-training or a table without them. The features of these adapted backbones
    are read once, so they stay out of the disk cache (:func:`_uncached_if_adapted`)."""
    from ..evaluation import evaluate_readouts
    from ..teacher import apply_adapter
    from ..train import snapshot_name
    from ..weights import load_base

    t, out = cell.table, {}
    if pre is None:
        return out
    first = dict(t.readouts[:1]) or {"probe": probe_config(cell).layers}
    snapshot_datasets = t.snapshot_datasets or (cell.dataset.name,)
    if t.snapshots and cell.seed in t.snapshot_seeds and cell.dataset.name in snapshot_datasets:
        train_ds, val_ds = probe_datasets(cell.dataset)
        probe = _uncached_if_adapted(probe_config(cell), pre)
        out["snapshots"] = {}
        for step in t.snapshots:
            snapshot = apply_adapter(
                load_base(base_name, verbose=False), Path(pre["run_dir"]) / snapshot_name(step)
            )
            result = evaluate_readouts(snapshot, train_ds, val_ds, first, probe)
            out["snapshots"][str(step)] = _scores(next(iter(result.values())))
    for source, target in t.transfer:
        if source == cell.dataset.name:
            train_ds, val_ds = probe_datasets(target)
            probe = _uncached_if_adapted(probe_config(dataclasses.replace(cell, dataset=target)), pre)
            result = evaluate_readouts(backbone, train_ds, val_ds, first, probe)
            out.setdefault("transfer", {})[target.name] = _scores(next(iter(result.values())))
    return out


#: A run folder written to less than this many seconds ago, without a finished export, is taken to be in use
#: by another process (e.g. ``glare experiment main`` pre-training the same adapter).
BUSY_SECONDS = 600


def _refuse_busy_run(run_dir: Path) -> None:
    """Refuse to pre-train in a run folder that another process seems to be writing right now.

    Raises:
        ResultFileError: naming the folder, how long ago it was written and the fix.
    """
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").exists() and (run_dir / "adapter.safetensors").exists():
        return
    files = [p for p in (run_dir / "metrics.jsonl", run_dir / "checkpoint.pt") if p.exists()]
    if not files:
        return
    age = time.time() - max(p.stat().st_mtime for p in files)
    if age < BUSY_SECONDS:
        raise ResultFileError(
            f"{run_dir}: pre-training there was written {age:.0f} s ago and is not finished; another process "
            "(glare experiment main?) seems to be training this adapter. Fix: let it finish, then run this "
            f"table again (it reuses the adapter); if no process uses the folder, run again after "
            f"{BUSY_SECONDS // 60} minutes (it then resumes from the checkpoint)."
        )


def inference_parameter_check(
    in_dim: int,
    num_classes: int,
    hidden: int,
    terms: Sequence[str],
    frozen_dim: int | None = None,
    ssr_heads: int = 8,
    pixel_dim: int = 128,
    patch_dim: int = 128,
) -> dict[str, Any]:
    """Which parameters the inference path of :class:`~glare_core.neighbours.segmentation.SegmentationModel`
    uses.

    Builds the model with the row's training-only modules, runs its inference ``forward`` (the path
    :func:`glare_core.neighbours.segmentation.train_segmentation` evaluates) on a random (1, C, 4, 4) map,
    back-propagates the sum of the logits and counts the parameters that receive a gradient: those are every
    parameter inference depends on. For PiPa and SSR, ``training_only_used_at_inference`` must be 0 and
    ``inference`` must equal ``decoder`` (the same count as the plain decoder's).

    Returns:
        ``inference`` (parameters reached by the inference path), ``decoder`` (the decoder's parameters),
        ``training_only`` (the other modules' parameters), ``training_only_used_at_inference``, ``modules``
        ({training-only module: parameters}).
    """
    import torch

    from ..neighbours.segmentation import SegmentationModel

    model = SegmentationModel(
        in_dim,
        num_classes,
        hidden,
        tuple(terms),
        pixel_dim=pixel_dim,
        patch_dim=patch_dim,
        frozen_dim=frozen_dim,
        ssr_heads=ssr_heads,
    ).eval()
    model(torch.randn(1, in_dim, 4, 4)).sum().backward()
    decoder = {id(p) for p in model.decoder.parameters()}
    used = [p for p in model.parameters() if p.grad is not None]
    extra = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in model.named_children()
        if name != "decoder" and module is not None
    }
    return {
        "inference": sum(p.numel() for p in used),
        "decoder": sum(p.numel() for p in model.decoder.parameters()),
        "training_only": sum(p.numel() for p in model.parameters() if id(p) not in decoder),
        "training_only_used_at_inference": sum(p.numel() for p in used if id(p) not in decoder),
        "modules": extra,
    }


def run_segmentation_cell(
    cell: Cell, results_dir: Path, runs_dir: Path, smoke: bool = False
) -> dict[str, Any]:
    """One cell of a ``kind="segmentation"`` table: a light decoder with the row's extra terms, on the frozen
    base (``pretrain=False``) or on the adapted backbone of :func:`adapter_cell` (its run folder reused when
    finished, else pre-trained there with :func:`pretrain_cell`), scored on val; writes the cell JSON.

    SSR's frozen encoder is the frozen base: on the base rows it is the evaluated backbone itself (the same
    cached features), on the adapted rows the base without the adapter.
    """
    from ..neighbours.segmentation import train_segmentation
    from ..weights import load_base

    started, t0, code = now(), time.perf_counter(), _code_at_start(cell)
    train_cfg, pre, source = None, None, None
    if cell.row.pretrain:
        source = adapter_cell(cell, smoke)
        _refuse_busy_run(source.run_dir(runs_dir))
        train_cfg, pre = pretrain_cell(source, runs_dir, smoke)
        pre["source_cell"] = f"{source.table.name}/{source.key}"
    base_name, backbone = _cell_backbone(cell, train_cfg, pre)
    terms = tuple(cell.row.terms)
    encoder, encoder_name = None, None
    if "ssr" in terms:
        if cell.row.pretrain:
            encoder, encoder_name = (
                load_base(base_name, verbose=False),
                f"frozen base {base_name} (no adapter)",
            )
        else:
            encoder_name = f"frozen base {base_name} (the evaluated backbone itself)"

    seg = seg_config(cell)
    with _table_threads(cell):
        train_ds, val_ds = probe_datasets(cell.dataset)
        result = train_segmentation(backbone, train_ds, val_ds, seg, extra_terms=terms, ssr_encoder=encoder)

    frozen_dim = encoder.embed_dim if encoder is not None else backbone.embed_dim
    check = inference_parameter_check(
        len(result["backbone"]["layers"]) * backbone.embed_dim,
        len(result["classes"]),
        seg.hidden_dim,
        terms,
        frozen_dim=frozen_dim if "ssr" in terms else None,
        ssr_heads=seg.ssr.num_heads,
        pixel_dim=seg.pixel_contrast.proj_dim,
        patch_dim=seg.patch_consistency.proj_dim,
    )
    check["matches_trained_model"] = (
        check["inference"] == result["parameters"]["inference"]
        and check["training_only"] == result["parameters"]["training_only"]
    )
    t = result["timings"]
    metrics = {
        **_cell_metrics(result, pre, t["total_s"], knn=None),
        "inference_params": result["parameters"]["inference"],
        "training_only_params": result["parameters"]["training_only"],
        "decoder_seconds_per_step": t["step_s"],
        "decoder_train_seconds": t["train_s"],
    }
    record = {
        **_cell_identity(cell, smoke),
        "terms": list(terms),
        "backbone": "adapted" if cell.row.pretrain else "base",
        "metrics": metrics,
        "config": {
            **_cell_setup(cell, base_name),
            "adapter_source": f"{source.table.name}/{source.key}" if source else None,
            "adapter_file": cell.table.export if pre else None,
            "train": train_cfg.to_dict() if train_cfg is not None else None,
            "segmentation": seg.to_dict(),
            "ssr_encoder": encoder_name,
        },
        "pretrain": pre,
        "inference_check": check,
        "evaluation": {k: v for k, v in result.items() if k not in ("per_class_iou", "config", "machine")},
        **_cell_provenance(cell, code, started, t0),
        "machine": {
            **machine(),
            "torch_threads": result["machine"]["threads"],
            "precision": result["machine"]["train_precision"],  # the decoder's autocast
        },
    }
    save_record(record, cell.result_path(results_dir))
    return record


def run_table(
    table: Table,
    results_dir: str | Path | None = None,
    runs_dir: str | Path | None = None,
    smoke: bool = False,
    only: Sequence[str] | None = None,
    report_after: bool = True,
    figures: bool = True,
) -> list[dict[str, Any]]:
    """Run every cell of a table that has no JSON yet (resumable; see the module docstring).

    Args:
        table: the table (``smoke_table(get_table(name))`` for smoke settings).
        results_dir, runs_dir: where cell JSONs and run folders go (default:
            :func:`glare_core.paths.results_dir` and :func:`glare_core.paths.runs_dir`).
        smoke: the cells use smoke settings (recorded in each JSON).
        only: run only cells whose key contains one of these strings (e.g. ``["base__camvid__seed0"]``).
        report_after: rebuild the table's CSV / markdown after each cell (and figures at the end).

    Returns:
        The records of the cells run now (skipped cells are not re-read).
    """
    results_dir = results_path(results_dir)
    runs_dir = Path(runs_dir) if runs_dir is not None else paths.runs_dir()
    if table.kind == "bench":
        return [run_bench(table, results_dir, smoke)]
    done_now = []
    cells = [c for c in table.cells() if not only or any(o in c.key for o in only)]
    for i, cell in enumerate(cells):
        if cell_done(cell, results_dir):
            reason = stale_reason(cell, results_dir, smoke)
            note = f" (STALE: {reason}; delete the file to recompute)" if reason else ""
            print(f"[experiment] {i + 1}/{len(cells)} {cell.key}: done, skipped{note}", flush=True)
            continue
        print(f"[experiment] {i + 1}/{len(cells)} {cell.key}: running", flush=True)
        record = run_cell(cell, results_dir, runs_dir, smoke)
        record_cell_timings(results_dir, record)
        m = record["metrics"]
        knn = f", k-NN top-1 {100 * m['knn_top1']:.1f} %" if m["knn_top1"] is not None else ""
        print(
            f"[experiment] {cell.key}: mIoU {100 * m['miou']:.1f} %{knn}, "
            f"{record['wall_time_s'] / 60:.1f} min -> {cell.result_path(results_dir)}",
            flush=True,
        )
        done_now.append(record)
        if report_after:
            write_table_report(results_dir, table.name)
            if table.preregistration and not smoke:  # the pre-registered analysis of the cells so far
                write_analysis(results_dir)
    if report_after and figures and write_table_report(results_dir, table.name):
        table_figures(results_dir, table.name)
    return done_now


def run_bench(table: Table, results_dir: Path, smoke: bool = False) -> dict[str, Any]:
    """The efficiency table: :func:`glare_core.bench.benchmark` into ``<results>/<table>/bench.json``
    (skipped when it exists; to measure another machine, first rename it to ``bench_<machine>.json``, which
    chapter 11 and the report then show beside the new one). Five interleaved rounds: on a shared machine
    three left the best round too dependent on one undisturbed step."""
    from ..bench import benchmark

    out = Path(results_dir) / table.name / "bench.json"
    if out.exists():
        print(f"[experiment] {out} exists, skipped", flush=True)
        return json.loads(out.read_text())
    threads = table.threads or 1
    kwargs = dict(base="random:test_vit", steps=1, batch_size=2) if smoke else dict(steps=5, threads=threads)
    result = benchmark(out=out, **kwargs)  # records the commit at its start
    result["smoke"] = smoke
    save_record(result, out)
    return result
