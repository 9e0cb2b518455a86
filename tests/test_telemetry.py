"""Run telemetry: adapter shares, last-layer token change and its non-affine share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glare_core import telemetry
from glare_core.backbone import create_backbone
from glare_core.config import preset
from glare_core.train import pretrain
from glare_core.tuning import configure_tuning


def test_token_change_separates_affine_from_non_affine_changes():
    torch.manual_seed(0)
    base = torch.randn(4, 64, 8)  # 256 tokens of width 8
    assert telemetry.token_change(base, base) == {"change": 0.0, "non_affine_share": 0.0}
    W, b = torch.randn(8, 8), torch.randn(8)
    affine = telemetry.token_change(base, base @ W + b)
    assert affine["change"] > 0.5 and affine["non_affine_share"] < 1e-6  # a probe would undo it
    noise = telemetry.token_change(base, base + 0.1 * torch.randn_like(base))
    assert noise["change"] == pytest.approx(0.1, rel=0.2) and noise["non_affine_share"] > 0.9


def test_adapter_shares_start_at_zero_and_follow_the_adapters():
    torch.manual_seed(0)
    net = create_backbone("test_vit")
    images = torch.rand(2, 3, 32, 32)
    assert telemetry.adapter_shares(net, images) == [None] * net.depth  # no UniAdapters: nothing to measure
    configure_tuning(net.vit, "adapter", rank=8)
    assert telemetry.adapter_shares(net, images) == [0.0] * net.depth  # zero-initialised up projections
    torch.nn.init.normal_(net.vit.blocks[1].adapter.up.weight, std=0.1)
    shares = telemetry.adapter_shares(net, images)
    assert shares[1] > 0 and shares[0] == 0.0 and shares[2] == 0.0


def test_a_run_records_its_instruments(tmp_path: Path):
    cfg = preset("smoke")
    cfg.steps, cfg.telemetry_every = 4, 2
    summary = pretrain(cfg, tmp_path / "run")
    t = summary["telemetry"]
    assert len(t["teacher"]["adapter_share"]) == create_backbone("test_vit").depth
    assert t["student"]["token_change"] > t["teacher"]["token_change"] > 0  # the EMA teacher lags
    assert 0 <= t["teacher"]["token_non_affine_share"] <= 1
    assert summary["ln_k"] == pytest.approx(torch.log(torch.tensor(64.0)).item())
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert ["teacher_token_change" in x for x in lines] == [False, True, False, True]
    assert all("teacher_entropy_global" in x for x in lines)
