"""Confusion matrix, IoU, mIoU and accuracies against hand-computed values and a numpy reference."""

import numpy as np
import pytest
import torch

from glare_core.metrics import ConfusionMatrix, confusion_matrix, segmentation_scores


def numpy_confusion(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int = 255) -> np.ndarray:
    """Reference written independently: a double loop over pixels."""
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, t in zip(pred.ravel(), target.ravel()):
        if t != ignore:
            out[t, p] += 1
    return out


def test_confusion_matrix_matches_numpy_reference():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(3, 17, 23))
    target[rng.random(target.shape) < 0.1] = 255
    pred = rng.integers(0, 5, size=(3, 17, 23))
    ours = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 5)
    assert ours.dtype == torch.int64
    np.testing.assert_array_equal(ours.numpy(), numpy_confusion(pred, target, 5))


def test_hand_computed_scores_with_ignore_absent_and_prediction_only_classes():
    # 4 classes. Class 2 occurs nowhere (after ignore), class 3 only in the prediction.
    target = torch.tensor([0, 0, 0, 1, 1, 255, 255])
    pred = torch.tensor([0, 0, 3, 1, 0, 2, 1])  # the two ignored pixels (predicted 2 and 1) must not count
    conf = confusion_matrix(pred, target, 4)
    expected = torch.tensor([[2, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(conf, expected)

    s = segmentation_scores(conf, ["a", "b", "c", "d"])
    # IoU_a = 2 / (2 + FP 1 + FN 1), IoU_b = 1 / (1 + 0 + 1), c absent -> None, IoU_d = 0 / (0 + 1 + 0)
    assert s["per_class_iou"] == {"a": 0.5, "b": 0.5, "c": None, "d": 0.0}
    assert s["miou"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)  # c left out, d counted
    assert s["num_classes_counted"] == 3
    assert s["pixel_acc"] == pytest.approx(3 / 5)  # ignore pixels are not in the denominator
    assert s["per_class_acc"] == {"a": pytest.approx(2 / 3), "b": 0.5, "c": None, "d": None}
    assert s["mean_acc"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert s["num_pixels"] == 5


def test_perfect_prediction_and_empty_matrix():
    target = torch.tensor([[0, 1], [2, 255]])
    s = segmentation_scores(confusion_matrix(target.clamp(max=2), target, 3))
    assert s["miou"] == 1.0 and s["pixel_acc"] == 1.0
    empty = segmentation_scores(torch.zeros(3, 3, dtype=torch.int64))
    assert empty["miou"] is None and empty["pixel_acc"] is None
    assert empty["per_class_iou"] == {"0": None, "1": None, "2": None}


def test_accumulating_batches_equals_one_shot():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 6, (4, 9, 11), generator=g)
    pred = torch.randint(0, 6, (4, 9, 11), generator=g)
    cm = ConfusionMatrix(6)
    for i in range(4):
        cm.update(pred[i], target[i])
    assert torch.equal(cm.matrix, confusion_matrix(pred, target, 6))
    assert cm.scores()["miou"] == pytest.approx(segmentation_scores(cm.matrix)["miou"])


def test_bad_labels_and_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="label values"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="class names"):
        segmentation_scores(torch.zeros(3, 3, dtype=torch.int64), ["a", "b"])
