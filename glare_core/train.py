"""The training loop: continual self-supervised pre-training of a ViT's UniAdapters with the GLARE objective.

Read it in three pieces: :func:`build_run` (base -> student/teacher -> objective -> optimiser and
schedules), :func:`train_step` (schedules -> loss -> NaN guard -> backward -> clip -> AdamW -> EMA), and
:func:`pretrain`, whose numbered steps read top to bottom: the run folder, the data, the model
(:func:`build_run`), resume, the loop of :func:`train_step` with its logs and checkpoints (its first
``head_warmup_steps`` steps train the heads only), export. ``glare bench`` times the same :func:`train_step`.
The set-up helpers above them (compiling, the frozen base's storage dtype, the attention kernel, parameter
groups, gradient clipping) are the pieces a reader may want to look up. Next to this module:
:mod:`glare_core.feed` (the data feed), :mod:`glare_core.schedules` (lr, weight decay, EMA momentum, tau_t),
:mod:`glare_core.checkpoint` (what a checkpoint holds), :mod:`glare_core.run_report` (``metrics.jsonl``, the
console, ``summary.json``) and :mod:`glare_core.rng` (seeding).

Known (GLARE abstract, Figure 1): a momentum (EMA) teacher, only the student's UniAdapters train.
Design (``glare-method.md`` section 2, "Optimisation", after DINO's ``main_dino.py``): AdamW on the trainable
tensors only, no weight decay on biases and norms, lr 5e-4 * B / 256 with linear warm-up then cosine to 1e-6,
weight decay cosine 0.04 -> 0.4, EMA momentum cosine 0.996 -> 1, gradient clip 3.0, head warm-up with the
adapters' learning rate at 0. Mixed precision is chosen per machine (``precision="auto"``,
:mod:`glare_core.precision`); whatever it is, the trained and averaged tensors stay float32.

Resuming is exact: a run stopped after step k and resumed gives, on CPU, bitwise the same weights as an
uninterrupted run, because the checkpoint holds every piece of state the next step reads: trainable and EMA
tensors, the objective's centres, the optimiser, the step (which fixes the schedules and the data order) and
the random-number states of torch, numpy and Python (per rank); see :mod:`glare_core.checkpoint`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed as dist_utils
from . import runs, telemetry
from .checkpoint import restore_checkpoint, save_checkpoint
from .config import TrainConfig
from .errors import NonFiniteError
from .feed import ImageFeed, ResumableBatchSampler, build_feed, head_init_images
from .objective import GlareObjective
from .precision import Precision, autocast, cast_frozen_base_linears, resolve_precision
from .provenance import code_state
from .rng import seed_everything
from .run_report import (
    append_jsonl,
    data_root,
    progress_bar,
    show_progress,
    summarize,
    truncate_metrics,
)
from .schedules import build_schedules
from .teacher import StudentTeacher, read_adapter
from .trunk import TrunkBatch, check_resumed_bank, check_trunk, prepare_bank, trunk_batches
from .weights import load_base_with_head

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class NonFiniteLossError(NonFiniteError, RuntimeError):
    """The loss (or the weights about to be checkpointed) became NaN or infinite; the last good checkpoint is
    left untouched."""


# ---------------------------------------------------------------------------- set-up helpers
def maybe_compile(model: nn.Module, enabled: bool) -> None:
    """``torch.compile`` every transformer block of the student and the teacher, in place.

    Blocks are compiled with ``nn.Module.compile`` (state-dict keys unchanged, so checkpoints of compiled and
    eager runs are interchangeable). Compiler failures happen at the first call; ``suppress_errors`` makes
    Dynamo warn and run that code eagerly instead of failing the run.
    """
    if not enabled:
        return
    try:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True
        for backbone in (model.student, model.teacher):
            for block in backbone.vit.blocks:
                block.compile(dynamic=False)
    except Exception as e:  # noqa: BLE001 - any compiler set-up failure falls back to eager
        warnings.warn(
            f"torch.compile failed ({type(e).__name__}: {e}); continuing in eager mode", stacklevel=2
        )


def cast_frozen_base(model: StudentTeacher, dtype: torch.dtype) -> int:
    """Store the frozen base linear weights of a student/teacher model in the autocast dtype, once.

    Only the base: the student backbone's frozen linears (the teacher shares those very tensors) and a frozen
    shared head. The teacher's own copies of trained tensors (adapters, new heads, every weight in full
    fine-tuning) are averaged by the EMA and stay float32 (:mod:`glare_core.precision`). Returns how many
    linear layers were cast.
    """
    modules: list[nn.Module] = [model.student]
    if not model.train_heads:
        modules.append(model.student_head)
    return cast_frozen_base_linears(modules, dtype)


def select_attention(model: nn.Module, kind: str, device: torch.device, precision: str) -> str:
    """Choose the ViT blocks' attention kernel (timm's ``fused_attn`` switch); returns the kernel used.

    ``"auto"`` picks the explicit ``softmax(q k^T) v`` ("math") under bf16 on a CPU, where PyTorch's fused CPU
    kernel measured 2.1x slower than the explicit one for forward + backward (the fused kernel is the faster
    one in fp32 and on GPUs). Both compute the same attention; only rounding differs.
    """
    if kind == "auto":
        kind = "math" if device.type == "cpu" and precision == "bf16" else "fused"
    for module in model.modules():
        if hasattr(module, "fused_attn") and hasattr(module, "qkv"):
            module.fused_attn = kind == "fused"
    return kind


def clip_gradients(params: list[nn.Parameter], clip: float, mode: str = "global") -> torch.Tensor:
    """Clip gradients in place; returns the total gradient norm before clipping (for the logs).

    ``"global"``: one factor for all tensors (``torch.nn.utils.clip_grad_norm_``). ``"per_tensor"``: each
    tensor's gradient is scaled to norm at most ``clip`` on its own (DINO's ``utils.clip_gradients``). A
    ``clip`` of 0 or less clips nothing.
    """
    if mode == "global":
        return torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
    grads = [p.grad for p in params if p.grad is not None]
    total = (
        torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else None
    )
    if clip > 0:
        for g in grads:
            norm = torch.linalg.vector_norm(g)
            g.mul_(torch.clamp(clip / (norm + 1e-6), max=1.0))
    return total if total is not None else torch.zeros(())


def param_groups(groups: dict[str, list[nn.Parameter]]) -> list[dict[str, Any]]:
    """AdamW groups from ``StudentTeacher.param_groups()``: {adapter, head} x {decay, no decay}.

    Biases, norm weights and other 1-d tensors get no weight decay (DINO's ``get_params_groups``); each
    group's ``lr`` and ``weight_decay`` are set from the schedules at every step.
    """
    out = []
    for kind, params in groups.items():
        for decay in (True, False):
            ps = [p for p in params if p.requires_grad and (p.ndim > 1) == decay]
            if ps:
                out.append({"params": ps, "kind": kind, "apply_wd": decay, "weight_decay": 0.0})
    return out


def with_cpu_threads(fn):
    """Run ``fn(cfg, ...)`` with ``torch.set_num_threads(cfg.num_threads)`` if set; restore it after."""

    @functools.wraps(fn)
    def wrapper(cfg: TrainConfig, *args, **kwargs):
        threads = torch.get_num_threads()
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        try:
            return fn(cfg, *args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


# ---------------------------------------------------------------------------- one run, one step
@dataclasses.dataclass
class Run:
    """Everything a training step reads and changes; built by :func:`build_run`.

    Attributes:
        cfg: the run's configuration.
        model: the :class:`~glare_core.teacher.StudentTeacher` (frozen base, student adapters, EMA teacher).
        student: ``model``, wrapped in ``DistributedDataParallel`` when several processes train.
        objective: the GLARE objective (global, local and regional terms; its centres are state too).
        optimizer: AdamW over the trainable tensors, groups {adapter, head} x {decay, no decay}.
        scaler: the fp16 ``GradScaler`` (disabled in bf16 and fp32).
        params: the trainable tensors (gradient clipping).
        schedules: per-step ``lr``, ``wd`` and ``momentum`` arrays of length ``total_steps``.
        precision: the resolved precision (:class:`~glare_core.precision.Precision`).
        attention: the attention kernel the blocks use (``"fused"`` or ``"math"``, :func:`select_attention`).
        info: this process's rank, world size and device.
        head_warmup: steps during which only the heads train.
        frozen: storage pointers of the frozen base tensors (left out of checkpoints).
        total_steps: the run's length.
    """

    cfg: TrainConfig
    model: StudentTeacher
    student: nn.Module
    objective: GlareObjective
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    params: list[nn.Parameter]
    schedules: dict[str, np.ndarray]
    precision: Precision
    attention: str
    info: Any
    head_warmup: int
    frozen: set[int]
    total_steps: int

    @property
    def device(self) -> torch.device:
        return self.info.device


def build_run(
    cfg: TrainConfig,
    info: Any,
    total_steps: int,
    head_images: torch.Tensor | None = None,
    verbose: bool = True,
) -> Run:
    """The frozen base, student and EMA teacher, objective, optimiser and schedules of a run.

    Args:
        cfg: the configuration; ``cfg.precision`` may be ``"auto"`` (resolved here, see
            :func:`glare_core.precision.resolve_precision`).
        info: :class:`glare_core.distributed.DistInfo` of this process.
        total_steps: the run's length (fixes the schedules).
        head_images: (n, 3, S, S) target images in [0, 1] that standardise the input of new heads (the
            ``"data"`` head init); None leaves the heads as initialised (a resumed run loads its own).
        verbose: say what was loaded and chosen (rank 0 only).
    """
    device = info.device
    say = info.is_main and verbose
    precision = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed)  # same initial weights on every rank
    backbone, head_state = load_base_with_head(cfg.base, verbose=say)
    check_trunk(cfg, backbone.depth)  # trunk_blocks: no tuning modules before block n (glare_core.trunk)
    model = StudentTeacher(
        backbone, cfg.student_teacher_config(), head_state_dict=head_state, base_name=cfg.base
    ).to(device)
    if head_images is not None and model.train_heads and cfg.heads.init == "data":
        stats = model.init_heads_from_data(head_images.to(device))
        if say:
            print(f"[glare] new heads standardised on {len(head_images)} target images ({stats})", flush=True)
    if precision.dtype is not None:  # frozen base weights stored once in the autocast dtype: same results
        cast_frozen_base(model, precision.dtype)
    attention = select_attention(model, cfg.attention, device, precision.name)
    if say:
        print(f"[glare] precision {precision.name} ({precision.requested}: {precision.reason})", flush=True)
    frozen = {p.data_ptr() for p in backbone.parameters() if not p.requires_grad}  # never in checkpoints
    objective_cfg = cfg.objective
    if cfg.teacher_temp_warmup_fraction is not None:  # tau_t warm-up over a fraction of this run (DINO: 30 %)
        warm_steps = round(cfg.teacher_temp_warmup_fraction * total_steps)
        objective_cfg = dataclasses.replace(objective_cfg, warmup_teacher_temp_steps=warm_steps)
    objective = GlareObjective(objective_cfg).to(device)
    maybe_compile(model, cfg.compile)
    # The student pass is model.forward, so DDP can wrap the model (and average gradients over the ranks).
    unused = _heads_may_be_unused(model, cfg)
    student = dist_utils.wrap_ddp(model, info, find_unused_parameters=unused)
    groups = param_groups(model.param_groups())
    return Run(
        cfg=cfg,
        model=model,
        student=student,
        objective=objective,
        optimizer=torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0),
        scaler=torch.amp.GradScaler(device.type, enabled=precision.name == "fp16"),
        params=[p for g in groups for p in g["params"]],
        schedules=build_schedules(cfg, total_steps),
        precision=precision,
        attention=attention,
        info=info,
        head_warmup=cfg.head_warmup_steps if model.train_heads else 0,
        frozen=frozen,
        total_steps=total_steps,
    )


def train_step(run: Run, images: torch.Tensor | TrunkBatch, step: int) -> dict[str, float]:
    """One optimisation step: schedules -> loss -> NaN guard -> backward -> clip -> AdamW -> EMA.

    The function :func:`pretrain` calls at every step, and the one ``glare bench`` times.

    Args:
        run: from :func:`build_run`.
        images: (B / world_size, 3, S, S) float in [0, 1], this rank's slice of the global batch; with
            ``trunk_blocks`` a :class:`~glare_core.trunk.TrunkBatch` of cached views instead.
        step: the step number (0-based); picks the schedules' values and seeds nothing.

    Returns:
        The step's record: ``loss`` and each term (averaged over the ranks), ``lr``, ``lr_adapter``, ``wd``,
        ``momentum``, ``grad_norm``.

    Raises:
        NonFiniteLossError: before any weight changes, when the loss is NaN or infinite on any rank.
    """
    lr, wd, momentum = (float(run.schedules[k][step]) for k in ("lr", "wd", "momentum"))
    for group in run.optimizer.param_groups:
        warm = group["kind"] == "adapter" and step < run.head_warmup
        group["lr"] = 0.0 if warm else lr
        group["weight_decay"] = wd if group["apply_wd"] else 0.0

    with autocast(run.device, run.precision):  # views, teacher and student passes, L_G + L_L + L_R
        loss, logs = run.objective(run.student, images, step)  # (the centres are updated inside, no grad)
    # NaN guard: agree across ranks, stop before touching the weights.
    finite = torch.tensor([float(torch.isfinite(loss.detach()).all())], device=run.device)
    dist_utils.all_reduce_mean(finite, run.info)
    if finite.item() < 1.0:
        terms = {k: _scalar(v) for k, v in logs.items()}
        raise NonFiniteLossError(
            f"non-finite loss at step {step}: loss={loss.detach().float().item()} terms={terms}"
        )

    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()  # DDP averages the gradients over the ranks here
    run.scaler.unscale_(run.optimizer)
    grad_norm = clip_gradients(run.params, run.cfg.clip_grad, run.cfg.clip_grad_mode)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.model.update_teacher(momentum)  # EMA of the student's trainable tensors (and heads), in float32

    # The logged terms are averages over the ranks (each rank's loss is the mean over its slice).
    terms = {k: v for k, v in ((k, _scalar(v)) for k, v in logs.items()) if isinstance(v, float)}
    values = torch.tensor(list(terms.values()), dtype=torch.float64)
    terms = dict(zip(terms, dist_utils.all_reduce_mean(values, run.info).tolist()))
    loss_mean = terms.pop("loss", float(loss.detach()))
    return {
        "loss": loss_mean,
        **terms,
        "lr": lr,
        "lr_adapter": 0.0 if step < run.head_warmup else lr,
        "wd": wd,
        "momentum": momentum,
        "grad_norm": float(grad_norm),
    }


def _scalar(v: Any) -> Any:
    """A loss term as a Python float (a one-element tensor or a number); other values as they are."""
    if isinstance(v, torch.Tensor):
        return v.detach().float().item() if v.numel() == 1 else None
    return float(v) if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) else v


# ---------------------------------------------------------------------------- the loop
@with_cpu_threads
def pretrain(
    cfg: TrainConfig, out_dir: str | Path, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Continual self-supervised pre-training of the student's UniAdapters; writes a run folder.

    Each numbered section below is one named step (the sections are printed in chapter 8).

    Args:
        cfg: the configuration (a preset with ``--set`` overrides).
        out_dir: run folder; gets ``config.json``, ``metrics.jsonl`` (one line per step), ``checkpoint.pt``,
            ``adapter.safetensors`` (the EMA teacher's trained tensors, what the tables evaluate),
            ``adapter_student.safetensors`` (the student's) and ``summary.json``.
        resume: continue from ``out_dir/checkpoint.pt`` (exactly: same result as an uninterrupted run). The
            config must equal the recorded one up to :data:`glare_core.runs.RESUME_SAFE_KEYS`.
        overwrite: replace a run already in ``out_dir`` (without it, such a folder is refused).

    Returns:
        The summary (also written to ``summary.json``): steps, minutes, images/s, final losses, parameter
        counts, the precision used and why.

    Raises:
        NonFiniteLossError: when the loss, or a weight or gradient about to be checkpointed, is NaN or
            infinite (the last good checkpoint is kept).
        RunFolderError: ``out_dir`` holds a run (without ``resume`` / ``overwrite``), is not writable, or the
            resumed run was recorded with other settings; checked before anything is written.
        CheckpointError: the checkpoint to resume is unsafe, corrupt or foreign (the message names it).
        RuntimeError: on CUDA out-of-memory, naming a smaller preset.
    """
    cfg.validate()
    out = Path(out_dir)
    info = dist_utils.init_distributed(cfg.device)
    # 0. The run folder: checked before anything is written (nothing is written until step 3).
    checkpoint = _open_run_folder(out, cfg, resume, overwrite)
    code = code_state()  # the code this (part of the) run starts with, recorded in its summary
    start_step = int(checkpoint["step"]) if checkpoint else 0

    # 1. Data: unlabelled target-domain images at a fixed working size, this rank's slice of each batch.
    loader, num_images = build_feed(cfg, info, start_step)
    total_steps = _planned_steps(cfg, num_images, checkpoint)

    # 2. The frozen base, student (adapters) and EMA teacher, objective, AdamW and per-step schedules.
    head_images = None  # the "data" head init reads target images; a resumed run loads its heads instead
    if checkpoint is None:
        head_images = head_init_images(loader.dataset, cfg.objective.views.global_size, info.device)
    run = build_run(cfg, info, total_steps, head_images)
    bank, trunk = prepare_bank(run, loader.dataset.dataset) if cfg.trunk_blocks else (None, None)
    if trunk is not None:
        check_resumed_bank(checkpoint, trunk, out / CHECKPOINT)
    probe = _telemetry_probe(run, loader.dataset)  # measured on the base model, so before resuming

    # 3. Resume: restore every tensor and state the next step reads. The run folder is written from here on.
    _start_or_resume(run, out, checkpoint)

    # 4. The loop: batch -> train_step -> log -> checkpoint.
    batches = (
        iter(loader) if bank is None else trunk_batches(bank, loader.batch_sampler, info.device, cfg.seed)
    )
    loop = _train_loop(run, batches, loader.batch_sampler, out, start_step, probe, trunk)

    # 5. Export the trained tensors and a summary (each written atomically).
    if start_step >= total_steps and finished_run_intact(out):  # resumed a finished run
        dist_utils.barrier(info)
        return runs.read_summary(out)
    summary = summarize(run, loop, num_images, start_step, trunk, data_root(loader), out / METRICS) | code
    if info.is_main:
        run.model.export_adapter(out / "adapter.safetensors")  # the EMA teacher's adapters, as DINO evaluates
        run.model.export_adapter(out / "adapter_student.safetensors", which="student")  # to compare with
        runs.atomic_write_json(out / "summary.json", summary)
    dist_utils.barrier(info)
    return summary


def _open_run_folder(out: Path, cfg: TrainConfig, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """0. Refuse a run folder that cannot be used, before anything is written; the checkpoint to resume
    (None for a new run), whose recorded config must match ``cfg``."""
    runs.check_run_folder(out, resume=resume, overwrite=overwrite)
    checkpoint = runs.load_checkpoint(out / CHECKPOINT) if resume else None
    if checkpoint is not None:
        runs.check_resume_config(
            out, checkpoint.get("config") or cfg.to_dict(), cfg.to_dict(), TrainConfig().to_dict()
        )
    return checkpoint


def _planned_steps(cfg: TrainConfig, num_images: int, checkpoint: dict[str, Any] | None) -> int:
    """1. The run's length, with a warning when a resumed run was planned for another length."""
    total_steps = cfg.total_steps(num_images)
    if checkpoint and checkpoint.get("total_steps", total_steps) != total_steps:
        warnings.warn(
            f"resuming a run planned for {checkpoint['total_steps']} steps with {total_steps}: the schedules "
            "change from here on, so the result differs from an uninterrupted run",
            stacklevel=3,
        )
    return total_steps


def _telemetry_probe(run: Run, feed: ImageFeed) -> telemetry.TelemetryProbe | None:
    """2. The instruments' fixed batch of 8 target images and the base model's tokens for it (rank 0, when
    ``telemetry_every`` > 0); None otherwise."""
    if run.cfg.telemetry_every <= 0 or not run.info.is_main:
        return None
    fixed = head_init_images(feed, run.cfg.objective.views.global_size, run.device, count=8)
    return telemetry.make_probe(run.model.teacher, fixed, run.precision)


def _start_or_resume(run: Run, out: Path, checkpoint: dict[str, Any] | None) -> None:
    """3. Start writing the run folder, seed this rank's views, and for a resumed run restore the checkpoint
    and drop the metric lines written after it."""
    info, metrics_path = run.info, out / METRICS
    if info.is_main:
        _start_writing(out, run.cfg, fresh=checkpoint is None)
    seed_everything(run.cfg.seed + 1000 * info.rank)  # each rank draws its own views
    if checkpoint:
        restore_checkpoint(run, checkpoint)
        if info.is_main:
            truncate_metrics(metrics_path, int(checkpoint["step"]))
    elif info.is_main and metrics_path.exists():
        metrics_path.unlink()
    dist_utils.barrier(info)


@dataclasses.dataclass
class LoopResult:
    """What the loop hands to the summary.

    Attributes:
        last: the last step's :func:`train_step` record (empty when no step ran).
        images: images trained on by all ranks together.
        seconds: wall-clock time of the loop.
        telemetry: the last instruments' reading (None without telemetry).
    """

    last: dict[str, float] = dataclasses.field(default_factory=dict)
    images: int = 0
    seconds: float = 0.0
    telemetry: dict[str, Any] | None = None


def _train_loop(
    run: Run,
    batches: Iterator[torch.Tensor | TrunkBatch],
    sampler: ResumableBatchSampler,
    out: Path,
    start_step: int,
    probe: telemetry.TelemetryProbe | None,
    trunk: dict[str, Any] | None,
) -> LoopResult:
    """4. Steps ``start_step`` .. ``total_steps - 1``: batch -> :func:`train_step` -> log -> checkpoint.

    The first ``run.head_warmup`` steps are the head warm-up (:func:`train_step` gives the adapters lr 0).
    Every step appends a line to ``metrics.jsonl`` (rank 0), with the instruments' reading every
    ``telemetry_every`` steps; a checkpoint is written every ``checkpoint_every`` steps and after the last,
    and the student's adapters after each of ``snapshot_steps``.
    """
    cfg, info, total = run.cfg, run.info, run.total_steps
    ckpt_path, metrics_path = out / CHECKPOINT, out / METRICS
    bar = progress_bar(info, start_step, total)
    result, t_run = LoopResult(), time.perf_counter()
    run.model.train()
    try:
        for step in range(start_step, total):
            t0 = time.perf_counter()
            batch = next(batches)  # uint8 (B / K, 3, S, S): this rank's slice of the global batch
            images = _step_input(batch, run.device)  # in [0, 1] (or cached trunk tokens)
            try:
                result.last = train_step(run, images, step)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(
                    f"{e}; the last good checkpoint ({ckpt_path}) is untouched. Lower the learning rate "
                    "(--set lr=...) or use --precision fp32, then --resume."
                ) from None
            result.images += len(images) * info.world_size
            record = {
                "step": step + 1,
                **result.last,
                "images_per_s": len(images) * info.world_size / (time.perf_counter() - t0),
                "seconds": time.perf_counter() - t_run,
            }
            if probe is not None and _due(step, cfg.telemetry_every, total):
                result.telemetry = telemetry.measure(run.model, probe)
                record.update(telemetry.flat(result.telemetry))
            if info.is_main:
                append_jsonl(metrics_path, record)
                show_progress(record, bar, total, cfg.log_every, first=step == start_step)
            if info.is_main and step + 1 in cfg.snapshot_steps:  # the same run read at a shorter length
                run.model.export_adapter(out / snapshot_name(step + 1), which="student")
            if _due(step, cfg.checkpoint_every, total):
                position = {"step": step + 1, "total_steps": total, "sampler": sampler.state_dict()}
                if trunk:
                    position["trunk_bank"] = trunk["sha256"]  # the bank the step read
                save_checkpoint(ckpt_path, run, position)
    except torch.cuda.OutOfMemoryError as e:
        raise RuntimeError(
            f"CUDA out of memory with batch {cfg.batch_size} ({e}). Use a smaller preset (--preset colab_t4, "
            "--preset cpu) or --set batch_size=... ; then --resume continues from the last checkpoint."
        ) from e
    finally:
        if bar is not None:
            bar.close()
    result.seconds = time.perf_counter() - t_run
    return result


def snapshot_name(step: int) -> str:
    """The file of the student's adapters after ``step`` steps (``TrainConfig.snapshot_steps``)."""
    return f"adapter_student_step{step}.safetensors"


def _due(step: int, every: int, total: int) -> bool:
    """True after every ``every``-th step and after the last one."""
    return (step + 1) % max(1, every) == 0 or step + 1 == total


def _step_input(batch: torch.Tensor | TrunkBatch, device: torch.device) -> torch.Tensor | TrunkBatch:
    """A uint8 image batch -> float in [0, 1] on the device; a trunk batch is already there."""
    if isinstance(batch, TrunkBatch):
        return batch
    return batch.to(device, non_blocking=True).float().div_(255)


def _heads_may_be_unused(model: StudentTeacher, cfg: TrainConfig) -> bool:
    """True when some trained head takes no part in the loss, so DDP must look for unused parameters: a
    separate patch head with L and R off, or the [CLS] head beside a separate patch head with G off."""
    o = cfg.objective
    return model.separate_patch_head and (not (o.use_local or o.use_regional) or not o.use_global)


def _start_writing(out: Path, cfg: TrainConfig, fresh: bool) -> None:
    """Create the run folder and record the config (a new run; ``--overwrite`` clears the old run's files
    first); remove temporaries an interrupted write left. A resumed run keeps its recorded ``config.json``."""
    out.mkdir(parents=True, exist_ok=True)
    runs.remove_stale_temporaries(out)
    if fresh:
        runs.clear_run_files(out)
    if fresh or not (out / "config.json").exists():
        runs.atomic_write_json(out / "config.json", cfg.to_dict())


def finished_run_intact(out: Path) -> bool:
    """True when ``out`` holds a readable ``summary.json`` and a readable, finite ``adapter.safetensors``."""
    if runs.read_summary(out) is None:
        return False
    try:
        read_adapter(out / "adapter.safetensors")
    except (ValueError, OSError):
        return False
    return True
