"""The backbone wrapper: outputs, shapes, exact [CLS] attention, dynamic sizes, LayerScale."""

import pytest
import torch

from glare_core.backbone import Backbone, create_vit, resize_to_patch_multiple


def tiny_vit(**kw):
    torch.manual_seed(0)
    return create_vit("test_vit", **kw)


@pytest.mark.parametrize("size", [(224, 224), (160, 224), (96, 64)])
def test_shapes_for_any_size_divisible_by_patch(size):
    bb = Backbone(tiny_vit()).eval()
    out = bb(torch.rand(2, 3, *size), layers=[0, -1])
    h, w = size[0] // 16, size[1] // 16
    assert out.grid == (h, w)
    assert out.cls.shape == (2, 64)
    assert out.patches.shape == (2, h * w, 64)
    assert out.attn.shape == (2, h * w)
    assert sorted(out.intermediates) == [0, 5]
    assert out.intermediates[5].shape == (2, h * w, 64)
    assert torch.allclose(out.intermediates[5], out.patches)
    assert out.patch_map().shape == (2, 64, h, w)


def test_size_not_multiple_of_patch_is_an_error():
    bb = Backbone(tiny_vit())
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        bb(torch.rand(1, 3, 100, 96))


@pytest.mark.parametrize("init_values", [None, 1e-2])
def test_matches_timm_forward_features(init_values):
    kw = {"init_values": init_values} if init_values else {}
    bb = Backbone(tiny_vit(**kw)).eval()
    x = torch.rand(2, 3, 128, 96)
    with torch.no_grad():
        ours = bb(x)
        ref = bb.vit.forward_features((x - bb.mean) / bb.std)
    torch.testing.assert_close(ours.cls, ref[:, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.patches, ref[:, 1:], atol=1e-6, rtol=0)


def test_attention_equals_manual_softmax_from_last_block_qkv():
    """The returned map is the [CLS] row of softmax(q k^T / sqrt(d)) of the last block, averaged over heads,
    even though timm runs the block with fused attention."""
    bb = Backbone(tiny_vit(init_values=1e-2)).eval()
    assert bb.vit.blocks[-1].attn.fused_attn in (True, False)
    x = torch.rand(2, 3, 96, 128)
    captured = {}
    last = bb.vit.blocks[-1]
    handle = last.norm1.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    with torch.no_grad():
        out = bb(x)
    handle.remove()
    a = last.attn
    B, T, D = captured["x"].shape
    qkv = captured["x"] @ a.qkv.weight.T + a.qkv.bias
    q, k, _ = qkv.reshape(B, T, 3, a.num_heads, D // a.num_heads).permute(2, 0, 3, 1, 4)
    manual = torch.softmax(q @ k.transpose(-1, -2) / (D // a.num_heads) ** 0.5, dim=-1)  # (B, H, T, T)
    expected = manual[:, :, 0, 1:].mean(1)
    torch.testing.assert_close(out.attn, expected, atol=1e-6, rtol=1e-5)
    assert torch.all(out.attn.sum(-1) < 1)


def test_return_attn_false_and_hook_removed():
    bb = Backbone(tiny_vit()).eval()
    out = bb(torch.rand(1, 3, 64, 64), return_attn=False)
    assert out.attn is None
    assert not bb.vit.blocks[-1].attn.qkv._forward_hooks


def test_mask_token_replaces_masked_patch_embeddings():
    bb = Backbone(tiny_vit()).eval()
    x = torch.rand(1, 3, 64, 64)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    token = torch.zeros(64)
    with torch.no_grad():
        same = bb(x, token_mask=mask, mask_token=token)
        plain = bb(x)
        mask[0, 3] = True
        changed = bb(x, token_mask=mask, mask_token=token)
    torch.testing.assert_close(same.patches, plain.patches)
    assert not torch.allclose(changed.patches, plain.patches)
    with pytest.raises(ValueError, match="mask_token"):
        bb(x, token_mask=mask)


def test_pos_embed_antialias_switch_changes_resized_embedding_only():
    vit = tiny_vit()
    x = torch.rand(1, 3, 96, 96)  # 6x6 grid from the 10x10 table (test_vit is stored at 160 px): resized
    a = Backbone(vit, pos_embed_antialias=True).eval()
    b = Backbone(vit, pos_embed_antialias=False).eval()
    with torch.no_grad():
        assert not torch.allclose(a(x).patches, b(x).patches)
        y = torch.rand(1, 3, 160, 160)  # native grid: no resize, identical
        torch.testing.assert_close(a(y).patches, b(y).patches)


def test_resize_to_patch_multiple():
    y = resize_to_patch_multiple(torch.rand(2, 3, 360, 480), 14)
    assert y.shape[-2:] == (364, 476)
