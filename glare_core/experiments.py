"""The experiments: tables defined as data, a resumable runner, and the aggregation the book reads.

A **table** (:class:`Table`) is rows x datasets x seeds. A **row** (:class:`Row`) is one compared method:
the ``--set`` overrides it applies to the table's training config (``glare_core.config``), or no continual
pre-training at all (the base model). A **cell** (:class:`Cell`) is one (row, dataset, seed): pre-train the
row on the dataset's unlabelled train images (seed = training seed), then evaluate the adapted backbone with
the table's linear-probe protocol (:func:`glare_core.evaluation.evaluate_backbone`, probe seed = the same
seed) and, for the main table, k-NN forgetting on Tiny-ImageNet (:func:`glare_core.knn.knn_forgetting`).

Layout (see ``results/README.md``)::

    results/<table>/cells/<row>__<dataset>__seed<k>.json   one finished cell: config, metrics, commit, machine
    results/<table>/cells.csv                               one line per cell
    results/<table>/summary.csv, summary.md                 mean +- std over seeds per (row, dataset)
    results/<table>/per_class_iou.csv                       mean per-class IoU per (row, dataset)
    results/<table>/*.png                                   figures (glare_core.plots)
    results/timings.json                                    measured step / probe / k-NN times (--dry-run)
    runs/experiments/<table>/<cell>/                        pre-training run folders (git-ignored)

Resuming: a cell whose JSON exists is skipped (nothing else is read, so ``runs/`` may be gone); a cell whose
run folder holds a ``checkpoint.pt`` but no finished export continues through
``pretrain(cfg, run_dir, resume=True)``; a finished run folder is not trained again (only evaluated).

Every number in a cell JSON is measured by this code on the machine recorded beside it; :func:`report`
rebuilds every CSV, markdown table and figure from the cell files alone.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import importlib.util
import io
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .paths import REPO_ROOT

SCHEMA_VERSION = 1
RESULTS_DIR = REPO_ROOT / "results"
RUNS_DIR = REPO_ROOT / "runs" / "experiments"
TIMINGS_FILE = "timings.json"
#: Keys every cell JSON must have (checked when a cell is read back).
REQUIRED_KEYS = ("schema", "table", "row", "dataset", "seed", "metrics", "config", "git_commit", "machine")


class ResultFileError(ValueError):
    """A result file that cannot be read or lacks required fields; the message names the file and the fix."""


class NotYetAvailableError(NotImplementedError):
    """A table whose code does not exist yet (the PiPa / SSR neighbours)."""


# ============================================================================================ definitions
@dataclass(frozen=True)
class Row:
    """One compared method.

    Attributes:
        name: identifier used in file names (``glare``, ``dino_lora`` ...).
        label: human-readable name for tables and figures.
        overrides: ``key=value`` items applied to the table's training config (``glare_core.config``).
        pretrain: False for the base model (evaluated as loaded, no continual pre-training).
        data_fraction: fraction of the dataset's pre-training images to use (the "amount of target data"
            ablation); the subset is chosen with the dataset's fixed ``subset_seed``.
        group: ablation group for figures ("terms", "patch augmentation" ...); "" for none.
    """

    name: str
    label: str
    overrides: tuple[str, ...] = ()
    pretrain: bool = True
    data_fraction: float = 1.0
    group: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """One target domain (a column of a table).

    Attributes:
        name: identifier in file names (``camvid``, ``idd_lite367``).
        label: human-readable name.
        dataset: name for :func:`glare_core.data.build_dataset`.
        train_limit: the reduced train split (pre-training images *and* probe training labels); None = all.
        subset_seed: seed choosing the reduced split, fixed across the table's seeds.
        probe_size: probe input (W, H) before rounding to the patch multiple.
        num_images: synthetic only: images per split (train, val).
        image_size: synthetic only: (H, W).
    """

    name: str
    label: str
    dataset: str
    train_limit: int | None = None
    subset_seed: int = 0
    probe_size: tuple[int, int] = (448, 336)
    num_images: tuple[int, int] = (16, 8)
    image_size: tuple[int, int] = (64, 96)


@dataclass(frozen=True)
class Table:
    """A table as data: rows x datasets x seeds, the shared training config and the probe protocol.

    Attributes:
        name: folder name under ``results/``.
        title: caption.
        kind: ``"cells"`` (pre-train + probe per cell), ``"bench"`` (runs :mod:`glare_core.bench`) or
            ``"placeholder"`` (not yet available).
        rows, datasets, seeds: the grid.
        preset: training preset every pre-training row starts from.
        overrides: the table's scale (``--set`` items applied before each row's own overrides).
        probe: :class:`glare_core.evaluation.ProbeConfig` fields shared by every row (``size`` and ``seed``
            come from the dataset and the cell).
        knn: also measure k-NN top-1 on Tiny-ImageNet (forgetting) for every cell.
        knn_settings: keyword arguments of :func:`glare_core.knn.knn_forgetting`.
        knn_seeds: measure k-NN only in cells of these seeds (None: every seed). Forgetting is a property of
            a trained model, and k-NN over 6,060 images costs as much as a probe.
        threads: torch CPU threads for the probe and k-NN (None: torch's default); pre-training uses the
            config's ``num_threads``. One thread suits a 2-core machine shared with other jobs.
        note: why the table is shaped this way (shown by ``glare experiment list``).
    """

    name: str
    title: str
    kind: str = "cells"
    rows: tuple[Row, ...] = ()
    datasets: tuple[DatasetSpec, ...] = ()
    seeds: tuple[int, ...] = (0,)
    preset: str = "cpu"
    overrides: tuple[str, ...] = ()
    probe: dict[str, Any] = field(default_factory=dict)
    knn: bool = False
    knn_settings: dict[str, Any] = field(default_factory=dict)
    knn_seeds: tuple[int, ...] | None = None
    threads: int | None = 1
    note: str = ""

    def cells(self) -> list[Cell]:
        """Every cell, in run order: seeds outermost, so a partial run already covers each row once."""
        return [Cell(self, r, d, s) for s in self.seeds for d in self.datasets for r in self.rows]

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"table {self.name!r} has no row {name!r}")


@dataclass(frozen=True)
class Cell:
    """One (row, dataset, seed) of a table."""

    table: Table
    row: Row
    dataset: DatasetSpec
    seed: int

    @property
    def knn(self) -> bool:
        """Whether this cell measures k-NN forgetting."""
        seeds = self.table.knn_seeds
        return self.table.knn and (seeds is None or self.seed in seeds)

    @property
    def key(self) -> str:
        """``<row>__<dataset>__seed<k>``: the result file's stem and the run folder's name."""
        return f"{self.row.name}__{self.dataset.name}__seed{self.seed}"

    def result_path(self, results_dir: Path) -> Path:
        return Path(results_dir) / self.table.name / "cells" / f"{self.key}.json"

    def run_dir(self, runs_dir: Path) -> Path:
        return Path(runs_dir) / self.table.name / self.key


# ------------------------------------------------------------------------------------------ the scale
#: The pre-training scale of the CPU tables (from the ``cpu`` preset; reasoning and step times in
#: ``results/README.md``): 112 px views (8 x 8 cells of 14 px), batch 16, 100 steps (4.4 epochs of 367
#: images), 20 head warm-up steps. Measured on the 2-core machine, one thread, busy: 4.1 s per GLARE step at
#: 112 px vs 7.4-10.4 s at the cpu preset's 168 px.
CPU_SCALE = (
    "objective.views.global_size=112",
    "load_size=224",
    "batch_size=16",
    "steps=100",
    # A 100-step run needs a teacher that follows the student and heads that see a signal (results/tuning/):
    # with DINO's EMA momentum 0.996 -> 1 the exported teacher adapter kept under 10 % of the student's
    # change and the probe did not move; new heads start on standardised tokens (``heads.init=data``).
    "momentum_teacher=0.99",
    "heads.init=data",
    "lr=1e-3",
    "head_warmup_steps=20",
    "checkpoint_every=20",
    "log_every=10",
    "num_threads=1",
)
#: The probe protocol of every CPU table, pinned here so that a later change of ``ProbeConfig``'s defaults
#: cannot change it under finished cells: last block, BatchNorm + 1x1 conv, AdamW, 1000 steps, batch 8,
#: lr 3e-2 (chosen on CamVid val by ``glare_core.evaluation``'s author: 49.2 / 52.9 / 55.3 / 56.0 / 54.0 mIoU
#: at 1e-3 / 3e-3 / 1e-2 / 3e-2 / 1e-1), training loss at half label resolution (about 4x cheaper).
CPU_PROBE = {
    "layers": "last",
    "head": "linear",
    "steps": 1000,
    "batch_size": 8,
    "lr": 3e-2,
    "weight_decay": 1e-4,
    "optimizer": "adamw",
    "warmup_steps": 50,
    "flip": True,
    "label_scale": 0.5,
}
#: k-NN forgetting: Tiny-ImageNet images are 64 px, so 112 px inputs (8 x 8 tokens) lose no source detail
#: and cost a quarter of 224 px; 20 bank images per class, all 202 classes, 2,020 queries.
CPU_KNN = {"size": 112, "per_class": 20}

#: k-NN in smoke runs (``knn``'s own smoke settings, which it applies only under ``GLARE_SMOKE=1``).
SMOKE_KNN = {"size": 112, "per_class": 5, "max_classes": 10}

DINO_ONLY = ("objective.use_local=false", "objective.use_regional=false")
CAMVID = DatasetSpec("camvid", "CamVid", "camvid", probe_size=(448, 336))
IDD367 = DatasetSpec(
    "idd_lite367", "IDD-Lite (367 train)", "idd_lite", train_limit=367, probe_size=(448, 318)
)


def _main() -> Table:
    rows = (
        Row("base", "base (no continual pre-training)", pretrain=False),
        Row("dino_adapter", "DINO-only, adapter", DINO_ONLY),
        Row("dino_lora", "DINO-only, LoRA", (*DINO_ONLY, "tuning=lora", "rank=8")),
        # Full fine-tuning: DINO's own learning-rate rule, 5e-4 * 16 / 256 = 3.1e-5 (lr=none), not the
        # adapters' 2e-4; the new heads then train at that rate too.
        Row("dino_full", "DINO-only, full fine-tuning", (*DINO_ONLY, "tuning=full", "lr=none")),
        Row("glare", "GLARE (G+L+R), adapter"),
    )
    return Table(
        "main",
        "Continual pre-training on CamVid and IDD-Lite (367 images): linear-probe mIoU on val",
        rows=rows,
        datasets=(CAMVID, IDD367),
        seeds=(0, 1, 2),
        overrides=CPU_SCALE,
        probe=CPU_PROBE,
        knn=True,
        knn_settings=CPU_KNN,
        knn_seeds=(0,),
        note="3 seeds (pre-training and probe seed); IDD-Lite subset fixed (seed 0); k-NN on seed 0 only",
    )


def _ablations() -> Table:
    g, gl, gr = (
        ("objective.use_local=false", "objective.use_regional=false"),
        ("objective.use_regional=false",),
        ("objective.use_local=false",),
    )
    rows = (
        Row("G", "G", g, group="terms"),
        Row("G_L", "G+L", gl, group="terms"),
        Row("G_R", "G+R", gr, group="terms"),
        Row("G_L_R", "G+L+R (GLARE, the reference)", group="terms"),
        Row(
            "patch_mask",
            "patch mask (mean colour)",
            ("objective.patch_aug.kind=mask_mean",),
            group="patch aug",
        ),
        Row("patch_noise", "patch noise", ("objective.patch_aug.kind=noise",), group="patch aug"),
        Row("sampling_uniform", "uniform region sampling", ("objective.sampling=uniform",), group="sampling"),
        Row(
            "corr_geometric",
            "geometric correspondence",
            ("objective.correspondence=geometric",),
            group="correspondence",
        ),
        Row("rank16", "adapter r=16", ("rank=16",), group="bottleneck"),
        Row("rank256", "adapter r=256", ("rank=256",), group="bottleneck"),
        Row("data25", "25 % of target data", data_fraction=0.25, group="target data"),
        Row("data50", "50 % of target data", data_fraction=0.5, group="target data"),
    )
    return Table(
        "ablations",
        "GLARE ablations on CamVid (1 seed): linear-probe mIoU on val",
        rows=rows,
        datasets=(CAMVID,),
        seeds=(0,),
        overrides=CPU_SCALE,
        probe=CPU_PROBE,
        note="the reference row G_L_R is blur / attention / cross-attention / r=64 / 100 % at once",
    )


def _efficiency() -> Table:
    return Table("efficiency", "Training-step benchmark (glare_core.bench)", kind="bench")


def _neighbours() -> Table:
    """PLACEHOLDER (a later issue): PiPa and SSR on the same benchmark, once ``glare_core.segmentation``
    exists. Running it raises :class:`NotYetAvailableError`."""
    return Table(
        "neighbours",
        "PiPa / SSR on the same benchmark (placeholder: not yet available)",
        kind="placeholder",
        note="needs glare_core.segmentation (a later issue)",
    )


TABLES: dict[str, Callable[[], Table]] = {
    "main": _main,
    "ablations": _ablations,
    "efficiency": _efficiency,
    "neighbours": _neighbours,
}


def get_table(name: str) -> Table:
    """A table by name (``main``, ``ablations``, ``efficiency``, ``neighbours``)."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; choose one of {sorted(TABLES)}")
    return TABLES[name]()


def smoke_table(table: Table) -> Table:
    """The same grid with smoke settings: ``random:test_vit``, synthetic scenes, the smoke presets.

    Every dataset becomes synthetic (keeping its name, so cells map one to one) and k-NN stays on only if
    Tiny-ImageNet is present (it then runs with :data:`SMOKE_KNN`: 10 classes, 5 bank images each, 112 px).
    """
    from .paths import find_dataset_dir

    datasets = tuple(
        DatasetSpec(d.name, f"{d.label} (synthetic)", "synthetic", probe_size=(112, 84))
        for d in table.datasets
    )
    has_knn = find_dataset_dir("tinyimagenet", "tinyimagenet", "tiny-imagenet") is not None
    return dataclasses.replace(
        table,
        datasets=datasets,
        preset="smoke",
        overrides=(),
        probe={"smoke": True},
        knn=table.knn and has_knn,
        knn_settings=dict(SMOKE_KNN),
    )


# ============================================================================================ configs
def with_threads(table: Table, threads: int) -> Table:
    """The same table run with ``threads`` CPU threads (pre-training, probe and k-NN); e.g. 2 on an idle
    2-core machine. Results do not depend on it beyond floating-point noise; step times do."""
    if threads < 1:
        raise ValueError(f"threads={threads} must be >= 1")
    return dataclasses.replace(table, threads=threads, overrides=(*table.overrides, f"num_threads={threads}"))


def train_config(cell: Cell, smoke: bool = False):
    """The :class:`glare_core.config.TrainConfig` of a pre-training cell.

    Order: the table's preset, the table's scale overrides, the dataset (name, reduced split, fixed subset
    seed), the cell's seed, then the row's own overrides.
    """
    from .config import apply_overrides, preset

    t, d = cell.table, cell.dataset
    cfg = preset(t.preset)
    apply_overrides(cfg, list(t.overrides))
    cfg.dataset = d.dataset
    cfg.limit = d.train_limit
    cfg.limit_seed = d.subset_seed
    if cell.row.data_fraction != 1.0:
        total = d.train_limit or (d.num_images[0] if d.dataset == "synthetic" else _train_size(d))
        cfg.limit = max(1, round(cell.row.data_fraction * total))
    elif d.dataset == "synthetic":
        cfg.limit = d.num_images[0]
    cfg.seed = cell.seed
    apply_overrides(cfg, list(cell.row.overrides))
    cfg.output_dir = None
    return cfg.validate()


def probe_config(cell: Cell):
    """The probe protocol of a cell: the table's fields, the dataset's size, the cell's seed."""
    from .evaluation import ProbeConfig

    values = dict(cell.table.probe)
    smoke = bool(values.pop("smoke", False))
    values.update(size=tuple(cell.dataset.probe_size), seed=cell.seed)
    return ProbeConfig.smoke(**values) if smoke else ProbeConfig(**values)


def _train_size(spec: DatasetSpec) -> int:
    from .data import build_dataset

    return len(build_dataset(spec.dataset, "train", labels=False))


def probe_datasets(spec: DatasetSpec):
    """(train, val) labelled datasets of the probe: the reduced train split (fixed subset), the full val."""
    from .data import build_dataset

    if spec.dataset == "synthetic":
        n_train, n_val = spec.num_images
        train = build_dataset("synthetic", "train", num_images=n_train, size=spec.image_size, seed=0)
        val = build_dataset("synthetic", "val", num_images=n_val, size=spec.image_size, seed=1)
        return train, val
    train = build_dataset(spec.dataset, "train", limit=spec.train_limit, seed=spec.subset_seed)
    val = build_dataset(spec.dataset, "val")
    return train, val


def cost_key(cfg) -> str:
    """What a pre-training step's cost depends on: tuning, rank, active terms, view size, batch, precision.

    (The patch-augmentation kind, the region sampling and the correspondence change a step's cost little and
    share their row's key.)
    """
    o = cfg.objective
    terms = "".join(c for c, on in (("G", o.use_global), ("L", o.use_local), ("R", o.use_regional)) if on)
    return (
        f"{cfg.base}|{cfg.tuning}|r{cfg.rank}|{terms}|{o.views.global_size}px|B{cfg.batch_size}|"
        f"{cfg.precision}|threads{cfg.num_threads or 'all'}"
    )


# ============================================================================================ provenance
def git_commit() -> str:
    """``git rev-parse HEAD`` of the repository, or ``"unknown"``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    """CPU model, cores, torch version, threads, load average, GPU (:func:`glare_core.bench.machine_info`)."""
    try:
        from .bench import machine_info

        info = machine_info()
    except Exception:  # noqa: BLE001 - provenance must never stop a run
        import torch

        info = {"cpu": platform.processor() or "unknown", "cores": os.cpu_count(), "torch": torch.__version__}
    info["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    info["hostname_hash"] = hash(platform.node()) & 0xFFFF
    return info


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ============================================================================================ one cell
def _step_seconds(run_dir: Path, batch_size: int) -> list[float]:
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


def pretrain_cell(cell: Cell, runs_dir: Path, smoke: bool = False) -> tuple[Any, dict[str, Any]]:
    """Pre-train a cell in its run folder (resuming or reusing it); returns (config, info)."""
    from .train import CHECKPOINT, pretrain

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
        summary = pretrain(cfg, run_dir, resume=resumable)
    steps = _step_seconds(run_dir, cfg.batch_size)
    info = {
        "run_dir": str(run_dir),
        "mode": mode,
        "summary": summary,
        "session_seconds": time.perf_counter() - t0,
        "step_seconds_total": sum(steps),
        "seconds_per_step": _median(steps[1:] or steps),
        "steps_timed": len(steps),
        "cost_key": cost_key(cfg),
    }
    return cfg, info


#: Config keys that change speed or logging only; a run folder may be resumed with other values.
RUNTIME_KEYS = ("num_threads", "num_workers", "log_every")


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
    diff = sorted(k for k in set(saved) | set(want) if k not in RUNTIME_KEYS and saved.get(k) != want.get(k))
    if diff:
        raise ResultFileError(
            f"{run_dir}: its config.json differs from this cell's config in {diff[:6]} (another table "
            f"definition or a smoke run?). Fix: delete {run_dir} to pre-train this cell afresh."
        )


def run_cell(cell: Cell, results_dir: Path, runs_dir: Path, smoke: bool = False) -> dict[str, Any]:
    """Run one cell end to end and write its JSON (atomically); returns the record."""
    import torch

    from .evaluation import evaluate_backbone, save_result
    from .teacher import apply_adapter
    from .weights import load_base

    started, t0 = _now(), time.perf_counter()
    train_cfg, pre = None, None
    if cell.row.pretrain:
        train_cfg, pre = pretrain_cell(cell, runs_dir, smoke)
        base_name = train_cfg.base
        backbone = apply_adapter(
            load_base(base_name, verbose=False), Path(pre["run_dir"]) / "adapter.safetensors"
        )
    else:  # the base model of the table's preset, as loaded
        from .config import preset

        base_name = preset(cell.table.preset).base
        backbone = load_base(base_name, verbose=False)

    probe = probe_config(cell)
    threads = torch.get_num_threads()
    if cell.table.threads:
        torch.set_num_threads(cell.table.threads)
    try:
        train_ds, val_ds = probe_datasets(cell.dataset)
        evaluation = evaluate_backbone(backbone, train_ds, val_ds, probe)
        knn = None
        if cell.knn:
            from .knn import knn_forgetting

            knn = knn_forgetting(backbone, **cell.table.knn_settings)
    finally:
        torch.set_num_threads(threads)

    trainable = int(pre["summary"].get("trainable_params", 0)) if pre else 0
    metrics = {
        "miou": evaluation["miou"],
        "pixel_acc": evaluation["pixel_acc"],
        "mean_acc": evaluation["mean_acc"],
        "per_class_iou": evaluation["per_class_iou"],
        "knn_top1": knn["top1"] if knn else None,
        "knn_top5": knn["top5"] if knn else None,
        "trainable_params": trainable,
        "pretrain_minutes": (pre["step_seconds_total"] / 60) if pre else 0.0,
        "pretrain_seconds_per_step": pre["seconds_per_step"] if pre else None,
        "probe_seconds": evaluation["timings"]["total_s"],
        "knn_seconds": knn["seconds"] if knn else None,
    }
    record = {
        "schema": SCHEMA_VERSION,
        "table": cell.table.name,
        "row": cell.row.name,
        "row_label": cell.row.label,
        "row_group": cell.row.group,
        "dataset": cell.dataset.name,
        "dataset_label": cell.dataset.label,
        "seed": cell.seed,
        "smoke": smoke,
        "metrics": metrics,
        "config": {
            "base": base_name,
            "row": dataclasses.asdict(cell.row),
            "dataset": dataclasses.asdict(cell.dataset),
            "table_preset": cell.table.preset,
            "table_overrides": list(cell.table.overrides),
            "train": train_cfg.to_dict() if train_cfg is not None else None,
            "probe": probe.to_dict(),
            "knn": knn["settings"] if knn else None,
        },
        "pretrain": pre,
        "evaluation": {k: v for k, v in evaluation.items() if k not in ("per_class_iou", "config")},
        "knn": knn,
        "git_commit": git_commit(),
        "machine": machine(),
        "threads": cell.table.threads,
        "started": started,
        "finished": _now(),
        "wall_time_s": time.perf_counter() - t0,
    }
    save_result(record, cell.result_path(results_dir))
    return record


# ============================================================================================ reading results
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


#: Recorded config keys that do not change a cell's numbers (compared by :func:`stale_reason`).
_PROBE_RUNTIME = ("cache", "num_workers", "feature_batch_size", "eval_batch_size")


def stale_reason(cell: Cell, results_dir: Path, smoke: bool = False) -> str | None:
    """Why a finished cell no longer matches the table's current definition (None: it matches).

    Compares the recorded probe protocol and training config with :func:`probe_config` and
    :func:`train_config`. A stale cell is still skipped by the runner (its JSON exists); delete the file to
    recompute it with the current definition.
    """
    record = read_cell(cell.result_path(results_dir))
    want = probe_config(cell).to_dict()
    got = record["config"].get("probe") or {}
    diff = sorted(k for k in want if k not in _PROBE_RUNTIME and got.get(k) != want[k])
    if diff:
        return "probe " + ", ".join(f"{k}={got.get(k)!r} (now {want[k]!r})" for k in diff)
    if cell.row.pretrain:
        want_t = train_config(cell, smoke).to_dict()
        got_t = record["config"].get("train") or {}
        diff = sorted(k for k in want_t if k not in RUNTIME_KEYS and got_t.get(k) != want_t[k])
        if diff:
            return "train config " + ", ".join(diff)
    return None


def _median(values: Sequence[float]) -> float | None:
    v = sorted(values)
    if not v:
        return None
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (n - 1 in the denominator; None for one value) of the non-None
    values, and their count."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return None, None, 0
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
    return mean, std, len(v)


SUMMARY_METRICS = (
    "miou",
    "pixel_acc",
    "knn_top1",
    "trainable_params",
    "pretrain_minutes",
    "probe_seconds",
)


def table_summary(results_dir: str | Path, table: str) -> list[dict[str, Any]]:
    """:func:`summarise` of a table's cells, rows and datasets in the table definition's order (if known)."""
    cells = load_cells(results_dir, table)
    if table in TABLES:
        t = TABLES[table]()
        rows = {r.name: i for i, r in enumerate(t.rows)}
        datasets = {d.name: i for i, d in enumerate(t.datasets)}

        def order(c: dict[str, Any]) -> tuple[int, int, int]:
            return rows.get(c["row"], len(rows)), datasets.get(c["dataset"], len(datasets)), c["seed"]

        cells = sorted(cells, key=order)
    return summarise(cells)


def summarise(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean +- std over seeds per (row, dataset), in first-seen order of rows and datasets.

    Returns:
        One dict per (row, dataset): ``row``, ``row_label``, ``row_group``, ``dataset``, ``dataset_label``,
        ``seeds`` (list), ``n``, then ``<metric>_mean`` and ``<metric>_std`` for :data:`SUMMARY_METRICS`, and
        ``per_class_iou_mean`` ({class: mean IoU or None}).
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["row"], c["dataset"]), []).append(c)
    out = []
    for (row, ds), members in groups.items():
        first = members[0]
        entry: dict[str, Any] = {
            "row": row,
            "row_label": first.get("row_label", row),
            "row_group": first.get("row_group", ""),
            "dataset": ds,
            "dataset_label": first.get("dataset_label", ds),
            "seeds": sorted(c["seed"] for c in members),
            "n": len(members),
        }
        for m in SUMMARY_METRICS:
            mean, std, _ = mean_std(c["metrics"].get(m) for c in members)
            entry[f"{m}_mean"], entry[f"{m}_std"] = mean, std
        classes: list[str] = []
        for c in members:
            classes += [k for k in c["metrics"].get("per_class_iou", {}) if k not in classes]
        entry["per_class_iou_mean"] = {
            k: mean_std(c["metrics"].get("per_class_iou", {}).get(k) for c in members)[0] for k in classes
        }
        out.append(entry)
    return out


# ============================================================================================ CSV / markdown
CELL_COLUMNS = (
    "table",
    "row",
    "dataset",
    "seed",
    "miou",
    "pixel_acc",
    "mean_acc",
    "knn_top1",
    "knn_top5",
    "trainable_params",
    "pretrain_minutes",
    "pretrain_seconds_per_step",
    "probe_seconds",
    "knn_seconds",
    "wall_time_s",
    "git_commit",
    "cpu",
    "smoke",
)


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in r])
    return buf.getvalue()


def cells_csv(cells: Sequence[dict[str, Any]]) -> str:
    """One CSV line per cell (:data:`CELL_COLUMNS`)."""

    def line(c: dict[str, Any]) -> list[Any]:
        m = c["metrics"]
        extra = {
            "table": c["table"],
            "row": c["row"],
            "dataset": c["dataset"],
            "seed": c["seed"],
            "wall_time_s": c.get("wall_time_s"),
            "git_commit": c["git_commit"],
            "cpu": c["machine"].get("cpu"),
            "smoke": c.get("smoke", False),
        }
        return [extra[k] if k in extra else m.get(k) for k in CELL_COLUMNS]

    return _csv_text(CELL_COLUMNS, (line(c) for c in cells))


def summary_csv(summary: Sequence[dict[str, Any]]) -> str:
    """The summary as CSV: row, dataset, n, seeds, then mean and std of each metric."""
    head = ["row", "row_label", "dataset", "n", "seeds"]
    head += [f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "std")]
    rows = [[e[k] if k != "seeds" else " ".join(map(str, e["seeds"])) for k in head] for e in summary]
    return _csv_text(head, rows)


def per_class_csv(summary: Sequence[dict[str, Any]]) -> str:
    """Mean per-class IoU per (row, dataset), one line per class and (row, dataset) pair."""
    rows = [[e["row"], e["dataset"], k, v] for e in summary for k, v in e["per_class_iou_mean"].items()]
    return _csv_text(["row", "dataset", "class", "iou_mean"], rows)


def summary_markdown(summary: Sequence[dict[str, Any]], title: str = "") -> str:
    """The summary as a markdown table: one line per row, mIoU mean +- std per dataset, then the row's
    trainable parameters, pre-training minutes and k-NN top-1 (averaged over datasets and seeds)."""
    from .plots import fmt_mean_std, markdown_table

    datasets: list[tuple[str, str]] = []
    rows: list[tuple[str, str]] = []
    for e in summary:
        if (e["dataset"], e["dataset_label"]) not in datasets:
            datasets.append((e["dataset"], e["dataset_label"]))
        if (e["row"], e["row_label"]) not in rows:
            rows.append((e["row"], e["row_label"]))
    by = {(e["row"], e["dataset"]): e for e in summary}
    headers = ["method"] + [f"{lab} mIoU %" for _, lab in datasets]
    headers += ["trainable params", "pre-training min", "k-NN top-1 %", "seeds"]
    lines = []
    for r, label in rows:
        cells = [by.get((r, d)) for d, _ in datasets]
        present = [c for c in cells if c]
        line = [label] + [fmt_mean_std(c["miou_mean"], c["miou_std"], 100) if c else "-" for c in cells]
        params = present[0]["trainable_params_mean"] if present else None
        line.append("0" if not params else f"{params / 1e6:.2f} M")
        minutes = [c["pretrain_minutes_mean"] for c in present if c["pretrain_minutes_mean"] is not None]
        line.append(f"{sum(minutes) / len(minutes):.1f}" if minutes else "-")
        knn = mean_std(c["knn_top1_mean"] for c in present)[0]
        line.append("-" if knn is None else f"{100 * knn:.1f}")
        line.append("/".join(str(c["n"]) for c in present))
        lines.append(line)
    text = markdown_table(headers, lines)
    return (f"**{title}**\n\n" if title else "") + text + "\n"


def write_table_report(results_dir: str | Path, table: str, figures: bool = True) -> dict[str, Path]:
    """Rebuild ``cells.csv``, ``summary.csv``, ``summary.md``, ``per_class_iou.csv`` (and figures) of one
    table from its cell JSONs alone. Returns {name: path}."""
    results_dir = Path(results_dir)
    cells = load_cells(results_dir, table)
    folder = results_dir / table
    written: dict[str, Path] = {}
    if not cells:
        return written
    summary = table_summary(results_dir, table)
    title = TABLES[table]().title if table in TABLES else table
    for name, text in (
        ("cells.csv", cells_csv(cells)),
        ("summary.csv", summary_csv(summary)),
        ("per_class_iou.csv", per_class_csv(summary)),
        ("summary.md", summary_markdown(summary, title)),
    ):
        (folder / name).write_text(text)
        written[name] = folder / name
    if figures:
        from . import plots

        written.update(plots.table_figures(results_dir, table))
    return written


def report(results_dir: str | Path = RESULTS_DIR, figures: bool = True) -> dict[str, Path]:
    """Regenerate every table's CSV / markdown / figures (and the efficiency figure) from ``results/``."""
    results_dir = Path(results_dir)
    written: dict[str, Path] = {}
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder {results_dir} not found. Fix: run a table first.")
    for folder in sorted(p for p in results_dir.iterdir() if p.is_dir()):
        if (folder / "cells").is_dir():
            for k, v in write_table_report(results_dir, folder.name, figures).items():
                written[f"{folder.name}/{k}"] = v
    bench = results_dir / "efficiency" / "bench.json"
    if bench.exists():
        from . import plots

        written["efficiency/efficiency.md"] = plots.write_efficiency_markdown(results_dir)
        if figures:
            written.update(
                {f"efficiency/{k}": v for k, v in plots.table_figures(results_dir, "efficiency").items()}
            )
    return written


# ============================================================================================ timings
def read_timings(results_dir: Path) -> dict[str, Any]:
    path = Path(results_dir) / TIMINGS_FILE
    if not path.exists():
        return {"pretrain": {}, "probe": {}, "features": {}, "knn": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ResultFileError(
            f"{path}: not valid JSON ({e}). Fix: delete it (it is rebuilt from runs)."
        ) from e
    for k in ("pretrain", "probe", "features", "knn"):
        data.setdefault(k, {})
    return data


def record_timing(results_dir: Path, kind: str, key: str, seconds: float, source: str) -> None:
    """Add one measured time (seconds per step for ``pretrain``, seconds per cell for ``probe`` / ``knn``)."""
    from .evaluation import save_result

    data = read_timings(results_dir)
    entry = data[kind].setdefault(key, {"samples": []})
    entry["samples"] = (entry["samples"] + [round(float(seconds), 3)])[-20:]
    entry["median"] = _median(entry["samples"])
    entry["last_source"] = source
    entry["last_measured"] = _now()
    entry["cpu"] = machine().get("cpu")
    save_result(data, Path(results_dir) / TIMINGS_FILE)


def _record_cell_timings(results_dir: Path, record: dict[str, Any]) -> None:
    src = f"{record['table']}/{record['row']}__{record['dataset']}__seed{record['seed']}"
    pre = record.get("pretrain")
    if pre and pre.get("seconds_per_step") and pre.get("mode") != "reused":
        record_timing(results_dir, "pretrain", pre["cost_key"], pre["seconds_per_step"], src)
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


def features_timing_key(dataset: str, probe: dict[str, Any]) -> str:
    """Timing key of the probe's feature extraction (train + val, not cached)."""
    p = {k: probe.get(k) for k in ("size", "layers", "amp", "feature_batch_size")}
    return f"{dataset}|{json.dumps(p, sort_keys=True)}"


def estimate_cell(cell: Cell, timings: dict[str, Any], smoke: bool = False) -> dict[str, Any]:
    """Estimated seconds of a cell from measured times: pre-training (steps x seconds per step of the same
    cost key), probe (feature extraction without cache + head training and evaluation, same dataset and
    protocol) and k-NN. Unmeasured parts are None and listed in ``unmeasured``. An upper bound where
    features would come from the cache (the base row's later seeds)."""
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


def measure_step_times(
    table: Table, results_dir: Path, steps: int = 4, smoke: bool = False
) -> dict[str, float]:
    """Time ``steps`` pre-training steps for every distinct cost key of ``table`` (in a temporary folder) and
    record the median of all but the first step in ``results_dir/timings.json``. Returns {key: seconds}."""
    import tempfile

    from .train import pretrain

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
            times = _step_seconds(Path(tmp), cfg.batch_size)
        sec = _median(times[1:] or times)
        if sec is not None:
            record_timing(results_dir, "pretrain", key, sec, f"measure {table.name}/{cell.row.name}")
            out[key] = sec
    return out


# ============================================================================================ the runner
def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "unmeasured"
    return f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.2f} h"


def plan(table: Table, results_dir: Path, smoke: bool = False) -> str:
    """The dry-run text: every cell, done or not, with its estimated time from measured timings."""
    if table.kind == "placeholder":
        return f"{table.name}: {table.title}\n  not yet available: {table.note}"
    if table.kind == "bench":
        done = (Path(results_dir) / table.name / "bench.json").exists()
        return f"{table.name}: {table.title}\n  bench.json {'done' if done else 'to run'} (a few minutes)"
    timings = read_timings(results_dir)
    lines = [f"{table.name}: {table.title}", f"  results: {Path(results_dir) / table.name}"]
    total, unmeasured, todo = 0.0, 0, 0
    for cell in table.cells():
        if cell_done(cell, results_dir):
            reason = stale_reason(cell, results_dir, smoke)
            lines.append(f"  [done] {cell.key}" + (f"  (STALE: {reason})" if reason else ""))
            continue
        todo += 1
        est = estimate_cell(cell, timings, smoke)
        total += est["known"]
        unmeasured += est["total"] is None
        detail = f"pretrain {_fmt_seconds(est['pretrain'])}, probe {_fmt_seconds(est['probe'])}"
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


def run_table(
    table: Table,
    results_dir: str | Path = RESULTS_DIR,
    runs_dir: str | Path = RUNS_DIR,
    smoke: bool = False,
    only: Sequence[str] | None = None,
    report_after: bool = True,
    figures: bool = True,
) -> list[dict[str, Any]]:
    """Run every cell of a table that has no JSON yet (resumable; see the module docstring).

    Args:
        table: the table (``smoke_table(get_table(name))`` for smoke settings).
        results_dir, runs_dir: where cell JSONs and run folders go.
        smoke: the cells use smoke settings (recorded in each JSON).
        only: run only cells whose key contains one of these strings (e.g. ``["base__camvid__seed0"]``).
        report_after: rebuild the table's CSV / markdown after each cell (and figures at the end).

    Returns:
        The records of the cells run now (skipped cells are not re-read).
    """
    results_dir, runs_dir = Path(results_dir), Path(runs_dir)
    if table.kind == "placeholder":
        why = (
            "glare_core.segmentation exists now, but the rows of this table are not defined in "
            "glare_core.experiments yet (a later issue)"
            if _has_segmentation()
            else "it needs glare_core.segmentation (a later issue)"
        )
        raise NotYetAvailableError(f"table {table.name!r} ({table.title}) is not yet available: {why}.")
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
        _record_cell_timings(results_dir, record)
        m = record["metrics"]
        knn = f", k-NN top-1 {100 * m['knn_top1']:.1f} %" if m["knn_top1"] is not None else ""
        print(
            f"[experiment] {cell.key}: mIoU {100 * m['miou']:.1f} %{knn}, "
            f"{record['wall_time_s'] / 60:.1f} min -> {cell.result_path(results_dir)}",
            flush=True,
        )
        done_now.append(record)
        if report_after:
            write_table_report(results_dir, table.name, figures=False)
    if report_after and figures:
        write_table_report(results_dir, table.name, figures=True)
    return done_now


def run_bench(table: Table, results_dir: Path, smoke: bool = False) -> dict[str, Any]:
    """The efficiency table: :func:`glare_core.bench.benchmark` into ``<results>/<table>/bench.json``
    (skipped when it exists)."""
    from .bench import benchmark

    out = Path(results_dir) / table.name / "bench.json"
    if out.exists():
        print(f"[experiment] {out} exists, skipped", flush=True)
        return json.loads(out.read_text())
    threads = table.threads or 1
    kwargs = dict(base="random:test_vit", steps=1, batch_size=2) if smoke else dict(steps=3, threads=threads)
    result = benchmark(out=out, **kwargs)
    result["git_commit"] = git_commit()
    result["smoke"] = smoke
    from .evaluation import save_result

    save_result(result, out)
    return result


def _has_segmentation() -> bool:
    return importlib.util.find_spec("glare_core.segmentation") is not None


def status_lines(results_dir: str | Path = RESULTS_DIR) -> list[str]:
    """``glare experiment list``: every table, its cells and which are done."""
    results_dir = Path(results_dir)
    lines = []
    for name in TABLES:
        t = get_table(name)
        if t.kind == "cells":
            cells = t.cells()
            done = [c for c in cells if cell_done(c, results_dir)]
            lines.append(
                f"{name}: {t.title} -- {len(t.rows)} rows x {len(t.datasets)} datasets x {len(t.seeds)} seeds"
                f" = {len(cells)} cells, {len(done)} done"
            )
            if t.note:
                lines.append(f"  ({t.note})")
            for c in cells:
                reason = stale_reason(c, results_dir) if c in done else None
                mark = "x" if c in done else " "
                lines.append(f"  [{mark}] {c.key}" + (f"  (STALE: {reason})" if reason else ""))
        elif t.kind == "bench":
            done = (results_dir / name / "bench.json").exists()
            lines.append(f"{name}: {t.title} -- [{'x' if done else ' '}] bench.json")
        else:
            lines.append(f"{name}: {t.title}")
    return lines
