"""Training-step benchmark: images/s, peak memory and achieved FLOP/s of the GLARE step (not a test).

Measured in one run, on this machine, for a ViT-S at 224 px:

(a) the GLARE step (G + L + R, bf16 autocast, the way :func:`glare_core.train.pretrain` runs it);
(b) the DINO-only continual pre-training step (the global term only, same precision): GLARE's overhead;
(c) a naive step: the same GLARE objective in fp32, eager: what the optimisations buy;

plus this machine's own matmul throughput (2048 x 2048 products in bf16 and fp32), so that the step's achieved
FLOP/s (counted with ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward) is reported as
a fraction of a peak measured in the same run (on CUDA that is the usual MFU, against the measured matmul
peak).

Peak memory (``ru_maxrss`` on CPU, ``torch.cuda.max_memory_allocated`` on CUDA) and FLOPs come from one fresh
subprocess per variant; the timings from interleaved rounds in one process (best round kept), so that the
variants are compared under the same load on a machine shared with other jobs. Goals on a 2-core CPU: (a) >=
2.5x (c); (a) at most 15 % slower than (b); (a) >= 40 % of the bf16 matmul throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig, apply_overrides
from .objective import GlareObjective
from .teacher import StudentTeacher
from .train import (
    AUTOCAST_DTYPES,
    autocast,
    cast_frozen_linears,
    maybe_compile,
    resolve_precision,
    seed_everything,
    select_attention,
)
from .weights import load_base

#: The three measured steps: name -> (objective terms, precision).
VARIANTS = {
    "glare": ("glare", "bf16"),
    "dino_only": ("dino", "bf16"),
    "naive_fp32": ("glare", "fp32"),
}


def machine_info() -> dict[str, Any]:
    """CPU model, core count, torch version, threads, and the GPU if any."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    return info


def matmul_flops(dtype: torch.dtype, n: int = 2048, seconds: float = 3.0, device: str = "cpu") -> float:
    """Measured FLOP/s of ``n x n @ n x n`` products (2 n^3 FLOPs each) in ``dtype``, for ``seconds``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def bench_config(
    base: str, batch_size: int, terms: str, precision: str, compile: bool = False
) -> TrainConfig:
    """The training config of one variant: ViT-S at 224 px views, the cpu preset's heads."""
    from .config import preset

    cfg = preset("cpu")
    cfg.base, cfg.batch_size, cfg.precision, cfg.compile = base, batch_size, precision, compile
    cfg.load_size = 256
    apply_overrides(cfg, ["objective.views.global_size=224"])
    if terms == "dino":
        apply_overrides(cfg, ["objective.use_local=false", "objective.use_regional=false"])
    return cfg


def build_step(cfg: TrainConfig) -> Callable[[int], None]:
    """One training step of ``cfg`` on a fixed random batch, as :func:`glare_core.train.pretrain` runs it
    (autocast, frozen linears in the autocast dtype, AdamW, clipping, EMA update)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(cfg, device)
    seed_everything(cfg.seed)
    model = StudentTeacher(load_base(cfg.base, verbose=False), cfg.student_teacher_config()).to(device)
    if precision != "fp32":
        cast_frozen_linears(model, AUTOCAST_DTYPES[precision])
    select_attention(model, cfg.attention, device, precision)
    objective = GlareObjective(cfg.objective).to(device)
    maybe_compile(model, cfg.compile)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    images = torch.rand(cfg.batch_size, 3, cfg.load_size, cfg.load_size, device=device)

    def step(i: int) -> None:
        with autocast(device, precision):
            loss, _ = objective(model, images, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        opt.step()
        model.update_teacher(0.996)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def memory_and_flops(cfg: TrainConfig) -> dict[str, Any]:
    """Peak memory of this process over two steps, and the FLOPs of one step (``FlopCounterMode``).

    Run it in a fresh process (``python -m glare_core.bench --variant ...``) so the peak is the variant's own.
    """
    from torch.utils.flop_counter import FlopCounterMode

    step = build_step(cfg)
    with FlopCounterMode(display=False) as counter:
        step(0)
    step(1)
    if torch.cuda.is_available():
        peak_mb, kind = torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    else:
        peak_mb, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"
    return {"flops_per_step": counter.get_total_flops(), "peak_memory_mb": peak_mb, "peak_memory_kind": kind}


def benchmark(
    base: str = "dinov2_vits14_imgfocus",
    steps: int = 3,
    batch_size: int = 16,
    compile: bool = False,
    threads: int | None = None,
    variants: tuple[str, ...] = tuple(VARIANTS),
    out: str | Path | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Measure every variant and the matmul peaks, and compare against the goals.

    Timing is interleaved: after one warm-up step each, ``steps`` rounds each time one step of every variant
    and a short bf16 / fp32 matmul run, and the best round is kept for each (the median is reported too). On a
    machine shared with other jobs this compares the variants under the same conditions. Memory and FLOPs come
    from one subprocess per variant.

    Args:
        base: base model (weights do not change speed; architecture and patch size do).
        steps: timed rounds.
        batch_size: images per step.
        compile: ``torch.compile`` the GLARE and DINO-only variants (the naive one is always eager).
        threads: CPU threads for every measurement (None: torch's default, one per core).
        variants: which of :data:`VARIANTS` to run.
        out: write the JSON here too.

    Returns:
        The JSON-able result: machine, matmul FLOP/s, per-variant figures and the goals' verdicts.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if threads:
        torch.set_num_threads(threads)
    say = print if verbose else (lambda *a, **k: None)
    result: dict[str, Any] = {
        "machine": machine_info(),
        "load_average_before": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "base": base,
        "image_size": 224,
        "batch_size": batch_size,
        "rounds": steps,
        "variants": {},
    }
    # 1. Memory and FLOPs, one fresh process per variant.
    for name in variants:
        args = [sys.executable, "-m", "glare_core.bench", "--variant", name, "--base", base]
        args += ["--batch-size", str(batch_size)] + (
            ["--compile"] if compile and name != "naive_fp32" else []
        )
        args += ["--threads", str(threads)] if threads else []
        say(f"{name}: memory and FLOPs ...", flush=True)
        proc = subprocess.run(args, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark variant {name} failed:\n{proc.stderr[-3000:]}")
        result["variants"][name] = json.loads(proc.stdout.strip().splitlines()[-1])

    # 2. Interleaved timing rounds: every variant and the matmul peaks under the same load.
    steps_fn = {}
    for name in variants:
        terms, precision = VARIANTS[name]
        steps_fn[name] = build_step(
            bench_config(base, batch_size, terms, precision, compile and name != "naive_fp32")
        )
        steps_fn[name](0)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in [*variants, "matmul_bf16", "matmul_fp32"]}
    for r in range(steps):
        times["matmul_bf16"].append(matmul_flops(torch.bfloat16, device=device, seconds=1.0))
        times["matmul_fp32"].append(matmul_flops(torch.float32, device=device, seconds=1.0))
        for name in variants:
            t0 = time.perf_counter()
            steps_fn[name](1 + r)
            times[name].append(time.perf_counter() - t0)
        say(f"round {r + 1}/{steps}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in variants), flush=True)
    peak = {"bf16": max(times["matmul_bf16"]), "fp32": max(times["matmul_fp32"])}
    result["matmul_flops"] = {**peak, "n": 2048, "all_rounds": {k: times[f"matmul_{k}"] for k in peak}}
    say(f"matmul 2048^3 (best round): bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s, fp32 {peak['fp32'] / 1e9:.0f}")
    for name in variants:
        fig = result["variants"][name]
        best = min(times[name])
        fig.update(
            precision=VARIANTS[name][1],
            seconds_per_step=best,
            seconds_per_step_median=statistics.median(times[name]),
            seconds_all_rounds=times[name],
            images_per_s=batch_size / best,
            achieved_flops=fig["flops_per_step"] / best,
        )
        fig["fraction_of_bf16_matmul_peak"] = fig["achieved_flops"] / peak["bf16"]
        fig["fraction_of_own_precision_matmul_peak"] = fig["achieved_flops"] / peak[fig["precision"]]
        say(
            f"{name}: {fig['images_per_s']:.2f} img/s, {best:.2f} s/step (median "
            f"{fig['seconds_per_step_median']:.2f}), peak {fig['peak_memory_mb']:.0f} MB, "
            f"{fig['achieved_flops'] / 1e9:.0f} GFLOP/s "
            f"({100 * fig['fraction_of_bf16_matmul_peak']:.0f} % of bf16 matmul)"
        )
    result["load_average_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    v = result["variants"]
    if {"glare", "dino_only", "naive_fp32"} <= set(v):
        speedup = v["glare"]["images_per_s"] / v["naive_fp32"]["images_per_s"]
        slowdown = 1 - v["glare"]["images_per_s"] / v["dino_only"]["images_per_s"]
        frac = v["glare"]["fraction_of_bf16_matmul_peak"]
        result["goals"] = {
            "speedup_vs_naive_fp32": {"value": speedup, "goal": ">= 2.5", "met": speedup >= 2.5},
            "slowdown_vs_dino_only": {"value": slowdown, "goal": "<= 0.15", "met": slowdown <= 0.15},
            "fraction_of_bf16_matmul": {"value": frac, "goal": ">= 0.40", "met": frac >= 0.40},
        }
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _main(argv: list[str] | None = None) -> int:
    """Subprocess entry: one variant's peak memory and FLOPs, printed as one JSON line."""
    p = argparse.ArgumentParser()
    p.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    p.add_argument("--base", default="dinov2_vits14_imgfocus")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    terms, precision = VARIANTS[a.variant]
    cfg = bench_config(a.base, a.batch_size, terms, precision, compile=a.compile)
    print(json.dumps(memory_and_flops(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
