"""Student / EMA teacher: shared frozen tensors, EMA, what trains, adapter export."""

import pytest
import torch

from glare_core.backbone import create_backbone
from glare_core.heads import DINOHead, HeadConfig
from glare_core.teacher import StudentTeacher, StudentTeacherConfig, apply_adapter

SMALL_HEAD = HeadConfig(out_dim=64, hidden_dim=48, bottleneck_dim=16)


def frozen_backbone(seed=0):
    torch.manual_seed(seed)
    b = create_backbone("test_vit")
    b.requires_grad_(False)
    return b.eval()


def make(tuning="adapter", **kw):
    return StudentTeacher(
        frozen_backbone(), StudentTeacherConfig(tuning=tuning, rank=8, head=SMALL_HEAD, **kw)
    )


def test_frozen_tensors_are_shared_and_trained_ones_are_not():
    m = make()
    s, t = dict(m.student.named_parameters()), dict(m.teacher.named_parameters())
    assert s.keys() == t.keys()
    for name, p in s.items():
        if p.requires_grad:
            assert ".adapter." in name and t[name] is not p and not t[name].requires_grad
        else:
            assert t[name] is p
    assert m.teacher_head is not m.student_head  # a new head trains, with an EMA copy
    groups = m.param_groups()
    assert len(groups["adapter"]) == 6 * 6 and len(groups["head"]) > 0


def test_only_adapter_and_head_change_after_an_optimizer_step():
    m = make()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.AdamW([p for g in m.param_groups().values() for p in g], lr=1e-2)
    out = m([torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)])
    loss = sum(o.cls_logits.logsumexp(-1).mean() + o.patches.pow(2).mean() for o in out)
    loss.backward()
    for n, p in m.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
    opt.step()
    changed = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".adapter." in n or n.startswith("student_head.") for n in changed)


def test_ema_matches_manual_update():
    m = make()
    with torch.no_grad():
        for p in m.param_groups()["adapter"] + m.param_groups()["head"]:
            p.add_(torch.randn_like(p))
    t_before = {n: p.clone() for n, p in m.teacher.named_parameters()}
    h_before = {n: p.clone() for n, p in m.teacher_head.named_parameters()}
    m.update_teacher(0.9)
    for n, p in m.student.named_parameters():
        expected = 0.9 * t_before[n] + 0.1 * p if p.requires_grad else p
        assert torch.allclose(dict(m.teacher.named_parameters())[n], expected, atol=1e-6)
    for n, p in m.student_head.named_parameters():
        expected = 0.9 * h_before[n] + 0.1 * p if p.requires_grad else h_before[n]
        assert torch.allclose(dict(m.teacher_head.named_parameters())[n], expected, atol=1e-6)


def test_loaded_head_is_frozen_and_shared():
    head = DINOHead(64, 32, 48, 16)
    m = StudentTeacher(frozen_backbone(), StudentTeacherConfig(rank=8), head_state_dict=head.state_dict())
    assert m.teacher_head is m.student_head and m.param_groups()["head"] == []
    x = torch.randn(3, 64)
    assert torch.allclose(m.student_head(x), head(x))


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_other_tuning_modes(tuning):
    m = make(tuning)
    trained = [n for n, p in m.student.named_parameters() if p.requires_grad]
    if tuning == "lora":
        assert trained and all(n.endswith(("lora_a", "lora_b")) for n in trained)
        assert m.student.vit.blocks[0].attn.qkv.weight is m.teacher.vit.blocks[0].attn.qkv.weight
    else:
        assert len(trained) == len(list(m.student.parameters()))
    out = m.teacher_forward([torch.rand(1, 3, 32, 32)])
    assert out[0].attn.shape == (1, 4)


def test_student_equals_teacher_at_start_and_export_roundtrip(tmp_path):
    m = make()
    x = [torch.rand(2, 3, 32, 48)]
    s, t = m(x)[0], m.teacher_forward(x)[0]
    assert torch.allclose(s.patches, t.patches, atol=1e-5) and torch.allclose(
        s.cls_logits, t.cls_logits, atol=1e-5
    )
    with torch.no_grad():
        for p in m.param_groups()["adapter"]:
            p.add_(0.05 * torch.randn_like(p))
    m.update_teacher(0.0)  # teacher := student
    path = m.export_adapter(tmp_path / "a.safetensors")
    assert path.stat().st_size < 2_000_000
    fresh = apply_adapter(frozen_backbone(), path)
    assert torch.allclose(fresh(x[0]).patches, m.teacher(x[0]).patches, atol=1e-5)
    other = make()
    other.load_adapter(path)
    assert torch.allclose(other(x)[0].patches, m(x)[0].patches, atol=1e-5)
    with pytest.raises(ValueError, match="tuning"):
        make("lora").load_adapter(path)


def test_standardize_input_folds_an_affine_map_into_the_first_layer():
    torch.manual_seed(0)
    head = DINOHead(8, out_dim=16, hidden_dim=12, bottleneck_dim=4)
    x = torch.randn(5, 8) * 3 + 2
    mean, std = torch.randn(8), torch.rand(8) + 0.5
    expected = head((x - mean) / std)
    head.standardize_input_(mean, std)
    torch.testing.assert_close(head(x), expected, rtol=1e-5, atol=1e-5)


def test_data_init_spreads_the_teachers_outputs_and_keeps_student_equal_to_teacher():
    m = make()
    images = torch.rand(6, 3, 32, 32) * 0.1 + 0.45  # very alike images, as in a narrow target domain
    with torch.no_grad():
        before = m.teacher_forward([images], return_attn=False)[0].cls_logits
    stats = m.init_heads_from_data(images)
    assert 0.0 < stats["cls_mean_pairwise_cos"] <= 1.0
    with torch.no_grad():
        after = m.teacher_forward([images], return_attn=False)[0].cls_logits
    # standardised inputs: the logits now differ between images far more than before
    assert after.std(0).mean() > 3 * before.std(0).mean()
    for (n, s), t in zip(m.student_head.state_dict().items(), m.teacher_head.state_dict().values()):
        assert torch.equal(s, t), n


def test_data_init_leaves_a_loaded_head_alone():
    head = DINOHead(frozen_backbone().embed_dim, 64, 48, 16)
    m = StudentTeacher(
        frozen_backbone(), StudentTeacherConfig(rank=8, head=SMALL_HEAD), head_state_dict=head.state_dict()
    )
    before = {k: v.clone() for k, v in m.student_head.state_dict().items()}
    assert m.init_heads_from_data(torch.rand(4, 3, 32, 32)) == {}
    assert all(torch.equal(before[k], v) for k, v in m.student_head.state_dict().items())
