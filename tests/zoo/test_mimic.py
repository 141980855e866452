"""MimicNorm against METHODS.md section 2: structure, init, selection, the optimizer hook."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo import reference
from zoo.models import BasicBlock, Bottleneck
from zoo.norms.mimic import init_mimic, is_weight_mean_conv
from zoo.weights import read_metadata


def _blocks(model):
    return [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]


@pytest.mark.parametrize("name", ["resnet20_mimic", "resnet50_mimic", "cifar_resnet18_mimic",
                                  "vgg11_mimic", "cifar_vgg16_mimic"])
def test_the_logits_bn_is_the_only_norm(name):
    model = zoo.create_model(name, num_classes=12)
    norms = [m for m in model.modules()
             if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))]
    assert norms == [model.logits_norm]
    bn = model.logits_norm
    assert isinstance(bn, nn.BatchNorm1d) and bn.num_features == 12 and not bn.affine
    assert (bn.momentum, bn.eps, bn.track_running_stats) == (0.1, 1e-5, True)
    # Every conv has a bias but the CIFAR bottlenecks' shortcut convs (next test).
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name, num_shortcuts, shortcut_bias", [
    ("cifar_resnet50_mimic", 4, False), ("cifar_resnet18_mimic", 3, True),
    ("resnet50_mimic", 4, True)])
def test_shortcut_conv_biases_follow_the_authors_blocks(name, num_shortcuts, shortcut_bias):
    """The authors' CIFAR bottleneck builds its projection shortcut with bias=False; their CIFAR
    basic block and the ImageNet blocks keep it. Every other conv has a bias."""
    params = dict(zoo.create_model(name).named_parameters())
    shortcuts = [k for k in params if ".downsample.0.weight" in k]
    assert len(shortcuts) == num_shortcuts
    assert all((k.replace("weight", "bias") in params) == shortcut_bias for k in shortcuts)
    other_convs = [k[:-len(".weight")] for k, p in params.items()
                   if k.endswith(".weight") and p.dim() == 4 and k not in shortcuts]
    assert other_convs and all(f"{c}.bias" in params for c in other_convs)


@pytest.mark.parametrize("name, power, shortcut", [
    ("resnet20_mimic", 2, None), ("cifar_resnet18_mimic", 2, None),
    ("resnet18_mimic", 2, 1.2), ("resnet50_mimic", 3, 1.2)])
def test_residual_and_shortcut_scales_start_at_the_papers_values(name, power, shortcut):
    blocks = _blocks(zoo.create_model(name))
    assert [b.residual_scale.item() for b in blocks] == pytest.approx(
        [reference.residual_scale_init(k, power) for k in range(1, len(blocks) + 1)])
    assert all(b.residual_scale.requires_grad for b in blocks)
    scaled = [b.shortcut_scale.item() for b in blocks if b.shortcut_scale is not None]
    projections = [b for b in blocks if isinstance(b.downsample, nn.Sequential)]
    assert scaled == pytest.approx([] if shortcut is None else [shortcut] * len(projections))


def test_a_block_computes_relu_of_scaled_branch_plus_shortcut():
    model = zoo.create_model("resnet18_mimic")
    block = model.layer2[0]
    with torch.no_grad():
        block.residual_scale.fill_(0.7)
        block.shortcut_scale.fill_(1.3)
    x = torch.randn(2, 64, 16, 16)
    branch = block.conv2(F.relu(block.conv1(x)))
    expected = reference.mimic_residual(branch, block.downsample[0](x), 0.7, 1.3)
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("name, unselected", [
    ("resnet20_mimic", ["conv1"]), ("cifar_vgg11_mimic", ["features.0"]),
    ("resnet50_mimic", []), ("vgg11_mimic", [])])
def test_convs_are_selected_by_the_papers_rule(name, unselected):
    model = zoo.create_model(name)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert sorted(n for n, m in convs.items() if not is_weight_mean_conv(m)) == unselected
    for n, m in convs.items():
        means = m.weight.mean(dim=(1, 2, 3)).abs()
        if is_weight_mean_conv(m):
            assert means.max() <= 1e-6, n
        else:
            assert means.max() > 1e-6, n


def test_depthwise_and_tiny_convs_are_skipped():
    net = nn.Sequential(nn.Conv2d(3, 32, 3), nn.Conv2d(32, 32, 3, groups=32), nn.Conv2d(32, 8, 1),
                        nn.Conv2d(6, 8, 3))  # fan-ins 27, 9, 32, 54
    init_mimic(net, "resnet", "cifar")
    assert [is_weight_mean_conv(m) for m in net] == [False, False, False, True]
    net = nn.Sequential(nn.Conv2d(3, 32, 3), nn.Conv2d(32, 32, 3, groups=32), nn.Conv2d(32, 8, 1))
    init_mimic(net, "resnet", "imagenet")
    assert [is_weight_mean_conv(m) for m in net] == [True, False, True]


@pytest.mark.parametrize("name, conv, expected_var", [
    ("resnet20_mimic", "layer3.1.conv1", 2 / (64 * 9)),
    ("cifar_vgg16_mimic", "features.10", 2.8 / (128 * 9)),
    ("vgg11_mimic", "features.8", 2.8 / (9 * 256)),  # 256 -> 256 channels
])
def test_init_follows_the_paper(name, conv, expected_var):
    model = zoo.create_model(name)
    weight = dict(model.named_modules())[conv].weight
    assert weight.var().item() == pytest.approx(expected_var, rel=0.05)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            assert m.weight.var().item() == pytest.approx(2 / m.in_features, rel=0.1)
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            assert not m.bias.any()


def _train_steps(model, optimizer, steps, data_root):
    from zoo.data import load_cifar
    data = load_cifar(data_root / "cifar10", "test")
    x, y = data.images[:16].float() / 255, data.labels[:16]
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def _max_filter_mean(model):
    return max(m.weight.mean(dim=(1, 2, 3)).abs().max().item()
               for m in model.modules() if is_weight_mean_conv(m))


def test_weight_mean_holds_after_every_step_and_skips_frozen_convs(data_root):
    torch.manual_seed(0)
    model = zoo.create_model("resnet20_mimic")
    frozen = model.layer1[0].conv1
    with torch.no_grad():
        frozen.weight.add_(0.5)  # off-centre, and frozen: the hook must leave it alone
    frozen.weight.requires_grad_(False)
    before = frozen.weight.clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1,
                                momentum=0.9, weight_decay=5e-4)
    handle = zoo.attach_weight_mean(model, optimizer)
    frozen_mark = frozen.zoo_weight_mean
    frozen.zoo_weight_mean = False  # measure only the trained filters below
    _train_steps(model, optimizer, 3, data_root)
    assert _max_filter_mean(model) <= 1e-6
    assert torch.equal(frozen.weight, before)
    frozen.zoo_weight_mean = frozen_mark

    handle.remove()  # without the hook, steps move the filter means away from zero
    frozen.zoo_weight_mean = False
    _train_steps(model, optimizer, 1, data_root)
    assert _max_filter_mean(model) > 1e-6


def test_loading_a_checkpoint_never_reprojects():
    source = zoo.create_model("resnet20_mimic")
    with torch.no_grad():
        source.layer2[0].conv1.weight.add_(0.25)
    target = zoo.create_model("resnet20_mimic")
    target.load_state_dict(source.state_dict())
    assert torch.equal(target.layer2[0].conv1.weight, source.layer2[0].conv1.weight)


def test_attach_needs_a_mimic_model_and_zero_init_needs_a_gain():
    model = zoo.create_model("resnet20_bn")
    with pytest.raises(ValueError, match="norm='mimic'"):
        zoo.attach_weight_mean(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="zero_init_residual needs a norm with a learnable gain"):
        zoo.create_model("resnet20_mimic", zero_init_residual=True)


def _logits_before_bn(model, x):
    features = model.layer3(model.layer2(model.layer1(model.relu(model.conv1(x)))))
    return model.fc(torch.flatten(model.avgpool(features), 1))


def test_logits_are_batch_normalized_in_training_and_use_running_stats_in_eval():
    model = zoo.create_model("resnet20_mimic")
    bn = model.logits_norm
    x = torch.randn(32, 3, 32, 32)
    out = model(x)
    with torch.no_grad():
        raw = _logits_before_bn(model, x)
    expected = reference.logits_batch_norm(raw, eps=bn.eps)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    model.eval()
    with torch.no_grad():
        expected = reference.logits_batch_norm(_logits_before_bn(model, x[:1]), bn.running_mean,
                                               bn.running_var, training=False, eps=bn.eps)
        torch.testing.assert_close(model(x[:1]), expected)
    assert math.isclose(bn.momentum, 0.1)


# logits_bn=False: the paper's "weight mean only" (Table 2), a norm_kwargs switch of mimic

WEIGHT_MEAN_ONLY = {"logits_bn": False}


def test_logits_bn_false_drops_only_the_logits_bn(tmp_path):
    model = zoo.create_model("resnet20_mimic", norm_kwargs=WEIGHT_MEAN_ONLY)
    default = zoo.create_model("resnet20_mimic")
    assert model.logits_norm is None and isinstance(default.logits_norm, nn.BatchNorm1d)
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules())
    assert model.config["norm_kwargs"] == WEIGHT_MEAN_ONLY
    assert default.config["norm_kwargs"] == {"logits_bn": True}
    # the rest is MimicNorm's: the same tensors, weight-mean convs and residual scales
    assert set(model.state_dict()) == {k for k in default.state_dict() if not k.startswith("logits_norm.")}
    assert [n for n, m in model.named_modules() if is_weight_mean_conv(m)] == \
        [n for n, m in default.named_modules() if is_weight_mean_conv(m)]
    assert model.head_names() == ["fc"]
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _logits_before_bn(model, x))  # raw logits, no norm
        model.eval()
        expected = model(x)

    path = zoo.save_checkpoint(model, tmp_path / "wm.safetensors", tag="t")
    assert read_metadata(path)["norm_kwargs"] == WEIGHT_MEAN_ONLY
    loaded = zoo.create_model("resnet20_mimic", weights=path).eval()
    assert loaded.logits_norm is None and loaded.config["norm_kwargs"] == WEIGHT_MEAN_ONLY
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    with pytest.raises(zoo.WeightsError, match="trained with norm_kwargs=.'logits_bn': False"):
        zoo.create_model("resnet20_mimic", weights=path, norm_kwargs={"logits_bn": True})
    loaded.reset_classifier(5)  # a new head stays without the logits BN
    assert loaded.logits_norm is None and loaded(x).shape == (8, 5)


def test_checkpoints_from_before_the_switch_keep_their_logits_bn():
    model = zoo.create_model("resnet20_mimic", weights="cifar10")  # norm_kwargs {} in the file
    assert isinstance(model.logits_norm, nn.BatchNorm1d) and model.config["norm_kwargs"]["logits_bn"]


@pytest.mark.parametrize("value", ["false", 0, None])
def test_logits_bn_takes_a_bool_only(value):
    with pytest.raises(ValueError, match=r"not logits_bn=.* \(its default is True\)"):
        zoo.create_model("resnet20_mimic", norm_kwargs={"logits_bn": value})
    with pytest.raises(ValueError, match="does not take 'logit_bn'; its norm_kwargs are: logits_bn"):
        zoo.create_model("resnet20_mimic", norm_kwargs={"logit_bn": False})


def test_fold_freeze_and_recalibrate_find_no_norm_in_weight_mean_only():
    model = zoo.create_model("resnet20_mimic", norm_kwargs=WEIGHT_MEAN_ONLY).eval()
    x = torch.randn(4, 3, 32, 32)
    folded, report = zoo.fold_norms(model)
    assert (report.folded, report.kept) == ([], [])
    with torch.no_grad():
        assert torch.equal(folded(x), model(x))
    assert zoo.freeze_norms(model).frozen == {}
    with pytest.raises(ValueError, match="no norm with running statistics to re-estimate"):
        zoo.recalibrate_norms(model, [x])
