"""The segmentation dataset every loader returns, and careful reading of images and label maps.

Every dataset in :mod:`glare_core.data` is a :class:`SegmentationDataset` (a ``torch.utils.data.Dataset``)
with the same attributes (``name``, ``split``, ``classes``, ``palette``, ``ignore_index``, ``num_classes``,
``has_labels``, ``image_paths``) and the same item::

    {"image": uint8 tensor (3, H, W), "label": int64 tensor (H, W), "path": str}

``label`` holds values in ``[0, num_classes)`` or 255 (ignore) and is present only when the dataset was built
with ``labels=True``. Each set's own void / ignore ids are mapped to 255 through a lookup table
(:class:`LabelMap`), so the rest of the project sees one convention (``ignore_index`` is always 255).

Construction is cheap (file lists only); images are decoded lazily in ``__getitem__``. Bad input never crashes
obscurely: a missing folder, an empty split, a corrupt or truncated file, an image/label size mismatch, a
label id outside the class set, or labels asked for where a split has none, all raise :class:`DataError`,
whose message names the file and the fix.

Every builder is asked for a split through a :class:`SplitRequest`. The reduced split (the paper's low-data
setting, Design): ``limit=N, seed=s`` keeps N images chosen by a fixed permutation of the sorted file list
(:func:`reduce_indices`, applied by :func:`glare_core.data.build_dataset`). A smaller ``limit`` with the same
seed is a subset of a larger one.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import DataError

#: The one ignore index of the project (``glare_core.metrics.IGNORE_INDEX`` is the same number).
IGNORE_INDEX = 255

#: Image suffixes the loaders accept (CamVid frames are ``.png`` in the public copy, ``.jpg`` offline).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class LabelMap:
    """Raw label ids of a dataset -> train ids in ``[0, num_classes)`` or 255 (ignore).

    Args:
        num_classes: number of classes C.
        mapping: raw id -> train id (or 255). Raw ids not in the mapping are *invalid*: reading a label
            map that contains one raises :class:`DataError`.

    ``LabelMap.identity(C)`` maps 0..C-1 to themselves and 255 to 255.
    """

    def __init__(self, num_classes: int, mapping: Mapping[int, int]):
        self.num_classes = num_classes
        self.mapping = dict(mapping)
        self.lut = np.full(256, -1, dtype=np.int16)
        for raw, train in self.mapping.items():
            if not (0 <= raw < 256):
                raise ValueError(f"raw label id {raw} is outside 0..255")
            if not (0 <= train < num_classes or train == IGNORE_INDEX):
                raise ValueError(f"train id {train} is neither a class (0..{num_classes - 1}) nor 255")
            self.lut[raw] = train

    @classmethod
    def identity(cls, num_classes: int, ignore_ids: Sequence[int] = (IGNORE_INDEX,)) -> LabelMap:
        """0..C-1 -> themselves, each of ``ignore_ids`` -> 255."""
        mapping = {i: i for i in range(num_classes)}
        mapping.update({i: IGNORE_INDEX for i in ignore_ids})
        return cls(num_classes, mapping)

    @classmethod
    def shifted(cls, num_classes: int, zero_is_ignore: bool = True) -> LabelMap:
        """1..C -> 0..C-1 and 0 -> 255 (ADE20K's and LoveDA's "0 = ignore" convention)."""
        mapping = {i + 1: i for i in range(num_classes)}
        if zero_is_ignore:
            mapping[0] = IGNORE_INDEX
        mapping[IGNORE_INDEX] = IGNORE_INDEX
        return cls(num_classes, mapping)

    def valid_raw_ids(self) -> list[int]:
        """The raw ids this map accepts."""
        return sorted(self.mapping)

    def apply(self, raw: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
        """Map a raw (H, W) id array to train ids (H, W) int64; raise :class:`DataError` on invalid ids."""
        raw = np.asarray(raw)
        if raw.dtype != np.uint8:
            if raw.size and (raw.min() < 0 or raw.max() > 255):
                bad = np.unique(raw[(raw < 0) | (raw > 255)])[:10].tolist()
                raise DataError(_bad_ids_message(path, bad, self), path)
            raw = raw.astype(np.uint8)
        out = self.lut[raw]
        if (out < 0).any():
            bad = np.unique(raw[out < 0])[:10].tolist()
            raise DataError(_bad_ids_message(path, bad, self), path)
        return out.astype(np.int64)


def _bad_ids_message(path: str | Path, bad: list[int], label_map: LabelMap) -> str:
    valid = label_map.valid_raw_ids()
    shown = f"{valid[:40]}" + (" ..." if len(valid) > 40 else "")
    return (
        f"{path}: label ids {bad} are not in the class set (valid raw ids: {shown}). Fix: this is probably "
        "not the label map of this dataset (e.g. a colour-coded or instance map, or a label file from "
        "another dataset); use the official id annotations, or pass the right dataset name."
    )


# ----------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------


def _open_image(path: Path, what: str) -> Image.Image:
    """Open and fully decode an image; truncated or corrupt files raise :class:`DataError`."""
    try:
        img = Image.open(path)
        img.load()  # decode now: a truncated file fails here, not later in a worker
    except FileNotFoundError:
        raise DataError(
            f"{path}: {what} file not found. Fix: restore the file or run `glare check-data` on the dataset "
            "folder to list every missing or bad file.",
            path,
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(
            f"{path}: cannot decode {what} ({type(e).__name__}: {e}); the file is corrupt or truncated. Fix: "
            "re-download or re-extract the dataset (or delete this file and its pair); `glare check-data` "
            "lists every bad file.",
            path,
        ) from None
    return img


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Read an RGB image as a uint8 tensor (3, H, W); ``size=(H, W)`` resizes bilinearly (antialiased).

    Grey, palette and RGBA images are converted to RGB. Raises :class:`DataError` for a missing, corrupt or
    truncated file.
    """
    return image_tensor(_open_image(Path(path), "image"), size)


def image_tensor(img: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A decoded image as an RGB uint8 tensor (3, H, W); ``size=(H, W)`` resizes bilinearly (antialiased)."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)))


def read_label(
    path: str | Path,
    label_map: LabelMap,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Read a single-channel id map as int64 (H, W) train ids (255 = ignore); ``size`` resizes by nearest.

    Raises :class:`DataError` if the file is missing, corrupt, colour-coded (RGB) or holds ids outside the
    class set.
    """
    path = Path(path)
    img = _open_image(path, "label map")
    if img.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        raise DataError(
            f"{path}: label map is a {img.mode} colour image; a single-channel id map (mode L or P) is "
            "expected. Fix: use the dataset's id annotations (e.g. CamVid `trainannot/`, Cityscapes "
            "`*_gtFine_labelIds.png`), not the colour visualisations.",
            path,
        )
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.NEAREST)
    raw = np.asarray(img)
    if raw.ndim != 2:
        raise DataError(
            f"{path}: label map has shape {raw.shape}; expected (H, W). Fix: use id annotations.", path
        )
    return torch.from_numpy(label_map.apply(raw, path))


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image file from its header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found.", path) from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not a readable image ({e}). Fix: re-download the dataset.", path) from None
    return h, w


# ----------------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------------


#: The tuning split (Design): a fixed part of a train split held out to choose settings on, so that val is
#: scored once, with settings chosen without it. CamVid's 367 training frames split 300 / 67.
TUNING_SPLITS = ("tune_train", "tune_val")
TUNING_VAL_FRACTION = 67 / 367
TUNING_SEED = 20261203


def tuning_indices(n: int) -> tuple[list[int], list[int]]:
    """(tune_train, tune_val) indices of a train split of ``n`` items: a fixed seeded permutation (the same
    for every run seed), ``round(n * TUNING_VAL_FRACTION)`` items held out (at least 1), both sorted."""
    if n < 2:
        raise DataError(f"a tuning split needs at least 2 training images, the split has {n}")
    n_val = min(n - 1, max(1, round(n * TUNING_VAL_FRACTION)))
    perm = np.random.default_rng(TUNING_SEED).permutation(n)
    return sorted(int(i) for i in perm[n_val:]), sorted(int(i) for i in perm[:n_val])


def reduce_indices(n: int, limit: int | None, seed: int = 0) -> list[int]:
    """Indices of the reduced split: the first ``limit`` of a seeded permutation of ``range(n)``, sorted.

    Nested: with the same seed, the indices for a smaller limit are a subset of those for a larger one. A
    limit of None (or >= n) keeps everything.
    """
    if limit is None or limit >= n:
        if limit is not None and limit > n:
            warnings.warn(f"limit={limit} is larger than the split ({n} images): using all {n}", stacklevel=3)
        return list(range(n))
    if limit < 1:
        raise DataError(f"limit must be a positive number of images, got {limit}")
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in perm[:limit])


@dataclass(frozen=True)
class SplitRequest:
    """What every builder is asked for: one split, where it is and how to read it.

    Attributes:
        split: ``"train"``, ``"val"`` or ``"test"`` (``"validation"`` works too; a Hugging Face set takes its
            own split names).
        root: the dataset folder; None searches ``glare_core.paths.data_roots()``.
        labels: return label maps (``False``: images only, for continual pre-training or unlabelled splits).
        seed: seed of the synthetic scenes, and of the reduced split ``build_dataset`` keeps.
        size: (H, W) every item is resized to (bilinear images, nearest labels); None keeps the native size
            (synthetic scenes: 112 x 112).
        strict: raise on images without a label map; ``False`` keeps them as ``dataset.problems`` instead
            (``glare check-data`` does this).
    """

    split: str = "train"
    root: str | Path | None = None
    labels: bool = True
    seed: int = 0
    size: tuple[int, int] | None = None
    strict: bool = True


class SegmentationDataset(Dataset):
    """Image (and label map) pairs of one split of one dataset.

    Subclasses implement :meth:`load_image` and :meth:`load_label`;
    :class:`~glare_core.data.files.FileSegmentationDataset` covers every dataset stored as files.

    Attributes:
        name: dataset name (``"camvid"``, ``"synthetic"`` ...); numbers computed on it carry this name.
        split: ``"train"``, ``"val"`` or ``"test"`` (or a Hugging Face split name).
        classes: class names, index = train id.
        palette: one RGB tuple per class, for plots.
        ignore_index: always 255.
        has_labels: whether items carry ``"label"``.
        image_paths: one string per item (a file path, or a pseudo path such as ``synthetic://train/3``).
        size: (H, W) every item is resized to, or None for the native size.
        problems: :class:`DataError` found while listing files (unpaired images or labels), kept when the
            dataset was built with ``strict=False`` (``glare check-data`` does this); empty otherwise.
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        name: str,
        split: str,
        classes: Sequence[str],
        palette: Sequence[tuple[int, int, int]],
        image_paths: Sequence[str],
        has_labels: bool,
        size: tuple[int, int] | None = None,
    ):
        if len(palette) != len(classes):
            raise ValueError(f"{name}: {len(classes)} classes but {len(palette)} palette colours")
        self.name = name
        self.split = split
        self.classes = tuple(classes)
        self.palette = tuple(tuple(int(c) for c in rgb) for rgb in palette)
        self.image_paths = list(image_paths)
        self.has_labels = has_labels
        self.size = tuple(size) if size is not None else None
        self.problems: list[DataError] = []

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.image_paths)

    def load_image(self, index: int) -> torch.Tensor:
        """uint8 (3, H, W) image of item ``index``."""
        raise NotImplementedError

    def load_label(self, index: int) -> torch.Tensor:
        """int64 (H, W) train-id map of item ``index``."""
        raise NotImplementedError

    def checked_index(self, index: int) -> int:
        """``index`` counted from the start (``-1`` is the last item); IndexError when out of range."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}/{self.split}: index {index} out of range ({len(self)} items)")
        return index

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self.checked_index(index)
        image = self.load_image(index)
        item: dict[str, Any] = {"image": image, "path": self.image_paths[index]}
        if self.has_labels:
            label = self.load_label(index)
            if tuple(label.shape) != tuple(image.shape[1:]):
                raise DataError(
                    f"{self.image_paths[index]}: image is {tuple(image.shape[1:])} (H, W) but its label map "
                    f"{self.label_path(index)} is {tuple(label.shape)}. Fix: the pair does not belong "
                    "together (or one was resized); restore the original files, or pass size=(H, W) to "
                    "resize both.",
                    self.image_paths[index],
                )
            item["label"] = label
        return item

    def label_path(self, index: int) -> str:
        """Where item ``index``'s label comes from (for messages)."""
        return f"label of {self.image_paths[index]}"

    def select(self, indices: Sequence[int]) -> SegmentationDataset:
        """Keep only ``indices`` (in place); returns self."""
        self.image_paths = [self.image_paths[i] for i in indices]
        return self

    def __repr__(self) -> str:
        lab = "labelled" if self.has_labels else "unlabelled"
        size = f", size={self.size}" if self.size else ""
        desc = f"{self.name}/{self.split}: {len(self)} {lab} images, {self.num_classes} classes{size}"
        return f"{type(self).__name__}({desc})"


def canonical_split(split: str, aliases: Mapping[str, str] | None = None) -> str:
    """``"validation"`` -> ``"val"``, ``"training"`` -> ``"train"`` (plus dataset-specific ``aliases``)."""
    table = {"validation": "val", "training": "train", "testing": "test", **(aliases or {})}
    return table.get(split.lower(), split.lower())


def finish(
    ds: SegmentationDataset, where: str, fix: str, problems: Sequence[DataError] = ()
) -> SegmentationDataset:
    """Common tail of every builder: refuse an empty split (naming ``where`` and ``fix``), attach problems."""
    if len(ds) == 0:
        raise DataError(f"{ds.name}/{ds.split}: no images found in {where}. Fix: {fix}", where)
    ds.problems = list(problems)
    return ds


def collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack same-size items into a batch: ``image`` (B, 3, H, W) uint8, ``label`` (B, H, W), ``path`` list.

    For ``torch.utils.data.DataLoader(..., collate_fn=collate)``. Items of different sizes raise
    :class:`DataError` (build the dataset with ``size=(H, W)`` to resize every item).
    """
    if not items:
        raise DataError("collate: empty batch")
    shapes = {tuple(it["image"].shape) for it in items}
    if len(shapes) > 1:
        desc = ", ".join(f"{it['path']}: {tuple(it['image'].shape[1:])}" for it in items[:4])
        raise DataError(
            f"collate: images of different sizes cannot be stacked ({desc} ...). Fix: build the dataset with "
            "size=(H, W), or use batch_size=1.",
            items[0]["path"],
        )
    batch: dict[str, Any] = {
        "image": torch.stack([it["image"] for it in items]),
        "path": [it["path"] for it in items],
    }
    if all("label" in it for it in items):
        batch["label"] = torch.stack([it["label"] for it in items])
    for key in items[0]:  # scalar extras, e.g. the image-level "target" of a classification set
        value = items[0][key]
        if (
            key not in batch
            and key != "label"
            and (isinstance(value, int) or torch.is_tensor(value) and value.ndim == 0)
        ):
            batch[key] = torch.as_tensor([int(it[key]) for it in items])
    return batch
