"""The cached frozen trunk: this project's CPU design for continual pre-training, not the paper's.

GLARE (Known) trains UniAdapters in every block of the ViT, with a full forward of the teacher and a full
forward and backward of the student at every step. On two CPU cores that step costs 4 s for 16 images at 224
px, so a run of a few hundred steps sees each CamVid frame a handful of times. This module trades adapters in
the first blocks for speed (Design, this project's; GLARE's paper does not do it):

* ``trunk_blocks = n`` (:class:`~glare_core.config.TrainConfig`): blocks ``0 .. n - 1`` have no UniAdapter (or
  LoRA) modules and stay frozen, in the student and the teacher alike, so both compute the *same* function
  there: the frozen base's.
* A **bank** of augmented views is built once: for every training image, ``trunk_pairs`` (V) pairs of global
  views made by the objective's own :meth:`~glare_core.objective.GlareObjective.prepare_views` (random resized
  crop, flip, colour, blur, solarisation; crop boxes and flips kept), each view stored as the trunk's output
  tokens after block ``n - 1``, (P + N, D) with the [CLS] token, for the clean view (the teacher's input)
  *and* for its patch-corrupted copy (the student's input, the objective's patch augmentation, its cell mask
  kept). The local and regional terms therefore work unchanged: they read patch tokens, masks, the teacher's
  [CLS] attention (computed in the last block, which is never in the trunk) and crop boxes. Every pixel-level
  corruption (blur, mean colour, noise, jitter) is cached this way; the learned mask token is not (it enters
  before block 0 and changes as it trains), so :func:`check_trunk` refuses ``"mask_token"``.
* Each step reads a batch of bank entries and runs only blocks ``n .. depth - 1`` (with adapters) for the
  teacher (clean tokens) and the student (corrupted tokens, forward and backward), the heads and the same
  losses: :meth:`~glare_core.objective.GlareObjective.encode_cached`, then the shared
  :meth:`~glare_core.objective.GlareObjective.terms`. Split this way, the tail forward on cached float32
  tokens equals the full-depth forward on the images (``tests/test_trunk.py``).

What changes compared with the full-depth step: (1) adapters exist only in the last ``depth - n`` blocks; (2)
the views are a fixed bank: epoch e shows image i its pair ``(e + offset_i) mod V`` (``offset_i`` drawn from
the run's seed and i), so views repeat after V epochs instead of being fresh at every step; (3) the trunk
tokens are stored in ``trunk_storage`` (fp16 by default: the offline DINOv2 ViT-S's residual stream stays
below 35 in magnitude, so fp16's 2e-4 relative rounding is 8x finer than bf16's; bf16 and fp32 can be chosen,
and fp16 refuses to store a value it would overflow). ``tools/trunk_exactness.py`` measures the cost on the
real base (4 CamVid images, 224 px, n = 6, 8, 10): float32 storage gives the full-depth losses and gradients
bit for bit; fp16 storage moves each loss term by less than 1e-6 (relative) and no gradient tensor by more
than 0.6 %; bf16 storage by up to 1e-5 and 8 %.

The bank lives in the cache (``<cache>/trunk/bank-<key hash>.safetensors``) under a key of everything that
determines it: the base's name and a SHA-256 of every tensor that acts before block n (embeddings, trunk
blocks, input normalisation), n, the dataset (name, split, reduced-split settings, file names and sizes,
working size), the view and patch-augmentation settings, the bank's own seed (``trunk_seed``, not the run's:
every seed and arm with the same settings shares one bank), V, the precision and attention kernel it was
computed with, the storage dtype and the torch version. The file's metadata holds that key and a SHA-256 of
its tensors; a reused bank is verified against both, never trusted, and a mismatch raises :class:`BankError`
naming the file. Nothing of the bank goes into checkpoints: it is recomputable from its key, and a run's
position in it is the step.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .runs import atomic_path

if TYPE_CHECKING:
    from .config import TrainConfig
    from .objective import GlareObjective
    from .teacher import StudentTeacher

BANK_FORMAT = "glare-trunk-bank/1"
STORAGE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class BankError(ValueError):
    """A cached bank that does not match its key or its checksum; the message names the file."""


@dataclass
class TrunkBatch:
    """A batch of bank entries: the objective's input in place of images (it dispatches on the type).

    Attributes:
        clean: two (B, P + N, D) float tensors: the clean global views' tokens after the trunk (teacher
            input).
        corrupted: two (B, P + N, D): the patch-corrupted copies' tokens (student input); the clean ones when
            the local term is off.
        masks: two (B, N) bool corrupted cells (empty list when the local term is off).
        boxes: (2, B, 4) crop boxes; flips: (2, B) bool (as :class:`~glare_core.views.Views`).
        grid: the views' patch grid (h, w).
        start_block: n, the first block the step runs.
    """

    clean: list[torch.Tensor]
    corrupted: list[torch.Tensor]
    masks: list[torch.Tensor]
    boxes: torch.Tensor
    flips: torch.Tensor
    grid: tuple[int, int]
    start_block: int

    def __len__(self) -> int:
        return int(self.boxes.shape[1])


# ---------------------------------------------------------------------------- settings
def check_trunk(cfg: TrainConfig, depth: int) -> None:
    """Raise ``ValueError`` (with the fix) when ``cfg.trunk_blocks`` cannot work with this config."""
    n = cfg.trunk_blocks
    if not n:  # None (or 0): the full-depth step
        return
    if not 1 <= n < depth:
        raise ValueError(
            f"trunk_blocks={n}: choose 1 .. {depth - 1} for a {depth}-block ViT (None: the full-depth step)"
        )
    if cfg.objective.views.n_local:
        raise ValueError(
            "trunk_blocks needs objective.views.n_local=0: the bank caches the two global views only"
        )
    if cfg.objective.use_local and cfg.objective.patch_aug.kind == "mask_token":
        raise ValueError(
            "trunk_blocks cannot cache the 'mask_token' corruption (its learned token enters before "
            "block 0, so its trunk output changes at every step); use another objective.patch_aug.kind "
            "(e.g. 'mask_mean' or 'blur')"
        )
    if cfg.trunk_pairs < 1:
        raise ValueError(f"trunk_pairs={cfg.trunk_pairs} must be >= 1")
    if cfg.trunk_storage not in STORAGE_DTYPES:
        raise ValueError(f"trunk_storage={cfg.trunk_storage!r}: choose one of {sorted(STORAGE_DTYPES)}")


def entry_seed(seed: int, index: int, pair: int) -> int:
    """The seed of one bank entry's views and corruption: from (bank seed, image, pair) only, so an entry does
    not depend on the order or batching in which the bank was built."""
    return int(np.random.SeedSequence([seed, index, pair]).generate_state(1, dtype=np.uint64)[0] >> 1)


def pair_for(epoch: int, index: int, pairs: int, seed: int) -> int:
    """Which of image ``index``'s V pairs epoch ``epoch`` reads: ``(epoch + offset) mod V``, the offset drawn
    from (run seed, index); every pair once in V epochs, and fixed by the step (exact resume)."""
    offset = int(np.random.default_rng([seed, index]).integers(pairs))
    return (epoch + offset) % pairs


# ---------------------------------------------------------------------------- the key
def _sha256_tensors(items: Sequence[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of each tensor, in the given order."""
    h = hashlib.sha256()
    for name, t in items:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def trunk_fingerprint(backbone: Any, n: int) -> str:
    """SHA-256 of everything that acts before block ``n``: the tensors of the embeddings and the trunk blocks
    (as stored: bf16 where the frozen base was cast) and the input normalisation."""
    from .tuning import _before_block

    state = backbone.vit.state_dict()
    items = [(k, v) for k, v in sorted(state.items()) if _before_block(k, n)]
    items += [("mean", backbone.mean), ("std", backbone.std)]
    items += [("pos_embed_antialias", torch.tensor([bool(backbone.pos_embed_antialias)]))]
    return _sha256_tensors(items)


def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """Name, split, size and a SHA-256 of the image file names and byte sizes (or pseudo paths)."""
    h = hashlib.sha256()
    for p in dataset.image_paths:
        size = os.stat(p).st_size if os.path.isfile(p) else -1
        h.update(f"{Path(p).name}|{size}\n".encode())
    return {
        "name": getattr(dataset, "name", type(dataset).__name__),
        "split": getattr(dataset, "split", None),
        "images": len(dataset.image_paths),
        "files_sha256": h.hexdigest(),
        "seed": getattr(dataset, "seed", None),  # synthetic scenes are generated from it
        "size": list(dataset.size) if getattr(dataset, "size", None) else None,
    }


def bank_key(
    cfg: TrainConfig, model: StudentTeacher, dataset: Any, precision: str, attention: str
) -> dict[str, Any]:
    """Everything that determines a bank's contents (see the module docstring)."""
    n = int(cfg.trunk_blocks or 0)
    obj = cfg.objective
    return {
        "format": BANK_FORMAT,
        "base": cfg.base,
        "trunk_sha256": trunk_fingerprint(model.student, n),
        "trunk_blocks": n,
        "dataset": dataset_fingerprint(dataset),
        "limit": cfg.limit,
        "limit_seed": (cfg.seed if cfg.limit_seed is None else cfg.limit_seed) if cfg.limit else None,
        "load_size": cfg.load_size,
        "views": asdict(obj.views),
        "patch_aug": asdict(obj.patch_aug),
        "seed": cfg.trunk_seed,
        "pairs": cfg.trunk_pairs,
        "precision": precision,
        "attention": attention,
        "storage": cfg.trunk_storage,
        "torch": torch.__version__,
    }


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def bank_path(key: dict[str, Any], root: str | Path | None = None) -> Path:
    """``<cache>/trunk/bank-<first 20 hex digits of the key's SHA-256>.safetensors``."""
    from .paths import cache_dir

    root = Path(root) if root is not None else cache_dir() / "trunk"
    return root / f"bank-{key_hash(key)[:20]}.safetensors"


# ---------------------------------------------------------------------------- building
@torch.no_grad()
def encode_entries(
    model: StudentTeacher,
    objective: GlareObjective,
    images: torch.Tensor,
    seeds: Sequence[int],
    n: int,
    storage: torch.dtype = torch.float16,
) -> dict[str, torch.Tensor]:
    """Bank entries for a batch of images: views and corruption (one generator per entry), then blocks 0..n-1.

    Call it under the run's autocast (the trunk then computes in the run's precision).

    Args:
        model: the student/teacher model (its trunk blocks are the frozen base's).
        objective: supplies :meth:`~glare_core.objective.GlareObjective.prepare_views` and its settings.
        images: (E, 3, H, W) in [0, 1], one per entry (the same image may appear with different seeds).
        seeds: E entry seeds (:func:`entry_seed`).
        n: trunk blocks.
        storage: dtype the tokens are stored in.

    Returns:
        ``clean`` and ``corrupted`` (E, 2, P + N, D) (the patch corruption is made whether or not the local
        term is on, so every arm can share the bank), ``masks`` (E, 2, N) bool, ``boxes`` (E, 2, 4) float32,
        ``flips`` (E, 2) bool.
    """
    backbone, p = model.student, model.patch_size
    X, Xs, masks, boxes, flips = [], [], [], [], []
    for image, seed in zip(images, seeds):
        g = torch.Generator().manual_seed(int(seed))
        views, xs, ms, _ = objective.prepare_views(image[None], p, g, corrupt=True)
        X.append(torch.cat(views.globals))  # (2, 3, S, S): view 1, view 2
        Xs.append(torch.cat(xs))
        masks.append(torch.cat(ms))
        boxes.append(views.boxes[:, 0])
        flips.append(views.flips[:, 0])
    E = len(X)
    pixels = torch.cat(X + Xs)  # (E * 2 * 2, 3, S, S)
    tokens, _ = backbone.trunk(pixels, n)
    tokens = tokens.float()
    if storage == torch.float16 and not bool(tokens.abs().max() <= torch.finfo(torch.float16).max):
        raise ValueError(
            f"trunk tokens reach {tokens.abs().max().item():.3g}, beyond fp16's range; "
            "use --set trunk_storage=bf16 (or fp32)"
        )
    tokens = tokens.to(storage).cpu()
    return {
        "clean": tokens[: 2 * E].reshape(E, 2, *tokens.shape[1:]),
        "corrupted": tokens[2 * E :].reshape(E, 2, *tokens.shape[1:]),
        "masks": torch.stack(masks).bool().cpu(),
        "boxes": torch.stack(boxes).float().cpu(),
        "flips": torch.stack(flips).bool().cpu(),
    }


def build_bank(
    model: StudentTeacher,
    objective: GlareObjective,
    feed: Any,
    cfg: TrainConfig,
    precision: Any,
    device: torch.device,
    chunk: int = 16,
    say: Any = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """All V x (number of images) entries of a bank, in memory; entry ``index * V + pair``.

    Args:
        feed: a :class:`~glare_core.feed.ImageFeed` seeded with ``cfg.trunk_seed``; pair v of image i is
            cut from its item ``(v, i)`` (each pair gets its own working crop).
        chunk: entries per trunk forward.

    Returns:
        the tensors and build statistics (``seconds``, ``images_per_s`` (view pairs per second),
        ``images_sha256`` of the working crops used).
    """
    from .precision import autocast

    n, V = int(cfg.trunk_blocks or 0), cfg.trunk_pairs
    storage = STORAGE_DTYPES[cfg.trunk_storage]
    entries = [(i, v) for i in range(len(feed)) for v in range(V)]
    parts: dict[str, list[torch.Tensor]] = {}
    h = hashlib.sha256()
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    for start in range(0, len(entries), chunk):
        batch = entries[start : start + chunk]
        crops = [feed[(v, i)] for i, v in batch]
        for c in crops:
            h.update(c.contiguous().numpy().data)
        images = torch.stack(crops).to(device).float().div_(255)
        seeds = [entry_seed(cfg.trunk_seed, i, v) for i, v in batch]
        with autocast(device, precision):
            out = encode_entries(model, objective, images, seeds, n, storage)
        for k, t in out.items():
            parts.setdefault(k, []).append(t)
        if say and (start // chunk) % 10 == 0:
            say(f"[glare] trunk bank: {start + len(batch)}/{len(entries)} view pairs", flush=True)
    seconds = time.perf_counter() - t0
    model.train(was_training)
    tensors = {k: torch.cat(v) for k, v in parts.items()}
    stats = {"seconds": seconds, "images_per_s": len(entries) / seconds, "images_sha256": h.hexdigest()}
    return tensors, stats


# ---------------------------------------------------------------------------- storing and verifying
def save_bank(path: Path, tensors: dict[str, torch.Tensor], key: dict[str, Any], meta: dict[str, Any]) -> str:
    """Write the bank as safetensors (temporary file, then rename); metadata ``format``, ``key`` (JSON),
    ``sha256`` (of the tensors, :func:`_sha256_tensors` in sorted-name order) and ``meta`` (JSON). Returns the
    checksum."""
    from safetensors.torch import save_file

    checksum = _sha256_tensors(sorted(tensors.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": BANK_FORMAT,
        "key": json.dumps(key, sort_keys=True),
        "sha256": checksum,
        "meta": json.dumps(meta, sort_keys=True),
    }
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return checksum


def load_bank(path: Path, key: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a bank and verify it: format, the key it was built for and the checksum of its tensors.

    Returns:
        the tensors and the stored ``meta`` plus the verified ``sha256``.

    Raises:
        BankError: naming the file and what differs; delete the file to rebuild it.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    fix = "delete it and run again to rebuild it"
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file is reported the same way
        raise BankError(f"{path}: cannot read this trunk bank ({type(e).__name__}: {e}); {fix}") from None
    if metadata.get("format") != BANK_FORMAT:
        raise BankError(f"{path}: not a trunk bank (format {metadata.get('format')!r}); {fix}")
    stored = json.loads(metadata.get("key", "{}"))
    if stored != json.loads(json.dumps(key, sort_keys=True)):
        diff = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
        raise BankError(f"{path}: built for a different key (differs in {diff}); {fix}")
    checksum = _sha256_tensors(sorted(tensors.items()))
    if checksum != metadata.get("sha256"):
        raise BankError(
            f"{path}: checksum mismatch (stored {metadata.get('sha256', '')[:12]}, computed "
            f"{checksum[:12]}): the file is damaged or was modified; {fix}"
        )
    return tensors, {**json.loads(metadata.get("meta", "{}")), "sha256": checksum}


# ---------------------------------------------------------------------------- reading
class TrunkBank:
    """The bank's tensors in memory, read by entry.

    Args:
        tensors: from :func:`build_bank` or :func:`load_bank`.
        pairs: V; start_block: n; grid: the views' patch grid; path: the file (for messages), if any.
        corrupted: give the student the corrupted copies (the local term is on), else the clean views.
    """

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        pairs: int,
        start_block: int,
        grid: tuple[int, int],
        path: Path | None = None,
        corrupted: bool = True,
    ):
        self.tensors, self.pairs, self.start_block, self.path = tensors, int(pairs), int(start_block), path
        self.corrupted = corrupted
        self.grid = (int(grid[0]), int(grid[1]))
        tokens = tensors["clean"].shape[2]
        if tokens <= self.grid[0] * self.grid[1] or len(self) % self.pairs:
            raise BankError(
                f"{path or 'bank'}: {tokens} tokens per view and {len(self)} entries do not fit a "
                f"{self.grid} grid and {self.pairs} pairs per image; delete it and run again to rebuild it"
            )

    def __len__(self) -> int:
        return int(self.tensors["clean"].shape[0])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def batch(self, rows: Sequence[int], device: torch.device | str = "cpu") -> TrunkBatch:
        """Entries ``rows`` as a :class:`TrunkBatch` on ``device``; tokens in float32."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        t = self.tensors
        clean = list(t["clean"][idx].to(device).float().unbind(1))  # 2 x (B, T, D)
        corrupted = list(t["corrupted"][idx].to(device).float().unbind(1)) if self.corrupted else clean
        masks = list(t["masks"][idx].to(device).unbind(1)) if self.corrupted else []
        return TrunkBatch(
            clean=clean,
            corrupted=corrupted,
            masks=masks,
            boxes=t["boxes"][idx].to(device).transpose(0, 1).contiguous(),
            flips=t["flips"][idx].to(device).transpose(0, 1).contiguous(),
            grid=self.grid,
            start_block=self.start_block,
        )


def trunk_batches(bank: TrunkBank, sampler: Any, device: torch.device, seed: int) -> Iterator[TrunkBatch]:
    """The step-by-step feed of a trunk run: the sampler's ``(epoch, index)`` pairs (the same data order as
    the full-depth run) -> entries ``index * V + pair_for(epoch, index)``. Positioned by the sampler's step,
    so a resumed run reads what an uninterrupted one would."""
    for keys in sampler:
        rows = [i * bank.pairs + pair_for(e, i, bank.pairs, seed) for e, i in keys]
        yield bank.batch(rows, device)


def prepare_bank(run: Any, dataset: Any, verbose: bool = True) -> tuple[TrunkBank, dict[str, Any]]:
    """Load and verify this run's bank from the cache, or build it (rank 0) and store it there.

    Args:
        run: the :class:`~glare_core.train.Run` (model, objective, precision, process info).
        dataset: the unlabelled training images (the feed's dataset).

    Returns:
        the bank and what to record in the run's summary: ``path``, ``sha256`` (of its tensors: a
        checkpoint records it, so a run resumes only on the bank it started with), ``built`` (this run built
        it), ``build_seconds`` and ``build_images_per_s`` (view pairs per second; None when loaded),
        ``entries``, ``storage``, ``megabytes``.
    """
    from . import distributed as dist_utils
    from .feed import ImageFeed

    cfg, model, info = run.cfg, run.model, run.info
    check_trunk(cfg, model.student.depth)
    attention = "fused" if getattr(model.student.vit.blocks[-1].attn, "fused_attn", False) else "math"
    key = bank_key(cfg, model, dataset, run.precision.name, attention)
    path = bank_path(key)
    say = print if (verbose and info.is_main) else None
    record: dict[str, Any] = {"path": str(path), "built": False, "build_seconds": None}
    tensors = None
    if info.is_main and not path.exists():
        if say:
            say(f"[glare] building the trunk bank {path} (blocks 0..{cfg.trunk_blocks - 1})", flush=True)
        feed = ImageFeed(dataset, cfg.load_size, seed=cfg.trunk_seed)
        tensors, stats = build_bank(model, run.objective, feed, cfg, run.precision, info.device, say=say)
        checksum = save_bank(path, tensors, key, {"images_sha256": stats["images_sha256"]})
        record.update(built=True, build_seconds=stats["seconds"], build_images_per_s=stats["images_per_s"])
        record["sha256"] = checksum
        if say:
            say(f"[glare] trunk bank built in {stats['seconds']:.0f} s", flush=True)
    dist_utils.barrier(info)
    if tensors is None:
        tensors, meta = load_bank(path, key)
        record["sha256"] = meta["sha256"]
    side = cfg.objective.views.global_size // model.patch_size
    bank = TrunkBank(tensors, cfg.trunk_pairs, cfg.trunk_blocks, (side, side), path, cfg.objective.use_local)
    record.update(entries=len(bank), storage=cfg.trunk_storage, megabytes=bank.nbytes / 2**20)
    return bank, record


def check_resumed_bank(checkpoint: dict[str, Any] | None, record: dict[str, Any], path: Path) -> None:
    """Refuse to resume a trunk run on another bank than the one its checkpoint at ``path`` was trained on."""
    if checkpoint is None or "trunk_bank" not in checkpoint:
        return
    if checkpoint["trunk_bank"] != record["sha256"]:
        raise BankError(
            f"{path} was trained on the trunk bank with SHA-256 {checkpoint['trunk_bank'][:12]}, but these "
            f"settings give {record['path']} ({record['sha256'][:12]}); resume with the run's own "
            "config.json, or start a new run"
        )
