"""Synthetic scenes for tests and smoke runs: textured shapes on textured backgrounds, with exact labels.

Every number computed on this dataset is about *synthetic* data: its ``name`` is ``"synthetic"`` so results
carry that label wherever they appear. It exists so that the whole pipeline (continual pre-training, the
segmentation probe, the book in smoke mode) runs in seconds without any real data.

Scene (Design): a background of smooth colour blobs and fine noise (class 0), then 2 to 5 shapes painted in
turn (later ones occlude earlier ones). Each shape class has its own mean colour and its own stripe texture
(orientation and frequency), jittered per shape, so that both colour and texture carry the class and a linear
probe on good features can separate them. Deterministic: item ``i`` of split ``s`` with seed ``seed`` is
always the same image, whatever ``limit`` or the order of access.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from ..errors import DataError
from .base import SegmentationDataset, SplitRequest, finish

NAME = "synthetic"
CLASSES = ("background", "disc", "box", "triangle", "ring")
PALETTE = ((90, 90, 90), (220, 60, 60), (60, 170, 60), (60, 90, 220), (230, 190, 40))
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def _split_code(split: str) -> int:
    return _SPLIT_CODES.get(split, zlib.crc32(split.encode()) % 10_000 + 3)


def _texture(rng: np.random.Generator, cls: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(H, W, 3) float texture of a shape of class ``cls``: class colour times class stripes."""
    k = len(CLASSES) - 1
    theta = cls * np.pi / k + rng.normal(0.0, 0.1)
    freq = 3.0 + 3.0 * cls + rng.normal(0.0, 0.3)
    phase = rng.uniform(0.0, 2 * np.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    colour = np.asarray(PALETTE[cls], dtype=np.float32) / 255.0 + rng.normal(0.0, 0.06, 3)
    return colour * (0.65 + 0.35 * stripes)[..., None]


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(H, W, 3) smooth colour blobs (a few random low-frequency waves) around a random grey."""
    out = np.full(yy.shape + (3,), rng.uniform(0.3, 0.6), dtype=np.float32)
    for _ in range(3):
        f = rng.uniform(0.5, 2.0, 2)
        wave = np.sin(2 * np.pi * (f[0] * xx + f[1] * yy) + rng.uniform(0, 2 * np.pi))
        out += 0.08 * wave[..., None] * rng.normal(0.0, 1.0, 3)
    return out


def _shape_mask(rng: np.random.Generator, cls: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(H, W) bool mask of one shape of class ``cls`` at a random place and size (coordinates in [0, 1])."""
    cy, cx = rng.uniform(0.15, 0.85, 2)
    r = rng.uniform(0.12, 0.28)
    dy, dx = yy - cy, xx - cx
    if cls == 1:  # disc
        return dy**2 + dx**2 < r**2
    if cls == 2:  # box
        a, b = r * rng.uniform(0.7, 1.3, 2)
        return (np.abs(dx) < a) & (np.abs(dy) < b)
    if cls == 3:  # triangle: three half-planes around the centre
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
        pts = np.stack([cx + 1.3 * r * np.cos(angles), cy + 1.3 * r * np.sin(angles)], 1)
        inside = np.ones_like(xx, dtype=bool)
        for i in range(3):
            (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % 3]
            inside &= (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) > 0
        return inside
    d2 = dy**2 + dx**2  # ring
    return (d2 < r**2) & (d2 > (0.55 * r) ** 2)


def make_scene(seed: int, split: str, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic scene: (H, W, 3) uint8 image and (H, W) int64 labels in [0, len(CLASSES))."""
    h, w = size
    rng = np.random.default_rng([seed, _split_code(split), index])
    scale = max(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / scale
    image = _background(rng, yy, xx)
    label = np.zeros((h, w), dtype=np.int64)
    for _ in range(int(rng.integers(2, 6))):
        cls = int(rng.integers(1, len(CLASSES)))
        mask = _shape_mask(rng, cls, yy * scale / h, xx * scale / w)
        image[mask] = _texture(rng, cls, yy, xx)[mask]
        label[mask] = cls
    image += rng.normal(0.0, 0.02, image.shape)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), label


class SyntheticDataset(SegmentationDataset):
    """Generated scenes (see the module docstring); ``image_paths`` are ``synthetic://<split>/<index>``."""

    def __init__(self, split: str, num_images: int, size: tuple[int, int], seed: int, labels: bool):
        self.indices = list(range(num_images))
        paths = [f"synthetic://{split}/{i}" for i in self.indices]
        super().__init__(NAME, split, CLASSES, PALETTE, paths, labels, size=size)
        self.seed = seed
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def _scene(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is None or self._cache[0] != index:
            img, lab = make_scene(self.seed, self.split, self.indices[index], self.size)
            self._cache = (index, img, lab)
        return self._cache[1], self._cache[2]

    def load_image(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self._scene(index)[0].transpose(2, 0, 1)))

    def load_label(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self._scene(index)[1])

    def select(self, indices):
        self.indices = [self.indices[i] for i in indices]
        self._cache = None
        return super().select(indices)


def build(request: SplitRequest, *, num_images: int = 16) -> SegmentationDataset:
    """``num_images`` scenes of ``request.size`` (H, W), default 112 x 112 (a multiple of patch 14 and 16).

    ``request.seed`` chooses the scenes; ``request.root`` and ``request.strict`` are not used.
    """
    if num_images < 1:
        raise DataError(f"synthetic: num_images must be >= 1, got {num_images}")
    size = tuple(request.size) if request.size is not None else (112, 112)
    if len(size) != 2 or min(size) < 8:
        raise DataError(f"synthetic: size must be (H, W) with both >= 8, got {size}")
    ds = SyntheticDataset(request.split, num_images, size, request.seed, request.labels)
    return finish(ds, "synthetic", "use num_images >= 1")
