"""Training-step benchmark: images/s, peak memory and achieved FLOP/s of the real training step (not a test).

The step timed is :func:`glare_core.train.train_step` on a run built by :func:`glare_core.train.build_run`,
the very function :func:`~glare_core.train.pretrain` calls (parameter groups, schedules, head warm-up,
GradScaler, clipping, EMA), on a fixed random batch. Measured in one run, on this machine, for a ViT-S at
224 px:

* ``glare``: the GLARE step (G + L + R) in the precision ``auto`` picks here (:mod:`glare_core.precision`);
* ``dino_only``: the DINO-only continual pre-training step (the global term only), same precision: GLARE's
  overhead;
* ``glare_<p>``: the GLARE step forced to each precision this device offers (CPU: bf16, fp32; CUDA: bf16 if
  native, fp16, fp32): what ``auto`` gains or avoids;
* ``glare_trunk<n>`` (asked for by name, e.g. ``--variants glare glare_trunk8``): the GLARE step with the
  cached frozen trunk of n blocks (:mod:`glare_core.trunk`), same precision and view size, on a bank built
  from the same batch; the bank's build (views, patch corruption and blocks 0..n-1 for one pair of views per
  image) is timed separately in the same rounds and reported as ``bank_images_per_s``;

plus this machine's own matmul throughput (1024 x 1024 products in bf16, fp16 on CUDA, and fp32), so that
the step's achieved FLOP/s (counted with ``torch.utils.flop_counter.FlopCounterMode`` over one step) is
reported as a fraction of the peak of its own precision, measured in the same run (on CUDA the usual MFU).

Peak memory (``ru_maxrss`` on CPU, ``torch.cuda.max_memory_allocated`` on CUDA) and FLOPs come from one fresh
subprocess per variant; the timings from interleaved rounds in one process (best round kept, median reported),
so that the variants are compared under the same load on a machine shared with other jobs. Goals: on a
processor without fast bf16, ``auto`` at least 5x faster than forced bf16; where bf16 is fast, ``auto`` no
slower than bf16 (within 5 %); the ``auto`` step at >= 40 % of its precision's matmul peak; GLARE at most
15 % slower than DINO-only; every trunk variant at least 3x the images/s of the full-depth GLARE step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
from .precision import AUTOCAST_DTYPES, matmul_gflops, resolve_precision
from .provenance import git_commit, git_dirty
from .runs import atomic_write_json
from .system import machine_info

#: Variant -> (objective terms, requested precision). ``glare`` and ``dino_only`` use ``auto``.
BASE_VARIANTS = {"glare": ("glare", "auto"), "dino_only": ("dino", "auto")}
MATMUL_N = 1024
TRUNK_VARIANT = re.compile(r"glare_trunk(\d+)$")


def forced_variants(device: str) -> dict[str, tuple[str, str]]:
    """``glare_<p>`` for every precision this device can run: bf16 and fp32 on a CPU; on CUDA fp16 too."""
    names = ["bf16", "fp16", "fp32"] if device == "cuda" else ["bf16", "fp32"]
    return {f"glare_{p}": ("glare", p) for p in names}


def all_variants(device: str) -> dict[str, tuple[str, str]]:
    """The variants measured by default (the trunk variants are asked for by name)."""
    return {**BASE_VARIANTS, **forced_variants(device)}


def variant_spec(name: str, device: str) -> tuple[str, str, int | None]:
    """(objective terms, requested precision, trunk blocks or None) of a variant name."""
    known = all_variants(device)
    if name in known:
        return (*known[name], None)
    match = TRUNK_VARIANT.match(name)
    if match:
        return "glare", "auto", int(match.group(1))
    raise ValueError(f"unknown benchmark variant {name!r}; choose from {list(known)} or glare_trunk<n>")


def bench_config(
    base: str,
    batch_size: int,
    terms: str,
    precision: str,
    compile: bool = False,
    trunk_blocks: int | None = None,
) -> TrainConfig:
    """The training config of one variant: ViT-S at 224 px views, the cpu preset's heads."""
    from .config import preset

    cfg = preset("cpu")
    cfg.base, cfg.batch_size, cfg.precision, cfg.compile = base, batch_size, precision, compile
    cfg.trunk_blocks, cfg.trunk_pairs = trunk_blocks, 1
    cfg.load_size = 256
    apply_overrides(cfg, ["objective.views.global_size=224"])
    if terms == "dino":
        apply_overrides(cfg, ["objective.use_local=false", "objective.use_regional=false"])
    return cfg


def build_step(cfg: TrainConfig, total_steps: int = 1000) -> tuple[Callable[[int], None], str]:
    """:func:`glare_core.train.train_step` of ``cfg`` on a fixed random batch; returns (step, precision used).

    The run is built with :func:`glare_core.train.build_run` exactly as :func:`~glare_core.train.pretrain`
    builds it; the step numbers given start after the head warm-up, so the adapters train as well. With
    ``cfg.trunk_blocks`` the step reads a bank of one pair of views per image of the batch (built here, in
    memory, by :func:`glare_core.trunk.encode_entries`), and ``step.build_bank()`` builds that bank again and
    returns its seconds; otherwise ``step.build_bank`` is None.
    """
    from .distributed import DistInfo
    from .precision import autocast
    from .train import build_run, train_step
    from .trunk import STORAGE_DTYPES, TrunkBank, encode_entries, entry_seed

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run = build_run(cfg, DistInfo(device=device), total_steps, verbose=False)
    run.model.train()
    images = torch.rand(cfg.batch_size, 3, cfg.load_size, cfg.load_size, device=device)
    offset = run.head_warmup
    inputs: dict[str, Any] = {"batch": images}  # what the step reads: the images, or the bank's entries
    build_bank: Callable[[], float] | None = None
    if cfg.trunk_blocks:
        n, seeds = cfg.trunk_blocks, [entry_seed(cfg.trunk_seed, i, 0) for i in range(len(images))]
        side = cfg.objective.views.global_size // run.model.patch_size

        def build_bank() -> float:
            t0 = time.perf_counter()
            run.model.eval()
            with autocast(device, run.precision):
                tensors = encode_entries(
                    run.model, run.objective, images, seeds, n, STORAGE_DTYPES[cfg.trunk_storage]
                )
            run.model.train()
            seconds = time.perf_counter() - t0
            bank = TrunkBank(tensors, 1, n, (side, side), corrupted=cfg.objective.use_local)
            inputs["batch"] = bank.batch(range(len(bank)), device)
            return seconds

        build_bank()

    def step(i: int) -> None:
        train_step(run, inputs["batch"], offset + i)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step.build_bank = build_bank  # type: ignore[attr-defined]
    return step, run.precision.name


def memory_and_flops(cfg: TrainConfig) -> dict[str, Any]:
    """Peak memory of this process over two steps, and the FLOPs of one step (``FlopCounterMode``).

    Run it in a fresh process (``python -m glare_core.bench --variant ...``) so the peak is the variant's own.
    """
    from torch.utils.flop_counter import FlopCounterMode

    step, precision = build_step(cfg)
    with FlopCounterMode(display=False) as counter:
        step(0)
    step(1)
    if torch.cuda.is_available():
        peak_mb, kind = torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    else:
        peak_mb, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"
    return {
        "flops_per_step": counter.get_total_flops(),
        "peak_memory_mb": peak_mb,
        "peak_memory_kind": kind,
        "precision": precision,
    }


def _goals(v: dict[str, Any], auto_precision: str) -> dict[str, Any]:
    goals: dict[str, Any] = {}
    if "glare" in v and "glare_bf16" in v:
        ratio = v["glare"]["images_per_s"] / v["glare_bf16"]["images_per_s"]
        if auto_precision == "bf16":
            goals["auto_vs_forced_bf16"] = {"value": ratio, "goal": ">= 0.95 (bf16 is fast here)"}
            goals["auto_vs_forced_bf16"]["met"] = ratio >= 0.95
        else:
            goals["auto_vs_forced_bf16"] = {
                "value": ratio,
                "goal": ">= 5 (bf16 is slow here)",
                "met": ratio >= 5,
            }
    if "glare" in v:
        frac = v["glare"]["fraction_of_own_precision_matmul_peak"]
        goals["fraction_of_own_precision_matmul_peak"] = {
            "value": frac,
            "goal": ">= 0.40",
            "met": frac >= 0.40,
        }
    if "glare" in v and "dino_only" in v:
        slowdown = 1 - v["glare"]["images_per_s"] / v["dino_only"]["images_per_s"]
        goals["slowdown_vs_dino_only"] = {"value": slowdown, "goal": "<= 0.15", "met": slowdown <= 0.15}
    for name in v:
        if TRUNK_VARIANT.match(name) and "glare" in v:
            speedup = v[name]["images_per_s"] / v["glare"]["images_per_s"]
            goals[f"{name}_speedup"] = {"value": speedup, "goal": ">= 3 (vs glare)", "met": speedup >= 3}
    return goals


def _in_subprocess(
    name: str, base: str, batch_size: int, compile: bool, threads: int | None
) -> dict[str, Any]:
    """:func:`memory_and_flops` of one variant in a fresh process, so the peak memory is the variant's own."""
    args = [sys.executable, "-m", "glare_core.bench", "--variant", name, "--base", base]
    args += ["--batch-size", str(batch_size)]
    args += ["--compile"] if compile else []
    args += ["--threads", str(threads)] if threads else []
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark variant {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _timing_rounds(
    specs: dict[str, tuple[str, str, int | None]],
    base: str,
    batch_size: int,
    compile: bool,
    rounds: int,
    device: str,
    say: Callable[..., None],
) -> dict[str, dict[str, list[float]]]:
    """After one warm-up step of each variant, ``rounds`` rounds of: a matmul run per precision, one step of
    every variant, one bank build of every trunk variant.

    Returns:
        one value per round: ``"steps"``: {variant: seconds per step}, ``"banks"``: {trunk variant: seconds
        per build}, ``"matmul"``: {precision: FLOP/s}.
    """
    steps_fn = {}
    for name, (terms, precision, trunk) in specs.items():
        cfg = bench_config(base, batch_size, terms, precision, compile and name != "glare_fp32", trunk)
        steps_fn[name], _ = build_step(cfg)
        steps_fn[name](0)  # warm-up
    banks = [name for name in specs if getattr(steps_fn[name], "build_bank", None) is not None]
    dtypes = {"fp32": torch.float32, **{p: AUTOCAST_DTYPES[p] for p in ("bf16", "fp16") if device == "cuda"}}
    if device == "cpu":
        dtypes["bf16"] = torch.bfloat16
    times: dict[str, dict[str, list[float]]] = {
        "steps": {name: [] for name in specs},
        "banks": {name: [] for name in banks},
        "matmul": {p: [] for p in dtypes},
    }
    shape = (MATMUL_N, MATMUL_N, MATMUL_N)
    for r in range(rounds):
        for p, dtype in dtypes.items():
            times["matmul"][p].append(1e9 * matmul_gflops(dtype, shape, seconds=1.0, device=device))
        for name, seconds in times["steps"].items():
            t0 = time.perf_counter()
            steps_fn[name](1 + r)
            seconds.append(time.perf_counter() - t0)
        for name, seconds in times["banks"].items():
            seconds.append(steps_fn[name].build_bank())  # type: ignore[attr-defined]
        last = ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times["steps"].items())
        say(f"round {r + 1}/{rounds}: {last}", flush=True)
    return times


def _add_timings(
    fig: dict[str, Any], seconds: list[float], batch_size: int, requested: str, peak: dict[str, float]
) -> None:
    """Add a variant's timing figures to its memory-and-FLOPs record ``fig`` (best round, median, all)."""
    best = min(seconds)
    fig.update(
        requested_precision=requested,
        seconds_per_step=best,
        seconds_per_step_median=statistics.median(seconds),
        seconds_all_rounds=seconds,
        images_per_s=batch_size / best,
        achieved_flops=fig["flops_per_step"] / best,
    )
    fig["fraction_of_own_precision_matmul_peak"] = fig["achieved_flops"] / peak[fig["precision"]]


def _bank_figures(seconds: list[float], batch_size: int) -> dict[str, Any]:
    """A trunk variant's bank build: best seconds, every round, images per second."""
    return {
        "bank_seconds": min(seconds),
        "bank_seconds_all_rounds": seconds,
        "bank_images_per_s": batch_size / min(seconds),
    }


def benchmark(
    base: str = "dinov2_vits14_imgfocus",
    steps: int = 3,
    batch_size: int = 16,
    compile: bool = False,
    threads: int | None = None,
    variants: tuple[str, ...] | None = None,
    out: str | Path | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Measure every variant and the matmul peaks, and compare against the goals.

    Timing is interleaved: after one warm-up step each, ``steps`` rounds each time one step of every variant
    and a short matmul run per precision, and the best round is kept for each (the median is reported too).
    Memory and FLOPs come from one subprocess per variant.

    Args:
        base: base model (weights do not change speed; architecture and patch size do).
        steps: timed rounds.
        batch_size: images per step.
        compile: ``torch.compile`` every variant but the forced fp32 one.
        threads: CPU threads for every measurement (None: torch's default, one per core).
        variants: which of :func:`all_variants` (or ``glare_trunk<n>``) to run (default: all of the former).
        out: write the JSON here too (atomically).

    Returns:
        The JSON-able result: machine, the precision ``auto`` picks and why, matmul GFLOP/s per precision,
        per-variant figures and the goals' verdicts.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if threads:
        torch.set_num_threads(threads)
    variants = tuple(variants or all_variants(device))
    specs = {name: variant_spec(name, device) for name in variants}  # ValueError for an unknown name
    say = print if verbose else (lambda *a, **k: None)
    commit, dirty = git_commit(), git_dirty()  # the code at the start (and whether glare_core had changes)
    auto = resolve_precision("auto", device)
    say(f"auto precision here: {auto.name} ({auto.reason})", flush=True)
    result: dict[str, Any] = {
        "machine": machine_info(),
        "load_average_before": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "base": base,
        "image_size": 224,
        "batch_size": batch_size,
        "rounds": steps,
        "step": "glare_core.train.train_step",
        "git_commit": commit,
        "git_dirty": dirty,
        "auto_precision": auto.to_dict(),
        "variants": {},
    }
    # 1. Memory and FLOPs, one fresh process per variant.
    for name in variants:
        say(f"{name}: memory and FLOPs ...", flush=True)
        result["variants"][name] = _in_subprocess(
            name, base, batch_size, compile and name != "glare_fp32", threads
        )

    # 2. Interleaved timing rounds: every variant and the matmul peaks under the same load.
    times = _timing_rounds(specs, base, batch_size, compile, steps, device, say)
    peak = {p: max(flops) for p, flops in times["matmul"].items()}
    result["matmul_flops"] = {**peak, "n": MATMUL_N, "all_rounds": times["matmul"]}
    say("matmul (best round): " + ", ".join(f"{p} {f / 1e9:.0f} GFLOP/s" for p, f in peak.items()))

    # 3. Each variant's figures: the best round, against its own precision's matmul peak.
    for name in variants:
        fig = result["variants"][name]
        _add_timings(fig, times["steps"][name], batch_size, specs[name][1], peak)
        if name in times["banks"]:  # the bank's build, timed in the same rounds: one pair of views per image
            fig.update(trunk_blocks=specs[name][2], **_bank_figures(times["banks"][name], batch_size))
            say(f"{name} bank build: {fig['bank_images_per_s']:.2f} img/s ({fig['bank_seconds']:.2f} s)")
        say(
            f"{name} ({fig['precision']}): {fig['images_per_s']:.2f} img/s, {fig['seconds_per_step']:.2f} "
            f"s/step (median {fig['seconds_per_step_median']:.2f}), peak {fig['peak_memory_mb']:.0f} MB, "
            f"{fig['achieved_flops'] / 1e9:.0f} GFLOP/s "
            f"({100 * fig['fraction_of_own_precision_matmul_peak']:.0f} % of the {fig['precision']} peak)"
        )
    result["load_average_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    result["goals"] = _goals(result["variants"], auto.name)
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, result)
    return result


def _main(argv: list[str] | None = None) -> int:
    """Subprocess entry: one variant's peak memory and FLOPs, printed as one JSON line."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    p = argparse.ArgumentParser()
    p.add_argument("--variant", required=True, help="a name of all_variants() or glare_trunk<n>")
    p.add_argument("--base", default="dinov2_vits14_imgfocus")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    terms, precision, trunk = variant_spec(a.variant, device)
    cfg = bench_config(a.base, a.batch_size, terms, precision, compile=a.compile, trunk_blocks=trunk)
    print(json.dumps(memory_and_flops(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
