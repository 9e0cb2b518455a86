"""PiPa's pixel contrast and patch consistency: references, sampling, the queue, the threshold, the
"pipa" local variant of pre-training."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from glare_core.backbone import create_backbone
from glare_core.heads import HeadConfig
from glare_core.neighbours.pipa import (
    FeatureQueue,
    PatchConsistencyConfig,
    PatchConsistencyLoss,
    PixelContrastConfig,
    PixelContrastLoss,
    overlap_slices,
    overlapping_windows,
    patch_contrast,
    sample_anchors,
    supervised_pixel_contrast,
)
from glare_core.neighbours.pipa.patch_consistency import crop
from glare_core.objective import GlareObjective, ObjectiveConfig
from glare_core.runs import load_checkpoint
from glare_core.teacher import StudentTeacher, StudentTeacherConfig
from glare_core.views import ViewConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ------------------------------------------------------------------------------------ pixel contrast
def naive_pixel_contrast(z, y, tau):
    """Loop form: for each anchor with positives, mean over positives of -log(e^pos / (e^pos + sum e^neg))."""
    z = F.normalize(z.double(), dim=-1)
    per_anchor = []
    for i in range(len(y)):
        negs = [math.exp(float(z[i] @ z[n]) / tau) for n in range(len(y)) if y[n] != y[i]]
        terms = []
        for p in range(len(y)):
            if p != i and y[p] == y[i]:
                s = math.exp(float(z[i] @ z[p]) / tau)
                terms.append(-math.log(s / (s + sum(negs))))
        if terms:
            per_anchor.append(sum(terms) / len(terms))
    return sum(per_anchor) / len(per_anchor)


def test_pixel_contrast_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 5, generator=g)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 3, 1, 2, 0])  # class 3 has one anchor: no positive
    got = supervised_pixel_contrast(z, y, temperature=0.1)
    assert got.item() == pytest.approx(naive_pixel_contrast(z, y, 0.1), rel=1e-5)
    assert supervised_pixel_contrast(z, y, 0.1, base_temperature=0.07).item() == pytest.approx(
        got.item() * 0.1 / 0.07, rel=1e-5
    )


def test_pixel_contrast_pulls_same_class_together():
    y = torch.tensor([0, 0, 1, 1])
    clustered = torch.tensor([[1.0, 0], [1.0, 0.01], [0, 1.0], [0.01, 1.0]])
    mixed = torch.tensor([[1.0, 0], [0, 1.0], [1.0, 0.01], [0.01, 1.0]])
    assert supervised_pixel_contrast(clustered, y) < supervised_pixel_contrast(mixed, y)


def test_anchor_sampling_is_class_balanced_hard_easy_and_skips_ignore():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 50 + [1] * 40 + [2] * 3 + [255] * 20)
    preds = labels.clone()
    preds[:20] = 1  # 20 hard pixels of class 0, 30 easy
    preds[50:55] = 0  # 5 hard pixels of class 1, 35 easy
    preds[93:] = 0  # ignored pixels, whatever they predict
    idx = sample_anchors(labels, preds, per_class=10, hard_fraction=0.5, generator=g)
    assert len(set(idx.tolist())) == len(idx)
    got = labels[idx]
    assert (got != 255).all()
    assert [(got == c).sum().item() for c in (0, 1, 2)] == [10, 10, 3]  # class 2 has only 3 pixels
    hard = labels[idx] != preds[idx]
    assert hard[got == 0].sum() == 5  # 50/50
    assert hard[got == 1].sum() == 5
    idx = sample_anchors(labels, preds, per_class=30, hard_fraction=0.5, generator=g)
    c1 = labels[idx] == 1
    assert c1.sum() == 30 and (labels[idx] != preds[idx])[c1].sum() == 5  # hard short: easy fills the gap


def test_pixel_contrast_loss_respects_the_ignore_index():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(2, 8, 4, 4, generator=g, requires_grad=True)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    labels = torch.full((2, 8, 8), 255)
    loss = PixelContrastLoss(PixelContrastConfig(anchors_per_class=4))
    assert loss(emb, logits, labels).item() == 0.0
    labels[0, :4, :4] = 0  # top-left 2 x 2 cells of image 0 at the 4 x 4 grid
    labels[1, 4:, 4:] = 1
    value = loss(emb, logits, labels, torch.Generator().manual_seed(1))
    value.backward()
    touched = emb.grad.abs().sum(1) > 0  # (2, 4, 4)
    assert value.item() > 0
    assert touched[0, :2, :2].all() and touched[1, 2:, 2:].all() and touched.sum() == 8


# ------------------------------------------------------------------------------- patch consistency
def naive_patch_contrast(a, p, y, queue, qy, tau):
    out = []
    for i in range(len(a)):
        ai, pi = F.normalize(a[i].double(), dim=0), F.normalize(p[i].double(), dim=0)
        pos = math.exp(float(ai @ pi) / tau)
        neg = sum(
            math.exp(float(ai @ queue[k].double()) / tau)
            for k in range(len(qy))
            if qy[k] >= 0 and qy[k] != y[i]
        )
        out.append(-math.log(pos / (pos + neg)))
    return torch.tensor(out, dtype=torch.float64)


def test_patch_contrast_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    a, p = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    queue = F.normalize(torch.randn(9, 4, generator=g), dim=-1)
    qy = torch.tensor([0, 0, 1, 2, 2, 1, -1, 0, 3])
    mask = (qy[None] >= 0) & (qy[None] != y[:, None])
    got = patch_contrast(a, p, queue, mask, 0.1)
    assert torch.allclose(got.double(), naive_patch_contrast(a, p, y, queue, qy, 0.1), rtol=1e-5)


def test_overlapping_windows_find_the_same_cells():
    h, w = 7, 9
    full = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w).expand(2, 3, h, w)  # unique per cell
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        win1, win2 = overlapping_windows(h, w, 0.6, g)
        (r1, c1), (r2, c2) = overlap_slices(win1, win2)
        a, b = crop(full, win1)[..., r1, c1], crop(full, win2)[..., r2, c2]
        assert a.numel() > 0 and torch.equal(a, b)  # the positives are the same location of the full map
        t = max(win1[0], win2[0])
        left = max(win1[1], win2[1])
        assert a[0, 0, 0, 0].item() == t * w + left
    with pytest.raises(ValueError, match="do not overlap"):
        overlap_slices((0, 0, 2, 2), (3, 3, 2, 2))
    with pytest.raises(ValueError, match="crop_fraction"):
        PatchConsistencyConfig(crop_fraction=0.5)


def test_queue_yields_only_filled_entries_with_another_pseudo_label():
    q = FeatureQueue(size=5)
    q.push(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    mask = q.negatives_mask(torch.tensor([1, 7]))
    assert mask.tolist() == [[True, False, True, False, False], [True, True, True, False, False]]
    q.push(torch.randn(4, 4), torch.tensor([3, 3, 4, 4]))  # wraps: overwrites the two oldest
    assert q.labels.tolist() == [4, 4, 2, 3, 3] and int(q.ptr) == 2
    assert torch.allclose(q.features.norm(dim=-1), torch.ones(5))
    fresh = FeatureQueue(size=5)
    fresh.load_state_dict(q.state_dict())  # a checkpoint loads into a queue not yet sized
    assert torch.equal(fresh.features, q.features) and torch.equal(fresh.labels, q.labels)


def test_loss_uses_only_negatives_with_another_pseudo_label():
    g = torch.Generator().manual_seed(0)
    loss = PatchConsistencyLoss(PatchConsistencyConfig(threshold=0.5, max_anchors=None))
    stored = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    loss.queue.push(stored, torch.tensor([0, 0, 0, 1, 1, 1]))
    a, p = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    y = torch.tensor([0, 0, 1])
    value = loss(a, p, y, torch.ones(3))
    queue, qy = loss.queue.features, loss.queue.labels  # the positives were pushed first
    assert qy.tolist()[6:9] == [0, 0, 1]
    ref = naive_patch_contrast(a, p, y, queue, qy, 0.1).mean()
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)
    # a same-label stored feature identical to the anchor changes nothing
    loss2 = PatchConsistencyLoss(PatchConsistencyConfig(threshold=0.5, max_anchors=None))
    loss2.queue.push(torch.cat([stored, F.normalize(a[:1], dim=-1)]), torch.tensor([0, 0, 0, 1, 1, 1, 0]))
    only_first = loss2(a[:1], p[:1], y[:1], torch.ones(1))
    ref1 = naive_patch_contrast(a[:1], p[:1], y[:1], stored, torch.tensor([0, 0, 0, 1, 1, 1]), 0.1)
    assert only_first.item() == pytest.approx(ref1.item(), rel=1e-5)


def test_confidence_threshold_masks_low_confidence_positions():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 4, generator=g, requires_grad=True)
    p = torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    conf = torch.tensor([0.95, 0.2, 0.99, 0.9, 0.5, 0.91])
    loss = PatchConsistencyLoss(PatchConsistencyConfig(max_anchors=None))
    value = loss(a, p, y, conf)
    value.backward()
    confident = conf > 0.9
    assert (a.grad[~confident] == 0).all() and (a.grad[confident].abs().sum(1) > 0).all()
    assert (loss.queue.labels >= 0).sum() == confident.sum()  # only confident positives are stored
    fresh = PatchConsistencyLoss(PatchConsistencyConfig(max_anchors=None))
    assert fresh(a[confident], p[confident], y[confident], conf[confident]).item() == pytest.approx(
        value.item(), rel=1e-6
    )
    none = PatchConsistencyLoss()(a, p, y, torch.full((6,), 0.3))
    assert none.item() == 0.0 and none.requires_grad


# ------------------------------------------------------------------ the "pipa" local variant (pre-training)
def test_the_objective_imports_pipa_only_to_build_its_variant():
    """glare_core.objective does not import PiPa; asking for local_variant="pipa" imports and registers it."""
    code = (
        "import sys\n"
        "from glare_core.losses import LOCAL_VARIANTS\n"
        "from glare_core.objective import GlareObjective, ObjectiveConfig\n"
        "assert not [m for m in sys.modules if 'pipa' in m], sorted(m for m in sys.modules if 'pipa' in m)\n"
        "assert 'pipa' not in LOCAL_VARIANTS\n"
        "objective = GlareObjective(ObjectiveConfig(local_variant='pipa'))\n"
        "from glare_core.neighbours.pipa import PiPaLocalLoss\n"
        "assert isinstance(objective.local_loss, PiPaLocalLoss) and 'pipa' in LOCAL_VARIANTS\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_pipa_local_variant_runs_through_the_objective_with_gradients_only_on_trained_tensors():
    torch.manual_seed(0)
    backbone = create_backbone("test_vit").requires_grad_(False).eval()
    head = HeadConfig(out_dim=64, hidden_dim=48, bottleneck_dim=16)
    model = StudentTeacher(backbone, StudentTeacherConfig(rank=8, head=head))
    cfg = ObjectiveConfig(
        views=ViewConfig(global_size=48),
        warmup_teacher_temp_steps=10,
        local_variant="pipa",
        use_regional=False,
    )
    objective = GlareObjective(cfg)
    objective.local_loss.core.cfg.threshold = 0.0  # a new head is rarely 90 % sure; let every position count
    loss, logs = objective(
        model, torch.rand(2, 3, 56, 64), step=0, generator=torch.Generator().manual_seed(0)
    )
    loss.backward()
    assert torch.isfinite(loss) and logs["loss_local"] > 0
    assert objective.local_loss.last_stats["confident_fraction"] == 1.0
    trained = {id(p) for group in model.param_groups().values() for p in group}
    for name, p in model.named_parameters():
        if id(p) not in trained:
            assert p.grad is None, name
    assert sum(p.grad.abs().sum() for p in model.param_groups()["adapter"] if p.grad is not None) > 0
    state = objective.state_dict()
    assert (state["local_loss.core.queue.labels"] >= 0).sum() > 0  # the queue is checkpointed
    again = GlareObjective(cfg)
    again.load_state_dict(state)
    assert torch.equal(again.local_loss.core.queue.features, objective.local_loss.core.queue.features)


def test_pretrain_command_selects_pipa_and_checkpoints_its_queue(tmp_path):
    from glare_core.cli import main

    out = tmp_path / "run"
    args = ["pretrain", "--preset", "smoke", "--base", "random:test_vit", "--dataset", "synthetic"]
    args += ["--steps", "2", "--set", "objective.local_variant=pipa", "--set", "num_threads=1"]
    assert main([*args, "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["objective"]["local_variant"] == "pipa"
    assert all("loss_local" in json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())
    state = load_checkpoint(out / "checkpoint.pt")["objective"]
    assert "local_loss.core.queue.labels" in state


def test_similarities_stay_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(10, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    a, p, queue = (
        torch.randn(5, 8, generator=g),
        torch.randn(5, 8, generator=g),
        torch.randn(7, 8, generator=g),
    )
    mask = torch.rand(5, 7, generator=g) < 0.7
    ref_pix, ref_patch = supervised_pixel_contrast(z, y), patch_contrast(a, p, queue, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert supervised_pixel_contrast(z, y).item() == pytest.approx(ref_pix.item(), rel=1e-6)
        assert torch.allclose(patch_contrast(a, p, queue, mask), ref_patch, rtol=1e-6)
