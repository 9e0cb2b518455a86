"""Segmentation heads on frozen features, and how they are trained and applied.

Design (``glare-method.md`` section 4): a **linear probe** on the frozen patch tokens,

    features (B, C, h, w) -> BatchNorm -> 1x1 conv -> logits (B, K, h, w) -> bilinear upsample to (H, W)
    -> cross-entropy with ignore index 255,

so that the mIoU measures how linearly separable the backbone's patch features are (the protocol of DINOv2's
and iBOT's linear segmentation evaluations). A **light decoder** (conv3x3-BN-ReLU twice, then 1x1) is the
option for stronger absolute numbers; it is still trained on the same cached features.

Training runs on the cached features only (see :mod:`glare_core.features`): a fixed number of steps, AdamW (or
SGD with momentum), cosine learning-rate decay after a short linear warm-up
(:func:`glare_core.schedules.cosine_lr`), a fixed seed for the batch order and the head's initialisation, and
optional horizontal flips of feature map and label together. Prediction upsamples the logits to each label's
own resolution, so scores are computed at full label resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .errors import NonFiniteError
from .metrics import IGNORE_INDEX, ConfusionMatrix
from .schedules import cosine_lr

HEADS = ("linear", "decoder")


class LinearProbe(nn.Module):
    """BatchNorm + 1x1 convolution: the linear segmentation probe.

    Args:
        in_dim: feature channels C (D, or 4D for the last four blocks).
        num_classes: K.

    Shapes:
        (B, C, h, w) -> (B, K, h, w)
    """

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_dim)
        self.conv = nn.Conv2d(in_dim, num_classes, kernel_size=1)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


class DecoderProbe(nn.Module):
    """A light decoder: (conv3x3 - BN - ReLU) x 2, then a 1x1 classifier.

    Args:
        in_dim: feature channels C.
        num_classes: K.
        hidden: width of the two 3x3 convolutions (default 256).

    Shapes:
        (B, C, h, w) -> (B, K, h, w)
    """

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 256):
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm2d(in_dim)]
        for c_in in (in_dim, hidden):
            layers += [
                nn.Conv2d(c_in, hidden, 3, padding=1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(hidden, num_classes, kernel_size=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_head(kind: str, in_dim: int, num_classes: int, hidden: int = 256) -> nn.Module:
    """``"linear"`` -> :class:`LinearProbe`, ``"decoder"`` -> :class:`DecoderProbe`."""
    if kind == "linear":
        return LinearProbe(in_dim, num_classes)
    if kind == "decoder":
        return DecoderProbe(in_dim, num_classes, hidden)
    raise ValueError(f"unknown head {kind!r}; choose one of {HEADS}")


def _batches(n: int, batch_size: int, steps: int, generator: torch.Generator):
    """Index batches for ``steps`` steps: reshuffled permutations of range(n), so every image is seen per
    epoch."""
    perm = torch.randperm(n, generator=generator)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        yield perm[pos : pos + batch_size]
        pos += batch_size


def train_probe(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    steps: int = 1000,
    batch_size: int = 8,
    lr: float = 3e-2,
    weight_decay: float = 1e-4,
    optimizer: str = "adamw",
    warmup_steps: int = 50,
    flip: bool = True,
    seed: int = 0,
    label_scale: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
    progress: bool = False,
) -> dict:
    """Train a head on cached features (in place) with cross-entropy at label resolution.

    Args:
        head: a :class:`LinearProbe` or :class:`DecoderProbe`.
        features: (N, C, h, w) (fp16 storage is fine; each batch is cast to float32).
        labels: (N, H, W) integer labels (255 = ignore), all at the same resolution.
        steps: optimiser steps (the same for every compared backbone).
        batch_size: images per step (clipped to N).
        lr: peak learning rate; cosine decay to 0 after ``warmup_steps`` of linear warm-up.
        weight_decay: AdamW / SGD weight decay.
        optimizer: ``"adamw"`` or ``"sgd"`` (momentum 0.9).
        flip: flip a random half of each batch horizontally (feature map and label together).
        seed: seeds the batch order and the flips.
        label_scale: resolution of the training loss relative to ``labels`` (1.0: as given; 0.5: labels
            subsampled by nearest neighbour to half size, about 4x cheaper per step on CPU).
        progress: tqdm bar.

    Returns:
        ``{"loss_first": ..., "loss_last": ..., "losses": [mean loss per 5 % of the steps]}``.
    """
    _check_probe_inputs(features, labels, steps, batch_size, lr)
    device = next(head.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    opt = _optimizer(optimizer, list(head.parameters()), lr, weight_decay)
    warmup = min(warmup_steps, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, steps, warmup))
    labels = subsample_labels(labels, label_scale)
    size = tuple(labels.shape[-2:])
    batch_size = min(batch_size, features.shape[0])
    head.train()
    losses: list[float] = []
    for idx in tqdm(
        _batches(features.shape[0], batch_size, steps, generator), total=steps, disable=not progress
    ):
        x = features[idx].to(device, torch.float32)
        y = labels[idx].to(device).long()
        if flip:
            f = torch.rand(len(idx), generator=generator) < 0.5
            x[f] = x[f].flip(-1)
            y[f] = y[f].flip(-1)
        logits = F.interpolate(head(x), size=size, mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y, ignore_index=ignore_index)
        if not torch.isfinite(loss):
            raise NonFiniteError(
                f"probe training: the loss is {float(loss.detach())} at step {len(losses)} of {steps} "
                f"(lr {lr}); the features or the learning rate are broken, so no mIoU is reported. Fix: "
                "lower the probe's --lr, or check the backbone / adapter (non-finite features)."
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    head.eval()
    chunk = max(1, steps // 20)
    curve = [sum(losses[i : i + chunk]) / len(losses[i : i + chunk]) for i in range(0, steps, chunk)]
    return {"loss_first": losses[0], "loss_last": curve[-1], "losses": curve}


def _check_probe_inputs(
    features: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int, lr: float
) -> None:
    """Refuse what :func:`train_probe` cannot train on, naming the value."""
    if features.shape[0] != labels.shape[0]:
        raise ValueError(f"{features.shape[0]} feature maps but {labels.shape[0]} labels")
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr={lr} must be a finite number > 0")


def subsample_labels(labels: torch.Tensor, scale: float) -> torch.Tensor:
    """Label maps (N, H, W) subsampled by nearest neighbour to (N, round(H * scale), round(W * scale)); a
    scale of 1 returns them unchanged. Rows and columns are picked evenly, so no class is ever blended."""
    if scale == 1.0:
        return labels
    h, w = (max(1, round(s * scale)) for s in labels.shape[-2:])
    rows = torch.linspace(0, labels.shape[-2] - 1, h).round().long()
    cols = torch.linspace(0, labels.shape[-1] - 1, w).round().long()
    return labels[:, rows][:, :, cols]


def _optimizer(
    name: str, params: list[nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """``"adamw"`` or ``"sgd"`` (momentum 0.9) over ``params``."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"optimizer={name!r}: use 'adamw' or 'sgd'")


@torch.no_grad()
def predict(head: nn.Module, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Class maps at a given resolution.

    Args:
        head: a trained head.
        features: (B, C, h, w).
        size: (H, W) output resolution (the labels').

    Returns:
        (B, H, W) int64 predictions.
    """
    head.eval()
    device = next(head.parameters()).device
    logits = head(features.to(device, torch.float32))
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1).cpu()


@torch.no_grad()
def evaluate_head(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor | Sequence[torch.Tensor],
    num_classes: int,
    batch_size: int = 8,
    ignore_index: int = IGNORE_INDEX,
) -> ConfusionMatrix:
    """Accumulate the confusion matrix of a head over a dataset, at each label's own resolution.

    Args:
        features: (N, C, h, w).
        labels: (N, H, W), or a list of N (H_i, W_i) label maps.
        num_classes: K.

    Returns:
        the :class:`~glare_core.metrics.ConfusionMatrix`.
    """
    if len(labels) != features.shape[0]:
        raise ValueError(f"{features.shape[0]} feature maps but {len(labels)} labels")
    cm = ConfusionMatrix(num_classes, ignore_index)
    i, n = 0, features.shape[0]
    while i < n:
        # group consecutive images whose labels share a size, up to batch_size
        size = tuple(labels[i].shape[-2:])
        j = i + 1
        while j < n and j - i < batch_size and tuple(labels[j].shape[-2:]) == size:
            j += 1
        pred = predict(head, features[i:j], size)
        target = torch.stack([labels[k] for k in range(i, j)]).long()
        cm.update(pred, target)
        i = j
    return cm
