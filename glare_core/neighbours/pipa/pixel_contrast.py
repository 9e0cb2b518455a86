"""PiPa's pixel-wise contrast: a supervised contrastive loss on the decoder's pixel embeddings.

Known (PiPa, Chen et al., arXiv 2211.07609, section 3; ``glare-method.md`` section 5): on top of the
segmentation cross-entropy, pixel embeddings of the same class are pulled together and those of different
classes pushed apart; anchors are sampled per class, half *hard* (mis-predicted) and half *easy* (correctly
predicted); temperature tau = 0.1; the term enters the segmentation loss with weight 0.1.

The loss (the form of "Exploring cross-image pixel contrast", Wang et al., ICCV 2021, whose sampling PiPa
reuses). With L2-normalised anchor embeddings z_i, labels y_i and s_ij = z_i . z_j / tau, positives
P(i) = {j != i : y_j = y_i} and negatives N(i) = {j : y_j != y_i} among the sampled anchors,

.. math::

    L_{pix} = \\frac{1}{|A'|} \\sum_{i \\in A'} \\frac{-1}{|P(i)|} \\sum_{p \\in P(i)}
              \\Big[ s_{ip} - \\log\\Big( e^{s_{ip}} + \\sum_{n \\in N(i)} e^{s_{in}} \\Big) \\Big]
              \\cdot \\frac{\\tau}{\\tau_{base}}

where A' are the anchors with at least one positive. Design choices (this project's, fields of
:class:`PixelContrastConfig`): ``anchors_per_class`` anchors per class present in the batch (all the class's
pixels when it has fewer); when one pool (hard or easy) is short the other fills the gap; ``tau_base``
defaults to tau (Wang et al.'s code uses 0.07, which only rescales the loss); the labels are taken at the
embedding resolution by nearest-neighbour subsampling; the pixel embedding is a training-only 1x1-conv
projection of the decoder's last hidden features (:mod:`glare_core.neighbours.segmentation`), so inference
costs nothing extra.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...metrics import IGNORE_INDEX


@dataclass
class PixelContrastConfig:
    """PiPa's pixel-wise contrast.

    Attributes:
        weight: weight of the term in the segmentation loss (0.1, Known).
        temperature: tau (0.1, Known).
        base_temperature: tau_base of the loss scale tau / tau_base (None: equal to tau, scale 1; Design).
        anchors_per_class: anchors sampled per class present in the batch (100, Design; Wang et al.'s
            ``max_views``).
        hard_fraction: fraction of a class's anchors taken from its mis-predicted pixels (0.5, Known).
        proj_dim: width of the training-only embedding (128, Design, as the patch-wise term).
    """

    weight: float = 0.1
    temperature: float = 0.1
    base_temperature: float | None = None
    anchors_per_class: int = 100
    hard_fraction: float = 0.5
    proj_dim: int = 128


def labels_to_grid(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour subsampling of (B, H, W) integer labels to (B, h, w) (ignore index preserved)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()


def sample_anchors(
    labels: torch.Tensor,
    preds: torch.Tensor,
    per_class: int,
    hard_fraction: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Class-balanced anchor sampling, hard and easy.

    For every class c present in ``labels``: ``round(per_class * hard_fraction)`` pixels drawn without
    replacement from the *hard* pixels (label c, prediction != c) and the rest from the *easy* ones (label c,
    prediction c); a short pool is filled from the other; a class with at most ``per_class`` pixels gives
    all of them.

    Args:
        labels: (M,) integer labels (``ignore_index`` never sampled).
        preds: (M,) predicted classes.
        per_class: anchors per class.
        hard_fraction: share of hard anchors (0.5).
        generator: random generator (CPU).

    Returns:
        (A,) long indices into the M pixels, grouped by class.
    """
    chosen = []
    for c in torch.unique(labels).tolist():
        if c == ignore_index:
            continue
        is_c = labels == c
        hard = torch.nonzero(is_c & (preds != c)).flatten()
        easy = torch.nonzero(is_c & (preds == c)).flatten()
        hard = hard[torch.randperm(len(hard), generator=generator).to(hard.device)]
        easy = easy[torch.randperm(len(easy), generator=generator).to(easy.device)]
        n_hard = min(len(hard), round(per_class * hard_fraction))
        n_easy = min(len(easy), per_class - n_hard)
        n_hard = min(len(hard), per_class - n_easy)  # fill from the hard pool when easy pixels are short
        chosen += [hard[:n_hard], easy[:n_easy]]
    if not chosen:
        return torch.zeros(0, dtype=torch.long, device=labels.device)
    return torch.cat(chosen)


def supervised_pixel_contrast(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    base_temperature: float | None = None,
) -> torch.Tensor:
    """The contrastive loss among sampled anchors (the equation of this module's docstring).

    Args:
        embeddings: (A, d) anchor embeddings (L2-normalised here).
        labels: (A,) their classes.
        temperature: tau.
        base_temperature: tau_base (None: tau).

    Returns:
        Scalar float32 loss; 0 (connected to the graph) when no anchor has a positive.
    """
    if embeddings.shape[0] < 2:
        return embeddings.sum() * 0.0
    with torch.autocast(embeddings.device.type, enabled=False):  # float32 similarities under autocast
        z = F.normalize(embeddings.float(), dim=-1)
        A = z.shape[0]
        logits = z @ z.t() / temperature  # (A, A)
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(A, dtype=torch.bool, device=z.device)
        pos_mask = same & ~eye
        neg_sum = (logits.exp() * (~same)).sum(dim=1, keepdim=True)  # (A, 1)
        log_prob = logits - torch.log(logits.exp() + neg_sum)  # (A, A): per positive pair
        n_pos = pos_mask.sum(dim=1)
        has_pos = n_pos > 0
        if not bool(has_pos.any()):
            return embeddings.sum() * 0.0
        mean_log_prob_pos = (log_prob * pos_mask).sum(dim=1)[has_pos] / n_pos[has_pos]
        scale = temperature / (base_temperature or temperature)
        return -(scale * mean_log_prob_pos).mean()


class PixelContrastLoss(nn.Module):
    """L_pix on a batch of dense embeddings: subsample labels, sample anchors, contrast.

    Args:
        cfg: :class:`PixelContrastConfig`.
        ignore_index: label value never used as an anchor (255).
    """

    def __init__(self, cfg: PixelContrastConfig | None = None, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.cfg = cfg or PixelContrastConfig()
        self.ignore_index = ignore_index

    def forward(
        self,
        embeddings: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Args:
            embeddings: (B, d, h, w) pixel embeddings (with gradients).
            logits: (B, K, h, w) class scores at the same resolution (hard = argmax != label).
            labels: (B, H, W) ground truth (subsampled to (h, w) by nearest neighbour).
            generator: random generator of the anchor sampling.

        Returns:
            Scalar loss (unweighted; multiply by ``cfg.weight``).
        """
        B, d, h, w = embeddings.shape
        y = labels_to_grid(labels, (h, w)).reshape(-1)
        pred = logits.detach().argmax(1).reshape(-1)
        idx = sample_anchors(
            y, pred, self.cfg.anchors_per_class, self.cfg.hard_fraction, self.ignore_index, generator
        )
        z = embeddings.permute(0, 2, 3, 1).reshape(-1, d)[idx]
        return supervised_pixel_contrast(z, y[idx], self.cfg.temperature, self.cfg.base_temperature)
