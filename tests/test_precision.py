"""Mixed precision: what ``auto`` picks and why, which tensors may be stored in the autocast dtype, and the
one training step that ``pretrain`` and the benchmark share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glare_core import precision as prec
from glare_core.config import preset
from glare_core.distributed import DistInfo
from glare_core.train import build_run, pretrain, train_step

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# ---------------------------------------------------------------------------- what auto picks
def test_auto_on_a_cpu_follows_the_measured_matmul_ratio(monkeypatch):
    monkeypatch.setattr(
        prec, "measure_cpu_matmul", lambda refresh=False: {"fp32": 18.0, "bf16": 0.34, "cached": 1}
    )
    slow = prec.resolve_precision("auto", "cpu")
    assert slow.name == "fp32" and slow.dtype is None and "0.02x" in slow.reason
    monkeypatch.setattr(
        prec, "measure_cpu_matmul", lambda refresh=False: {"fp32": 100.0, "bf16": 480.0, "cached": 1}
    )
    fast = prec.resolve_precision("auto", "cpu")
    assert (
        fast.name == "bf16"
        and fast.dtype is torch.bfloat16
        and fast.matmul_gflops == {"fp32": 100, "bf16": 480}
    )


def test_forced_precisions_and_refusals():
    assert prec.resolve_precision("bf16", "cpu").name == "bf16"
    assert prec.resolve_precision("fp32", "cpu").name == "fp32"
    with pytest.raises(ValueError, match="fp16.*needs a GPU"):
        prec.resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="choose one of"):
        prec.resolve_precision("half", "cpu")


def test_cuda_without_native_bf16_gets_fp16(monkeypatch):
    monkeypatch.setattr(prec, "_cuda_has_bf16", lambda: False)  # a T4
    assert prec.resolve_precision("auto", "cuda").name == "fp16"
    with pytest.warns(UserWarning, match="no native bf16"):
        assert prec.resolve_precision("bf16", "cuda").name == "fp16"
    monkeypatch.setattr(prec, "_cuda_has_bf16", lambda: True)  # an A100 or L4
    assert prec.resolve_precision("auto", "cuda").name == "bf16"


def test_the_measurement_is_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("GLARE_CACHE_DIR", str(tmp_path))
    calls = []

    def fake(dtype, *a, **k):
        calls.append(dtype)
        return 10.0 if dtype == torch.float32 else 50.0

    monkeypatch.setattr(prec, "matmul_gflops", fake)
    first = prec.measure_cpu_matmul()
    again = prec.measure_cpu_matmul()
    assert (first["cached"], again["cached"]) == (0, 1) and len(
        calls
    ) == 6  # three interleaved rounds of each
    assert again["bf16"] == 50.0
    stored = json.loads((tmp_path / "precision.json").read_text())
    assert list(stored["machines"]) == [prec._machine_key()]
    (tmp_path / "precision.json").write_text("{not json")  # a damaged cache is measured again, not an error
    assert prec.measure_cpu_matmul()["cached"] == 0 and len(calls) == 12
    prec.measure_cpu_matmul(refresh=True)
    assert len(calls) == 18


def test_matmul_gflops_is_a_positive_rate():
    assert prec.matmul_gflops(torch.float32, (64, 64, 64), seconds=0.01) > 0


# ---------------------------------------------------------------------------- the float32 teacher
def _bf16_cfg(tuning: str = "adapter", **kw):
    cfg = preset("smoke")
    cfg.precision, cfg.tuning = "bf16", tuning
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _averaged(run) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return run.model._ema_pairs


@pytest.mark.parametrize("tuning", ["adapter", "lora", "full"])
def test_every_averaged_tensor_stays_float32_in_a_bf16_run(tuning):
    run = build_run(_bf16_cfg(tuning), DistInfo(), total_steps=4, verbose=False)
    images = torch.rand(4, 3, 96, 96)
    for step in range(2):
        train_step(run, images, step)
    pairs = _averaged(run)
    assert pairs, "a trained model has tensors to average"
    assert {s.dtype for s, _ in pairs} == {torch.float32}
    assert {t.dtype for _, t in pairs} == {torch.float32}
    assert run.model.ema_dtype() == "float32"
    if tuning != "full":  # the frozen base is stored in bf16 once (and shared with the teacher)
        qkv = run.model.student.vit.blocks[0].attn.qkv
        weight = getattr(qkv, "weight", None)
        if weight is None:  # LoRA wraps the frozen linear
            weight = next(m.weight for m in qkv.modules() if isinstance(m, torch.nn.Linear))
        assert weight.dtype == torch.bfloat16


@pytest.mark.parametrize("tuning", ["adapter", "full"])
def test_a_bf16_run_with_lr_zero_keeps_the_teacher_equal_to_the_student(tuning):
    cfg = _bf16_cfg(tuning, lr=0.0, min_lr=0.0)
    run = build_run(cfg, DistInfo(), total_steps=4, verbose=False)
    images = torch.rand(4, 3, 96, 96)
    for step in range(4):
        train_step(run, images, step)
    for s, t in _averaged(run):
        assert torch.equal(s, t)


def test_an_exported_adapter_holds_only_float32_tensors(tmp_path: Path):
    from safetensors import safe_open

    cfg = _bf16_cfg(steps=2, checkpoint_every=2)
    summary = pretrain(cfg, tmp_path / "run")
    assert summary["precision"] == "bf16" and summary["ema_dtype"] == "float32"
    with safe_open(str(tmp_path / "run" / "adapter.safetensors"), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.float32}


def test_summary_records_the_precision_auto_chose(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(
        prec, "measure_cpu_matmul", lambda refresh=False: {"fp32": 18.0, "bf16": 0.34, "cached": 1}
    )
    cfg = preset("smoke")
    cfg.steps = 1
    summary = pretrain(cfg, tmp_path / "run")
    assert (summary["precision"], summary["precision_requested"]) == ("fp32", "auto")
    assert "bf16 matmul" in summary["precision_reason"]


# ---------------------------------------------------------------------------- one training step
def test_the_benchmark_times_the_training_step(monkeypatch):
    from glare_core import bench, train

    calls = []
    real = train.train_step

    def counting(run, images, step):
        calls.append(step)
        return real(run, images, step)

    monkeypatch.setattr(train, "train_step", counting)
    cfg = preset("smoke")
    cfg.precision = "fp32"
    step, used = bench.build_step(cfg, total_steps=10)
    step(0)
    assert calls == [cfg.head_warmup_steps] and used == "fp32"


def test_stale_cells_name_a_bf16_teacher():
    from glare_core.study.store import bf16_teacher

    old = {"config": {"train": {"tuning": "adapter", "precision": "bf16"}}, "pretrain": {"summary": {}}}
    assert bf16_teacher(old)
    assert not bf16_teacher({**old, "config": {"train": {"tuning": "lora", "precision": "bf16"}}})
    assert not bf16_teacher({**old, "config": {"train": {"tuning": "full", "precision": "fp32"}}})
    new = {**old, "pretrain": {"summary": {"ema_dtype": "float32", "precision": "bf16"}}}
    assert not bf16_teacher(new)
    assert not bf16_teacher({"config": {"train": {}}})  # no pre-training: the frozen base


def test_the_committed_main_table_marks_its_bf16_teacher_cells():
    from glare_core.study import store

    results = Path(__file__).resolve().parent.parent / "results"
    if not (results / "main" / "cells").is_dir():
        pytest.skip("no committed results beside this checkout")
    cells = store.load_cells(results, "main")
    marked = {(c["row"], c["dataset"], c["seed"]) for c in cells if store.bf16_teacher(c)}
    rows = {r for r, _, _ in marked}
    assert rows == {"dino_adapter", "dino_full", "glare"}  # base has no teacher; LoRA was spared


# ---------------------------------------------------------------------------- glare system
def test_glare_system_reports_the_choice(tmp_path, monkeypatch, capsys):
    from glare_core.cli import main

    monkeypatch.setenv("GLARE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(prec, "matmul_gflops", lambda dtype, *a, **k: 20.0 if dtype == torch.float32 else 0.5)
    assert main(["system", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["auto_precision"] == {
        "device": "cpu",
        "precision": "fp32",
        "why": report["auto_precision"]["why"],
    }
    assert report["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert report["cpu_matmul_gflops"]["bf16"] == 0.5
    assert main(["system"]) == 0
    assert "precision auto" in capsys.readouterr().out


def test_auto_picks_float32_where_bf16_matmul_is_slow(tmp_path):
    """A real measurement: with torch, oneDNN and MKL limited to AVX2 kernels, this processor multiplies bf16
    matrices the way one without bf16 units does (a few GFLOP/s), and ``auto`` must not pick bf16."""
    import os
    import subprocess
    import sys

    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("an x86 processor is needed to limit the kernels to AVX2")
    env = {
        **os.environ,
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "GLARE_CACHE_DIR": str(tmp_path),
    }
    code = "from glare_core.precision import resolve_precision as r; p = r('auto', 'cpu'); print(p.name)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "fp32", out.stdout
