"""LoRA: the low-rank alternative to UniAdapter, for comparisons.

LoRA (Hu et al., 2022, arXiv 2106.09685) adds a trained low-rank update to a frozen linear layer:

.. math::

    y = W x + b + \\frac{\\alpha}{r} B A x, \\qquad A \\in \\mathbb{R}^{r \\times d_{in}},\\;
    B \\in \\mathbb{R}^{d_{out} \\times r},\\; B = 0 \\text{ at initialisation.}

In GLARE's experiments it is applied, like the adapter, to every block of the ViT: the attention's ``qkv`` and
``proj`` and the MLP's ``fc1`` and ``fc2`` (Design choice, ``glare-method.md`` section 4).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LORA_TARGETS: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` with a low-rank update ``(alpha / r) * B A``.

    It subclasses ``nn.Linear`` so that the frozen weight keeps its key (``attn.qkv.weight``) and the low-rank
    factors add ``lora_a`` (r, in) and ``lora_b`` (out, r).

    Shapes:
        x: (..., in_features) -> (..., out_features)
    """

    def __init__(
        self, in_features: int, out_features: int, rank: int, alpha: float | None = None, bias: bool = True
    ):
        super().__init__(in_features, out_features, bias=bias)
        self.rank = rank
        self.scaling = (alpha if alpha is not None else rank) / rank
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, alpha: float | None = None) -> LoRALinear:
        """Wrap an existing layer, sharing its weight and bias tensors."""
        new = cls(linear.in_features, linear.out_features, rank, alpha, bias=linear.bias is not None)
        new = new.to(device=linear.weight.device, dtype=linear.weight.dtype)
        new.weight = linear.weight
        if linear.bias is not None:
            new.bias = linear.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scaling
        return F.linear(x, self.weight, self.bias) + update


def add_lora(
    vit: nn.Module,
    rank: int = 8,
    alpha: float | None = None,
    targets: tuple[str, ...] = LORA_TARGETS,
    first_block: int = 0,
):
    """Replace the target linear layers of every block from ``first_block`` on by :class:`LoRALinear`, in
    place (blocks before it stay plain: the frozen trunk of :mod:`glare_core.trunk`)."""
    for block in list(vit.blocks)[first_block:]:
        for parent in (block.attn, block.mlp):
            for name in targets:
                layer = getattr(parent, name, None)
                if isinstance(layer, nn.Linear) and not isinstance(layer, LoRALinear):
                    setattr(parent, name, LoRALinear.from_linear(layer, rank, alpha))
    return vit


def is_lora_parameter(name: str) -> bool:
    """True for the low-rank factors (``...lora_a`` / ``...lora_b``)."""
    return name.endswith(".lora_a") or name.endswith(".lora_b")
