"""UniAdapter and LoRA: identity at initialisation, what trains, parameter counts."""

import copy

import pytest
import torch

from glare_core.backbone import Backbone, create_vit
from glare_core.lora import LoRALinear
from glare_core.tuning import configure_tuning, count_parameters, trainable_state_dict
from glare_core.uniadapter import AdaptedBlock, UniAdapter, add_uniadapters


def make(arch, **kw):
    torch.manual_seed(0)
    return Backbone(create_vit(arch, **kw)).eval()


@pytest.mark.parametrize(
    "arch,kw",
    [
        ("test_vit", {}),
        ("test_vit", {"init_values": 1e-2}),  # LayerScale, as in DINOv2
        ("vit_small_patch14_dinov2", {"img_size": 98}),  # the offline base's architecture (LayerScale)
    ],
)
@pytest.mark.parametrize("mode", ["adapter", "lora"])
def test_adapted_model_equals_base_at_initialisation(arch, kw, mode):
    base = make(arch, **kw)
    adapted = copy.deepcopy(base)
    configure_tuning(adapted.vit, mode, rank=8)
    x = torch.rand(2, 3, 98, 70) if "14" in arch else torch.rand(2, 3, 96, 64)
    with torch.no_grad():
        a, b = base(x), adapted(x)
    torch.testing.assert_close(a.patches, b.patches, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.cls, b.cls, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.attn, b.attn, atol=1e-6, rtol=0)


def test_state_dict_keys_of_base_are_kept():
    base = make("test_vit")
    adapted = copy.deepcopy(base)
    configure_tuning(adapted.vit, "adapter", rank=4)
    base_keys = set(base.vit.state_dict())
    new_keys = set(adapted.vit.state_dict()) - base_keys
    assert base_keys <= set(adapted.vit.state_dict())
    assert new_keys and all(".adapter." in k for k in new_keys)
    adapted.vit.load_state_dict(base.vit.state_dict(), strict=False)


@pytest.mark.parametrize("mode,marker", [("adapter", ".adapter."), ("lora", ".lora_")])
def test_one_optimiser_step_changes_only_the_tuned_tensors(mode, marker):
    model = make("test_vit", init_values=1e-2)
    configure_tuning(model.vit, mode, rank=8)
    model.train()
    before = {k: v.clone() for k, v in model.vit.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.05)
    out = model(torch.rand(2, 3, 64, 64))
    (out.patches.pow(2).mean() + out.cls.sum()).backward()
    opt.step()
    changed = {k for k, v in model.vit.state_dict().items() if not torch.equal(v, before[k])}
    assert changed, "nothing changed"
    assert all(marker in k for k in changed), sorted(changed)
    # the zero-initialised up-projection (adapter) / B factor (LoRA) moved away from zero
    assert any(("up.weight" in k) or ("lora_b" in k) for k in changed)


def test_full_and_frozen_modes():
    model = make("test_vit")
    configure_tuning(model.vit, "full")
    assert count_parameters(model).trainable == count_parameters(model).total
    configure_tuning(model.vit, "frozen")
    assert count_parameters(model).trainable == 0
    with pytest.raises(ValueError, match="unknown tuning mode"):
        configure_tuning(model.vit, "prefix")


def test_vit_small_patch16_r64_has_0_60_M_adapter_parameters():
    vit = create_vit("vit_small_patch16_224")
    total_before = count_parameters(vit).total
    configure_tuning(vit, "adapter", rank=64)
    counts = count_parameters(vit)
    expected = 12 * (2 * 384 * 64 + 64 + 3 * 384)  # glare-method.md: 2*D*r + r + 3*D per block
    assert counts.trainable == expected
    assert abs(counts.trainable - 0.60e6) / 0.60e6 < 0.01
    assert counts.total == total_before + expected


def test_vit_base_r64_has_1_21_M_adapter_parameters():
    vit = create_vit("vit_base_patch16_224")
    configure_tuning(vit, "adapter", rank=64)
    assert abs(count_parameters(vit).trainable - 1.21e6) / 1.21e6 < 0.01


def test_adapter_zero_init_and_learnable_scale():
    a = UniAdapter(32, 8, scale=0.1, learnable_scale=True)
    assert torch.count_nonzero(a.up.weight) == 0 and torch.count_nonzero(a.up.bias) == 0
    assert torch.count_nonzero(a.down.bias) == 0
    assert isinstance(a.scale, torch.nn.Parameter) and a.scale.item() == pytest.approx(0.1)
    assert torch.count_nonzero(a(torch.randn(2, 5, 32))) == 0
    fixed = UniAdapter(32, 8)
    assert "scale" not in dict(fixed.named_parameters())


def test_adapter_forward_formula():
    torch.manual_seed(1)
    a = UniAdapter(16, 4, scale=0.5)
    torch.nn.init.normal_(a.up.weight)
    x = torch.randn(3, 7, 16)
    ref = 0.5 * (torch.relu(torch.nn.functional.layer_norm(x, (16,)) @ a.down.weight.T) @ a.up.weight.T)
    torch.testing.assert_close(a(x), ref)


def test_adding_twice_is_refused_and_blocks_are_adapted():
    vit = create_vit("test_vit")
    add_uniadapters(vit, 4)
    assert all(isinstance(b, AdaptedBlock) for b in vit.blocks)
    with pytest.raises(ValueError, match="already"):
        add_uniadapters(vit, 4)


def test_lora_layer_matches_formula_and_shares_weights():
    torch.manual_seed(0)
    lin = torch.nn.Linear(10, 6)
    lora = LoRALinear.from_linear(lin, rank=2, alpha=4)
    assert lora.weight is lin.weight
    torch.nn.init.normal_(lora.lora_b)
    x = torch.randn(4, 10)
    ref = lin(x) + 2.0 * (x @ lora.lora_a.T @ lora.lora_b.T)
    torch.testing.assert_close(lora(x), ref)


def test_trainable_state_dict_is_small():
    vit = create_vit("vit_small_patch16_224")
    configure_tuning(vit, "adapter", rank=64)
    sd = trainable_state_dict(vit)
    assert len(sd) == 12 * 6
    assert sum(v.numel() for v in sd.values()) == count_parameters(vit).trainable
