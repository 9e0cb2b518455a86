"""Per-step schedules: every value that changes with the optimiser step and nothing else.

A schedule is a function of the step number only, so a resumed run needs to save none of them. Four are used:

=============================  ========================================================================
schedule                       used by
=============================  ========================================================================
:func:`cosine_schedule`        pre-training's learning rate (with warm-up) and weight decay
:func:`momentum_schedule`      the EMA teacher's momentum m (``StudentTeacher.update_teacher``)
:class:`TeacherTemperature`   the teachers' softmax temperature tau_t of the three GLARE terms (and PiPa's)
:func:`cosine_lr`              the segmentation probe's learning-rate factor (``torch`` ``LambdaLR``)
=============================  ========================================================================

:func:`build_schedules` gives a run's learning-rate, weight-decay and momentum arrays.

Design (``glare-method.md`` section 2, "Optimisation", after DINO's ``utils.cosine_scheduler`` and
``DINOLoss``): lr 5e-4 * B / 256 after a linear warm-up, cosine to 1e-6; weight decay cosine 0.04 -> 0.4;
momentum cosine 0.996 -> 1; tau_t linear 0.04 -> 0.07 over the first 30 % of the run, then constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .config import TrainConfig


def cosine_schedule(
    start: float, end: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """Per-step values: a linear warm-up from ``warmup_start`` towards ``start``, then a cosine to ``end``.

    With W = ``warmup_steps`` and T = ``total_steps``, the value at step t is::

        v(t) = warmup_start + (start - warmup_start) * t / W                     for 0 <= t < W
        v(t) = end + (start - end) * (1 + cos(pi * (t - W) / (T - W - 1))) / 2   for W <= t < T

    The warm-up stops one step short of ``start``; the cosine starts at ``start`` on step W and ends exactly
    at ``end`` on the last step (the end may lie above the start: weight decay and momentum rise). DINO's
    ``cosine_scheduler`` (``utils.py``), per step instead of per epoch x iteration.

    Returns:
        (total_steps,) float64 array; entry t is the value used at step t.
    """
    warmup_steps = min(max(0, int(warmup_steps)), total_steps)
    warm = np.linspace(warmup_start, start, warmup_steps, endpoint=False) if warmup_steps else np.array([])
    t = np.arange(total_steps - warmup_steps)
    span = max(1, len(t) - 1)
    cos = end + 0.5 * (start - end) * (1 + np.cos(np.pi * t / span))
    return np.concatenate([warm, cos]).astype(np.float64)


def momentum_schedule(total_steps: int, base: float = 0.996, final: float = 1.0) -> np.ndarray:
    """The EMA teacher's momentum at every step: a cosine from ``base`` up to ``final``, no warm-up.

    With T = ``total_steps``::

        m(t) = final - (final - base) * (1 + cos(pi * t / (T - 1))) / 2        for 0 <= t < T

    so m(0) = ``base`` on the first step and m(T - 1) = ``final`` on the last (DINO: 0.996 -> 1). The teacher
    update after step t is ``theta' <- m(t) theta' + (1 - m(t)) theta`` (:func:`cosine_schedule` without
    warm-up).

    Returns:
        (total_steps,) float64 array.
    """
    return cosine_schedule(base, final, total_steps)


def teacher_temperature(step: int, warmup_temp: float, temp: float, warmup_steps: int) -> float:
    """The teacher's softmax temperature tau_t at ``step``: DINO's linear warm-up, then constant.

    With W = ``warmup_steps``::

        tau_t(t) = warmup_temp + (temp - warmup_temp) * t / (W - 1)     for 0 <= t < W
        tau_t(t) = temp                                                 for t >= W

    that is ``np.linspace(warmup_temp, temp, W)[step]`` during the warm-up (it reaches ``temp`` on step
    W - 1), then ``temp`` (DINO: 0.04 -> 0.07).
    """
    if step >= warmup_steps:
        return float(temp)
    if warmup_steps <= 1:
        return float(warmup_temp)
    return float(warmup_temp + (temp - warmup_temp) * step / (warmup_steps - 1))


@dataclass(frozen=True)
class TeacherTemperature:
    """The tau_t schedule as one value: ``tau_t(step)`` is :func:`teacher_temperature` of these settings.

    The teachers of the global, local and regional terms (and PiPa's pseudo-labels) share it; the objective
    builds it once from its config (:meth:`of`).

    Attributes:
        warmup_temp: tau_t on step 0 (DINO: 0.04).
        temp: tau_t after the warm-up (DINO: 0.07).
        warmup_steps: length of the linear warm-up in optimiser steps.
    """

    warmup_temp: float = 0.04
    temp: float = 0.07
    warmup_steps: int = 1000

    @classmethod
    def of(cls, cfg: Any) -> TeacherTemperature:
        """The schedule an ``ObjectiveConfig`` sets (``warmup_teacher_temp``, ``teacher_temp``,
        ``warmup_teacher_temp_steps``)."""
        return cls(cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.warmup_teacher_temp_steps)

    def __call__(self, step: int) -> float:
        return teacher_temperature(step, self.warmup_temp, self.temp, self.warmup_steps)


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """The segmentation probe's learning-rate factor at ``step`` (a ``LambdaLR`` multiplier of the peak lr).

    With W = ``warmup`` and T = ``total``::

        f(t) = (t + 1) / W                                          for 0 <= t < W
        f(t) = (1 + cos(pi * min(1, (t - W) / (T - W)))) / 2        for t >= W

    Unlike :func:`cosine_schedule` the warm-up reaches the peak on its last step (W - 1) and the cosine would
    reach 0 one step after the last (t = T); the probe results of the book and ``results/`` were measured with
    this factor.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_schedules(cfg: TrainConfig, total_steps: int) -> dict[str, np.ndarray]:
    """The learning-rate, weight-decay and EMA-momentum values of a run, one per step.

    Returns:
        ``{"lr", "wd", "momentum"}``, each a (total_steps,) float64 array.
    """
    warmup = round(cfg.warmup_fraction * total_steps)
    return {
        "lr": cosine_schedule(cfg.peak_lr(), cfg.min_lr, total_steps, warmup),
        "wd": cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, total_steps),
        "momentum": momentum_schedule(total_steps, cfg.momentum_teacher, cfg.momentum_teacher_end),
    }
