"""The neighbours: the other seed methods, compared with GLARE on its benchmark (glare-method.md, section 5).

None of them is part of GLARE's objective; each is reproduced where it acts, with everything else fixed.

=================  ==========================================================================================
module             what it is
=================  ==========================================================================================
``segmentation``   the segmentation decoder baseline: a light decoder trained on a frozen (base or adapted)
                   backbone's cached features (:func:`~.segmentation.train_segmentation`); PiPa's and SSR's
                   terms are optional training-only additions to its loss
``pipa``           PiPa (Chen et al., arXiv 2211.07609): pixel-wise supervised contrast and patch-wise
                   consistency of two overlapping crops; the patch consistency is also the ``"pipa"`` local
                   variant of continual pre-training (``--set objective.local_variant=pipa``)
``ssr``            SSR (arXiv 2401.14686): a training-only cross-attention branch that fuses a frozen
                   foundation encoder (SAM, or the frozen base offline) into the decoder's features
=================  ==========================================================================================

Nothing is imported here, so ``glare_core.neighbours.pipa`` loads without the decoder's modules.
"""
