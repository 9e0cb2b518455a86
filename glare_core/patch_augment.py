"""(L) Patch-level augmentation: corrupt a fraction of the student's patch cells.

Known (GLARE abstract): patch-level augmentations encourage local consistency; patch blurring is one of the
strategies compared. Design (``glare-method.md`` section 2, "(L)", after iBOT's masked image modelling):

* **selection** of a fraction of the h x w patch cells per image: ``ratio`` 0.3 (iBOT's ``pred_ratio``) or a
  range such as (0.1, 0.5) sampled per image; ``"blockwise"`` (BEiT/iBOT block masking: random rectangles of
  at least 4 cells with aspect ratio in [0.3, 1/0.3], then topped up with random cells so that exactly
  round(ratio * N) cells are selected) or ``"random"`` (a uniform random subset);
* **corruption** of the selected cells only: ``"blur"`` (default: blur the whole image once with sigma in
  [0.1, 2] and paste the blurred pixels into the selected cells), ``"mask_mean"`` (the image's mean colour),
  ``"mask_token"`` (pixels untouched; the backbone replaces the patch embeddings by a learned mask token,
  ``Backbone.forward(token_mask=..., mask_token=...)``, as iBOT does), ``"noise"`` (additive Gaussian noise)
  or ``"jitter"`` (colour jitter of the whole image, pasted).

Unselected cells are bit-identical to the input. Everything is batched (no Python loop over images); the
blockwise selection loops over a few rounds of block proposals, each proposal drawn for the whole batch at
once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .views import _rand, _uniform, color_jitter, gaussian_blur

PATCH_AUG_KINDS = ("blur", "mask_mean", "mask_token", "noise", "jitter")
SELECTIONS = ("blockwise", "random")


@dataclass
class PatchAugConfig:
    """Patch-level augmentation of the student's views (the local term's input).

    Attributes:
        kind: corruption: ``"blur"`` (default), ``"mask_mean"``, ``"mask_token"``, ``"noise"`` or
            ``"jitter"``.
        ratio: fraction of cells to corrupt: a float (0.3, iBOT) or a (low, high) range sampled per image.
        selection: ``"blockwise"`` (iBOT's block masking, default) or ``"random"``.
        blur_sigma: sigma range of the blur in pixels (0.1, 2.0).
        noise_std: standard deviation of the Gaussian noise, in [0, 1] pixel units (0.2).
        jitter: brightness, contrast, saturation, hue strengths of the ``"jitter"`` kind (0.4, 0.4, 0.2, 0.1).
        min_block: smallest block in cells (4, iBOT's ``min_num_patches``).
        block_aspect: smallest block aspect ratio (0.3; the largest is its inverse).
        block_rounds: rounds of batched block proposals before the random top-up (30).
    """

    kind: str = "blur"
    ratio: float | tuple[float, float] = 0.3
    selection: str = "blockwise"
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    noise_std: float = 0.2
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    min_block: int = 4
    block_aspect: float = 0.3
    block_rounds: int = 30

    def __post_init__(self):
        if self.kind not in PATCH_AUG_KINDS:
            raise ValueError(f"PatchAugConfig.kind={self.kind!r}; choose one of {PATCH_AUG_KINDS}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"PatchAugConfig.selection={self.selection!r}; choose one of {SELECTIONS}")


def sample_counts(batch: int, num_cells: int, ratio, generator=None) -> torch.Tensor:
    """(B,) number of cells to select per image: round(ratio * N), the ratio fixed or uniform in a range."""
    if isinstance(ratio, int | float):
        r = torch.full((batch,), float(ratio))
    else:
        r = ratio[0] + (ratio[1] - ratio[0]) * _rand(batch, generator).cpu()
    return (r * num_cells).round().long().clamp(0, num_cells)


def random_selection(
    counts: torch.Tensor, num_cells: int, generator=None, exclude: torch.Tensor | None = None
):
    """(B, N) bool with exactly ``counts[b]`` random True cells per row, chosen outside ``exclude``."""
    scores = _rand((counts.shape[0], num_cells), generator).to(counts.device)
    if exclude is not None:
        scores = scores.masked_fill(exclude, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    return rank < counts[:, None]


def blockwise_selection(
    grid: tuple[int, int], counts: torch.Tensor, cfg: PatchAugConfig, generator=None
) -> torch.Tensor:
    """iBOT/BEiT block masking for a whole batch, exact counts.

    Each round proposes one block per image (area uniform in [min_block, remaining], log-uniform aspect ratio,
    random position); it is accepted where it adds at least one new cell and no more than the image still
    needs (BEiT's rule). Cells still missing after ``block_rounds`` rounds are added uniformly at random.

    Args:
        grid: (h, w) patch grid.
        counts: (B,) cells to select per image.

    Returns:
        (B, h * w) bool.
    """
    h, w = grid
    B = counts.shape[0]
    mask = torch.zeros(B, h, w, dtype=torch.bool)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    lo, hi = math.log(cfg.block_aspect), math.log(1 / cfg.block_aspect)
    for _ in range(cfg.block_rounds):
        remaining = counts - mask.flatten(1).sum(1)
        if not bool((remaining > 0).any()):
            break
        u = _rand((B, 4), generator).cpu()
        area = cfg.min_block + u[:, 0] * (remaining.float() - cfg.min_block).clamp(min=0)
        aspect = torch.exp(lo + (hi - lo) * u[:, 1])
        bh = torch.sqrt(area * aspect).round().long().clamp(1, h)
        bw = torch.sqrt(area / aspect).round().long().clamp(1, w)
        top = (u[:, 2] * (h - bh + 1)).floor().long()
        left = (u[:, 3] * (w - bw + 1)).floor().long()
        block = (
            (rows >= top.view(B, 1, 1))
            & (rows < (top + bh).view(B, 1, 1))
            & (cols >= left.view(B, 1, 1))
            & (cols < (left + bw).view(B, 1, 1))
        )
        new = (block & ~mask).flatten(1).sum(1)
        accept = (new > 0) & (new <= remaining)
        mask = mask | (block & accept.view(B, 1, 1))
    mask = mask.flatten(1)
    missing = counts - mask.sum(1)
    return mask | random_selection(missing, h * w, generator, exclude=mask)


def select_cells(
    batch: int, grid: tuple[int, int], cfg: PatchAugConfig, generator=None, device=None
) -> torch.Tensor:
    """(B, N) bool: the cells to corrupt, with the configured ratio and selection rule."""
    counts = sample_counts(batch, grid[0] * grid[1], cfg.ratio, generator)
    if cfg.selection == "random":
        mask = random_selection(counts, grid[0] * grid[1], generator)
    else:
        mask = blockwise_selection(grid, counts, cfg, generator)
    return mask.to(device)


def cells_to_pixels(mask: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(B, N) cell mask -> (B, 1, h * p, w * p) pixel mask."""
    h, w = grid
    m = mask.view(-1, 1, h, w)
    return m.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


def corrupt(
    images: torch.Tensor, pixel_mask: torch.Tensor, cfg: PatchAugConfig, generator=None
) -> torch.Tensor:
    """Replace the pixels under ``pixel_mask`` (B, 1, H, W) with the configured corruption of the image."""
    B, dev = images.shape[0], images.device
    if cfg.kind == "mask_token":
        return images
    if cfg.kind == "blur":
        sigma = _uniform(B, cfg.blur_sigma[0], cfg.blur_sigma[1], generator, dev)
        source = gaussian_blur(images, sigma)
    elif cfg.kind == "mask_mean":
        source = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    elif cfg.kind == "noise":
        device = generator.device if generator is not None else "cpu"
        noise = torch.randn(images.shape, generator=generator, device=device).to(dev, images.dtype)
        source = (images + cfg.noise_std * noise).clamp(0, 1)
    else:  # jitter
        b, c, s, hue = cfg.jitter
        factors = [_uniform(B, max(0.0, 1 - f), 1 + f, generator, dev) for f in (b, c, s)]
        source = color_jitter(images, *factors, _uniform(B, -hue, hue, generator, dev))
    return torch.where(pixel_mask, source.to(images.dtype), images)


def patch_augment(
    images: torch.Tensor,
    patch_size: int,
    cfg: PatchAugConfig | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a fraction of the patch cells of every image.

    Args:
        images: (B, 3, H, W) in [0, 1]; H and W multiples of ``patch_size``.
        patch_size: the backbone's patch size p.
        cfg: settings (default :class:`PatchAugConfig`: blur 30 % of the cells, blockwise).
        generator: optional ``torch.Generator`` for reproducibility.

    Returns:
        images_aug (B, 3, H, W) (the input itself for ``"mask_token"``) and mask (B, N) bool, N = (H/p)(W/p),
        True exactly at the corrupted cells (for ``"mask_token"``: the cells to replace by the mask token).
    """
    cfg = cfg or PatchAugConfig()
    B, _, H, W = images.shape
    if H % patch_size or W % patch_size:
        raise ValueError(
            f"patch_augment: image size {H}x{W} is not a multiple of the patch size {patch_size}"
        )
    grid = (H // patch_size, W // patch_size)
    mask = select_cells(B, grid, cfg, generator, images.device)
    out = corrupt(images, cells_to_pixels(mask, grid, patch_size), cfg, generator)
    return out, mask
