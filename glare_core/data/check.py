"""Validate a dataset folder: counts, image sizes, class histogram, and every bad file (``glare check-data``).

:func:`check_split` decodes every item of one split and never stops at the first problem: each
:class:`~glare_core.errors.DataError` (corrupt or truncated file, image/label size mismatch, label ids
outside the class set, image without label) is recorded with its file, so that one run lists everything to
fix.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, MissingLabelsError, MissingSplitError
from .base import IGNORE_INDEX, SegmentationDataset

#: Splits checked when none is named.
DEFAULT_SPLITS = ("train", "val", "test")


@dataclass
class SplitReport:
    """What :func:`check_split` found in one split.

    Attributes:
        name, split: the dataset and split.
        folder: the dataset folder (or source) checked.
        images: number of images listed.
        labelled: how many of them have a label map (0 when the split has no labels).
        sizes: (H, W) -> number of images.
        pixels: per-class pixel counts (C,) of the labelled images.
        ignored: labelled pixels with the ignore id (255).
        classes: class names.
        bad: (file, message) for every problem.
        note: e.g. "no labels in this copy".
    """

    name: str
    split: str
    folder: str
    images: int = 0
    labelled: int = 0
    sizes: Counter = field(default_factory=Counter)
    pixels: list[int] = field(default_factory=list)
    ignored: int = 0
    classes: tuple[str, ...] = ()
    bad: list[tuple[str, str]] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.bad

    def shares(self) -> dict[str, float]:
        """Pixel share per class (and ``"ignore"``) in percent of all labelled pixels."""
        total = sum(self.pixels) + self.ignored
        if total == 0:
            return {}
        out = {c: 100.0 * n / total for c, n in zip(self.classes, self.pixels)}
        out["ignore"] = 100.0 * self.ignored / total
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "name": self.name,
            "split": self.split,
            "folder": self.folder,
            "images": self.images,
            "labelled": self.labelled,
            "sizes_wxh": {f"{w}x{h}": n for (h, w), n in self.sizes.most_common()},
            "pixel_share_percent": self.shares(),
            "bad": [{"file": f, "error": m} for f, m in self.bad],
            "note": self.note,
        }


def check_split(ds: SegmentationDataset, progress: bool = False) -> SplitReport:
    """Decode every item of ``ds``; count sizes and class pixels; record every bad file."""
    from tqdm.auto import tqdm

    folder = str(getattr(ds, "root", None) or getattr(ds, "source", "") or "")
    report = SplitReport(ds.name, ds.split, folder, images=len(ds), classes=ds.classes)
    report.pixels = [0] * ds.num_classes
    for problem in ds.problems:
        report.bad.append((problem.path or "?", str(problem)))
    report.images += len(ds.problems)
    counts = np.zeros(256, dtype=np.int64)  # raw histogram over 0..255: classes, then 255 = ignore
    for i in tqdm(range(len(ds)), desc=f"{ds.name}/{ds.split}", disable=not progress, leave=False):
        try:
            item = ds[i]
        except DataError as e:
            report.bad.append((e.path or ds.image_paths[i], str(e)))
            continue
        except Exception as e:  # anything else is a bug or a very odd file: report it, keep going
            report.bad.append((ds.image_paths[i], f"{type(e).__name__}: {e}"))
            continue
        h, w = item["image"].shape[1:]
        report.sizes[(int(h), int(w))] += 1
        if "label" in item:
            report.labelled += 1
            counts += np.bincount(item["label"].numpy().ravel(), minlength=256)[:256]
    report.pixels = counts[: ds.num_classes].tolist()
    report.ignored = int(counts[IGNORE_INDEX])
    return report


def check_dataset(
    name: str,
    root: str | Path | None = None,
    splits: Sequence[str] | None = None,
    labels: str = "auto",
    limit: int | None = None,
    progress: bool = False,
    **kw,
) -> list[SplitReport]:
    """Check several splits of a dataset.

    Args:
        name: a :data:`glare_core.data.DATASETS` name.
        root: the dataset folder (None: search the data roots).
        splits: splits to check; None checks ``train``, ``val`` and ``test`` and skips those that do not
            exist.
        labels: ``"auto"`` (check labels where the split has them), ``"yes"`` (a split without labels is an
            error) or ``"no"`` (images only).
        limit: check only this many images per split (the reduced split with seed 0).
        progress: show a progress bar.
        **kw: passed to :func:`glare_core.data.build_dataset`.

    Returns:
        One :class:`SplitReport` per split found.

    Raises:
        DataError: the dataset cannot be opened at all (unknown name, no folder), a named split is missing, or
            ``labels="yes"`` and a split has none.
    """
    from . import build_dataset

    explicit = splits is not None
    reports = []
    for split in splits or DEFAULT_SPLITS:
        want = labels != "no"
        try:
            ds = build_dataset(name, split, root=root, labels=want, limit=limit, strict=False, **kw)
            note = ""
        except MissingSplitError:
            if explicit:
                raise
            continue
        except MissingLabelsError as e:
            if labels == "yes":
                raise
            ds = build_dataset(name, split, root=root, labels=False, limit=limit, strict=False, **kw)
            note = f"images only: this split has no labels ({e.path or 'label column'} missing)"
        report = check_split(ds, progress=progress)
        report.note = note or ("images only (labels not checked)" if not want else "")
        reports.append(report)
    if not reports:
        raise MissingSplitError(f"{name}: none of the splits {list(DEFAULT_SPLITS)} exists. Fix: check root.")
    return reports


def format_report(report: SplitReport, max_classes: int | None = None) -> str:
    """Human-readable summary of one split (what ``glare check-data`` prints)."""
    lines = [
        f"{report.name}/{report.split}: {report.images} images, {report.labelled} labelled"
        + (f"  [{report.note}]" if report.note else "")
    ]
    if report.sizes:
        sizes = ", ".join(f"{w}x{h} (W x H): {n}" for (h, w), n in report.sizes.most_common(5))
        more = f" and {len(report.sizes) - 5} other sizes" if len(report.sizes) > 5 else ""
        lines.append(f"  image sizes: {sizes}{more}")
    shares = report.shares()
    if shares:
        lines.append("  class histogram (pixel share, %):")
        items = list(shares.items())
        if max_classes is not None and len(items) > max_classes + 1:
            top = sorted(items[:-1], key=lambda kv: -kv[1])[:max_classes]
            items = top + [items[-1]]
            lines.append(f"    (top {max_classes} of {len(report.classes)} classes)")
        width = max(len(k) for k, _ in items)
        for k, v in items:
            lines.append(f"    {k:<{width}}  {v:6.2f}")
    if report.bad:
        lines.append(f"  BAD FILES: {len(report.bad)}")
        for f, msg in report.bad:
            lines.append(f"    {f}\n      {msg}")
    else:
        lines.append("  bad files: none")
    return "\n".join(lines)
