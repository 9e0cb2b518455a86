"""The experiment tables as data: rows x datasets x seeds, their training scale and probe protocol.

A **table** (:class:`Table`) is rows x datasets x seeds. A **row** (:class:`Row`) is one compared method:
the ``--set`` overrides it applies to the table's training config (``glare_core.config``), or no continual
pre-training at all (the base model). A **cell** (:class:`Cell`) is one (row, dataset, seed): pre-train the
row on the dataset's unlabelled train images (seed = training seed), then evaluate the adapted backbone with
the table's linear-probe protocol (:func:`glare_core.evaluation.evaluate_backbone`, probe seed = the same
seed) and, for the main table, k-NN forgetting on Tiny-ImageNet (:func:`glare_core.knn.knn_forgetting`).

A **segmentation table** (``kind="segmentation"``: the PiPa / SSR neighbours) trains, per cell, a light
decoder on frozen features with the row's extra training terms
(:func:`glare_core.neighbours.segmentation.train_segmentation`), on the frozen base or on an adapted backbone
whose pre-training is another table's cell of the same dataset and seed
(:func:`glare_core.study.configs.adapter_cell`).

The tables: :data:`TABLES` (``main``, ``ablations``, ``efficiency``, ``neighbours``, ``scale``, ``steps``, and
the pre-registered study's ``study`` and ``study_secondary``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Registry
from ..paths import find_dataset_dir


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
            a subset of :data:`glare_core.neighbours.segmentation.TERMS` (``()``: the decoder alone).
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
            pre-training; :func:`glare_core.study.runner.run_segmentation_cell`) or ``"bench"`` (runs
            :mod:`glare_core.bench`).
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
        segmentation: ``kind="segmentation"``: :class:`glare_core.neighbours.segmentation.SegTrainConfig`
            fields shared by every row (``size`` and ``seed`` come from the dataset and the cell).
        adapters_from: ``kind="segmentation"``: the table whose ``adapter_row`` pre-training gives the adapted
            backbone of a row with ``pretrain=True`` (same dataset, same seed, same config, same run folder).
        adapter_row: that table's row.
        readouts: (name, blocks) pairs the probe reads from each cell's backbone, from one feature extraction;
            the first is the cell's ``miou`` (default: the probe protocol's ``layers`` alone).
        export: the adapter file of a pre-training run that the cell evaluates: ``"adapter.safetensors"``
            (the EMA teacher's, DINO's choice) or ``"adapter_student.safetensors"``.
        snapshots: pre-training runs also save the student's adapters after these steps
            (``TrainConfig.snapshot_steps``), and cells of ``snapshot_seeds`` on ``snapshot_datasets``
            (default: every dataset) probe them (first readout): the same run read at shorter lengths.
        transfer: (source dataset, target dataset) pairs: cells pre-trained on the source are also probed on
            the target (first readout), beside the target's own cells of the same seed.
        preregistration: the pre-registration a confirmatory table follows (a path in the repository); its
            cells refuse to start while ``glare_core/`` or that file has uncommitted changes, and record the
            file's last commit.
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
    readouts: tuple[tuple[str, str], ...] = ()
    export: str = "adapter.safetensors"
    snapshots: tuple[int, ...] = ()
    snapshot_seeds: tuple[int, ...] = ()
    snapshot_datasets: tuple[str, ...] = ()
    transfer: tuple[tuple[str, DatasetSpec], ...] = ()
    preregistration: str = ""

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


TABLES: Registry[Callable[[], Table]] = Registry("table")
"""The tables by name (name -> a function returning its :class:`Table`), in this order."""


@TABLES.register("main")
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


@TABLES.register("ablations")
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


@TABLES.register("efficiency")
def _efficiency() -> Table:
    return Table("efficiency", "Training-step benchmark (glare_core.bench)", kind="bench")


#: The light-decoder protocol of the neighbours table
#: (:class:`glare_core.neighbours.segmentation.SegTrainConfig` fields), pinned here like :data:`CPU_PROBE`:
#: the last block's tokens of the frozen backbone at the probe's input size (448 x 336 for CamVid: 32 x 24
#: cells of 14 px, the same cached features as the main table's probe), the light decoder of width 256, AdamW
#: at 1e-3 (Design, not tuned), batch 8, cross-entropy at half label resolution (as the probe), evaluation at
#: full resolution. Steps: 1000 (the probe's), sized from step times measured with
#: ``glare experiment neighbours --measure`` on the shared 2-core AMD EPYC machine, one thread: 0.31 s
#: (decoder alone), 0.75 s (+ PiPa), 0.77 s (+ SSR) per step, i.e. about 5, 12.5 and 13 minutes per cell with
#: cached features (CPU seconds per step, measured alongside: 0.29 / 0.79 / 0.82). Two threads were about 1.5x
#: faster per step at 224 x 168 on a quiet machine; not measured at 448 x 336 on an idle one.
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


@TABLES.register("neighbours")
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


@TABLES.register("scale")
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


@TABLES.register("steps")
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


#: The study's readouts: the last block (primary), the base's best block on the tuning split (9: 56.5 mIoU on
#: tune_val against 53.3 at the last block) and a control block inside the frozen trunk (7: an adapted model
#: must give the base's number there exactly).
STUDY_READOUTS = (("last", "last"), ("best", "9"), ("control", "7"))


def _study(
    name: str, title: str, rows: tuple[Row, ...], datasets: tuple[DatasetSpec, ...], seeds, **kw
) -> Table:
    """A table of the pre-registered study (``results/study/PREREGISTRATION.md``): the ``cpu_trunk`` preset
    as the tuning split chose it, one thread; the pinned probe at :data:`STUDY_READOUTS`; student adapters."""
    return Table(
        name,
        title,
        rows=rows,
        datasets=datasets,
        seeds=tuple(seeds),
        preset="cpu_trunk",
        overrides=("num_threads=1",),
        probe=CPU_PROBE,
        readouts=STUDY_READOUTS,
        export="adapter_student.safetensors",
        preregistration="results/study/PREREGISTRATION.md",
        **kw,
    )


@TABLES.register("study")
def _study_primary() -> Table:
    """The study's primary arms on CamVid and IDD-Lite (367 train images), 6 seeds: base, DINO-only adapter,
    GLARE; k-NN forgetting in every cell, IDD-Lite adapters also probed on CamVid, the dose-response on
    CamVid seeds 0-2."""
    rows = (
        Row("base", "base (no continual pre-training)", pretrain=False),
        Row("dino_adapter", "DINO-only, adapter", DINO_ONLY),
        Row("glare", "GLARE (G+L+R), adapter"),
    )
    return _study(
        "study",
        "The confirmatory study: linear-probe mIoU on val after continual pre-training (6 seeds)",
        rows,
        (CAMVID, IDD367),
        range(6),
        knn=True,
        knn_settings=CPU_KNN,
        snapshots=(100, 200),
        snapshot_seeds=(0, 1, 2),
        snapshot_datasets=("camvid",),
        transfer=(("idd_lite367", CAMVID),),
        note="pre-registered (results/study/PREREGISTRATION.md); student adapters; cached trunk, 300 steps",
    )


@TABLES.register("study_secondary")
def _study_secondary() -> Table:
    """The study's secondary arms on CamVid, 3 seeds (pairing with the primary table's cells by seed): GLARE
    without one of its terms, and DINO-only with LoRA or full fine-tuning of the trainable blocks."""
    rows = (
        Row("G_L", "G+L (no regional term)", ("objective.use_regional=false",), group="terms"),
        Row("G_R", "G+R (no local term)", ("objective.use_local=false",), group="terms"),
        Row("dino_lora", "DINO-only, LoRA", (*DINO_ONLY, "tuning=lora", "rank=8"), group="tuning"),
        Row(
            "dino_full", "DINO-only, full fine-tuning", (*DINO_ONLY, "tuning=full", "lr=none"), group="tuning"
        ),
    )
    return _study(
        "study_secondary",
        "The study's secondary arms on CamVid: linear-probe mIoU on val (3 seeds)",
        rows,
        (CAMVID,),
        range(3),
        note="pre-registered secondary arms; pair with the table study by seed",
    )


@TABLES.register("study_neighbours")
def _study_neighbours() -> Table:
    """PiPa and SSR in the study (amendment 1 of the pre-registration): the neighbours table's six rows (a
    light decoder alone, + PiPa's losses, + SSR's branch; on the frozen base and on the GLARE-adapted
    backbone), the adapted backbone being the student's adapters of the ``study`` table's ``glare`` cell of
    the same seed (its run folder reused, or pre-trained there). CamVid, seeds 0-2."""
    return dataclasses.replace(
        _neighbours(),
        name="study_neighbours",
        title="The study's neighbours on CamVid: a light decoder, + PiPa or + SSR, mIoU on val (3 seeds)",
        adapters_from="study",
        export="adapter_student.safetensors",
        preregistration="results/study/PREREGISTRATION.md",
        note="pre-registered (amendment 1); GLARE-adapted: the study's glare cell of that seed (student)",
    )


def get_table(name: str) -> Table:
    """A table by name (see :data:`TABLES`)."""
    return TABLES.lookup(name)()


def table_kind(table: str) -> str:
    """The kind of a table by name (``"cells"`` for a folder of cells that no definition names)."""
    return TABLES[table]().kind if table in TABLES else "cells"


def smoke_table(table: Table) -> Table:
    """The same grid with smoke settings: ``random:test_vit``, synthetic scenes (each dataset keeps its name,
    so cells map one to one), the smoke presets; k-NN stays on only if Tiny-ImageNet is present (then with
    :data:`SMOKE_KNN`: 10 classes, 5 bank images each, 112 px)."""

    def synthetic(d: DatasetSpec) -> DatasetSpec:
        return DatasetSpec(d.name, f"{d.label} (synthetic)", "synthetic", probe_size=(112, 84))

    datasets = tuple(synthetic(d) for d in table.datasets)
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
        transfer=tuple((source, synthetic(target)) for source, target in table.transfer),
        snapshots=(2, 4) if table.snapshots else (),  # of the smoke preset's 6 steps
        preregistration="",  # smoke cells are not confirmatory
        readouts=tuple(zip((n for n, _ in table.readouts), ("last", "-2", "0"), strict=False)),
    )


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
