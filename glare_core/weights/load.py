"""Loading a base: one loader for every kind of name, in a clear order.

How :func:`load_base` resolves ``name_or_path`` (in this order)
---------------------------------------------------------------
1. ``"random:<arch>"``: random weights (tests, smoke runs).
2. A name in :func:`~glare_core.weights.registry.known_bases`: the converted / downloaded file in
   ``cache_dir()/weights`` if present; else the Hugging Face hub cache (timm bases); else, when allowed,
   download or convert it (:func:`~glare_core.weights.prepare.prepare_base`); else a
   :class:`~glare_core.weights.registry.WeightsUnavailableError` naming the base, the file expected and where
   to get it.
3. A path to a local file: official DINO backbone-only ``.pth`` (``dino_deitsmall16_pretrain.pth``),
   official DINO ``*_full_checkpoint.pth`` (``student`` / ``teacher`` with ``module.backbone.*`` and
   ``module.head.*``), official DINOv2 ``.pth``, plain timm state dicts, Hugging Face ``Dinov2Model`` state
   dicts, ``.safetensors``. Always ``torch.load(..., weights_only=True)``
   (:func:`~glare_core.weights.formats.read_checkpoint`). The architecture is inferred from tensor shapes
   (width, depth, patch, native size) unless ``arch`` is given, and the weights load with ``strict=True``.
4. A timm hub name, ``"timm:<model>.<tag>"`` or ``"<timm model>.<tag>"``: timm's pretrained weights.
5. Anything else: a ``ValueError`` listing the known names.

Every base is returned frozen (``requires_grad=False``) and in eval mode; adapters are added by
:mod:`glare_core.tuning`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch

from ..backbone import ARCHITECTURES, IMAGENET_MEAN, IMAGENET_STD, Backbone, create_vit
from . import registry
from .formats import read_checkpoint, vit_for_state_dict
from .prepare import base_status, load_hub, prepare_base
from .registry import DEFAULT_BASE, BaseSpec, WeightsUnavailableError


# ================================================================================================= resolution
@dataclass
class Resolved:
    """What a ``name_or_path`` refers to.

    Attributes:
        kind: ``"random"``, ``"named"``, ``"file"`` or ``"hub"``.
        name: the string as given.
        spec: the :class:`~glare_core.weights.registry.BaseSpec` for named bases.
        path: the local file for ``"file"`` (and for named bases already in the cache).
        arch: the timm architecture for ``"random"`` and ``"hub"`` (hub: the full ``model.tag`` name).
    """

    kind: str
    name: str
    spec: BaseSpec | None = None
    path: Path | None = None
    arch: str | None = None


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
    bases = registry.known_bases()
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
    raise registry.unknown_base(text)


def base_info(name_or_path: str) -> dict:
    """Everything known about a base, JSON-able (what ``glare weights info`` prints).

    A named base: its :class:`~glare_core.weights.registry.BaseSpec`, status, cache file and, once prepared,
    its provenance JSON. A file or hub name: what it resolves to.
    """
    bases = registry.known_bases()
    if name_or_path not in bases:
        res = resolve(name_or_path)
        return {"name": name_or_path, "kind": res.kind, "path": str(res.path) if res.path else None}
    spec = bases[name_or_path]
    info = {"spec": asdict(spec), "status": base_status(name_or_path), "file": str(spec.cached_path())}
    prov = registry.provenance_path(name_or_path)
    if prov.is_file():
        info["provenance"] = json.loads(prov.read_text())
    return info


# ==================================================================================================== loading
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
        vit = load_hub(res.arch, res.name, None, verbose)
        cfg = getattr(vit, "pretrained_cfg", {}) or {}
        mu, sigma = tuple(cfg.get("mean", mu)), tuple(cfg.get("std", sigma))
    elif res.kind == "file":
        sd, head, layout = read_checkpoint(res.path, which=which)
        registry.say(
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
            vit = load_hub(spec.location, spec.name, spec, verbose)
        else:
            if path is None:
                if not prepare:
                    raise WeightsUnavailableError(
                        f"base {spec.name!r} is not prepared ({spec.cached_path()} missing); "
                        f"run `glare weights prepare {spec.name}`"
                    )
                where = registry.weights_dir()
                registry.say(verbose, f"{spec.name} is not in {where} yet: preparing it once")
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
