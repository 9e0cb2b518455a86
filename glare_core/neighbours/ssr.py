"""SSR's training-only regulariser: fuse a frozen foundation encoder into the trained features, train only.

Known (SSR, arXiv 2401.14686; ``glare-method.md`` section 5): a frozen SAM image encoder regularises a
segmentation model. Per backbone stage, a linear map brings SAM's tokens to the stage width and a
cross-attention block (queries = the stage's tokens, keys / values = SAM's tokens) produces a residual that is
added to the stage features; the decoder runs on these fused features with an extra segmentation loss during
training only. At test time only the normal branch runs, so inference costs nothing extra.

.. math::

    \\tilde F = F + \\mathrm{CrossAttn}\\big(q = \\mathrm{LN}(F),\\ k = v = \\mathrm{LN}(W T)\\big), \\qquad
    L = \\mathrm{CE}(\\mathrm{dec}(F), y) + \\lambda_{SSR}\\, \\mathrm{CE}(\\mathrm{dec}(\\tilde F), y)

with F (B, C, h, w) the trained features, T (B, C_f, h_f, w_f) the frozen encoder's tokens and W a linear map
C_f -> C. Design (this project's, :class:`SSRConfig`): the backbone being evaluated is frozen here, so the
*trained* features F are the light decoder's first block (its "stem",
:mod:`glare_core.neighbours.segmentation`), and the rest of the decoder runs on F and, during training, on F~
(one shared decoder, as in SSR); lambda_SSR = 1; 8 heads; pre-norm LayerNorms. Offline, the frozen DINOv2 base
(:func:`glare_core.weights.load_base`) stands in for SAM; :func:`load_sam_encoder` loads a real SAM ViT-B
image encoder through timm when its weights are on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class SSRConfig:
    """SSR's fusion branch.

    Attributes:
        weight: lambda_SSR, weight of the fused branch's segmentation loss (1.0, Design).
        num_heads: heads of the cross-attention (8, Design; must divide the decoder width).
    """

    weight: float = 1.0
    num_heads: int = 8


class SSRFusion(nn.Module):
    """Linear map of frozen tokens + cross-attention whose output is added to the trained features.

    Args:
        dim: C, the width of the trained features.
        frozen_dim: C_f, the width of the frozen encoder's tokens.
        num_heads: attention heads.

    Shapes:
        features (B, C, h, w), frozen (B, C_f, h_f, w_f) -> (B, C, h, w)
    """

    def __init__(self, dim: int, frozen_dim: int, num_heads: int = 8):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"SSR: num_heads={num_heads} must divide the feature width {dim}")
        self.proj = nn.Linear(frozen_dim, dim)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, features: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
        B, C, h, w = features.shape
        q = features.flatten(2).transpose(1, 2)  # (B, h*w, C)
        kv = self.norm_kv(self.proj(frozen.flatten(2).transpose(1, 2).to(features.dtype)))  # (B, N_f, C)
        out, _ = self.attn(self.norm_q(q), kv, kv, need_weights=False)
        return features + out.transpose(1, 2).reshape(B, C, h, w)


class SAMEncoder(nn.Module):
    """A frozen SAM image encoder (timm ``samvit_*``) that maps images in [0, 1] to its neck's feature map.

    Images are resized to the encoder's fixed input size (1024 for SAM) and normalised with ImageNet's mean
    and standard deviation (SAM's pixel_mean / pixel_std divided by 255).

    Shapes:
        (B, 3, H, W) in [0, 1] -> (B, 256, S / 16, S / 16) with S the encoder's input size.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        size = model.patch_embed.img_size
        self.img_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float(), size=self.img_size, mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        return self.model.forward_features(x)  # (B, C, h, w) after the neck


def load_sam_encoder(path: str | Path, arch: str = "samvit_base_patch16", **kwargs) -> SAMEncoder:
    """A frozen SAM image encoder from a local weight file.

    Args:
        path: SAM's official checkpoint (``sam_vit_b_01ec64.pth``, keys ``image_encoder.*``) or a timm
            state dict of ``arch``; timm's ``checkpoint_filter_fn`` converts the former.
        arch: timm architecture (``samvit_base_patch16``; ``samvit_large_patch16`` / ``samvit_huge_patch16``
            for the larger SAMs).
        **kwargs: passed to ``timm.create_model`` (e.g. ``img_size``; tests build a tiny stand-in).

    Raises:
        FileNotFoundError naming the path and how to get the weights; ValueError when the file does not fit
        the architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"SAM weights {path} not found. Fix: download SAM's ViT-B image encoder checkpoint "
            "(sam_vit_b_01ec64.pth from the segment-anything repository, or timm's "
            "samvit_base_patch16.sa1b) and pass its path; offline, use the frozen base "
            "(glare_core.weights.load_base()) as the stand-in instead."
        )
    try:
        model = timm.create_model(
            arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=0, **kwargs
        )
    except Exception as err:
        raise ValueError(
            f"{path}: could not be loaded as timm {arch!r} ({type(err).__name__}: {err}). Fix: pass a SAM "
            "image-encoder checkpoint that matches the architecture (ViT-B: samvit_base_patch16)."
        ) from err
    return SAMEncoder(model)
