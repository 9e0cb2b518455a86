"""The DINO head and the global (G) and local (L) losses against independent reference formulas."""

import math

import pytest
import torch

from glare_core.heads import DINOHead, extract_head_state_dict, head_from_state_dict
from glare_core.losses import DINOLoss, PatchDistillationLoss, teacher_temperature


def reference_dino(student, teacher, center, t_temp, s_temp=0.1):
    """From DINO's paper: mean over pairs (i teacher, j student, i != j) of H(P_t^i, P_s^j)."""
    total, n = 0.0, 0
    student, teacher, center = [s.double() for s in student], [t.double() for t in teacher], center.double()
    for i, t in enumerate(teacher):
        pt = torch.exp((t - center) / t_temp)
        pt = pt / pt.sum(-1, keepdim=True)
        for j, s in enumerate(student):
            if i == j:
                continue
            log_ps = s / s_temp - torch.logsumexp(s / s_temp, dim=-1, keepdim=True)
            total = total + (-(pt * log_ps).sum(-1)).mean()
            n += 1
    return total / n


def test_teacher_temperature_schedule():
    assert teacher_temperature(0, 0.04, 0.07, 11) == pytest.approx(0.04)
    assert teacher_temperature(5, 0.04, 0.07, 11) == pytest.approx(0.055)
    assert teacher_temperature(10, 0.04, 0.07, 11) == pytest.approx(0.07)
    assert teacher_temperature(500, 0.04, 0.07, 11) == pytest.approx(0.07)


@pytest.mark.parametrize("step", [0, 3, 100])
def test_dino_loss_matches_reference_with_local_crops(step):
    g = torch.Generator().manual_seed(0)
    K, B = 32, 5
    student = [torch.randn(B, K, generator=g) for _ in range(4)]  # 2 global + 2 local
    teacher = [torch.randn(B, K, generator=g) for _ in range(2)]
    loss_fn = DINOLoss(K, warmup_teacher_temp_steps=7)
    center = torch.randn(1, K, generator=g)
    loss_fn.centering.center.copy_(center)
    got = loss_fn(student, teacher, step=step, update_center=False)
    t_temp = 0.04 + 0.03 * min(step, 6) / 6
    assert got.item() == pytest.approx(reference_dino(student, teacher, center, t_temp).item(), rel=1e-5)


def test_losses_stay_float32_inside_a_bf16_autocast_region():
    """The training step runs under bf16 autocast; there ``einsum`` would compute the K-term dot products in
    bf16, rounding a loss near ln K = 8.3 to a step of 1/16. Values and gradients must be the float32 ones."""
    from glare_core.losses.global_consistency import soft_cross_entropy

    g = torch.Generator().manual_seed(0)
    K, B = 4096, 16
    student = [torch.randn(B, K, generator=g).mul(0.05).requires_grad_() for _ in range(2)]
    teacher = [torch.randn(B, K, generator=g).mul(0.05) for _ in range(2)]
    probs = torch.softmax(torch.randn(B, K, generator=g), dim=-1)

    def run(autocast):
        for s in student:
            s.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = DINOLoss(K)(student, teacher, step=100, update_center=False)
            ce = soft_cross_entropy(student[0], probs, 0.1)
        (loss + ce.mean()).backward()
        return loss.detach(), ce.detach(), torch.cat([s.grad for s in student])

    ref, ours = run(False), run(True)
    assert ours[0].dtype == ours[1].dtype == torch.float32
    assert ours[0].item() == pytest.approx(ref[0].item(), abs=1e-6)
    assert torch.allclose(ours[1], ref[1], atol=1e-5)
    assert torch.allclose(ours[2], ref[2], rtol=1e-5, atol=1e-9)


def test_dino_loss_pairs_are_cross_view_only():
    K = 8
    a, b = torch.randn(3, K), torch.randn(3, K)
    loss_fn = DINOLoss(K)
    # same-view pairs are skipped: with two views the loss is the mean of H(t1, s2) and H(t2, s1)
    two = loss_fn([a, b], [a, b], 0, update_center=False)
    ref = reference_dino([a, b], [a, b], torch.zeros(1, K), 0.04)
    assert two.item() == pytest.approx(ref.item(), rel=1e-5)


def test_center_update_is_ema_of_batch_mean():
    K = 6
    loss_fn = DINOLoss(K, center_momentum=0.9)
    t1, t2 = torch.randn(4, K), torch.randn(4, K)
    loss_fn([t1, t2], [t1, t2], 0)
    expected = 0.1 * torch.cat([t1, t2]).mean(0, keepdim=True)
    assert torch.allclose(loss_fn.center, expected, atol=1e-6)
    loss_fn([t1, t2], [t1, t2], 1)
    expected = 0.9 * expected + 0.1 * torch.cat([t1, t2]).mean(0, keepdim=True)
    assert torch.allclose(loss_fn.center, expected, atol=1e-6)


def test_lazy_center_loads_from_state_dict():
    src = DINOLoss(None)
    src([torch.randn(2, 5), torch.randn(2, 5)], [torch.randn(2, 5), torch.randn(2, 5)], 0)
    dst = DINOLoss(None)
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst.center, src.center)


def test_patch_loss_uses_only_masked_positions():
    g = torch.Generator().manual_seed(1)
    B, N, K = 3, 10, 16
    s, t = torch.randn(B, N, K, generator=g), torch.randn(B, N, K, generator=g)
    mask = torch.rand(B, N, generator=g) < 0.4
    mask[:, 0] = True
    loss_fn = PatchDistillationLoss("ce", K)
    ref = loss_fn.dense(s, t, mask, step=0)
    s2, t2 = s.clone(), t.clone()
    s2[~mask] = torch.randn(int((~mask).sum()), K)
    t2[~mask] = 100.0
    assert loss_fn.dense(s2, t2, mask, step=0).item() == pytest.approx(ref.item(), rel=1e-6)
    s2[mask] *= 2.0
    assert loss_fn.dense(s2, t2, mask, step=0).item() != pytest.approx(ref.item(), rel=1e-6)
    # iBOT reduction: mean over each image's masked cells, then over images
    pt = torch.softmax(t / 0.04, -1)
    ce = -(pt * torch.log_softmax(s / 0.1, -1)).sum(-1)
    expected = ((ce * mask).sum(1) / mask.sum(1)).mean()
    assert ref.item() == pytest.approx(expected.item(), rel=1e-5)


def test_dino_head_shapes_and_checkpoint_loading():
    head = DINOHead(24, out_dim=50, hidden_dim=32, bottleneck_dim=8)
    assert head(torch.randn(7, 24)).shape == (7, 50)
    assert not head.last_layer.weight_g.requires_grad  # norm_last_layer
    # an official-style full checkpoint: {"teacher": {"module.head.*": ...}}
    ckpt = {"teacher": {f"module.head.{k}": v.clone() for k, v in head.state_dict().items()}, "epoch": 3}
    ckpt["teacher"]["module.backbone.cls_token"] = torch.zeros(1, 1, 24)
    loaded = head_from_state_dict(extract_head_state_dict(ckpt), 24)
    x = torch.randn(3, 24)
    assert torch.allclose(loaded(x), head(x))
    # the weight-normalised last layer: rows of W have norm g = 1
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(50), atol=1e-5)
    with pytest.raises(KeyError, match="no DINO head"):
        extract_head_state_dict({"backbone.x": torch.zeros(1)})
    assert math.isfinite(float(loaded(x).sum().detach()))


def test_weight_norm_paths_agree_and_cache_follows_updates():
    head = DINOHead(12, out_dim=20, hidden_dim=16, bottleneck_dim=8, norm_last_layer=False)
    x = torch.randn(5, 12)
    trained = head(x)  # output-scaling path (weights require grad)
    with torch.no_grad():
        cached = head(x)  # cached-weight path
    assert torch.allclose(trained, cached, atol=1e-5)
    reference = torch.nn.functional.linear(
        torch.nn.functional.normalize(head.mlp(x), dim=-1), head.last_layer.weight.detach()
    )
    assert torch.allclose(cached, reference, atol=1e-5)
    with torch.no_grad():
        head.last_layer.weight_v.mul_(0.5).add_(1.0)  # an in-place (optimiser / EMA) update
        updated = head(x)
    assert not torch.allclose(updated, cached)
    assert torch.allclose(updated, head(x).detach(), atol=1e-5)  # the cache was rebuilt


def test_collapse_stats_tell_the_two_collapses_apart():
    from glare_core.losses import collapse_stats

    K = 8
    uniform = collapse_stats(torch.full((4, K), 1 / K))
    assert uniform["entropy"] == pytest.approx(math.log(K)) and uniform["kl_uniform"] == pytest.approx(
        0, abs=1e-6
    )
    same = torch.zeros(4, K)
    same[:, 3] = 1  # every target on one prototype: the dominant-dimension collapse
    assert collapse_stats(same) == pytest.approx({"entropy": 0.0, "kl_uniform": math.log(K)}, abs=1e-5)
    spread = torch.eye(K)  # sharp targets on different prototypes: healthy
    assert collapse_stats(spread) == pytest.approx({"entropy": 0.0, "kl_uniform": 0.0}, abs=1e-5)


def test_dino_loss_records_the_diagnostics_of_its_targets():
    from glare_core.losses import collapse_stats

    torch.manual_seed(0)
    loss = DINOLoss(out_dim=16, warmup_teacher_temp_steps=0)
    teacher = [torch.randn(5, 16), torch.randn(5, 16)]
    loss([torch.randn(5, 16), torch.randn(5, 16)], teacher, step=0, update_center=False)
    probs = torch.cat([loss.teacher_probs(t, 0) for t in teacher])
    assert loss.diagnostics == pytest.approx(collapse_stats(probs))
