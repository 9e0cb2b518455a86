"""Figures of predictions (not of results): segmentation maps side by side, with what changed.

The study's figures, drawn from ``results/``, are in :mod:`glare_core.study.figures`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def qualitative_figure(
    images: Sequence[Any],
    labels: Sequence[Any],
    predictions: dict[str, Sequence[Any]],
    palette: Sequence[Sequence[int]],
    classes: Sequence[str],
    titles: Sequence[str] | None = None,
    ignore_index: int = 255,
    changes: tuple[str, str] | None = None,
):
    """One row per frame: the image, the ground truth, then each model's prediction with the share of
    correctly labelled (non-ignored) pixels in its title; optionally a last column of what changed.

    Args:
        images: (3, H, W) tensors or (H, W, 3) arrays.
        labels: (H, W) class ids (``ignore_index`` = void).
        predictions: {model name: one (H, W) class-id map per frame}.
        palette: one RGB colour per class.
        classes: class names (for the legend).
        titles: one title per frame for the image column (default: "frame i").
        changes: ``(a, b)``, two keys of ``predictions``: add a column where green marks the pixels ``b``
            labels correctly and ``a`` does not, red the reverse, grey the void pixels; its title gives both
            shares in % of the scored pixels.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    from .notebook import colorize_labels, to_numpy_image

    n, ncols = len(images), 2 + len(predictions) + (changes is not None)
    fig, axes = plt.subplots(n, ncols, figsize=(3.2 * ncols, 2.45 * n + 0.5), squeeze=False)
    for i in range(n):
        label = np.asarray(labels[i])
        valid = label != ignore_index
        panels = [(to_numpy_image(images[i]), titles[i] if titles else f"frame {i}")]
        panels.append((colorize_labels(label, palette, ignore_index), "ground truth"))
        for name, preds in predictions.items():
            pred = np.asarray(preds[i])
            acc = 100 * float((pred[valid] == label[valid]).mean()) if valid.any() else float("nan")
            panels.append((colorize_labels(pred, palette, ignore_index), f"{name}: {acc:.1f} % px correct"))
        if changes is not None:
            right_a, right_b = (np.asarray(predictions[k][i]) == label for k in changes)
            fixed, broken = right_b & ~right_a & valid, right_a & ~right_b & valid
            change = np.ones((*label.shape, 3))
            change[fixed], change[broken], change[~valid] = (
                (0.1, 0.65, 0.2),
                (0.85, 0.1, 0.1),
                (0.7, 0.7, 0.7),
            )
            share = 100 / max(1, int(valid.sum()))
            panels.append(
                (
                    change,
                    f"{changes[0]} -> {changes[1]}: fixed {share * fixed.sum():.1f} %, "
                    f"broken {share * broken.sum():.1f} %",
                )
            )
        for ax, (img, title) in zip(axes[i], panels, strict=True):
            ax.imshow(img)
            ax.set_title(title, fontsize=8.5)
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=np.asarray(c) / 255) for c in palette]
    fig.legend(
        handles, list(classes), loc="lower center", ncol=min(len(classes), 11), fontsize=7.5, frameon=False
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig
