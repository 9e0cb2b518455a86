"""Frozen-feature extraction with an on-disk cache, so that comparing many backbones is cheap.

Design (``glare-method.md`` section 4): the segmentation probe trains on *frozen* patch tokens. They are
computed once per (backbone weights, dataset, resolution, layers) and stored in ``paths.cache_dir() /
"features" / <key>``:

* the key hashes every parameter and buffer of the backbone (so an adapter that changed by one step gets a new
  key), the dataset's name, split and image files (path, size, modification time; or the pixels themselves for
  in-memory datasets such as ``synthetic``), the input resolution and the block indices; cached labels are
  keyed on the label files (path, size, modification time) and the class mapping too;
* storage is safetensors, features in fp16 ((N, C, h, w) with C = D x number of layers), labels as uint8;
* writes are atomic (a temporary file, then ``os.replace``), so an interrupted run never leaves a half file.

Extraction runs in batches under autocast in the precision ``"auto"`` picks for the machine (bf16 where the
CPU or GPU multiplies bf16 natively, fp16 on a GPU without it, float32 elsewhere; :mod:`glare_core.precision`;
the precision used is part of the cache key), with a tqdm bar that is off in smoke mode (``GLARE_SMOKE=1``)
and when stderr is not a terminal. Pass ``cache=False`` to keep everything in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .backbone import Backbone
from .paths import cache_dir, smoke_mode
from .precision import autocast, resolve_precision
from .runs import atomic_path

#: Bump when the stored format or the extraction changes, so old cache entries are not reused.
CACHE_VERSION = 1


# -------------------------------------------------------------------------------------------------- options
def resolve_layers(layers: str | Sequence[int] | int, depth: int) -> list[int]:
    """Block indices (0-based, sorted) for a layer option.

    Args:
        layers: ``"last"`` (the final block, default), ``"last4"`` (the last four blocks, concatenated),
            ``"lastN"``, a comma list such as ``"9"`` or ``"8,11"``, or a sequence / single int (negative
            counts from the end).
        depth: number of blocks of the backbone.
    """
    if isinstance(layers, str):
        text = layers.strip().lower()
        if text.startswith("last"):
            n = int(text[4:] or 1)
            if not 1 <= n <= depth:
                raise ValueError(f"layers={layers!r}: the backbone has {depth} blocks")
            return list(range(depth - n, depth))
        try:
            layers = [int(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise ValueError(
                f"layers={layers!r}: use 'last', 'last4', or block indices such as '9' or '8,11'"
            ) from None
    if isinstance(layers, int):
        layers = [layers]
    out = sorted({int(i) % depth for i in layers if -depth <= int(i) < depth})
    if not out or len(out) != len(set(layers)):
        raise ValueError(f"layers={list(layers)}: block indices must lie in [-{depth}, {depth})")
    return out


def probe_size(size: tuple[int, int], patch: int) -> tuple[int, int]:
    """(W, H) as given on the command line -> (H, W) rounded to the nearest multiples of the patch size."""
    w, h = size
    return max(patch, round(h / patch) * patch), max(patch, round(w / patch) * patch)


def parse_size(text: str) -> tuple[int, int]:
    """``"448x336"`` -> (448, 336), i.e. (W, H)."""
    try:
        w, h = (int(t) for t in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r}: write it as WIDTHxHEIGHT, e.g. 448x336") from None
    return w, h


# --------------------------------------------------------------------------------------------- fingerprints
def backbone_fingerprint(backbone: Backbone) -> str:
    """A hash over every parameter and buffer of the backbone (names, shapes, dtypes, values) and its
    settings.

    Two backbones get the same fingerprint exactly when they compute the same function (up to module code), so
    the feature cache is invalidated whenever a weight changes. Hashing ViT-S/14 (22 M parameters) takes about
    0.1 s.
    """
    h = hashlib.sha256()
    h.update(
        f"{type(backbone.vit).__name__}|antialias={getattr(backbone, 'pos_embed_antialias', None)}".encode()
    )
    tensors = dict(backbone.named_parameters())
    tensors.update(dict(backbone.named_buffers()))
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{tuple(tensors[name].shape)}|{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


def dataset_fingerprint(dataset: Dataset) -> str:
    """A hash identifying a dataset's content: name, split, length and image files (path, size, mtime).

    Datasets whose ``image_paths`` are not files on disk (in-memory or synthetic data) are hashed by their
    pixels and labels instead. Label files are hashed separately by :func:`label_fingerprint`, so cached
    features survive a change of labels and cached labels do not.
    """
    h = hashlib.sha256()
    n = len(dataset)
    h.update(
        f"{getattr(dataset, 'name', type(dataset).__name__)}|{getattr(dataset, 'split', '')}|{n}".encode()
    )
    paths = list(getattr(dataset, "image_paths", None) or [])
    if len(paths) == n and all(os.path.isfile(p) for p in paths):
        for p in paths:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}".encode())
    else:
        for i in range(n):
            item = dataset[i]
            h.update(item["image"].contiguous().numpy().tobytes())
            if "label" in item:
                h.update(item["label"].contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def label_fingerprint(dataset: Dataset) -> str:
    """A hash of a dataset's labels: its classes, label mapping and label files (path, size, mtime).

    Part of the key of cached labels: rewrite a label map in place and its cached labels are recomputed.
    In-memory datasets (no ``label_paths`` on disk) are covered by :func:`dataset_fingerprint`, which hashes
    their labels' values.
    """
    h = hashlib.sha256()
    h.update(json.dumps(list(getattr(dataset, "classes", []) or []), default=str).encode())
    mapping = getattr(getattr(dataset, "label_map", None), "mapping", None)
    if mapping is not None:  # raw id -> train id
        h.update(json.dumps(sorted(mapping.items())).encode())
    for p in getattr(dataset, "label_paths", None) or []:
        try:
            st = os.stat(p)
        except OSError:
            h.update(f"{os.path.abspath(p)}|missing".encode())
            continue
        h.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def cache_key(*parts: object) -> str:
    """A short stable hash of JSON-able parts."""
    text = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


# ----------------------------------------------------------------------------------------------- disk cache
class FeatureCache:
    """A folder of safetensors files, one per key, written atomically.

    Args:
        root: the folder (default ``paths.cache_dir() / "features"``).
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else cache_dir() / "features"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The stored tensors, or None when absent (or unreadable: then the entry is recomputed)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return load_file(str(path))
        except Exception as err:  # a corrupt entry is a cache miss, not a failure
            print(f"warning: ignoring unreadable feature cache {path} ({err})", file=sys.stderr)
            return None

    def save(
        self, key: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
    ) -> Path:
        """Write atomically (:func:`~glare_core.runs.atomic_path`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        return path


# ----------------------------------------------------------------------------------------------- extraction
def autocast_context(device: torch.device, precision: str = "auto"):
    """Autocast for inference in ``precision`` (``"auto"``: bf16 where the hardware multiplies bf16 natively,
    fp16 on a GPU without it, else float32; :func:`glare_core.precision.resolve_precision`)."""
    return autocast(device, resolve_precision(precision, device))


def show_progress(progress: bool | None) -> bool:
    """tqdm on unless asked otherwise, in smoke mode, or when stderr is not a terminal."""
    if progress is not None:
        return progress
    return not smoke_mode() and sys.stderr.isatty()


def label_dtype(num_classes: int) -> torch.dtype:
    """uint8 storage while class ids and the ignore index 255 fit, else int32."""
    return torch.uint8 if num_classes < 255 else torch.int32


@dataclass
class FeatureSet:
    """Cached probe inputs for one dataset.

    Attributes:
        features: (N, C, h, w) fp16 patch-token maps, C = D x len(layers).
        labels: (N, H, W) labels resized (nearest) to the probe input size, or a list of N (H_i, W_i) labels
            at full resolution; uint8 (255 = ignore) or int32. None for an unlabelled dataset.
        size: (H, W) the images were resized to.
        layers: the block indices whose tokens were concatenated.
        key: the cache key of the features.
        cached: True when the features came from the disk cache.
        seconds: time spent extracting (0 when cached).
    """

    features: torch.Tensor
    labels: torch.Tensor | list[torch.Tensor] | None
    size: tuple[int, int]
    layers: list[int]
    key: str
    cached: bool
    seconds: float


def unit_image(image: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A dataset image as float in [0, 1], resized (bilinear, antialiased) to ``size`` = (H, W) if given.

    Args:
        image: (3, H0, W0), uint8 in [0, 255] or float in [0, 1].
        size: target (H, W); None or the image's own size: no resize.

    Returns:
        (3, H, W) float32, clamped to [0, 1].
    """
    image = image.float().div(255.0) if image.dtype == torch.uint8 else image.float()
    if size is not None and tuple(size) != tuple(image.shape[-2:]):
        image = F.interpolate(
            image[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True
        )[0]
    return image.clamp(0, 1)


class _Resized(Dataset):
    """Wraps a segmentation dataset: images to float (3, H, W) in [0, 1] at the probe size; labels as
    wanted."""

    def __init__(self, dataset: Dataset, size: tuple[int, int], label_mode: str | None, dtype: torch.dtype):
        self.dataset, self.size, self.label_mode, self.dtype = dataset, size, label_mode, dtype

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        image = item["image"]
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(
                f"dataset item {i} ({item.get('path', '?')}): image must be (3, H, W), got {image.shape}"
            )
        out = {"image": unit_image(image, self.size)}
        if self.label_mode is not None:
            label = item["label"]
            if self.label_mode == "probe":
                label = F.interpolate(label[None, None].float(), size=self.size, mode="nearest-exact")[0, 0]
            out["label"] = label.to(self.dtype)
        return out


def _collate(items: list[dict]) -> dict:
    out = {"image": torch.stack([it["image"] for it in items])}
    if "label" in items[0]:
        labels = [it["label"] for it in items]
        same = all(lab.shape == labels[0].shape for lab in labels)
        out["label"] = torch.stack(labels) if same else labels
    return out


@torch.no_grad()
def _forward_features(backbone: Backbone, images: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """(B, 3, H, W) -> (B, D * len(layers), h, w): the chosen blocks' normed patch tokens as feature maps."""
    out = backbone(images, return_attn=False, layers=layers)
    h, w = out.grid
    maps = [out.intermediates[i] for i in layers]  # each (B, N, D)
    x = torch.cat(maps, dim=-1)
    return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)


def extract_features(
    backbone: Backbone,
    dataset: Dataset,
    size: tuple[int, int],
    layers: str | Sequence[int] = "last",
    labels: str | None = "probe",
    batch_size: int = 8,
    cache: bool = True,
    cache_root: str | Path | None = None,
    precision: str = "auto",
    num_workers: int = 0,
    progress: bool | None = None,
    desc: str = "features",
) -> FeatureSet:
    """Frozen patch-token maps (and labels) of a whole dataset, from the disk cache when possible.

    Args:
        backbone: the frozen backbone (put in eval mode here).
        dataset: a :class:`~glare_core.data.SegmentationDataset` (items ``{"image": uint8 (3, H, W), "label":
            ...}``).
        size: (H, W) the images are resized to (multiples of the patch size; see :func:`probe_size`).
        layers: see :func:`resolve_layers` (``"last"`` or ``"last4"``).
        labels: ``"probe"``: labels resized (nearest) to ``size`` and stacked (for training);
            ``"full"``: a list of labels at their own resolution (for evaluation); None: no labels.
        batch_size: images per forward.
        cache: read and write the disk cache; False keeps everything in memory.
        cache_root: the cache folder (default ``paths.cache_dir() / "features"``).
        precision: autocast precision (``"auto"``, ``"bf16"``, ``"fp16"`` or ``"fp32"``).
        num_workers: DataLoader workers decoding images.
        progress: tqdm bar (default: on in a terminal, off in smoke mode).

    Returns:
        :class:`FeatureSet` with ``features`` (N, C, h, w) fp16.
    """
    p = backbone.patch_size
    if size[0] % p or size[1] % p:
        raise ValueError(
            f"feature size {size} (H, W) must be multiples of the patch size {p}; use probe_size()"
        )
    layer_ids = resolve_layers(layers, backbone.depth)
    if labels not in (None, "probe", "full"):
        raise ValueError(f"labels={labels!r}: use 'probe', 'full' or None")
    if labels is not None and not getattr(dataset, "has_labels", True):
        raise ValueError(
            f"dataset {getattr(dataset, 'name', '?')}/{getattr(dataset, 'split', '?')} has no labels"
        )
    store = FeatureCache(cache_root) if cache else None
    num_classes = int(getattr(dataset, "num_classes", 254))
    ltype = label_dtype(num_classes)

    data_fp = dataset_fingerprint(dataset) if cache else ""
    backbone_fp = backbone_fingerprint(backbone) if cache else ""
    precision = resolve_precision(precision, next(backbone.parameters()).device).name
    feat_key = cache_key("features", backbone_fp, data_fp, size, layer_ids, precision)
    label_fp = label_fingerprint(dataset) if cache and labels is not None else ""
    label_key = cache_key("labels", data_fp, label_fp, size if labels == "probe" else "full", str(ltype))
    feats = labs = None
    if store is not None:
        hit = store.load(feat_key)
        feats = hit["features"] if hit is not None else None
        if labels is not None:
            hit = store.load(label_key)
            if hit is not None:
                labs = (
                    hit["labels"] if "labels" in hit else [hit[f"label_{i:06d}"] for i in range(len(dataset))]
                )
    need_labels = labels is not None and labs is None
    if feats is not None and not need_labels:
        return FeatureSet(feats, labs, size, layer_ids, feat_key, cached=True, seconds=0.0)

    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    loader = DataLoader(
        _Resized(dataset, size, labels if need_labels else None, ltype),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    chunks: list[torch.Tensor] = []
    label_list: list[torch.Tensor] = []
    start = time.perf_counter()
    compute = feats is None
    for batch in tqdm(loader, desc=desc, disable=not show_progress(progress), leave=False):
        if compute:
            with autocast_context(device, precision):
                f = _forward_features(backbone, batch["image"].to(device), layer_ids)
            chunks.append(f.to(torch.float16).cpu())
        if need_labels:
            lab = batch["label"]
            label_list.extend(lab.unbind(0) if torch.is_tensor(lab) else lab)
    backbone.train(was_training)
    seconds = time.perf_counter() - start if compute else 0.0
    if compute:
        feats = torch.cat(chunks)
        if store is not None:
            meta = {"backbone": backbone_fp, "dataset": str(getattr(dataset, "name", ""))}
            meta.update(
                {"split": str(getattr(dataset, "split", "")), "size": str(size), "layers": str(layer_ids)}
            )
            store.save(feat_key, {"features": feats}, meta)
    if need_labels:
        labs = torch.stack(label_list) if labels == "probe" else label_list
        if store is not None:
            tensors = (
                {"labels": labs} if labels == "probe" else {f"label_{i:06d}": t for i, t in enumerate(labs)}
            )
            store.save(label_key, tensors)
    return FeatureSet(feats, labs, size, layer_ids, feat_key, cached=not compute, seconds=seconds)


def extract_global_features(
    backbone: Backbone,
    images: Iterable[torch.Tensor],
    total: int | None = None,
    pool: str = "cls",
    precision: str = "auto",
    progress: bool | None = None,
    desc: str = "features",
) -> torch.Tensor:
    """One vector per image: the [CLS] token or the mean of the patch tokens (for k-NN,
    :mod:`glare_core.knn`).

    Args:
        backbone: the frozen backbone.
        images: an iterable of (B, 3, H, W) float batches in [0, 1].
        total: number of batches (for the progress bar).
        pool: ``"cls"`` or ``"mean"`` (mean-pooled patch tokens).

    Returns:
        (N, D) float32.
    """
    if pool not in ("cls", "mean"):
        raise ValueError(f"pool={pool!r}: use 'cls' or 'mean'")
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    out = []
    with torch.no_grad():
        for batch in tqdm(images, total=total, desc=desc, disable=not show_progress(progress), leave=False):
            with autocast_context(device, precision):
                o = backbone(batch.to(device), return_attn=False)
            out.append((o.cls if pool == "cls" else o.patches.mean(1)).float().cpu())
    backbone.train(was_training)
    return torch.cat(out)
