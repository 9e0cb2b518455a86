"""LoveDA (Land-cOVEr Domain Adaptive): 7 land-cover classes, 1024 x 1024 remote-sensing tiles.

Layout (the official ``Train.zip``, ``Val.zip``, ``Test.zip`` from Zenodo, unzipped into one folder)::

    {Train,Val,Test}/{Urban,Rural}/images_png/<id>.png
    {Train,Val}/{Urban,Rural}/masks_png/<id>.png           mode L

Known: mask values 1..7 are background, building, road, water, barren, forest, agriculture; **0 = no-data,
mapped to 255** (ignore); k -> k-1 for the classes. ``domain`` chooses ``"urban"``, ``"rural"`` or ``"both"``
(default, urban first). The palette is this project's choice (Design). Test masks are not public.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import LabelMap
from .files import FileDataset, SplitFiles, list_images, pair_labels, resolve_root

NAME = "loveda"
CLASSES = ("background", "building", "road", "water", "barren", "forest", "agriculture")
PALETTE = (
    (255, 255, 255),
    (255, 0, 0),
    (255, 255, 0),
    (0, 0, 255),
    (159, 129, 183),
    (0, 255, 0),
    (255, 195, 128),
)
LABEL_MAP = LabelMap.shifted(len(CLASSES), zero_is_ignore=True)
SPLITS = {"train": "Train", "val": "Val", "test": "Test"}
DOMAINS = {"urban": ("Urban",), "rural": ("Rural",), "both": ("Urban", "Rural")}
CANDIDATES = ("loveda", "LoveDA")
FIX = (
    "download Train.zip, Val.zip (and Test.zip) of LoveDA from Zenodo (record 5706578), unzip them into one "
    "folder and point GLARE_DATA_DIR (or root=) at it."
)


def list_split(
    split: str, root: str | Path | None, labels: bool, strict: bool, domain: str = "both"
) -> SplitFiles:
    """The files of one split: ``<Split>/<Domain>/images_png/*.png`` and their masks.

    ``domain`` is "urban", "rural" or "both" (urban first); with ``labels``, each tile's mask has the same
    name in ``masks_png/`` beside ``images_png/``.
    """
    if domain.lower() not in DOMAINS:
        raise DataError(f"loveda: unknown domain {domain!r}. Fix: use one of {tuple(DOMAINS)}.")
    folder = resolve_root(NAME, root, CANDIDATES, tuple(SPLITS.values()), FIX)
    images, label_paths, problems = [], [] if labels else None, []
    seen_any = False
    for sub in DOMAINS[domain.lower()]:
        base = folder / SPLITS[split] / sub
        image_dir = base / "images_png"
        if not image_dir.is_dir():
            continue
        seen_any = True
        imgs = list_images(image_dir)
        if labels:
            masks = base / "masks_png"
            missing = (
                f"loveda/{split}: labels asked for, but {masks} does not exist (LoveDA's test masks are not "
                "public). Fix: use labels=False, or evaluate on 'val'."
            )
            label_for = lambda p, m=masks: m / p.name
            imgs, labs, probs = pair_labels(imgs, masks, label_for, str(image_dir), strict, missing)
            label_paths.extend(labs)
            problems.extend(probs)
        images.extend(imgs)
    where = str(folder / SPLITS[split])
    if not seen_any:
        raise DataError(
            f"loveda/{split}: no {'/'.join(DOMAINS[domain.lower()])}/images_png folder under {where}. Fix: "
            f"{FIX}",
            where,
        )
    return SplitFiles(folder, images, label_paths, problems, where, f"images_png/ is empty. {FIX}")


#: One LoveDA split (see the module docstring): ``build(request: SplitRequest, domain="both")``.
build = FileDataset(NAME, CLASSES, PALETTE, LABEL_MAP, SPLITS, list_split)
