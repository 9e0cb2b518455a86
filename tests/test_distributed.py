"""Data parallel: 2 gloo processes (torchrun, CPU) take the same steps as one process with the same batch.

The views are made deterministic (full-image square crops, no flips or colour changes) and the objective is
the global term only, because random augmentations are drawn per process and cannot match a single process's
draws. What is tested is the data-parallel machinery itself: each rank's slice of the global batch, gradient
averaging by DistributedDataParallel, the centre all-reduce inside the loss, the global loss in the logs, and
rank 0 alone writing files. Tolerance: fp32, weights and losses equal to within 1e-4 relative / 1e-5 absolute
(measured: at most 1.4e-6 absolute on weights of size ~0.07 after 4 steps); only the order of floating-point
sums differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from glare_core.config import apply_overrides, preset
from glare_core.runs import load_checkpoint
from glare_core.train import pretrain

DETERMINISTIC = [
    "steps=4",
    "batch_size=4",
    "precision=fp32",
    "checkpoint_every=4",
    "objective.use_local=false",
    "objective.use_regional=false",
    "objective.views.global_scale=1,1",
    "objective.views.ratio=1,1",
    "objective.views.flip_p=0",
    "objective.views.jitter_p=0",
    "objective.views.grayscale_p=0",
    "objective.views.blur_p=0,0",
    "objective.views.solarize_p=0,0",
]


def test_two_gloo_processes_match_one(tmp_path: Path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    cfg = apply_overrides(preset("smoke"), DETERMINISTIC)
    pretrain(cfg, single)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "GLARE_SMOKE": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "glare_core",
        "pretrain",
        "--preset",
        "smoke",
        "--out",
        str(multi),
    ]
    cmd += [a for s in DETERMINISTIC for a in ("--set", s)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a = load_checkpoint(single / "checkpoint.pt")
    b = load_checkpoint(multi / "checkpoint.pt")
    assert a["step"] == b["step"] == 4 and len(b["rng"]) == 2  # one RNG state per rank
    assert a["model"].keys() == b["model"].keys()
    changed = 0
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)
        changed += 1
    assert changed > 0
    for k, v in a["objective"].items():
        torch.testing.assert_close(b["objective"][k], v, rtol=1e-4, atol=1e-5, msg=k)

    la = [json.loads(x)["loss"] for x in (single / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (multi / "metrics.jsonl").read_text().splitlines()]
    assert len(la) == len(lb) == 4  # rank 0 alone wrote the metrics
    torch.testing.assert_close(torch.tensor(lb), torch.tensor(la), rtol=1e-4, atol=1e-5)
    assert json.loads((multi / "summary.json").read_text())["world_size"] == 2
