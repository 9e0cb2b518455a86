"""PiPa's patch-wise consistency: the same place seen in two overlapping crops is one positive pair.

Known (PiPa, Chen et al., arXiv 2211.07609, section 3; ``glare-method.md`` section 5): two overlapping crops
of the same image; pixel features (a 1x1-conv projection to 128 dimensions, L2-normalised) at the same
location of the overlap are positives; negatives are stored pixel features whose pseudo-label differs (a
memory queue); temperature tau = 0.1, weight 0.01; a position counts only where the other crop's prediction is
confident (max probability > 0.9).

For an anchor a (crop 1) with positive p (the same place in crop 2, pseudo-label y and confidence q from crop
2) and the queue {(n_k, y_k)}:

.. math::

    \\ell(a) = -\\log \\frac{e^{a \\cdot p / \\tau}}
                           {e^{a \\cdot p / \\tau} + \\sum_{k : y_k \\ne y} e^{a \\cdot n_k / \\tau}},
    \\qquad L_{patch} = \\frac{1}{|\\{a : q > 0.9\\}|} \\sum_{a : q > 0.9} \\ell(a)

Design (this project's, fields of :class:`PatchConsistencyConfig`): the positives are detached (targets, as a
teacher's would be) and the term is symmetric over the two crops; the confident positives of the current step
are pushed into the queue *before* the loss is computed, so the first step already has negatives (the current
batch's other pseudo-labels); the queue holds ``queue_size`` = 4096 features, first in first out.

Two uses in this project:

1. downstream, while a light decoder trains on cached frozen features
   (:mod:`glare_core.neighbours.segmentation`): the two "crops" are two overlapping windows of the cached
   feature map (:func:`overlapping_windows`, the same windows for the whole batch), so the overlap is known
   exactly in feature cells; the pseudo-labels and confidences are the decoder's own detached softmax on the
   other window (there is no EMA teacher);
2. as a drop-in local term for continual pre-training (:class:`PiPaLocalLoss`, registered as
   ``ObjectiveConfig.local_variant = "pipa"``): the crops are GLARE's two global views; a student cell of view
   u is matched with the teacher's tokens of view v at the same source-image location (through the crop boxes,
   bilinear); the projection is the patch head's L2-normalised bottleneck (it is trained with the heads when
   they train); the pseudo-label and confidence come from the teacher's patch-head distribution
   softmax(h'(t) / tau_t) at that location (no centring). With a new, untrained head few positions pass the
   0.9 threshold early on: the term then contributes little until the head sharpens (see ``last_stats``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...losses.local_consistency import LocalInputs, limit_per_image, register_local_variant
from ...schedules import TeacherTemperature
from ...views import map_cells_between_views, sample_at


@dataclass
class PatchConsistencyConfig:
    """PiPa's patch-wise consistency.

    Attributes:
        weight: weight of the term (0.01, Known) in the downstream segmentation loss.
        temperature: tau (0.1, Known).
        threshold: a position counts only where the other crop's confidence exceeds it (0.9, Known).
        proj_dim: width of the 1x1-conv projection (128, Known) downstream.
        queue_size: number of stored (feature, pseudo-label) negatives (4096, Design).
        crop_fraction: side of each feature-map window relative to the map (0.75, Design; > 0.5 so that two
            windows always overlap).
        max_anchors: at most this many confident anchors per crop direction and step (1024, Design; None:
            all).
        symmetric: both directions, crop 1 -> crop 2 and crop 2 -> crop 1 (True, Design).
    """

    weight: float = 0.01
    temperature: float = 0.1
    threshold: float = 0.9
    proj_dim: int = 128
    queue_size: int = 4096
    crop_fraction: float = 0.75
    max_anchors: int | None = 1024
    symmetric: bool = True

    def __post_init__(self):
        if not 0.5 < self.crop_fraction <= 1.0:
            raise ValueError(
                f"PatchConsistencyConfig.crop_fraction={self.crop_fraction}: must lie in (0.5, 1] so that "
                "the two windows overlap"
            )


class FeatureQueue(nn.Module):
    """A first-in-first-out memory of L2-normalised features and their pseudo-labels (buffers, checkpointed).

    Args:
        size: Q, the capacity.
        dim: d, or None to size the feature buffer at the first :meth:`push`.

    Attributes:
        features: (Q, d) float32; labels: (Q,) long, -1 where empty; ptr: () long, the next slot.
    """

    def __init__(self, size: int = 4096, dim: int | None = None):
        super().__init__()
        self.size = size
        self.register_buffer("features", torch.zeros(size if dim else 0, dim or 0))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Store (M, d) features with their (M,) labels, overwriting the oldest entries."""
        if features.shape[0] == 0:
            return
        f = F.normalize(features.detach().float(), dim=-1)[-self.size :]
        lab = labels.detach().long()[-self.size :]
        if self.features.numel() == 0 or self.features.shape[1] != f.shape[1]:
            self.features = torch.zeros(self.size, f.shape[1], device=f.device)
            self.labels.fill_(-1)
            self.ptr.zero_()
        slots = (int(self.ptr) + torch.arange(f.shape[0], device=f.device)) % self.size
        self.features[slots] = f.to(self.features.device)
        self.labels[slots] = lab.to(self.labels.device)
        self.ptr.fill_((int(self.ptr) + f.shape[0]) % self.size)

    def negatives_mask(self, labels: torch.Tensor) -> torch.Tensor:
        """(M, Q) bool: entry k is a negative of anchor m when it is filled and its label differs."""
        stored = self.labels.to(labels.device)
        return (stored[None, :] >= 0) & (stored[None, :] != labels[:, None])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "features"
        if key in state_dict and state_dict[key].shape != self.features.shape:
            self.features = torch.zeros_like(state_dict[key], device=self.features.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def patch_contrast(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    negative_mask: torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Per-anchor InfoNCE with one positive and masked negatives (the equation of this module's docstring).

    Args:
        anchors: (M, d), positives: (M, d) (both L2-normalised here).
        negatives: (Q, d).
        negative_mask: (M, Q) bool, which negatives count for each anchor.
        temperature: tau.

    Returns:
        (M,) float32 losses.
    """
    with torch.autocast(anchors.device.type, enabled=False):  # float32 similarities under autocast
        a = F.normalize(anchors.float(), dim=-1)
        p = F.normalize(positives.float(), dim=-1)
        pos = (a * p).sum(-1, keepdim=True) / temperature  # (M, 1)
        neg = a @ negatives.float().t() / temperature  # (M, Q)
        neg = neg.masked_fill(~negative_mask, float("-inf"))
        logits = torch.cat([pos, neg], dim=1)
        return torch.logsumexp(logits, dim=1) - pos[:, 0]


class PatchConsistencyLoss(nn.Module):
    """L_patch from aligned anchor / positive rows, with the confidence mask and the memory queue.

    Args:
        cfg: :class:`PatchConsistencyConfig`.

    Attributes:
        queue: the :class:`FeatureQueue`.
        last_stats: ``{"confident_fraction", "negatives_per_anchor"}`` of the last call.
    """

    def __init__(self, cfg: PatchConsistencyConfig | None = None):
        super().__init__()
        self.cfg = cfg or PatchConsistencyConfig()
        self.queue = FeatureQueue(self.cfg.queue_size)
        self.last_stats: dict[str, float] = {}

    def forward(
        self,
        anchors: torch.Tensor,
        positives: torch.Tensor,
        pseudo_labels: torch.Tensor,
        confidence: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Args:
            anchors: (M, d) features of crop 1 at the overlap positions (with gradients).
            positives: (M, d) features of crop 2 at the same positions (detached here).
            pseudo_labels: (M,) crop 2's predicted class there.
            confidence: (M,) crop 2's max probability there; rows at or below ``cfg.threshold`` are dropped.
            generator: random generator for the ``max_anchors`` cap.

        Returns:
            Scalar float32 loss (unweighted); 0, connected to the graph, when no row is confident.
        """
        keep = confidence > self.cfg.threshold
        idx = torch.nonzero(keep).flatten()
        cap = self.cfg.max_anchors
        if cap is not None and len(idx) > cap:
            perm = torch.randperm(len(idx), generator=generator)[:cap].to(idx.device)
            idx = idx[perm]
        pos = F.normalize(positives[idx].detach().float(), dim=-1)
        labels = pseudo_labels[idx]
        self.queue.push(pos, labels)
        mask = self.queue.negatives_mask(labels)
        self.last_stats = {
            "confident_fraction": float(keep.float().mean()) if keep.numel() else 0.0,
            "negatives_per_anchor": float(mask.sum(1).float().mean()) if len(idx) else 0.0,
        }
        if len(idx) == 0:
            return anchors.sum() * 0.0
        negatives = self.queue.features.clone()  # a snapshot: later pushes must not alter this graph
        losses = patch_contrast(anchors[idx], pos, negatives, mask, self.cfg.temperature)
        return losses.mean()


# ------------------------------------------------------------------------------ windows of a feature map
def overlapping_windows(
    h: int, w: int, fraction: float, generator: torch.Generator | None = None
) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Two random windows (top, left, height, width) of an (h, w) map, each ``fraction`` of its sides.

    With ``fraction`` > 0.5 the windows always overlap.
    """
    ch, cw = max(1, round(fraction * h)), max(1, round(fraction * w))
    r = torch.randint(0, h - ch + 1, (2,), generator=generator).tolist()
    c = torch.randint(0, w - cw + 1, (2,), generator=generator).tolist()
    return (r[0], c[0], ch, cw), (r[1], c[1], ch, cw)


def overlap_slices(
    win1: tuple[int, int, int, int], win2: tuple[int, int, int, int]
) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Where the overlap of two windows lies in each window's own coordinates.

    Returns:
        ((rows1, cols1), (rows2, cols2)): ``crop1[..., rows1, cols1]`` and ``crop2[..., rows2, cols2]`` are
        the same cells of the full map. Raises ValueError when the windows do not overlap.
    """
    t1, l1, h1, w1 = win1
    t2, l2, h2, w2 = win2
    top, bottom = max(t1, t2), min(t1 + h1, t2 + h2)
    left, right = max(l1, l2), min(l1 + w1, l2 + w2)
    if bottom <= top or right <= left:
        raise ValueError(f"windows {win1} and {win2} do not overlap")
    return (
        (slice(top - t1, bottom - t1), slice(left - l1, right - l1)),
        (slice(top - t2, bottom - t2), slice(left - l2, right - l2)),
    )


def crop(x: torch.Tensor, win: tuple[int, int, int, int]) -> torch.Tensor:
    """``x[..., top:top + height, left:left + width]`` for a window (top, left, height, width)."""
    t, left, h, w = win
    return x[..., t : t + h, left : left + w]


# ---------------------------------------------------------------- the "pipa" local term of pre-training
class PiPaLocalLoss(nn.Module):
    """PiPa-style patch consistency as GLARE's local term (``ObjectiveConfig.local_variant = "pipa"``).

    For each global view u and the other view v: the student's cells of u whose centres fall inside v are the
    anchors (at most ``max_anchors_per_image`` random ones per image, i.e. ``local_max_patches`` of the
    objective when that is set); the positives are the teacher's tokens of v at the same source-image
    location; both go through the patch head's MLP and are L2-normalised (the "projection"); the teacher's
    patch-head softmax at tau_t gives the pseudo-label and the confidence. The loss is
    :class:`PatchConsistencyLoss`, averaged over the two directions. The objective weighs it with
    ``lambda_local``.

    Args:
        cfg: :class:`PatchConsistencyConfig` (``threshold``, ``temperature``, ``queue_size``,
            ``max_anchors``).
        tau_t: the teacher-temperature schedule of the pseudo-labels (the objective's, shared with the
            GLARE terms).
        max_anchors_per_image: cap per image and view (None: all cells inside the other view).
    """

    def __init__(
        self,
        cfg: PatchConsistencyConfig | None = None,
        tau_t: TeacherTemperature | None = None,
        max_anchors_per_image: int | None = None,
    ):
        super().__init__()
        self.core = PatchConsistencyLoss(cfg)
        self.tau_t = tau_t or TeacherTemperature()
        self.max_anchors_per_image = max_anchors_per_image
        self.last_stats: dict[str, float] = {}

    @staticmethod
    def _embed(head: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """The head's L2-normalised bottleneck (its MLP output), (M, D) -> (M, d)."""
        return F.normalize(head.mlp(tokens), dim=-1)

    def forward(self, inp: LocalInputs) -> torch.Tensor:
        net, n = inp.model, len(inp.students)
        tau_t = self.tau_t(inp.step)
        losses, stats = [], []
        for u in range(n):
            v = (u + 1) % n
            S, T = inp.students[u], inp.teachers[v]
            points, inside = map_cells_between_views(S.grid, inp.views.crop(u), inp.views.crop(v))
            sel = limit_per_image(inside, self.max_anchors_per_image, inp.generator)
            with torch.no_grad():
                target = sample_at(T.patch_map(), points.to(T.patches.dtype))[sel]  # (M, D)
                head = net.teacher_patch_head
                t_emb = self._embed(head, target)
                probs = (head.last_layer(t_emb).float() / tau_t).softmax(-1)
                confidence, pseudo = probs.max(-1)
            s_emb = self._embed(net.student_patch_head, S.patches[sel])
            losses.append(self.core(s_emb, t_emb, pseudo, confidence, inp.generator))
            stats.append(self.core.last_stats)
        self.last_stats = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}
        return torch.stack(losses).mean()


def build_pipa_local(objective_cfg: Any) -> PiPaLocalLoss:
    """The factory registered as ``local_variant="pipa"``.

    Reads ``objective_cfg.pipa`` (a :class:`PatchConsistencyConfig`, or a dict of its fields) when present,
    else the defaults; the teacher-temperature schedule and ``local_max_patches`` come from the objective's
    config.
    """
    pipa = getattr(objective_cfg, "pipa", None)
    if isinstance(pipa, dict):
        pipa = PatchConsistencyConfig(**pipa)
    return PiPaLocalLoss(
        pipa or PatchConsistencyConfig(),
        tau_t=TeacherTemperature.of(objective_cfg),
        max_anchors_per_image=getattr(objective_cfg, "local_max_patches", None),
    )


register_local_variant("pipa", build_pipa_local)
