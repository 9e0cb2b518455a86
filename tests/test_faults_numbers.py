"""Fault families 5 and 7, numbers from NaN: bad numbers are refused, never turned into results.

* Config values out of range (lr NaN / inf / 1e30 / -1, rank 0, batch 0) are refused before any work.
* A checkpoint is written only when every trained weight and gradient is finite (and not diverged), so the
  last checkpoint stays a good one.
* Adapters holding NaN or huge values are refused on load; a probe whose loss turns NaN is an error (exit
  code 3), not an mIoU.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from glare_core.backbone import create_backbone
from glare_core.cli import main
from glare_core.config import preset
from glare_core.errors import CheckpointError, NonFiniteError
from glare_core.teacher import ADAPTER_FORMAT, read_adapter
from glare_core.train import pretrain
from glare_core.tuning import configure_tuning, trainable_state_dict


@pytest.mark.parametrize(
    "override",
    [
        "lr=nan",
        "lr=inf",
        "lr=1e30",
        "lr=-1",
        "lr=0",
        "rank=0",
        "batch_size=0",
        "min_lr=nan",
        "clip_grad=-1",
        "momentum_teacher=2",
        "objective.teacher_temp=0",
        "heads.out_dim=0",
        "warmup_fraction=1.5",
    ],
)
def test_out_of_range_config_values_are_refused(override, capsys):
    assert main(["pretrain", "--preset", "smoke", "--set", override, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert override.split("=")[0] in err and "Traceback" not in err


def test_every_preset_validates():
    from glare_core.config import PRESETS

    for name in PRESETS:
        preset(name).validate()


def test_no_checkpoint_with_non_finite_weights(tmp_path: Path, monkeypatch):
    """Gradients that turn infinite at the third step make AdamW write NaN weights; the checkpoint after that
    step is refused and the one before it stays."""
    original = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def poisoned(params, max_norm, *args, **kwargs):
        calls["n"] += 1
        params = list(params)
        if calls["n"] == 3:
            for p in params:
                if p.grad is not None:
                    p.grad.fill_(math.inf)
        return original(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", poisoned)
    cfg = preset("smoke")
    cfg.steps, cfg.checkpoint_every = 4, 1
    with pytest.raises(NonFiniteError, match="checkpoint at step 3"):
        pretrain(cfg, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def _adapter_file(path: Path, fill: float | None) -> Path:
    torch.manual_seed(0)
    net = create_backbone("test_vit")
    configure_tuning(net.vit, "adapter", rank=4)
    tensors = trainable_state_dict(net.vit)
    if fill is not None:
        first = next(iter(tensors))
        tensors[first] = torch.full_like(tensors[first], fill)
    save_file(tensors, str(path), metadata={"format": ADAPTER_FORMAT, "tuning": "adapter", "rank": "4"})
    return path


@pytest.mark.parametrize("fill", [math.nan, math.inf, 1e30])
def test_adapters_with_bad_numbers_are_refused(tmp_path: Path, fill, capsys):
    path = _adapter_file(tmp_path / "adapter.safetensors", fill)
    with pytest.raises(CheckpointError, match=str(path)):
        read_adapter(path)
    args = ["evaluate", "--base", "random:test_vit", "--adapter", str(path), "--dataset", "synthetic"]
    assert main([*args, "--size", "32x32", "--steps", "3", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err


def test_a_finite_adapter_still_loads(tmp_path: Path):
    tensors, meta = read_adapter(_adapter_file(tmp_path / "adapter.safetensors", None))
    assert meta["rank"] == "4" and tensors


def test_probe_with_nan_loss_is_an_error_not_a_miou(tmp_path: Path, capsys):
    args = ["evaluate", "--base", "random:test_vit", "--dataset", "synthetic", "--size", "32x32"]
    args += ["--steps", "5", "--lr", "1e30", "--no-cache", "--out", str(tmp_path / "r.json")]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 3, captured.err
    assert "mIoU" not in captured.out and "probe" in captured.err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("option", [["--batch-size", "0"], ["--steps", "0"], ["--lr", "nan"], ["--lr", "-1"]])
def test_probe_options_out_of_range_are_refused(option, capsys):
    args = ["evaluate", "--base", "random:test_vit", "--dataset", "synthetic", "--size", "32x32", *option]
    assert main(args) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_random_base_is_seeded_in_evaluate():
    from glare_core.evaluation import load_backbone
    from glare_core.features import backbone_fingerprint

    torch.manual_seed(123)
    a = backbone_fingerprint(load_backbone("random:test_vit"))
    torch.manual_seed(456)
    assert backbone_fingerprint(load_backbone("random:test_vit")) == a
