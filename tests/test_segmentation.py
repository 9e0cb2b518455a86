"""Downstream light-decoder training with PiPa / SSR terms, on synthetic scenes and the tiny test ViT."""

import dataclasses
import json
import math

import pytest
import torch

from glare_core.backbone import create_backbone
from glare_core.data import build_dataset
from glare_core.neighbours.pipa import PatchConsistencyConfig
from glare_core.neighbours.segmentation import SegTrainConfig, _batch_indices, train_segmentation
from glare_core.neighbours.ssr import SSRConfig
from glare_core.probe import DecoderProbe

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    backbone = create_backbone("test_vit").eval().requires_grad_(False)
    train = build_dataset("synthetic", "train", num_images=6, size=(64, 64))
    val = build_dataset("synthetic", "val", num_images=3, size=(64, 64))
    cfg = SegTrainConfig.smoke(
        size=(64, 64), steps=5, batch_size=3, hidden_dim=16, cache=False, progress=False
    )
    return backbone, train, val, cfg


TERM_SETS = {
    "decoder": (),
    "pixel": ("pixel_contrast",),
    "patch": ("patch_consistency",),
    "ssr": ("ssr",),
    "all": ("pixel_contrast", "patch_consistency", "ssr"),
}


@pytest.mark.parametrize("name", list(TERM_SETS))
def test_each_extra_term_trains_and_returns_finite_metrics(setup, name):
    backbone, train, val, cfg = setup
    if name in ("patch", "all"):  # a fresh decoder is rarely 90 % sure: let every position count
        cfg = dataclasses.replace(cfg, patch_consistency=PatchConsistencyConfig(threshold=0.0))
    result = train_segmentation(backbone, train, val, cfg, extra_terms=TERM_SETS[name])
    json.dumps(result)
    assert 0.0 <= result["miou"] <= 1.0 and 0.0 <= result["pixel_acc"] <= 1.0
    extra = {"patch_confident_fraction"} if "patch_consistency" in TERM_SETS[name] else set()
    assert set(result["losses"]) == {"loss", "ce", *TERM_SETS[name], *extra}
    for term in TERM_SETS[name]:
        assert math.isfinite(result["losses"][term]["first"]) and result["losses"][term]["first"] > 0
    assert (result["parameters"]["training_only"] > 0) == bool(TERM_SETS[name])
    decoder = DecoderProbe(backbone.embed_dim, train.num_classes, hidden=16)
    assert result["parameters"]["inference"] == sum(p.numel() for p in decoder.parameters())
    assert result["extra_terms"] == list(TERM_SETS[name])
    assert result["timings"]["step_s"] > 0
    assert result["machine"]["device"] == str(next(backbone.parameters()).device)  # the decoder's device


def test_zero_weight_terms_leave_the_decoder_exactly_as_without_them(setup):
    """The training-only passes must not leak into the inference path (e.g. through BatchNorm statistics)."""
    backbone, train, val, cfg = setup
    base = train_segmentation(backbone, train, val, cfg)
    zero = dataclasses.replace(
        cfg, patch_consistency=PatchConsistencyConfig(weight=0.0, threshold=0.0), ssr=SSRConfig(weight=0.0)
    )
    other = train_segmentation(backbone, train, val, zero, extra_terms=("patch_consistency", "ssr"))
    assert other["losses"]["ce"]["curve"] == base["losses"]["ce"]["curve"]
    assert other["confusion_matrix"] == base["confusion_matrix"]


def test_ssr_with_a_separate_frozen_encoder(setup):
    backbone, train, val, cfg = setup
    torch.manual_seed(1)
    other = create_backbone("test_vit").eval().requires_grad_(False)
    calls = []

    def sam_like(images):  # a callable encoder with its own grid and width, like SAM's neck
        calls.append(images.shape)
        return torch.nn.functional.avg_pool2d(images, 8).repeat(1, 2, 1, 1)  # (B, 6, 8, 8)

    for encoder, name in ((other, "Backbone"), (sam_like, "function")):
        result = train_segmentation(backbone, train, val, cfg, extra_terms=("ssr",), ssr_encoder=encoder)
        assert result["backbone"]["ssr_encoder"] == name and math.isfinite(result["losses"]["ssr"]["last"])
    assert calls and calls[0][1:] == (3, 64, 64)


def test_batches_are_a_pure_function_of_the_step():
    seen = torch.cat([_batch_indices(10, 3, s, seed=0) for s in range(3)])
    assert sorted(seen.tolist()) == sorted(set(seen.tolist()))  # one epoch: no repeats
    assert torch.equal(_batch_indices(10, 3, 4, seed=0), _batch_indices(10, 3, 4, seed=0))
    assert not torch.equal(_batch_indices(10, 3, 0, seed=0), _batch_indices(10, 3, 0, seed=1))


def test_unknown_term_is_rejected(setup):
    backbone, train, val, cfg = setup
    with pytest.raises(ValueError, match="unknown"):
        train_segmentation(backbone, train, val, cfg, extra_terms=("pipa",))


def test_compare_command_runs_every_variant(tmp_path, capsys):
    from glare_core.cli import main

    out = tmp_path / "compare.json"
    args = [
        "compare",
        "--base",
        "random:test_vit",
        "--dataset",
        "synthetic",
        "--steps",
        "3",
        "--size",
        "64x64",
    ]
    args += ["--variants", "decoder,all", "--no-cache", "--threads", "1", "--out", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert list(result) == ["decoder", "all"] and result["all"]["extra_terms"] == [
        "pixel_contrast",
        "patch_consistency",
        "ssr",
    ]
    assert main(["compare", "--variants", "nope"]) == 2
    assert "unknown variants" in capsys.readouterr().err
