"""GLARE's three consistency losses, one module each (``glare-method.md`` section 2).

========================  ====  ==============================================================================
module                    term  what it computes
========================  ====  ==============================================================================
``global_consistency``    G     DINO's cross-view [CLS] self-distillation, :class:`DINOLoss`
``local_consistency``     L     iBOT patch distillation at the corrupted cells, :class:`PatchDistillationLoss`
``regional_consistency``  R     regions matched across views by cross-attention, :func:`regional_consistency`
========================  ====  ==============================================================================

Each module holds its term's whole computation: :class:`PatchDistillationLoss` assembles itself from
:class:`LocalInputs`; :func:`regional_consistency` samples, pools and matches the regions of both directions
and calls :class:`RegionLoss`. Each loss records DINO's collapse diagnostics of its teacher targets after
every call (``loss.diagnostics``, :func:`collapse_stats`).
"""

from ..schedules import TeacherTemperature, teacher_temperature
from .global_consistency import (
    TEMPERATURE_FIELDS,
    Centering,
    DINOLoss,
    TeacherTargets,
    centred_softmax,
    collapse_stats,
    soft_cross_entropy,
    temperatures,
)
from .local_consistency import (
    LOCAL_VARIANTS,
    PACKAGED_VARIANTS,
    LocalInputs,
    PatchDistillationLoss,
    build_local_loss,
    register_local_variant,
)
from .regional_consistency import (
    RegionLoss,
    cross_attention_correspondence,
    geometric_correspondence,
    match_regions,
    pool_regions,
    region_windows,
    regional_consistency,
    sample_region_centres,
    sampling_probs,
    window_centre_inside,
    window_points,
)

__all__ = [
    "TEMPERATURE_FIELDS",
    "Centering",
    "DINOLoss",
    "TeacherTargets",
    "temperatures",
    "TeacherTemperature",
    "teacher_temperature",
    "centred_softmax",
    "collapse_stats",
    "soft_cross_entropy",
    "LOCAL_VARIANTS",
    "PACKAGED_VARIANTS",
    "LocalInputs",
    "PatchDistillationLoss",
    "build_local_loss",
    "register_local_variant",
    "RegionLoss",
    "cross_attention_correspondence",
    "geometric_correspondence",
    "match_regions",
    "pool_regions",
    "region_windows",
    "regional_consistency",
    "sample_region_centres",
    "sampling_probs",
    "window_centre_inside",
    "window_points",
]
