"""Patch-level augmentation: exactly the selected cells change, with the right ratio."""

import pytest
import torch

from glare_core.patch_augment import PATCH_AUG_KINDS, PatchAugConfig, cells_to_pixels, patch_augment


@pytest.mark.parametrize("kind", [k for k in PATCH_AUG_KINDS if k != "mask_token"])
@pytest.mark.parametrize("selection", ["blockwise", "random"])
def test_only_selected_cells_change(kind, selection):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 64, 80, generator=g)
    out, mask = patch_augment(x, 16, PatchAugConfig(kind=kind, selection=selection), g)
    assert mask.shape == (4, 20) and mask.dtype == torch.bool
    assert (mask.sum(1) == 6).all()  # round(0.3 * 20)
    pix = cells_to_pixels(mask, (4, 5), 16).expand_as(x)
    assert torch.equal(out[~pix], x[~pix])  # untouched cells are bit-identical
    changed = (out != x).view(4, 3, 4, 16, 5, 16).permute(0, 2, 4, 1, 3, 5).flatten(3).any(-1).flatten(1)
    assert not (changed & ~mask).any()
    assert changed[mask].float().mean() > 0.9  # the selected cells really are corrupted


def test_ratio_range_per_image():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(64, 3, 160, 160)
    _, mask = patch_augment(x, 16, PatchAugConfig(ratio=(0.1, 0.5)), g)
    counts = mask.sum(1)
    assert counts.min() >= 10 and counts.max() <= 50
    assert counts.float().std() > 3  # sampled per image
    assert abs(counts.float().mean().item() / 100 - 0.3) < 0.05


def test_blockwise_is_blocky():
    g = torch.Generator().manual_seed(0)
    _, mask = patch_augment(torch.rand(16, 3, 224, 224), 16, PatchAugConfig(selection="blockwise"), g)
    _, rnd = patch_augment(torch.rand(16, 3, 224, 224), 16, PatchAugConfig(selection="random"), g)

    def neighbours(m):  # fraction of selected cells whose right neighbour is selected too
        m = m.view(-1, 14, 14)
        return ((m[:, :, :-1] & m[:, :, 1:]).sum() / m[:, :, :-1].sum()).item()

    assert neighbours(mask) > neighbours(rnd) + 0.2


def test_mask_token_kind_leaves_pixels_and_bad_size_errors():
    x = torch.rand(2, 3, 32, 32)
    out, mask = patch_augment(x, 16, PatchAugConfig(kind="mask_token", ratio=0.5))
    assert torch.equal(out, x) and mask.sum() == 4
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patch_augment(torch.rand(1, 3, 30, 32), 16)
    with pytest.raises(ValueError, match="kind"):
        PatchAugConfig(kind="cutout")
