"""(G) Global consistency: DINO's self-distillation loss on the [CLS] token across views.

Known (GLARE abstract, Figure 1): feature consistency at the global level between the base encoder (student)
and the momentum encoder (teacher), over two image-level augmented views; DINO is the base SSL method.
Design (``glare-method.md`` section 2, "(G)"), exactly DINO's ``DINOLoss`` (``main_dino.py``):

.. math::

    P_t = \\mathrm{softmax}\\Big(\\frac{h'(t) - c}{\\tau_t}\\Big), \\qquad
    \\log P_s = \\mathrm{log\\_softmax}\\Big(\\frac{h(s)}{\\tau_s}\\Big), \\qquad
    L_G = \\frac{1}{|\\mathcal{P}|} \\sum_{(i, j) \\in \\mathcal{P}} \\frac{1}{B} \\sum_b
          -\\langle P_t^{(i)}[b], \\log P_s^{(j)}[b] \\rangle

where the pairs :math:`\\mathcal{P}` are every teacher global view i with every student view j != i (global
and local crops), the centre c is an EMA (momentum 0.9) of the teacher's batch-mean logits, tau_s = 0.1 and
tau_t warms up linearly from 0.04 to 0.07 over ``warmup_teacher_temp_steps`` steps (DINO's ``np.linspace``
schedule), then stays (:func:`glare_core.schedules.teacher_temperature`).

:class:`Centering` (the centre buffer and its all-reduced EMA update) and :class:`TeacherTargets` (tau_s, the
tau_t schedule and a centre: the teacher side of a term that distils through a head) are shared with the local
and regional terms, which keep their own centres (iBOT keeps a separate patch centre).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..schedules import TeacherTemperature

#: The temperature settings the three terms share (fields of ``ObjectiveConfig``, arguments of the losses).
TEMPERATURE_FIELDS = ("student_temp", "teacher_temp", "warmup_teacher_temp", "warmup_teacher_temp_steps")


def soft_cross_entropy(student_logits: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float):
    """Per-row ``-sum_k p_k log_softmax(s / tau_s)_k`` in float32, as ``logsumexp(s/tau_s) - <p, s>/tau_s``.

    Equal to the cross-entropy because the teacher probabilities sum to 1; it avoids materialising the (M, K)
    log-softmax, which matters when the head has K = 65536 prototypes and M is a few hundred patches.

    Args:
        student_logits: (..., K) student head outputs.
        teacher_probs: (..., K) teacher probabilities (constants).
        student_temp: tau_s.

    Returns:
        (...,) per-row cross-entropy, float32 also inside an autocast region (where ``einsum`` would otherwise
        run in bf16 / fp16: the dot product over K terms would round the loss to a step of 1/16 near 8).
    """
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        s = student_logits.float() / student_temp
        return torch.logsumexp(s, dim=-1) - torch.einsum("...k,...k->...", teacher_probs.float(), s)


@torch.no_grad()
def collapse_stats(probs: torch.Tensor) -> dict[str, float]:
    """DINO's two collapse diagnostics of teacher targets, (..., K) probabilities -> two floats.

    * ``entropy``: the mean entropy of a target, ``mean_b H(p_b)``; ln K when every target is uniform (the
      "uniform" collapse that centring alone drives towards), 0 when each is one-hot.
    * ``kl_uniform``: ``KL(mean_b p_b || uniform) = ln K - H(mean_b p_b)``; 0 when the prototypes are used
      equally over the batch, ln K when every target puts its mass on the same prototype (the "dominant
      dimension" collapse that sharpening alone drives towards).

    Healthy training keeps the entropy clearly below ln K while the KL stays well below ln K.
    """
    p = probs.detach().float().reshape(-1, probs.shape[-1])
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).mean()
    mean = p.mean(0)
    kl = (mean * (mean.clamp_min(1e-12) * p.shape[-1]).log()).sum()
    return {"entropy": float(entropy), "kl_uniform": float(kl)}


def centred_softmax(teacher_logits: torch.Tensor, centering: Centering, temp: float) -> torch.Tensor:
    """``softmax((t - c) / tau_t)`` in float32, computed in place on a float32 copy; (..., K) -> (..., K)."""
    t = teacher_logits.detach().float()
    if t.data_ptr() == teacher_logits.data_ptr():
        t = t.clone()
    t.sub_(centering.get(t)).mul_(1.0 / temp)
    return torch.softmax(t, dim=-1)


class Centering(nn.Module):
    """A centre ``c`` (1, K) kept as an EMA of the teacher's batch-mean outputs (DINO's ``update_center``).

    ``c <- m * c + (1 - m) * mean_over_batch(teacher_logits)``, the mean taken over every process's batch with
    ``torch.distributed.all_reduce`` when a process group is initialised. The buffer goes into checkpoints. If
    ``dim`` is None it is created at the first update (shape (1, 0) until then) and a checkpoint loads into
    it.

    Args:
        dim: K, or None to size it at the first call.
        momentum: m (DINO: 0.9).
    """

    def __init__(self, dim: int | None = None, momentum: float = 0.9):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim or 0))

    @property
    def initialised(self) -> bool:
        return self.center.numel() > 0

    def get(self, like: torch.Tensor) -> torch.Tensor:
        """The centre (1, K) in float32 on ``like``'s device (zeros before the first update)."""
        if not self.initialised:
            self.center = torch.zeros(1, like.shape[-1], device=like.device)
        return self.center.to(device=like.device, dtype=torch.float32)

    @torch.no_grad()
    def update(self, teacher_logits: torch.Tensor) -> None:
        """EMA update from (M, K) teacher logits (M rows of this process; averaged over all processes)."""
        t = teacher_logits.detach().float().reshape(-1, teacher_logits.shape[-1])
        total = t.sum(dim=0, keepdim=True)
        count = torch.tensor([float(t.shape[0])], device=t.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            dist.all_reduce(count)
        if count.item() == 0:  # no rows on any process (every call must still reach the all-reduce)
            return
        batch_center = total / count.clamp(min=1.0)
        c = self.get(t)
        self.center = c * self.momentum + batch_center * (1 - self.momentum)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "center"
        if key in state_dict and state_dict[key].shape != self.center.shape and not self.initialised:
            self.center = torch.zeros_like(state_dict[key], device=self.center.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class TeacherTargets(nn.Module):
    """The teacher side of a term that distils through a head: tau_s, the tau_t schedule and a centre.

    The base of :class:`DINOLoss`, :class:`~glare_core.losses.PatchDistillationLoss` and
    :class:`~glare_core.losses.RegionLoss`; each keeps its own centre (the buffer ``centering.center``) and
    records DINO's collapse diagnostics of its last targets in ``diagnostics`` (:func:`collapse_stats`).

    Args:
        out_dim: K, the head's output width (None: sized at the first call).
        student_temp: tau_s (0.1).
        teacher_temp: final tau_t (0.07).
        warmup_teacher_temp: initial tau_t (0.04).
        warmup_teacher_temp_steps: length of the linear warm-up in optimiser steps.
        center_momentum: the centre's EMA momentum (0.9).
    """

    def __init__(
        self,
        out_dim: int | None = None,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_steps: int = 1000,
        center_momentum: float = 0.9,
    ):
        super().__init__()
        self.student_temp = student_temp
        self.tau_t = TeacherTemperature(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_steps)
        self.centering = Centering(out_dim, center_momentum)
        self.diagnostics: dict[str, float] = {}  # collapse_stats of the last call's teacher targets

    @property
    def center(self) -> torch.Tensor:
        return self.centering.center

    def temperature(self, step: int) -> float:
        """tau_t at ``step`` (:class:`~glare_core.schedules.TeacherTemperature`)."""
        return self.tau_t(step)

    def teacher_probs(self, teacher_logits: torch.Tensor, step: int) -> torch.Tensor:
        """softmax((t - c) / tau_t) in float32; (..., K) -> (..., K)."""
        return centred_softmax(teacher_logits, self.centering, self.temperature(step))


def temperatures(cfg: Any) -> dict[str, Any]:
    """The temperature settings of an :class:`~glare_core.objective.ObjectiveConfig` (``student_temp``,
    ``teacher_temp``, ``warmup_teacher_temp``, ``warmup_teacher_temp_steps``), as keyword arguments of
    :class:`TeacherTargets`: the three terms share them."""
    return {name: getattr(cfg, name) for name in TEMPERATURE_FIELDS}


class DINOLoss(TeacherTargets):
    """DINO's cross-view self-distillation loss (the GLARE global term L_G).

    Its arguments are those of :class:`TeacherTargets` (``out_dim``, ``student_temp``, ``teacher_temp``,
    ``warmup_teacher_temp``, ``warmup_teacher_temp_steps``, ``center_momentum``), DINO's values by default.
    """

    def forward(
        self,
        student_logits: Sequence[torch.Tensor],
        teacher_logits: Sequence[torch.Tensor],
        step: int,
        update_center: bool = True,
    ) -> torch.Tensor:
        """Cross-entropy between teacher and student views, over cross-view pairs only.

        Args:
            student_logits: one (B, K) tensor per student view; the first ``len(teacher_logits)`` are the
                global views in the same order as the teacher's, the rest local crops.
            teacher_logits: one (B, K) tensor per teacher (global) view.
            step: optimiser step, for the teacher temperature warm-up.
            update_center: update the centre with the teacher logits afterwards (DINO does, every step).

        Returns:
            The scalar loss (float32), averaged over pairs and over the batch.
        """
        if len(student_logits) < 2 and len(teacher_logits) < 2:
            raise ValueError("the DINO loss needs at least two views (cross-view pairs only)")
        probs = [self.teacher_probs(t, step) for t in teacher_logits]
        self.diagnostics = collapse_stats(torch.cat(probs))
        total, pairs = student_logits[0].new_zeros((), dtype=torch.float32), 0
        # float32 inside the training step's autocast region too, as DINO's loss (there autocast would run the
        # einsum's K-term dot products in bf16 / fp16)
        with torch.autocast(device_type=student_logits[0].device.type, enabled=False):
            log_ps = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in student_logits]
            for i, p in enumerate(probs):
                for j, log_p in enumerate(log_ps):
                    if i == j:
                        continue  # same view: skipped
                    total = total - torch.einsum("bk,bk->b", p, log_p).mean()
                    pairs += 1
        if update_center:
            self.centering.update(torch.cat([t.detach() for t in teacher_logits]))
        return total / pairs
