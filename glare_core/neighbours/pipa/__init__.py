"""PiPa's two self-supervised losses (Chen et al., arXiv 2211.07609), as comparisons on GLARE's benchmark.

=========================  ===========================================================================
``pixel_contrast``         pixel-wise supervised contrast on decoder embeddings, class-balanced hard /
                           easy anchors, :class:`PixelContrastLoss` (tau 0.1, weight 0.1)
``patch_consistency``      patch-wise consistency of two overlapping crops, memory queue of negatives
                           with a different pseudo-label, confidence > 0.9, :class:`PatchConsistencyLoss`
                           (tau 0.1, weight 0.01); :class:`PiPaLocalLoss`, the ``"pipa"`` local variant
                           of continual pre-training
=========================  ===========================================================================

PiPa itself trains a DAFormer/HRDA model for unsupervised domain adaptation; here both losses are extra terms
while a light decoder trains on frozen features
(:func:`glare_core.neighbours.segmentation.train_segmentation`), and the patch consistency is also a drop-in
local term of GLARE's objective: importing this package registers the ``"pipa"`` local variant, and
``--set objective.local_variant=pipa`` imports it when the objective is built
(:data:`glare_core.losses.PACKAGED_VARIANTS`).
"""

from .patch_consistency import (
    FeatureQueue,
    PatchConsistencyConfig,
    PatchConsistencyLoss,
    PiPaLocalLoss,
    build_pipa_local,
    overlap_slices,
    overlapping_windows,
    patch_contrast,
)
from .pixel_contrast import (
    PixelContrastConfig,
    PixelContrastLoss,
    labels_to_grid,
    sample_anchors,
    supervised_pixel_contrast,
)

__all__ = [
    "FeatureQueue",
    "PatchConsistencyConfig",
    "PatchConsistencyLoss",
    "PiPaLocalLoss",
    "build_pipa_local",
    "overlap_slices",
    "overlapping_windows",
    "patch_contrast",
    "PixelContrastConfig",
    "PixelContrastLoss",
    "labels_to_grid",
    "sample_anchors",
    "supervised_pixel_contrast",
]
