import pytest
import torch
from torch import nn

import zoo
from zoo.models import BasicBlock, Bottleneck, PadShortcut, ResNet, VGG, VGG_CONFIGS
from zoo.norms import NormSpec

def _min_input(name, batch=2):
    size = zoo.get_arch(zoo.parse_model_name(name)[0]).min_input_size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("norm", ["bn", "gn", "none"])
@pytest.mark.parametrize("arch", zoo.list_archs())
def test_forward_backward_at_minimum_size(arch, norm):
    torch.manual_seed(0)
    model = zoo.create_model(arch, norm=norm, num_classes=7)
    x = _min_input(arch)
    out = model(x)
    assert out.shape == (2, 7) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    with torch.no_grad():
        single = model.eval()(x[:1])  # eval mode takes a batch of one
    assert single.shape == (1, 7) and torch.isfinite(single).all()


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_arch_norm_combination_constructs(name):
    with torch.device("meta"):
        model = zoo.create_model(name)
    arch, norm = zoo.parse_model_name(name)
    assert model.config["name"] == name
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    slot = zoo.get_norm(norm).layer(64)
    if slot is None:  # empty norm slots: no 2d norms at all, convs carry biases
        assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d))
                       for m in model.modules())
        # (shortcut convs follow NormSpec.shortcut_conv_bias: tests/zoo/test_mimic.py)
        assert all(c.bias is not None for key, c in model.named_modules()
                   if isinstance(c, nn.Conv2d) and ".downsample." not in key)
    else:  # one norm of the named kind after every conv, sized for it
        norms = [m for m in model.modules() if type(m) is type(slot)]
        assert len(norms) == len(convs)
        for n, c in zip(norms, convs):
            tensors = [*n.parameters(recurse=False), *n.buffers(recurse=False)]
            assert any(t.shape == (c.out_channels,) for t in tensors)


@pytest.mark.parametrize("name, shape", [
    ("resnet50_bn", (1, 3, 63, 64)), ("resnet50_bn", (1, 1, 224, 224)),
    ("resnet20_gn", (1, 3, 32, 31)), ("resnet20_bn", (3, 32, 32)),
    ("vgg11_none", (2, 3, 32, 32)), ("cifar_vgg11_bn", (1, 4, 32, 32)),
])
def test_bad_inputs_fail_before_the_first_conv(name, shape):
    model = zoo.create_model(name)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    calls = []
    first_conv.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(ValueError, match=r"expects images as a \(N, 3, H, W\) tensor"):
        model(torch.zeros(shape))
    assert not calls


def test_option_a_shortcut_pads_equally_on_both_sides():
    x = torch.randn(2, 16, 8, 8)
    y = PadShortcut(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


@pytest.mark.parametrize("depth, params", [(20, 269_722), (56, 853_018)])
def test_cifar_resnets_are_he_et_al_option_a(depth, params):
    model = zoo.create_model(f"resnet{depth}")
    # conv 16 + three stages of n blocks at 16/32/64 channels, parameter-free shortcuts
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not hasattr(model, "layer4") and isinstance(model.maxpool, nn.Identity)
    downs = [b.downsample for s in (model.layer1, model.layer2, model.layer3) for b in s]
    assert [type(d).__name__ for d in downs if d is not None] == ["PadShortcut"] * 2
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [(depth - 2) // 6] * 3


def test_paper_cifar_variants_have_a_3x3_stem_and_small_classifier():
    r18 = zoo.create_model("cifar_resnet18")
    assert r18.conv1.kernel_size == (3, 3) and r18.conv1.stride == (1, 1)
    assert r18.conv1.out_channels == 64 and isinstance(r18.maxpool, nn.Identity)
    vgg = zoo.create_model("cifar_vgg16", num_classes=100)
    assert [m.in_features for m in vgg.classifier if isinstance(m, nn.Linear)] == [512, 4096, 4096]
    assert vgg(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("name, last", [("resnet50_gn", "bn3"), ("resnet20_bn", "bn2"),
                                        ("cifar_resnet18_ln", "bn2")])
def test_zero_init_residual_zeroes_the_last_gain_of_each_block(name, last):
    model = zoo.create_model(name, zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert blocks
    for b in blocks:
        assert not getattr(b, last).weight.any()
        assert torch.equal(b.bn1.weight, torch.ones_like(b.bn1.weight))
    default = zoo.create_model(name)
    assert all(getattr(b, last).weight.all() for b in default.modules()
               if isinstance(b, (BasicBlock, Bottleneck)))


def test_zero_init_residual_needs_a_gain():
    with pytest.raises(ValueError, match="zero_init_residual needs a norm with a learnable gain"):
        zoo.create_model("resnet20_none", zero_init_residual=True)


def _hooked_spec(calls):
    """A norm using every structural hook, as MimicNorm will."""
    return NormSpec(
        name="hooked", title="hook test", rule="empty slot", make=lambda c: None, conv_bias=True,
        residual_scale=lambda k, expansion: 1.2 ** (expansion == 4 and 3 or 2) / k,
        shortcut_scale=lambda variant: 1.2 if variant == "imagenet" else None,
        logits_norm=lambda n: nn.BatchNorm1d(n, affine=False),
        init_model=lambda model, family, variant: calls.append((family, variant)),
    )


@pytest.mark.parametrize("block, layers, exponent, projections", [
    (BasicBlock, (2, 2, 2, 2), 2, 3), (Bottleneck, (3, 4, 6, 3), 3, 4)])
def test_structural_hooks_in_resnets(block, layers, exponent, projections):
    calls = []
    model = ResNet(block, layers, norm=_hooked_spec(calls), num_classes=10)
    blocks = [m for m in model.modules() if isinstance(m, block)]
    assert [round(b.residual_scale.item(), 6) for b in blocks] == \
        [round(1.2 ** exponent / k, 6) for k in range(1, len(blocks) + 1)]
    projected = [b for b in blocks if b.downsample is not None]
    assert len(projected) == projections
    for b in projected:
        assert b.shortcut_scale.item() == pytest.approx(1.2)
        assert len(b.downsample) == 1 and b.downsample[0].bias is not None
    assert all(b.shortcut_scale is None for b in blocks if b.downsample is None)
    assert calls == [("resnet", "imagenet")]
    assert isinstance(model.logits_norm, nn.BatchNorm1d)
    out = model(torch.randn(4, 3, 64, 64))
    assert torch.allclose(out.mean(0), torch.zeros(10), atol=1e-5)  # batch-normalized logits
    names = {n for n, _ in model.named_parameters()}
    assert "layer1.0.residual_scale" in names and "layer2.0.shortcut_scale" in names


def test_structural_hooks_in_cifar_resnets_and_vggs():
    calls = []
    resnet = ResNet(BasicBlock, (3, 3, 3), norm=_hooked_spec(calls), widths=(16, 32, 64),
                    variant="cifar", shortcut="pad")
    assert all(b.shortcut_scale is None for b in resnet.modules() if isinstance(b, BasicBlock))
    vgg = VGG(VGG_CONFIGS[11], norm=_hooked_spec(calls), variant="cifar", num_classes=10)
    assert calls == [("resnet", "cifar"), ("vgg", "cifar")]
    assert isinstance(vgg.logits_norm, nn.BatchNorm1d)
    assert vgg(torch.randn(3, 3, 32, 32)).shape == (3, 10)


def test_models_trace_with_torch_fx_and_keep_the_input_check():
    model = zoo.create_model("resnet20_gn").eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(traced(x), model(x))
    with pytest.raises(ValueError, match="expects images"):
        traced(torch.zeros(1, 3, 16, 16))
