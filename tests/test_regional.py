"""Regional term: windows, pooling, attention-guided sampling, and both correspondences."""

import pytest
import torch

from glare_core.losses import (
    RegionLoss,
    cross_attention_correspondence,
    geometric_correspondence,
    pool_regions,
    region_windows,
    sample_region_centres,
)
from glare_core.views import Crop


def test_windows_stay_inside_and_pool():
    grid = (5, 6)
    centres = torch.tensor([[0, 7, 29]])  # corner, interior, opposite corner
    w = region_windows(centres, grid, k=3)
    assert w.shape == (1, 3, 9)
    assert w[0, 0].tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14]
    assert w[0, 1].tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14]  # centre (1, 1): window from (0, 0)
    assert w[0, 2].tolist() == [15, 16, 17, 21, 22, 23, 27, 28, 29]
    tokens = torch.arange(30.0).view(1, 30, 1).expand(1, 30, 2)
    pooled = pool_regions(tokens, w)
    assert torch.allclose(pooled[0, 2], torch.full((2,), 22.0))
    with pytest.raises(ValueError, match="does not fit"):
        region_windows(centres, (2, 6), k=3)


def test_attention_guided_sampling_follows_the_mixture():
    N, trials = 8, 20000
    attn = torch.tensor([[0.5, 0.2, 0.1, 0.1, 0.05, 0.03, 0.01, 0.01]])
    g = torch.Generator().manual_seed(0)
    centres = sample_region_centres(attn.expand(trials, -1), (2, 4), num_regions=1, alpha=0.8, generator=g)
    freq = torch.bincount(centres.flatten(), minlength=N).float() / trials
    expected = 0.8 * attn[0] / attn.sum() + 0.2 / N
    assert (freq - expected).abs().max() < 0.015  # ~5 standard errors at 20k draws
    # uniform ablation ignores the attention
    uni = sample_region_centres(attn.expand(trials, -1), (2, 4), 1, uniform=True, generator=g)
    ufreq = torch.bincount(uni.flatten(), minlength=N).float() / trials
    assert (ufreq - 1 / N).abs().max() < 0.015
    # without replacement
    many = sample_region_centres(attn.expand(50, -1), (2, 4), num_regions=8, generator=g)
    assert (many.sort(1).values == torch.arange(8)).all()


def shifted_pair(B=2, h=8, w=8, D=64, dy=1, dx=2, seed=0):
    """View 2's tokens are view 1's shifted by (dy, dx) cells: view2[r, c] = view1[r + dy, c + dx]."""
    g = torch.Generator().manual_seed(seed)
    big = torch.nn.functional.normalize(torch.randn(B, h + dy, w + dx, D, generator=g), dim=-1)
    v1 = big[:, :h, :w].reshape(B, h * w, D)
    v2 = big[:, dy : dy + h, dx : dx + w].reshape(B, h * w, D)
    return v1, v2


def test_cross_attention_retrieves_the_shifted_location():
    h = w = 8
    dy, dx = 1, 2
    v1, v2 = shifted_pair(h=h, w=w, dy=dy, dx=dx)
    centres = torch.tensor([[3 * w + 4, 5 * w + 5], [2 * w + 3, 6 * w + 6]])  # interior centres in view 1
    windows = region_windows(centres, (h, w), 3)
    queries = pool_regions(v1, windows)
    retrieved, weights = cross_attention_correspondence(queries, v2, tau=0.1)
    assert weights.shape == (2, 2, h * w) and torch.allclose(weights.sum(-1), torch.ones(2, 2))
    # the same content sits in view 2 at (r - dy, c - dx)
    r, c = centres // w, centres % w
    expected_windows = region_windows((r - dy) * w + (c - dx), (h, w), 3)
    mass = weights.gather(2, expected_windows).sum(-1)
    assert (mass > 0.5).all()
    assert (
        torch.isin(weights.argmax(-1), expected_windows).all()
        or (weights.argmax(-1)[..., None] == expected_windows).any(-1).all()
    )
    target = pool_regions(v2, expected_windows)
    assert (torch.cosine_similarity(retrieved, target, dim=-1) > 0.8).all()


def test_geometric_correspondence_is_exact_for_cell_aligned_shifts():
    h = w = 8
    dy, dx = 1, 2
    v1, v2 = shifted_pair(B=1, h=h, w=w, dy=dy, dx=dx)
    # source image = the (h+dy) x (w+dx) cell grid; view 1 = its top-left h x w, view 2 = shifted by (dy, dx)
    H, W = h + dy, w + dx
    box1 = torch.tensor([[0.0, 0.0, w / W, h / H]])
    box2 = torch.tensor([[dx / W, dy / H, 1.0, 1.0]])
    no = torch.tensor([False])
    windows = region_windows(torch.tensor([[3 * w + 4, 6 * w + 6]]), (h, w), 3)
    retrieved, valid = geometric_correspondence(windows, (h, w), Crop(box1, no), Crop(box2, no), v2, (h, w))
    assert valid.all()
    assert torch.allclose(retrieved, pool_regions(v1, windows), atol=1e-5)
    # with view 2 mirrored, the mapping goes through the flip
    v2_flipped = v2.view(1, h, w, -1).flip(2).reshape(1, h * w, -1)
    yes = torch.tensor([True])
    retrieved_f, _ = geometric_correspondence(
        windows, (h, w), Crop(box1, no), Crop(box2, yes), v2_flipped, (h, w)
    )
    assert torch.allclose(retrieved_f, retrieved, atol=1e-5)


@pytest.mark.parametrize("kind", ["ce", "infonce", "cosine"])
def test_region_loss_kinds(kind):
    from glare_core.heads import DINOHead

    head = DINOHead(16, 32, 24, 8)
    s = torch.randn(2, 3, 16, requires_grad=True)
    t = torch.randn(2, 3, 16)
    loss = RegionLoss(kind)(s, t, torch.ones(2, 3, dtype=torch.bool), head, head, step=0)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and s.grad.abs().sum() > 0
    # invalid regions are left out
    only = RegionLoss(kind)(s, t, torch.tensor([[True, False, False], [False, False, False]]), head, head, 0)
    assert torch.isfinite(only)
