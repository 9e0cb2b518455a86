"""Cityscapes: 19 evaluation classes, 2975 train / 500 val images, 2048 x 1024 (fixtures only here).

Layout (the official ``leftImg8bit_trainvaltest.zip`` + ``gtFine_trainvaltest.zip``)::

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Known: the ``labelIds`` maps hold the 34 Cityscapes ids (0..33); the official ``trainId`` table maps 19 of
them to classes 0..18 and every other id (unlabeled, ego vehicle, parking, guard rail, caravan, trailer ...)
to 255 (ignore), as in cityscapesScripts ``labels.py``. The test split's ``gtFine`` maps are placeholders:
evaluate on val. Cityscapes needs a login (https://www.cityscapes-dataset.com), so there is no download
helper.
"""

from __future__ import annotations

from pathlib import Path

from .base import IGNORE_INDEX, LabelMap
from .files import FileDataset, SplitFiles, list_images, pair_labels, require_dir, resolve_root

NAME = "cityscapes"
CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
PALETTE = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)
#: labelId -> trainId for the 19 evaluated classes (cityscapesScripts ``labels.py``).
LABEL_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
LABEL_MAP = LabelMap(
    len(CLASSES),
    {**{i: LABEL_ID_TO_TRAIN_ID.get(i, IGNORE_INDEX) for i in range(34)}, IGNORE_INDEX: IGNORE_INDEX},
)
SPLITS = ("train", "val", "test")
CANDIDATES = ("cityscapes", "Cityscapes")
FIX = (
    "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
    "https://www.cityscapes-dataset.com (login needed), unzip both into one folder and point GLARE_DATA_DIR "
    "(or root=) at it."
)


def list_cityscapes_layout(
    name: str,
    split: str,
    root: str | Path | None,
    labels: bool,
    strict: bool,
    candidates: tuple[str, ...],
    fix: str,
    image_tag: str,
    label_tag: str,
    no_labels: str,
    empty_fix: str,
) -> SplitFiles:
    """The files of one split in the Cityscapes layout (IDD-Lite keeps it too).

    Images are ``leftImg8bit/<split>/<sub>/<id><image_tag>.<ext>``; with ``labels``, the map of each is
    ``gtFine/<split>/<sub>/<id><label_tag>.png``.

    Args:
        name: the dataset's name (for messages).
        split, root, labels, strict: as in ``list_split``.
        candidates, fix: the dataset's folder names and the fix when none is found.
        image_tag: how an image's stem ends (``"_leftImg8bit"``); other files are not images of the split.
        label_tag: what replaces ``image_tag`` in the label map's stem (``"_gtFine_labelIds"``).
        no_labels: the rest of the message when labels are asked for and ``gtFine/<split>`` does not exist.
        empty_fix: the fix the error for a split without images gives.
    """
    folder = resolve_root(name, root, candidates, ("leftImg8bit",), fix)
    image_dir = require_dir(folder / "leftImg8bit" / split, f"{name} split {split!r}", fix)
    images = [p for p in list_images(image_dir, recursive=True) if p.stem.endswith(image_tag)]
    label_paths, problems = None, []
    if labels:
        gt = folder / "gtFine" / split

        def label_for(p: Path) -> Path:
            stem = p.stem[: -len(image_tag)]
            return gt / p.parent.relative_to(image_dir) / f"{stem}{label_tag}.png"

        missing = f"{name}/{split}: labels asked for, but {gt} does not exist{no_labels}"
        images, label_paths, problems = pair_labels(images, gt, label_for, str(image_dir), strict, missing)
    return SplitFiles(folder, images, label_paths, problems, str(image_dir), empty_fix)


def list_split(split: str, root: str | Path | None, labels: bool, strict: bool) -> SplitFiles:
    """The files of one split: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and their label maps.

    With ``labels``, the map of ``<stem>_leftImg8bit.png`` is
    ``gtFine/<split>/<city>/<stem>_gtFine_labelIds.png``.
    """
    no_gt = ". Fix: unzip gtFine_trainvaltest.zip beside leftImg8bit/, or use labels=False."
    empty = f"expected <city>/*_leftImg8bit.png there. {FIX}"
    return list_cityscapes_layout(
        NAME, split, root, labels, strict, CANDIDATES, FIX, "_leftImg8bit", "_gtFine_labelIds", no_gt, empty
    )


#: One Cityscapes split (see the module docstring): ``build(request: SplitRequest)``.
build = FileDataset(NAME, CLASSES, PALETTE, LABEL_MAP, SPLITS, list_split)
