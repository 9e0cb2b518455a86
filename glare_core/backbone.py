"""The backbone: a timm Vision Transformer and the three things GLARE reads from it.

For every view GLARE needs (``glare-method.md`` section 2, "Backbone"):

* the [CLS] token after the final norm, ``cls`` (B, D): the global (G) term's input;
* the patch tokens after the final norm, ``patches`` (B, N, D) with N = h * w: the local (L) and regional (R)
  terms' input, and the segmentation probe's features;
* the last block's [CLS] -> patch attention averaged over heads, ``attn`` (B, N): where the regional term
  samples.

timm computes attention with a fused kernel (``scaled_dot_product_attention``) that never materialises the
attention matrix. :class:`Backbone` therefore captures the last block's ``qkv`` projection with a forward hook
and recomputes only the [CLS] row, ``softmax(q_cls k^T / sqrt(d))``, which is exact and costs one (B, H, 1, N)
product.

Images enter in [0, 1] (B, 3, H, W); the backbone normalises them with its base's mean and standard deviation.
H and W must be multiples of the patch size; the position embedding is resized to the grid
(``dynamic_img_size``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import nn

#: The architectures the book and the tests use: name -> timm model name.
ARCHITECTURES = {
    "vit_small_patch16_224": "vit_small_patch16_224",
    "vit_small_patch14_dinov2": "vit_small_patch14_dinov2",
    "vit_base_patch16_224": "vit_base_patch16_224",
    "vit_base_patch14_dinov2": "vit_base_patch14_dinov2",
    "test_vit": "test_vit",
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BackboneOutput:
    """What one forward pass returns.

    Attributes:
        cls: (B, D) [CLS] token after the final norm.
        patches: (B, N, D) patch tokens after the final norm, row-major over the (h, w) grid.
        grid: (h, w), the patch grid; N = h * w.
        attn: (B, N) last block's [CLS] -> patch attention, averaged over heads (None if not asked for).
            It is the row of the full softmax over all tokens (as in DINO's attention maps), so it sums to
            slightly less than 1 over the patches.
        intermediates: block index -> (B, N, D) patch tokens after that block, passed through the final norm.
    """

    cls: torch.Tensor
    patches: torch.Tensor
    grid: tuple[int, int]
    attn: torch.Tensor | None = None
    intermediates: dict[int, torch.Tensor] = field(default_factory=dict)

    def patch_map(self) -> torch.Tensor:
        """Patch tokens as a feature map (B, D, h, w)."""
        h, w = self.grid
        return self.patches.transpose(1, 2).reshape(self.patches.shape[0], -1, h, w)


class Backbone(nn.Module):
    """A timm ViT that returns [CLS], patch tokens, grid and [CLS] attention in one forward.

    Args:
        vit: a timm ``VisionTransformer`` (with or without adapters / LoRA).
        mean, std: the base model's input normalisation.
        pos_embed_antialias: resize the position embedding with antialiasing (timm's default, True) or
            without (Hugging Face's and the original DINOv2's behaviour, which the offline DINOv2 base was
            trained with).
    """

    def __init__(
        self,
        vit: nn.Module,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        pos_embed_antialias: bool = True,
    ):
        super().__init__()
        self.vit = vit
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.pos_embed_antialias = pos_embed_antialias
        self._qkv: torch.Tensor | None = None

    # ---------------------------------------------------------------- properties
    @property
    def patch_size(self) -> int:
        return int(self.vit.patch_embed.patch_size[0])

    @property
    def embed_dim(self) -> int:
        return int(self.vit.embed_dim)

    @property
    def num_prefix_tokens(self) -> int:
        """[CLS] plus register tokens."""
        return int(self.vit.num_prefix_tokens)

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    # ---------------------------------------------------------------- forward
    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Add the position embedding resized to the grid; (B, h, w, D) -> (B, P + N, D)."""
        vit = self.vit
        B, h, w, D = x.shape
        prefix = [t.expand(B, -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
        pos = resample_abs_pos_embed(
            vit.pos_embed,
            new_size=(h, w),
            old_size=vit.patch_embed.grid_size,
            num_prefix_tokens=0 if vit.no_embed_class else vit.num_prefix_tokens,
            antialias=self.pos_embed_antialias,
        )
        x = x.reshape(B, h * w, D)
        if vit.no_embed_class:
            return torch.cat(prefix + [x + pos], dim=1)
        return torch.cat(prefix + [x], dim=1) + pos

    def forward(
        self,
        images: torch.Tensor,
        return_attn: bool = True,
        layers: Sequence[int] | None = None,
        token_mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> BackboneOutput:
        """Run the ViT.

        Args:
            images: (B, 3, H, W) in [0, 1]; H and W multiples of the patch size.
            return_attn: compute the last block's [CLS] -> patch attention.
            layers: block indices (0-based, negative counts from the end) whose patch tokens to return too.
            token_mask: optional (B, N) or (B, h, w) bool; where True, the patch embedding is replaced by
                ``mask_token`` (D,) before the position embedding is added (iBOT's learned mask token).
            mask_token: (D,) the learned token used with ``token_mask``.

        Returns:
            :class:`BackboneOutput` with ``cls`` (B, D), ``patches`` (B, N, D), ``grid`` (h, w),
            ``attn`` (B, N).
        """
        x, grid = self.embed(images, token_mask, mask_token)
        return self.forward_tokens(x, grid, 0, return_attn, layers)

    def embed(
        self,
        images: torch.Tensor,
        token_mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalise, embed the patches, add the position embedding: the tokens that enter block 0.

        Args: as :meth:`forward`.

        Returns:
            tokens (B, P + N, D) (P prefix tokens: [CLS] and registers) and the grid (h, w).
        """
        vit = self.vit
        B, _, H, W = images.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"input size {H}x{W} is not a multiple of the patch size {p}")
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        x = vit.patch_embed(x)  # (B, h, w, D) with dynamic_img_size
        if x.ndim == 3:  # a ViT built without dynamic_img_size returns (B, N, D)
            x = x.reshape(B, H // p, W // p, -1)
        h, w = x.shape[1], x.shape[2]
        if token_mask is not None:
            if mask_token is None:
                raise ValueError("token_mask needs a mask_token")
            m = token_mask.reshape(B, h, w, 1).to(x.dtype)
            x = x * (1 - m) + mask_token.to(x.dtype) * m
        return vit.norm_pre(self._pos_embed(x)), (h, w)

    def trunk(self, images: torch.Tensor, stop: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """The tokens after blocks ``0 .. stop - 1``: (B, P + N, D), and the grid (h, w).

        With :meth:`forward_tokens` ``(..., start_block=stop)`` it splits :meth:`forward` in two:
        ``forward_tokens(*trunk(images, n), start_block=n)`` computes what ``forward(images)`` does
        (the cached frozen trunk of :mod:`glare_core.trunk` stores the first half).
        """
        x, grid = self.embed(images)
        for block in list(self.vit.blocks)[:stop]:
            x = block(x)
        return x, grid

    def forward_tokens(
        self,
        x: torch.Tensor,
        grid: tuple[int, int],
        start_block: int = 0,
        return_attn: bool = True,
        layers: Sequence[int] | None = None,
    ) -> BackboneOutput:
        """Blocks ``start_block .. depth - 1``, the final norm and the outputs, from the tokens entering
        block ``start_block``.

        Args:
            x: (B, P + N, D) tokens: from :meth:`embed` (``start_block=0``) or :meth:`trunk`.
            grid: (h, w) with h * w = N.
            start_block: the first block to run.
            return_attn, layers: as :meth:`forward` (blocks before ``start_block`` give no intermediates).

        Returns:
            :class:`BackboneOutput`, as :meth:`forward`.
        """
        vit = self.vit
        h, w = grid
        if x.shape[1] != self.num_prefix_tokens + h * w:
            raise ValueError(
                f"{x.shape[1]} tokens do not fit a {h}x{w} grid with {self.num_prefix_tokens} prefix tokens"
            )
        wanted = {i % self.depth for i in (layers or [])}
        intermediates = {}
        hook = vit.blocks[-1].attn.qkv.register_forward_hook(self._keep_qkv) if return_attn else None
        try:
            for i in range(start_block, self.depth):
                x = vit.blocks[i](x)
                if i in wanted:
                    intermediates[i] = vit.norm(x)[:, self.num_prefix_tokens :]
        finally:
            if hook is not None:
                hook.remove()
        x = vit.norm(x)
        attn = self._cls_attention(self._qkv, h * w) if return_attn else None
        self._qkv = None
        return BackboneOutput(
            cls=x[:, 0],
            patches=x[:, self.num_prefix_tokens :],
            grid=(h, w),
            attn=attn,
            intermediates=intermediates,
        )

    def _keep_qkv(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        self._qkv = output

    def _cls_attention(self, qkv: torch.Tensor, num_patches: int) -> torch.Tensor:
        """[CLS] row of the last block's attention from its qkv output (B, T, 3 * H * d) -> (B, N)."""
        attn_mod = self.vit.blocks[-1].attn
        B, T, _ = qkv.shape
        heads, head_dim = attn_mod.num_heads, attn_mod.head_dim
        q, k, _ = qkv.reshape(B, T, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, T, d)
        q, k = attn_mod.q_norm(q), attn_mod.k_norm(k)
        logits = (q[:, :, :1].float() * head_dim**-0.5) @ k.float().transpose(-2, -1)  # (B, H, 1, T)
        attn = logits.softmax(dim=-1)[:, :, 0, T - num_patches :]  # (B, H, N)
        return attn.mean(dim=1)


def create_vit(arch: str = "vit_small_patch16_224", img_size: int | None = None, **kwargs) -> nn.Module:
    """A timm ViT with random weights and ``dynamic_img_size=True``.

    Pretrained weights come from :mod:`glare_core.weights`.

    Args:
        arch: a key of :data:`ARCHITECTURES` or any timm ViT name.
        img_size: the size the position embedding is stored at (default: the architecture's own).
    """
    name = ARCHITECTURES.get(arch, arch)
    kwargs.setdefault("num_classes", 0)
    kwargs.setdefault("dynamic_img_size", True)
    if img_size is not None:
        kwargs["img_size"] = img_size
    return timm.create_model(name, pretrained=False, **kwargs)


def create_backbone(arch: str = "test_vit", **kwargs) -> Backbone:
    """A :class:`Backbone` around a randomly initialised timm ViT (for tests and the synthetic smoke runs)."""
    return Backbone(create_vit(arch, **kwargs))


def resize_to_patch_multiple(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Bilinearly resize (B, 3, H, W) so that H and W are the nearest multiples of ``patch``."""
    H, W = images.shape[-2:]
    h, w = max(patch, round(H / patch) * patch), max(patch, round(W / patch) * patch)
    if (h, w) == (H, W):
        return images
    return F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
