"""The GLARE objective end to end on the tiny test ViT: every term and variant, gradients, learning."""

import math

import pytest
import torch

from glare_core.backbone import create_backbone
from glare_core.heads import HeadConfig
from glare_core.losses import register_local_variant
from glare_core.objective import GlareObjective, ObjectiveConfig
from glare_core.patch_augment import PatchAugConfig
from glare_core.teacher import StudentTeacher, StudentTeacherConfig
from glare_core.views import ViewConfig

HEAD = HeadConfig(out_dim=64, hidden_dim=48, bottleneck_dim=16)


def model(**kw):
    torch.manual_seed(0)
    b = create_backbone("test_vit").requires_grad_(False).eval()
    return StudentTeacher(b, StudentTeacherConfig(rank=8, head=HEAD, **kw))


def config(**kw):
    return ObjectiveConfig(views=ViewConfig(global_size=48), warmup_teacher_temp_steps=10, **kw)


VARIANTS = {
    "G": dict(use_local=False, use_regional=False),
    "G+L": dict(use_regional=False),
    "G+R": dict(use_local=False),
    "G+L+R": dict(),
    "local-cosine": dict(local_variant="cosine"),
    "local-crossview": dict(local_variant="crossview"),
    "local-cap": dict(local_max_patches=2),
    "mask-mean-random": dict(
        patch_aug=PatchAugConfig(kind="mask_mean", selection="random", ratio=(0.1, 0.5))
    ),
    "noise": dict(patch_aug=PatchAugConfig(kind="noise")),
    "jitter": dict(patch_aug=PatchAugConfig(kind="jitter")),
    "mask-token": dict(patch_aug=PatchAugConfig(kind="mask_token")),
    "uniform-geometric": dict(sampling="uniform", correspondence="geometric"),
    "teacher-query": dict(region_query="teacher"),
    "overlap-only": dict(region_overlap_only=True),
    "infonce": dict(region_loss="infonce"),
    "region-cosine": dict(region_loss="cosine"),
    "local-crops": dict(views=ViewConfig(global_size=48, n_local=2, local_size=32)),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_runs_with_gradients_only_on_trained_tensors(name):
    kw = dict(VARIANTS[name])
    views = kw.pop("views", ViewConfig(global_size=48))
    cfg = ObjectiveConfig(views=views, warmup_teacher_temp_steps=10, **kw)
    m = model(mask_token=name == "mask-token")
    obj = GlareObjective(cfg)
    loss, logs = obj(m, torch.rand(2, 3, 56, 64), step=0, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and logs["loss"] == pytest.approx(loss.item())
    assert ("loss_local" in logs) == cfg.use_local and ("loss_regional" in logs) == cfg.use_regional
    assert 0 <= logs["teacher_entropy_global"] <= math.log(m.out_dim) + 1e-4  # collapse diagnostics, vs ln K
    assert 0 <= logs["teacher_kl_uniform_global"] <= math.log(m.out_dim) + 1e-4
    patch_head_terms = cfg.use_local and cfg.local_variant in ("ce", "crossview")
    assert ("teacher_entropy_local" in logs) == bool(patch_head_terms), sorted(logs)
    trained = {id(p) for g in m.param_groups().values() for p in g}
    for n, p in m.named_parameters():
        if id(p) not in trained:
            assert p.grad is None, n
    adapter_grads = [p.grad for p in m.param_groups()["adapter"] if p.grad is not None]
    assert adapter_grads and sum(g.abs().sum() for g in adapter_grads) > 0
    if name == "mask-token":
        assert m.mask_token.grad is not None and m.mask_token.grad.abs().sum() > 0


def test_dino_only_does_no_patch_work(monkeypatch):
    import glare_core.objective as objective

    monkeypatch.setattr(objective, "patch_augment", lambda *a, **k: pytest.fail("patch_augment called"))
    m = model()
    calls = []
    m.student_head.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    obj = GlareObjective(config(**VARIANTS["G"]))
    obj(m, torch.rand(2, 3, 56, 56), step=0)
    assert calls == [4]  # one head call on the 2 x B [CLS] tokens, nothing else
    assert list(obj.state_dict()) == ["global_loss.centering.center"]


def test_centres_are_buffers_and_update():
    m, obj = model(), GlareObjective(config())
    obj(m, torch.rand(2, 3, 56, 56), step=0)
    sd = obj.state_dict()
    assert set(sd) == {f"{t}.centering.center" for t in ("global_loss", "local_loss", "region_loss")}
    assert all(v.shape == (1, 64) and v.abs().sum() > 0 for v in sd.values())


def test_bad_sizes_and_missing_mask_token_are_explained():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        GlareObjective(ObjectiveConfig(views=ViewConfig(global_size=70)))(
            model(), torch.rand(1, 3, 80, 80), 0
        )
    with pytest.raises(ValueError, match="mask_token=True"):
        GlareObjective(config(patch_aug=PatchAugConfig(kind="mask_token")))(
            model(), torch.rand(1, 3, 80, 80), 0
        )
    with pytest.raises(ValueError, match="local_variant"):
        GlareObjective(config(local_variant="nope"))


def test_registered_local_variant_is_used():
    class Zero(torch.nn.Module):
        def forward(self, inputs):
            return inputs.students[0].patches.sum() * 0.0 + 0.5

    register_local_variant("test-zero", lambda cfg: Zero())
    _, logs = GlareObjective(config(local_variant="test-zero"))(model(), torch.rand(2, 3, 56, 56), 0)
    assert logs["loss_local"] == pytest.approx(0.5)


def test_a_few_adamw_steps_lower_the_loss():
    torch.manual_seed(0)
    m, obj = model(), GlareObjective(config())
    images = torch.rand(4, 3, 56, 56)
    params = [p for g in m.param_groups().values() for p in g]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(6):
        loss, _ = obj(m, images, step=0, generator=torch.Generator().manual_seed(0))  # fixed views and masks
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.update_teacher(0.99)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


def test_runs_under_bf16_autocast():
    m, obj = model(), GlareObjective(config())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = obj(m, torch.rand(2, 3, 56, 56), step=3)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
