"""The pre-training data feed: unlabelled target-domain images at a fixed size, in an order fixed by the step.

:class:`ImageFeed` gives each image at the working size (a short-side resize and a crop drawn from
``(seed, epoch, index)``), :class:`ResumableBatchSampler` the images of each step (a permutation per epoch,
positioned by the step number), and :func:`build_feed` the ``DataLoader`` over both. Nothing in them holds
random-number state, so a resumed run reads exactly the batches an uninterrupted run would have read, and
worker processes need no seeding. Labels are never read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from . import distributed as dist_utils

if TYPE_CHECKING:  # annotations only: config -> objective -> trunk -> feed would close a cycle
    from .config import TrainConfig


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
    whole state is therefore the step: resuming at step k starts the sampler at k. With several processes each
    rank yields its contiguous slice of the global batch (:func:`glare_core.distributed.shard_indices`).

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
