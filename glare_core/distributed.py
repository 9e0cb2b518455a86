"""Data-parallel helpers: the same training loop on one process or under ``torchrun``.

Design (``glare-method.md`` section 2, "Optimisation": one GPU is enough, several only make it faster): under
``torchrun --nproc_per_node K`` (environment ``WORLD_SIZE`` > 1) every process holds the whole model, reads
its own slice of each global batch, and ``DistributedDataParallel`` (around the student/teacher model, whose
``forward`` is the student pass) averages the trainable tensors' gradients over the processes, so K processes
with B / K images each take the same step as one process with B images. The objective's centres are
all-reduced inside its ``update_center`` (the objective's job). Only rank 0 writes files (metrics,
checkpoints, exports).

Backends: NCCL on CUDA, gloo on CPU (the test in ``tests/test_distributed.py`` runs 2 gloo processes).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the data-parallel group.

    Attributes:
        rank: global rank (0 on a single process).
        world_size: number of processes (1 on a single process).
        local_rank: rank on this machine (selects the GPU).
        device: the device this process computes on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` if CUDA is present, else CPU; other names are taken as given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was asked for but CUDA is not available; use --set device=cpu")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Initialise the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1), else a single process.

    Args:
        device: "auto", "cpu" or "cuda" (each rank takes GPU ``LOCAL_RANK``).
        timeout_s: collective timeout.

    Returns:
        :class:`DistInfo` for this process.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = resolve_device(device, local_rank if world_size > 1 else 0)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup() -> None:
    """Destroy the process group if one was created."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op on one process)."""
    if info.distributed:
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average a tensor over the ranks, in place (no-op on one process); returns it."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= info.world_size
    return tensor


def wrap_ddp(model: nn.Module, info: DistInfo, find_unused_parameters: bool = False) -> nn.Module:
    """Wrap a model whose ``forward`` is the student pass in DistributedDataParallel (no-op on one process).

    DDP averages the trainable tensors' gradients over the ranks during ``backward`` (in buckets, overlapped
    with the computation) and broadcasts rank 0's weights once at wrapping, so K processes with B / K images
    each take the same step as one process with B images. Frozen tensors are ignored.

    ``find_unused_parameters`` is needed when some trained tensor never takes part in a step (a separate patch
    head with L and R off, or the [CLS] head beside it with G off). It is met with DDP's ``static_graph``,
    which finds the unused tensors in the first step and skips them from then on: DDP's own
    ``find_unused_parameters=True`` fails here, because the objective runs the student several times (once
    per view) before one backward pass.
    """
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", FutureWarning
        )  # broadcast_buffers' rename; False is what we mean here
        return DistributedDataParallel(
            model, device_ids=ids, broadcast_buffers=False, static_graph=find_unused_parameters
        )


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` as a list indexed by rank (``[obj]`` on one process)."""
    if not info.distributed:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def shard_indices(global_indices: list, info: DistInfo) -> list:
    """This rank's contiguous slice of a global batch's indices (the global batch must divide evenly)."""
    n = len(global_indices)
    if n % info.world_size:
        raise ValueError(
            f"global batch {n} does not divide over {info.world_size} processes; "
            f"choose --set batch_size to a multiple of {info.world_size}"
        )
    per = n // info.world_size
    return global_indices[info.rank * per : (info.rank + 1) * per]
