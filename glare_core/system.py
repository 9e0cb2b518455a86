"""What machine this is, as the project sees it: the record every result carries and ``glare system`` prints.

In the spirit of ``python -m torch.utils.collect_env``, but about what decides this project's speed and
results: the processor and the kernels torch uses on it, threads, versions, a GPU if any, the measured
float32 and bf16 matmul throughput with the precision ``auto`` picks from it (:mod:`glare_core.precision`),
and the data roots and caches found.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from .precision import KERNEL_LIMIT_VARIABLES, cpu_flags, cpu_model


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model and flags, torch CPU capability, cores, threads, torch / timm / Python versions, the GPU."""
    gpu = None
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        gpu = f"{torch.cuda.get_device_name()} (compute capability {major}.{minor})"
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "python": platform.python_version(),
        "gpu": gpu,
        # set only to emulate a processor without some instruction sets on this one (see glare_core.precision)
        "kernel_limits": {k: os.environ[k] for k in KERNEL_LIMIT_VARIABLES if k in os.environ},
    }


def run_machine(device: torch.device, **precision: str) -> dict[str, Any]:
    """Where a run ran, as its result records it: the device, its precision (the caller's key and value,
    e.g. ``train_precision="bf16"``), torch, threads, CPU count and platform."""
    return {
        "device": str(device),
        **precision,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def system_report(refresh: bool = False) -> dict[str, Any]:
    """:func:`machine_info` plus the precision ``auto`` picks and why, the data roots and the caches.

    Args:
        refresh: measure the matmul throughput again instead of reading the per-machine cache.
    """
    from .paths import cache_dir, data_roots
    from .precision import measure_cpu_matmul, resolve_precision

    info = machine_info()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    matmul = measure_cpu_matmul(refresh=refresh)
    auto = resolve_precision("auto", device)
    cache = cache_dir()
    return {
        **info,
        "cpu_matmul_gflops": {
            "fp32": matmul["fp32"],
            "bf16": matmul["bf16"],
            "from_cache": bool(matmul["cached"]),
        },
        "auto_precision": {"device": device, "precision": auto.name, "why": auto.reason},
        "data_roots": [{"path": str(r), "exists": r.is_dir()} for r in data_roots()],
        "data_dir_env": os.environ.get("GLARE_DATA_DIR"),
        "cache": str(cache),
        "cached_weights": sorted(p.name for p in (cache / "weights").glob("*.safetensors")),
        "hub_offline": os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "no"),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned ``key: value`` lines for a terminal."""
    m = report["cpu_matmul_gflops"]
    a = report["auto_precision"]
    lines = [
        ("processor", report["cpu"]),
        ("cpu flags", " ".join(report["cpu_flags"]) or "-"),
        ("torch CPU capability", report["cpu_capability"]),
        ("cores (usable)", f"{report['cores']} ({report['affinity_cores']})"),
        ("torch threads", report["torch_threads"]),
        ("torch / timm / python", f"{report['torch']} / {report['timm']} / {report['python']}"),
        ("GPU", report["gpu"] or "none"),
        (
            "CPU matmul GFLOP/s",
            f"fp32 {m['fp32']:.1f}, bf16 {m['bf16']:.1f} ({m['bf16'] / max(m['fp32'], 1e-9):.2f}x)"
            + (" [cached; --refresh measures again]" if m["from_cache"] else " [measured now]"),
        ),
        ("precision auto", f"{a['precision']} on {a['device']}: {a['why']}"),
        ("GLARE_DATA_DIR", report["data_dir_env"] or "(not set)"),
    ]
    lines += [
        ("data root", f"{r['path']} ({'found' if r['exists'] else 'absent'})") for r in report["data_roots"]
    ]
    lines += [
        ("cache", report["cache"]),
        ("cached base weights", ", ".join(report["cached_weights"]) or "none"),
        ("HF_HUB_OFFLINE", "1 (no hub downloads)" if report["hub_offline"] else "0"),
    ]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)
