"""The experiments: tables defined as data, a resumable runner, and the aggregation the book reads.

A **table** (:class:`Table`) is rows x datasets x seeds. A **row** (:class:`Row`) is one compared method:
the ``--set`` overrides it applies to the table's training config (``glare_core.config``), or no continual
pre-training at all (the base model). A **cell** (:class:`Cell`) is one (row, dataset, seed): pre-train the
row on the dataset's unlabelled train images (seed = training seed), then evaluate the adapted backbone with
the table's linear-probe protocol (:func:`glare_core.evaluation.evaluate_backbone`, probe seed = the same
seed) and, for the main table, k-NN forgetting on Tiny-ImageNet (:func:`glare_core.knn.knn_forgetting`).

A **segmentation table** (``kind="segmentation"``: the PiPa / SSR neighbours) trains, per cell, a light
decoder on frozen features with the row's extra training terms
(:func:`glare_core.segmentation.train_segmentation`), on the frozen base or on an adapted backbone whose
pre-training is another table's cell of the same dataset and seed (:func:`adapter_cell`: its run folder is
reused when finished, else pre-trained there), and records which parameters inference uses
(:func:`inference_parameter_check`).

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
import io
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .paths import REPO_ROOT
from .provenance import git_commit

SCHEMA_VERSION = 1
RESULTS_DIR = REPO_ROOT / "results"
RUNS_DIR = REPO_ROOT / "runs" / "experiments"
TIMINGS_FILE = "timings.json"
#: Keys every cell JSON must have (checked when a cell is read back).
REQUIRED_KEYS = ("schema", "table", "row", "dataset", "seed", "metrics", "config", "git_commit", "machine")


class ResultFileError(ValueError):
    """A result file that cannot be read or lacks required fields; the message names the file and the fix."""


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
        terms: segmentation tables only (``kind="segmentation"``): the light decoder's extra training terms,
            a subset of :data:`glare_core.segmentation.TERMS` (``()``: the decoder alone).
    """

    name: str
    label: str
    overrides: tuple[str, ...] = ()
    pretrain: bool = True
    data_fraction: float = 1.0
    group: str = ""
    terms: tuple[str, ...] = ()


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
        kind: ``"cells"`` (pre-train + probe per cell), ``"segmentation"`` (a light decoder, with a row's
            extra training terms, on the frozen base or on an adapted backbone taken from another table's
            pre-training; :func:`run_segmentation_cell`) or ``"bench"`` (runs :mod:`glare_core.bench`).
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
        segmentation: ``kind="segmentation"``: :class:`glare_core.segmentation.SegTrainConfig` fields shared
            by every row (``size`` and ``seed`` come from the dataset and the cell).
        adapters_from: ``kind="segmentation"``: the table whose ``adapter_row`` pre-training gives the adapted
            backbone of a row with ``pretrain=True`` (same dataset, same seed, same config, same run folder).
        adapter_row: that table's row.
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
    segmentation: dict[str, Any] = field(default_factory=dict)
    adapters_from: str = ""
    adapter_row: str = ""

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


#: The light-decoder protocol of the neighbours table (:class:`glare_core.segmentation.SegTrainConfig`
#: fields), pinned here like :data:`CPU_PROBE`: the last block's tokens of the frozen backbone at the probe's
#: input size (448 x 336 for CamVid: 32 x 24 cells of 14 px, the same cached features as the main table's
#: probe), the light decoder of width 256, AdamW at 1e-3 (Design, not tuned), batch 8, cross-entropy at half
#: label resolution (as the probe), evaluation at full resolution. Steps: 1000 (the probe's), sized from step
#: times measured with ``glare experiment neighbours --measure`` on the shared 2-core AMD EPYC machine, one
#: thread: 0.31 s (decoder alone), 0.75 s (+ PiPa), 0.77 s (+ SSR) per step, i.e. about 5, 12.5 and 13 minutes
#: per cell with cached features (CPU seconds per step, measured alongside: 0.29 / 0.79 / 0.82). Two threads
#: were about 1.5x faster per step at 224 x 168 on a quiet machine; not measured at 448 x 336 on an idle one.
NEIGHBOUR_SEG = {
    "layers": "last",
    "hidden_dim": 256,
    "steps": 1000,
    "batch_size": 8,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "warmup_steps": 50,
    "flip": True,
    "label_scale": 0.5,
    "train_precision": "auto",
}
PIPA = ("pixel_contrast", "patch_consistency")


def _neighbours() -> Table:
    """PiPa's and SSR's ideas on GLARE's benchmark (``glare-method.md`` section 5).

    Rows: the light decoder alone, with PiPa's two losses (pixel contrast 0.1, patch consistency 0.01) and
    with SSR's training-only fusion branch (the frozen base model stands in for SAM), each on the frozen base
    and on the GLARE-adapted backbone of the same seed, i.e. the adapter of the main table's ``glare`` cell
    (``runs/experiments/main/glare__camvid__seed<k>/adapter.safetensors``, pre-trained there when missing).
    """
    rows = []
    for backbone, label, adapted in (("base", "base", False), ("glare", "GLARE-adapted", True)):
        group = f"{label} backbone"
        rows += [
            Row(f"decoder_{backbone}", f"light decoder, {label}", pretrain=adapted, group=group),
            Row(f"pipa_{backbone}", f"+ PiPa losses, {label}", pretrain=adapted, group=group, terms=PIPA),
            Row(f"ssr_{backbone}", f"+ SSR branch, {label}", pretrain=adapted, group=group, terms=("ssr",)),
        ]
    steps = NEIGHBOUR_SEG["steps"]
    return Table(
        "neighbours",
        "PiPa and SSR on CamVid: a light decoder on frozen features, mIoU on val",
        kind="segmentation",
        rows=tuple(rows),
        datasets=(CAMVID,),
        seeds=(0, 1, 2),
        segmentation=NEIGHBOUR_SEG,
        adapters_from="main",
        adapter_row="glare",
        note=(
            f"light decoder on frozen last-block tokens at 448x336 (32x24 cells), {steps} steps of batch 8, "
            "CE at half label resolution; CamVid train 367 -> val 101 (as the main table); GLARE-adapted = "
            "the main table's glare cell of the same seed (112 px views, 100 steps); 3 seeds"
        ),
    )


#: Views at the probe's scale: a crop of 0.4-1 of the area of a frame loaded at 336 px (short side, the
#: probe's 448 x 336 input) resized to 224 px, i.e. 16 x 16 tokens of 14 px at about the pixel scale the probe
#: reads, against the main table's 112 px views of frames loaded at 224 px (8 x 8 tokens, half the scale).
PROBE_SCALE_VIEWS = ("objective.views.global_size=224", "load_size=336")
#: Four times the main table's 100 steps (17.4 epochs of CamVid's 367 images); the schedules (warm-up, cosine
#: learning rate, EMA momentum, teacher temperature) are fractions of the run, so they stretch with it.
LONGER = ("steps=400",)


def _main_variant(name: str, title: str, change: tuple[str, ...], what: str, note: str) -> Table:
    """The main table's DINO-only adapter and GLARE rows on CamVid with the overrides ``change`` added to
    each (labels get ``, <what>``); seeds, scale and probe are the main table's, so cells pair by seed (no
    k-NN)."""
    main = _main()
    rows = tuple(
        dataclasses.replace(r, label=f"{r.label}, {what}", overrides=(*r.overrides, *change))
        for r in (main.row("dino_adapter"), main.row("glare"))
    )
    return Table(
        name,
        title,
        rows=rows,
        datasets=(CAMVID,),
        seeds=main.seeds,
        overrides=main.overrides,
        probe=main.probe,
        note=note,
    )


def _scale() -> Table:
    """The main table's two adapter rows pre-trained on views at the probe's scale (CamVid, 3 seeds).

    The question (chapter 9, "Two follow-up experiments"): does pre-training on 112 px views leave the
    448 x 336 probe's features unchanged because a view token spans two to three times the frame pixels (in
    width) of a probe token? Everything but the views is the main table's: 100 steps of batch 16, the same
    probe, the same seeds, so each cell pairs with the main table's ``base`` cell of its seed (not repeated
    here: the base has no pre-training, its probe is the same).
    """
    return _main_variant(
        "scale",
        "Pre-training on 224 px views (the probe's scale) on CamVid: linear-probe mIoU on val",
        PROBE_SCALE_VIEWS,
        "224 px views",
        note=(
            "the main table's CamVid adapter rows with 224 px views of frames loaded at 336 px (16x16 "
            "tokens, the probe's pixel scale) instead of 112 px of 224 px frames; base: the main table's"
        ),
    )


def _steps() -> Table:
    """The main table's two adapter rows pre-trained four times longer (400 steps; CamVid, 3 seeds).

    The other question of chapter 9's "Two follow-up experiments": is 100 steps too short for either objective
    to move the probe? Everything but the number of steps is the main table's, so the cells pair with its
    cells by seed.
    """
    return _main_variant(
        "steps",
        "Pre-training four times longer (400 steps) on CamVid: linear-probe mIoU on val",
        LONGER,
        "400 steps",
        note="the main table's CamVid adapter rows with 400 steps instead of 100; base: the main table's",
    )


TABLES: dict[str, Callable[[], Table]] = {
    "main": _main,
    "ablations": _ablations,
    "efficiency": _efficiency,
    "neighbours": _neighbours,
    "scale": _scale,
    "steps": _steps,
}


def get_table(name: str) -> Table:
    """A table by name (``main``, ``ablations``, ``efficiency``, ``neighbours``, ``scale``, ``steps``)."""
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
        segmentation={"smoke": True} if table.kind == "segmentation" else {},
    )


# ============================================================================================ configs
def with_precision(table: Table, precision: str) -> Table:
    """The same table with a forced precision for pre-training and the probe (default: ``"auto"``, chosen per
    machine). The precision used is recorded in every cell; it is not part of a cell's identity."""
    probe = {**table.probe, "precision": precision} if table.probe else table.probe
    return dataclasses.replace(table, probe=probe, overrides=(*table.overrides, f"precision={precision}"))


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


def seg_config(cell: Cell):
    """The light-decoder protocol of a segmentation cell (:class:`glare_core.segmentation.SegTrainConfig`):
    the table's fields, the dataset's size, the cell's seed; progress bars off."""
    from .segmentation import SegTrainConfig

    values = dict(cell.table.segmentation)
    smoke = bool(values.pop("smoke", False))
    values.update(size=tuple(cell.dataset.probe_size), seed=cell.seed, progress=False)
    return SegTrainConfig.smoke(**values) if smoke else SegTrainConfig(**values)


def adapter_cell(cell: Cell, smoke: bool = False) -> Cell:
    """The cell whose pre-training gives a segmentation cell its adapted backbone.

    For a row with ``pretrain=True`` of a ``kind="segmentation"`` table: the ``adapter_row`` cell of the table
    ``adapters_from`` with the same dataset and seed (its smoke version in smoke runs, with this table's
    threads), so that the adapter is that cell's, from that cell's run folder and config. Any other cell is
    its own source.
    """
    t = cell.table
    if t.kind != "segmentation" or not cell.row.pretrain:
        return cell
    if not t.adapters_from or not t.adapter_row:
        raise ValueError(f"table {t.name!r}: rows with pretrain=True need adapters_from and adapter_row")
    src = get_table(t.adapters_from)
    if smoke:
        src = smoke_table(src)
    if t.threads and t.threads != src.threads:
        src = with_threads(src, t.threads)
    spec = next((d for d in src.datasets if d.name == cell.dataset.name), None)
    if spec is None:
        raise ValueError(
            f"table {t.name!r}: dataset {cell.dataset.name!r} is not a dataset of table {src.name!r}, "
            "whose pre-training gives the adapted backbone"
        )
    return Cell(src, src.row(t.adapter_row), spec, cell.seed)


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
def machine() -> dict[str, Any]:
    """CPU, cores, torch version, threads, load average, GPU (:func:`glare_core.system.machine_info`)."""
    try:
        from .system import machine_info

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
        if resumable:
            summary = pretrain(cfg, run_dir, resume=True)
        else:  # the folder holds at most a start without a checkpoint, found to be this cell's above
            summary = pretrain(cfg, run_dir, overwrite=True)
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
RUNTIME_KEYS = ("num_threads", "num_workers", "log_every", "precision", "telemetry_every")
#: Training-config fields added after runs were recorded, with the value that reproduces what those runs did
#: (a record or run folder without them is read as having these; ``trunk_*``: the cached trunk of
#: ``glare_core.trunk``, off by default).
TRAIN_ADDED = {
    "clip_grad_mode": "global",
    "trunk_blocks": None,
    "trunk_pairs": 4,
    "trunk_seed": 0,
    "trunk_storage": "fp16",
}


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
    saved = {**TRAIN_ADDED, **saved}
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


def _cell_provenance(cell: Cell, started: str, t0: float) -> dict[str, Any]:
    """Where and when a cell was computed: commit, machine, threads, start and end, wall time since ``t0``."""
    return {
        "git_commit": git_commit(),
        "machine": machine(),
        "threads": cell.table.threads,
        "started": started,
        "finished": _now(),
        "wall_time_s": time.perf_counter() - t0,
    }


def run_cell(cell: Cell, results_dir: Path, runs_dir: Path, smoke: bool = False) -> dict[str, Any]:
    """Run one cell end to end and write its JSON (atomically); returns the record."""
    if cell.table.kind == "segmentation":
        return run_segmentation_cell(cell, results_dir, runs_dir, smoke)
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
        **_cell_identity(cell, smoke),
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
        **_cell_provenance(cell, started, t0),
    }
    save_result(record, cell.result_path(results_dir))
    return record


# ======================================================================================== segmentation cells
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
    """Which parameters the inference path of :class:`glare_core.segmentation.SegmentationModel` uses.

    Builds the model with the row's training-only modules, runs its inference ``forward`` (the path
    :func:`glare_core.segmentation.train_segmentation` evaluates) on a random (1, C, 4, 4) map,
    back-propagates the sum of the logits and counts the parameters that receive a gradient: those are every
    parameter inference depends on. For PiPa and SSR, ``training_only_used_at_inference`` must be 0 and
    ``inference`` must equal ``decoder`` (the same count as the plain decoder's).

    Returns:
        ``inference`` (parameters reached by the inference path), ``decoder`` (the decoder's parameters),
        ``training_only`` (the other modules' parameters), ``training_only_used_at_inference``, ``modules``
        ({training-only module: parameters}).
    """
    import torch

    from .segmentation import SegmentationModel

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
    import torch

    from .config import preset
    from .evaluation import save_result
    from .segmentation import train_segmentation
    from .teacher import apply_adapter
    from .weights import load_base

    started, t0 = _now(), time.perf_counter()
    train_cfg, pre, source = None, None, None
    if cell.row.pretrain:
        source = adapter_cell(cell, smoke)
        _refuse_busy_run(source.run_dir(runs_dir))
        train_cfg, pre = pretrain_cell(source, runs_dir, smoke)
        pre["source_cell"] = f"{source.table.name}/{source.key}"
        base_name = train_cfg.base
        backbone = apply_adapter(
            load_base(base_name, verbose=False), Path(pre["run_dir"]) / "adapter.safetensors"
        )
    else:
        base_name = preset(cell.table.preset).base
        backbone = load_base(base_name, verbose=False)
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
    threads = torch.get_num_threads()
    if cell.table.threads:
        torch.set_num_threads(cell.table.threads)
    try:
        train_ds, val_ds = probe_datasets(cell.dataset)
        result = train_segmentation(backbone, train_ds, val_ds, seg, extra_terms=terms, ssr_encoder=encoder)
    finally:
        torch.set_num_threads(threads)

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
        "miou": result["miou"],
        "pixel_acc": result["pixel_acc"],
        "mean_acc": result["mean_acc"],
        "per_class_iou": result["per_class_iou"],
        "knn_top1": None,
        "knn_top5": None,
        "trainable_params": int(pre["summary"].get("trainable_params", 0)) if pre else 0,
        "pretrain_minutes": (pre["step_seconds_total"] / 60) if pre else 0.0,
        "pretrain_seconds_per_step": pre["seconds_per_step"] if pre else None,
        "probe_seconds": t["total_s"],
        "knn_seconds": None,
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
            "base": base_name,
            "row": dataclasses.asdict(cell.row),
            "dataset": dataclasses.asdict(cell.dataset),
            "table_preset": cell.table.preset,
            "adapter_source": f"{source.table.name}/{source.key}" if source else None,
            "train": train_cfg.to_dict() if train_cfg is not None else None,
            "segmentation": seg.to_dict(),
            "ssr_encoder": encoder_name,
        },
        "pretrain": pre,
        "inference_check": check,
        "evaluation": {k: v for k, v in result.items() if k not in ("per_class_iou", "config", "machine")},
        **_cell_provenance(cell, started, t0),
        "machine": {**machine(), "torch_threads": result["machine"]["threads"]},
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
        got_t = {**TRAIN_ADDED, **(record["config"].get("train") or {})}
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


#: Extra metrics of segmentation-table cells (light decoder): summarised when present.
SEGMENTATION_METRICS = (
    "mean_acc",
    "inference_params",
    "training_only_params",
    "decoder_seconds_per_step",
    "decoder_train_seconds",
)


def _summary_metrics(cells: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    extra = tuple(m for m in SEGMENTATION_METRICS if any(m in c["metrics"] for c in cells))
    return SUMMARY_METRICS + extra


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
        ``seeds`` (list), ``n``, then ``<metric>_mean`` and ``<metric>_std`` for :data:`SUMMARY_METRICS` (and
        for :data:`SEGMENTATION_METRICS` when cells have them), and ``per_class_iou_mean`` ({class: mean IoU
        or None}); cells of segmentation tables add ``terms`` and ``backbone``.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["row"], c["dataset"]), []).append(c)
    metrics = _summary_metrics(cells)
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
        for k in ("terms", "backbone"):  # segmentation tables
            if k in first:
                entry[k] = first[k]
        for m in metrics:
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
    metrics = SUMMARY_METRICS + tuple(
        m for m in SEGMENTATION_METRICS if summary and f"{m}_mean" in summary[0]
    )
    head += [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
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


#: How a segmentation row's extra terms read in tables and figures.
TERM_LABELS = {
    (): "light decoder (CE)",
    ("pixel_contrast", "patch_consistency"): "+ PiPa (pixel contrast + patch consistency)",
    ("pixel_contrast",): "+ PiPa pixel contrast",
    ("patch_consistency",): "+ PiPa patch consistency",
    ("ssr",): "+ SSR branch (training only)",
}


#: Short names for figure ticks.
TERM_SHORT_LABELS = {
    (): "decoder alone",
    ("pixel_contrast", "patch_consistency"): "+ PiPa",
    ("ssr",): "+ SSR",
}


def method_label(terms: Sequence[str], short: bool = False) -> str:
    """The readable name of a set of extra decoder terms (``"+ SSR branch (training only)"``; short:
    ``"+ SSR"``)."""
    labels = TERM_SHORT_LABELS if short else TERM_LABELS
    return labels.get(tuple(terms), "+ " + " + ".join(terms))


def segmentation_markdown(summary: Sequence[dict[str, Any]], title: str = "") -> str:
    """A segmentation table's summary as markdown: one line per set of extra terms, mIoU mean +- std on the
    base and on the adapted backbone, their difference of means, the parameters used at inference and in
    training only, the decoder's seconds per step and the seeds done."""
    from .plots import fmt_mean_std, markdown_table

    methods: list[tuple[str, ...]] = []
    by: dict[tuple[tuple[str, ...], str], dict[str, Any]] = {}
    for e in summary:
        terms = tuple(e.get("terms", ()))
        if terms not in methods:
            methods.append(terms)
        by[(terms, e.get("backbone", "base"))] = e
    headers = ["training terms", "base mIoU %", "GLARE-adapted mIoU %", "adapted - base"]
    headers += ["inference params", "training-only params", "decoder s / step", "seeds (base / adapted)"]
    lines = []
    for terms in methods:
        b, a = by.get((terms, "base")), by.get((terms, "adapted"))
        diff = "-"
        if a and b and a["miou_mean"] is not None and b["miou_mean"] is not None:
            diff = f"{100 * (a['miou_mean'] - b['miou_mean']):+.1f}".replace("-0.0", "+0.0")
        any_e = a or b
        inf, extra = any_e.get("inference_params_mean"), any_e.get("training_only_params_mean")
        steps = [
            e["decoder_seconds_per_step_mean"] for e in (b, a) if e and e.get("decoder_seconds_per_step_mean")
        ]
        lines.append(
            [
                method_label(terms),
                fmt_mean_std(b["miou_mean"], b["miou_std"], 100) if b else "-",
                fmt_mean_std(a["miou_mean"], a["miou_std"], 100) if a else "-",
                diff,
                "-" if inf is None else f"{inf / 1e6:.2f} M",
                "-" if extra is None else ("0" if not extra else f"{extra / 1e3:.0f} k"),
                f"{sum(steps) / len(steps):.2f}" if steps else "-",
                f"{b['n'] if b else 0} / {a['n'] if a else 0}",
            ]
        )
    text = markdown_table(headers, lines)
    return (f"**{title}**\n\n" if title else "") + text + "\n"


def _table_kind(table: str) -> str:
    return TABLES[table]().kind if table in TABLES else "cells"


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
    segmentation = _table_kind(table) == "segmentation"
    markdown = segmentation_markdown(summary, title) if segmentation else summary_markdown(summary, title)
    for name, text in (
        ("cells.csv", cells_csv(cells)),
        ("summary.csv", summary_csv(summary)),
        ("per_class_iou.csv", per_class_csv(summary)),
        ("summary.md", markdown),
    ):
        (folder / name).write_text(text)
        written[name] = folder / name
    if figures:
        from . import plots

        if segmentation:
            written.update(_segmentation_figures(results_dir, table, summary))
        else:
            written.update(plots.table_figures(results_dir, table))
    return written


def _segmentation_figures(
    results_dir: Path, table: str, summary: Sequence[dict[str, Any]]
) -> dict[str, Path]:
    """A segmentation table's PNGs: mIoU per term set and backbone (:func:`glare_core.plots.neighbours_bars`)
    and per-class IoU per dataset."""
    import matplotlib.pyplot as plt

    from . import plots

    folder = Path(results_dir) / table
    out: dict[str, Path] = {}
    figs = [(plots.neighbours_bars(results_dir, table), f"{table}_miou.png")]
    for d in plots._ordered(e["dataset"] for e in summary):
        figs.append((plots.per_class_bars(results_dir, table, d), f"per_class_iou_{d}.png"))
    for fig, name in figs:
        fig.savefig(folder / name, dpi=120)
        plt.close(fig)
        out[name] = folder / name
    return out


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
#: Kinds of measured times in ``timings.json``: seconds per pre-training step, per probe head (training and
#: evaluation), per feature extraction, per k-NN run, per light-decoder step (segmentation tables).
TIMING_KINDS = ("pretrain", "probe", "features", "knn", "segmentation")


def read_timings(results_dir: Path) -> dict[str, Any]:
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
        run_dir = src.run_dir(runs_dir or RUNS_DIR)
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

    from .config import preset
    from .segmentation import train_segmentation
    from .weights import load_base

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
    (skipped when it exists; to measure another machine, first rename it to ``bench_<machine>.json``, which
    chapter 11 and the report then show beside the new one). Five interleaved rounds: on a shared machine
    three left the best round too dependent on one undisturbed step."""
    from .bench import benchmark

    out = Path(results_dir) / table.name / "bench.json"
    if out.exists():
        print(f"[experiment] {out} exists, skipped", flush=True)
        return json.loads(out.read_text())
    threads = table.threads or 1
    kwargs = dict(base="random:test_vit", steps=1, batch_size=2) if smoke else dict(steps=5, threads=threads)
    result = benchmark(out=out, **kwargs)  # records the commit at its start
    result["smoke"] = smoke
    from .evaluation import save_result

    save_result(result, out)
    return result


def status_lines(results_dir: str | Path = RESULTS_DIR) -> list[str]:
    """``glare experiment list``: every table, its cells and which are done."""
    results_dir = Path(results_dir)
    lines = []
    for name in TABLES:
        t = get_table(name)
        if t.kind in ("cells", "segmentation"):
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
        else:  # bench
            done = (results_dir / name / "bench.json").exists()
            lines.append(f"{name}: {t.title} -- [{'x' if done else ' '}] bench.json")
    return lines
