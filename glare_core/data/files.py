"""Datasets stored as image and label-map files: :class:`FileDataset`, the builder of each file-based loader.

A dataset module (``camvid``, ``idd_lite``, ``cityscapes``, ``ade20k``, ``loveda``) names its classes,
palette, label map and splits, and writes a ``list_split`` that finds the dataset folder
(:func:`resolve_root`), lists a split's images (:func:`list_images`, :func:`require_dir`) and pairs them with
their label maps (:func:`pair_labels`), returning :class:`SplitFiles`. :class:`FileDataset` turns that into a
:class:`FileSegmentationDataset`, the :class:`~glare_core.data.base.SegmentationDataset` read from files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError, MissingLabelsError, MissingSplitError
from .base import (
    IMAGE_SUFFIXES,
    LabelMap,
    SegmentationDataset,
    SplitRequest,
    canonical_split,
    finish,
    read_image,
    read_label,
)


class FileSegmentationDataset(SegmentationDataset):
    """One split of a dataset stored as image files with (optional) label-map files beside them.

    Args:
        dataset: the dataset's :class:`FileDataset` (its name, classes, palette and label map).
        split: the split's name.
        files: the split's :class:`SplitFiles` (the images, their label maps in the same order or None for an
            unlabelled split, and the dataset folder, kept as ``root`` for messages).
        size: (H, W) every item is resized to, or None for the native size.
    """

    def __init__(
        self, dataset: FileDataset, split: str, files: SplitFiles, size: tuple[int, int] | None = None
    ):
        images, labels = [str(p) for p in files.images], files.labels
        super().__init__(
            dataset.name, split, dataset.classes, dataset.palette, images, labels is not None, size=size
        )
        self.label_paths = [str(p) for p in labels] if labels is not None else None
        if self.label_paths is not None and len(self.label_paths) != len(self.image_paths):
            raise ValueError("image_paths and label_paths differ in length")
        self.label_map = dataset.label_map
        self.root = Path(files.folder)

    def load_image(self, index: int) -> torch.Tensor:
        return read_image(self.image_paths[index], self.size)

    def load_label(self, index: int) -> torch.Tensor:
        assert self.label_paths is not None
        return read_label(self.label_paths[index], self.label_map, self.size)

    def label_path(self, index: int) -> str:
        return self.label_paths[index] if self.label_paths is not None else super().label_path(index)

    def select(self, indices: Sequence[int]) -> FileSegmentationDataset:
        if self.label_paths is not None:
            self.label_paths = [self.label_paths[i] for i in indices]
        super().select(indices)
        return self


# ----------------------------------------------------------------------------------------------------
# Listing files and pairing them
# ----------------------------------------------------------------------------------------------------


def list_images(
    folder: Path, recursive: bool = False, suffixes: Sequence[str] = IMAGE_SUFFIXES
) -> list[Path]:
    """Image files in ``folder`` (sorted; hidden files skipped)."""
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p for p in it if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    )


def require_dir(path: Path, what: str, fix: str) -> Path:
    """Return ``path`` if it is a folder, else raise :class:`MissingSplitError` naming it and the fix."""
    if not path.is_dir():
        raise MissingSplitError(
            f"{what} not found: {path} does not exist or is not a folder. Fix: {fix}", path
        )
    return path


def pair_files(
    images: Sequence[Path],
    label_for: Callable[[Path], Path],
    where: str,
    strict: bool,
) -> tuple[list[Path], list[Path], list[DataError]]:
    """Pair each image with its label file; images without a label are problems.

    Returns:
        (paired images, their labels, problems). With ``strict=True`` the first problem is raised instead, its
        message counting the others.
    """
    out_images, out_labels, problems = [], [], []
    for img in images:
        lab = label_for(img)
        if lab.is_file():
            out_images.append(img)
            out_labels.append(lab)
        else:
            problems.append(
                DataError(
                    f"{img}: no label map (expected {lab}). Fix: restore the label file, delete the image, "
                    "or load the split with labels=False.",
                    img,
                )
            )
    if problems and strict:
        first = problems[0]
        more = f" ({len(problems) - 1} more images in {where} lack labels; `glare check-data` lists them)"
        raise DataError(str(first) + (more if len(problems) > 1 else ""), first.path)
    return out_images, out_labels, problems


def resolve_root(
    name: str,
    root: str | Path | None,
    candidates: Sequence[str],
    markers: Sequence[str],
    fix: str,
) -> Path:
    """The dataset folder: ``root`` if given, else the first of ``candidates`` under the data roots.

    A folder counts as the dataset folder when one of ``markers`` (relative paths, e.g. ``"train"``) exists
    inside. If ``root`` is a parent folder holding one of ``candidates`` (e.g. an extracted archive with
    ``CamVid/`` inside), that sub-folder is used.

    Raises:
        DataError: nothing found; the message lists the places searched and ``fix``.
    """
    from glare_core.paths import data_roots, find_dataset_dir

    def looks_right(folder: Path) -> bool:
        return any((folder / m).exists() for m in markers)

    if root is not None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"{name}: dataset folder {root} does not exist. Fix: {fix}", root)
        if looks_right(root):
            return root
        for sub in candidates:
            if looks_right(root / sub):
                return root / sub
        raise DataError(
            f"{name}: {root} does not look like the {name} folder (none of {list(markers)} inside). Fix: "
            f"{fix}",
            root,
        )
    found = find_dataset_dir(name, *candidates)
    if found is not None and looks_right(found):
        return found
    searched = ", ".join(str(r / c) for r in data_roots() for c in candidates)
    if os.environ.get("GLARE_DATA_DIR"):
        raise DataError(
            f"{name}: dataset folder not found under GLARE_DATA_DIR={os.environ['GLARE_DATA_DIR']} "
            f"(searched {searched}; with GLARE_DATA_DIR set nothing else is searched). Fix: point "
            f"GLARE_DATA_DIR at the folder that holds it, unset it, pass root=..., or {fix}",
            found,
        )
    raise DataError(
        f"{name}: dataset folder not found (searched {searched}). Fix: set GLARE_DATA_DIR to the folder that "
        f"holds it, pass root=..., or {fix}",
        found,
    )


def pair_labels(
    images: Sequence[Path],
    label_dir: Path,
    label_for: Callable[[Path], Path],
    where: str,
    strict: bool,
    missing: str,
) -> tuple[list[Path], list[Path], list[DataError]]:
    """:func:`pair_files` for label maps in ``label_dir``; a missing ``label_dir`` raises
    :class:`MissingLabelsError` with the message ``missing`` (which names the folder and the fix)."""
    if not label_dir.is_dir():
        raise MissingLabelsError(missing, label_dir)
    return pair_files(images, label_for, where, strict)


@dataclass
class SplitFiles:
    """The files of one split, as a file-based dataset's ``list_split`` finds them.

    Attributes:
        folder: the dataset folder.
        images: image files, one per item.
        labels: their label maps in the same order, or None when labels were not asked for.
        problems: images without a label map (kept with ``strict=False``, see :func:`pair_files`).
        where: the folder the images were listed in (for messages).
        empty_fix: the fix the error for a split without images gives.
    """

    folder: Path
    images: list[Path]
    labels: list[Path] | None
    problems: list[DataError]
    where: str
    empty_fix: str


@dataclass(frozen=True)
class FileDataset:
    """The builder of a dataset stored as image and label-map files (its ``build`` in ``DATASETS``).

    A dataset module names its classes, palette, label map and splits, and writes ``list_split(split, root,
    labels, strict, **options) -> SplitFiles``: find the dataset folder (:func:`resolve_root`), list the
    split's images, and pair them with label maps when asked (:func:`pair_labels`). Calling the builder with a
    :class:`~glare_core.data.base.SplitRequest` does what is the same for every such dataset, in this order:
    the split name made canonical and an unknown one refused, ``list_split``, a
    :class:`FileSegmentationDataset`, then :func:`finish` (an empty split refused, problems attached).

    Attributes:
        name: the dataset's name (``"camvid"`` ...); numbers computed on it carry this name.
        classes: class names, index = train id.
        palette: one RGB tuple per class, for plots.
        label_map: raw label ids -> train ids (:class:`~glare_core.data.base.LabelMap`).
        splits: the split names the dataset has.
        list_split: the dataset's file listing (above).
        split_fix: the fix an unknown split's error gives (default: the list of ``splits``).
    """

    name: str
    classes: Sequence[str]
    palette: Sequence[tuple[int, int, int]]
    label_map: LabelMap
    splits: Collection[str]
    list_split: Callable[..., SplitFiles]
    split_fix: str = ""

    def __call__(self, request: SplitRequest, **options: Any) -> SegmentationDataset:
        """One split of the dataset; ``options`` (e.g. LoveDA's ``domain``) are passed to ``list_split``."""
        split = canonical_split(request.split)
        if split not in self.splits:
            fix = self.split_fix or f"use one of {tuple(self.splits)}."
            raise DataError(f"{self.name}: unknown split {split!r}. Fix: {fix}")
        files = self.list_split(split, request.root, request.labels, request.strict, **options)
        ds = FileSegmentationDataset(self, split, files, request.size)
        return finish(ds, files.where, files.empty_fix, files.problems)
