"""The training loop: continual self-supervised pre-training of a ViT's UniAdapters with the GLARE objective.

Read :func:`pretrain` top to bottom: data -> base -> student/teacher -> objective -> optimiser and schedules
-> (resume) -> loop (batch -> loss -> NaN guard -> backward -> clip -> step -> EMA -> log -> checkpoint) ->
export.
The helpers above it are the pieces a reader may want to look up: per-step schedules, the resumable data feed,
atomic checkpoints and random-number states.

Known (GLARE abstract, Figure 1): a momentum (EMA) teacher, only the student's UniAdapters train.
Design (``glare-method.md`` section 2, "Optimisation", after DINO's ``main_dino.py``): AdamW on the trainable
tensors only, no weight decay on biases and norms, lr 5e-4 * B / 256 with linear warm-up then cosine to 1e-6,
weight decay cosine 0.04 -> 0.4, EMA momentum cosine 0.996 -> 1, gradient clip 3.0, bf16 autocast, head
warm-up with the adapters' learning rate at 0.

Resuming is exact: a run stopped after step k and resumed gives, on CPU, bitwise the same weights as an
uninterrupted
run, because the checkpoint holds every piece of state the next step reads: trainable and EMA tensors, the
objective's centres, the optimiser, the step (which fixes the schedules and the data order) and the
random-number states of torch, numpy and Python (per rank).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import random
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
from . import runs
from .config import TrainConfig
from .errors import NonFiniteError
from .objective import GlareObjective
from .paths import smoke_mode
from .teacher import StudentTeacher
from .tuning import count_parameters
from .weights import load_base_with_head

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class NonFiniteLossError(NonFiniteError, RuntimeError):
    """The loss (or the weights about to be checkpointed) became NaN or infinite; the last good checkpoint is
    left untouched."""


# ---------------------------------------------------------------------------- schedules
def cosine_schedule(
    start: float, end: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """Per-step values: linear warm-up from ``warmup_start`` to ``start``, then a cosine down to ``end``.

    DINO's ``cosine_scheduler`` (``utils.py``), per step instead of per epoch x iteration.

    Returns:
        (total_steps,) float64 array; entry t is the value used at step t.
    """
    warmup_steps = min(max(0, int(warmup_steps)), total_steps)
    warm = np.linspace(warmup_start, start, warmup_steps, endpoint=False) if warmup_steps else np.array([])
    t = np.arange(total_steps - warmup_steps)
    span = max(1, len(t) - 1)
    cos = end + 0.5 * (start - end) * (1 + np.cos(np.pi * t / span))
    return np.concatenate([warm, cos]).astype(np.float64)


def build_schedules(cfg: TrainConfig, total_steps: int) -> dict[str, np.ndarray]:
    """The learning-rate, weight-decay and EMA-momentum schedules of a run, one value per step."""
    return {
        "lr": cosine_schedule(
            cfg.peak_lr(), cfg.min_lr, total_steps, round(cfg.warmup_fraction * total_steps)
        ),
        "wd": cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, total_steps),
        "momentum": cosine_schedule(cfg.momentum_teacher, cfg.momentum_teacher_end, total_steps),
    }


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
def rng_state() -> dict[str, Any]:
    """Random-number states of torch (CPU and CUDA), numpy and Python, as tensors and plain data.

    Nothing in it needs pickle (numpy's Mersenne-Twister keys and Python's become int64 tensors), so a
    checkpoint that holds it loads with ``torch.load(weights_only=True)``.
    """
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),  # (624,) MT19937 words
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),  # (625,) MT19937 words and position
            "gauss_next": gauss_next,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (also the older layout with numpy's own state tuple)."""
    torch.set_rng_state(state["torch"])
    np_state, py_state = state["numpy"], state["python"]
    if isinstance(np_state, dict):
        keys = np_state["keys"].numpy().astype(np.uint32)
        np_state = ("MT19937", keys, np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"])
    np.random.set_state(np_state)
    if isinstance(py_state, dict):
        internal = tuple(int(x) for x in py_state["internal"].tolist())
        py_state = (py_state["version"], internal, py_state["gauss_next"])
    random.setstate(py_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


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


def resolve_precision(cfg: TrainConfig, device: torch.device) -> str:
    """The precision actually used: bf16 falls back to fp16 on GPUs without bf16 (T4); fp16 needs a GPU."""
    if device.type == "cuda" and cfg.precision == "bf16" and not torch.cuda.is_bf16_supported():
        warnings.warn("this GPU has no bf16: using fp16 autocast with a GradScaler", stacklevel=2)
        return "fp16"
    if device.type != "cuda" and cfg.precision == "fp16":
        raise ValueError("precision='fp16' needs a GPU; use --set precision=bf16 (or fp32) on CPU")
    return cfg.precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 / fp16 autocast, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


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


def cast_frozen_linears(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the frozen ``nn.Linear`` weights and biases in the autocast dtype, once; returns how many.

    Under autocast every linear layer casts its fp32 weight to bf16 / fp16 on every call, and autocast caches
    no casts of frozen weights (``aten::copy_`` was 23 % of a profiled CPU step with a ViT-S). Casting them
    once gives bit-identical results under autocast (the same rounding, done once). Norm layers, the position
    embedding and every trained tensor stay in fp32. Only for runs that use autocast.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and not module.weight.requires_grad:
            if module.bias is not None and module.bias.requires_grad:
                continue
            module.weight.data = module.weight.data.to(dtype)
            if module.bias is not None:
                module.bias.data = module.bias.data.to(dtype)
            count += 1
    return count


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


# ---------------------------------------------------------------------------- the loop
@with_cpu_threads
def pretrain(
    cfg: TrainConfig, out_dir: str | Path, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Continual self-supervised pre-training of the student's UniAdapters; writes a run folder.

    Args:
        cfg: the configuration (a preset with ``--set`` overrides).
        out_dir: run folder; gets ``config.json``, ``metrics.jsonl`` (one line per step), ``checkpoint.pt``,
            ``adapter.safetensors`` (the trained tensors only) and ``summary.json``.
        resume: continue from ``out_dir/checkpoint.pt`` (exactly: same result as an uninterrupted run). The
            config must equal the recorded one up to :data:`glare_core.runs.RESUME_SAFE_KEYS`.
        overwrite: replace a run already in ``out_dir`` (without it, such a folder is refused).

    Returns:
        The summary (also written to ``summary.json``): steps, minutes, images/s, final losses, parameter
        counts.

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
    precision = resolve_precision(cfg, device)
    # 0. The run folder: checked before anything is written (nothing is written until step 4).
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

    # 2. The frozen base, then student (adapters) and EMA teacher sharing its weights, plus the objective.
    seed_everything(cfg.seed)  # same initial weights on every rank
    backbone, head_state = load_base_with_head(cfg.base, verbose=info.is_main)
    model = StudentTeacher(
        backbone, cfg.student_teacher_config(), head_state_dict=head_state, base_name=cfg.base
    )
    model.to(device)
    if checkpoint is None and model.train_heads and cfg.heads.init == "data":  # a resumed run has its heads
        sample = head_init_images(loader.dataset, cfg.objective.views.global_size, device)
        stats = model.init_heads_from_data(sample)
        if info.is_main:
            print(f"[glare] new heads standardised on {len(sample)} target images ({stats})", flush=True)
    if precision != "fp32":  # frozen linear weights stored once in the autocast dtype: same results, faster
        cast_frozen_linears(model, AUTOCAST_DTYPES[precision])
    select_attention(model, cfg.attention, device, precision)
    frozen = {p.data_ptr() for p in backbone.parameters() if not p.requires_grad}  # never in checkpoints
    objective_cfg = cfg.objective
    if cfg.teacher_temp_warmup_fraction is not None:  # tau_t warm-up over a fraction of this run (DINO: 30 %)
        warm_steps = round(cfg.teacher_temp_warmup_fraction * total_steps)
        objective_cfg = dataclasses.replace(objective_cfg, warmup_teacher_temp_steps=warm_steps)
    objective = GlareObjective(objective_cfg)
    if isinstance(objective, nn.Module):
        objective.to(device)
    counts = count_parameters(model.student)
    maybe_compile(model, cfg.compile)
    # The student pass is model.forward, so DDP can wrap the model (and average gradients over the ranks).
    unused = _heads_may_be_unused(model, cfg)
    student = dist_utils.wrap_ddp(model, info, find_unused_parameters=unused)

    # 3. AdamW on the trainable tensors only ({adapter, head} x {decay, no decay}), per-step schedules.
    groups = param_groups(model.param_groups())
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    sched = build_schedules(cfg, total_steps)
    head_warmup = cfg.head_warmup_steps if model.train_heads else 0

    # 4. Resume: restore every tensor and state the next step reads. The run folder is written from here on.
    if info.is_main:
        _start_writing(out, cfg, fresh=checkpoint is None)
    seed_everything(cfg.seed + 1000 * info.rank)  # each rank draws its own views
    if checkpoint:
        model.load_state_dict(checkpoint["model"], strict=False)
        if isinstance(objective, nn.Module) and checkpoint.get("objective") is not None:
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

    # 5. The loop.
    show_bar = info.is_main and sys.stdout.isatty() and not smoke_mode()
    bar = None
    if show_bar:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=start_step, desc="pretrain", dynamic_ncols=True)
    batches = iter(loader)
    t_run, seen, last_logs = time.perf_counter(), 0, {}
    model.train()
    try:
        for step in range(start_step, total_steps):
            t0 = time.perf_counter()
            batch = next(batches)  # uint8 (B / K, 3, S, S): this rank's slice of the global batch
            images = batch.to(device, non_blocking=True).float().div_(255)  # in [0, 1]
            lr, wd, momentum = sched["lr"][step], sched["wd"][step], sched["momentum"][step]
            for group in optimizer.param_groups:
                warm = group["kind"] == "adapter" and step < head_warmup
                group["lr"] = 0.0 if warm else lr
                group["weight_decay"] = wd if group["apply_wd"] else 0.0

            with autocast(device, precision):  # views, teacher and student passes, L_G + L_L + L_R
                loss, logs = objective(student, images, step)  # (the centres are updated inside, no grad)
            # NaN guard: agree across ranks, stop before touching the weights or the checkpoint.
            finite = torch.tensor([float(torch.isfinite(loss.detach()).all())], device=device)
            dist_utils.all_reduce_mean(finite, info)
            if finite.item() < 1.0:
                terms = {k: _scalar(v) for k, v in logs.items()}
                raise NonFiniteLossError(
                    f"non-finite loss at step {step}: loss={loss.detach().float().item()} terms={terms}; "
                    f"the last good checkpoint ({ckpt_path}) is untouched. Lower the learning rate "
                    "(--set lr=...) or use --set precision=fp32, then --resume."
                )

            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # DDP averages the gradients over the ranks here
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                params, cfg.clip_grad if cfg.clip_grad > 0 else math.inf
            )
            scaler.step(optimizer)
            scaler.update()
            model.update_teacher(float(momentum))  # EMA of the student's trainable tensors (and heads)

            seen += images.shape[0] * info.world_size
            dt = time.perf_counter() - t0
            # The logged terms are averages over the ranks (each rank's loss is the mean over its slice).
            last_logs = {k: v for k, v in ((k, _scalar(v)) for k, v in logs.items()) if isinstance(v, float)}
            terms = dist_utils.all_reduce_mean(
                torch.tensor(list(last_logs.values()), dtype=torch.float64), info
            )
            last_logs = dict(zip(last_logs, terms.tolist()))
            loss_mean = last_logs.pop("loss", float(loss.detach()))
            record = {
                "step": step + 1,
                "loss": loss_mean,
                **last_logs,
                "lr": float(lr),
                "lr_adapter": 0.0 if step < head_warmup else float(lr),
                "wd": float(wd),
                "momentum": float(momentum),
                "grad_norm": float(grad_norm),
                "images_per_s": images.shape[0] * info.world_size / dt,
                "seconds": time.perf_counter() - t_run,
            }
            if info.is_main:
                append_jsonl(metrics_path, record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_mean:.4f}", ips=f"{record['images_per_s']:.1f}")
                elif (step + 1) % max(1, cfg.log_every) == 0 or step == start_step:
                    print(
                        f"step {step + 1}/{total_steps} loss {loss_mean:.4f} lr {lr:.2e} "
                        f"{record['images_per_s']:.1f} img/s",
                        flush=True,
                    )

            if (step + 1) % max(1, cfg.checkpoint_every) == 0 or step + 1 == total_steps:
                position = {
                    "step": step + 1,
                    "total_steps": total_steps,
                    "sampler": loader.batch_sampler.state_dict(),
                }
                _checkpoint(ckpt_path, model, objective, optimizer, scaler, frozen, position, cfg, info)
    except torch.cuda.OutOfMemoryError as e:
        raise RuntimeError(
            f"CUDA out of memory with batch {cfg.batch_size} ({e}). Use a smaller preset (--preset colab_t4, "
            "--preset cpu) or --set batch_size=... ; then --resume continues from the last checkpoint."
        ) from e
    finally:
        if bar is not None:
            bar.close()

    # 6. Export the trained tensors and a summary (each written atomically).
    if start_step >= total_steps and runs.finished_run_intact(out):  # resumed a finished run
        dist_utils.barrier(info)
        return runs.read_summary(out)
    minutes = (time.perf_counter() - t_run) / 60
    summary = {
        "preset": cfg.preset,
        "steps": total_steps,
        "start_step": start_step,
        "images": num_images,
        "minutes": minutes,
        "images_per_s": seen / max(minutes * 60, 1e-9),
        "final_loss": _last_loss(metrics_path) if info.is_main else None,
        "final_terms": last_logs,
        "train_heads": model.train_heads,
        "trainable_params": counts.trainable,
        "total_params": counts.total,
        "precision": precision,
        "attention": select_attention(model, cfg.attention, device, precision),
        "device": str(device),
        "world_size": info.world_size,
        "data_root": _data_root(loader),
    }
    if info.is_main:
        model.export_adapter(out / "adapter.safetensors")  # the EMA teacher's adapters, as DINO evaluates
        runs.atomic_write_json(out / "summary.json", summary)
    dist_utils.barrier(info)
    return summary


def _checkpoint(path, model, objective, optimizer, scaler, frozen, position, cfg, info) -> None:
    """Write ``checkpoint.pt`` atomically on rank 0 (every rank's RNG state is gathered into it).

    ``position`` holds the step (which fixes the schedules and the data order), the run's total steps and the
    sampler's state.
    """
    runs.check_finite_state(
        _trained_tensors(model, objective, frozen), f"checkpoint at step {position['step']}"
    )
    rngs = dist_utils.gather_objects(rng_state(), info)
    if info.is_main:
        state = {
            **position,
            "model": run_state_dict(model, frozen),
            "objective": objective.state_dict() if isinstance(objective, nn.Module) else None,
            "optimizer": _plain_numbers(optimizer.state_dict()),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "rng": rngs,
            "config": cfg.to_dict(),
        }
        atomic_save(state, path)
    dist_utils.barrier(info)


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
