"""A run's checkpoint: what it holds, how it is written and how a resumed run restores it.

Resuming is exact: a run stopped after step k and resumed gives, on CPU, bitwise the same weights as an
uninterrupted run, because the checkpoint holds every piece of state the next step reads:

=================  ========================================================================================
key                what
=================  ========================================================================================
``model``          every tensor of the student/teacher model except the frozen base: trained weights, the
                   EMA teacher's copies, heads, buffers (:func:`run_state_dict`)
``objective``      the objective's state (the centres of the three terms)
``optimizer``      AdamW's state and parameter groups
``scaler``         the fp16 ``GradScaler`` (None in bf16 and fp32)
``rng``            the random-number states of torch, numpy and Python, one per rank (:mod:`glare_core.rng`)
``step``           the steps done, which fixes the schedules and the data order
``total_steps``    the run's length; ``sampler``: the data order's state; ``trunk_bank``: the bank's SHA-256
``config``         the run's configuration
=================  ========================================================================================

It is written atomically (:func:`atomic_save`) and only when every trained tensor and gradient is finite
(:func:`glare_core.runs.check_finite_state`), so the last checkpoint is always a good one; it holds tensors
and plain data only and is read with :func:`glare_core.runs.load_checkpoint` (``weights_only=True``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from . import distributed as dist_utils
from . import runs
from .objective import GlareObjective
from .rng import rng_state, set_rng_state

if TYPE_CHECKING:
    from .train import Run


def save_checkpoint(path: Path, run: Run, position: dict[str, Any]) -> None:
    """Write ``checkpoint.pt`` atomically on rank 0 (every rank's RNG state is gathered into it).

    Args:
        path: the checkpoint file.
        run: the :class:`~glare_core.train.Run` after its last step.
        position: ``step`` (which fixes the schedules and the data order), ``total_steps``, ``sampler`` (the
            sampler's state) and, for a trunk run, ``trunk_bank``.

    Raises:
        NonFiniteError: a trained tensor or gradient is NaN, infinite or absurdly large (nothing is written).
    """
    runs.check_finite_state(
        _trained_tensors(run.model, run.objective, run.frozen), f"checkpoint at step {position['step']}"
    )
    rngs = dist_utils.gather_objects(rng_state(), run.info)
    if run.info.is_main:
        state = {
            **position,
            "model": run_state_dict(run.model, run.frozen),
            "objective": run.objective.state_dict(),
            "optimizer": _plain_numbers(run.optimizer.state_dict()),
            "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
            "rng": rngs,
            "config": run.cfg.to_dict(),
        }
        atomic_save(state, path)
    dist_utils.barrier(run.info)


def restore_checkpoint(run: Run, checkpoint: dict[str, Any]) -> None:
    """Load a checkpoint's model, objective, optimiser, scaler and this rank's random-number states into
    ``run`` (built by :func:`glare_core.train.build_run` with the recorded configuration)."""
    run.model.load_state_dict(checkpoint["model"], strict=False)
    if checkpoint.get("objective") is not None:
        run.objective.load_state_dict(checkpoint["objective"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint.get("scaler"):
        run.scaler.load_state_dict(checkpoint["scaler"])
    set_rng_state(checkpoint["rng"][min(run.info.rank, len(checkpoint["rng"]) - 1)])


def run_state_dict(model: nn.Module, frozen: set[int]) -> dict[str, torch.Tensor]:
    """Every tensor of the student/teacher model except the frozen base weights (found by storage pointer):
    trainable weights, the teacher's EMA copies, heads, buffers."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.data_ptr() not in frozen}


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`glare_core.runs.atomic_write`: the old file stays intact until the new
    one is complete, and a failed write leaves no partial file behind."""
    runs.atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def _trained_tensors(
    model: nn.Module, objective: GlareObjective, frozen: set[int]
) -> Iterator[tuple[str, torch.Tensor]]:
    """What a checkpoint saves, plus the gradients: trained weights and their gradients, the EMA teacher's
    copies and buffers (everything but the frozen base) and the objective's state (centres)."""
    for name, p in model.named_parameters():
        if p.requires_grad and p.grad is not None:
            yield f"{name}.grad", p.grad
    for name, t in model.state_dict().items():
        if t.data_ptr() not in frozen:
            yield name, t
    yield from objective.state_dict().items()


def _plain_numbers(obj: Any) -> Any:
    """``obj`` with numpy scalars (the schedules' learning rates in the optimiser's groups) as Python numbers,
    so the checkpoint holds tensors and plain data only."""
    if isinstance(obj, dict):
        return {k: _plain_numbers(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain_numbers(v) for v in obj)
    return obj.item() if isinstance(obj, np.generic) else obj
