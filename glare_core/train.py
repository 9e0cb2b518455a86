"""The training loop: continual self-supervised pre-training of a ViT's UniAdapters with the GLARE objective.

Read it in three pieces: :func:`build_run` (base -> student/teacher -> objective -> optimiser and
schedules), :func:`train_step` (schedules -> loss -> NaN guard -> backward -> clip -> AdamW -> EMA), and
:func:`pretrain` (data -> :func:`build_run` -> resume -> loop of :func:`train_step` with logs and checkpoints
-> export). ``glare bench`` times the same :func:`train_step`. The helpers above them are the pieces a reader
may want to look up: the resumable data feed and atomic checkpoints; the per-step schedules are in
:mod:`glare_core.schedules`, seeding and random-number states in :mod:`glare_core.rng`.

Known (GLARE abstract, Figure 1): a momentum (EMA) teacher, only the student's UniAdapters train.
Design (``glare-method.md`` section 2, "Optimisation", after DINO's ``main_dino.py``): AdamW on the trainable
tensors only, no weight decay on biases and norms, lr 5e-4 * B / 256 with linear warm-up then cosine to 1e-6,
weight decay cosine 0.04 -> 0.4, EMA momentum cosine 0.996 -> 1, gradient clip 3.0, head warm-up with the
adapters' learning rate at 0. Mixed precision is chosen per machine (``precision="auto"``,
:mod:`glare_core.precision`); whatever it is, the trained and averaged tensors stay float32.

Resuming is exact: a run stopped after step k and resumed gives, on CPU, bitwise the same weights as an
uninterrupted run, because the checkpoint holds every piece of state the next step reads: trainable and EMA
tensors, the objective's centres, the optimiser, the step (which fixes the schedules and the data order) and
the random-number states of torch, numpy and Python (per rank).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import distributed as dist_utils
from . import runs, telemetry
from .config import TrainConfig
from .errors import NonFiniteError
from .objective import GlareObjective
from .paths import smoke_mode
from .precision import Precision, autocast, cast_frozen_base_linears, resolve_precision
from .rng import rng_state, seed_everything, set_rng_state
from .schedules import build_schedules
from .teacher import StudentTeacher
from .trunk import TrunkBatch, check_resumed_bank, check_trunk, prepare_bank, trunk_batches
from .tuning import count_parameters
from .weights import load_base_with_head

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class NonFiniteLossError(NonFiniteError, RuntimeError):
    """The loss (or the weights about to be checkpointed) became NaN or infinite; the last good checkpoint is
    left untouched."""


# ---------------------------------------------------------------------------- data feed
class ImageFeed(Dataset):
    """Unlabelled images at a fixed working size, so batches stack.

    Each image's short side is resized to ``size``, then a ``size`` x ``size`` crop is taken at an offset
    drawn from ``(seed, epoch, index)``: random per epoch, yet reproducible without any generator state, so
    resuming and worker processes need nothing extra. Items are indexed by ``(epoch, index)`` pairs (from
    :class:`ResumableBatchSampler`) and are uint8 tensors (3, size, size).
    """

    def __init__(self, dataset: Dataset, size: int, seed: int = 0):
        self.dataset, self.size, self.seed = dataset, int(size), int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        epoch, index = key
        image = self.dataset[index]["image"]  # uint8 (3, H, W)
        H, W = image.shape[-2:]
        scale = self.size / min(H, W)
        h, w = max(self.size, round(H * scale)), max(self.size, round(W * scale))
        if (h, w) != (H, W):
            image = F.interpolate(image[None].float(), size=(h, w), mode="bilinear", antialias=True)[0]
            image = image.round().clamp(0, 255).to(torch.uint8)
        rng = np.random.default_rng([self.seed, epoch, index])
        top, left = int(rng.integers(0, h - self.size + 1)), int(rng.integers(0, w - self.size + 1))
        return image[:, top : top + self.size, left : left + self.size].contiguous()


def head_init_images(feed: ImageFeed, size: int, device: torch.device, count: int = 32) -> torch.Tensor:
    """``count`` evenly spaced target images at the view size, (count, 3, size, size) in [0, 1], for the
    ``"data"`` head init (:meth:`glare_core.teacher.StudentTeacher.init_heads_from_data`). Deterministic and
    drawn without touching any random-number generator, so every rank gets the same images."""
    idx = torch.linspace(0, len(feed) - 1, min(count, len(feed))).round().long().tolist()
    images = torch.stack([feed[(0, i)] for i in idx]).float() / 255
    images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return images.clamp(0, 1).to(device)


class ResumableBatchSampler:
    """An endless sampler of this rank's share of each global batch, positioned by the step number.

    Step t reads global batch ``t % batches_per_epoch`` of epoch ``t // batches_per_epoch``, where each epoch
    is a permutation of the dataset drawn from ``(seed, epoch)`` (the last incomplete batch is dropped). The
    whole
    state is therefore the step: resuming at step k starts the sampler at k. With several processes each rank
    yields its contiguous slice of the global batch (:func:`glare_core.distributed.shard_indices`).

    Yields:
        lists of ``(epoch, index)`` pairs, B / world_size per step.
    """

    def __init__(
        self, num_items: int, batch_size: int, seed: int = 0, start_step: int = 0, info: Any = None
    ) -> None:
        if num_items < batch_size:
            raise ValueError(
                f"the dataset has {num_items} images, fewer than one batch of {batch_size}; "
                "lower --set batch_size or raise --set limit"
            )
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.step = start_step
        self.info = info or dist_utils.DistInfo()
        self.batches_per_epoch = num_items // batch_size

    def state_dict(self) -> dict[str, int]:
        return {
            "step": self.step,
            "seed": self.seed,
            "num_items": self.num_items,
            "batch_size": self.batch_size,
        }

    def indices_for_step(self, step: int) -> list[tuple[int, int]]:
        """This rank's ``(epoch, index)`` pairs for a step."""
        epoch, b = divmod(step, self.batches_per_epoch)
        perm = torch.randperm(
            self.num_items, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        )
        batch = [(epoch, int(i)) for i in perm[b * self.batch_size : (b + 1) * self.batch_size]]
        return dist_utils.shard_indices(batch, self.info)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        while True:
            yield self.indices_for_step(self.step)
            self.step += 1


def build_feed(cfg: TrainConfig, info: Any, start_step: int) -> tuple[DataLoader, int]:
    """The DataLoader over the target-domain images (labels never read) and the number of images."""
    from .data import build_dataset

    kwargs: dict[str, Any] = {}
    if cfg.dataset == "synthetic":
        kwargs = {"num_images": cfg.limit or 32, "size": (cfg.load_size, round(cfg.load_size * 4 / 3))}
    dataset = build_dataset(
        cfg.dataset,
        split=cfg.split,
        root=cfg.root,
        labels=False,
        limit=cfg.limit,
        seed=cfg.seed if cfg.limit_seed is None else cfg.limit_seed,
        **kwargs,
    )
    feed = ImageFeed(dataset, cfg.load_size, seed=cfg.seed)
    sampler = ResumableBatchSampler(
        len(feed), cfg.batch_size, seed=cfg.seed, start_step=start_step, info=info
    )
    loader = DataLoader(
        feed,
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=info.device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched by the loader
    )
    return loader, len(feed)


# ---------------------------------------------------------------------------- state, checkpoints, logs
def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: the old file stays intact
    until the new one is complete, and a failed write leaves no partial file behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def run_state_dict(model: nn.Module, frozen: set[int]) -> dict[str, torch.Tensor]:
    """Every tensor of the student/teacher model except the frozen base weights (found by storage pointer):
    trainable weights, the teacher's EMA copies, heads, buffers."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.data_ptr() not in frozen}


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines after ``last_step`` (written after the checkpoint a run resumes from)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in keep))


def _scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().float().item() if v.numel() == 1 else None
    return float(v) if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) else v


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


# ---------------------------------------------------------------------------- the loop
@with_cpu_threads
def pretrain(
    cfg: TrainConfig, out_dir: str | Path, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Continual self-supervised pre-training of the student's UniAdapters; writes a run folder.

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
    device = info.device
    # 0. The run folder: checked before anything is written (nothing is written until step 3).
    runs.check_run_folder(out, resume=resume, overwrite=overwrite)
    ckpt_path, metrics_path = out / CHECKPOINT, out / METRICS
    checkpoint = runs.load_checkpoint(ckpt_path) if resume else None
    if checkpoint is not None:
        runs.check_resume_config(out, checkpoint.get("config") or cfg.to_dict(), cfg.to_dict())
    start_step = int(checkpoint["step"]) if checkpoint else 0

    # 1. Data: unlabelled target-domain images at a fixed working size, this rank's slice of each batch.
    loader, num_images = build_feed(cfg, info, start_step)
    total_steps = cfg.total_steps(num_images)
    if checkpoint and checkpoint.get("total_steps", total_steps) != total_steps:
        warnings.warn(
            f"resuming a run planned for {checkpoint['total_steps']} steps with {total_steps}: the schedules "
            "change from here on, so the result differs from an uninterrupted run",
            stacklevel=2,
        )

    # 2. The frozen base, student (adapters) and EMA teacher, objective, AdamW and per-step schedules.
    head_images = None
    if checkpoint is None:  # a resumed run has its heads
        head_images = head_init_images(loader.dataset, cfg.objective.views.global_size, device)
    run = build_run(cfg, info, total_steps, head_images)
    model, objective, optimizer, scaler = run.model, run.objective, run.optimizer, run.scaler
    counts = count_parameters(model.student)
    trunk = None  # trunk_blocks: load (verified) or build the bank of cached trunk tokens
    if cfg.trunk_blocks:
        bank, trunk = prepare_bank(run, loader.dataset.dataset)
        check_resumed_bank(checkpoint, trunk, ckpt_path)
    probe, measured = (
        None,
        None,
    )  # the instruments' fixed batch and its base tokens (the model is the base now)
    if cfg.telemetry_every > 0 and info.is_main:
        fixed = head_init_images(loader.dataset, cfg.objective.views.global_size, device, count=8)
        probe = telemetry.make_probe(model.teacher, fixed, run.precision)

    # 3. Resume: restore every tensor and state the next step reads. The run folder is written from here on.
    if info.is_main:
        _start_writing(out, cfg, fresh=checkpoint is None)
    seed_everything(cfg.seed + 1000 * info.rank)  # each rank draws its own views
    if checkpoint:
        model.load_state_dict(checkpoint["model"], strict=False)
        if checkpoint.get("objective") is not None:
            objective.load_state_dict(checkpoint["objective"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"][min(info.rank, len(checkpoint["rng"]) - 1)])
        if info.is_main:
            truncate_metrics(metrics_path, start_step)
    elif info.is_main and metrics_path.exists():
        metrics_path.unlink()
    dist_utils.barrier(info)

    # 4. The loop: batch -> train_step -> log -> checkpoint.
    show_bar = info.is_main and sys.stdout.isatty() and not smoke_mode()
    bar = None
    if show_bar:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=start_step, desc="pretrain", dynamic_ncols=True)
    if cfg.trunk_blocks:  # bank entries in the sampler's order instead of images
        batches = trunk_batches(bank, loader.batch_sampler, device, cfg.seed)
    else:
        batches = iter(loader)
    t_run, seen, step_record = time.perf_counter(), 0, {}
    model.train()
    try:
        for step in range(start_step, total_steps):
            t0 = time.perf_counter()
            batch = next(batches)  # uint8 (B / K, 3, S, S): this rank's slice of the global batch
            images = _step_input(batch, device)  # in [0, 1] (or cached trunk tokens)
            try:
                step_record = train_step(run, images, step)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(
                    f"{e}; the last good checkpoint ({ckpt_path}) is untouched. Lower the learning rate "
                    "(--set lr=...) or use --precision fp32, then --resume."
                ) from None
            seen += len(images) * info.world_size
            dt = time.perf_counter() - t0
            record = {
                "step": step + 1,
                **step_record,
                "images_per_s": len(images) * info.world_size / dt,
                "seconds": time.perf_counter() - t_run,
            }
            if probe is not None and ((step + 1) % cfg.telemetry_every == 0 or step + 1 == total_steps):
                measured = telemetry.measure(model, probe)
                record.update(telemetry.flat(measured))
            if info.is_main:
                append_jsonl(metrics_path, record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", ips=f"{record['images_per_s']:.1f}")
                elif (step + 1) % max(1, cfg.log_every) == 0 or step == start_step:
                    print(
                        f"step {step + 1}/{total_steps} loss {record['loss']:.4f} lr {record['lr']:.2e} "
                        f"{record['images_per_s']:.1f} img/s",
                        flush=True,
                    )

            if (step + 1) % max(1, cfg.checkpoint_every) == 0 or step + 1 == total_steps:
                position = {
                    "step": step + 1,
                    "total_steps": total_steps,
                    "sampler": loader.batch_sampler.state_dict(),
                    **({"trunk_bank": trunk["sha256"]} if trunk else {}),  # the bank the step read
                }
                _checkpoint(ckpt_path, run, position)
    except torch.cuda.OutOfMemoryError as e:
        raise RuntimeError(
            f"CUDA out of memory with batch {cfg.batch_size} ({e}). Use a smaller preset (--preset colab_t4, "
            "--preset cpu) or --set batch_size=... ; then --resume continues from the last checkpoint."
        ) from e
    finally:
        if bar is not None:
            bar.close()

    # 5. Export the trained tensors and a summary (each written atomically).
    if start_step >= total_steps and runs.finished_run_intact(out):  # resumed a finished run
        dist_utils.barrier(info)
        return runs.read_summary(out)
    minutes = (time.perf_counter() - t_run) / 60
    final_terms = {k: v for k, v in step_record.items() if k.startswith(("loss_", "teacher_"))}
    summary = {
        "preset": cfg.preset,
        "steps": total_steps,
        "start_step": start_step,
        "images": num_images,
        "minutes": minutes,
        "images_per_s": seen / max(minutes * 60, 1e-9),
        "final_loss": _last_loss(metrics_path) if info.is_main else None,
        "final_terms": final_terms,
        "train_heads": model.train_heads,
        "trainable_params": counts.trainable,
        "total_params": counts.total,
        "precision": run.precision.name,
        "precision_requested": run.precision.requested,
        "precision_reason": run.precision.reason,
        "ema_dtype": model.ema_dtype(),
        "ln_k": math.log(model.out_dim),  # the value of a cross-entropy between uniform distributions
        "telemetry": measured,
        "attention": run.attention,
        "device": str(device),
        "world_size": info.world_size,
        "data_root": _data_root(loader),
        "trunk": trunk,
    }
    if info.is_main:
        model.export_adapter(out / "adapter.safetensors")  # the EMA teacher's adapters, as DINO evaluates
        model.export_adapter(out / "adapter_student.safetensors", which="student")  # to compare with
        runs.atomic_write_json(out / "summary.json", summary)
    dist_utils.barrier(info)
    return summary


def _step_input(batch: torch.Tensor | TrunkBatch, device: torch.device) -> torch.Tensor | TrunkBatch:
    """A uint8 image batch -> float in [0, 1] on the device; a trunk batch is already there."""
    if isinstance(batch, TrunkBatch):
        return batch
    return batch.to(device, non_blocking=True).float().div_(255)


def _checkpoint(path: Path, run: Run, position: dict[str, Any]) -> None:
    """Write ``checkpoint.pt`` atomically on rank 0 (every rank's RNG state is gathered into it).

    ``position`` holds the step (which fixes the schedules and the data order), the run's total steps and the
    sampler's state.
    """
    runs.check_finite_state(
        _trained_tensors(run.model, run.objective, run.frozen), f"checkpoint at step {position['step']}"
    )
    rngs = dist_utils.gather_objects(rng_state(), run.info)
    if run.info.is_main:
        state = {
            **position,
            "model": run_state_dict(run.model, run.frozen),
            "objective": run.objective.state_dict(),
            "optimizer": _plain_numbers(run.optimizer.state_dict()),
            "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
            "rng": rngs,
            "config": run.cfg.to_dict(),
        }
        atomic_save(state, path)
    dist_utils.barrier(run.info)


def _heads_may_be_unused(model: StudentTeacher, cfg: TrainConfig) -> bool:
    """True when some trained head takes no part in the loss, so DDP must look for unused parameters: a
    separate patch head with L and R off, or the [CLS] head beside a separate patch head with G off."""
    o = cfg.objective
    return model.separate_patch_head and (not (o.use_local or o.use_regional) or not o.use_global)


def _plain_numbers(obj: Any) -> Any:
    """``obj`` with numpy scalars (the schedules' learning rates in the optimiser's groups) as Python numbers,
    so the checkpoint holds tensors and plain data only."""
    if isinstance(obj, dict):
        return {k: _plain_numbers(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain_numbers(v) for v in obj)
    return obj.item() if isinstance(obj, np.generic) else obj


def _start_writing(out: Path, cfg: TrainConfig, fresh: bool) -> None:
    """Create the run folder and record the config (a new run; ``--overwrite`` clears the old run's files
    first); remove temporaries an interrupted write left. A resumed run keeps its recorded ``config.json``."""
    out.mkdir(parents=True, exist_ok=True)
    runs.remove_stale_temporaries(out)
    if fresh:
        runs.clear_run_files(out)
    if fresh or not (out / "config.json").exists():
        runs.atomic_write_json(out / "config.json", cfg.to_dict())


def _trained_tensors(
    model: nn.Module, objective: Any, frozen: set[int]
) -> Iterator[tuple[str, torch.Tensor]]:
    """What a checkpoint saves, plus the gradients: trained weights and their gradients, the EMA teacher's
    copies and buffers (everything but the frozen base) and the objective's state (centres)."""
    for name, p in model.named_parameters():
        if p.requires_grad and p.grad is not None:
            yield f"{name}.grad", p.grad
    for name, t in model.state_dict().items():
        if t.data_ptr() not in frozen:
            yield name, t
    if isinstance(objective, nn.Module):
        yield from objective.state_dict().items()


def _data_root(loader: DataLoader) -> str | None:
    """The dataset folder the run read (recorded in ``summary.json``), or None for generated data."""
    root = getattr(loader.dataset.dataset, "root", None)
    return str(Path(root).resolve()) if root is not None else None


def _last_loss(metrics_path: Path) -> float | None:
    lines = metrics_path.read_text().splitlines() if metrics_path.exists() else []
    return json.loads(lines[-1])["loss"] if lines else None
