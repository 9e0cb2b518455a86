"""The training configuration: one typed ``@dataclass``, named presets and ``--set key.sub=value`` overrides.

Every "Design" choice of ``glare-method.md`` (section 2, "Optimisation", "Student and teacher", "Projection
heads") is a field here with that default; the objective's own choices (views, the three terms, temperatures,
centres) live in the nested :class:`glare_core.objective.ObjectiveConfig`. Known vs Design:

* Known (GLARE abstract, Figure 1): a self-supervised ViT is pre-trained further on a small unlabelled target
  set, only UniAdapter modules train, the teacher is a momentum encoder.
* Design (this project, from DINO's ``main_dino.py``): AdamW with lr 5e-4 * B / 256, linear warm-up then
  cosine to 1e-6, weight decay cosine 0.04 -> 0.4, EMA momentum cosine 0.996 -> 1, gradient clip 3.0, mixed
  precision chosen per machine.

Presets (:func:`preset`): ``smoke`` (seconds, random ``test_vit`` on synthetic scenes), ``demo`` (the README's
``make demo``), ``cpu`` (a real 2-core CPU run), ``cpu_trunk`` (the same on the cached frozen trunk, 224 px
views), ``colab_t4`` (a 16 GB T4) and ``paper`` (the full recipe).
A config round-trips through :meth:`TrainConfig.to_dict` / :meth:`TrainConfig.from_dict` and is saved as
``config.json`` beside every run.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import Registry
from .heads import HeadConfig
from .objective import ObjectiveConfig
from .precision import PRECISIONS
from .teacher import StudentTeacherConfig


@dataclass
class TrainConfig:
    """Everything one continual pre-training run needs (see the module docstring for Known vs Design)."""

    # ------------------------------------------------------------------ model
    base: str = "dinov2_vits14_imgfocus"
    """Base model for :func:`glare_core.weights.load_base` ("dino_vits16", "random:test_vit" ...)."""
    tuning: str = "adapter"
    """What trains: "adapter" (GLARE, Known), "lora" or "full" (comparison rows)."""
    rank: int = 64
    """UniAdapter bottleneck r, or LoRA rank (Design: 64)."""
    adapter_scale: float = 0.1
    """UniAdapter scale s (Design: 0.1)."""
    learnable_scale: bool = False
    """Train s as well (Design: fixed)."""
    lora_alpha: float | None = None
    """LoRA alpha when ``tuning="lora"`` (None: equal to the rank)."""
    heads: HeadConfig = field(default_factory=HeadConfig)
    """The DINO projection heads' shape when the base brings none (:class:`glare_core.heads.HeadConfig`;
    DINO: K = 65536 prototypes, hidden 2048, bottleneck 256)."""
    train_heads: bool | None = None
    """Train the heads. None (Design default): train a new head (the offline base and timm weights have none),
    keep a head loaded from the base checkpoint (official DINO files) frozen."""
    head_warmup_steps: int = 300
    """Head warm-up (Design): the adapters' learning rate is 0 for this many steps (when the heads train)."""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    """The GLARE objective: views, patch augmentation, the G / L / R terms and their weights."""
    trunk_blocks: int | None = None
    """The cached frozen trunk (this project's CPU design, :mod:`glare_core.trunk`): blocks 0..n-1 stay frozen
    and adapter-free, their outputs for a bank of augmented views are computed once and cached on disk, and
    each step runs only blocks n..depth-1 (with adapters), the heads and the losses. None (default): the
    full-depth step, as on a GPU and in Colab."""
    trunk_pairs: int = 4
    """Views in the trunk's bank: this many pairs of global views per image (each stored clean and
    patch-corrupted); epoch e reads pair (e + an offset per image) mod ``trunk_pairs``."""
    trunk_seed: int = 0
    """Seed of the bank's views and patch corruption. Not the run's ``seed``: runs of every seed and arm
    with the same bank settings read the same cached bank."""
    trunk_storage: str = "fp16"
    """Storage dtype of the cached trunk tokens: "fp16" (default; the offline DINOv2 ViT-S's tokens stay
    below 35 in magnitude, so fp16 keeps 8x finer rounding than bf16, about 2e-4 relative), "bf16" or
    "fp32"."""

    # ------------------------------------------------------------------ data
    dataset: str = "camvid"
    """Unlabelled target-domain images, a name for :func:`glare_core.data.build_dataset`."""
    split: str = "train"
    """Split to pre-train on (labels are never read)."""
    limit: int | None = None
    """Use only this many images (the reduced split, chosen with ``limit_seed``); None = all."""
    limit_seed: int | None = None
    """Seed that chooses the reduced split (None: ``seed``). Fixing it keeps the same subset across runs whose
    ``seed`` differs (the experiments' 3 seeds pre-train on one fixed IDD-Lite subset)."""
    root: str | None = None
    """Dataset folder (default: found under ``../shared/data`` or ``$GLARE_DATA_DIR``)."""
    load_size: int = 256
    """Working size: each image's short side is resized to this, then a square crop of this size is taken
    (random per epoch, reproducible from the seed), so batches stack. The views crop from it."""
    num_workers: int = 0
    """DataLoader worker processes (0 = load in the main process). Measured on 2 CPU cores: decoding and
    resizing a CamVid frame takes 25 ms, 0.4 s for a batch of 16, about 4 % of a 10 s training step, so 0 is
    the CPU default (a worker would compete with the step for the same two cores); use 2-4 with a GPU."""

    # ------------------------------------------------------------------ schedule
    batch_size: int = 64
    """Global batch size B (summed over data-parallel ranks)."""
    steps: int | None = None
    """Optimiser steps; None = ``epochs`` passes over the data."""
    epochs: int = 100
    """Epochs when ``steps`` is None (Design: ~100 epochs over a few thousand images)."""
    base_lr: float = 5e-4
    """Learning rate per 256 images: lr = base_lr * B / 256 (Design, DINO)."""
    lr: float | None = None
    """Peak learning rate; None = ``base_lr * batch_size / 256``."""
    min_lr: float = 1e-6
    """Learning rate at the end of the cosine (Design, DINO)."""
    warmup_fraction: float = 0.1
    """Fraction of the steps with a linear learning-rate warm-up (DINO: 10 of 100 epochs)."""
    weight_decay: float = 0.04
    """Weight decay at step 0 (Design, DINO); set ``weight_decay_end`` equal for a fixed value (e.g. 0.05)."""
    weight_decay_end: float = 0.4
    """Weight decay at the last step, reached on a cosine (Design, DINO)."""
    momentum_teacher: float = 0.996
    """EMA momentum of the teacher at step 0 (Design, DINO)."""
    momentum_teacher_end: float = 1.0
    """EMA momentum at the last step, reached on a cosine (Design, DINO)."""
    clip_grad: float = 3.0
    """Gradient clipping threshold (0 = off; Design, DINO's value), applied as ``clip_grad_mode`` says."""
    clip_grad_mode: str = "global"
    """``"global"``: clip the norm of all trainable gradients together (``clip_grad_norm_``, this project's
    default so far); ``"per_tensor"``: clip each tensor's gradient norm on its own, as DINO's
    ``utils.clip_gradients`` does."""
    teacher_temp_warmup_fraction: float | None = 0.3
    """Sets ``objective.warmup_teacher_temp_steps`` to this fraction of the run's steps (DINO: 30 of 100
    epochs); None keeps the objective's own value."""

    # ------------------------------------------------------------------ hardware
    device: str = "auto"
    """"auto" (CUDA if present, else CPU), "cpu" or "cuda"."""
    precision: str = "auto"
    """Autocast precision: "auto" (bf16 where the GPU or CPU multiplies bf16 natively, measured on a CPU; fp16
    with a GradScaler on a GPU without bf16; else fp32: :mod:`glare_core.precision`), or forced: "bf16" (on a
    GPU without bf16 it falls back to "fp16"), "fp16" (GPUs only) or "fp32". Trained and EMA tensors are
    float32 whatever is chosen."""
    attention: str = "auto"
    """Attention kernel of the ViT blocks: "fused" (``scaled_dot_product_attention``), "math" (explicit
    ``softmax(q k^T) v``) or "auto": "math" under bf16 autocast on a CPU, where it measured 2.1x faster than
    the fused kernel for forward + backward (ViT-S shapes, 257 tokens), "fused" everywhere else."""
    compile: bool = False
    """``torch.compile`` the student and teacher forwards (falls back to eager with a warning on failure)."""
    num_threads: int | None = None
    """CPU threads for torch during the run (None: torch's default, one per core). Tiny models run fastest on
    one thread, and so does any run on a machine whose cores are busy with other work."""
    seed: int = 0
    """Seed of everything: weights of new heads, data order, crops, views."""

    # ------------------------------------------------------------------ output
    log_every: int = 10
    """Print a progress line every this many steps (metrics.jsonl gets every step)."""
    checkpoint_every: int = 200
    """Write ``checkpoint.pt`` every this many steps (and at the end)."""
    snapshot_steps: tuple[int, ...] = ()
    """Also export the student's adapters after each of these steps, as
    ``adapter_student_step<N>.safetensors``: the same run read at shorter lengths (the study's dose-response).
    The schedules are the run's own (a snapshot at step 100 of 300 is not a 100-step run)."""
    telemetry_every: int = 10
    """Measure the run's instruments (:mod:`glare_core.telemetry`: adapter share per block, last-layer token
    change and its non-affine share, student and teacher) on a fixed batch every this many steps and at the
    end (0: never); a few per cent of a step's time at the default."""
    output_dir: str | None = None
    """Run folder; None = ``runs/<preset>-<timestamp>`` (chosen by ``glare pretrain``)."""
    preset: str = "custom"
    """The preset this config came from (recorded for the reader)."""

    # ------------------------------------------------------------------ derived values
    def student_teacher_config(self) -> StudentTeacherConfig:
        """The model part of this config, for :class:`glare_core.teacher.StudentTeacher`."""
        return StudentTeacherConfig(
            tuning=self.tuning,
            rank=self.rank,
            adapter_scale=self.adapter_scale,
            learnable_scale=self.learnable_scale,
            lora_alpha=self.lora_alpha,
            head=copy.deepcopy(self.heads),
            train_heads=self.train_heads,
            head_warmup_steps=self.head_warmup_steps,
            mask_token=needs_mask_token(self.objective),
            trunk_blocks=self.trunk_blocks or 0,
        )

    def peak_lr(self) -> float:
        """The peak learning rate: ``lr`` or ``base_lr * batch_size / 256`` (DINO's linear scaling rule)."""
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / 256

    def total_steps(self, num_images: int) -> int:
        """Optimiser steps of the run: ``steps``, or ``epochs`` full batches over ``num_images``."""
        if self.steps is not None:
            return int(self.steps)
        return max(1, self.epochs * max(1, num_images // self.batch_size))

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able nested dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from :meth:`to_dict`'s output; unknown keys raise ``ValueError``."""
        return _from_dict(cls, data, prefix="")

    def save(self, path: str | Path) -> None:
        """Write ``config.json``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a ``config.json`` written by :meth:`save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(
                f"cannot read the training config {path}: {e}. Fix: restore it, or start afresh in a new "
                "--out"
            ) from e
        return cls.from_dict(data)

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` with the fix for inconsistent values; returns self.

        Numbers must be finite and in range (a learning rate of NaN, -1 or 1e30, a rank or a batch of 0 are
        refused here, before any work), and the choices must be known ones.
        """
        _check_numbers(self)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: choose one of {PRECISIONS}")
        if self.clip_grad_mode not in ("global", "per_tensor"):
            raise ValueError(f"clip_grad_mode={self.clip_grad_mode!r}: choose 'global' or 'per_tensor'")
        if self.tuning not in ("adapter", "lora", "full"):
            raise ValueError(f"tuning={self.tuning!r}: choose 'adapter', 'lora' or 'full'")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps={self.steps} must be >= 1 (or None to use epochs)")
        if any(int(n) < 1 for n in self.snapshot_steps):
            raise ValueError(f"snapshot_steps={list(self.snapshot_steps)}: each step must be >= 1")
        if self.attention not in ("auto", "fused", "math"):
            raise ValueError(f"attention={self.attention!r}: choose 'auto', 'fused' or 'math'")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device={self.device!r}: choose 'auto', 'cpu' or 'cuda'")
        return self


MAX_LR = 1.0
"""Largest accepted learning rate: AdamW moves every weight by about lr per step, so above 1 a run
diverges."""


def _check_numbers(cfg: TrainConfig) -> None:
    """Ranges of the numeric fields of a :class:`TrainConfig` (see :meth:`TrainConfig.validate`)."""

    def need(key: str, value: Any, ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"{key}={value!r}: must be {what}; fix it with --set {key}=...")

    def finite(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    for key in ("lr", "base_lr"):
        v = getattr(cfg, key)
        if v is not None:
            need(key, v, finite(v) and 0 < v <= MAX_LR, f"a finite number in (0, {MAX_LR}]")
    need("min_lr", cfg.min_lr, finite(cfg.min_lr) and 0 <= cfg.min_lr <= cfg.peak_lr(), "in [0, peak lr]")
    for key in ("rank", "batch_size", "epochs", "load_size", "log_every", "checkpoint_every"):
        v = getattr(cfg, key)
        need(key, v, isinstance(v, int) and v >= 1, "an integer >= 1")
    for key in ("head_warmup_steps", "num_workers"):
        v = getattr(cfg, key)
        need(key, v, isinstance(v, int) and v >= 0, "an integer >= 0")
    for key in ("limit", "num_threads"):
        v = getattr(cfg, key)
        need(key, v, v is None or (isinstance(v, int) and v >= 1), "an integer >= 1 (or none)")
    for key in (
        "warmup_fraction",
        "momentum_teacher",
        "momentum_teacher_end",
        "teacher_temp_warmup_fraction",
    ):
        v = getattr(cfg, key)
        if v is not None:
            need(key, v, finite(v) and 0 <= v <= 1, "a number in [0, 1]")
    for key in ("weight_decay", "weight_decay_end", "clip_grad", "adapter_scale"):
        v = getattr(cfg, key)
        need(key, v, finite(v) and v >= 0, "a finite number >= 0")
    if cfg.lora_alpha is not None:
        need(
            "lora_alpha", cfg.lora_alpha, finite(cfg.lora_alpha) and cfg.lora_alpha > 0, "a finite number > 0"
        )
    for key in ("out_dim", "hidden_dim", "bottleneck_dim", "nlayers"):
        v = getattr(cfg.heads, key)
        need(f"heads.{key}", v, isinstance(v, int) and v >= 1, "an integer >= 1")
    obj = cfg.objective
    for key in ("lambda_global", "lambda_local", "lambda_regional"):
        v = getattr(obj, key)
        need(f"objective.{key}", v, finite(v) and v >= 0, "a finite number >= 0")
    for key in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
        v = getattr(obj, key)
        need(f"objective.{key}", v, finite(v) and v > 0, "a finite number > 0")


# ---------------------------------------------------------------------------- presets
PRESETS: Registry[Callable[[], TrainConfig]] = Registry("preset")
"""The named presets (name -> a function returning a fresh :class:`TrainConfig`), in this order."""


@PRESETS.register("smoke")
def _smoke() -> TrainConfig:
    """Seconds on a CPU: the random ``test_vit`` on synthetic textured scenes, tiny heads."""
    cfg = TrainConfig(
        base="random:test_vit",
        dataset="synthetic",
        limit=16,
        load_size=96,
        batch_size=4,
        steps=6,
        lr=1e-3,
        warmup_fraction=0.0,
        heads=HeadConfig(out_dim=64, hidden_dim=64, bottleneck_dim=32),
        head_warmup_steps=0,
        rank=8,
        num_threads=1,
        log_every=1,
        checkpoint_every=3,
        preset="smoke",
    )
    cfg.objective.views.global_size = 64  # 4 x 4 cells of test_vit's 16 px patches
    return cfg


@PRESETS.register("demo")
def _demo() -> TrainConfig:
    """The README's ``make demo``: GLARE on CamVid from the offline base on the cached trunk, 2 CPU cores.

    The ``cpu_trunk`` preset (same model, views, heads and teacher) cut to 150 steps, 15 of them head warm-up,
    with a bank of two view pairs per image (734 for CamVid train) so that building it stays short.
    """
    cfg = _cpu_trunk()
    cfg.steps = 150
    cfg.head_warmup_steps = 15
    cfg.trunk_pairs = 2
    cfg.checkpoint_every = 50
    cfg.preset = "demo"
    return cfg


@PRESETS.register("cpu")
def _cpu() -> TrainConfig:
    """A real run on 2 CPU cores: the offline DINOv2 ViT-S/14 base on CamVid train, about 15 minutes.

    How it was sized (2-core AMD EPYC, torch 2.14.1, bf16 autocast, G + L + R): 168 px views (12 x 12 cells of
    14 px) instead of 224 px, because a step at 224 px took 2.7x as long as at 168 px (measured: 26.9 s vs
    10.1 s for 16 images, one thread); batch 16; heads with K = 4096 prototypes and hidden width 1024 instead
    of DINO's 65536 and 2048. With this preset a step of 16 CamVid images took 7.4 s on one thread and 15 s on
    two, while other jobs kept both cores busy (load average 8-9). An idle machine with both threads is
    expected (not measured) to need about 4.5 s, so 200 steps take about 15 minutes; on a busy machine add
    ``--set num_threads=1``. ``lr``, the EMA momentum and the head init are set for a short run (DINO's
    rule would give lr 5e-4 * 16 / 256 = 3e-5 and momentum 0.996, with which the exported teacher adapter of a
    few hundred steps barely moves; ``results/tuning/README.md`` has the runs these values come from).
    """
    cfg = TrainConfig(
        base="dinov2_vits14_imgfocus",
        dataset="camvid",
        load_size=224,
        batch_size=16,
        steps=200,
        lr=1e-3,
        warmup_fraction=0.1,
        momentum_teacher=0.99,
        heads=HeadConfig(out_dim=4096, hidden_dim=1024, bottleneck_dim=256, init="data"),
        head_warmup_steps=30,
        log_every=10,
        checkpoint_every=50,
        preset="cpu",
    )
    cfg.objective.views.global_size = 168
    return cfg


@PRESETS.register("cpu_trunk")
def _cpu_trunk() -> TrainConfig:
    """The cached frozen trunk on 2 CPU cores (this project's CPU design, :mod:`glare_core.trunk`).

    The ``cpu`` preset with blocks 0-7 frozen, adapter-free and cached (adapters in blocks 8-11), 224 px views
    (16 x 16 cells; a step costs about a third of the full-depth one, ``results/trunk/README.md``), a sharp
    teacher (temperature 0.02 from the first step: with 0.04-0.07 the global targets drift to the uniform
    distribution on CamVid), 300 steps, and two choices for GLARE's own terms: corrupted cells filled with
    the image's mean colour (blur left their last-block tokens at cosine 0.98 with the clean ones) and the
    teacher's region embedding as the query of the regional correspondence (``region_query="teacher"``).
    Chosen on the tuning split (``tune_train`` / ``tune_val``), never on val: ``results/tuning/README.md``,
    "engine_pilot".
    """
    cfg = _cpu()
    cfg.trunk_blocks = 8
    cfg.load_size = 256
    cfg.objective.views.global_size = 224
    cfg.objective.teacher_temp = 0.02
    cfg.objective.warmup_teacher_temp = 0.02
    cfg.objective.patch_aug.kind = "mask_mean"
    cfg.objective.region_query = "teacher"
    cfg.steps = 300
    cfg.telemetry_every = 50
    cfg.preset = "cpu_trunk"
    return cfg


@PRESETS.register("colab_t4")
def _colab_t4() -> TrainConfig:
    """A 16 GB Colab T4: the ``paper`` recipe (DINO ViT-S/16 on CamVid at 224 px, batch 64, 100 epochs) with
    K = 16384 prototypes instead of 65536, 50 head warm-up steps, two loader workers and a checkpoint every
    100 steps.

    ``auto`` precision: fp16 autocast with a GradScaler on a T4, which has no bf16 (bf16 on an L4 or A100).
    100 epochs of CamVid's 367 training images = 500 steps. Not measured here (no GPU); if it runs out of
    memory the error names this fix: ``--set batch_size=32``.
    """
    cfg = _paper()
    cfg.heads.out_dim = 16384
    cfg.head_warmup_steps = 50
    cfg.num_workers = 2
    cfg.checkpoint_every = 100
    cfg.preset = "colab_t4"
    return cfg


@PRESETS.register("paper")
def _paper() -> TrainConfig:
    """The full recipe of ``glare-method.md`` section 2, Design defaults everywhere.

    DINO ViT-S/16, 224 px views, K = 65536, B = 64, lr 5e-4 * B / 256, 100 epochs, 300 head warm-up steps.
    """
    return TrainConfig(base="dino_vits16", load_size=256, epochs=100, preset="paper")


def needs_mask_token(objective: ObjectiveConfig) -> bool:
    """True when the objective's patch augmentation replaces cells by a learned mask token."""
    return bool(objective.use_local and objective.patch_aug.kind == "mask_token")


def preset(name: str) -> TrainConfig:
    """A fresh :class:`TrainConfig` of a named preset: smoke, demo, cpu, cpu_trunk, colab_t4 or paper."""
    return PRESETS.lookup(name)()


# ---------------------------------------------------------------------------- --set key.sub=value
def apply_overrides(cfg: Any, overrides: Sequence[str]) -> Any:
    """Apply ``key.sub=value`` strings to a (nested) dataclass config, in place; returns it.

    The value is parsed with the field's declared type: ``int``, ``float``, ``bool`` (true/false/1/0/yes/no),
    ``str``, ``X | None`` ("none" or "null" gives None), tuples and lists (JSON ``[1, 2]`` or ``1,2``).

    Raises:
        ValueError: for a malformed item, an unknown key (with the closest valid keys) or a value of the wrong
            type.
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. --set objective.lambda_local=0.5")
        key, raw = item.split("=", 1)
        key = key.strip()
        target, parts = cfg, key.split(".")
        for depth, name in enumerate(parts):
            fields = {f.name: f for f in dataclasses.fields(target)}
            if name not in fields:
                prefix = ".".join(parts[:depth])
                valid = [f"{prefix}.{n}" if prefix else n for n in fields]
                close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
                hint = (
                    f"did you mean {', '.join(close)}?" if close else f"valid keys here: {', '.join(valid)}"
                )
                raise ValueError(f"--set {item!r}: unknown config key {key!r}; {hint}")
            hint_type = typing.get_type_hints(type(target))[name]
            if depth == len(parts) - 1:
                if dataclasses.is_dataclass(hint_type):
                    raise ValueError(
                        f"--set {item!r}: {key!r} is a group; set one of its fields, e.g. {key}.x=..."
                    )
                setattr(target, name, parse_value(raw.strip(), hint_type, key))
            else:
                target = getattr(target, name)
                if not dataclasses.is_dataclass(target):
                    raise ValueError(f"--set {item!r}: {'.'.join(parts[: depth + 1])!r} has no sub-keys")
    return cfg


def parse_value(raw: str, tp: Any, key: str = "value") -> Any:
    """Parse ``raw`` as type ``tp`` (a resolved type hint); ``ValueError`` naming ``key`` if it fails."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and raw.lower() in ("none", "null"):
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return parse_value(raw, arg, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if origin is typing.Literal:
        for choice in args:
            if str(choice) == raw:
                return choice
        raise ValueError(f"{key}={raw!r}: choose one of {list(args)}")
    if origin in (tuple, list) or tp in (tuple, list):
        text = raw if raw.startswith("[") else "[" + raw + "]"
        try:
            items = json.loads(text)
        except json.JSONDecodeError:
            items = [s.strip() for s in raw.strip("[]()").split(",") if s.strip()]
        if args and args[-1] is not Ellipsis and origin is tuple and len(args) != len(items):
            raise ValueError(f"{key}={raw!r}: expected {len(args)} values")
        elem = (lambda i: args[i] if len(args) > i and args[i] is not Ellipsis else args[0]) if args else None
        values = [parse_value(str(v), elem(i), key) if elem else v for i, v in enumerate(items)]
        return tuple(values) if (origin or tp) is tuple else values
    if tp is bool:
        low = raw.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{key}={raw!r}: expected a boolean (true/false)")
    if tp in (int, float):
        try:
            value = float(raw) if tp is float else int(raw)
        except ValueError:
            if tp is int:
                try:
                    as_float = float(raw)
                except ValueError:
                    as_float = None
                if as_float is not None and as_float.is_integer():
                    return int(as_float)
            raise ValueError(
                f"{key}={raw!r}: expected {'a number' if tp is float else 'an integer'}"
            ) from None
        return value
    if tp is str or tp is Any:
        return raw
    raise ValueError(f"{key}: cannot parse values of type {tp!r} from the command line")


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Recursive helper of :meth:`TrainConfig.from_dict`."""
    if not isinstance(data, dict):
        raise ValueError(f"config group {prefix or 'root'!r} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config keys {[prefix + k for k in unknown]} (valid: {sorted(names)})")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _from_dict(tp, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _restore_tuples(value, tp)
    return cls(**kwargs)


def _restore_tuples(value: Any, tp: Any) -> Any:
    """JSON turns tuples into lists; turn them back where the field type says tuple."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        for arg in typing.get_args(tp):
            if arg is not type(None) and typing.get_origin(arg) is tuple and isinstance(value, list):
                return tuple(value)
        return value
    if (origin is tuple or tp is tuple) and isinstance(value, list):
        return tuple(value)
    return value
