"""(L) Local consistency: iBOT-style, position-aligned patch distillation over the corrupted cells.

Known (GLARE abstract): patch-level augmentations (patch blurring among the strategies compared) encourage
local consistency. Design (``glare-method.md`` section 2, "(L)"; iBOT, Zhou et al., 2022, arXiv 2111.07832,
Eq. 2): the student sees view u with a set M_u of cells corrupted (:mod:`glare_core.patch_augment`), the
teacher sees the clean view, and at every corrupted position the student's patch distribution matches the
teacher's:

.. math::

    L_L = \\frac{1}{|V|} \\sum_{u \\in V} \\frac{1}{B} \\sum_b \\frac{1}{|M_u^b|} \\sum_{i \\in M_u^b}
          -\\Big\\langle \\mathrm{softmax}\\Big(\\frac{h'(t_i) - c_p}{\\tau_t}\\Big),
                        \\mathrm{log\\_softmax}\\Big(\\frac{h(s_i)}{\\tau_s}\\Big) \\Big\\rangle

with the patch head h (the DINO head applied to patch tokens unless a separate patch head exists), its own
centre c_p (EMA 0.9 of the teacher's logits at the corrupted positions; iBOT averages over all positions) and
the same temperatures as the global term. Head logits are computed only at the corrupted positions (optionally
at most ``max_patches`` random ones per image and view): the head costs about as much per token as the whole
ViT.

Variants (``variant``): ``"ce"`` (default, above); ``"cosine"`` (negative cosine similarity of the
L2-normalised backbone patch tokens, no head); ``"crossview"`` (the target of a corrupted cell of view u is
the teacher's token of the other view at the same source-image location, found through the crop boxes and
bilinearly interpolated; cells outside the other view are skipped). Further variants register a factory
with :func:`register_local_variant` and receive the same :class:`LocalInputs`; a variant that lives with its
method (PiPa's patch contrast, ``"pipa"``, in :mod:`glare_core.neighbours.pipa`) is named in
:data:`PACKAGED_VARIANTS`, and its module, which registers it, is imported when the variant is first built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..views import Views, map_cells_between_views, sample_at
from .global_consistency import TeacherTargets, collapse_stats, soft_cross_entropy, temperatures

PATCH_VARIANTS = ("ce", "cosine", "crossview")


@dataclass
class LocalInputs:
    """Everything a local-consistency variant may need for one step.

    Attributes:
        students: the student's outputs for the (corrupted) global views, ``patches`` (B, N, D).
        teachers: the teacher's outputs for the clean global views.
        masks: per global view, (B, N) bool corrupted cells.
        views: the :class:`~glare_core.views.Views` (crop boxes and flips).
        model: the unwrapped :class:`~glare_core.teacher.StudentTeacher` (for ``student_patch_head`` /
            ``teacher_patch_head``).
        step: optimiser step (temperature warm-up).
        generator: the step's random generator.
    """

    students: list
    teachers: list
    masks: list[torch.Tensor]
    views: Views
    model: Any
    step: int
    generator: torch.Generator | None = None


def limit_per_image(mask: torch.Tensor, max_count: int | None, generator=None) -> torch.Tensor:
    """Keep at most ``max_count`` random True cells per row of a (B, N) mask (all of them when None)."""
    if max_count is None or int(mask.sum(1).max()) <= max_count:
        return mask
    device = generator.device if generator is not None else "cpu"
    scores = torch.rand(mask.shape, generator=generator, device=device).to(mask.device)
    rank = scores.masked_fill(~mask, 2.0).argsort(dim=1).argsort(dim=1)
    return mask & (rank < max_count)


def per_image_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """iBOT's reduction of (M,) per-position losses at the True cells of a (B, N) mask.

    Mean over each image's positions, then over all B images (images without positions count as 0).
    """
    B = mask.shape[0]
    batch_index = mask.nonzero(as_tuple=True)[0]
    sums = values.new_zeros(B).index_add(0, batch_index, values)
    counts = mask.sum(1).clamp(min=1).to(values.dtype)
    return (sums / counts).mean()


class PatchDistillationLoss(TeacherTargets):
    """The local term L_L (iBOT patch distillation at the corrupted cells), with its own centre.

    Args:
        variant: ``"ce"``, ``"cosine"`` or ``"crossview"``.
        out_dim: K of the patch head (None: sized at the first call).
        max_patches: at most this many corrupted cells per image and view enter the loss (None: all).
        targets: the temperatures and the patch centre's EMA momentum, as in the global term
            (:class:`~glare_core.losses.global_consistency.TeacherTargets`: ``student_temp``,
            ``teacher_temp``, ``warmup_teacher_temp``, ``warmup_teacher_temp_steps``, ``center_momentum``).
    """

    def __init__(
        self,
        variant: str = "ce",
        out_dim: int | None = None,
        *,
        max_patches: int | None = None,
        **targets: Any,
    ):
        if variant not in PATCH_VARIANTS:
            raise ValueError(f"patch distillation variant {variant!r}; choose one of {PATCH_VARIANTS}")
        super().__init__(out_dim, **targets)
        self.variant = variant
        self.max_patches = max_patches
        self._probs: list[torch.Tensor] = []

    def distill(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, step: int
    ) -> torch.Tensor:
        """Cross-entropy at the selected positions, reduced per image then over the batch.

        Args:
            student_logits: (M, K) at the True cells of ``mask`` (row-major order of ``mask.nonzero()``).
            teacher_logits: (M, K) at the same positions.
            mask: (B, N) bool, M = mask.sum().
            step: optimiser step.

        Returns:
            Scalar float32 loss (the centre is not updated here).
        """
        probs = self.teacher_probs(teacher_logits, step)
        self._probs.append(probs.detach())
        return per_image_mean(soft_cross_entropy(student_logits, probs, self.student_temp), mask)

    def dense(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, step: int
    ) -> torch.Tensor:
        """:meth:`distill` from dense (B, N, K) logits; only the cells where ``mask`` (B, N) is True count."""
        return self.distill(student_logits[mask], teacher_logits[mask], mask, step)

    def forward(self, inp: LocalInputs) -> torch.Tensor:
        """L_L averaged over the global views; updates the centre (``"ce"`` and ``"crossview"``)."""
        losses, teacher_rows = [], []
        self._probs = []
        n = len(inp.students)
        for u in range(n):
            S, T = inp.students[u], inp.teachers[u]
            mask = limit_per_image(inp.masks[u], self.max_patches, inp.generator)
            if self.variant == "crossview":
                v = (u + 1) % n
                points, inside = map_cells_between_views(S.grid, inp.views.crop(u), inp.views.crop(v))
                mask = mask & inside
                with torch.no_grad():
                    target = sample_at(inp.teachers[v].patch_map(), points.to(T.patches.dtype))  # (B, N, D)
            else:
                target = T.patches
            if self.variant == "cosine":
                cos = F.cosine_similarity(S.patches[mask].float(), target[mask].detach().float(), dim=-1)
                losses.append(per_image_mean(-cos, mask))
                continue
            student_logits = inp.model.student_patch_head(S.patches[mask])
            with torch.no_grad():
                teacher_logits = inp.model.teacher_patch_head(target[mask])
            losses.append(self.distill(student_logits, teacher_logits, mask, inp.step))
            teacher_rows.append(teacher_logits)
        if teacher_rows:
            self.centering.update(torch.cat(teacher_rows))
        self.diagnostics = collapse_stats(torch.cat(self._probs)) if self._probs else {}
        self._probs = []
        return torch.stack(losses).mean()


#: Extra local-consistency variants: name -> factory(cfg: ObjectiveConfig) -> nn.Module whose
#: ``forward(inputs: LocalInputs) -> Tensor`` returns the scalar loss (and updates its own state).
LOCAL_VARIANTS: dict[str, Callable[[Any], nn.Module]] = {}

#: Variants that live with their method: name -> the module that registers it when imported (on first use).
PACKAGED_VARIANTS = {"pipa": "glare_core.neighbours.pipa"}


def register_local_variant(name: str, factory: Callable[[Any], nn.Module]) -> None:
    """Make ``ObjectiveConfig(local_variant=name)`` build its local term with ``factory(cfg)``."""
    if name in PATCH_VARIANTS:
        raise ValueError(f"{name!r} is a built-in patch distillation variant")
    LOCAL_VARIANTS[name] = factory


def build_local_loss(cfg: Any) -> nn.Module:
    """The local term for an :class:`~glare_core.objective.ObjectiveConfig`."""
    if cfg.local_variant in PATCH_VARIANTS:
        return PatchDistillationLoss(
            cfg.local_variant,
            max_patches=cfg.local_max_patches,
            center_momentum=cfg.patch_center_momentum,
            **temperatures(cfg),
        )
    if cfg.local_variant not in LOCAL_VARIANTS and cfg.local_variant in PACKAGED_VARIANTS:
        importlib.import_module(PACKAGED_VARIANTS[cfg.local_variant])  # registers the variant
    if cfg.local_variant in LOCAL_VARIANTS:
        return LOCAL_VARIANTS[cfg.local_variant](cfg)
    known = PATCH_VARIANTS + tuple(sorted(set(LOCAL_VARIANTS) | set(PACKAGED_VARIANTS)))
    raise ValueError(f"ObjectiveConfig.local_variant={cfg.local_variant!r}; choose one of {known}")
