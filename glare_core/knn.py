"""Forgetting: k-NN accuracy on the source domain (Tiny-ImageNet) before and after continual pre-training.

Known (GLARE abstract): training only adapters on the target domain is meant to keep what the base model knew.
Design (``glare-method.md`` section 4, "Forgetting"): measure it as k-NN top-1 accuracy on generic object
images, with DINO's weighted k-NN classifier (``eval_knn.py``, Caron et al. 2021):

* features: the [CLS] token (option: mean-pooled patch tokens), L2-normalised;
* similarity: cosine; the k = 20 nearest bank images vote for their class with weight exp(cos / T), T = 0.07;
* bank: a fixed subset of Tiny-ImageNet *train* (default 20 images per class, chosen with a fixed seed);
* queries: the Tiny-ImageNet *validation* split (2,020 images, 10 per class);
* images (64x64) resized to 224x224 (112 in smoke mode), no crop.

The bank and query features are cached on disk like the segmentation features (:mod:`glare_core.features`), so
a re-run is instant. Accuracy with a 20-per-class bank is lower than DINO's full-train-set k-NN numbers:
compare before / after with the same settings only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .backbone import Backbone
from .features import FeatureCache, backbone_fingerprint, cache_key, extract_global_features, show_progress
from .paths import find_dataset_dir, smoke_mode
from .precision import resolve_precision

if TYPE_CHECKING:
    import datasets


@torch.no_grad()
def knn_classify(
    bank_features: torch.Tensor,
    bank_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 256,
) -> torch.Tensor:
    """DINO's weighted k-NN classifier (``eval_knn.knn_classifier``).

    Args:
        bank_features: (M, D) features of the labelled bank (normalised here).
        bank_labels: (M,) int64 class ids in [0, num_classes).
        query_features: (Q, D) features to classify (normalised here).
        num_classes: C.
        k: neighbours (clipped to M).
        temperature: T in the vote weight exp(cos / T).
        chunk: queries per similarity matrix.

    Returns:
        (Q, C) class scores: sum over the k nearest neighbours of exp(cos / T) for their class. ``argmax``
        gives the top-1 prediction.
    """
    bank = F.normalize(bank_features.float(), dim=1)
    queries = F.normalize(query_features.float(), dim=1)
    k = min(k, bank.shape[0])
    out = []
    for i in range(0, queries.shape[0], chunk):
        sim = queries[i : i + chunk] @ bank.T  # (q, M)
        dist, idx = sim.topk(k, dim=1, largest=True, sorted=True)  # (q, k)
        neighbours = bank_labels[idx]  # (q, k)
        weights = (dist / temperature).exp()
        scores = torch.zeros(sim.shape[0], num_classes)
        scores.scatter_add_(1, neighbours, weights)
        out.append(scores)
    return torch.cat(out)


def knn_accuracy(
    scores: torch.Tensor, labels: torch.Tensor, topk: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracies (fractions) of (Q, C) scores against (Q,) labels: ``{"top1": ..., "top5": ...}``."""
    out = {}
    for t in topk:
        t_eff = min(t, scores.shape[1])
        hit = (scores.topk(t_eff, dim=1).indices == labels[:, None]).any(1)
        out[f"top{t}"] = float(hit.double().mean())
    return out


# -------------------------------------------------------------------------------------------- Tiny-ImageNet
def tinyimagenet_files(root: str | Path | None = None) -> dict[str, list[str]]:
    """The parquet shards: ``{"train": [...], "validation": [...]}``.

    Args:
        root: the folder with ``train-*.parquet`` and ``validation-*.parquet`` (default: ``tinyimagenet``
            under :func:`glare_core.paths.data_roots`).
    """
    folder = (
        Path(root) if root is not None else find_dataset_dir("tinyimagenet", "tinyimagenet", "tiny-imagenet")
    )
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(
            f"Tiny-ImageNet parquet folder not found ({root or 'tinyimagenet under the data roots'}). "
            "Fix: pass "
            "--knn-root DIR (a folder with train-*.parquet and validation-*.parquet) or set GLARE_DATA_DIR."
        )
    files = {
        "train": sorted(str(p) for p in folder.glob("train-*.parquet")),
        "validation": sorted(str(p) for p in folder.glob("validation-*.parquet")),
    }
    for split, found in files.items():
        if not found:
            raise FileNotFoundError(
                f"{folder}: no {split}-*.parquet files. Fix: point root at the parquet folder."
            )
    return files


def select_bank(
    labels: Sequence[int], per_class: int, seed: int = 0, classes: Sequence[int] | None = None
) -> list[int]:
    """Indices of a fixed bank: ``per_class`` items of every class, chosen by ``seed``.

    A class with fewer items gives all of them; ``classes`` restricts the bank to those class ids. The indices
    are returned sorted.
    """
    labels_t = torch.as_tensor(list(labels))
    wanted = sorted(set(labels_t.tolist())) if classes is None else list(classes)
    gen = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for c in wanted:
        idx = (labels_t == c).nonzero().flatten()
        chosen += idx[torch.randperm(len(idx), generator=gen)[:per_class]].tolist()
    return sorted(chosen)


def _image_batches(dataset, indices: list[int], size: int, batch_size: int):
    """(B, 3, size, size) float batches in [0, 1] from a ``datasets`` split with an ``image`` column."""
    for i in range(0, len(indices), batch_size):
        rows = dataset.select(indices[i : i + batch_size])["image"]
        ims = []
        for im in rows:
            arr = torch.frombuffer(bytearray(im.convert("RGB").tobytes()), dtype=torch.uint8)
            ims.append(arr.reshape(im.height, im.width, 3).permute(2, 0, 1).float() / 255.0)
        ims = [
            F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
            for x in ims
        ]
        yield torch.stack(ims).clamp(0, 1)


def _load_parquet(
    files: dict[str, list[str]], progress: bool | None
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Tiny-ImageNet's train and validation splits (``datasets``), without progress bars unless asked."""
    import datasets

    quiet = not show_progress(progress) and not datasets.utils.are_progress_bars_disabled()
    if quiet:
        datasets.disable_progress_bars()
    try:
        data = datasets.load_dataset("parquet", data_files=files)
    finally:
        if quiet:
            datasets.enable_progress_bars()
    return data["train"], data["validation"]


def _global_features(
    backbone: Backbone,
    split: datasets.Dataset,
    indices: list[int],
    desc: str,
    progress: bool | None,
    *,
    size: int,
    batch_size: int,
    pool: str,
    precision: str,
) -> torch.Tensor:
    """(len(indices), D) image features of ``split[indices]`` (:func:`extract_global_features`)."""
    batches = _image_batches(split, indices, size, batch_size)
    total = -(-len(indices) // batch_size)
    return extract_global_features(backbone, batches, total, pool, precision, progress, desc)


def knn_forgetting(
    backbone: Backbone,
    root: str | Path | None = None,
    per_class: int | None = None,
    k: int = 20,
    temperature: float = 0.07,
    size: int | None = None,
    pool: str = "cls",
    seed: int = 0,
    max_classes: int | None = None,
    batch_size: int = 64,
    precision: str = "auto",
    cache: bool = True,
    cache_root: str | Path | None = None,
    progress: bool | None = None,
) -> dict:
    """k-NN top-1 on Tiny-ImageNet validation with a fixed bank from Tiny-ImageNet train.

    Args:
        backbone: the frozen backbone (input size must be a multiple of its patch size: 224 and 112 suit /14
            and /16).
        root: the Tiny-ImageNet parquet folder (default: found under the data roots).
        per_class: bank images per class (default 20; 5 in smoke mode).
        k, temperature: DINO's k-NN settings (20, 0.07).
        size: input side (default 224; 112 in smoke mode).
        pool: ``"cls"`` ([CLS] token) or ``"mean"`` (mean-pooled patch tokens).
        seed: seed of the bank selection.
        max_classes: use only the first this many classes (default all; 10 in smoke mode).
        batch_size: images per forward.
        precision: autocast precision of the forwards (``"auto"``: :mod:`glare_core.precision`); the
            precision used is recorded in ``settings``.
        cache: cache bank and query features on disk.

    Returns:
        JSON-able dict: ``top1``, ``top5`` (fractions), ``settings``, ``num_bank``, ``num_queries``,
        ``num_classes``, ``seconds`` (extraction + classification), ``cached``, ``top1_correct`` (one
        character per query, in the queries' fixed order: ``"1"`` where the top-1 class is right; two
        backbones are compared query by query with McNemar's test on these).
    """
    smoke = smoke_mode()
    per_class = per_class if per_class is not None else (5 if smoke else 20)
    size = size if size is not None else (112 if smoke else 224)
    max_classes = max_classes if max_classes is not None else (10 if smoke else None)
    if size % backbone.patch_size:
        raise ValueError(f"k-NN input size {size} is not a multiple of the patch size {backbone.patch_size}")

    start = time.perf_counter()
    files = tinyimagenet_files(root)
    train, val = _load_parquet(files, progress)
    train_labels = list(train["label"])
    val_labels = list(val["label"])
    num_classes = getattr(train.features["label"], "num_classes", None) or (max(train_labels) + 1)
    classes = list(range(num_classes if max_classes is None else min(max_classes, num_classes)))
    bank_idx = select_bank(train_labels, per_class, seed, classes)
    keep = set(classes)
    query_idx = [i for i, c in enumerate(val_labels) if c in keep]

    settings = {
        "k": k,
        "temperature": temperature,
        "size": size,
        "pool": pool,
        "per_class": per_class,
        "seed": seed,
        "max_classes": max_classes,
        "precision": resolve_precision(precision, next(backbone.parameters()).device).name,
    }
    stat = [(f, os.path.getsize(f), os.stat(f).st_mtime_ns) for fs in files.values() for f in fs]
    key = cache_key(
        "knn", backbone_fingerprint(backbone), stat, bank_idx, query_idx, size, pool, settings["precision"]
    )
    store = FeatureCache(cache_root) if cache else None
    hit = store.load(key) if store is not None else None
    if hit is not None:
        bank_f, query_f = hit["bank"], hit["queries"]
    else:
        extract = dict(size=size, batch_size=batch_size, pool=pool, precision=settings["precision"])
        bank_f = _global_features(backbone, train, bank_idx, "k-NN bank", progress, **extract)
        query_f = _global_features(backbone, val, query_idx, "k-NN queries", progress, **extract)
        if store is not None:
            store.save(key, {"bank": bank_f, "queries": query_f})
    bank_y = torch.tensor([train_labels[i] for i in bank_idx])
    query_y = torch.tensor([val_labels[i] for i in query_idx])
    scores = knn_classify(bank_f, bank_y, query_f, num_classes, k, temperature)
    acc = knn_accuracy(scores, query_y)
    correct = (scores.topk(1, dim=1).indices[:, 0] == query_y).tolist()
    return {
        **acc,
        "top1_correct": "".join("1" if c else "0" for c in correct),
        "settings": settings,
        "num_bank": len(bank_idx),
        "num_queries": len(query_idx),
        "num_classes": len(classes),
        "seconds": time.perf_counter() - start,
        "cached": hit is not None,
    }
