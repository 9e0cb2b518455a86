"""(R) Regional consistency: attention-guided regions matched across views by cross-attention.

Known (GLARE abstract): a regional consistency constraint that uses spatial semantics, built from
**attention-guided region sampling** and **cross-attention region correspondence**. Everything below is this
project's Design (``glare-method.md`` section 2, "(R)"):

1. *Sampling* (:func:`sample_region_centres`, :func:`sampling_probs`): from the teacher's [CLS] -> patch
   attention a (B, N) of view X, draw K region centres per image without replacement with probability
   ``p_i = alpha * a_i / sum_j a_j + (1 - alpha) / N`` (alpha = 0.8; ``uniform=True``: 1/N, the ablation).
2. *Regions* (:func:`region_windows`, :func:`pool_regions`): a region is the k x k window of cells around its
   centre (k = 3, shifted to stay inside the grid); its embedding r is the mean of the student's patch tokens
   there.
3. *Correspondence* (:func:`cross_attention_correspondence`): parameter-free cross-attention of the region (as
   query, detached; ``region_query="teacher"``: the teacher's embedding of the same window) over the teacher's
   patch tokens z'_j of the other view X',
   ``w_j = softmax_j(cos(q, z'_j) / tau_a)`` (tau_a = 0.1), retrieved ``r' = sum_j w_j z'_j``. The ablation
   :func:`geometric_correspondence` maps the window through the crop boxes and flips instead and pools the
   other view's teacher tokens there.
4. *Loss* (:class:`RegionLoss`): ``"ce"``, DINO's cross-entropy through the (frozen) head with the teacher
   side centred (own centre) and sharpened; ``"infonce"``, InfoNCE across all the batch's regions;
   ``"cosine"``, the negative cosine similarity. Averaged over the regions of both directions (X -> X' and X'
   -> X): symmetric. With ``region_overlap_only``, regions whose centre lies outside the other view
   (:func:`window_centre_inside`, through the crop boxes) are left out of the mean.

:func:`regional_consistency` is the whole term as the objective calls it: steps 1-3 for each direction
(:func:`match_regions`), then the loss of step 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..views import Crop, Views, map_points
from .global_consistency import TeacherTargets, collapse_stats, soft_cross_entropy

if TYPE_CHECKING:
    from ..backbone import BackboneOutput

REGION_LOSSES = ("ce", "infonce", "cosine")


def _float32(*tensors: torch.Tensor):
    """The tensors in float32, to be used under ``torch.autocast(enabled=False)``."""
    return tuple(t.float() for t in tensors)


def sampling_probs(attn: torch.Tensor, alpha: float = 0.8) -> torch.Tensor:
    """The attention-guided sampling distribution ``p_i = alpha * a_i / sum_j a_j + (1 - alpha) / N``.

    Args:
        attn: (B, N) non-negative [CLS] attention of the teacher (negative values are clamped to 0).
        alpha: weight of the attention in the mixture (0.8; 0 gives the uniform 1/N).

    Returns:
        (B, N) float32 probabilities (each row sums to 1).
    """
    a = attn.detach().float().clamp(min=0)
    a = a / a.sum(dim=1, keepdim=True).clamp(min=1e-12)
    return alpha * a + (1 - alpha) / a.shape[1]


def sample_region_centres(
    attn: torch.Tensor | None,
    grid: tuple[int, int],
    num_regions: int = 6,
    alpha: float = 0.8,
    uniform: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Draw region centres from the attention-guided distribution, without replacement.

    Args:
        attn: (B, N) non-negative [CLS] attention of the teacher (may be None when ``uniform``).
        grid: (h, w) with N = h * w.
        num_regions: K centres per image (at most N).
        alpha: weight of the attention in the mixture ``alpha * attn_normalised + (1 - alpha) / N``.
        uniform: ignore the attention (the uniform-sampling ablation).
        generator: ``torch.Generator`` for reproducibility (its device is used for the draw).
        batch_size: B, needed only when ``attn`` is None.

    Returns:
        (B, K) long indices of the centre cells.
    """
    N = grid[0] * grid[1]
    if num_regions > N:
        raise ValueError(f"num_regions={num_regions} exceeds the {N} patch cells of the grid {grid}")
    device = generator.device if generator is not None else (attn.device if attn is not None else "cpu")
    if uniform or attn is None:
        B = attn.shape[0] if attn is not None else batch_size
        probs = torch.full((B, N), 1.0 / N, device=device)
    else:
        probs = sampling_probs(attn.to(device), alpha)
    centres = torch.multinomial(probs, num_regions, replacement=False, generator=generator)
    return centres.to(attn.device if attn is not None else device)


def region_windows(centres: torch.Tensor, grid: tuple[int, int], k: int = 3) -> torch.Tensor:
    """The k x k windows of cells around the centres, shifted to stay inside the grid.

    Args:
        centres: (B, K) cell indices (row-major).
        grid: (h, w).
        k: window side (k <= min(h, w)).

    Returns:
        (B, K, k * k) cell indices, row-major inside each window.
    """
    h, w = grid
    if k > h or k > w:
        raise ValueError(f"region window {k}x{k} does not fit the patch grid {h}x{w}; use a smaller window")
    row, col = centres // w, centres % w
    top = (row - k // 2).clamp(0, h - k)
    left = (col - k // 2).clamp(0, w - k)
    d = torch.arange(k, device=centres.device)
    rows = top[..., None, None] + d.view(k, 1)
    cols = left[..., None, None] + d.view(1, k)
    return (rows * w + cols).flatten(-2)


def pool_regions(tokens: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Mean of the tokens inside each window: (B, N, D), (B, K, k*k) -> (B, K, D)."""
    B, K, kk = windows.shape
    idx = windows.reshape(B, K * kk, 1).expand(-1, -1, tokens.shape[-1])
    return tokens.gather(1, idx).view(B, K, kk, -1).mean(dim=2)


def cross_attention_correspondence(
    queries: torch.Tensor, keys: torch.Tensor, tau: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Parameter-free cross-attention: retrieve, for each region, its counterpart among the other view's
    tokens.

    ``w = softmax_j(cos(q_k, z_j) / tau)``, ``retrieved_k = sum_j w_kj z_j`` (computed in float32).

    Args:
        queries: (B, K, D) region embeddings.
        keys: (B, N, D) the other view's (teacher) patch tokens.
        tau: temperature tau_a (0.1).

    Returns:
        retrieved (B, K, D) float32 and weights (B, K, N).
    """
    with torch.autocast(device_type=keys.device.type, enabled=False):
        q, z = _float32(queries, keys)
        sim = F.normalize(q, dim=-1) @ F.normalize(z, dim=-1).transpose(1, 2)
        weights = (sim / tau).softmax(dim=-1)
        return weights @ z, weights


def _cell_centres(windows: torch.Tensor, grid: tuple[int, int], average: bool = False) -> torch.Tensor:
    """(B, K, k*k, 2) float32 (x, y) centres, in [0, 1] view coordinates, of the cells of (B, K, k*k) windows.

    With ``average``, (B, K, 2): each window's centre, the mean of its cells' column and row indices then
    shifted to the cell centre and scaled like a cell.
    """
    h, w = grid
    col, row = (windows % w).float(), (windows // w).float()
    if average:
        col, row = col.mean(-1), row.mean(-1)
    return torch.stack([(col + 0.5) / w, (row + 0.5) / h], dim=-1)


def window_points(
    windows: torch.Tensor, grid: tuple[int, int], src: Crop, dst: Crop
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the cell centres of view X's windows land in view X' (through the source image).

    Args:
        windows: (B, K, k*k) cell indices in view X's grid ``grid`` (h, w).
        src, dst: the crops of X and X' (:class:`~glare_core.views.Crop`: boxes (B, 4), flips (B,)).

    Returns:
        points (B, K, k*k, 2) (x, y) in X''s [0, 1] coordinates (float32) and inside (B, K, k*k) bool (the
        cell's centre lies in X').
    """
    B, K, kk = windows.shape
    pts = _cell_centres(windows, grid).view(B, K * kk, 2)
    dst_pts, inside = map_points(pts, src.float(), dst.float())
    return dst_pts.view(B, K, kk, 2), inside.view(B, K, kk)


def window_centre_inside(windows: torch.Tensor, grid: tuple[int, int], src: Crop, dst: Crop) -> torch.Tensor:
    """(B, K) bool: the centre of each window of view X (the mean of its cell centres) lies inside view X'.

    Arguments as :func:`window_points`.
    """
    return map_points(_cell_centres(windows, grid, average=True), src.float(), dst.float())[1]


def geometric_correspondence(
    windows: torch.Tensor,
    grid: tuple[int, int],
    src: Crop,
    dst: Crop,
    tokens_dst: torch.Tensor,
    grid_dst: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ablation: pool the other view's tokens where the window's cells land geometrically.

    Each window cell's centre is mapped to the source image through view X's crop box and flip, then into view
    X' through its box and flip; X''s token map is sampled bilinearly there, and the cells that fall inside X'
    are averaged.

    Args:
        windows: (B, K, k*k) cell indices in view X's grid ``grid``.
        src, dst: the crops of X and X' (:class:`~glare_core.views.Crop`).
        tokens_dst: (B, N', D) teacher tokens of X' on ``grid_dst``.

    Returns:
        retrieved (B, K, D) float32 and valid (B, K) bool (at least one cell of the window is inside X').
    """
    B, K, kk = windows.shape
    with torch.autocast(device_type=tokens_dst.device.type, enabled=False):
        points, inside = window_points(windows, grid, src, dst)
        hd, wd = grid_dst
        fmap = tokens_dst.float().transpose(1, 2).reshape(B, -1, hd, wd)
        grid_pts = (points.view(B, K * kk, 2) * 2 - 1)[:, :, None, :]
        sampled = F.grid_sample(fmap, grid_pts, mode="bilinear", padding_mode="border", align_corners=False)
        sampled = sampled[..., 0].transpose(1, 2).view(B, K, kk, -1)
        weight = inside[..., None].float()
        retrieved = (sampled * weight).sum(2) / weight.sum(2).clamp(min=1)
        return retrieved, inside.any(-1)


class RegionLoss(TeacherTargets):
    """The regional term L_R between student regions and their retrieved teacher counterparts.

    Args:
        kind: ``"ce"`` (through the heads, DINO-style), ``"infonce"`` or ``"cosine"``.
        out_dim: K of the head for ``"ce"`` (None: sized at the first call).
        infonce_temp: temperature of the InfoNCE variant (0.1).
        targets: the temperatures and the region centre's EMA momentum, as in the global term
            (:class:`~glare_core.losses.global_consistency.TeacherTargets`: ``student_temp``,
            ``teacher_temp``, ``warmup_teacher_temp``, ``warmup_teacher_temp_steps``, ``center_momentum``).
    """

    def __init__(
        self, kind: str = "ce", out_dim: int | None = None, *, infonce_temp: float = 0.1, **targets: Any
    ):
        if kind not in REGION_LOSSES:
            raise ValueError(f"region loss {kind!r}; choose one of {REGION_LOSSES}")
        super().__init__(out_dim, **targets)
        self.kind = kind
        self.infonce_temp = infonce_temp

    def forward(
        self,
        student_regions: torch.Tensor,
        teacher_regions: torch.Tensor,
        valid: torch.Tensor | None = None,
        student_head: nn.Module | None = None,
        teacher_head: nn.Module | None = None,
        step: int = 0,
    ) -> torch.Tensor:
        """Loss over the regions (both directions concatenated).

        Args:
            student_regions: (M, D) or (B, K, D) student region embeddings (with gradients).
            teacher_regions: same shape, retrieved teacher embeddings (treated as constants).
            valid: optional bool mask of the regions to use (geometric correspondence).
            student_head, teacher_head: the patch heads (needed for ``"ce"``).
            step: optimiser step (temperature warm-up).

        Returns:
            Scalar float32 loss (updates the centre for ``"ce"``).
        """
        s = student_regions.reshape(-1, student_regions.shape[-1])
        t = teacher_regions.reshape(-1, teacher_regions.shape[-1]).detach()
        if valid is not None:
            keep = valid.reshape(-1)
            s, t = s[keep], t[keep]
        if self.kind == "ce":
            if student_head is None or teacher_head is None:
                raise ValueError("the 'ce' region loss needs the student and teacher heads")
            s_logits = student_head(s.to(next(student_head.parameters()).dtype))
            with torch.no_grad():
                t_logits = teacher_head(t.to(next(teacher_head.parameters()).dtype)).float()
            if s.shape[0] == 0:
                # No valid region on this process. Under data parallelism the other processes still
                # all-reduce the centre and the head's gradients, so take part in both: an empty centre
                # update and a zero loss that reaches the head (zero gradients, not missing ones).
                self.centering.update(t_logits)
                return s_logits.float().sum() * 0.0 + student_regions.sum().float() * 0.0
            probs = self.teacher_probs(t_logits, step)
            self.diagnostics = collapse_stats(probs)
            loss = soft_cross_entropy(s_logits, probs, self.student_temp).mean()
            self.centering.update(t_logits)
            return loss
        if s.shape[0] == 0:
            return student_regions.sum().float() * 0.0
        with torch.autocast(device_type=s.device.type, enabled=False):
            s_n, t_n = F.normalize(s.float(), dim=-1), F.normalize(t.float(), dim=-1)
            if self.kind == "cosine":
                return -(s_n * t_n).sum(-1).mean()
            logits = s_n @ t_n.T / self.infonce_temp
            return F.cross_entropy(logits, torch.arange(len(s_n), device=s.device))


# ---------------------------------------------------------------------------- the term, assembled
def match_regions(
    student: BackboneOutput,
    teacher: BackboneOutput,
    teacher_other: BackboneOutput,
    views: Views,
    pair: tuple[int, int],
    cfg: Any,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One direction of L_R: regions sampled in view a (steps 1-2) and their targets in view b (step 3).

    Args:
        student: the student's output of view a: ``patches`` (B, N, D) on ``grid`` (h, w).
        teacher: the teacher's output of view a: ``attn`` (B, N) (None for uniform sampling), ``patches``.
        teacher_other: the teacher's output of view b: ``patches`` (B, N', D) on ``grid``.
        views: the crop boxes (2, B, 4) and flips (2, B) of the two views.
        pair: (a, b), the indices of the two views in ``views``.
        cfg: the :class:`~glare_core.objective.ObjectiveConfig` (``num_regions``, ``window``, ``alpha``,
            ``sampling``, ``correspondence``, ``tau_a``, ``region_query``, ``region_overlap_only``).
        generator: the step's generator (the region draws).

    Returns:
        student regions (B, K, D) with gradients, targets (B, K, D) and valid (B, K) bool (the regions that
        enter the loss).
    """
    a, b = pair
    grid = student.grid
    centres = sample_region_centres(
        teacher.attn,
        grid,
        cfg.num_regions,
        cfg.alpha,
        uniform=cfg.sampling == "uniform",
        generator=generator,
        batch_size=student.patches.shape[0],
    )
    windows = region_windows(centres, grid, cfg.window)
    region = pool_regions(student.patches, windows)  # (B, K, D) student regions, with gradients
    src, dst = views.crop(a), views.crop(b)
    if cfg.correspondence == "cross_attention":
        query = region if cfg.region_query == "student" else pool_regions(teacher.patches, windows)
        target, _ = cross_attention_correspondence(query.detach(), teacher_other.patches, cfg.tau_a)
        valid = torch.ones(region.shape[:2], dtype=torch.bool, device=region.device)
    else:
        target, valid = geometric_correspondence(
            windows, grid, src, dst, teacher_other.patches, teacher_other.grid
        )
    if cfg.region_overlap_only:  # only regions whose centre view b shows
        valid = valid & window_centre_inside(windows, grid, src, dst)
    return region, target, valid


def regional_consistency(
    loss: RegionLoss,
    students: Sequence[BackboneOutput],
    teachers: Sequence[BackboneOutput],
    views: Views,
    model: Any,
    step: int,
    cfg: Any,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L_R, symmetric: regions sampled in X are retrieved in X', and those sampled in X' in X.

    Args:
        loss: the term's :class:`RegionLoss` (its centre is the term's state).
        students: the student's outputs of the two (patch-corrupted) global views.
        teachers: the teacher's outputs of the two clean global views.
        views: their crop boxes and flips (:class:`~glare_core.views.Views`).
        model: the unwrapped :class:`~glare_core.teacher.StudentTeacher` (``student_patch_head``,
            ``teacher_patch_head``).
        step: optimiser step (temperature warm-up).
        cfg: the :class:`~glare_core.objective.ObjectiveConfig` (see :func:`match_regions`).
        generator: the step's generator.

    Returns:
        Scalar float32 loss over the valid regions of both directions (updates the centre for ``"ce"``).
    """
    regions, targets, valids = [], [], []
    for pair in ((0, 1), (1, 0)):
        a, b = pair
        region, target, valid = match_regions(
            students[a], teachers[a], teachers[b], views, pair, cfg, generator
        )
        regions.append(region)
        targets.append(target)
        valids.append(valid)
    return loss(
        torch.cat(regions),
        torch.cat(targets),
        torch.cat(valids),
        model.student_patch_head,
        model.teacher_patch_head,
        step,
    )
