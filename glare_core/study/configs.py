"""What a cell runs: its training config, probe or light-decoder protocol, datasets and adapter source.

Each function reads a :class:`glare_core.study.tables.Cell` and returns the library's own config object
(:class:`glare_core.config.TrainConfig`, :class:`glare_core.evaluation.ProbeConfig`,
:class:`glare_core.neighbours.segmentation.SegTrainConfig`); :func:`cost_key` names what a pre-training step's
time depends on. The library modules are imported inside the functions, so that reading results (``glare
experiment list``, the book's result chapters) does not import torch.
"""

from __future__ import annotations

from .tables import Cell, DatasetSpec, get_table, smoke_table, with_threads


def train_config(cell: Cell, smoke: bool = False):
    """The :class:`glare_core.config.TrainConfig` of a pre-training cell.

    Order: the table's preset, the table's scale overrides, the dataset (name, reduced split, fixed subset
    seed), the cell's seed, then the row's own overrides.
    """
    from ..config import apply_overrides, preset

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
    cfg.snapshot_steps = tuple(t.snapshots)
    apply_overrides(cfg, list(cell.row.overrides))
    cfg.output_dir = None
    return cfg.validate()


def probe_config(cell: Cell):
    """The probe protocol of a cell: the table's fields, the dataset's size, the cell's seed."""
    from ..evaluation import ProbeConfig

    values = dict(cell.table.probe)
    smoke = bool(values.pop("smoke", False))
    values.update(size=tuple(cell.dataset.probe_size), seed=cell.seed)
    return ProbeConfig.smoke(**values) if smoke else ProbeConfig(**values)


def seg_config(cell: Cell):
    """The light-decoder protocol of a segmentation cell
    (:class:`glare_core.neighbours.segmentation.SegTrainConfig`): the table's fields, the dataset's size, the
    cell's seed; progress bars off."""
    from ..neighbours.segmentation import SegTrainConfig

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
    from ..data import build_dataset

    return len(build_dataset(spec.dataset, "train", labels=False))


def probe_datasets(spec: DatasetSpec):
    """(train, val) labelled datasets of the probe: the reduced train split (fixed subset), the full val."""
    from ..data import build_dataset

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
