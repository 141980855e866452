"""Norm Matters layers against naive implementations of their formulas (zoo.reference)."""

from functools import partial

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrize

from zoo import reference
from zoo.norms.norm_matters import (
    BoundedWeightNorm,
    L1BatchNorm2d,
    LpBatchNorm2d,
    MeanBatchNorm2d,
    TopKBatchNorm2d,
    _top_k_per_row,
    apply_bounded_weight_norm,
)

# name -> (layer factory for C channels, its scale in zoo.reference; None for mean-only)
LAYERS = {
    "l1": (lambda c: L1BatchNorm2d(c), reference.l1_scale),
    "linf": (lambda c: TopKBatchNorm2d(c, k=1), partial(reference.top_k_scale, k=1)),
    "top10": (lambda c: TopKBatchNorm2d(c, k=10), partial(reference.top_k_scale, k=10)),
    "lp2": (lambda c: LpBatchNorm2d(c, p=2), partial(reference.lp_scale, p=2)),
    "lp3": (lambda c: LpBatchNorm2d(c, p=3), partial(reference.lp_scale, p=3)),
    "lp1.5": (lambda c: LpBatchNorm2d(c, p=1.5), partial(reference.lp_scale, p=1.5)),
    "mean": (lambda c: MeanBatchNorm2d(c), None),
}
SHAPES = [(4, 3, 5, 6), (16, 2, 3, 3), (7, 2, 1, 1), (1, 3, 2, 2)]  # last: n = 4 < k = 10


def _layer(name, c, dtype=torch.float32, seed=0):
    """The layer with random (non-default) weight and bias."""
    layer = LAYERS[name][0](c).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=dtype))
    return layer


def _weight(layer):
    return getattr(layer, "weight", None)


def _input(shape, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5).to(dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_training_forward_matches_naive(name, shape, dtype, tol):
    layer = _layer(name, shape[1], dtype)
    x = _input(shape, dtype)
    expected = reference.scaled_batch_norm(x.double(), _weight(layer), layer.bias, LAYERS[name][1])
    out = layer(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", SHAPES[:3])
@pytest.mark.parametrize("name", LAYERS)
def test_gradients_match_naive_autograd(name, shape):
    layer = _layer(name, shape[1], torch.float64)
    x = _input(shape, torch.float64).requires_grad_()
    grad = _input(shape, torch.float64, seed=2)
    params = dict(layer.named_parameters())
    layer(x).backward(grad)
    got = [x.grad] + [p.grad for p in params.values()]

    x_ref = x.detach().clone().requires_grad_()
    params_ref = {k: p.detach().clone().requires_grad_() for k, p in params.items()}
    reference.scaled_batch_norm(x_ref, params_ref.get("weight"), params_ref["bias"],
                                LAYERS[name][1]).backward(grad)
    expected = [x_ref.grad] + [p.grad for p in params_ref.values()]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", LAYERS)
def test_gradcheck(name):
    layer = _layer(name, 3, torch.float64)
    x = _input((3, 3, 2, 4), torch.float64).requires_grad_()  # randn: no ties among |x - mu|
    names = [k for k, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def call(x, *params):
        return functional_call(layer, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(call, (x, *params))


@pytest.mark.parametrize("name", ["l1", "top10"])
def test_gradients_for_channels_last_input_and_expanded_grad(name):
    layer = _layer(name, 3, torch.float64)
    x = _input((4, 3, 5, 6), torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    layer(x).sum().backward()  # the incoming gradient is an expanded (stride-0) tensor
    x_ref = x.detach().contiguous().requires_grad_()
    reference.scaled_batch_norm(x_ref, layer.weight.detach(), layer.bias.detach(),
                                LAYERS[name][1]).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("k", [1, 10])
def test_topk_finds_entries_crowded_into_one_position(k):
    # All N samples of one spatial position carry the largest deviations: the top-k all sit
    # in one block of the layer's block-wise search.
    x = _input((12, 2, 4, 4), torch.float64)
    x[:, :, 1, 2] += 20 + torch.arange(12, dtype=torch.float64)[:, None]
    layer = _layer("linf" if k == 1 else "top10", 2, torch.float64)
    expected = reference.scaled_batch_norm(x, layer.weight, layer.bias,
                                           partial(reference.top_k_scale, k=k))
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.usefixtures("single_thread")  # the max rounds run on one thread only
@pytest.mark.parametrize("name", ["linf", "top10"])
def test_topk_with_many_channels_in_float32(name):
    # 512 channels on one thread take the vectorised max-rounds selection, not torch.topk.
    layer = _layer(name, 512)
    x = _input((4, 512, 3, 3)).requires_grad_()
    grad = _input((4, 512, 3, 3), seed=2)
    out = layer(x)
    out.backward(grad)
    x_ref = x.detach().double().requires_grad_()
    weight, bias = (p.detach().double().requires_grad_() for p in (layer.weight, layer.bias))
    expected = reference.scaled_batch_norm(x_ref, weight, bias, LAYERS[name][1])
    expected.backward(grad.double())
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    pairs = [(x.grad, x_ref.grad), (layer.weight.grad, weight.grad), (layer.bias.grad, bias.grad)]
    for got, ref in pairs:
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)


def test_top_k_per_row_rounds_match_topk_with_ties(single_thread, monkeypatch):
    gen = torch.Generator().manual_seed(3)
    values = torch.randint(0, 20, (600, 50), generator=gen).float() / 4  # many ties, zeros
    values[0] = 0.0
    expected = values.topk(7, 1).values
    monkeypatch.setattr(torch.Tensor, "topk", lambda *args, **kwargs: pytest.fail("not rounds"))
    top, cols = _top_k_per_row(values, 7)
    torch.testing.assert_close(top, expected, rtol=0, atol=0)
    assert torch.equal(values.gather(1, cols), top)
    assert all(len(set(row.tolist())) == 7 for row in cols)  # 7 distinct entries per row


@pytest.mark.parametrize("name", LAYERS)
def test_constant_channel_stays_finite(name):
    layer = _layer(name, 2, torch.float64)
    x = torch.full((3, 2, 2, 2), 1.5, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    out.backward(_input((3, 2, 2, 2), torch.float64))
    torch.testing.assert_close(out, layer.bias.detach().view(1, -1, 1, 1).expand_as(out))
    assert all(torch.isfinite(t).all() for t in [x.grad] + [p.grad for p in layer.parameters()])


@pytest.mark.parametrize("name", LAYERS)
def test_running_statistics_follow_momentum_and_drive_eval(name):
    layer = _layer(name, 3)
    momentum = layer.momentum
    running_mean = torch.zeros(3, dtype=torch.float64)
    running_scale = torch.ones(3, dtype=torch.float64)
    scale_fn = LAYERS[name][1]
    for step in range(2):
        x = _input((5, 3, 4, 4), seed=10 + step)
        layer(x)
        reference.scaled_batch_norm(x.double(), _weight(layer), layer.bias, scale_fn,
                                    running_mean=running_mean, running_scale=running_scale,
                                    momentum=momentum)  # moves the running statistics
        torch.testing.assert_close(layer.running_mean.double(), running_mean, rtol=1e-6, atol=1e-7)
        if scale_fn is not None:
            torch.testing.assert_close(layer.running_scale.double(), running_scale,
                                       rtol=1e-6, atol=1e-7)

    layer.eval()
    x = _input((1, 3, 1, 1), seed=20)  # batch size 1, one value per channel
    expected = reference.scaled_batch_norm(
        x.double(), _weight(layer), layer.bias, scale_fn, running_mean=layer.running_mean,
        running_scale=getattr(layer, "running_scale", None), training=False)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-6, atol=1e-6)
    before = layer.running_mean.clone()
    layer(_input((4, 3, 2, 2)))
    assert torch.equal(layer.running_mean, before)  # eval mode leaves the statistics alone


@pytest.mark.parametrize("name", LAYERS)
def test_bf16_autocast_keeps_statistics_in_fp32(name):
    layer = _layer(name, 4)
    x = _input((8, 4, 5, 5))
    reference = layer(x)
    x_bf16 = x.bfloat16()  # what a conv under autocast hands the norm
    with torch.autocast("cpu", dtype=torch.bfloat16):
        same = layer(x)
        out = layer(x_bf16)
    assert same.dtype == torch.float32 and torch.equal(same, reference)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), layer(x_bf16.float()), rtol=1e-2, atol=2e-2)


@pytest.mark.parametrize("name", LAYERS)
def test_half_input_of_large_magnitude(name):
    # A sum of squares of these in fp16 would overflow (max 65504).
    layer = _layer(name, 3).half()
    x = (_input((8, 3, 6, 6)) * 1e3 + 3e4).half()
    out = layer(x)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    params = {k: p.double() for k, p in layer.named_parameters()}
    expected = reference.scaled_batch_norm(x.double(), params.get("weight"), params["bias"],
                                           LAYERS[name][1])
    torch.testing.assert_close(out.double(), expected, rtol=1e-2, atol=2e-2)


@pytest.mark.parametrize("name", LAYERS)
def test_bf16_parameters(name):
    layer = _layer(name, 3)
    x = _input((4, 3, 3, 3))
    expected = layer(x)
    out = layer.bfloat16()(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("name", LAYERS)
def test_one_value_per_channel_in_training_raises(name):
    layer = _layer(name, 3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.randn(1, 3, 1, 1))


@pytest.mark.parametrize("name", LAYERS)
def test_bad_input_shapes_raise(name):
    layer = _layer(name, 3)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        layer(torch.randn(4, 3, 5))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        layer(torch.randn(4, 2, 5, 5))


def test_defaults_reset_and_repr():
    layer = TopKBatchNorm2d(5, k=3)
    assert layer.weight.tolist() == [1.0] * 5 and layer.bias.tolist() == [0.0] * 5
    assert set(dict(layer.named_buffers())) == {"running_mean", "running_scale"}
    layer(torch.randn(4, 5, 3, 3))
    layer.reset_parameters()
    assert layer.running_mean.tolist() == [0.0] * 5 and layer.running_scale.tolist() == [1.0] * 5
    assert repr(layer) == "TopKBatchNorm2d(5, k=3, eps=1e-05, momentum=0.1)"
    assert repr(LpBatchNorm2d(2, p=3)) == "LpBatchNorm2d(2, p=3.0, eps=1e-05, momentum=0.1)"
    assert repr(MeanBatchNorm2d(2)) == "MeanBatchNorm2d(2, momentum=0.1)"
    assert set(dict(MeanBatchNorm2d(2).named_parameters())) == {"bias"}
    with pytest.raises(ValueError):
        LpBatchNorm2d(2, p=0.5)
    with pytest.raises(ValueError):
        TopKBatchNorm2d(2, k=0)


def _bwn_model(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), MeanBatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 1, bias=False), MeanBatchNorm2d(4))
    return apply_bounded_weight_norm(model)


def test_bounded_weight_norm_keeps_directions_and_fixes_norms():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3)
    weight = conv.weight.detach().clone()
    rho = reference.bwn_rho(weight)
    apply_bounded_weight_norm(conv)
    assert parametrize.is_parametrized(conv, "weight")
    effective = conv.weight.detach()
    norms = effective.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, rho.expand(6))
    # Same direction: each channel is a positive multiple of the original.
    ratio = effective / weight
    torch.testing.assert_close(ratio, ratio.flatten(1)[:, :1, None, None].expand_as(ratio))
    assert (ratio > 0).all()
    state = conv.state_dict()
    assert torch.equal(state["parametrizations.weight.0.rho"], rho)
    assert set(dict(conv.named_parameters())) == {"parametrizations.weight.original", "bias"}
    with pytest.raises(ValueError, match="already"):
        apply_bounded_weight_norm(conv)
    assert "rho=" in repr(conv.parametrizations.weight[0])
    assert torch.equal(BoundedWeightNorm(2.0)(torch.zeros(2, 3, 1, 1)), torch.zeros(2, 3, 1, 1))
    with torch.device("meta"):  # models are also built on the meta device
        meta_conv = apply_bounded_weight_norm(nn.Conv2d(3, 6, 3))
    assert meta_conv.weight.shape == (6, 3, 3, 3) and "rho=?" in repr(meta_conv)


def test_bounded_weight_norm_state_dict_round_trip():
    model = _bwn_model(seed=0)
    model.train()(torch.randn(4, 3, 6, 6))  # some running statistics
    model.eval()
    fresh = _bwn_model(seed=1)  # other initial weights, so other rho
    assert not torch.equal(fresh[0].parametrizations.weight[0].rho,
                           model[0].parametrizations.weight[0].rho)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(fresh(x), model(x))


def test_bounded_weight_norm_trains_with_the_authors_dynamics():
    """Three SGD steps against the authors' layer, from zoo.reference: renormalise v in place,
    then w = rho * v / ||v|| with autograd through the norm. Without the renormalisation
    each step is scaled by 1 / ||v||^2 (here ||v|| starts near 3), which this would catch."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.mul_(5)
    v_ref = conv.weight.detach().clone()
    bias_ref = conv.bias.detach().clone()
    rho = reference.bwn_rho(v_ref)
    apply_bounded_weight_norm(conv)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    target = torch.randn(3, 6, 5, 5, dtype=torch.float64)
    optimizer = torch.optim.SGD(conv.parameters(), lr=0.1)
    for _ in range(3):
        v_ref = (v_ref / reference.filter_norms(v_ref)).requires_grad_()
        bias_ref.requires_grad_()
        w = reference.bounded_weight(v_ref, rho)
        loss_ref = (torch.nn.functional.conv2d(x, w, bias_ref, padding=1) - target).pow(2).mean()
        grad_v, grad_bias = torch.autograd.grad(loss_ref, (v_ref, bias_ref))
        v_ref, bias_ref = (v_ref - 0.1 * grad_v).detach(), (bias_ref - 0.1 * grad_bias).detach()

        optimizer.zero_grad()
        loss = (conv(x) - target).pow(2).mean()
        torch.testing.assert_close(loss, loss_ref, rtol=1e-10, atol=1e-12)
        loss.backward()
        optimizer.step()
    v = conv.parametrizations.weight.original
    torch.testing.assert_close(v.detach(), v_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(conv.bias.detach(), bias_ref, rtol=1e-10, atol=1e-12)
    conv.eval()  # eval mode leaves v as it is and computes the same outputs
    before, out = v.detach().clone(), conv(x)
    assert torch.equal(v.detach(), before)
    w_ref = reference.bounded_weight(v_ref, rho)
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, w_ref, bias_ref, padding=1),
                               rtol=1e-10, atol=1e-12)


def test_bounded_weight_norm_on_a_float64_model_matches_its_float32_twin():
    import copy

    import zoo

    torch.manual_seed(0)
    base = zoo.create_model("resnet20_bn")
    twins = {dtype: zoo.replace_norms(copy.deepcopy(base).to(dtype), "bwn")
             for dtype in (torch.float32, torch.float64)}
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    outputs = {}
    for dtype, model in twins.items():
        rho = model.conv1.parametrizations.weight[0].rho
        assert rho.dtype == dtype and model.conv1.weight.dtype == dtype
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x.to(dtype)), y).backward()
            optimizer.step()
        outputs[dtype] = model.eval()(x.to(dtype))
    torch.testing.assert_close(outputs[torch.float32], outputs[torch.float64].float(),
                               rtol=1e-4, atol=1e-4)


def test_published_bwn_checkpoint_computes_what_it_computed(data_root):
    """resnet20_bwn.cifar10 was trained with ||v|| free. Its weights are rho * v / ||v||, which
    a plain twin (mean-only BN, unparametrised convs) takes from the file by the formula; the
    parametrised model must match it, also after a training-mode forward renormalised v."""
    import zoo
    from zoo.data import load_cifar

    weights = zoo.get_weight("resnet20_bwn.cifar10")
    assert "earlier form" in weights.meta["notes"]
    model = zoo.create_model("resnet20_bwn", weights=weights).eval()
    state = weights.get_state_dict()
    plain_state = {}
    for key, value in state.items():
        if key.endswith(".parametrizations.weight.original"):
            prefix = key[:-len(".parametrizations.weight.original")]
            rho = state[f"{prefix}.parametrizations.weight.0.rho"]
            plain_state[f"{prefix}.weight"] = reference.bounded_weight(value.double(),
                                                                       rho.double()).float()
        elif ".parametrizations." not in key:
            plain_state[key] = value
    plain = zoo.create_model("resnet20_meanbn")
    plain.load_state_dict(plain_state)
    plain.eval()

    images = load_cifar(data_root / "cifar10", "test").images[:64]
    x = weights.transforms()(images)
    with torch.no_grad():
        expected = plain(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        model.train()(x)  # renormalises every v in place; running means move
    v = model.conv1.parametrizations.weight.original
    torch.testing.assert_close(v.flatten(1).norm(dim=1), torch.ones(v.shape[0]))
    running = {k: t for k, t in state.items() if k.endswith("running_mean")}
    assert running and model.load_state_dict(running, strict=False).unexpected_keys == []
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), expected, rtol=1e-5, atol=1e-5)
