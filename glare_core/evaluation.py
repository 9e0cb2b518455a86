"""The one segmentation protocol every compared backbone goes through: ``evaluate_backbone``.

Design (``glare-method.md`` section 4): frozen features -> linear probe -> mIoU on the validation split, with
the *same* resolution, layers, seeds and steps for every backbone, so that differences come only from
pre-training.

1. Resize every image to the probe resolution (default 448x336, W x H, for CamVid's 480x360 frames, rounded to
   the patch multiple: exactly 448x336 for /14 and /16 backbones) and extract the frozen patch tokens of the
   last block (or the last four blocks concatenated), cached on disk (:mod:`glare_core.features`).
2. Train the head on the training split's features, labels resized (nearest) to the probe resolution
   (:func:`fit_probe`, the one probe-training pipeline, also used by the book's chapters 3 and 9).
3. Predict the validation split at full label resolution and accumulate one confusion matrix
   (:mod:`glare_core.metrics`: mIoU over classes present in ground truth or prediction). Two inference modes:
   ``"resize"`` (default; the whole image resized to the probe resolution, logits upsampled bilinearly to the
   label's size) and ``"slide"`` (:func:`sliding_window_logits`: windows of the probe resolution slid over
   the image at its label resolution times ``slide_scale``, overlapping logits averaged, as in
   mmsegmentation's ``slide`` test mode). Sliding costs more forwards per image and bypasses the feature
   cache for validation.

The result is a JSON-able dict that records the whole configuration, the backbone's fingerprint, the datasets
and the timings; :func:`save_result` writes it atomically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .backbone import Backbone
from .features import (
    _forward_features,
    autocast_context,
    backbone_fingerprint,
    extract_features,
    probe_size,
    resolve_layers,
    show_progress,
    unit_image,
)
from .metrics import IGNORE_INDEX, ConfusionMatrix, segmentation_scores
from .paths import smoke_mode
from .precision import resolve_precision
from .probe import build_head, evaluate_head, train_probe
from .provenance import code_state
from .runs import atomic_write_json
from .system import run_machine
from .weights import load_base

#: How the validation split is predicted (``ProbeConfig.inference``).
INFERENCE_MODES = ("resize", "slide")

_Protocol = TypeVar("_Protocol", bound="Protocol")


@dataclass
class Protocol:
    """What the downstream protocols share (:class:`ProbeConfig`, and the light decoder's
    :class:`~glare_core.neighbours.segmentation.SegTrainConfig`): the fields below, their checks, a
    seconds-long ``smoke`` preset chosen by ``GLARE_SMOKE=1``, the dict of the recorded fields that goes into
    every result, and the settings of the frozen-feature extraction.

    Attributes:
        size: (W, H) input resolution before rounding to the patch multiple; 448x336 suits CamVid (480x360).
        layers: ``"last"`` (last block's patch tokens, default), ``"last4"`` (last four blocks concatenated),
            or block indices such as ``"9"``.
        hidden_dim: width of the decoder.
        steps: optimiser steps (the same for every compared backbone or variant).
        batch_size: feature maps per step.
        lr: peak learning rate, cosine decay to 0 after a linear warm-up (each protocol sets its own).
        weight_decay: weight decay.
        warmup_steps: linear warm-up steps (at most 10 % of ``steps``).
        flip: random horizontal flips of feature maps and labels during training.
        seed: seeds the head's initialisation, the batch order and each step's random draws.
        label_scale: resolution of the training loss relative to the input size (1.0: full). Evaluation is
            always at full label resolution.
        feature_batch_size: images per backbone forward during extraction.
        eval_batch_size: feature maps per prediction batch.
        precision: autocast precision of the backbone during extraction: ``"auto"`` (bf16 where the hardware
            multiplies bf16 natively, fp16 on a GPU without it, else float32; :mod:`glare_core.precision`),
            ``"bf16"``, ``"fp16"`` or ``"fp32"``. The result records the precision used.
        cache: keep extracted features in the on-disk cache (``paths.cache_dir()/features``).
        progress: show progress bars (None: only in an interactive session); not recorded.
    """

    size: tuple[int, int] = (448, 336)
    layers: str = "last"
    hidden_dim: int = 256
    steps: int = 1000
    batch_size: int = 8
    lr: float = 3e-2
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    flip: bool = True
    seed: int = 0
    label_scale: float = 0.5
    feature_batch_size: int = 8
    eval_batch_size: int = 8
    precision: str = "auto"
    cache: bool = True
    progress: bool | None = field(default=None, metadata={"record": False})
    num_workers: ClassVar[int] = 0  # data-loader workers of the extraction: a field of ProbeConfig only

    def __post_init__(self) -> None:
        name = type(self).__name__
        for count in ("steps", "batch_size", "feature_batch_size", "eval_batch_size", "hidden_dim"):
            if getattr(self, count) < 1:
                raise ValueError(f"{name}.{count} must be >= 1, got {getattr(self, count)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"{name}.lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.label_scale) and 0 < self.label_scale <= 1):
            raise ValueError(f"{name}.label_scale must be in (0, 1], got {self.label_scale}")

    @classmethod
    def smoke(cls: type[_Protocol], **overrides) -> _Protocol:
        raise NotImplementedError

    @classmethod
    def default(cls: type[_Protocol], **overrides) -> _Protocol:
        """The full protocol, or :meth:`smoke` when ``GLARE_SMOKE=1``."""
        return cls.smoke(**overrides) if smoke_mode() else cls(**overrides)

    def to_dict(self) -> dict:
        """JSON-able dict of the recorded fields (a field with ``metadata={"record": False}`` is not one)."""
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.metadata.get("record", True):
                value = getattr(self, f.name)
                if dataclasses.is_dataclass(value):
                    value = dataclasses.asdict(value)  # type: ignore[arg-type]
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def extraction(self, size: tuple[int, int]) -> dict[str, Any]:
        """The keyword arguments of :func:`~glare_core.features.extract_features` the protocol fixes, at the
        input ``size`` (H, W): layers, batch size, cache, precision, data-loader workers, progress bar."""
        return dict(
            size=size,
            layers=self.layers,
            batch_size=self.feature_batch_size,
            cache=self.cache,
            precision=self.precision,
            num_workers=self.num_workers,
            progress=show_progress(self.progress),
        )


@dataclass
class ProbeConfig(Protocol):
    """The segmentation-probe protocol (Design; ``glare-method.md`` section 4). Every field is recorded in
    results.

    The fields of :class:`Protocol` (input size, layers, steps, batch, schedule, flips, seed, extraction
    settings), with the probe's own values of two of them, and the probe's own fields:

    Attributes:
        head: ``"linear"`` (BatchNorm + 1x1 conv, default) or ``"decoder"`` (two conv3x3-BN-ReLU then 1x1).
        lr: 3e-2, chosen on CamVid val with the offline DINOv2 base (AdamW, 1000 steps, batch 8, label_scale
            0.5: mIoU 49.2 at 1e-3, 52.9 at 3e-3, 55.3 at 1e-2, 56.0 at 3e-2, 54.0 at 1e-1); it is fixed for
            every compared backbone.
        optimizer: ``"adamw"`` or ``"sgd"``.
        label_scale: 0.5, about 4x cheaper per step on CPU than 1.0 and measured the same mIoU (49.15 vs 49.2
            at lr 1e-3, on CamVid val).
        num_workers: DataLoader workers for image decoding.
        inference: ``"resize"`` (default) or ``"slide"`` (see the module docstring).
        slide_scale: ``"slide"`` only: the image is resized to its label resolution times this factor (each
            side at least the window's) before the windows slide over it.
        slide_stride: ``"slide"`` only: the stride between windows as a fraction of the window (default 2/3,
            mmsegmentation's 341 / 512).
    """

    head: str = "linear"
    lr: float = 3e-2
    optimizer: str = "adamw"
    label_scale: float = 0.5
    num_workers: int = 0  # type: ignore[misc]
    inference: str = "resize"
    slide_scale: float = 1.0
    slide_stride: float = 2 / 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.inference not in INFERENCE_MODES:
            raise ValueError(
                f"ProbeConfig.inference must be one of {INFERENCE_MODES}, got {self.inference!r}"
            )
        if not 0 < self.slide_stride <= 1:
            raise ValueError(
                f"ProbeConfig.slide_stride is a fraction of the window in (0, 1], got {self.slide_stride}"
            )
        if self.slide_scale <= 0:
            raise ValueError(f"ProbeConfig.slide_scale must be positive, got {self.slide_scale}")

    @classmethod
    def smoke(cls, **overrides) -> ProbeConfig:
        """A seconds-long preset for tests and ``GLARE_SMOKE=1``: 112x84 input, 60 steps at lr 1e-2."""
        values = dict(size=(112, 84), steps=60, batch_size=4, lr=1e-2, warmup_steps=5)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_record(cls, record: dict) -> ProbeConfig:
        """The config recorded in a result (``to_dict``), also from records older than a field rename: their
        ``amp`` (True: bf16 autocast on the CPU) becomes ``precision``; unknown keys are an error."""
        values = dict(record)
        if "amp" in values:
            values.setdefault("precision", "bf16" if values.pop("amp") else "fp32")
        if "size" in values:
            values["size"] = tuple(values["size"])
        return cls(**values)


def fit_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    cfg: ProbeConfig,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[nn.Module, dict]:
    """Train the protocol's head on cached training features: seed, build, train.

    The one probe-training pipeline of :func:`evaluate_backbone` and the book's chapters:
    ``torch.manual_seed(cfg.seed)`` (the head's initialisation), the ``cfg.head`` head
    (:func:`~glare_core.probe.build_head`), then :func:`~glare_core.probe.train_probe` for ``cfg.steps`` steps
    with every optimisation setting of ``cfg``.

    Args:
        features: (N, C, h, w) training features (a :class:`~glare_core.features.FeatureSet`'s ``features``).
        labels: (N, H, W) labels at the probe input resolution (255 = ignore).
        num_classes: K.
        cfg: the protocol.
        ignore_index: label value left out of the loss.

    Returns:
        The trained head (in eval mode, on the CPU) and its training logs (``loss_first``, ``loss_last``,
        ``losses``: the mean loss per 5 % of the steps).
    """
    torch.manual_seed(cfg.seed)
    head = build_head(cfg.head, features.shape[1], num_classes, cfg.hidden_dim)
    logs = train_probe(
        head,
        features,
        labels,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        optimizer=cfg.optimizer,
        warmup_steps=cfg.warmup_steps,
        flip=cfg.flip,
        seed=cfg.seed,
        label_scale=cfg.label_scale,
        ignore_index=ignore_index,
        progress=show_progress(cfg.progress),
    )
    return head, logs


def evaluate_backbone(
    backbone: Backbone, train_ds: Dataset, val_ds: Dataset, cfg: ProbeConfig | None = None
) -> dict:
    """Linear-probe segmentation evaluation of a frozen backbone.

    Args:
        backbone: the backbone to evaluate; run in eval mode without gradients (its mode is restored and its
            ``requires_grad`` flags are left alone, so it can be evaluated in the middle of training).
        train_ds: labelled training split (a ``SegmentationDataset``).
        val_ds: labelled validation split with the same classes.
        cfg: the protocol (default :meth:`ProbeConfig.default`).

    Returns:
        JSON-able dict: ``miou``, ``pixel_acc``, ``mean_acc`` (fractions in [0, 1]), ``per_class_iou`` and
        ``per_class_acc`` ({class name: value or None}), ``confusion_matrix`` (K x K list, rows ground truth),
        ``num_classes_counted``, ``classes``, ``config``, ``backbone`` (fingerprint, patch size, width, depth,
        probe input size), ``datasets`` (name, split, number of images), ``timings`` (seconds), ``probe``
        (training loss curve), ``machine``.
    """
    cfg = cfg or ProbeConfig.default()
    return evaluate_readouts(backbone, train_ds, val_ds, {"probe": cfg.layers}, cfg)["probe"]


def evaluate_readouts(
    backbone: Backbone, train_ds: Dataset, val_ds: Dataset, readouts: dict[str, str], cfg: ProbeConfig
) -> dict[str, dict]:
    """The probe protocol on several readouts of one backbone (e.g. the last block and block 9), from one
    feature extraction.

    The images go through the backbone once, keeping every block a readout names (features (N, D x L, h, w)
    for the L blocks of all readouts together); each readout's probe then trains on its own blocks' channels,
    which are the very numbers an extraction of those blocks alone gives. Every readout is
    :func:`evaluate_backbone`'s protocol with ``cfg.layers`` set to it.

    Args:
        backbone, train_ds, val_ds: as :func:`evaluate_backbone`.
        readouts: {name: layers} (``"last"``, ``"9"``, ``"8,11"`` ...; see
            :func:`~glare_core.features.resolve_layers`).
        cfg: the protocol (its ``layers`` is replaced by each readout's).

    Returns:
        {name: :func:`evaluate_backbone`'s result for that readout}; the extraction's timings are those of
        the shared pass.
    """
    num_classes, classes, ignore_index = label_space(train_ds, val_ds)
    size = probe_size(cfg.size, backbone.patch_size)
    blocks = {name: resolve_layers(layers, backbone.depth) for name, layers in readouts.items()}
    union = sorted({b for ids in blocks.values() for b in ids})
    if cfg.inference != "resize" and len(readouts) > 1:
        raise ValueError(
            'several readouts need ProbeConfig.inference="resize" (sliding predicts from images)'
        )
    was_training = backbone.training  # restored at the end: callers may evaluate mid-training
    common = {**cfg.extraction(size), "layers": union}
    code, start = code_state(), time.perf_counter()
    train = extract_features(backbone, train_ds, labels="probe", desc="train features", **common)
    val = None  # "slide" predicts from the images, not from cached features
    if cfg.inference == "resize":
        val = extract_features(backbone, val_ds, labels="full", desc="val features", **common)
    extracted = time.perf_counter()
    out = {}
    for name, ids in blocks.items():
        rcfg = dataclasses.replace(cfg, layers=readouts[name])
        width = backbone.embed_dim
        channels = torch.cat([torch.arange(width) + union.index(b) * width for b in ids])
        train_f = train.features if ids == union else train.features[:, channels]
        t0 = time.perf_counter()
        head, logs = fit_probe(train_f, train.labels, num_classes, rcfg, ignore_index)
        t1 = time.perf_counter()
        if val is not None:
            val_f = val.features if ids == union else val.features[:, channels]
            cm = evaluate_head(head, val_f, val.labels, num_classes, cfg.eval_batch_size, ignore_index)
        else:
            cm = evaluate_sliding(backbone, head, val_ds, rcfg, ids, num_classes, ignore_index)
        t2 = time.perf_counter()
        out[name] = {
            **segmentation_scores(cm.matrix, classes),
            "confusion_matrix": cm.matrix.tolist(),
            "classes": classes,
            "config": rcfg.to_dict(),
            "backbone": {
                "fingerprint": backbone_fingerprint(backbone),
                "patch_size": backbone.patch_size,
                "embed_dim": backbone.embed_dim,
                "depth": backbone.depth,
                "layers": ids,
                "input_size_hw": list(size),
                "feature_grid_hw": list(train.features.shape[-2:]),
            },
            "datasets": {"train": _dataset_info(train_ds), "val": _dataset_info(val_ds)},
            "timings": {
                "train_features_s": train.seconds,
                "val_features_s": val.seconds if val is not None else 0.0,  # sliding: inside probe_eval_s
                "train_features_cached": train.cached,
                "val_features_cached": val.cached if val is not None else False,
                "probe_train_s": t1 - t0,
                "probe_eval_s": t2 - t1,
                "total_s": (extracted - start) + (t2 - t0),
            },
            "probe": logs,
            "machine": _machine(backbone, cfg.precision),
            **code,
        }
    backbone.train(was_training)
    return out


def label_space(train_ds: Dataset, val_ds: Dataset) -> tuple[int, list[str], int]:
    """The number of classes, their names and the ignore index of a train / validation pair (checked: the
    train split must say its ``num_classes``, the validation split must have as many)."""
    num_classes = int(getattr(train_ds, "num_classes", 0) or 0)
    val_classes = int(getattr(val_ds, "num_classes", num_classes) or num_classes)
    if num_classes <= 0:
        raise ValueError("train_ds must say its num_classes (a glare_core.data.SegmentationDataset does)")
    if val_classes != num_classes:
        raise ValueError(f"train split has {num_classes} classes, validation split {val_classes}")
    classes = list(getattr(train_ds, "classes", [str(c) for c in range(num_classes)]))
    return num_classes, classes, int(getattr(train_ds, "ignore_index", IGNORE_INDEX))


def _dataset_info(ds: Dataset) -> dict:
    return {
        "name": getattr(ds, "name", type(ds).__name__),
        "split": getattr(ds, "split", None),
        "num_images": len(ds),
    }


def _machine(backbone: Backbone, precision: str) -> dict:
    """Where the evaluation ran (:func:`~glare_core.system.run_machine`), with the precision used."""
    device = next(backbone.parameters()).device
    return run_machine(device, precision=resolve_precision(precision, device).name)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` pixels, ``stride`` apart, covering ``length`` pixels; the last
    window ends exactly at the border (it may overlap its neighbour more). ``length <= window``: ``[0]``."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, max(1, stride)))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


@torch.no_grad()
def sliding_window_logits(
    backbone: Backbone,
    head: torch.nn.Module,
    image: torch.Tensor,
    window: tuple[int, int],
    stride: tuple[int, int],
    layers: list[int],
    precision: str = "auto",
    batch_size: int = 8,
) -> torch.Tensor:
    """Class logits of one image from windows slid over it (mmsegmentation's ``slide`` inference).

    Each window of ``window`` pixels goes through the frozen backbone and the head; its logits, upsampled
    bilinearly to the window's pixels, are added into a full-size sum, and every pixel's sum is divided by the
    number of windows that covered it.

    Args:
        backbone: the frozen backbone (eval mode).
        head: the trained probe head (eval mode).
        image: (3, H, W) float in [0, 1]; sides smaller than the window are resized up to it first.
        window: (h, w) window size in pixels, multiples of the patch size.
        stride: (sh, sw) step between windows in pixels.
        layers: block indices whose tokens feed the head (as in training).
        precision: autocast precision of the backbone (:mod:`glare_core.precision`).
        batch_size: windows per backbone forward.

    Returns:
        (K, H', W') float32 logits, (H', W') = (max(H, h), max(W, w)).
    """
    device = next(backbone.parameters()).device
    wh, ww = window
    H, W = max(image.shape[-2], wh), max(image.shape[-1], ww)
    if (H, W) != tuple(image.shape[-2:]):
        image = F.interpolate(image[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    boxes = [(y, x) for y in window_starts(H, wh, stride[0]) for x in window_starts(W, ww, stride[1])]
    total = count = None
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        crops = torch.stack([image[:, y : y + wh, x : x + ww] for y, x in chunk]).to(device)
        with autocast_context(device, precision):
            feats = _forward_features(backbone, crops, layers)
        logits = head(feats.float())  # (n, K, h, w)
        logits = F.interpolate(logits, size=(wh, ww), mode="bilinear", align_corners=False).float().cpu()
        if total is None:
            total = torch.zeros(logits.shape[1], H, W)
            count = torch.zeros(1, H, W)
        for (y, x), lg in zip(chunk, logits):
            total[:, y : y + wh, x : x + ww] += lg
            count[:, y : y + wh, x : x + ww] += 1
    return total / count


@torch.no_grad()
def evaluate_sliding(
    backbone: Backbone,
    head: torch.nn.Module,
    val_ds: Dataset,
    cfg: ProbeConfig,
    layers: list[int],
    num_classes: int,
    ignore_index: int = 255,
) -> ConfusionMatrix:
    """The confusion matrix of ``head`` on ``val_ds``, predicted by :func:`sliding_window_logits`.

    Each image is resized (bilinear, antialiased) to its label's resolution times ``cfg.slide_scale``; windows
    of the probe resolution slide over it with stride ``cfg.slide_stride`` x window; the averaged logits are
    resized to the label's resolution and argmaxed.
    """
    window = probe_size(cfg.size, backbone.patch_size)
    stride = (max(1, round(window[0] * cfg.slide_stride)), max(1, round(window[1] * cfg.slide_stride)))
    was_training = backbone.training
    backbone.eval()
    head.eval()
    cm = ConfusionMatrix(num_classes, ignore_index)
    for i in tqdm(range(len(val_ds)), desc="val (sliding)", disable=not show_progress(cfg.progress)):
        item = val_ds[i]
        label = item["label"]
        size = (round(label.shape[-2] * cfg.slide_scale), round(label.shape[-1] * cfg.slide_scale))
        image = unit_image(item["image"], size)
        logits = sliding_window_logits(
            backbone, head, image, window, stride, layers, cfg.precision, cfg.feature_batch_size
        )
        if tuple(logits.shape[-2:]) != tuple(label.shape[-2:]):
            logits = F.interpolate(
                logits[None], size=tuple(label.shape[-2:]), mode="bilinear", align_corners=False
            )[0]
        cm.update(logits.argmax(0)[None], label[None].long())
    backbone.train(was_training)
    return cm


def save_result(result: dict, path: str | Path) -> Path:
    """Write a result dict as indented JSON, atomically (:func:`~glare_core.runs.atomic_write_json`), creating
    its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)
    return path


def load_result(path: str | Path) -> dict:
    """Read a result written by :func:`save_result`."""
    with open(path) as f:
        return json.load(f)


def format_result(result: dict) -> str:
    """A plain-text table: per-class IoU, then mIoU / pixel accuracy / mean accuracy (in %)."""

    def pct(v: float | None) -> str:
        return "  n/a" if v is None else f"{100 * v:5.1f}"

    names = list(result["per_class_iou"])
    width = max([len(n) for n in names] + [10])
    lines = [f"{'class':<{width}}   IoU %   Acc %"]
    for n in names:
        lines.append(
            f"{n:<{width}}   {pct(result['per_class_iou'][n])}   {pct(result['per_class_acc'].get(n))}"
        )
    lines.append("-" * (width + 16))
    lines.append(f"{'mIoU':<{width}}   {pct(result['miou'])}")
    lines.append(f"{'pixel acc':<{width}}   {pct(result['pixel_acc'])}")
    lines.append(f"{'mean acc':<{width}}   {pct(result['mean_acc'])}")
    if "knn" in result:
        lines.append(f"{'k-NN top-1':<{width}}   {pct(result['knn'].get('top1'))}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ backbones
def load_backbone(base: str) -> Backbone:
    """A frozen base backbone: ``glare_core.weights.load_base(base)``; a ``random:<arch>`` base gets the same
    random weights in every evaluation (drawn after ``torch.manual_seed(0)``, as in pretrain with seed 0)."""
    if base.startswith("random:"):
        torch.manual_seed(0)
    return load_base(base)


def apply_adapter_and_record(backbone: Backbone, path: str | Path, base: str | None = None) -> dict:
    """Add an exported adapter (``StudentTeacher.export_adapter``) to ``backbone`` in place, freeze it, and
    return what a result record keeps of it.

    The loading itself is :func:`glare_core.teacher.apply_adapter` (which returns the backbone).
    With ``base`` (the name the backbone was loaded by), an adapter trained on another named base is refused
    (:func:`glare_core.teacher.check_adapter_base`).

    Returns:
        ``{"path", "mode", "rank", "num_tensors", "num_parameters", "metadata"}``.
    """
    from .teacher import apply_adapter as load_into
    from .teacher import check_adapter_base, read_adapter

    tensors, meta = read_adapter(path)
    if base is not None:
        check_adapter_base(path, meta, base)
    load_into(backbone, path)
    return {
        "path": str(path),
        "mode": meta["tuning"],
        "rank": int(meta["rank"]),
        "num_tensors": len(tensors),
        "num_parameters": sum(v.numel() for v in tensors.values()),
        "metadata": meta,
    }
