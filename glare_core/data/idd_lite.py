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

from . import cityscapes
from .base import LabelMap
from .cityscapes import list_cityscapes_layout
from .files import FileDataset, SplitFiles

NAME = "idd_lite"
#: Each class -> the closest Cityscapes class, whose colour it is drawn in.
CLOSEST_CITYSCAPES_CLASS = {
    "drivable": "road",
    "non-drivable": "sidewalk",
    "living things": "person",
    "vehicles": "car",
    "road-side objects": "traffic sign",
    "far objects": "building",
    "sky": "sky",
}
CLASSES = tuple(CLOSEST_CITYSCAPES_CLASS)
PALETTE = tuple(cityscapes.PALETTE[cityscapes.CLASSES.index(c)] for c in CLOSEST_CITYSCAPES_CLASS.values())
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
    no_gt = " (IDD-Lite's test split has no labels). Fix: use labels=False, or evaluate on 'val'."
    empty = f"expected <seq>/<id>_image.jpg files there. {FIX}"
    return list_cityscapes_layout(
        NAME, split, root, labels, strict, CANDIDATES, FIX, "_image", "_label", no_gt, empty
    )


#: One IDD-Lite split (see the module docstring): ``build(request: SplitRequest)``.
build = FileDataset(NAME, CLASSES, PALETTE, LABEL_MAP, SPLITS, list_split)
