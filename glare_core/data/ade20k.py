"""ADE20K (SceneParsing, ``ADEChallengeData2016``): 150 classes, 20210 train / 2000 val images.

Layout (the official http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip)::

    ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_XXXXXXXX.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_XXXXXXXX.png     mode L

Known: annotation value 0 is "other objects" and is not one of the 150 evaluated classes; values 1..150 are
the classes of ``objectInfo150`` in order. Here **0 -> 255 (ignore)** and k -> k-1 (the usual "reduce zero
label"). The palette is this project's choice (Design): the PASCAL VOC bit-interleaving colour map, entries
1..150. The challenge's test images have no public labels, so only ``train`` and ``val`` exist here.
Colab: :func:`glare_core.data.download.download_ade20k` fetches the official archive.
"""

from __future__ import annotations

from pathlib import Path

from .base import LabelMap
from .files import FileDataset, SplitFiles, list_images, pair_labels, require_dir, resolve_root

NAME = "ade20k"
CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip


def voc_colormap(n: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map: entry i spreads the bits of i over the high bits of R, G and B."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return colours


PALETTE = tuple(voc_colormap(len(CLASSES) + 1)[1:])
LABEL_MAP = LabelMap.shifted(len(CLASSES), zero_is_ignore=True)
SPLITS = {"train": "training", "val": "validation"}
CANDIDATES = ("ade20k/ADEChallengeData2016", "ADEChallengeData2016", "ade20k", "ADE20K")
FIX = (
    "download it with glare_core.data.download.download_ade20k() (Colab), or unzip the official "
    "ADEChallengeData2016.zip into GLARE_DATA_DIR."
)


def list_split(split: str, root: str | Path | None, labels: bool, strict: bool) -> SplitFiles:
    """The files of one split: ``images/<training|validation>/*.jpg`` and their ``annotations/`` maps."""
    folder = resolve_root(NAME, root, CANDIDATES, ("images",), FIX)
    image_dir = require_dir(folder / "images" / SPLITS[split], f"ade20k split {split!r}", FIX)
    images, label_paths, problems = list_images(image_dir, suffixes=(".jpg", ".jpeg", ".png")), None, []
    if labels:
        ann = folder / "annotations" / SPLITS[split]
        missing = (
            f"ade20k/{split}: labels asked for, but {ann} does not exist. Fix: re-extract the official "
            "archive (it holds annotations/ beside images/), or use labels=False."
        )
        label_for = lambda p: ann / (p.stem + ".png")
        images, label_paths, problems = pair_labels(images, ann, label_for, str(image_dir), strict, missing)
    return SplitFiles(folder, images, label_paths, problems, str(image_dir), f"the folder is empty. {FIX}")


#: One ADE20K split (see the module docstring): ``build(request: SplitRequest)``.
build = FileDataset(
    NAME,
    CLASSES,
    PALETTE,
    LABEL_MAP,
    SPLITS,
    list_split,
    split_fix="use 'train' or 'val' (the challenge's test labels are not public).",
)
