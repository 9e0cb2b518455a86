"""Which weights train: UniAdapter (GLARE), LoRA, or full fine-tuning; and counting them.

``configure_tuning`` is the one switch the experiments flip to compare GLARE's adapter with its alternatives:

* ``"adapter"``: add a UniAdapter to every block, freeze everything else (GLARE's setting, Known);
* ``"lora"``: add LoRA to ``qkv``, ``proj``, ``fc1``, ``fc2`` of every block, freeze everything else;
* ``"full"``: every backbone weight trains (the full fine-tuning baseline);
* ``"frozen"``: nothing trains (the base model, and evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .lora import add_lora, is_lora_parameter
from .uniadapter import add_uniadapters, is_adapter_parameter

TUNING_MODES = ("adapter", "lora", "full", "frozen")


def configure_tuning(
    vit: nn.Module,
    mode: str = "adapter",
    rank: int = 64,
    adapter_scale: float = 0.1,
    learnable_scale: bool = False,
    lora_alpha: float | None = None,
    first_block: int = 0,
) -> nn.Module:
    """Add the modules of ``mode`` to a timm ViT and set ``requires_grad`` accordingly (in place).

    Args:
        vit: a timm ``VisionTransformer``.
        mode: one of ``adapter``, ``lora``, ``full``, ``frozen``.
        rank: adapter bottleneck r, or LoRA rank.
        adapter_scale: UniAdapter scale s.
        learnable_scale: train s as well.
        lora_alpha: LoRA alpha (default: equal to ``rank``, so the scaling is 1).
        first_block: blocks before this one get no tuning modules and stay frozen, and so does everything
            that runs before them (patch and position embeddings): the frozen trunk of
            :mod:`glare_core.trunk`. For ``"full"`` only the later blocks and the final norm train.
    """
    if mode not in TUNING_MODES:
        raise ValueError(f"unknown tuning mode {mode!r}; choose one of {TUNING_MODES}")
    if mode == "adapter":
        add_uniadapters(
            vit,
            bottleneck=rank,
            scale=adapter_scale,
            learnable_scale=learnable_scale,
            first_block=first_block,
        )
        freeze_all_but(vit, is_adapter_parameter)
    elif mode == "lora":
        add_lora(vit, rank=rank, alpha=lora_alpha, first_block=first_block)
        freeze_all_but(vit, is_lora_parameter)
    elif mode == "full" and first_block > 0:
        freeze_all_but(vit, lambda name: not _before_block(name, first_block))
    elif mode == "full":
        for p in vit.parameters():
            p.requires_grad_(True)
    else:
        freeze_all_but(vit, lambda name: False)
    return vit


def _before_block(name: str, first_block: int) -> bool:
    """True for a ViT parameter that acts before block ``first_block`` (embeddings, earlier blocks)."""
    if name.startswith("blocks."):
        return int(name.split(".")[1]) < first_block
    return not name.startswith(("norm.", "fc_norm.", "head."))


def freeze_all_but(model: nn.Module, trainable) -> None:
    """Set ``requires_grad`` to ``trainable(name)`` for every named parameter."""
    for name, p in model.named_parameters():
        p.requires_grad_(bool(trainable(name)))


def trainable_state_dict(model: nn.Module) -> dict:
    """The tensors that train (and nothing else), for small adapter-only exports."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in names}


@dataclass(frozen=True)
class ParameterCount:
    """Trainable and total parameter counts of a model."""

    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        share = 100 * self.fraction
        return f"{self.trainable / 1e6:.2f} M trainable of {self.total / 1e6:.2f} M ({share:.2f} %)"


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count trainable and total parameters (shared tensors once)."""
    seen: dict[int, nn.Parameter] = {}
    for p in model.parameters():
        seen[id(p)] = p
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return ParameterCount(trainable=trainable, total=total)
