"""The compiled training kernels (``fused=True``, zoo.fuse_norms): the same formulas as the
eager layers, checked against the naive float64 formulas of zoo.reference, within the bf16
error bound of test_low_precision, and eager where torch.compile fails."""

import copy
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

import zoo
import zoo.norms.common as common
import zoo.norms.norm_matters as norm_matters
from test_ilm import make_input, make_layer, naive_ilm
from test_low_precision import _errors, _perturbed
from test_norm_matters import LAYERS, _input, _layer
from zoo import reference
from zoo.norms.common import fused_kernel

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def compiles():
    """Fresh torch.compile caches (torch stops compiling a function after 8 shapes) and a
    check that the test's layers really ran compiled: returns a function giving how many
    graphs were compiled since."""
    torch.compiler.reset()
    counters.clear()
    assert common._fused_failure is None
    yield lambda: counters["stats"]["unique_graphs"]


def _fused(layer):
    layer.fused = True
    return layer


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (16, 2, 3, 3)])
@pytest.mark.parametrize("name", ["l1", "linf", "top10"])
def test_scaled_bn_matches_naive_in_float64(name, shape, channels_last, compiles):
    layer = _fused(_layer(name, shape[1], torch.float64))
    eager = copy.deepcopy(layer)
    eager.fused = False
    x = _input(shape, torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    grad = _input(shape, torch.float64, seed=2)
    out = layer(x)
    out.backward(grad)
    # forward and backward; top-k compiles its forward's statistics and selection only
    assert compiles() == (1 if name == "top10" else 2)

    x_ref = x.detach().clone().requires_grad_()
    params = {k: p.detach().clone().requires_grad_() for k, p in layer.named_parameters()}
    expected = reference.scaled_batch_norm(x_ref, params["weight"], params["bias"], LAYERS[name][1])
    expected.backward(grad)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    for got, want in zip([x.grad, layer.weight.grad, layer.bias.grad],
                         [x_ref.grad, params["weight"].grad, params["bias"].grad]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    eager(x.detach())  # running statistics: the same update as the eager layer's
    torch.testing.assert_close(layer.running_mean, eager.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.running_scale, eager.running_scale, rtol=1e-12, atol=1e-12)
    layer.eval()  # eval mode stays the per-channel affine of the running statistics
    torch.testing.assert_close(layer(x.detach()), eager.eval()(x.detach()), rtol=0, atol=0)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_linf_ties_pick_the_eager_kernels_entry(channels_last, compiles):
    # Small integers: many entries share the largest |x - mu|. The eager kernel's gradient
    # goes to the first in (h, w, sample) order; the compiled one must pick the same.
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (6, 4, 3, 5), generator=gen).double()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    layer = _fused(_layer("linf", 4, torch.float64))
    eager = copy.deepcopy(layer)
    eager.fused = False
    grads = []
    for each in (layer, eager):
        x_each = x.clone().requires_grad_()
        each(x_each).backward(grad)
        grads.append(x_each.grad)
    assert compiles() == 2
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-12)


# Each case compiles its own kernels. The last is the hard one: 4 groups of 24 channels against
# key groups of 16 (neither nests: fine groups of 8), and an embedding of 3 (6 key groups / 2).
@pytest.mark.parametrize("channels, base, kwargs", [
    (16, "gn", {}), (32, "in", {}), (64, "ln", {}), (96, "gn", {"max_groups": 4, "reduction": 2})])
def test_ilm_matches_naive_in_float64(channels, base, kwargs, compiles):
    layer = _fused(make_layer(channels, base, **kwargs))
    x = make_input((3, channels, 3, 5)).requires_grad_()
    upstream = torch.randn(x.shape, dtype=x.dtype)
    names, params = zip(*layer.named_parameters())
    out = layer(x)
    grads = torch.autograd.grad((out * upstream).sum(), [x, *params])
    assert compiles() == 2
    torch.testing.assert_close(out, naive_ilm(layer, x), rtol=0, atol=1e-10)
    expected = torch.autograd.grad((naive_ilm(layer, x) * upstream).sum(), [x, *params])
    for name, got, want in zip(("x",) + names, grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=name)
    # no input gradient wanted: the parameters' gradients alone
    grads = torch.autograd.grad((layer(x.detach()) * upstream).sum(), params)
    for name, got, want in zip(names, grads, expected[1:]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("name, base", [("ilm", "gn"), ("l1bn", "bn"), ("linfbn", "bn"),
                                        ("topkbn", "bn")])
def test_bf16_error_within_twice_the_baselines(name, base, channels_last, compiles):
    shape = (16, 32, 8, 8)
    gen = torch.Generator().manual_seed(1)
    offset = torch.randn(1, shape[1], 1, 1, generator=gen) * 2
    x = (torch.randn(shape, generator=gen) * 1.5 + offset).bfloat16()
    grad = torch.randn(shape, generator=gen).bfloat16()
    ours = _errors(_fused(_perturbed(zoo.create_norm(name, shape[1]))), x, grad, channels_last)
    assert compiles() >= 2  # the float64 reference compiles too
    theirs = _errors(_perturbed(zoo.create_norm(base, shape[1])), x, grad, channels_last)
    for what, e_ours, e_base in zip(("output", "input gradient"), ours, theirs):
        assert 0 < e_ours <= 2 * e_base, f"{name} {what}: error {e_ours:.2e} vs {base} {e_base:.2e}"


def test_compile_failure_warns_once_and_layers_stay_eager(monkeypatch, compiles):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nsecond line")

    monkeypatch.setattr(torch, "compile", no_compiler)
    monkeypatch.setattr(common, "_fused_failure", None)
    kernel = fused_kernel(lambda t: t + 1)
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(RuntimeError: no C\+\+ "
                                             r"compiler found\).*eager kernels"):
        assert kernel(torch.ones(2)) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        assert kernel(torch.ones(2)) is None
        x = _input((4, 3, 5, 6)).requires_grad_()
        layer = _fused(_layer("l1", 3))
        eager = copy.deepcopy(layer)
        eager.fused = False
        out = layer(x)
        torch.testing.assert_close(out, eager(x), rtol=0, atol=0)
        ilm = _fused(make_layer(16, dtype=torch.float32))
        ilm(make_input((2, 16, 3, 3), torch.float32).requires_grad_()).sum().backward()
    assert compiles() == 0


@pytest.mark.parametrize("cause", ["compile failure", "no entry matches"])
def test_linf_backward_after_a_compiled_forward_falls_back_to_eager(cause, monkeypatch, compiles):
    # The compiled forward keeps no entry indices; an eager backward finds them again.
    layer = _fused(_layer("linf", 3, torch.float64))
    eager = copy.deepcopy(layer)
    eager.fused = False
    x = _input((4, 3, 5, 6), torch.float64).requires_grad_()
    grad = _input((4, 3, 5, 6), torch.float64, seed=2)
    if cause == "no entry matches":  # a top the backward's |x - mu| never equals
        forward = norm_matters._linf_forward_fused

        def forward_with_a_wrong_top(*args):
            y, mean, scale, top = forward(*args)
            return y, mean, scale, top * 1.5

        monkeypatch.setattr(norm_matters, "_linf_forward_fused", forward_with_a_wrong_top)
    out = layer(x)
    if cause == "compile failure":
        monkeypatch.setattr(common, "_fused_failure", "RuntimeError: gone")
    (got,) = torch.autograd.grad(out, x, grad)
    (want,) = torch.autograd.grad(eager(x), x, grad)
    assert compiles() == (1 if cause == "compile failure" else 2)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_fuse_norms_sets_the_layers_that_have_kernels():
    assert zoo.fuse_norms(zoo.create_model("resnet20_ilm")) == 19
    model = zoo.create_model("resnet20_l1bn")
    assert zoo.fuse_norms(model) == 19
    assert all(m.fused for m in model.modules() if isinstance(m, zoo.norms.L1BatchNorm2d))
    assert "fused=True" in repr(model.layer1[0].bn1)
    assert zoo.fuse_norms(model, enabled=False) == 19
    assert not any(m.fused for m in model.modules() if hasattr(m, "fused"))
    assert zoo.fuse_norms(zoo.create_model("resnet20_linfbn")) == 19
    assert zoo.fuse_norms(zoo.create_model("resnet20_topkbn")) == 19  # k = 10: statistics, selection
    assert zoo.fuse_norms(zoo.create_model("resnet20_bn")) == 0
