"""SSR's training-only fusion branch: the equation, absence at inference, SAM loading."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from glare_core.neighbours.segmentation import SegmentationModel, frozen_bn_stats
from glare_core.neighbours.ssr import SSRFusion, load_sam_encoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def reference_fusion(m: SSRFusion, feats: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    """F + out_proj(softmax(Q K^T / sqrt(d_h)) V) per head, written out from the module's weights."""
    B, C, h, w = feats.shape
    heads, dh = m.attn.num_heads, C // m.attn.num_heads
    q_in = F.layer_norm(feats.flatten(2).transpose(1, 2), (C,), m.norm_q.weight, m.norm_q.bias)
    kv = frozen.flatten(2).transpose(1, 2) @ m.proj.weight.t() + m.proj.bias
    kv = F.layer_norm(kv, (C,), m.norm_kv.weight, m.norm_kv.bias)
    wq, wk, wv = m.attn.in_proj_weight.chunk(3)
    bq, bk, bv = m.attn.in_proj_bias.chunk(3)
    q, k, v = q_in @ wq.t() + bq, kv @ wk.t() + bk, kv @ wv.t() + bv
    out = torch.zeros_like(q)
    for b in range(B):
        for i in range(heads):
            s = slice(i * dh, (i + 1) * dh)
            att = torch.softmax(q[b, :, s] @ k[b, :, s].t() / math.sqrt(dh), dim=-1)
            out[b, :, s] = att @ v[b, :, s]
    out = out @ m.attn.out_proj.weight.t() + m.attn.out_proj.bias
    return feats + out.transpose(1, 2).reshape(B, C, h, w)


def test_fusion_matches_a_written_out_cross_attention():
    torch.manual_seed(0)
    m = SSRFusion(dim=16, frozen_dim=6, num_heads=4)
    feats, frozen = torch.randn(2, 16, 3, 4), torch.randn(2, 6, 5, 2)  # frozen grid may differ
    assert torch.allclose(m(feats, frozen), reference_fusion(m, feats, frozen), atol=1e-5)
    with pytest.raises(ValueError, match="num_heads"):
        SSRFusion(dim=10, frozen_dim=6, num_heads=4)


def test_ssr_branch_is_absent_at_inference():
    torch.manual_seed(0)
    plain = SegmentationModel(12, 5, hidden=16).eval()
    torch.manual_seed(0)
    ssr = SegmentationModel(12, 5, hidden=16, terms=("ssr", "pixel_contrast", "patch_consistency")).eval()
    x = torch.randn(2, 12, 6, 8)
    assert torch.equal(plain(x), ssr(x))  # same seed, same decoder: the extra modules change nothing

    def flops(model):
        with FlopCounterMode(display=False) as counter:
            model(x)
        return counter.get_total_flops()

    assert flops(ssr) == flops(plain) > 0
    ssr(x).sum().backward()  # which parameters does the inference graph touch?
    used = {n for n, p in ssr.named_parameters() if p.grad is not None}
    assert used == {f"decoder.{n}" for n, _ in ssr.decoder.named_parameters()}
    assert ssr.ssr is not None and all(p.grad is None for p in ssr.ssr.parameters())


def test_training_branch_reaches_the_decoder_but_not_its_running_stats():
    torch.manual_seed(0)
    model = SegmentationModel(12, 5, hidden=16, terms=("ssr",), frozen_dim=7).train()
    x, frozen = torch.randn(2, 12, 6, 8), torch.randn(2, 7, 6, 8)
    feats = model.stem(x)
    stats = {n: b.clone() for n, b in model.decoder.named_buffers() if "running" in n}
    with frozen_bn_stats(model):
        fused_logits = model.classify(model.body(model.ssr(feats, frozen)))
    after = dict(model.decoder.named_buffers())
    assert len(stats) == 6 and all(torch.equal(b, after[n]) for n, b in stats.items())
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    model.body(feats)  # outside the context the running statistics move again
    assert not torch.equal(stats["net.5.running_mean"], model.decoder.net[5].running_mean)
    fused_logits.sum().backward()
    assert model.ssr.proj.weight.grad.abs().sum() > 0
    assert model.decoder.net[4].weight.grad.abs().sum() > 0  # the shared decoder learns from the fused branch


def tiny_sam_kwargs():
    return dict(
        img_size=64,
        embed_dim=32,
        depth=2,
        num_heads=2,
        neck_chans=16,
        global_attn_indexes=(1,),
        window_size=2,
    )


def test_load_sam_encoder_with_a_tiny_random_stand_in(tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model("samvit_base_patch16", pretrained=False, num_classes=0, **tiny_sam_kwargs())
    path = tmp_path / "tiny_sam.pth"
    torch.save(ref.state_dict(), path)
    enc = load_sam_encoder(path, **tiny_sam_kwargs())
    assert all(not p.requires_grad for p in enc.parameters())
    images = torch.rand(2, 3, 48, 80)
    out = enc(images)
    assert out.shape == (2, 16, 4, 4)  # the neck's channels on the 64 / 16 grid
    x = F.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False)
    x = (x - enc.mean) / enc.std
    assert torch.allclose(out, ref.eval().forward_features(x), atol=1e-5)  # the file's weights were loaded


def test_load_sam_encoder_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth.*Fix"):
        load_sam_encoder(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"something": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="bad.pth"):
        load_sam_encoder(bad, **tiny_sam_kwargs())
