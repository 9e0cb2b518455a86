"""UniAdapter, vision-only: the only weights GLARE trains.

Known (GLARE abstract, Figure 1): only lightweight UniAdapter modules train; the backbone stays frozen.
Design (``glare-method.md`` section 2, following UniAdapter's ``models/adapter.py`` and ``models/vit.py``):
in every transformer block, parallel to the MLP and on the post-attention hidden state,

.. math::

    x \\leftarrow x + \\mathrm{attn}(\\mathrm{ln}_1(x)), \\qquad
    x \\leftarrow x + \\mathrm{mlp}(\\mathrm{ln}_2(x))
      + s \\cdot \\mathrm{up}(\\mathrm{relu}(\\mathrm{down}(\\mathrm{ln}_a(x))))

with the adapter's own LayerNorm ``ln_a``, ``down``: D -> r, ``up``: r -> D, scale s = 0.1 (fixed, or
learnable starting at 0.1), no dropout. ``up`` weights and all biases start at zero, so the adapted model
equals the base model exactly at step 0. UniAdapter's cross-modal parts (shared down-projection across
modalities, text and fusion up-projections, query residual) have nothing to share in a vision-only ViT and are
left out.

Parameters per block: ``2*D*r + r + 3*D`` (down weight and bias, up weight and bias, LayerNorm weight and
bias); ViT-S/16 with r = 64: 12 * (2*384*64 + 64 + 3*384) = 0.604 M.
"""

from __future__ import annotations

import torch
from torch import nn


class UniAdapter(nn.Module):
    """The bottleneck adapter ``s * up(relu(down(ln_a(x))))``.

    Args:
        dim: token width D.
        bottleneck: bottleneck width r (default 64).
        scale: initial scale s (default 0.1).
        learnable_scale: make s a trained scalar instead of a constant.

    Shapes:
        x: (B, N, D) -> (B, N, D)
    """

    def __init__(self, dim: int, bottleneck: int = 64, scale: float = 0.1, learnable_scale: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.up = nn.Linear(bottleneck, dim)
        if learnable_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform ``down`` weights (PyTorch's default); zero ``up`` weights and zero biases."""
        self.norm.reset_parameters()
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.act(self.down(self.norm(x))))


class AdaptedBlock(nn.Module):
    """A timm ViT block with a UniAdapter parallel to its MLP.

    The block's own submodules are moved over unchanged, so the state-dict keys of the base weights
    (``blocks.3.attn.qkv.weight`` ...) stay the same and the adapter adds ``blocks.3.adapter.*``.
    LayerScale (``ls1``, ``ls2``, DINOv2) and drop-path are kept where the block has them.
    """

    def __init__(self, block: nn.Module, adapter: UniAdapter):
        super().__init__()
        for name in ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"):
            setattr(self, name, getattr(block, name, None) or nn.Identity())
        self.adapter = adapter

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        attn_out = (
            self.attn(self.norm1(x)) if attn_mask is None else self.attn(self.norm1(x), attn_mask=attn_mask)
        )
        x = x + self.drop_path1(self.ls1(attn_out))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))) + self.adapter(x)
        return x


def add_uniadapters(
    vit: nn.Module,
    bottleneck: int = 64,
    scale: float = 0.1,
    learnable_scale: bool = False,
    first_block: int = 0,
) -> nn.Module:
    """Put a UniAdapter into every block of a timm VisionTransformer from ``first_block`` on, in place.

    Blocks before ``first_block`` stay plain (the frozen trunk of :mod:`glare_core.trunk`). Returns the same
    model. At initialisation its outputs equal the base model's exactly (the ``up`` projection and every
    bias start at zero).
    """
    blocks = vit.blocks
    for i, block in enumerate(blocks):
        if i < first_block:
            continue
        if isinstance(block, AdaptedBlock):
            raise ValueError(f"block {i} already has a UniAdapter")
        dim = block.norm1.normalized_shape[0]
        adapter = UniAdapter(dim, bottleneck, scale, learnable_scale)
        ref = next(block.parameters())
        blocks[i] = AdaptedBlock(block, adapter.to(device=ref.device, dtype=ref.dtype))
    return vit


def is_adapter_parameter(name: str) -> bool:
    """True for the parameters that belong to a UniAdapter (``blocks.{i}.adapter.*``)."""
    return ".adapter." in name or name.startswith("adapter.")
