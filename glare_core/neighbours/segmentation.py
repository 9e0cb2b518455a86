"""Downstream segmentation with a light decoder on frozen features, with PiPa's and SSR's training-only terms.

This is how PiPa and SSR are compared with GLARE on the same benchmark (``glare-method.md`` section 5): the
backbone (base or adapted) stays frozen, its patch-token maps are cached (:mod:`glare_core.features`), and a
light decoder trains on them with

.. math::

    L = \\mathrm{CE}(\\mathrm{dec}(x), y)
        + 0.1\\, L_{pix}                 \\quad \\text{(PiPa pixel contrast, ``"pixel_contrast"``)}
        + 0.01\\, L_{patch}              \\quad \\text{(PiPa patch consistency, ``"patch_consistency"``)}
        + \\lambda_{SSR}\\, \\mathrm{CE}(\\mathrm{dec}(\\tilde x), y)
          \\quad \\text{(SSR fusion branch, ``"ssr"``)}

The decoder is the probe's light decoder (:class:`glare_core.probe.DecoderProbe`: BatchNorm, two
conv3x3-BN-ReLU blocks, a 1x1 classifier), split into a *stem* (BatchNorm + first block: the trained features
F that SSR fuses), a *body* (second block: the pixel embeddings PiPa projects) and the classifier. Every extra
module (the 128-d projections, SSR's fusion block) is used only in training: prediction calls the decoder
alone, so every variant has the same inference cost and parameters.

Design choices (fields of :class:`SegTrainConfig` and of the terms' own configs):

* PiPa's patch consistency needs two overlapping crops of one image. Working on cached features, the crops are
  two overlapping windows of the cached feature map (the same two windows for the whole batch, 0.75 of each
  side), run through the decoder separately (so each window sees different context at its borders); the
  overlap is known exactly in feature cells. Pseudo-labels and confidences are the decoder's own detached
  softmax on the other window (no EMA teacher).
* PiPa's pixel contrast samples anchors at the decoder's resolution (the patch grid), labels subsampled by
  nearest neighbour.
* SSR's frozen encoder: ``ssr_encoder=None`` uses the evaluated backbone's own cached features (on the base
  model this *is* the frozen base, the offline stand-in for SAM); pass the frozen base
  (:func:`glare_core.weights.load_base`) when evaluating an adapted backbone, or a SAM encoder
  (:func:`glare_core.neighbours.ssr.load_sam_encoder`), whose maps are resized (area) to the decoder's grid
  once.
* The same seed fixes the decoder's initialisation, the batch order and every random draw of a step (flips,
  windows, anchors), drawn from a generator seeded by (seed, step): variants see the same batches.
* The training-only passes (SSR's fused branch, PiPa's windows) use batch statistics but leave the decoder's
  BatchNorm running statistics alone (:func:`frozen_bn_stats`), so they cannot leak into the inference path.
* Decoder forward passes run under autocast in the precision ``train_precision`` resolves to (``"auto"``: bf16
  where the CPU multiplies bf16 natively, else float32); every loss is computed in float32.
* A run is not checkpointed: with the features cached it only repeats the decoder training (see the timings
  in the result, ``step_s``), and it is deterministic given the seed.

Cost: one step is a few decoder passes on (B, C, h, w) maps (h x w = 24 x 32 for CamVid at 448x336 with a /14
backbone); extraction of the frozen features is done once and cached. The result is a JSON-able dict like
:func:`glare_core.evaluation.evaluate_backbone`'s.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..backbone import Backbone
from ..evaluation import Protocol, label_space
from ..features import FeatureSet, backbone_fingerprint, extract_features, probe_size
from ..metrics import segmentation_scores
from ..precision import Precision, autocast, resolve_precision
from ..probe import DecoderProbe, evaluate_head, subsample_labels
from ..schedules import cosine_lr
from ..system import run_machine
from .pipa.patch_consistency import (
    PatchConsistencyConfig,
    PatchConsistencyLoss,
    crop,
    overlap_slices,
    overlapping_windows,
)
from .pipa.pixel_contrast import PixelContrastConfig, PixelContrastLoss
from .ssr import SSRConfig, SSRFusion

#: The optional extra terms of :func:`train_segmentation`.
TERMS = ("pixel_contrast", "patch_consistency", "ssr")


@dataclass
class SegTrainConfig(Protocol):
    """The downstream light-decoder protocol. Every field is recorded in results.

    The fields of :class:`~glare_core.evaluation.Protocol` (input size, layers, decoder width, steps, batch,
    schedule, flips, seed, extraction settings), with the decoder's own values of two of them, and its own
    fields:

    Attributes:
        lr: peak AdamW learning rate (1e-3, Design, not tuned).
        label_scale: 1.0 (the cross-entropy at full input resolution).
        train_precision: autocast precision of the decoder's (and the extra modules') forward passes during
            training; the losses are computed in float32 (training runs on cached features; bf16
            was about 1.6x faster per step than float32 on a 2-core CPU with native bf16, ViT-S/14 features at
            24 x 32).
        pixel_contrast: PiPa's pixel contrast (:class:`~glare_core.neighbours.pipa.PixelContrastConfig`).
        patch_consistency: PiPa's patch consistency
            (:class:`~glare_core.neighbours.pipa.PatchConsistencyConfig`).
        ssr: SSR's fusion branch (:class:`~glare_core.neighbours.ssr.SSRConfig`).
    """

    lr: float = 1e-3
    label_scale: float = 1.0
    train_precision: str = "auto"
    pixel_contrast: PixelContrastConfig = field(default_factory=PixelContrastConfig)
    patch_consistency: PatchConsistencyConfig = field(default_factory=PatchConsistencyConfig)
    ssr: SSRConfig = field(default_factory=SSRConfig)

    @classmethod
    def smoke(cls, **overrides) -> SegTrainConfig:
        """Seconds-long: 112x84 input, 40 steps of batch 4, decoder width 64."""
        values = dict(size=(112, 84), steps=40, batch_size=4, warmup_steps=4, hidden_dim=64)
        values.update(overrides)
        return cls(**values)


class SegmentationModel(nn.Module):
    """The light decoder plus the training-only modules of the chosen extra terms.

    Args:
        in_dim: feature channels C.
        num_classes: K.
        hidden: decoder width.
        terms: subset of :data:`TERMS`.
        pixel_dim, patch_dim: widths of PiPa's 1x1-conv projections.
        frozen_dim: channels of the frozen encoder's maps (SSR).
        ssr_heads: SSR's attention heads.

    Attributes:
        terms: the extra terms, in the order given.
        decoder: the :class:`~glare_core.probe.DecoderProbe`, the only module :meth:`forward` (inference)
            uses.
        proj_pixel, proj_patch: (B, hidden, h, w) -> (B, d, h, w) 1x1 convolutions, or None.
        ssr: :class:`~glare_core.neighbours.ssr.SSRFusion` or None.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden: int = 256,
        terms: Sequence[str] = (),
        pixel_dim: int = 128,
        patch_dim: int = 128,
        frozen_dim: int | None = None,
        ssr_heads: int = 8,
    ):
        super().__init__()
        self.terms = tuple(terms)
        self.decoder = DecoderProbe(in_dim, num_classes, hidden)
        self.proj_pixel = nn.Conv2d(hidden, pixel_dim, 1) if "pixel_contrast" in terms else None
        self.proj_patch = nn.Conv2d(hidden, patch_dim, 1) if "patch_consistency" in terms else None
        self.ssr = SSRFusion(hidden, frozen_dim or in_dim, ssr_heads) if "ssr" in terms else None

    # the decoder's three parts (DecoderProbe.net = [BN, conv, BN, ReLU, conv, BN, ReLU, conv1x1])
    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, hidden, h, w): the trained features F (SSR's fusion point)."""
        return self.decoder.net[:4](x)

    def body(self, f: torch.Tensor) -> torch.Tensor:
        """(B, hidden, h, w) -> (B, hidden, h, w): the pixel embeddings PiPa projects."""
        return self.decoder.net[4:7](f)

    def classify(self, e: torch.Tensor) -> torch.Tensor:
        """(B, hidden, h, w) -> (B, K, h, w)."""
        return self.decoder.net[7](e)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: the decoder alone, (B, C, h, w) -> (B, K, h, w)."""
        return self.decoder(x)

    def parameter_counts(self) -> dict[str, int]:
        """``inference``: the decoder's parameters; ``training_only``: the extra terms' modules'."""
        inference = sum(p.numel() for p in self.decoder.parameters())
        everything = sum(p.numel() for p in self.parameters())
        return {"inference": inference, "training_only": everything - inference}


# --------------------------------------------------------------------------------------------- helpers
def _batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """The images of a step: epoch e's permutation (seeded by (seed, e)), without a short last batch.

    A pure function of the step, so every variant sees the same batches and a run can be repeated exactly.
    """
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[pos * batch_size : (pos + 1) * batch_size]


def _rows(x: torch.Tensor, where: tuple[slice, slice]) -> torch.Tensor:
    """(B, d, h, w) at a (rows, cols) slice -> (M, d) rows, row-major per image."""
    part = x[:, :, where[0], where[1]]
    return part.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


@torch.no_grad()
def frozen_maps(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    size: tuple[int, int],
    grid: tuple[int, int],
    batch_size: int = 8,
) -> torch.Tensor:
    """Feature maps of a non-:class:`~glare_core.backbone.Backbone` frozen encoder (e.g. SAM), in memory.

    Args:
        encoder: images (B, 3, H, W) in [0, 1] -> (B, C_f, h_f, w_f).
        dataset: items ``{"image": uint8 (3, H, W)}``.
        size: (H, W) images are resized to before the encoder (which may resize again).
        grid: (h, w) the maps are resized to (area interpolation), the decoder's grid.

    Returns:
        (N, C_f, h, w) float16.
    """
    out = []
    for start in range(0, len(dataset), batch_size):
        images = torch.stack(
            [dataset[i]["image"] for i in range(start, min(len(dataset), start + batch_size))]
        )
        images = F.interpolate(images.float() / 255.0, size=size, mode="bilinear", align_corners=False)
        maps = encoder(images)
        out.append(F.interpolate(maps.float(), size=grid, mode="area").half())
    return torch.cat(out)


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module):
    """Batch statistics as usual, but the BatchNorm running statistics stay unchanged (momentum 0).

    The training-only passes (SSR's fused branch, PiPa's crops) go through the decoder's BatchNorms; their
    statistics must not leak into the running estimates the inference path uses.
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom


def _curve(values: list[float], points: int = 20) -> list[float]:
    chunk = max(1, len(values) // points)
    return [sum(values[i : i + chunk]) / len(values[i : i + chunk]) for i in range(0, len(values), chunk)]


# ---------------------------------------------------------------------------------------------- training
class DecoderLoss:
    """One step's loss: the cross-entropy of the decoder plus the chosen PiPa / SSR terms, weighted.

    Args:
        model: the decoder and the terms' training-only modules.
        cfg: the protocol (the terms' weights and settings).
        ignore_index: the label of unlabelled pixels.
        out_size: (H_y, W_y), the label resolution the logits are upsampled to for the cross-entropy.
    """

    def __init__(
        self, model: SegmentationModel, cfg: SegTrainConfig, ignore_index: int, out_size: tuple[int, int]
    ):
        device = next(model.parameters()).device
        self.model, self.cfg, self.ignore_index, self.out_size = model, cfg, ignore_index, out_size
        self.pixel = PixelContrastLoss(cfg.pixel_contrast, ignore_index).to(device)
        self.patch = PatchConsistencyLoss(cfg.patch_consistency).to(device)

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) logits, (B, H_y, W_y) labels -> scalar, in float32 at the label resolution."""
        with torch.autocast(logits.device.type, enabled=False):
            up = F.interpolate(logits.float(), size=self.out_size, mode="bilinear", align_corners=False)
            return F.cross_entropy(up, y, ignore_index=self.ignore_index)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, frozen: torch.Tensor | None, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Features x (B, C, h, w), labels y (B, H_y, W_y), SSR's frozen maps (B, C_f, h, w) or None.

        Returns:
            the weighted sum (scalar) and the value of each term (``"ce"`` and the terms used).
        """
        model, cfg = self.model, self.cfg
        feats = model.stem(x)
        emb = model.body(feats)
        logits = model.classify(emb)
        loss_ce = self.ce(logits, y)
        loss, logs = loss_ce, {"ce": float(loss_ce.detach())}
        if model.proj_pixel is not None:
            l_pix = self.pixel(model.proj_pixel(emb), logits.float(), y, generator)
            loss = loss + cfg.pixel_contrast.weight * l_pix
            logs["pixel_contrast"] = float(l_pix.detach())
        if model.ssr is not None:
            with frozen_bn_stats(model):
                l_ssr = self.ce(model.classify(model.body(model.ssr(feats, frozen))), y)
            loss = loss + cfg.ssr.weight * l_ssr
            logs["ssr"] = float(l_ssr.detach())
        if model.proj_patch is not None:
            with frozen_bn_stats(model):
                l_patch = _patch_term(model, x, self.patch, cfg.patch_consistency, generator)
            loss = loss + cfg.patch_consistency.weight * l_patch
            logs["patch_consistency"] = float(l_patch.detach())
            logs["patch_confident_fraction"] = self.patch.last_stats["confident_fraction"]
        return loss, logs


def _batch(
    features: torch.Tensor,
    labels: torch.Tensor,
    frozen: torch.Tensor | None,
    step: int,
    cfg: SegTrainConfig,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Generator]:
    """A step's batch, flipped per image, on the device, and the generator of the step's other random draws.

    Args:
        features: (N, C, h, w) cached features; labels: (N, H_y, W_y); frozen: (N, C_f, h, w) or None.

    Returns:
        x (B, C, h, w) float32, y (B, H_y, W_y) int64, the frozen maps (B, C_f, h, w) or None, and the
        generator seeded by (seed, step) that drew the flips.
    """
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    idx = _batch_indices(len(features), min(cfg.batch_size, len(features)), step, cfg.seed)
    x = features[idx].float()
    y = labels[idx].long()
    fz = frozen[idx].float() if frozen is not None else None
    if cfg.flip:
        f = torch.rand(len(idx), generator=g) < 0.5
        x[f], y[f] = x[f].flip(-1), y[f].flip(-1)
        if fz is not None:
            fz[f] = fz[f].flip(-1)
    return x.to(device), y.to(device), fz.to(device) if fz is not None else None, g


def _ssr_frozen_maps(
    ssr_encoder: Backbone | Callable[[torch.Tensor], torch.Tensor] | None,
    train: FeatureSet,
    train_ds: Dataset,
    cfg: SegTrainConfig,
    size: tuple[int, int],
) -> torch.Tensor:
    """SSR's frozen maps of the training images, (N, C_f, h, w) on the decoder's grid (see
    :func:`train_segmentation`'s ``ssr_encoder``); ``train``: the evaluated backbone's cached features."""
    if ssr_encoder is None:
        return train.features
    if isinstance(ssr_encoder, Backbone):
        common = cfg.extraction(probe_size(cfg.size, ssr_encoder.patch_size))
        return extract_features(ssr_encoder, train_ds, **{**common, "layers": "last"}, labels=None).features
    grid = tuple(train.features.shape[-2:])
    return frozen_maps(ssr_encoder, train_ds, size, grid, cfg.feature_batch_size)


def fit_decoder(
    objective: DecoderLoss,
    features: torch.Tensor,
    labels: torch.Tensor,
    frozen: torch.Tensor | None,
    precision: Precision,
    progress: bool = False,
) -> dict[str, list[float]]:
    """Train ``objective.model`` for ``cfg.steps`` AdamW steps (warm-up, then cosine) on the cached features.

    Args:
        objective: the step's loss, with the model and the protocol (``objective.cfg``).
        features: (N, C, h, w) cached features; labels: (N, H_y, W_y); frozen: SSR's maps (N, C_f, h, w) or
            None.
        precision: the autocast precision of the forward passes.

    Returns:
        {term: its value at every step}: ``"loss"``, ``"ce"``, each term used, and PiPa's
        ``"patch_confident_fraction"`` (the share of overlap positions above the confidence threshold).
    """
    model, cfg = objective.model, objective.cfg
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = min(cfg.warmup_steps, cfg.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, cfg.steps, warmup))
    history: dict[str, list[float]] = {k: [] for k in ("loss", "ce", *model.terms)}
    if "patch_consistency" in model.terms:
        history["patch_confident_fraction"] = []
    model.train()
    for step in tqdm(range(cfg.steps), disable=not progress, desc="decoder"):
        x, y, fz, g = _batch(features, labels, frozen, step, cfg, device)
        with autocast(device, precision):
            loss, logs = objective(x, y, fz, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        logs["loss"] = float(loss.detach())
        for k, v in logs.items():
            history[k].append(v)
    return history


def train_segmentation(
    backbone: Backbone,
    train_ds: Dataset,
    val_ds: Dataset,
    cfg: SegTrainConfig | None = None,
    extra_terms: Sequence[str] = (),
    ssr_encoder: Backbone | Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Train a light decoder on the frozen backbone's features (+ optional PiPa / SSR terms), score on val.

    The decoder trains and predicts on the backbone's device (where the caller put it); the cached features
    are moved there one batch at a time.

    Args:
        backbone: the frozen backbone whose features are evaluated.
        train_ds, val_ds: labelled splits with the same classes (``SegmentationDataset``).
        cfg: the protocol (default :meth:`SegTrainConfig.default`).
        extra_terms: any of :data:`TERMS`: ``"pixel_contrast"``, ``"patch_consistency"``, ``"ssr"``.
        ssr_encoder: SSR's frozen encoder: None (the backbone's own features), a frozen
            :class:`~glare_core.backbone.Backbone` (its cached last-block features), or a callable images ->
            maps (e.g. :class:`~glare_core.neighbours.ssr.SAMEncoder`).

    Returns:
        JSON-able dict: ``miou``, ``pixel_acc``, ``mean_acc``, ``per_class_iou``, ``per_class_acc``,
        ``confusion_matrix``, ``classes``, ``extra_terms``, ``config``, ``backbone``, ``datasets``,
        ``parameters`` (``inference``: the decoder's, ``training_only``: projections and SSR), ``losses``
        (curves per term), ``timings`` (seconds, ``step_s`` = training seconds per step), ``machine``.
    """
    cfg = cfg or SegTrainConfig.default()
    terms = tuple(extra_terms)
    unknown = [t for t in terms if t not in TERMS]
    if unknown:
        raise ValueError(f"extra_terms {unknown} unknown; choose from {TERMS}")
    num_classes, classes, ignore_index = label_space(train_ds, val_ds)
    size = probe_size(cfg.size, backbone.patch_size)
    common = cfg.extraction(size)

    # 1. frozen features (cached), and SSR's frozen maps
    start = time.perf_counter()
    was_training = backbone.training
    train = extract_features(backbone, train_ds, labels="probe", desc="train features", **common)
    val = extract_features(backbone, val_ds, labels="full", desc="val features", **common)
    backbone.train(was_training)
    frozen, t_frozen = None, 0.0
    if "ssr" in terms:
        t0 = time.perf_counter()
        frozen = _ssr_frozen_maps(ssr_encoder, train, train_ds, cfg, size)
        t_frozen = time.perf_counter() - t0

    # 2. the model: decoder + training-only modules, all seeded, on the backbone's device
    device = next(backbone.parameters()).device
    torch.manual_seed(cfg.seed)
    model = SegmentationModel(
        train.features.shape[1],
        num_classes,
        cfg.hidden_dim,
        terms,
        pixel_dim=cfg.pixel_contrast.proj_dim,
        patch_dim=cfg.patch_consistency.proj_dim,
        frozen_dim=frozen.shape[1] if frozen is not None else None,
        ssr_heads=cfg.ssr.num_heads,
    ).to(device)
    labels = subsample_labels(train.labels, cfg.label_scale)
    objective = DecoderLoss(model, cfg, ignore_index, tuple(labels.shape[-2:]))
    train_precision = resolve_precision(cfg.train_precision, device)

    # 3. the training loop
    t_train = time.perf_counter()
    history = fit_decoder(objective, train.features, labels, frozen, train_precision, common["progress"])
    train_s = time.perf_counter() - t_train

    # 4. evaluation: the decoder alone, at full label resolution
    t_eval = time.perf_counter()
    model.eval()
    cm = evaluate_head(
        model.decoder, val.features, val.labels, num_classes, cfg.eval_batch_size, ignore_index
    )
    eval_s = time.perf_counter() - t_eval

    return {
        **segmentation_scores(cm.matrix, classes),
        "confusion_matrix": cm.matrix.tolist(),
        "classes": classes,
        "extra_terms": list(terms),
        "config": cfg.to_dict(),
        "backbone": _backbone_record(backbone, train, size, terms, ssr_encoder),
        "datasets": {
            "train": {"name": getattr(train_ds, "name", "?"), "num_images": len(train_ds)},
            "val": {"name": getattr(val_ds, "name", "?"), "num_images": len(val_ds)},
        },
        "parameters": model.parameter_counts(),
        "losses": {k: {"first": v[0], "last": v[-1], "curve": _curve(v)} for k, v in history.items() if v},
        "timings": {
            "train_features_s": train.seconds,
            "val_features_s": val.seconds,
            "ssr_features_s": t_frozen,
            "train_s": train_s,
            "step_s": train_s / cfg.steps,
            "eval_s": eval_s,
            "total_s": time.perf_counter() - start,
        },
        "machine": run_machine(device, train_precision=train_precision.name),
    }


def _backbone_record(
    backbone: Backbone, train: FeatureSet, size: tuple[int, int], terms: tuple[str, ...], ssr_encoder
) -> dict:
    """The evaluated backbone as a result records it: fingerprint, geometry, layers read, SSR's encoder."""
    ssr = "backbone" if ssr_encoder is None else type(ssr_encoder).__name__
    return {
        "fingerprint": backbone_fingerprint(backbone),
        "patch_size": backbone.patch_size,
        "embed_dim": backbone.embed_dim,
        "layers": train.layers,
        "input_size_hw": list(size),
        "feature_grid_hw": list(train.features.shape[-2:]),
        "ssr_encoder": ssr if "ssr" in terms else None,
    }


def _patch_term(
    model: SegmentationModel,
    x: torch.Tensor,
    loss: PatchConsistencyLoss,
    cfg: PatchConsistencyConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """PiPa's patch consistency on two overlapping windows of the feature maps x (B, C, h, w)."""
    win1, win2 = overlapping_windows(x.shape[-2], x.shape[-1], cfg.crop_fraction, generator)
    at1, at2 = overlap_slices(win1, win2)
    out = []
    for w in (win1, win2):
        e = model.body(model.stem(crop(x, w)))
        probs = model.classify(e).detach().float().softmax(1)
        out.append((model.proj_patch(e), probs))
    (z1, p1), (z2, p2) = out
    conf2, lab2 = _rows(p2, at2).max(-1)
    value = loss(_rows(z1, at1), _rows(z2, at2), lab2, conf2, generator)
    if cfg.symmetric:
        conf1, lab1 = _rows(p1, at1).max(-1)
        value = 0.5 * (value + loss(_rows(z2, at2), _rows(z1, at1), lab1, conf1, generator))
    return value
