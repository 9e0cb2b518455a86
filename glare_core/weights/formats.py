"""Checkpoint files: which layouts a base file may have, how they become timm keys, and safe writing.

Reading (:func:`read_checkpoint`) never unpickles arbitrary objects: ``.safetensors`` files are read with
``safetensors``, every other file with ``torch.load(weights_only=True)`` (tensors and plain containers only;
DINO's full checkpoints also hold an ``argparse.Namespace``, the one class allowed besides). Layouts:

* official DINO backbone-only ``.pth`` (``dino_deitsmall16_pretrain.pth``), official DINOv2 ``.pth`` and timm
  state dicts: timm ``VisionTransformer`` keys already;
* official DINO ``*_full_checkpoint.pth``: ``student`` / ``teacher`` dicts with ``module.backbone.*`` and the
  DINO projection head as ``module.head.*``;
* Hugging Face ``Dinov2Model`` state dicts (``embeddings.cls_token``, ``encoder.layer.{i}...``), renamed by
  :func:`hf_dinov2_to_timm` (q, k and v are separate in HF and fused as ``qkv = cat(q, k, v)`` in timm).

:func:`vit_for_state_dict` then builds the timm ViT the tensors belong to (architecture inferred from their
shapes) and loads them with ``strict=True``. Prepared bases are written as ``.safetensors`` through a
temporary file (:func:`save_safetensors_atomic`), with a provenance JSON beside them (written with sorted keys
by :func:`~glare_core.runs.atomic_write_json`).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..backbone import ARCHITECTURES, create_vit
from ..runs import atomic_path
from .registry import say


# ==================================================================================================== reading
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
    """The entries whose key starts with ``prefix``, with the prefix removed."""
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


# ======================================================================================= Hugging Face -> timm
_HF_BLOCK = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale2.lambda1": "ls2.gamma",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_DROP = {"embeddings.mask_token"}  # used only by masked pre-training; timm has no such parameter


def is_hf_dinov2_state_dict(sd: Mapping[str, torch.Tensor]) -> bool:
    """True when ``sd`` uses Hugging Face ``Dinov2Model`` key names (``embeddings.cls_token``...)."""
    return "embeddings.cls_token" in sd and any(k.startswith("encoder.layer.") for k in sd)


def hf_dinov2_to_timm(hf: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ``Dinov2Model`` state dict to timm ``VisionTransformer`` keys.

    ``encoder.layer.{i}.attention.attention.{query,key,value}`` are fused into ``blocks.{i}.attn.qkv`` as
    ``cat(q, k, v)`` along the output dimension (timm's (3 * D, D) layout).

    Raises:
        ValueError: a key with no timm counterpart (e.g. the SwiGLU MLP of ViT-g, or register tokens).
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    block = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
    for key, value in hf.items():
        if key in _HF_DROP:
            continue
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        m = block.match(key)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            if rest in _HF_BLOCK:
                out[f"blocks.{i}.{_HF_BLOCK[rest]}"] = value
                continue
            qm = re.match(r"^attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
            if qm:
                qkv.setdefault((i, qm.group(2)), {})[qm.group(1)] = value
                continue
        raise ValueError(f"Hugging Face key {key!r} has no timm VisionTransformer counterpart")
    for (i, kind), parts in sorted(qkv.items()):
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"block {i}: found only {sorted(parts)} of query/key/value {kind}")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


def infer_config(sd: Mapping[str, torch.Tensor]) -> dict:
    """Architecture facts readable from timm-keyed tensors.

    Returns:
        ``embed_dim``, ``depth``, ``patch_size``, ``img_size`` (native: the position embedding's grid times
        the patch), ``mlp_hidden`` and ``layer_scale`` (whether the blocks have LayerScale).
    """
    dim = sd["cls_token"].shape[-1]
    patch = sd["patch_embed.proj.weight"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    n_pos = sd["pos_embed"].shape[1] - 1
    side = math.isqrt(n_pos)
    if side * side != n_pos:
        raise ValueError(f"pos_embed has {n_pos} patch positions, not a square grid")
    return {
        "embed_dim": int(dim),
        "depth": int(depth),
        "patch_size": int(patch),
        "img_size": int(side * patch),
        "mlp_hidden": int(sd["blocks.0.mlp.fc1.weight"].shape[0]),
        "layer_scale": "blocks.0.ls1.gamma" in sd,
    }


# ==================================================================================================== the ViT
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
        say(verbose, f"architecture {arch} (img_size {cfg['img_size']}) for {source}")
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
        say(
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
            + ". Check the file, or pass the right arch= (and num_heads=) to load_base."
        )


# ==================================================================================================== writing
def save_safetensors_atomic(sd: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write ``sd`` to ``path`` as safetensors through a temporary file (:func:`~glare_core.runs.atomic_path`;
    unique, so two processes may prepare at once)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(tmp), metadata=metadata)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
