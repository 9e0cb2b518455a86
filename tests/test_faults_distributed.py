"""Fault family 10, data-parallel edge cases, with 2 gloo processes on the CPU (``torchrun``).

* A process with no valid region still joins the centre all-reduce and the head's gradient all-reduce
  (before, it returned early and the other process waited for ever).
* A trained head that no term uses (the [CLS] head beside a separate patch head, with G off) no longer makes
  DistributedDataParallel fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import glare_core

WORKER = r"""
import datetime, os, sys, torch, torch.distributed as dist
from torch import nn
from glare_core.losses.regional_consistency import RegionLoss

dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
rank = dist.get_rank()
torch.manual_seed(0)
head = nn.Linear(8, 16)
ddp = nn.parallel.DistributedDataParallel(head)
loss_fn = RegionLoss("ce", out_dim=16)
student = torch.randn(2, 3, 8, requires_grad=True)
teacher = torch.randn(2, 3, 8)
valid = torch.ones(2, 3, dtype=torch.bool) if rank == 0 else torch.zeros(2, 3, dtype=torch.bool)
loss = loss_fn(student, teacher, valid, student_head=ddp, teacher_head=head)
loss.backward()
assert torch.isfinite(loss), loss
centres = [torch.zeros_like(loss_fn.centering.center) for _ in range(2)]
dist.all_gather(centres, loss_fn.centering.center)
assert torch.equal(centres[0], centres[1]), "the ranks' centres differ"
assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
print(f"rank {rank} ok", flush=True)
dist.destroy_process_group()
"""


def _torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    repo = str(Path(glare_core.__file__).resolve().parents[1])  # the glare_core under test
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "GLARE_SMOKE": "1",
        "PYTHONPATH": repo,
    }
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)


def test_a_rank_without_regions_does_not_hang_the_others(tmp_path: Path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = _torchrun([str(script)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 ok" in proc.stdout and "rank 1 ok" in proc.stdout


def test_a_head_unused_by_the_terms_does_not_break_ddp(tmp_path: Path):
    out = tmp_path / "run"
    sets = ["steps=2", "batch_size=4", "checkpoint_every=2", "heads.separate_patch_head=true"]
    sets += ["objective.use_global=false", "objective.use_regional=false"]
    args = ["-m", "glare_core", "pretrain", "--preset", "smoke", "--out", str(out)]
    proc = _torchrun([*args, *(a for s in sets for a in ("--set", s))], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "adapter.safetensors").is_file()
