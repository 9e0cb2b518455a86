"""Resuming is exact: stop after step k, resume, and every trained and EMA tensor equals a straight run's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glare_core.config import preset
from glare_core.runs import load_checkpoint
from glare_core.train import pretrain


def _interrupt_at(monkeypatch, stop_step: int) -> None:
    """Make the objective raise KeyboardInterrupt when asked for step ``stop_step`` (a Ctrl-C mid-run)."""
    from glare_core import objective as objective_mod

    original = objective_mod.GlareObjective.__call__

    def interrupted(self, model, images, step):
        if step == stop_step:
            raise KeyboardInterrupt
        return original(self, model, images, step)

    monkeypatch.setattr(objective_mod.GlareObjective, "__call__", interrupted)


@pytest.mark.parametrize("head_init", ["random", "data"])
def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path: Path, monkeypatch, head_init):
    cfg = preset("smoke")
    cfg.heads.init = head_init  # "data": the heads are standardised at the start, never again on resume
    cfg.steps, cfg.checkpoint_every = 6, 3
    cfg.head_warmup_steps = 2  # cross the head warm-up boundary before the interruption

    pretrain(cfg, tmp_path / "full")

    with monkeypatch.context() as m:
        _interrupt_at(m, stop_step=4)  # checkpoint after 3 steps; step 4 is logged, then Ctrl-C in step 5
        with pytest.raises(KeyboardInterrupt):
            pretrain(cfg, tmp_path / "resumed")
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["step"] == 3
    pretrain(cfg, tmp_path / "resumed", resume=True)

    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert a["step"] == b["step"] == 6
    assert a["model"].keys() == b["model"].keys() and len(a["model"]) > 0
    assert any("teacher" in k for k in a["model"]), "the EMA teacher must be in the checkpoint"
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, v in (a["objective"] or {}).items():
        assert torch.equal(v, b["objective"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k

    # The metrics file of the resumed run reads like the uninterrupted one (no duplicated steps).
    la = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == list(range(1, 7))
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        pretrain(preset("smoke"), tmp_path, resume=True)
