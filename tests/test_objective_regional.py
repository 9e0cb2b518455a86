"""The regional term's options: who chooses the target (region_query)."""

from types import SimpleNamespace

import torch

from glare_core.losses import match_regions
from glare_core.objective import ObjectiveConfig
from glare_core.views import Views

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
