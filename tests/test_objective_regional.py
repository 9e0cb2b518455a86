"""The regional term's options: who chooses the target (region_query), regions outside the overlap."""

from types import SimpleNamespace

import pytest
import torch

from glare_core.backbone import create_backbone
from glare_core.heads import HeadConfig
from glare_core.losses import match_regions, region_windows, sample_region_centres
from glare_core.objective import GlareObjective, ObjectiveConfig
from glare_core.teacher import StudentTeacher, StudentTeacherConfig
from glare_core.views import ViewConfig, Views

GRID = (6, 6)
B, N, D = 3, 36, 8


def outputs(seed: int, attn: bool = True) -> SimpleNamespace:
    """A view's output as the regional term reads it: patches (B, N, D), grid, [CLS] attention (B, N)."""
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(
        patches=torch.randn(B, N, D, generator=g),
        grid=GRID,
        attn=torch.rand(B, N, generator=g) if attn else None,
    )


def boxes_views(box_a, box_b, flip_b: bool = False) -> Views:
    boxes = torch.tensor([[box_a] * B, [box_b] * B], dtype=torch.float32)
    flips = torch.zeros(2, B, dtype=torch.bool)
    flips[1] = flip_b
    return Views(globals=[], boxes=boxes, flips=flips)


def test_the_teachers_query_chooses_the_target_without_the_student():
    """region_query="teacher": the target of a region is the same whatever the student's tokens are (the
    student cannot steer it); with the student's query it follows the student."""
    teacher, other = outputs(1), outputs(2)
    views = boxes_views((0, 0, 1, 1), (0, 0, 1, 1))
    targets = {}
    for query in ("student", "teacher"):
        cfg = ObjectiveConfig(region_query=query)
        for s in (3, 4):
            student = outputs(s, attn=False)
            _, target, valid = match_regions(
                student, teacher, other, views, (0, 1), cfg, torch.Generator().manual_seed(0)
            )
            targets[query, s] = target
            assert valid.all()
    assert torch.equal(targets["teacher", 3], targets["teacher", 4])
    assert not torch.allclose(targets["student", 3], targets["student", 4])


@pytest.mark.parametrize("correspondence", ["cross_attention", "geometric"])
@pytest.mark.parametrize("flip_b", [False, True])
def test_overlap_only_drops_the_regions_whose_centre_the_other_view_does_not_show(correspondence, flip_b):
    """View a covers x in [0, 0.6] of the image, view b x in [0.4, 1]: a region of a is kept exactly when its
    window's centre, x_a = (mean column + 0.5) / w in a's coordinates, lands at 0.6 x_a >= 0.4."""
    teacher, other, student = outputs(1), outputs(2), outputs(3, attn=False)
    views = boxes_views((0.0, 0.0, 0.6, 1.0), (0.4, 0.0, 1.0, 1.0), flip_b)
    cfg = ObjectiveConfig(region_overlap_only=True, correspondence=correspondence, num_regions=8)
    _, _, valid = match_regions(student, teacher, other, views, (0, 1), cfg, torch.Generator().manual_seed(0))
    # the same draws, then the reference from the window columns
    centres = sample_region_centres(
        teacher.attn, GRID, 8, cfg.alpha, generator=torch.Generator().manual_seed(0)
    )
    columns = (region_windows(centres, GRID, cfg.window) % GRID[1]).float().mean(-1)
    expected = 0.6 * (columns + 0.5) / GRID[1] >= 0.4
    assert 0 < int(expected.sum()) < expected.numel()  # the draw has regions on both sides
    assert torch.equal(valid, expected)
    cfg.region_overlap_only = False  # without the option only the geometric ablation drops regions
    _, _, valid_all = match_regions(
        student, teacher, other, views, (0, 1), cfg, torch.Generator().manual_seed(0)
    )
    assert valid_all.all() if correspondence == "cross_attention" else (valid_all >= valid).all()


def test_overlap_only_without_any_overlap_gives_zero_and_a_finite_gradient():
    torch.manual_seed(0)
    backbone = create_backbone("test_vit").requires_grad_(False).eval()
    head = HeadConfig(out_dim=64, hidden_dim=48, bottleneck_dim=16)
    model = StudentTeacher(backbone, StudentTeacherConfig(rank=8, head=head))
    cfg = ObjectiveConfig(
        views=ViewConfig(global_size=48), use_global=False, use_local=False, region_overlap_only=True
    )
    objective = GlareObjective(cfg)
    X = [torch.rand(2, 3, 48, 48) for _ in range(2)]
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 1.0]] * 2, [[0.5, 0.0, 1.0, 1.0]] * 2])  # side by side
    views = Views(globals=X, boxes=boxes, flips=torch.zeros(2, 2, dtype=torch.bool))
    T = model.teacher_forward(X, return_attn=True)
    S = model(X)
    loss, logs = objective.terms(model, S, T, views, [], step=0, generator=torch.Generator().manual_seed(0))
    assert logs["loss_regional"] == 0.0 and loss.item() == 0.0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    assert any(p.grad is not None for p in model.student_patch_head.parameters())  # the head takes part
