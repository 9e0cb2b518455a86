"""Mixed precision chosen on purpose: which autocast dtype a run uses, measured rather than guessed.

bf16 autocast is the fast path only where the hardware multiplies bf16 matrices natively: GPUs from Ampere
on, and CPUs with AMX or AVX512_BF16 units. Elsewhere it is a trap: on a 2-core AMD EPYC with torch,
oneDNN and MKL limited to AVX2 kernels (an emulation of a processor without bf16 units), a 1024^3 bf16 matmul
ran at 1.25 GFLOP/s against 88 in float32 and the GLARE training step was 14x slower in bf16 than in float32
(``results/efficiency/bench_amd_epyc_avx2_kernels.json``). So ``precision="auto"`` (the default of
every command) decides from a measurement:

* **CUDA**: bf16 where the GPU has native bf16 (``torch.cuda.is_bf16_supported(including_emulation=False)``,
  compute capability >= 8.0), else fp16 with a ``GradScaler`` (a T4);
* **CPU**: bf16 when a bf16 matmul of ViT-S linear-layer shape measured at least :data:`BF16_MIN_SPEEDUP`
  times the float32 one on this machine, else float32. The measurement takes about a second and is cached per
  machine (CPU model, torch CPU capability, torch version, threads) in ``<cache>/precision.json``;
  ``glare system`` shows it.

Forced precisions are kept as asked, except that bf16 on a GPU without bf16 becomes fp16 (with a warning) and
fp16 on a CPU is refused (CPU fp16 matmuls run at about 2 GFLOP/s).

Which tensors are in which dtype (the rule this package follows everywhere):

* frozen *base* weights (shared by student and teacher) may be stored once in the autocast dtype
  (:func:`cast_frozen_base_linears`), because autocast would round them to that dtype at every call anyway;
* every trained tensor, every tensor the teacher's EMA averages, optimiser states, losses and exported
  adapters stay float32.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .runs import atomic_write_json

#: The values every ``--precision`` option and ``precision`` setting accept.
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: ``auto`` picks bf16 on a CPU when its bf16 matmul measured at least this many times the float32 one. A
#: training step is not all matmul (autocast adds casts; norms, softmax and the losses stay float32), so a
#: bare 1.0 would not pay; measured ratios fall far on either side: 0.01-0.06x (AVX2 kernels only, emulated),
#: 3-5x (AVX512_BF16, a 2-core AMD EPYC), 5.1x (AMX, ``results/efficiency/bench_intel_xeon_amx_v1.json``).
BF16_MIN_SPEEDUP = 2.0
#: The matmul that is timed: (tokens, width) x (width, 4 width) of a ViT-S MLP, 1024 tokens.
PROBE_SHAPE = (1024, 384, 1536)
#: Environment variables that restrict the kernels torch, oneDNN and MKL may use; with
#: ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` a processor with bf16 units behaves, for bf16 matrix
#: products, like one without (measured here: bf16 matmul from 4.8x to 0.06x the float32 rate).
KERNEL_LIMIT_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
_CACHE_FILE = "precision.json"
_CACHE_VERSION = 2  # 2: best of interleaved rounds, library start-up outside the timing


@dataclass(frozen=True)
class Precision:
    """The precision a run uses and why.

    Attributes:
        name: ``"bf16"``, ``"fp16"`` or ``"fp32"`` (never ``"auto"``).
        requested: what was asked for (``"auto"`` or a forced value).
        reason: one sentence a person can check.
        device: ``"cpu"`` or ``"cuda"``.
        matmul_gflops: the measurement behind an ``auto`` choice on a CPU ({"fp32": .., "bf16": ..}), or None.
    """

    name: str
    requested: str
    reason: str
    device: str
    matmul_gflops: dict[str, float] | None = None

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for float32."""
        return AUTOCAST_DTYPES.get(self.name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list[str]:
    """The processor's flags that decide bf16 speed (``amx_bf16``, ``avx512_bf16``, ``avx2`` ...)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                keep = ("amx", "avx512_bf16", "avx512f", "avx2", "avx_vnni", "fma")
                return sorted(f for f in flags if f.startswith(keep))
    except OSError:
        pass
    return []


def matmul_gflops(
    dtype: torch.dtype, shape: tuple[int, int, int] = PROBE_SHAPE, seconds: float = 0.3, device: str = "cpu"
) -> float:
    """Measured GFLOP/s of ``(m, k) @ (k, n)`` products in ``dtype`` (2 m k n FLOPs each), for ``seconds``.

    When the first (warm-up) product alone takes longer than ``seconds`` it is the measurement: on a processor
    without bf16 units one bf16 product of this shape takes about a second.
    """
    m, k, n = shape
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a[:64, :64] @ b[:64, :64]  # library and thread-pool start-up, kernel selection
    sync()
    t0 = time.perf_counter()
    a @ b  # warm-up; on a slow path (one product longer than ``seconds``) it is also the measurement
    sync()
    first = time.perf_counter() - t0
    if first >= seconds:
        return 2 * m * k * n / first / 1e9
    reps, t0 = 0, time.perf_counter()
    while True:
        a @ b
        sync()
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return 2 * m * k * n * reps / elapsed / 1e9


def _machine_key() -> str:
    """What the CPU measurement depends on: the processor, the kernels torch may use, threads."""
    env = ",".join(f"{k}={os.environ[k]}" for k in KERNEL_LIMIT_VARIABLES if k in os.environ)
    return "|".join(
        [
            cpu_model(),
            torch.backends.cpu.get_cpu_capability(),
            torch.__version__,
            f"threads{torch.get_num_threads()}",
            env,
        ]
    )


def _cache_path() -> Path:
    from .paths import cache_dir

    return cache_dir() / _CACHE_FILE


def measure_cpu_matmul(refresh: bool = False) -> dict[str, float]:
    """float32 and bf16 matmul GFLOP/s on this CPU, from the per-machine cache or measured: the best of three
    interleaved rounds of each (about a second; a few where bf16 is slow).

    Args:
        refresh: measure again even if the cache has this machine.

    Returns:
        ``{"fp32": GFLOP/s, "bf16": GFLOP/s, "cached": 0 or 1}``.
    """
    key = _machine_key()
    path = _cache_path()
    store: dict[str, Any] = {}
    if path.exists():
        try:
            store = json.loads(path.read_text())
            if store.get("version") != _CACHE_VERSION or not isinstance(store.get("machines"), dict):
                store = {}
        except (OSError, json.JSONDecodeError):
            store = {}  # a damaged cache is only a cache: measure again and rewrite it
    hit = store.get("machines", {}).get(key)
    if hit and not refresh and {"fp32", "bf16"} <= set(hit):
        return {"fp32": float(hit["fp32"]), "bf16": float(hit["bf16"]), "cached": 1}
    # Interleaved rounds, best of each: a moment of load from other jobs lowers one round, not the choice.
    rounds = [
        (matmul_gflops(torch.float32, seconds=0.1), matmul_gflops(torch.bfloat16, seconds=0.1))
        for _ in range(3)
    ]
    result = {"fp32": max(r[0] for r in rounds), "bf16": max(r[1] for r in rounds)}
    store = {"version": _CACHE_VERSION, "machines": {**store.get("machines", {}), key: result}}
    try:
        atomic_write_json(path, store)
    except OSError:
        pass  # an unwritable cache costs a second per run, nothing else
    return {**result, "cached": 0}


def _cuda_has_bf16() -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3 has no including_emulation (and no emulation)
        return bool(torch.cuda.is_bf16_supported())


def resolve_precision(requested: str, device: torch.device | str) -> Precision:
    """The precision a run on ``device`` uses when ``requested`` (``"auto"`` or a forced value) is asked.

    Raises:
        ValueError: for an unknown value, or fp16 on a CPU (no fast fp16 arithmetic there).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision={requested!r}: choose one of {PRECISIONS}")
    device = torch.device(device)
    kind = device.type
    if kind == "cuda":
        bf16 = _cuda_has_bf16()
        if requested == "auto":
            if bf16:
                return Precision("bf16", requested, "this GPU has native bf16", kind)
            return Precision("fp16", requested, "this GPU has no native bf16 (fp16 with a GradScaler)", kind)
        if requested == "bf16" and not bf16:
            warnings.warn("this GPU has no native bf16: using fp16 autocast with a GradScaler", stacklevel=2)
            return Precision("fp16", requested, "bf16 asked, but this GPU has no native bf16", kind)
        return Precision(requested, requested, "asked for", kind)
    if requested == "fp16":
        raise ValueError(
            "precision='fp16' needs a GPU (a CPU multiplies fp16 matrices at about 2 GFLOP/s); "
            "use --precision auto, bf16 or fp32"
        )
    if requested != "auto":
        return Precision(requested, requested, "asked for", kind)
    m = measure_cpu_matmul()
    ratio = m["bf16"] / max(m["fp32"], 1e-9)
    measured = {"fp32": m["fp32"], "bf16": m["bf16"]}
    what = f"bf16 matmul {m['bf16']:.0f} vs fp32 {m['fp32']:.0f} GFLOP/s ({ratio:.2f}x) on this CPU"
    if ratio >= BF16_MIN_SPEEDUP:
        return Precision("bf16", requested, f"{what}, >= {BF16_MIN_SPEEDUP:g}x", kind, measured)
    return Precision("fp32", requested, f"{what}, < {BF16_MIN_SPEEDUP:g}x", kind, measured)


def autocast(device: torch.device | str, precision: str | Precision) -> contextlib.AbstractContextManager:
    """Autocast in the resolved precision (bf16 / fp16), or nothing for fp32.

    ``precision`` is a resolved name or :class:`Precision`; ``"auto"`` is resolved here.
    """
    if isinstance(precision, str):
        precision = resolve_precision(precision, device)
    if precision.name == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=AUTOCAST_DTYPES[precision.name])


def cast_frozen_base_linears(modules: list[nn.Module], dtype: torch.dtype) -> int:
    """Store the frozen ``nn.Linear`` weights and biases of ``modules`` in the autocast dtype, once.

    Under autocast every linear layer casts its float32 weight to bf16 / fp16 on every call, and autocast
    caches no casts of frozen weights (``aten::copy_`` was 23 % of a profiled CPU step with a ViT-S). Casting
    them once gives bit-identical results under autocast (the same rounding, done once).

    Pass only modules whose frozen tensors are *base* tensors: the student backbone (whose frozen weights the
    teacher shares, so the teacher gets them too) and a frozen shared head. Never the teacher's own modules:
    its frozen-looking copies of the trained tensors are averaged by the EMA and must stay float32.

    Returns:
        how many linear layers were cast.
    """
    count = 0
    for root in modules:
        for module in root.modules():
            if not isinstance(module, nn.Linear) or module.weight.requires_grad:
                continue
            if module.bias is not None and module.bias.requires_grad:
                continue
            module.weight.data = module.weight.data.to(dtype)
            if module.bias is not None:
                module.bias.data = module.bias.data.to(dtype)
            count += 1
    return count
