"""The DINO projection head: the MLP that turns a token into K prototype scores.

Known: GLARE's global term is DINO's loss, which compares the teacher's and the student's outputs of this head
(Caron et al., 2021, arXiv 2104.14294, ``vision_transformer.py``). This module is DINO's ``DINOHead`` exactly:

.. math::

    h(x) = W_{last}\\, \\frac{g(x)}{\\lVert g(x) \\rVert_2}, \\qquad
    g = \\mathrm{Linear} \\to \\mathrm{GELU} \\to \\mathrm{Linear} \\to \\mathrm{GELU} \\to \\mathrm{Linear}

(``nlayers`` = 3, hidden 2048, bottleneck 256), with a weight-normalised last layer
``W_last = g * v / ||v||`` (per output row) whose gain ``g`` is fixed to 1 when ``norm_last_layer`` is True.
The weight normalisation is written out here (``weight_g``, ``weight_v``) instead of using
``torch.nn.utils.weight_norm``, so that the official full checkpoints' ``head.*`` keys load unchanged.

Design (``glare-method.md`` section 2, "Projection heads"): when the base checkpoint brings its head it is
loaded and kept frozen; otherwise a new head is created and trained. The same head is applied to patch tokens
and to region embeddings when no separate iBOT patch head exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class HeadConfig:
    """Configuration of a :class:`DINOHead` (defaults: DINO's ``main_dino.py``).

    Attributes:
        out_dim: number of prototypes K (DINO: 65536). A smaller K (e.g. 8192 or 4096) is much cheaper on a
            CPU and is a reasonable choice for a new head trained on a few thousand target images (Design).
        hidden_dim: width of the hidden layers (2048).
        bottleneck_dim: width of the L2-normalised bottleneck (256).
        nlayers: number of linear layers of the MLP (3).
        norm_last_layer: fix the last layer's weight-norm gain to 1 (DINO's default for ViT-S; stabilises
            training).
        separate_patch_head: give patch tokens (L) and regions (R) their own head instead of sharing the [CLS]
            head (iBOT's ``shared_head=False``). Default False (Design: the DINO head is applied to patch
            tokens).
        init: how a *new* head starts. ``"random"``: DINO's truncated normal (std 0.02). ``"data"``: the same,
            then the per-dimension mean and standard deviation of the frozen base's tokens on a sample of
            target images are folded into the first linear layer (:meth:`DINOHead.standardize_input_`), so
            the head sees standardised tokens (Design). Why: the tokens of a narrow target domain are very
            alike (the offline DINOv2's [CLS] tokens of CamVid frames have a mean pairwise cosine of 0.87),
            so a random head maps every image to almost the same logits; after centring the teacher's
            target is then uniform (entropy ln K) and the loss carries no signal for hundreds of steps.
            Ignored for a head loaded from a checkpoint.
    """

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    norm_last_layer: bool = True
    separate_patch_head: bool = False
    init: str = "random"

    def __post_init__(self):
        if self.init not in ("random", "data"):
            raise ValueError(f"heads.init={self.init!r}: choose 'random' or 'data'")


class WeightNormLinear(nn.Module):
    """A bias-free linear layer with weight normalisation, ``W = g * v / ||v||_row``.

    Parameters ``weight_g`` (out, 1) and ``weight_v`` (out, in) are named as ``torch.nn.utils.weight_norm``
    names them, which is how DINO's checkpoints store the last layer.

    Shapes:
        x: (..., in_features) -> (..., out_features)
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        nn.init.kaiming_uniform_(self.weight_v, a=5**0.5)
        self._cache: torch.Tensor | None = None
        self._cache_key: tuple | None = None

    @property
    def weight(self) -> torch.Tensor:
        """The effective (out, in) weight."""
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        trains = self.weight_v.requires_grad or self.weight_g.requires_grad
        if torch.is_grad_enabled() and trains:
            # (x v^T) * (g / ||v||)^T equals x W^T; scaling the (..., K) output instead of building W keeps
            # ``weight_v`` a leaf (autocast casts it once per region) and skips a (K, in) product per call.
            scale = (self.weight_g / self.weight_v.norm(dim=1, keepdim=True)).squeeze(1)
            return F.linear(x, self.weight_v) * scale.to(_compute_dtype(x))
        return F.linear(x, self._constant_weight(x))

    def _constant_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight when no gradient flows into it (teacher, frozen head), cached per parameter version.

        With K = 65536 prototypes, re-normalising and casting the (K, 256) matrix at every call costs as much
        as the matrix product for a few hundred tokens.
        """
        dtype = _compute_dtype(x)
        v, g = self.weight_v, self.weight_g
        key = (v._version, g._version, v.data_ptr(), g.data_ptr(), dtype, x.device)
        if self._cache is None or self._cache_key != key:
            with torch.no_grad():
                self._cache = self.weight.to(device=x.device, dtype=dtype)
            self._cache_key = key
        return self._cache


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matrix product with ``x`` runs in (the autocast dtype inside an autocast region)."""
    device = x.device.type
    try:
        if torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device)
    except (TypeError, AttributeError):  # torch < 2.4
        if device == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
        if device == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
    return x.dtype


class DINOHead(nn.Module):
    """DINO's projection head (``vision_transformer.DINOHead``, without the unused BatchNorm option).

    Args:
        in_dim: token width D.
        out_dim: number of prototypes K.
        hidden_dim: hidden width (2048).
        bottleneck_dim: bottleneck width (256).
        nlayers: number of MLP layers (3).
        norm_last_layer: freeze the last layer's gain at 1.

    Shapes:
        x: (..., D) -> logits (..., K)
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        self.norm_last_layer = norm_last_layer
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad_(False)

    @classmethod
    def from_config(cls, in_dim: int, cfg: HeadConfig) -> DINOHead:
        """Build a head of width ``in_dim`` from a :class:`HeadConfig`."""
        return cls(in_dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.nlayers, cfg.norm_last_layer)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def out_dim(self) -> int:
        return self.last_layer.weight_v.shape[0]

    @torch.no_grad()
    def standardize_input_(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Make the head compute ``h((x - mean) / std)`` from now on, by folding the affine map into the first
        linear layer: ``W <- W / std`` (per input column), ``b <- b - (W / std) mean``.

        Shapes:
            mean, std: (D,), the statistics of the tokens this head will see.
        """
        first = self.mlp[0] if isinstance(self.mlp, nn.Sequential) else self.mlp
        weight = first.weight / std.to(first.weight).clamp_min(1e-6)
        first.weight.copy_(weight)
        first.bias.sub_(weight @ mean.to(weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


def extract_head_state_dict(checkpoint: Mapping[str, torch.Tensor | Mapping], which: str = "teacher") -> dict:
    """The ``head.*`` tensors of a DINO checkpoint, with their prefixes stripped.

    Accepts an official full checkpoint (``{"student": {...}, "teacher": {...}, ...}`` with ``module.head.*``
    / ``head.*`` keys; the ``teacher`` head is taken by default, as DINO evaluates the teacher), a flat state
    dict with ``head.*`` keys, or an already stripped head state dict (``mlp.0.weight`` ...).

    Raises:
        KeyError: if no head tensors are found, naming the keys that were seen.
    """
    if which in checkpoint and isinstance(checkpoint[which], Mapping):
        checkpoint = checkpoint[which]
    out = {}
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            continue
        k = key.removeprefix("module.")
        if k.startswith("head."):
            out[k.removeprefix("head.")] = value
        elif k.startswith(("mlp.", "last_layer.")):
            out[k] = value
    if not out:
        sample = ", ".join(list(checkpoint)[:8])
        raise KeyError(
            f"no DINO head tensors (head.mlp.*, head.last_layer.*) in the checkpoint; keys: {sample} ..."
        )
    return out


def head_from_state_dict(state: Mapping[str, torch.Tensor], in_dim: int | None = None) -> DINOHead:
    """Build a :class:`DINOHead` shaped like ``state`` (see :func:`extract_head_state_dict`) and load it."""
    linear_keys = sorted((k for k in state if k.startswith("mlp") and k.endswith("weight")), key=_layer_order)
    if not linear_keys:
        raise KeyError("head state dict has no mlp.*.weight tensors")
    first, last = state[linear_keys[0]], state[linear_keys[-1]]
    in_dim = in_dim or first.shape[1]
    if first.shape[1] != in_dim:
        raise ValueError(f"the head expects {first.shape[1]}-d tokens but the backbone gives {in_dim}")
    out_dim, bottleneck = state["last_layer.weight_v"].shape
    hidden = first.shape[0] if len(linear_keys) > 1 else bottleneck
    head = DINOHead(in_dim, out_dim, hidden, last.shape[0], nlayers=len(linear_keys))
    head.load_state_dict(dict(state))
    return head


def _layer_order(key: str) -> int:
    parts = key.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else -1
