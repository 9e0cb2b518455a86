"""The student and its momentum teacher: one frozen backbone, two sets of adapters, DINO heads.

Known (GLARE Figure 1): a base encoder (theta, theta_A) and a momentum encoder (theta', theta'_A); each view
goes through both; everything is frozen except the base encoder's adapter. Design (``glare-method.md`` section
2, "Student and teacher" and "Projection heads"):

* the student and the teacher share the frozen backbone tensors (the same ``nn.Parameter`` objects, no
  copies); only the tuning tensors (UniAdapter by default; LoRA factors; every weight for full fine-tuning)
  are duplicated, and the teacher's copy is the student's exponential moving average,
  ``theta'_A <- m theta'_A + (1 - m) theta_A``, with m from 0.996 to 1 on a cosine schedule
  (:func:`glare_core.schedules.momentum_schedule`);
* a DINO head from the base checkpoint is loaded into both and kept frozen (one shared module); a base without
  a head gets a new head that trains in the student, with an EMA copy in the teacher and a head-only warm-up
  of ``head_warmup_steps`` steps (the training loop gives the ``"adapter"`` parameter group lr 0 meanwhile);
* the student pass goes through :meth:`StudentTeacher.forward`, so a trainer can wrap the model in
  ``DistributedDataParallel``; the teacher pass is :meth:`StudentTeacher.teacher_forward` (no gradients).

Continual pre-training with the DINO loss alone (adapter, LoRA or full fine-tuning) is this same model with
the objective's local and regional terms switched off: the baselines GLARE is compared with.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .backbone import Backbone, BackboneOutput
from .errors import CheckpointError
from .heads import DINOHead, HeadConfig, head_from_state_dict
from .runs import atomic_path, check_finite_state
from .tuning import configure_tuning

TRAINED_MODES = ("adapter", "lora", "full")
ADAPTER_FORMAT = "glare-adapter/1"


@dataclass
class StudentTeacherConfig:
    """How the student is tuned and which heads it has.

    Attributes:
        tuning: ``"adapter"`` (UniAdapter, GLARE's setting, Known), ``"lora"`` or ``"full"`` (baselines).
        rank: adapter bottleneck r or LoRA rank (64).
        adapter_scale: UniAdapter scale s (0.1).
        learnable_scale: train s as well (False).
        lora_alpha: LoRA alpha (None: equal to the rank).
        head: the DINO head used when the base brings none (:class:`~glare_core.heads.HeadConfig`).
        train_heads: train the heads (EMA in the teacher). None (default): train new heads, keep a loaded
            checkpoint head frozen.
        head_warmup_steps: steps during which only the heads train (the trainer sets the adapter lr to 0);
            used only when the heads train (300, "a few hundred steps", Design).
        mask_token: give the student a learned (D,) mask token (needed by the ``"mask_token"`` patch
            augmentation; zero-initialised as in iBOT).
        trunk_blocks: blocks ``0 .. trunk_blocks - 1`` get no tuning modules and stay frozen, in the student
            and the teacher alike (the cached frozen trunk of :mod:`glare_core.trunk`; 0: every block is
            tuned).
    """

    tuning: str = "adapter"
    rank: int = 64
    adapter_scale: float = 0.1
    learnable_scale: bool = False
    lora_alpha: float | None = None
    head: HeadConfig = field(default_factory=HeadConfig)
    train_heads: bool | None = None
    head_warmup_steps: int = 300
    mask_token: bool = False
    trunk_blocks: int = 0


@dataclass
class ViewOutput(BackboneOutput):
    """A :class:`~glare_core.backbone.BackboneOutput` plus the head's [CLS] logits ``cls_logits`` (B, K)."""

    cls_logits: torch.Tensor | None = None


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile`` wrapper."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


class StudentTeacher(nn.Module):
    """Student (adapted, trained) and EMA teacher sharing one frozen backbone, with their DINO heads.

    Args:
        backbone: a frozen :class:`~glare_core.backbone.Backbone` without tuning modules (e.g. from
            ``glare_core.weights.load_base``); it becomes the student's backbone (tuning modules are added in
            place).
        cfg: :class:`StudentTeacherConfig` (default: UniAdapter r = 64, new DINO head).
        head_state_dict: a DINO head's tensors (``mlp.*``, ``last_layer.weight_g/v``; see
            :func:`glare_core.heads.extract_head_state_dict`), loaded into both heads and kept frozen by
            default.
        base_name: the base model's name, recorded in exported adapters (default: ``backbone.base_name`` if
            set).

    Attributes:
        student, teacher: the two :class:`Backbone` views of the shared weights.
        student_head, teacher_head: [CLS] heads (the same module when the head is frozen).
        mask_token: (D,) learned mask token or None.
    """

    def __init__(
        self,
        backbone: Backbone,
        cfg: StudentTeacherConfig | None = None,
        head_state_dict: Mapping[str, torch.Tensor] | None = None,
        base_name: str | None = None,
    ):
        super().__init__()
        cfg = cfg or StudentTeacherConfig()
        if cfg.tuning not in TRAINED_MODES:
            raise ValueError(f"StudentTeacherConfig.tuning={cfg.tuning!r}; choose one of {TRAINED_MODES}")
        self.cfg = cfg
        self.base_name = base_name or getattr(backbone, "base_name", None) or getattr(backbone, "name", None)
        configure_tuning(
            backbone.vit,
            cfg.tuning,
            rank=cfg.rank,
            adapter_scale=cfg.adapter_scale,
            learnable_scale=cfg.learnable_scale,
            lora_alpha=cfg.lora_alpha,
            first_block=cfg.trunk_blocks,
        )
        self.student = backbone
        # The teacher: a deep copy in which every frozen tensor is the student's own object (memo).
        shared = {id(p): p for p in backbone.parameters() if not p.requires_grad}
        self.teacher = copy.deepcopy(backbone, memo=shared)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

        D = backbone.embed_dim
        self.train_heads = cfg.train_heads if cfg.train_heads is not None else head_state_dict is None
        head = head_from_state_dict(head_state_dict, D) if head_state_dict is not None else None
        head = head or DINOHead.from_config(D, cfg.head)
        head = head.to(next(backbone.parameters()).device)
        self.student_head = head
        self.teacher_head = copy.deepcopy(head) if self.train_heads else head
        if not self.train_heads:
            head.requires_grad_(False)
        self.teacher_head.requires_grad_(False)
        # A separate patch head (iBOT shared_head=False) is always new, so it always trains.
        self.separate_patch_head = cfg.head.separate_patch_head
        if self.separate_patch_head:
            self.student_phead = DINOHead.from_config(D, cfg.head).to(head.last_layer.weight_v.device)
            self.teacher_phead = copy.deepcopy(self.student_phead).requires_grad_(False)
        self.mask_token = nn.Parameter(torch.zeros(D)) if cfg.mask_token else None
        self._ema_pairs = self._build_ema_pairs()
        self.teacher.eval()

    # ---------------------------------------------------------------- structure
    @property
    def student_patch_head(self) -> DINOHead:
        """The head applied to the student's patch tokens and regions (the [CLS] head unless separate)."""
        return self.student_phead if self.separate_patch_head else self.student_head

    @property
    def teacher_patch_head(self) -> DINOHead:
        return self.teacher_phead if self.separate_patch_head else self.teacher_head

    @property
    def patch_size(self) -> int:
        return self.student.patch_size

    @property
    def embed_dim(self) -> int:
        return self.student.embed_dim

    @property
    def out_dim(self) -> int:
        return self.student_head.out_dim

    def _trained_heads(self) -> list[tuple[str, nn.Module, nn.Module]]:
        heads = [("head", self.student_head, self.teacher_head)] if self.train_heads else []
        if self.separate_patch_head:
            heads.append(("patch_head", self.student_phead, self.teacher_phead))
        return heads

    def _build_ema_pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        teacher = dict(self.teacher.named_parameters(remove_duplicate=False))
        pairs = [(p, teacher[n]) for n, p in self.student.named_parameters() if p.requires_grad]
        for _, s_head, t_head in self._trained_heads():
            t_params = dict(t_head.named_parameters())
            pairs += [(p, t_params[n]) for n, p in s_head.named_parameters() if p.requires_grad]
        for s, t in pairs:
            if s is t:
                raise RuntimeError("internal error: a trained tensor is shared between student and teacher")
        return pairs

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group: ``"adapter"`` (tuning tensors and mask token) and ``"head"``."""
        adapter = [p for p in self.student.parameters() if p.requires_grad]
        if self.mask_token is not None:
            adapter.append(self.mask_token)
        head = [p for _, h, _ in self._trained_heads() for p in h.parameters() if p.requires_grad]
        return {"adapter": adapter, "head": head}

    def train(self, mode: bool = True) -> StudentTeacher:
        """Set the student's mode; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        if not self.train_heads:
            self.teacher_head.eval()
        return self

    # ---------------------------------------------------------------- forward passes
    def _run(
        self,
        backbone: Backbone,
        head: nn.Module,
        images: Sequence[torch.Tensor],
        token_masks: Sequence[torch.Tensor | None] | None,
        return_attn: bool,
        start_block: int = 0,
        grid: tuple[int, int] | None = None,
    ) -> list[ViewOutput]:
        """Run views of equal size together (one backbone call per size) and split the outputs again.

        With ``start_block`` > 0 the views are the tokens that enter that block ((B, P + N, D), from the
        cached trunk) and only blocks ``start_block ..`` run.
        """
        if start_block and token_masks is not None and any(m is not None for m in token_masks):
            raise ValueError("token masks act on the patch embedding, which a cached trunk has already run")
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(images):
            groups.setdefault(tuple(x.shape[1:]), []).append(i)
        outputs: list[ViewOutput | None] = [None] * len(images)
        p = backbone.patch_size
        for idx in groups.values():
            x = torch.cat([images[i] for i in idx])
            tm = None
            if token_masks is not None and any(token_masks[i] is not None for i in idx):
                if self.mask_token is None:
                    raise ValueError(
                        "token masks need a learned mask token: build the model with "
                        "StudentTeacherConfig(mask_token=True)"
                    )
                n = (x.shape[-2] // p) * (x.shape[-1] // p)
                tm = torch.cat(
                    [
                        token_masks[i].reshape(images[i].shape[0], n)
                        if token_masks[i] is not None
                        else torch.zeros(images[i].shape[0], n, dtype=torch.bool, device=x.device)
                        for i in idx
                    ]
                )
            if start_block:
                if grid is None:
                    raise ValueError("trunk tokens need their patch grid (grid=(h, w))")
                out = backbone.forward_tokens(x, grid, start_block, return_attn=return_attn)
            else:
                out = backbone(x, return_attn=return_attn, token_mask=tm, mask_token=self.mask_token)
            logits = head(out.cls)
            sizes = [images[i].shape[0] for i in idx]
            parts = zip(
                out.cls.split(sizes),
                out.patches.split(sizes),
                out.attn.split(sizes) if out.attn is not None else [None] * len(sizes),
                logits.split(sizes),
            )
            for i, (c, pt, a, lg) in zip(idx, parts):
                outputs[i] = ViewOutput(cls=c, patches=pt, grid=out.grid, attn=a, cls_logits=lg)
        return outputs  # type: ignore[return-value]

    def forward(
        self,
        images: Sequence[torch.Tensor],
        token_masks: Sequence[torch.Tensor | None] | None = None,
        return_attn: bool = False,
        start_block: int = 0,
        grid: tuple[int, int] | None = None,
    ) -> list[ViewOutput]:
        """The student pass (with gradients into the trained tensors).

        Args:
            images: views, each (B, 3, H, W) in [0, 1]; views of equal size run as one batch. With
                ``start_block`` > 0: each view's tokens entering that block, (B, P + N, D) (cached trunk).
            token_masks: per view, None or (B, N) bool cells to replace by the learned mask token.
            return_attn: also compute the [CLS] attention (not needed by the GLARE objective's student side).
            start_block: the first block to run (0: the whole ViT from the pixels).
            grid: the views' patch grid (h, w), needed when ``start_block`` > 0.

        Returns:
            One :class:`ViewOutput` per view (``cls`` (B, D), ``patches`` (B, N, D), ``cls_logits`` (B, K)).
        """
        return self._run(self.student, self.student_head, images, token_masks, return_attn, start_block, grid)

    @torch.no_grad()
    def teacher_forward(
        self,
        images: Sequence[torch.Tensor],
        return_attn: bool = True,
        start_block: int = 0,
        grid: tuple[int, int] | None = None,
    ) -> list[ViewOutput]:
        """The teacher pass on clean views (no gradients); ``attn`` (B, N) drives the regional sampling.

        ``start_block`` and ``grid``: as :meth:`forward` (views given as cached trunk tokens).
        """
        return self._run(self.teacher, self.teacher_head, images, None, return_attn, start_block, grid)

    # ---------------------------------------------------------------- EMA
    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``teacher <- momentum * teacher + (1 - momentum) * student`` over the trained tensors only.

        Written as ``lerp`` (``t + (1 - m) (s - t)``): a teacher equal to its student stays equal bit for bit,
        which ``m t + (1 - m) s`` does not guarantee. Every averaged tensor is float32 (a bf16 teacher would
        round away most of each update: with m = 0.996 the change is 0.4 % of the gap, below bf16's 0.8 %
        resolution).
        """
        if not self._ema_pairs:
            return
        students = [s.detach() for s, _ in self._ema_pairs]
        teachers = [t for _, t in self._ema_pairs]
        torch._foreach_lerp_(teachers, students, 1.0 - momentum)

    def ema_dtype(self) -> str:
        """The dtype(s) of the tensors the EMA averages (``"float32"``, else a bug), or ``"none"``."""
        dtypes = sorted({str(t.dtype).removeprefix("torch.") for _, t in self._ema_pairs})
        return ",".join(dtypes) or "none"

    # ---------------------------------------------------------------- data-dependent head init
    @torch.no_grad()
    def init_heads_from_data(self, images: torch.Tensor) -> dict[str, float]:
        """Standardise the input of every *new* head with statistics of the frozen base's tokens (the
        ``"data"`` head init of :class:`~glare_core.heads.HeadConfig`; Design). Call it before training.

        The [CLS] head gets the mean and standard deviation of [CLS] tokens; a separate patch head those of
        patch tokens; a shared head (the default) the average of the two means and a standard deviation
        that covers both populations. Student and teacher heads receive the same change, so they stay equal.

        Args:
            images: (B, 3, S, S) target images in [0, 1] at the view size (B of a few dozen is enough).

        Returns:
            the mean pairwise cosine of the [CLS] tokens before standardisation (how alike the images look).
        """
        if not self._trained_heads():
            return {}
        was_training = self.teacher.training
        self.teacher.eval()
        out = self.teacher(images.float(), return_attn=False)  # adapters are still zero: the base itself
        self.teacher.train(was_training)
        cls, patches = out.cls.float(), out.patches.flatten(0, 1).float()
        stats = {"cls": (cls.mean(0), cls.std(0)), "patch": (patches.mean(0), patches.std(0))}
        if not self.separate_patch_head:  # one head for both populations: pooled statistics
            (mc, sc), (mp, sp) = stats["cls"], stats["patch"]
            mean = (mc + mp) / 2
            std = ((sc**2 + sp**2) / 2 + ((mc - mp) / 2) ** 2).sqrt()
            stats["cls"] = (mean, std)
        for name, s_head, t_head in self._trained_heads():
            mean, std = stats["cls" if name == "head" else "patch"]
            for head in (s_head, t_head) if s_head is not t_head else (s_head,):
                head.standardize_input_(mean, std)
        normed = torch.nn.functional.normalize(cls, dim=-1)
        cos = normed @ normed.T
        off = cos[~torch.eye(len(cos), dtype=torch.bool, device=cos.device)]
        return {"cls_mean_pairwise_cos": float(off.mean()) if off.numel() else float("nan")}

    # ---------------------------------------------------------------- saving
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The student's trained tensors.

        Keys: ``backbone.*`` (tuning tensors), ``head.*`` / ``patch_head.*`` (trained heads), ``mask_token``.
        """
        out = {f"backbone.{n}": p.detach() for n, p in self.student.vit.named_parameters() if p.requires_grad}
        for prefix, s_head, _ in self._trained_heads():
            out.update({f"{prefix}.{n}": p.detach() for n, p in s_head.named_parameters() if p.requires_grad})
        if self.mask_token is not None:
            out["mask_token"] = self.mask_token.detach()
        return out

    def adapted_backbone(self, which: str = "teacher") -> Backbone:
        """The adapted backbone to evaluate (the teacher by default, as DINO evaluates the teacher)."""
        if which not in ("teacher", "student"):
            raise ValueError(f"which={which!r}; choose 'teacher' or 'student'")
        return self.teacher if which == "teacher" else self.student

    def export_adapter(self, path: str | Path, which: str = "teacher") -> Path:
        """Save the tuning tensors of the teacher (default) or the student as safetensors, in float32.

        The file holds the ViT's tuning tensors under their timm names (``blocks.0.adapter.down.weight`` ...)
        and metadata: ``format``, ``base`` (if known), ``tuning``, ``rank``, ``adapter_scale``,
        ``learnable_scale``, ``lora_alpha``, ``embed_dim``, ``depth``, ``head``, ``trunk_blocks`` (blocks
        without tuning modules; absent in older files, meaning 0). For the adapter at r = 64 this is a few MB.
        """
        from safetensors.torch import save_file

        backbone = self.adapted_backbone(which)
        names = {n for n, p in self.student.vit.named_parameters() if p.requires_grad}
        tensors = {
            n: p.detach().float().cpu().contiguous() for n, p in backbone.vit.named_parameters() if n in names
        }
        meta = {
            "format": ADAPTER_FORMAT,
            "base": self.base_name or "",
            "tuning": self.cfg.tuning,
            "rank": str(self.cfg.rank),
            "adapter_scale": str(self.cfg.adapter_scale),
            "learnable_scale": json.dumps(self.cfg.learnable_scale),
            "lora_alpha": json.dumps(self.cfg.lora_alpha),
            "embed_dim": str(self.embed_dim),
            "depth": str(self.student.depth),
            "head": json.dumps(asdict(self.cfg.head)),
            "trunk_blocks": str(self.cfg.trunk_blocks),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:  # written whole, then swapped in
            save_file(tensors, str(tmp), metadata=meta)
        return path

    def load_adapter(self, path: str | Path) -> None:
        """Load an exported adapter into both the student and the teacher (they are then equal)."""
        tensors, meta = read_adapter(path)
        saved = (meta.get("tuning"), int(meta.get("rank", -1)), int(meta.get("trunk_blocks", 0)))
        if saved != (self.cfg.tuning, self.cfg.rank, self.cfg.trunk_blocks):
            raise ValueError(
                f"{path}: adapter was saved with tuning={saved[0]!r}, rank={saved[1]}, "
                f"trunk_blocks={saved[2]}, but this model uses tuning={self.cfg.tuning!r}, "
                f"rank={self.cfg.rank}, trunk_blocks={self.cfg.trunk_blocks}; build the model with the "
                "file's settings"
            )
        for backbone in (self.student, self.teacher):
            _copy_into(backbone.vit, tensors, path)


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of an exported adapter file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"adapter file {path} does not exist; export one with StudentTeacher.export_adapter"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends name no file
        raise CheckpointError(
            f"{path}: not a readable adapter file ({type(e).__name__}: {e}); it is truncated or corrupt. "
            "Fix: export it again (glare pretrain --out RUN --resume re-exports a finished run)."
        ) from None
    if meta.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{path} is not a GLARE adapter file (format {meta.get('format')!r})")
    check_finite_state(tensors.items(), f"adapter file {path}", error=CheckpointError)
    return tensors, meta


def check_adapter_base(path: str | Path, meta: Mapping[str, str], base: str) -> None:
    """Refuse an adapter whose recorded base (metadata ``base``) is another named base than ``base``.

    An adapter only means something on the weights it was trained on. Weight files given by path are not
    compared (a renamed copy of the same file is common); names (``dino_vits16``, ``random:test_vit`` ...)
    are.

    Raises:
        CheckpointError: naming the file, both bases and the fix.
    """
    recorded = meta.get("base") or ""

    def is_path(name: str) -> bool:
        return "/" in name or "\\" in name or Path(name).suffix in (".pth", ".pt", ".bin", ".safetensors")

    if recorded and not is_path(recorded) and not is_path(base) and recorded != base:
        raise CheckpointError(
            f"{path}: this adapter was trained on base {recorded!r}, not {base!r}; on another base its "
            f"numbers mean nothing. Fix: pass --base {recorded}, or the adapter trained for {base}."
        )


def apply_adapter(backbone: Backbone, path: str | Path) -> Backbone:
    """Add the tuning modules of an exported adapter file to a fresh base backbone, load them, freeze it.

    Use it to evaluate a continually pre-trained model:
    ``apply_adapter(load_base(name), "adapter.safetensors")``. Every tuning tensor the modules need must be in
    the file and every tensor in the file must fit the model, otherwise a ``ValueError`` names the file.
    """
    tensors, meta = read_adapter(path)
    configure_tuning(
        backbone.vit,
        meta["tuning"],
        rank=int(meta["rank"]),
        adapter_scale=float(meta.get("adapter_scale", 0.1)),
        learnable_scale=json.loads(meta.get("learnable_scale", "false")),
        lora_alpha=json.loads(meta.get("lora_alpha", "null")),
        first_block=int(meta.get("trunk_blocks", 0)),
    )
    needed = {n for n, p in backbone.vit.named_parameters() if p.requires_grad}
    absent = sorted(needed - set(tensors))
    if absent:
        raise ValueError(
            f"{path}: the {meta['tuning']} model of rank {meta['rank']} needs tensors the file lacks, e.g. "
            f"{absent[:4]}; pass the export made for this base model"
        )
    _copy_into(backbone.vit, tensors, path)
    backbone.requires_grad_(False)
    return backbone.eval()


@torch.no_grad()
def _copy_into(vit: nn.Module, tensors: Mapping[str, torch.Tensor], path) -> None:
    params = dict(vit.named_parameters())
    missing = [k for k in tensors if k not in params]
    if missing:
        raise ValueError(
            f"{path}: tensors {missing[:4]} have no counterpart in the model (wrong base or tuning mode?)"
        )
    for k, v in tensors.items():
        if params[k].shape != v.shape:
            raise ValueError(
                f"{path}: {k} has shape {tuple(v.shape)}, the model expects {tuple(params[k].shape)}"
            )
        params[k].copy_(v)
