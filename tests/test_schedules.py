"""Per-step schedules: endpoints, monotonicity, and the very values training and the probe used before they
were gathered in ``glare_core.schedules`` (frozen copies of the former formulas below)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from glare_core.config import preset
from glare_core.schedules import (
    TeacherTemperature,
    build_schedules,
    cosine_lr,
    cosine_schedule,
    momentum_schedule,
    teacher_temperature,
)


# ---------------------------------------------------------------------------- frozen former copies
def former_train_cosine(start, end, total_steps, warmup_steps=0, warmup_start=0.0):
    """``glare_core.train.cosine_schedule`` before the move (lr, weight decay and momentum of training)."""
    warmup_steps = min(max(0, int(warmup_steps)), total_steps)
    warm = np.linspace(warmup_start, start, warmup_steps, endpoint=False) if warmup_steps else np.array([])
    t = np.arange(total_steps - warmup_steps)
    span = max(1, len(t) - 1)
    return np.concatenate([warm, end + 0.5 * (start - end) * (1 + np.cos(np.pi * t / span))]).astype(
        np.float64
    )


def former_teacher_temperature(step, warmup_temp, temp, warmup_steps):
    """``glare_core.losses.global_consistency.teacher_temperature`` before the move."""
    if step >= warmup_steps:
        return float(temp)
    if warmup_steps <= 1:
        return float(warmup_temp)
    return float(warmup_temp + (temp - warmup_temp) * step / (warmup_steps - 1))


def former_probe_factor(step, total, warmup):
    """``glare_core.probe.cosine_lr`` before the move."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------------------- cosine with warm-up
def test_cosine_schedule_against_formula():
    total, warm = 20, 5
    s = cosine_schedule(1.0, 0.1, total, warmup_steps=warm)
    assert s.shape == (total,) and s.dtype == np.float64
    assert s[0] == 0.0 and s[warm - 1] == pytest.approx(0.8)
    for t in range(warm, total):
        k = (t - warm) / (total - warm - 1)
        assert s[t] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * k)))
    assert s[warm] == pytest.approx(1.0) and s[-1] == pytest.approx(0.1)
    assert np.all(np.diff(s[:warm]) > 0) and np.all(np.diff(s[warm:]) < 0)


@pytest.mark.parametrize("total", [1, 2, 6, 200, 1001])
@pytest.mark.parametrize("warm", [0, 1, 3, 10])
def test_cosine_schedule_equals_the_former_training_schedule(total, warm):
    for start, end, warmup_start in [(1e-3, 1e-6, 0.0), (0.04, 0.4, 0.0), (0.996, 1.0, 0.0), (1.0, 0.0, 0.5)]:
        new = cosine_schedule(start, end, total, warm, warmup_start)
        assert np.array_equal(new, former_train_cosine(start, end, total, warm, warmup_start))


def test_run_schedules_equal_the_former_ones():
    for name in ("smoke", "demo", "cpu", "paper"):
        cfg = preset(name)
        total = cfg.steps or 1000
        sched = build_schedules(cfg, total)
        warm = round(cfg.warmup_fraction * total)
        assert np.array_equal(sched["lr"], former_train_cosine(cfg.peak_lr(), cfg.min_lr, total, warm)), name
        assert np.array_equal(sched["wd"], former_train_cosine(cfg.weight_decay, cfg.weight_decay_end, total))
        expected = former_train_cosine(cfg.momentum_teacher, cfg.momentum_teacher_end, total)
        assert np.array_equal(sched["momentum"], expected), name


# ---------------------------------------------------------------------------- EMA momentum
def test_momentum_schedule_endpoints_and_rise():
    m = momentum_schedule(100)
    assert m.shape == (100,)
    assert m[0] == pytest.approx(0.996) and m[-1] == pytest.approx(1.0)
    assert np.all(np.diff(m) >= 0) and 0.996 < m[50] < 1.0
    assert momentum_schedule(1, 0.99)[0] == pytest.approx(0.99)  # a one-step run uses the base momentum
    assert np.array_equal(momentum_schedule(37, 0.99, 1.0), former_train_cosine(0.99, 1.0, 37))


def test_momentum_schedule_is_the_training_one_spaced_over_t_minus_1():
    """The plotted curve (formerly ``teacher.momentum_schedule``) spaced the cosine over T steps; the one
    training used, kept, spaces it over T - 1 so that the last step uses the final momentum."""
    T = 10
    m = momentum_schedule(T, 0.996, 1.0)
    expected = [1.0 - 0.004 * (math.cos(math.pi * k / (T - 1)) + 1) / 2 for k in range(T)]
    assert m == pytest.approx(expected, abs=1e-15)


# ---------------------------------------------------------------------------- teacher temperature
def test_teacher_temperature_warm_up():
    assert teacher_temperature(0, 0.04, 0.07, 11) == pytest.approx(0.04)
    assert teacher_temperature(5, 0.04, 0.07, 11) == pytest.approx(0.055)
    assert teacher_temperature(10, 0.04, 0.07, 11) == pytest.approx(0.07)
    assert teacher_temperature(500, 0.04, 0.07, 11) == 0.07
    assert teacher_temperature(0, 0.04, 0.07, 1) == 0.04 and teacher_temperature(0, 0.04, 0.07, 0) == 0.07
    taus = [teacher_temperature(k, 0.04, 0.07, 60) for k in range(100)]
    assert np.all(np.diff(taus) >= 0)
    assert np.allclose(taus[:60], np.linspace(0.04, 0.07, 60), rtol=0, atol=1e-15)  # DINO's np.linspace


def test_teacher_temperature_equals_the_former_one():
    for warm in (0, 1, 2, 60, 300):
        for step in range(0, 400, 7):
            assert teacher_temperature(step, 0.04, 0.07, warm) == former_teacher_temperature(
                step, 0.04, 0.07, warm
            )


def test_teacher_temperature_schedule_is_the_function_of_the_objective_settings():
    from glare_core.losses import DINOLoss, PatchDistillationLoss, RegionLoss
    from glare_core.neighbours.pipa.patch_consistency import build_pipa_local
    from glare_core.objective import ObjectiveConfig

    cfg = ObjectiveConfig(teacher_temp=0.06, warmup_teacher_temp=0.02, warmup_teacher_temp_steps=9)
    tau = TeacherTemperature.of(cfg)
    assert tau == TeacherTemperature(0.02, 0.06, 9)
    assert [tau(k) for k in range(12)] == [teacher_temperature(k, 0.02, 0.06, 9) for k in range(12)]
    kw = {"teacher_temp": 0.06, "warmup_teacher_temp": 0.02, "warmup_teacher_temp_steps": 9}
    for loss in (DINOLoss(**kw), PatchDistillationLoss(**kw), RegionLoss(**kw)):
        assert loss.tau_t == tau and loss.temperature(4) == tau(4)
    assert build_pipa_local(cfg).tau_t == tau  # PiPa's pseudo-labels follow the same schedule


# ---------------------------------------------------------------------------- the probe's factor
def test_probe_factor_endpoints_and_former_values():
    total, warm = 1000, 50
    f = [cosine_lr(s, total, warm) for s in range(total)]
    assert f[0] == pytest.approx(1 / warm) and f[warm - 1] == 1.0 and f[warm] == 1.0
    assert np.all(np.diff(f[:warm]) > 0) and np.all(np.diff(f[warm:]) < 0)
    assert 0 < f[-1] < 1e-4 and cosine_lr(total, total, warm) == 0.0
    for total, warm in [(1000, 50), (60, 5), (7, 0), (1, 0)]:
        assert [cosine_lr(s, total, warm) for s in range(total)] == [
            former_probe_factor(s, total, warm) for s in range(total)
        ]
