"""Segmentation metrics from an accumulated confusion matrix: IoU per class, mIoU, pixel and mean accuracy.

Design (``glare-method.md`` section 4, "Metric"): every number comes from one (C, C) confusion matrix summed
over the whole validation set (not averaged per image), rows = ground truth, columns = prediction. For each
class c,

.. math::

    \\mathrm{IoU}_c = \\frac{TP_c}{TP_c + FP_c + FN_c}, \\qquad
    \\mathrm{Acc}_c = \\frac{TP_c}{TP_c + FN_c}

**The one mIoU rule.** mIoU is the mean of IoU_c over the classes that occur in the ground truth *or* in the
prediction (TP + FP + FN > 0). A class absent from both has an undefined IoU (0 / 0): it is left out of the
mean and reported as ``None``. A class that is only predicted (never in the ground truth) has IoU 0 and *does*
count, so false alarms are penalised. Pixels whose ground truth is the ignore index (255) are dropped before
counting, so they are neither right nor wrong. Pixel accuracy is the trace over the sum of the matrix
(non-ignored pixels only). Mean accuracy averages Acc_c over the classes present in the ground truth
(TP + FN > 0).

This is the rule of mmsegmentation's ``total_area_to_metrics`` (NaN classes dropped by ``nanmean``) applied to
a validation-set-wide matrix, which is how ADE20K / Cityscapes mIoU are reported.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE_INDEX = 255


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Confusion matrix of one batch, by ``torch.bincount``.

    Args:
        pred: (...) integer predictions in [0, num_classes).
        target: (...) integer ground truth, same shape, values in [0, num_classes) or ``ignore_index``.
        num_classes: C.
        ignore_index: ground-truth value to leave out.

    Returns:
        (C, C) int64, ``conf[t, p]`` = number of pixels with ground truth t predicted as p.

    Raises:
        ValueError: shapes differ, or a label / prediction lies outside [0, C) (other than ``ignore_index``).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(target.shape)}")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(
            f"label values must lie in [0, {num_classes}) or be {ignore_index}; "
            f"found {target.min()}..{target.max()}"
            " (check the dataset's label mapping)"
        )
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predictions must lie in [0, {num_classes}); found {pred.min()}..{pred.max()}")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


class ConfusionMatrix:
    """Accumulates a (C, C) confusion matrix over batches (rows ground truth, columns prediction).

    Example::

        cm = ConfusionMatrix(num_classes=11)
        for pred, label in batches:
            cm.update(pred, label)
        scores = cm.scores(class_names)
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: ``pred`` and ``target`` of the same shape (...)."""
        self.matrix += confusion_matrix(pred.cpu(), target.cpu(), self.num_classes, self.ignore_index)

    def scores(self, class_names: Sequence[str] | None = None) -> dict:
        """:func:`segmentation_scores` of the accumulated matrix."""
        return segmentation_scores(self.matrix, class_names)


def per_class_iou(conf: torch.Tensor) -> list[float | None]:
    """IoU_c = TP / (TP + FP + FN) per class; ``None`` for a class absent from ground truth and prediction.

    Args:
        conf: (C, C) confusion matrix, rows ground truth, columns prediction.
    """
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp  # TP + FP + FN
    return [float(tp[c] / union[c]) if union[c] > 0 else None for c in range(conf.shape[0])]


def per_class_accuracy(conf: torch.Tensor) -> list[float | None]:
    """Acc_c = TP / (TP + FN) per class (recall); ``None`` for a class absent from the ground truth."""
    conf = conf.double()
    gt = conf.sum(1)
    return [float(conf[c, c] / gt[c]) if gt[c] > 0 else None for c in range(conf.shape[0])]


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def segmentation_scores(conf: torch.Tensor, class_names: Sequence[str] | None = None) -> dict:
    """mIoU, pixel accuracy, mean accuracy and per-class IoU / accuracy of a confusion matrix.

    See the module docstring for the rule: classes with TP + FP + FN = 0 are reported as ``None`` and left out
    of the mean; classes only predicted count with IoU 0.

    Args:
        conf: (C, C) confusion matrix (rows ground truth, columns prediction), ignore pixels already left out.
        class_names: C names for the per-class dictionaries (default ``"0"``, ``"1"``, ...).

    Returns:
        JSON-able dict: ``miou``, ``pixel_acc``, ``mean_acc`` (fractions in [0, 1], or None when the matrix is
        empty), ``per_class_iou`` and ``per_class_acc`` ({name: value or None}), ``num_pixels``,
        ``num_classes_counted`` (how many classes the mIoU averages).
    """
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"a confusion matrix is square (C, C); got shape {tuple(conf.shape)}")
    num_classes = conf.shape[0]
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a {num_classes}-class confusion matrix")
    ious = per_class_iou(conf)
    accs = per_class_accuracy(conf)
    total = int(conf.sum())
    return {
        "miou": _mean(ious),
        "pixel_acc": float(conf.diag().sum()) / total if total else None,
        "mean_acc": _mean(accs),
        "per_class_iou": dict(zip(names, ious)),
        "per_class_acc": dict(zip(names, accs)),
        "num_pixels": total,
        "num_classes_counted": sum(v is not None for v in ious),
    }
