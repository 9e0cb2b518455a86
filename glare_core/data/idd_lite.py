"""IDD-Lite (India Driving Dataset, level-1 classes): 1403 train / 204 val / 404 test images of 320 x 227.

Layout (``idd20k_lite/`` as published; ``../shared/data/idd_lite`` offline)::

    leftImg8bit/{train,val,test}/<seq>/<id>_image.jpg
    gtFine/{train,val}/<seq>/<id>_label.png            mode L

Label ids (Known, the dataset's level-1 ids): 0 drivable, 1 non-drivable, 2 living things, 3 vehicles,
4 road-side objects, 5 far objects, 6 sky; **255 = ignore** (kept as is). The test split has no labels. The
palette is this project's choice (Design; IDD-Lite publishes none): Cityscapes-like colours for the closest
classes.
"""

from __future__ import annotations

from pathlib import Path

from .base import LabelMap
from .files import FileDataset, SplitFiles, list_images, pair_labels, require_dir, resolve_root

NAME = "idd_lite"
CLASSES = (
    "drivable",
    "non-drivable",
    "living things",
    "vehicles",
    "road-side objects",
    "far objects",
    "sky",
)
PALETTE = (
    (128, 64, 128),
    (244, 35, 232),
    (220, 20, 60),
    (0, 0, 142),
    (220, 220, 0),
    (70, 70, 70),
    (70, 130, 180),
)
LABEL_MAP = LabelMap.identity(len(CLASSES), ignore_ids=(255,))
SPLITS = ("train", "val", "test")
CANDIDATES = ("idd_lite", "idd20k_lite", "IDD-Lite")
FIX = (
    "download idd20k_lite from the IDD site (https://idd.insaan.iiit.ac.in, free registration) and point "
    "GLARE_DATA_DIR (or root=) at the folder holding leftImg8bit/ and gtFine/."
)


def list_split(split: str, root: str | Path | None, labels: bool, strict: bool) -> SplitFiles:
    """The files of one split: ``leftImg8bit/<split>/<seq>/*_image.jpg`` and their label maps.

    With ``labels``, the map of ``<id>_image.jpg`` is ``gtFine/<split>/<seq>/<id>_label.png``.
    """
    folder = resolve_root(NAME, root, CANDIDATES, ("leftImg8bit",), FIX)
    image_dir = require_dir(folder / "leftImg8bit" / split, f"idd_lite split {split!r}", FIX)
    images = [p for p in list_images(image_dir, recursive=True) if p.name.endswith("_image" + p.suffix)]
    label_paths, problems = None, []
    if labels:
        gt = folder / "gtFine" / split

        def label_for(p: Path) -> Path:
            stem = p.name[: -len("_image" + p.suffix)]
            return gt / p.parent.relative_to(image_dir) / f"{stem}_label.png"

        missing = (
            f"idd_lite/{split}: labels asked for, but {gt} does not exist (IDD-Lite's test split has no "
            "labels). Fix: use labels=False, or evaluate on 'val'."
        )
        images, label_paths, problems = pair_labels(images, gt, label_for, str(image_dir), strict, missing)
    empty_fix = f"expected <seq>/<id>_image.jpg files there. {FIX}"
    return SplitFiles(folder, images, label_paths, problems, str(image_dir), empty_fix)


#: One IDD-Lite split (see the module docstring); arguments as in :func:`glare_core.data.build_dataset`.
build = FileDataset(NAME, CLASSES, PALETTE, LABEL_MAP, SPLITS, list_split)
