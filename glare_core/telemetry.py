"""Run telemetry: did continual pre-training move the model, and how?

A null result is only informative when the run shows that the model moved. These instruments are measured on a
fixed batch of target images every ``TrainConfig.telemetry_every`` steps and written to ``metrics.jsonl`` and
the run's ``summary.json`` (whose copy the experiment runner keeps in each committed cell JSON):

* **adapter share per block**: ``||s * up(relu(down(ln_a(x))))|| / ||x||``, the norm of what each block's
  UniAdapter adds relative to the residual stream ``x`` it adds to (RMS over all tokens of the batch), for the
  student and for the EMA teacher (the model that is exported and evaluated). 0 at initialisation.
* **last-layer token change**: ``||T - B|| / ||B||`` for the last block's patch tokens ``T`` of the student
  and of the teacher against those of the base model ``B`` (measured before training, on the same images).
* **its non-affine share**: the part of that change that no affine map of the base tokens explains,
  ``min_{W, b} ||T - (B W + b)|| / ||T - B||`` (least squares over the tokens). A linear probe on top of a
  BatchNorm absorbs an affine change of the features, so only this share can change what the probe sees
  (1: nothing affine in the change; 0: an affine re-mapping the probe would undo).

The collapse diagnostics of the teacher targets (entropy, KL of the mean from uniform) are logged every step
by the objective itself (:func:`glare_core.losses.collapse_stats`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .backbone import Backbone
from .precision import Precision, autocast
from .uniadapter import AdaptedBlock


@dataclass
class TelemetryProbe:
    """The fixed batch the instruments are measured on and the base model's tokens on it.

    Attributes:
        images: (n, 3, S, S) target images in [0, 1].
        reference: (n, N, D) float32 last-block patch tokens of the base model on ``images``.
        precision: the run's precision (the frozen base may be stored in its autocast dtype).
    """

    images: torch.Tensor
    reference: torch.Tensor
    precision: Precision | str = "fp32"


@torch.no_grad()
def last_tokens(
    backbone: Backbone, images: torch.Tensor, precision: Precision | str = "fp32"
) -> torch.Tensor:
    """(n, 3, S, S) -> (n, N, D) last-block patch tokens as float32, in eval mode, in the run's autocast."""
    was_training = backbone.training
    backbone.eval()
    with autocast(images.device, precision):
        out = backbone(images.float(), return_attn=False).patches.float()
    backbone.train(was_training)
    return out


def make_probe(
    backbone: Backbone, images: torch.Tensor, precision: Precision | str = "fp32"
) -> TelemetryProbe:
    """The probe of a run: ``images`` and the tokens ``backbone`` (still the base model) gives them."""
    return TelemetryProbe(images, last_tokens(backbone, images, precision), precision)


@torch.no_grad()
def adapter_shares(
    backbone: Backbone, images: torch.Tensor, precision: Precision | str = "fp32"
) -> list[float | None]:
    """Per block, ``||adapter(x)|| / ||x||`` on ``images``; None for a block without a UniAdapter (a frozen
    trunk block, or every block of a LoRA or fully fine-tuned model), so entry i is block i."""
    blocks = list(backbone.vit.blocks)
    adapted = [i for i, b in enumerate(blocks) if isinstance(b, AdaptedBlock)]
    shares: list[float | None] = [None] * len(blocks)
    if not adapted:
        return shares

    def hook_for(i: int):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            shares[i] = float(output.float().norm() / inputs[0].float().norm().clamp_min(1e-12))

        return hook

    handles = [blocks[i].adapter.register_forward_hook(hook_for(i)) for i in adapted]
    try:
        last_tokens(backbone, images, precision)
    finally:
        for h in handles:
            h.remove()
    return shares


def token_change(reference: torch.Tensor, tokens: torch.Tensor) -> dict[str, float]:
    """Relative change of ``tokens`` from ``reference`` (both (n, N, D)) and its non-affine share.

    Returns:
        ``change``: ``||T - B|| / ||B||``; ``non_affine_share``: ``||T - (B W + b)|| / ||T - B||`` with the
        least-squares ``W`` (D, D) and ``b`` (D,) over all n N tokens (0 when nothing changed).
    """
    B = reference.reshape(-1, reference.shape[-1]).double()
    T = tokens.reshape(-1, tokens.shape[-1]).double()
    delta = (T - B).norm()
    if float(delta) == 0.0:
        return {"change": 0.0, "non_affine_share": 0.0}
    design = torch.cat([B, torch.ones(len(B), 1, dtype=B.dtype)], dim=1)  # (M, D + 1)
    coef = torch.linalg.lstsq(design, T).solution
    residual = (T - design @ coef).norm()
    return {"change": float(delta / B.norm()), "non_affine_share": float(residual / delta)}


def measure(model: nn.Module, probe: TelemetryProbe) -> dict[str, Any]:
    """Every instrument for the student and the teacher of a :class:`~glare_core.teacher.StudentTeacher`.

    Returns:
        ``{"student": {...}, "teacher": {...}}``, each with ``adapter_share`` (list per block, None where a
        block has no adapter),
        ``adapter_share_max``, ``token_change`` and ``token_non_affine_share``.
    """
    out: dict[str, Any] = {}
    for name in ("student", "teacher"):
        backbone = getattr(model, name)
        shares = adapter_shares(backbone, probe.images, probe.precision)
        measured = [x for x in shares if x is not None]
        change = token_change(probe.reference, last_tokens(backbone, probe.images, probe.precision))
        out[name] = {
            "adapter_share": shares,
            "adapter_share_max": max(measured) if measured else None,
            "token_change": change["change"],
            "token_non_affine_share": change["non_affine_share"],
        }
    return out


def flat(measured: dict[str, Any]) -> dict[str, Any]:
    """:func:`measure`'s result as flat ``metrics.jsonl`` keys (``teacher_token_change`` ...)."""
    return {f"{who}_{key}": value for who, d in measured.items() for key, value in d.items()}
