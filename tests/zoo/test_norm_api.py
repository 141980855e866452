"""create_norm / replace_norms: the registered norms in a user's own network."""

import pytest
import torch
import torchvision
from torch import nn

import zoo


def test_create_norm_builds_the_slot_layer():
    gn = zoo.create_norm("gn", 64)
    assert isinstance(gn, nn.GroupNorm) and (gn.num_groups, gn.num_channels) == (32, 64)
    assert zoo.create_norm("gn", 16).num_groups == 8
    assert zoo.create_norm("bn", 8, eps=1e-3).eps == 1e-3
    assert isinstance(zoo.create_norm("none", 8), nn.Identity)
    with pytest.raises(ValueError, match="norm 'mimic' .* is structural"):
        zoo.create_norm("mimic", 8)
    with pytest.raises(ValueError, match="unknown norm 'gm'"):
        zoo.create_norm("gm", 8)


def test_replace_norms_in_a_torchvision_resnet():
    model = torchvision.models.resnet18(num_classes=10)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    zoo.replace_norms(model, "gn")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    gns = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(gns) == bns == 20
    assert all(m.num_groups == min(32, m.num_channels // 2) for m in gns)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_replace_norms_keeps_dtype_device_and_mode():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3), nn.GroupNorm(4, 32)).double().eval()
    zoo.replace_norms(model, "ln", eps=1e-3)
    assert isinstance(model[1], nn.GroupNorm) and model[1].num_groups == 1 and model[1].eps == 1e-3
    assert model[1].weight.dtype == torch.float64 and not model[1].training
    assert model[4].num_groups == 1 and model[4].num_channels == 32


def test_replace_norms_refuses_structural_norms_and_norm_free_models():
    with pytest.raises(ValueError, match="'mimic' .* cannot be swapped in layer by layer.*resnet50"):
        zoo.replace_norms(torchvision.models.resnet18(), "mimic")
    with pytest.raises(ValueError, match="no BatchNorm2d or GroupNorm"):
        zoo.replace_norms(nn.Sequential(nn.Conv2d(3, 8, 3)), "gn")


def test_replace_norms_keeps_a_zoo_models_config_true():
    model = zoo.replace_norms(zoo.create_model("resnet20_bn"), "gn")
    cfg = model.config
    assert (cfg["name"], cfg["norm"], cfg["replaced_norms_from"]) == ("resnet20_gn", "gn", "bn")
    assert cfg["norm_rule"] == zoo.get_norm("gn").rule


@pytest.mark.parametrize("name, training, evaluating", [
    ("resnet20_bn", True, True), ("resnet20_gn", False, False), ("resnet20_ilm", False, False),
    ("resnet20_l1bn", True, True), ("resnet20_linfbn", True, True),
    ("resnet20_topkbn", False, True), ("resnet20_bwn", True, True)])
def test_memory_format_preference_for_training_and_for_eval(name, training, evaluating):
    """Eval mode turns the top-k layers into BatchNorm's affine kernel: channels_last then
    suits them as it suits BN (the L1 and L-infinity BN fused kernels suit it in training
    too); GroupNorm-style kernels stay contiguous either way."""
    with torch.device("meta"):
        model = zoo.create_model(name)
    assert zoo.prefers_channels_last(model) is training
    assert zoo.prefers_channels_last(model, training=False) is evaluating
    assert zoo.prefers_channels_last(torch.nn.Conv2d(3, 3, 1), training=False) is True
