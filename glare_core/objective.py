"""The GLARE objective: one training step's loss, written as ``glare-method.md`` section 3 reads.

Known (GLARE abstract, Figure 1): two image-level views X, X' go through the student (base encoder with the
trainable adapter) and the momentum teacher; feature consistency is enforced at three levels, global, regional
and local; patch-level augmentations drive the local term; attention-guided region sampling and
cross-attention region correspondence drive the regional term. Design (section 2 of ``glare-method.md``; every
choice below is a field of :class:`ObjectiveConfig` with that default)::

    X, X2, boxes = global_views(batch)
    Xs, M = patch_augment(X);  X2s, M2 = patch_augment(X2)
    with no_grad: T1, T2 = teacher(X), teacher(X2)          # cls, patches, cls-attention
    S1, S2 = student(Xs), student(X2s)
    L_G = dino(T1.cls, S2.cls) + dino(T2.cls, S1.cls)
    L_L = patch_ce(T1.patch[M], S1.patch[M]) + patch_ce(T2.patch[M2], S2.patch[M2])
    R1 = sample_regions(T1.attn);  R2 = sample_regions(T2.attn)
    L_R = region_ce(retrieve(pool(S1.patch, R1), T2.patch), pool(S1.patch, R1)) + (the same from view 2)
    L = lambda_G L_G + lambda_L L_L + lambda_R L_R

Steps 1-4 run from the images (:meth:`GlareObjective.encode_images`), or, with the cached frozen trunk of
:mod:`glare_core.trunk` (this project's CPU design), from a bank of views made once by the same
:meth:`GlareObjective.prepare_views` and stored as the tokens after the trunk's blocks
(:meth:`GlareObjective.encode_cached`: only the later blocks run); the terms are the same code either way
(:meth:`GlareObjective.terms`).

With ``use_local`` and ``use_regional`` off this is exactly DINO continual pre-training (the baselines): no
patch augmentation, no patch-head work and no region work happen. The centres of the three terms are buffers
of this module (they go into checkpoints) and are updated inside :meth:`GlareObjective.forward` without
gradients; the trainer calls ``model.update_teacher(momentum)`` after the optimiser step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .losses import (
    DINOLoss,
    LocalInputs,
    RegionLoss,
    build_local_loss,
    regional_consistency,
    temperatures,
)
from .patch_augment import PatchAugConfig, patch_augment
from .schedules import TeacherTemperature
from .teacher import ViewOutput, unwrap
from .trunk import TrunkBatch
from .views import ViewConfig, Views, make_views


@dataclass
class ObjectiveConfig:
    """Every switch and hyper-parameter of the GLARE objective (Design defaults of ``glare-method.md``).

    Attributes:
        views: image-level augmentation (:class:`~glare_core.views.ViewConfig`; set ``views.global_size`` to a
            multiple of the backbone's patch size).
        patch_aug: patch-level augmentation of the student's views
            (:class:`~glare_core.patch_augment.PatchAugConfig`, blur 30 % blockwise).
        use_global: the global term L_G (DINO on [CLS]).
        use_local: the local term L_L (patch distillation at corrupted cells).
        use_regional: the regional term L_R (attention-guided regions, cross-attention correspondence).
        lambda_global, lambda_local, lambda_regional: weights of the three terms (1.0 each).
        student_temp: tau_s (0.1) for every term.
        teacher_temp: final tau_t (0.07) for every term.
        warmup_teacher_temp: initial tau_t (0.04).
        warmup_teacher_temp_steps: steps of the linear tau_t warm-up (DINO: 30 of 100 epochs; the trainer
            should set it from its schedule).
        center_momentum: EMA momentum of the global centre (0.9).
        patch_center_momentum: EMA momentum of the local term's centre (0.9, iBOT).
        region_center_momentum: EMA momentum of the regional term's centre (0.9).
        local_variant: ``"ce"`` (iBOT patch distillation through the patch head), ``"cosine"`` (negative
            cosine of patch tokens), ``"crossview"`` (targets from the other view through the crop boxes),
            ``"pipa"`` (PiPa's patch contrast, :mod:`glare_core.neighbours.pipa`, imported when built) or
            any name registered with :func:`glare_core.losses.register_local_variant`.
        local_max_patches: at most this many corrupted cells per image and view enter L_L (None: all of them);
            the cells are still all corrupted. A cap bounds the patch head's cost.
        num_regions: K regions per image and view (6).
        window: region side k in cells (3).
        alpha: attention weight of the sampling mixture (0.8).
        sampling: ``"attention"`` (attention-guided) or ``"uniform"`` (ablation).
        correspondence: ``"cross_attention"`` (parameter-free, tau_a) or ``"geometric"`` (ablation, crop
            boxes).
        tau_a: temperature of the cross-attention (0.1).
        region_query: query of the cross-attention: ``"student"`` (the student's region embedding, detached,
            as section 2 describes: the student's region chooses its own target among X''s teacher tokens) or
            ``"teacher"`` (the teacher's embedding of the same window of X: the target is then chosen by the
            teacher alone, and the student cannot move it).
        region_overlap_only: give no loss to a region whose centre (the mean of its cells' centres) falls
            outside the other view's crop box (False: every sampled region gets a target, found by the
            cross-attention even where the other view does not show it). Such regions are masked out of the
            mean; with none left the term is 0 (its gradient exists and is zero).
        region_loss: ``"ce"`` (through the head, DINO-style), ``"infonce"`` or ``"cosine"``.
        infonce_temp: temperature of the InfoNCE region loss (0.1).
    """

    views: ViewConfig = field(default_factory=ViewConfig)
    patch_aug: PatchAugConfig = field(default_factory=PatchAugConfig)
    use_global: bool = True
    use_local: bool = True
    use_regional: bool = True
    lambda_global: float = 1.0
    lambda_local: float = 1.0
    lambda_regional: float = 1.0
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_steps: int = 1000
    center_momentum: float = 0.9
    patch_center_momentum: float = 0.9
    region_center_momentum: float = 0.9
    local_variant: str = "ce"
    local_max_patches: int | None = None
    num_regions: int = 6
    window: int = 3
    alpha: float = 0.8
    sampling: str = "attention"
    correspondence: str = "cross_attention"
    tau_a: float = 0.1
    region_query: str = "student"
    region_overlap_only: bool = False
    region_loss: str = "ce"
    infonce_temp: float = 0.1

    def __post_init__(self):
        choices = {
            "sampling": ("attention", "uniform"),
            "correspondence": ("cross_attention", "geometric"),
            "region_query": ("student", "teacher"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ObjectiveConfig.{name}={getattr(self, name)!r}; choose one of {allowed}")
        if not (self.use_global or self.use_local or self.use_regional):
            raise ValueError(
                "ObjectiveConfig: at least one of use_global, use_local, use_regional must be True"
            )


class GlareObjective(nn.Module):
    """L = lambda_G L_G + lambda_L L_L + lambda_R L_R for one batch (section 3 of ``glare-method.md``).

    Args:
        cfg: :class:`ObjectiveConfig`.

    Attributes:
        global_loss (:class:`~glare_core.losses.DINOLoss`), local_loss
        (:class:`~glare_core.losses.PatchDistillationLoss` or a registered variant), region_loss
        (:class:`~glare_core.losses.RegionLoss`): present when their term is on; their centres are buffers.
        Each term's whole computation is in its module: the local loss assembles itself from
        :class:`~glare_core.losses.LocalInputs`, the regional term is
        :func:`~glare_core.losses.regional_consistency` (sampling, pooling, correspondence, loss).
    """

    def __init__(self, cfg: ObjectiveConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ObjectiveConfig()
        temps = temperatures(cfg)
        self.global_loss = DINOLoss(center_momentum=cfg.center_momentum, **temps) if cfg.use_global else None
        self.local_loss = build_local_loss(cfg) if cfg.use_local else None
        self.region_loss = (
            RegionLoss(
                cfg.region_loss,
                center_momentum=cfg.region_center_momentum,
                infonce_temp=cfg.infonce_temp,
                **temps,
            )
            if cfg.use_regional
            else None
        )

    def forward(
        self,
        model: nn.Module,
        images: torch.Tensor | TrunkBatch,
        step: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One step's loss.

        Args:
            model: a :class:`~glare_core.teacher.StudentTeacher`, possibly wrapped in DistributedDataParallel
                (``model(...)`` is the student pass, ``unwrap(model).teacher_forward(...)`` the teacher's).
            images: (B, 3, H, W) in [0, 1] (uint8 is converted), any size; views are cropped from it. Or a
                :class:`~glare_core.trunk.TrunkBatch`: views made earlier, given as the frozen trunk's output
                tokens (clean and patch-corrupted) with their crop boxes, flips and masks; then only the
                blocks after the trunk run, and the losses are computed by the same code.
            step: optimiser step (teacher temperature warm-up).
            generator: optional ``torch.Generator`` for reproducible views, masks and regions.

        Returns:
            The scalar loss (float32, with gradients into the trained tensors) and float logs: ``loss``,
            ``loss_global``, ``loss_local``, ``loss_regional`` (for the terms that are on), DINO's collapse
            diagnostics of each term's teacher targets, ``teacher_entropy_<term>`` and
            ``teacher_kl_uniform_<term>`` (:func:`~glare_core.losses.global_consistency.collapse_stats`; both
            against ln K), and ``teacher_temp``.
        """
        net = unwrap(model)
        if isinstance(images, TrunkBatch):
            S, T, views, masks = self.encode_cached(model, images)
        else:
            S, T, views, masks = self.encode_images(model, images, generator)
        return self.terms(net, S, T, views, masks, step, generator)

    def prepare_views(
        self,
        images: torch.Tensor,
        patch_size: int,
        generator: torch.Generator | None = None,
        corrupt: bool | None = None,
    ) -> tuple[Views, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor | None] | None]:
        """Steps 1-2 of section 3: the image-level views and the student's patch-corrupted copies.

        ``corrupt`` (default: ``use_local``) forces the patch corruption on or off; the trunk's bank always
        stores the corrupted copies, so that runs with and without the local term share one bank.

        Returns:
            ``views`` (:class:`~glare_core.views.Views`: clean global views, boxes, flips, local crops),
            ``Xs`` (the student's global views: corrupted when the local term is on, else the clean ones),
            ``masks`` (per global view (B, N) bool corrupted cells; empty when the local term is off) and
            ``token_masks`` (per student view, for the ``"mask_token"`` corruption; else None).
        """
        cfg = self.cfg
        # 1. two global views (and optional local crops), with their crop boxes and flips
        views = make_views(images, cfg.views, generator)
        X = views.globals
        # 2. the student's copies of the global views get patch-level augmentation (L)
        Xs, masks, token_masks = X, [], None
        if cfg.use_local if corrupt is None else corrupt:
            augmented = [patch_augment(x, patch_size, cfg.patch_aug, generator) for x in X]
            Xs, masks = [x for x, _ in augmented], [m for _, m in augmented]
            if cfg.patch_aug.kind == "mask_token":
                token_masks = masks + [None] * len(views.locals)
        return views, Xs, masks, token_masks

    def encode_images(
        self, model: nn.Module, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[list[ViewOutput], list[ViewOutput], Views, list[torch.Tensor]]:
        """Steps 1-4 from the images: views, patch corruption, teacher and student passes through every block.

        Returns:
            ``S`` (student outputs: corrupted global views, then local crops), ``T`` (teacher outputs of the
            clean global views), the :class:`~glare_core.views.Views` and the corrupted-cell masks.
        """
        net = unwrap(model)
        self._check(net)
        views, Xs, masks, token_masks = self.prepare_views(images, net.patch_size, generator)
        # 3. the teacher sees the clean global views (no gradients)
        T = net.teacher_forward(views.globals, return_attn=self._teacher_attn)
        # 4. the student sees the corrupted global views and the local crops
        S = model(Xs + views.locals, token_masks=token_masks)
        return S, T, views, masks

    def encode_cached(
        self, model: nn.Module, batch: TrunkBatch
    ) -> tuple[list[ViewOutput], list[ViewOutput], Views, list[torch.Tensor]]:
        """Steps 3-4 from the cached frozen trunk (:mod:`glare_core.trunk`): the views were made (by
        :meth:`prepare_views`) and run through blocks ``0 .. n - 1`` when the bank was built; here the teacher
        and the student run blocks ``n ..`` on the clean and the corrupted tokens. Returns as
        :meth:`encode_images`."""
        net = unwrap(model)
        if self.cfg.use_local and self.cfg.patch_aug.kind == "mask_token":
            raise ValueError(
                "a cached trunk batch cannot hold the 'mask_token' corruption: the learned token enters "
                "before block 0, so its trunk output changes at every step; use another "
                "objective.patch_aug.kind (e.g. 'mask_mean' or 'blur') or the full-depth step "
                "(trunk_blocks=None)"
            )
        n, grid = batch.start_block, batch.grid
        T = net.teacher_forward(batch.clean, return_attn=self._teacher_attn, start_block=n, grid=grid)
        S = model(batch.corrupted, start_block=n, grid=grid)
        views = Views(globals=[], boxes=batch.boxes, flips=batch.flips)  # geometry only: no pixels cached
        return S, T, views, list(batch.masks)

    @property
    def _teacher_attn(self) -> bool:
        """The teacher's [CLS] attention is needed by the attention-guided regional sampling only."""
        return self.cfg.use_regional and self.cfg.sampling == "attention"

    def terms(
        self,
        net: nn.Module,
        S: list[ViewOutput],
        T: list[ViewOutput],
        views: Views,
        masks: list[torch.Tensor],
        step: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """L = lambda_G L_G + lambda_L L_L + lambda_R L_R from the student's and the teacher's outputs."""
        cfg = self.cfg
        G = len(T)  # the global views (the student's list continues with the local crops)
        loss = torch.zeros((), device=T[0].cls.device)
        logs: dict[str, float] = {}
        if self.global_loss is not None:
            L_G = self.global_loss([s.cls_logits for s in S], [t.cls_logits for t in T], step)
            loss = loss + cfg.lambda_global * L_G
            logs["loss_global"] = float(L_G.detach())
        if self.local_loss is not None:
            L_L = self.local_loss(LocalInputs(S[:G], T, masks, views, net, step, generator))
            loss = loss + cfg.lambda_local * L_L
            logs["loss_local"] = float(L_L.detach())
        if self.region_loss is not None:
            L_R = regional_consistency(self.region_loss, S[:G], T, views, net, step, cfg, generator)
            loss = loss + cfg.lambda_regional * L_R
            logs["loss_regional"] = float(L_R.detach())
        logs["loss"] = float(loss.detach())
        terms = {"global": self.global_loss, "local": self.local_loss, "regional": self.region_loss}
        for name, term in terms.items():  # collapse_stats of each term's teacher targets
            for key, value in getattr(term, "diagnostics", {}).items():
                logs[f"teacher_{key}_{name}"] = value
        logs["teacher_temp"] = TeacherTemperature.of(cfg)(step)
        return loss, logs

    def _check(self, net: nn.Module) -> None:
        p, cfg = net.patch_size, self.cfg
        if cfg.views.global_size % p:
            raise ValueError(
                f"ObjectiveConfig.views.global_size={cfg.views.global_size} is not a multiple of the patch "
                f"size {p}; use e.g. {round(cfg.views.global_size / p) * p}"
            )
        if cfg.views.n_local and cfg.views.local_size % p:
            raise ValueError(
                f"ObjectiveConfig.views.local_size={cfg.views.local_size} is not a multiple of the patch "
                f"size {p}; use e.g. {round(cfg.views.local_size / p) * p}"
            )
        if cfg.use_local and cfg.patch_aug.kind == "mask_token" and getattr(net, "mask_token", None) is None:
            raise ValueError(
                "patch_aug.kind='mask_token' needs a learned mask token: build the model with "
                "StudentTeacherConfig(mask_token=True)"
            )
