"""Training configuration, schedules, data feed, checkpoints and a tiny end-to-end run (smoke preset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from glare_core.checkpoint import atomic_save
from glare_core.config import TrainConfig, apply_overrides, parse_value, preset
from glare_core.distributed import DistInfo
from glare_core.feed import ResumableBatchSampler
from glare_core.runs import load_checkpoint
from glare_core.train import NonFiniteLossError, pretrain


# ---------------------------------------------------------------------------- config and --set
def test_presets_validate_and_round_trip(tmp_path: Path):
    for name in ("smoke", "demo", "cpu", "cpu_trunk", "colab_t4", "paper"):
        cfg = preset(name).validate()
        assert cfg.preset == name
        cfg.save(tmp_path / f"{name}.json")
        again = TrainConfig.load(tmp_path / f"{name}.json")
        assert again == cfg, name
    assert preset("colab_t4").precision == "auto"  # fp16 on a T4 (no bf16), bf16 on an L4 or A100
    assert TrainConfig().precision == "auto"
    with pytest.raises(ValueError, match="unknown preset 'huge'; choose one of .*'cpu'"):
        preset("huge")


def test_registry_keeps_the_order_and_refuses_a_name_twice():
    from glare_core.config import PRESETS
    from glare_core.errors import Registry

    assert list(PRESETS) == ["smoke", "demo", "cpu", "cpu_trunk", "colab_t4", "paper"]  # the book lists them
    reg = Registry("widget")
    reg.register("b")(len)
    reg.register("a")(str)
    assert list(reg) == ["b", "a"] and reg.lookup("a") is str
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        reg.register("a")(repr)
    with pytest.raises(ValueError, match=r"unknown widget 'c'; choose one of \['a', 'b'\]"):
        reg.lookup("c")


def test_design_defaults():
    cfg = TrainConfig()
    assert cfg.base == "dinov2_vits14_imgfocus" and cfg.dataset == "camvid" and cfg.tuning == "adapter"
    assert cfg.rank == 64 and cfg.adapter_scale == 0.1 and cfg.clip_grad == 3.0
    assert (cfg.weight_decay, cfg.weight_decay_end) == (0.04, 0.4)
    assert (cfg.momentum_teacher, cfg.momentum_teacher_end) == (0.996, 1.0)
    assert cfg.min_lr == 1e-6
    assert cfg.peak_lr() == pytest.approx(5e-4 * 64 / 256)


def test_set_overrides_types_and_nesting():
    cfg = TrainConfig()
    apply_overrides(
        cfg,
        [
            "batch_size=32",
            "lr=1e-3",
            "compile=true",
            "limit=none",
            "root=/data/x",
            "heads.out_dim=4096",
            "steps=2e3",
        ],
    )
    assert cfg.batch_size == 32 and isinstance(cfg.batch_size, int)
    assert cfg.lr == pytest.approx(1e-3)
    assert cfg.compile is True and cfg.limit is None and cfg.root == "/data/x"
    assert cfg.heads.out_dim == 4096 and cfg.steps == 2000
    apply_overrides(cfg, ["limit=50"])
    assert cfg.limit == 50


def test_set_override_errors():
    cfg = TrainConfig()
    with pytest.raises(ValueError, match="unknown config key 'batch_szie'.*batch_size"):
        apply_overrides(cfg, ["batch_szie=3"])
    with pytest.raises(ValueError, match="unknown config key 'heads.nope'"):
        apply_overrides(cfg, ["heads.nope=3"])
    with pytest.raises(ValueError, match="expected an integer"):
        apply_overrides(cfg, ["batch_size=many"])
    with pytest.raises(ValueError, match="expected a boolean"):
        apply_overrides(cfg, ["compile=perhaps"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(cfg, ["batch_size"])
    with pytest.raises(ValueError, match="is a group"):
        apply_overrides(cfg, ["heads=3"])
    with pytest.raises(ValueError, match="no sub-keys"):
        apply_overrides(cfg, ["batch_size.x=3"])


def test_parse_value_tuples():
    assert parse_value("0.4,1.0", tuple[float, float]) == (0.4, 1.0)
    assert parse_value("[1, 2]", tuple[int, ...]) == (1, 2)
    assert parse_value("none", tuple[int, int] | None) is None
    with pytest.raises(ValueError, match="expected 2 values"):
        parse_value("1,2,3", tuple[int, int])


def test_from_dict_rejects_unknown_keys():
    data = TrainConfig().to_dict()
    data["heads"]["colour"] = "red"
    with pytest.raises(ValueError, match="heads.colour"):
        TrainConfig.from_dict(data)


# ---------------------------------------------------------------------------- sampler, checkpoints
def test_sampler_is_positioned_by_step_and_shards():
    full = ResumableBatchSampler(10, 4, seed=3)
    steps = [b for b, _ in zip(full, range(6))]
    assert all(len(b) == 4 for b in steps)
    epoch0 = [i for b in steps[:2] for _, i in b]
    assert len(set(epoch0)) == 8  # a permutation, last incomplete batch dropped
    assert steps[2][0][0] == 1  # step 2 is epoch 1
    resumed = ResumableBatchSampler(10, 4, seed=3, start_step=4)
    assert next(iter(resumed)) == steps[4]
    halves = [ResumableBatchSampler(10, 4, seed=3, info=DistInfo(rank=r, world_size=2)) for r in (0, 1)]
    assert next(iter(halves[0])) + next(iter(halves[1])) == steps[0]
    with pytest.raises(ValueError, match="fewer than one batch"):
        ResumableBatchSampler(3, 4)


def test_atomic_save_leaves_no_partial_file(tmp_path: Path):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path)["step"] == 1  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left behind


# ---------------------------------------------------------------------------- end to end (smoke preset)
def smoke_cfg(steps: int = 6, **kw) -> TrainConfig:
    cfg = preset("smoke")
    cfg.steps = steps
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_tiny_run_lowers_the_loss(tmp_path: Path):
    cfg = smoke_cfg(steps=12, checkpoint_every=100)
    cfg.lr = 5e-3
    summary = pretrain(cfg, tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 13))
    for key in ("loss", "lr", "wd", "momentum", "images_per_s", "seconds"):
        assert key in lines[0]
    first, last = np.mean([r["loss"] for r in lines[:3]]), np.mean([r["loss"] for r in lines[-3:]])
    assert last < first, (first, last)
    assert summary["steps"] == 12 and summary["trainable_params"] > 0
    for name in ("config.json", "checkpoint.pt", "adapter.safetensors", "summary.json"):
        assert (tmp_path / name).exists(), name
    assert TrainConfig.load(tmp_path / "config.json") == cfg


def test_nan_guard_keeps_the_last_checkpoint(tmp_path: Path, monkeypatch):
    from glare_core import objective as objective_mod

    cfg = smoke_cfg(steps=6, checkpoint_every=2)
    original = objective_mod.GlareObjective.__call__

    def poisoned(self, model, images, step):
        loss, logs = original(self, model, images, step)
        return (loss * float("nan") if step == 3 else loss), logs

    monkeypatch.setattr(objective_mod.GlareObjective, "__call__", poisoned)
    with pytest.raises(NonFiniteLossError, match="step 3"):
        pretrain(cfg, tmp_path)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_cast_frozen_base_linears_is_exact_under_autocast():
    from glare_core.backbone import create_backbone
    from glare_core.precision import cast_frozen_base_linears
    from glare_core.tuning import configure_tuning

    torch.manual_seed(0)
    net = create_backbone("test_vit")
    configure_tuning(net.vit, "adapter", rank=8)
    for blk in net.vit.blocks:  # non-zero adapters so their path matters
        torch.nn.init.normal_(blk.adapter.up.weight, std=0.1)
    x = torch.rand(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = net(x).patches
    n = cast_frozen_base_linears([net], torch.bfloat16)
    assert n == 4 * net.depth  # qkv, proj, fc1, fc2 of every block; the adapters stay fp32
    assert net.vit.blocks[0].adapter.down.weight.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x).patches
    assert torch.equal(out, ref)


def test_per_tensor_clipping_clips_each_gradient_on_its_own():
    from glare_core.train import clip_gradients

    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))
    a.grad, b.grad = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.3, 0.4, 0.0, 0.0])  # norms 5 and 0.5
    total = clip_gradients([a, b], 1.0, "per_tensor")
    assert float(total) == pytest.approx((25 + 0.25) ** 0.5)
    assert float(a.grad.norm()) == pytest.approx(1.0, rel=1e-5)  # clipped
    assert torch.equal(b.grad, torch.tensor([0.3, 0.4, 0.0, 0.0]))  # under the threshold: untouched
    a.grad, b.grad = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.3, 0.4, 0.0, 0.0])
    clip_gradients([a, b], 1.0, "global")  # one factor for both
    assert float(b.grad.norm()) == pytest.approx(0.5 / (25.25**0.5), rel=1e-4)


def test_a_run_exports_the_student_and_the_teacher(tmp_path: Path):
    from glare_core.teacher import read_adapter

    summary = pretrain(smoke_cfg(steps=2, checkpoint_every=2), tmp_path)
    teacher, _ = read_adapter(tmp_path / "adapter.safetensors")
    student, _ = read_adapter(tmp_path / "adapter_student.safetensors")
    assert teacher.keys() == student.keys() and summary["steps"] == 2
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)  # the EMA teacher lags the student


def test_snapshots_export_the_student_midway_and_change_nothing_else(tmp_path: Path):
    """``snapshot_steps`` writes the student's adapters after those steps; the run's numbers are the same as
    without them (the final exports are bit-identical), and step 0 is refused."""
    from glare_core.teacher import read_adapter

    pretrain(smoke_cfg(steps=3, snapshot_steps=(1, 2)), tmp_path / "a")
    pretrain(smoke_cfg(steps=3), tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a").glob("adapter_student_step*.safetensors"))
    assert names == ["adapter_student_step1.safetensors", "adapter_student_step2.safetensors"]
    s2, _ = read_adapter(tmp_path / "a" / "adapter_student_step2.safetensors")
    end_a, _ = read_adapter(tmp_path / "a" / "adapter_student.safetensors")
    end_b, _ = read_adapter(tmp_path / "b" / "adapter_student.safetensors")
    assert all(torch.equal(end_a[k], end_b[k]) for k in end_b)
    assert s2.keys() == end_a.keys() and any(not torch.equal(s2[k], end_a[k]) for k in end_a)
    with pytest.raises(ValueError, match="snapshot_steps"):
        smoke_cfg(snapshot_steps=(0,)).validate()
