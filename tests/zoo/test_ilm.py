"""ILM-Norm against an independent, naive reading of its formula (zoo.reference, METHODS.md 1)."""

import copy

import pytest
import torch
from torch.func import functional_call

from zoo import reference
from zoo.norms.ilm import ILMNorm

PARAM_NAMES = {"encoder.weight", "gain_decoder.weight", "shift_decoder.weight",
               "weight_bias", "bias_bias"}


# Tiny tensors: a second thread only adds synchronisation, which a busy machine makes slow
# (gradcheck runs the layer hundreds of times).
pytestmark = pytest.mark.usefixtures("single_thread")


def naive_ilm(layer: ILMNorm, x: torch.Tensor) -> torch.Tensor:
    """The reference formula (zoo.reference.ilm_norm) with the layer's parameters and settings."""
    return reference.ilm_norm(x, layer.encoder.weight, layer.gain_decoder.weight,
                              layer.shift_decoder.weight, layer.weight_bias, layer.bias_bias,
                              num_groups=layer.num_groups, key_group_size=layer.key_group_size,
                              eps=layer.eps)


def make_layer(channels, base="gn", dtype=torch.float64, seed=0, **kwargs):
    """A layer with perturbed parameters, so that every path carries a real gradient."""
    torch.manual_seed(seed)
    layer = ILMNorm(channels, base, **kwargs).to(dtype)
    with torch.no_grad():
        for param in layer.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    return layer


def make_input(shape, dtype=torch.float64, seed=1):
    """Channels with their own offsets and scales, as after a conv."""
    gen = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    offset = torch.randn(1, c, 1, 1, generator=gen, dtype=dtype) * 2
    scale = torch.rand(1, c, 1, 1, generator=gen, dtype=dtype) * 2 + 0.5
    return torch.randn(shape, generator=gen, dtype=dtype) * scale + offset


# (channels, base, extra kwargs): key groups and norm groups nest both ways, plus a layout where
# neither divides the other (96 channels in 4 groups of 24, key groups of 16: fine groups of 8).
LAYOUTS = [
    *[(c, base, {}) for base in ("gn", "in", "ln") for c in (16, 32, 64, 128, 512, 1024)],
    (96, "gn", {"max_groups": 4}),
    (48, "gn", {"key_group_size": 8, "reduction": 2}),
]
# Odd sizes included; IN on 1x1 (one value per group) is an error, tested below.
CASES = [(layout, spatial) for layout in LAYOUTS for spatial in [(1, 1), (3, 5), (7, 7)]
         if not (layout[1] == "in" and spatial == (1, 1))]


def layout_id(layout):
    channels, base, kwargs = layout
    return f"{base}{channels}" + "".join(f"-{k}{v}" for k, v in kwargs.items())


@pytest.mark.parametrize("layout, spatial", CASES,
                         ids=[f"{layout_id(l)}-{s[0]}x{s[1]}" for l, s in CASES])
def test_forward_matches_naive(layout, spatial):
    channels, base, kwargs = layout
    layer = make_layer(channels, base, **kwargs)
    x = make_input((3, channels, *spatial))
    torch.testing.assert_close(layer(x), naive_ilm(layer, x), rtol=0, atol=1e-10)
    # float32: within 1e-5 of the exact result for the same float32 values, or at worst twice
    # as far as the naive formula run in float32 (tiny groups with a small variance are
    # ill-conditioned: rounding alone moves x_hat).
    x = x.float()
    out = layer.float()(x)
    naive_out = naive_ilm(layer, x)
    exact = naive_ilm(layer.double(), x.double())
    assert out.dtype == torch.float32
    error = (out.double() - exact).abs().max().item()
    naive_error = (naive_out.double() - exact).abs().max().item()
    assert error <= max(1e-5, 2 * naive_error), (error, naive_error)


@pytest.mark.parametrize("layout", LAYOUTS, ids=layout_id)
def test_gradients_match_naive(layout):
    channels, base, kwargs = layout
    layer = make_layer(channels, base, **kwargs)
    x = make_input((3, channels, 3, 5)).requires_grad_()
    upstream = torch.randn(x.shape, dtype=x.dtype)
    names, params = zip(*layer.named_parameters())
    inputs = [x, *params]
    grads = torch.autograd.grad((layer(x) * upstream).sum(), inputs)
    expected = torch.autograd.grad((naive_ilm(layer, x) * upstream).sum(), inputs)
    for name, got, want in zip(("x",) + names, grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("channels, base, kwargs, shape", [
    (32, "gn", {}, (2, 32, 3, 2)),           # norm groups of 2 inside key groups of 16
    (32, "ln", {}, (2, 32, 2, 2)),           # key groups inside one norm group
    (16, "in", {}, (2, 16, 2, 3)),
    (96, "gn", {"max_groups": 4}, (2, 96, 1, 2)),  # neither nests
    (32, "gn", {}, (1, 32, 1, 1)),           # batch 1, 1x1 map: groups of 2 values
])
def test_gradcheck(channels, base, kwargs, shape):
    layer = make_layer(channels, base, **kwargs)
    x = make_input(shape).requires_grad_()
    names = [name for name, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def run(x, *params):
        return functional_call(layer, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params))


def test_gradient_without_input_grad_and_in_no_grad():
    layer = make_layer(64)
    x = make_input((2, 64, 4, 4))
    layer(x).sum().backward()  # x needs no gradient: parameters still get theirs
    assert all(p.grad is not None and p.grad.isfinite().all() for p in layer.parameters())
    with torch.no_grad():
        torch.testing.assert_close(layer(x), naive_ilm(layer, x))


def test_train_and_eval_agree_and_batch_of_one():
    layer = make_layer(64, dtype=torch.float32)
    x = make_input((4, 64, 5, 5), dtype=torch.float32)
    train_out = layer.train()(x)
    eval_out = layer.eval()(x)
    assert torch.equal(train_out, eval_out)
    for mode in (layer.train, layer.eval):
        mode()
        single = layer(x[:1])
        torch.testing.assert_close(single, train_out[:1])  # per-sample: batch-independent


def test_empty_batch():
    layer = make_layer(32)
    x = torch.zeros(0, 32, 4, 4, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert all(p.grad.eq(0).all() for p in layer.parameters())


def test_channels_last_input():
    layer = make_layer(32)
    x = make_input((2, 32, 4, 3))
    torch.testing.assert_close(layer(x.to(memory_format=torch.channels_last)), layer(x))


def test_constant_input_is_finite():
    layer = make_layer(32)
    x = torch.zeros(2, 32, 3, 3, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, naive_ilm(layer, x))
    y.sum().backward()
    assert x.grad.isfinite().all()


def test_large_mean_stays_accurate_in_float32():
    """|mean| >> std: no catastrophic cancellation.

    The float32 mean itself is off by ~ulp(1e4) = 1e-3, so x_hat errs by ~1e-3 / std; a
    variance taken as E[x^2] - E[x]^2 would be off by ~ulp(1e8) = 8, i.e. completely.
    """
    layer = make_layer(64, dtype=torch.float32)
    x = make_input((2, 64, 6, 6), dtype=torch.float32) + 1e4
    got = layer(x).double()
    want = naive_ilm(layer.double(), x.double())
    torch.testing.assert_close(got, want, rtol=0, atol=2e-2)


def test_bf16_autocast():
    layer = make_layer(64, dtype=torch.float32)
    x = make_input((2, 64, 6, 6), dtype=torch.float32)
    reference = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        out_bf16 = layer(x.bfloat16())
    assert out.dtype == torch.float32  # statistics and output in the input's precision
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    assert out_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(out_bf16.float(), reference, rtol=0.05, atol=0.1)


def test_backward_inside_autocast_stays_in_float32():
    layer = make_layer(32, dtype=torch.float32)
    x = make_input((2, 32, 4, 4), dtype=torch.float32).requires_grad_()
    upstream = torch.randn(x.shape)
    inputs = [x, *layer.parameters()]
    expected = torch.autograd.grad((layer(x) * upstream).sum(), inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grads = torch.autograd.grad((layer(x) * upstream).sum(), inputs)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_bf16_model_and_large_bf16_input():
    layer = make_layer(64, dtype=torch.float32).to(torch.bfloat16)
    x = (1e4 + 100 * torch.randn(2, 64, 5, 5)).bfloat16().requires_grad_()
    out = layer(x)
    assert out.dtype == torch.bfloat16 and out.isfinite().all()
    want = naive_ilm(copy.deepcopy(layer).double(), x.detach().double())
    torch.testing.assert_close(out.double(), want, rtol=0.02, atol=0.05)
    layer(x).float().square().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and x.grad.isfinite().all()
    for param in layer.parameters():
        assert param.grad.dtype == torch.bfloat16 and param.grad.isfinite().all()


@pytest.mark.parametrize("kwargs, words", [
    ({"num_channels": 24}, ["24", "multiple of key_group_size=16"]),
    ({"num_channels": 32, "base": "xx"}, ["'xx'", "'gn'"]),
    ({"num_channels": 80}, ["80", "groups"]),  # min(32, 80 // 2) = 32 does not divide 80
    ({"num_channels": 32, "eps": 0.0}, ["eps"]),
])
def test_construction_errors(kwargs, words):
    with pytest.raises(ValueError) as info:
        ILMNorm(**kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("layer, shape, words", [
    (ILMNorm(16, "in"), (2, 16, 1, 1), ["1 value", "unbiased"]),
    (ILMNorm(32, min_group_channels=1), (2, 32, 1, 1), ["1 value", "unbiased"]),
    (ILMNorm(16), (2, 16, 4), ["(N, 16, H, W)"]),
    (ILMNorm(16), (2, 32, 4, 4), ["(N, 16, H, W)"]),
], ids=["in-1x1", "gn-1-channel-groups-1x1", "3d-input", "wrong-channels"])
def test_bad_inputs_raise(layer, shape, words):
    with pytest.raises(ValueError) as info:
        layer(torch.randn(shape))
    for word in words:
        assert word in str(info.value)


def test_state_dict_holds_the_encoder_once():
    state = ILMNorm(64).state_dict()
    assert set(state) == PARAM_NAMES
    storages = {tensor.untyped_storage().data_ptr() for tensor in state.values()}
    assert len(storages) == len(state)
    assert state["weight_bias"].eq(1).all() and state["bias_bias"].eq(0).all()


@pytest.mark.parametrize("channels, reduction, embed_dim", [
    (128, 16, 2),    # Gk = 8 < 16: 2
    (256, 16, 1),    # Gk = 16 >= 16: 16 // 16
    (512, 16, 2),
    (1024, 16, 4),
    (64, 4, 1),      # Gk = 4 >= 4
    (48, 4, 2),      # Gk = 3 < 4
])
def test_embedding_size_rule(channels, reduction, embed_dim):
    layer = ILMNorm(channels, reduction=reduction)
    key_groups = channels // 16
    assert layer.encoder.weight.shape == (embed_dim, key_groups)
    assert layer.gain_decoder.weight.shape == (key_groups, embed_dim)
    assert layer.shift_decoder.weight.shape == (key_groups, embed_dim)


@pytest.mark.parametrize("base, channels, groups", [
    ("gn", 16, 8), ("gn", 64, 32), ("gn", 1024, 32), ("in", 64, 64), ("ln", 64, 1),
])
def test_group_rule(base, channels, groups):
    assert ILMNorm(channels, base).num_groups == groups
