"""Any Hugging Face dataset: local parquet files, an image folder, or a hub id (when online).

``build_dataset("hf", split, data_files=... | root=... | hub_id=..., image_column="image",
label_column="label", classes=...)``. ``datasets>=4`` has no script datasets, so the sources are the
file-based builders (``parquet``, ``imagefolder``) and hub repositories that hold such files.

The label column decides the task:

* a ``datasets.Image`` column (a mask): a segmentation set. Its ids go through a :class:`LabelMap`
  (``label_map={raw: train}``, or ``reduce_zero_label=True`` for the "0 = ignore" convention, else ids 0..C-1
  with ``ignore_ids`` -> 255); ``classes`` must be given (masks carry no names).
* a ``ClassLabel`` or integer column: an image-level (classification) set, e.g. the Tiny-ImageNet parquet in
  ``../shared/data/tinyimagenet``. Items then carry ``"target"`` (int) instead of ``"label"``, ``has_labels``
  is False, ``task`` is ``"classification"``, and ``classes`` come from the ``ClassLabel`` names when not
  given.

Decoding is lazy: an item decodes only its own row. The split name ``"val"`` also finds ``"validation"``.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from glare_core.paths import hub_offline

from ..errors import DataError, MissingLabelsError
from .ade20k import voc_colormap
from .base import IGNORE_INDEX, LabelMap, SegmentationDataset, SplitRequest, finish, image_tensor

NAME = "hf"


def _split_candidates(split: str) -> list[str]:
    s = split.lower()
    if s in ("val", "validation"):
        return ["validation", "val", "valid"]
    if s in ("test", "testing"):
        return ["test"]
    return [split]


def _parquet_files(folder: Path, split: str) -> list[str]:
    """Parquet files of ``split`` in ``folder``: ``<split>-*.parquet``, ``<split>/*.parquet`` (HF layouts)."""
    for name in _split_candidates(split):
        files = sorted(
            glob.glob(str(folder / f"{name}-*.parquet")) + glob.glob(str(folder / name / "*.parquet"))
        )
        files += sorted(glob.glob(str(folder / "data" / f"{name}-*.parquet")))
        if files:
            return files
    return []


def _load(
    split: str,
    root: str | Path | None,
    data_files: Any,
    hub_id: str | None,
    cache_dir: str | None,
):
    """Open the split as a ``datasets.Dataset``; returns (dataset, source description)."""
    import datasets

    kw: dict[str, Any] = {"cache_dir": cache_dir} if cache_dir else {}
    if data_files is not None:
        if isinstance(data_files, Mapping):
            keys = [k for k in _split_candidates(split) if k in data_files]
            if not keys:
                raise DataError(
                    f"hf: split {split!r} not in data_files (it has {list(data_files)}). Fix: pass a split "
                    "that exists or add its files.",
                )
            files = data_files[keys[0]]
        else:
            files = data_files
        files = [files] if isinstance(files, (str, Path)) else list(files)
        expanded = [f for pat in files for f in (sorted(glob.glob(str(pat))) or [str(pat)])]
        missing = [f for f in expanded if not Path(f).is_file()]
        if missing:
            raise DataError(f"hf: data file {missing[0]} not found. Fix: check the path or glob.", missing[0])
        builder = "parquet" if expanded[0].endswith(".parquet") else "imagefolder"
        ds = datasets.load_dataset(builder, data_files={"split": expanded}, split="split", **kw)
        return ds, f"{builder}:{Path(expanded[0]).parent}"
    if root is not None:
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise DataError(
                f"hf: folder {folder} does not exist. Fix: pass the folder that holds the data.", folder
            )
        files = _parquet_files(folder, split)
        if files:
            return datasets.load_dataset("parquet", data_files={"split": files}, split="split", **kw), str(
                folder
            )
        for name in _split_candidates(split):
            if (folder / name).is_dir():
                ds = datasets.load_dataset("imagefolder", data_dir=str(folder / name), split="train", **kw)
                return ds, str(folder / name)
        raise DataError(
            f"hf: no parquet files nor image folder for split {split!r} in {folder} (looked for "
            f"{split}-*.parquet, {split}/*.parquet and {split}/ with images). Fix: pass data_files=... "
            "explicitly.",
            folder,
        )
    if hub_id is not None:
        if hub_offline():
            raise DataError(
                f"hf: cannot load {hub_id!r} from the hub: HF_HUB_OFFLINE=1. Fix: download its parquet files "
                "elsewhere and pass data_files=... or root=..., or unset HF_HUB_OFFLINE where there is "
                "network."
            )
        for name in _split_candidates(split):
            try:
                return datasets.load_dataset(hub_id, split=name, **kw), hub_id
            except ValueError as e:  # unknown split
                if "split" not in str(e).lower():
                    raise
        raise DataError(f"hf: {hub_id!r} has no split {split!r}. Fix: pass one of its splits.")
    raise DataError("hf: say where the data is. Fix: pass data_files=..., root=<folder> or hub_id=...")


class HFSegmentationDataset(SegmentationDataset):
    """A ``datasets.Dataset`` seen as a :class:`SegmentationDataset` (see the module docstring).

    Attributes:
        hf: the underlying ``datasets.Dataset`` (rows in item order).
        task: ``"segmentation"`` (mask column) or ``"classification"`` (image-level ``target``).
    """

    def __init__(
        self,
        hf,
        name: str,
        split: str,
        source: str,
        image_column: str,
        label_column: str | None,
        classes: Sequence[str],
        palette: Sequence[tuple[int, int, int]],
        task: str,
        label_map: LabelMap | None,
        labels: bool,
        size: tuple[int, int] | None,
    ):
        self.rows = list(range(len(hf)))
        self.source = source
        paths = [f"hf://{source}/{split}/{i}" for i in self.rows]
        super().__init__(name, split, classes, palette, paths, labels and task == "segmentation", size=size)
        self.task = task
        self.image_column = image_column
        self.label_column = label_column
        self.label_map = label_map
        self.with_targets = labels and task == "classification"
        keep = [image_column] + ([label_column] if (self.has_labels or self.with_targets) else [])
        self.hf = hf.select_columns(keep)

    def _row(self, index: int) -> dict[str, Any]:
        try:
            return self.hf[self.rows[index]]
        except Exception as e:  # a corrupt image inside the parquet file
            raise DataError(
                f"{self.image_paths[index]}: cannot decode row ({type(e).__name__}: {e}). Fix: re-download "
                "the dataset files; `glare check-data hf --root ...` lists every bad row.",
                self.image_paths[index],
            ) from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self.checked_index(index)
        row = self._row(index)
        img = row[self.image_column]
        if not isinstance(img, Image.Image):
            raise DataError(
                f"{self.image_paths[index]}: column {self.image_column!r} is not an image "
                f"({type(img).__name__}). Fix: pass image_column= the image column."
            )
        image = image_tensor(img, self.size)
        item: dict[str, Any] = {"image": image, "path": self.image_paths[index]}
        if self.has_labels:
            mask = row[self.label_column]
            if mask.mode in ("RGB", "RGBA"):
                raise DataError(
                    f"{self.image_paths[index]}: mask column {self.label_column!r} is a colour image; a "
                    "single-channel id map is expected. Fix: convert colour masks to ids first.",
                )
            if self.size is not None and mask.size != (self.size[1], self.size[0]):
                mask = mask.resize((self.size[1], self.size[0]), Image.Resampling.NEAREST)
            label = torch.from_numpy(self.label_map.apply(np.asarray(mask), self.image_paths[index]))
            if tuple(label.shape) != tuple(image.shape[1:]):
                raise DataError(
                    f"{self.image_paths[index]}: image is {tuple(image.shape[1:])} but its mask is "
                    f"{tuple(label.shape)}. Fix: repair the row, or pass size=(H, W).",
                    self.image_paths[index],
                )
            item["label"] = label
        elif self.with_targets:
            item["target"] = int(row[self.label_column])
        return item

    def select(self, indices):
        self.rows = [self.rows[i] for i in indices]
        return super().select(indices)


def build(
    request: SplitRequest,
    *,
    data_files: Any = None,
    hub_id: str | None = None,
    image_column: str = "image",
    label_column: str | None = "label",
    classes: Sequence[str] | None = None,
    palette: Sequence[tuple[int, int, int]] | None = None,
    label_map: Mapping[int, int] | None = None,
    reduce_zero_label: bool = False,
    ignore_ids: Sequence[int] = (IGNORE_INDEX,),
    name: str | None = None,
    cache_dir: str | None = None,
) -> SegmentationDataset:
    """A Hugging Face dataset split as a :class:`SegmentationDataset` (see the module docstring).

    Args:
        request: the split (``request.root``: a folder with ``<split>-*.parquet`` files, HF's layout, or
            ``<split>/`` image folders; ``request.strict`` is not used).
        data_files: parquet or image files (a path, glob, list, or ``{split: files}``).
        hub_id: a hub repository (needs network; refused with ``HF_HUB_OFFLINE=1``).
        image_column, label_column: column names (``label_column=None`` for images only).
        classes: class names (required for masks; default from a ``ClassLabel``).
        palette: RGB per class (default: the PASCAL VOC colour map).
        label_map, reduce_zero_label, ignore_ids: how mask ids become train ids (see module docstring).
        name: the dataset's ``name`` (default ``"hf"``).
        cache_dir: ``datasets`` cache folder (default: the Hugging Face cache).
    """
    import datasets

    hf, source = _load(request.split, request.root, data_files, hub_id, cache_dir)
    if image_column not in hf.column_names:
        raise DataError(
            f"hf ({source}): no column {image_column!r}; columns are {hf.column_names}. Fix: pass "
            "image_column=."
        )
    task, lmap = "images", None
    if label_column is not None and label_column in hf.column_names:
        feature = hf.features[label_column]
        if isinstance(feature, datasets.Image):
            task = "segmentation"
            if classes is None:
                raise DataError(
                    f"hf ({source}): column {label_column!r} holds masks, which carry no class names. Fix: "
                    "pass classes=[...] (one name per train id)."
                )
            if label_map is not None:
                lmap = LabelMap(len(classes), {**label_map, IGNORE_INDEX: IGNORE_INDEX})
            elif reduce_zero_label:
                lmap = LabelMap.shifted(len(classes))
            else:
                lmap = LabelMap.identity(len(classes), ignore_ids)
        elif isinstance(feature, datasets.ClassLabel) or (
            isinstance(feature, datasets.Value) and "int" in feature.dtype
        ):
            task = "classification"
            if classes is None:
                if not isinstance(feature, datasets.ClassLabel):
                    raise DataError(f"hf ({source}): integer labels without names. Fix: pass classes=[...].")
                classes = feature.names
        else:
            raise DataError(
                f"hf ({source}): column {label_column!r} is {feature}, neither a mask (Image) nor a class "
                "label. Fix: pass label_column= the right column, or label_column=None."
            )
    elif request.labels and label_column is not None:
        raise MissingLabelsError(
            f"hf ({source}): labels asked for, but there is no column {label_column!r} (columns: "
            f"{hf.column_names}). Fix: pass label_column=, or labels=False for images only."
        )
    classes = tuple(classes) if classes is not None else ("object",)
    palette = tuple(palette) if palette is not None else tuple(voc_colormap(len(classes) + 1)[1:])
    ds = HFSegmentationDataset(
        hf,
        name or NAME,
        request.split,
        source,
        image_column,
        label_column,
        classes,
        palette,
        task,
        lmap,
        request.labels,
        request.size,
    )
    return finish(ds, source, "the split has no rows; check the files or the split name")
