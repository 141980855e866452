"""bf16 paths of the norms: as accurate as PyTorch's own mixed-precision BatchNorm2d/GroupNorm.

Each layer reads a bf16 input as it comes (float32 statistics, bf16 output and input
gradient, no float32 copy of the activation). Its error against the same layer in float64,
on the same bf16-rounded input and upstream gradient, must stay within 2x the error of the
PyTorch baseline's own bf16 path on that input (GroupNorm for ILM, BatchNorm2d otherwise).
"""

import copy

import pytest
import torch
from torch import nn

import zoo

# name -> norm_kwargs; lpbn's default p = 2 runs BatchNorm's kernel, p = 3 its own path
NORMS = {"ilm": {}, "ilm_in": {}, "ilm_ln": {}, "l1bn": {}, "linfbn": {}, "topkbn": {},
         "lpbn": {}, "lpbn_p3": {"p": 3.0}, "meanbn": {}}


def _norm(name: str, channels: int) -> nn.Module:
    return zoo.create_norm(name.removesuffix("_p3"), channels, **NORMS[name])
SHAPES = [(16, 32, 8, 8), (4, 64, 14, 14)]


def _relative_rms(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach()
    return float((got - want).norm() / want.norm())


def _perturbed(layer: nn.Module) -> nn.Module:
    """Trained-looking parameters, so that every gradient path carries weight."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return layer


def _errors(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, channels_last: bool):
    """(output error, input-gradient error) of the bf16 path against float64, train mode."""
    reference = copy.deepcopy(layer).double()
    x64 = x.double().requires_grad_()
    want = reference(x64)
    want.backward(grad.double())

    xb = x.clone()
    if channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    xb.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(xb)
    assert got.dtype == torch.bfloat16
    got.backward(grad)
    assert xb.grad.dtype == torch.bfloat16
    return _relative_rms(got, want.detach()), _relative_rms(xb.grad, x64.grad)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", NORMS)
def test_bf16_error_within_twice_the_baselines(name, shape, channels_last):
    gen = torch.Generator().manual_seed(1)
    c = shape[1]
    offset = torch.randn(1, c, 1, 1, generator=gen) * 2  # channels with their own offsets
    x = (torch.randn(shape, generator=gen) * 1.5 + offset).bfloat16()
    grad = torch.randn(shape, generator=gen).bfloat16()
    base = "gn" if name.startswith("ilm") else "bn"
    ours = _errors(_perturbed(_norm(name, c)), x, grad, channels_last)
    theirs = _errors(_perturbed(zoo.create_norm(base, c)), x, grad, channels_last)
    for what, e_ours, e_base in zip(("output", "input gradient"), ours, theirs):
        assert e_ours <= 2 * e_base, f"{name} {what}: error {e_ours:.2e} vs {base} {e_base:.2e}"
        assert e_ours > 0  # a bf16 path really ran


@pytest.mark.parametrize("name", NORMS)
def test_bf16_input_is_not_copied_to_float32(name):
    """No full-size float32 tensor is created: the activation never leaves bf16."""
    shape = (8, 32, 16, 16)
    layer = _norm(name, shape[1])
    x = torch.randn(shape).bfloat16().requires_grad_()
    full_size_fp32 = []

    class Watch(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.numel() >= x.numel():
                    full_size_fp32.append(str(func))
            return out

    with Watch():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        out.backward(torch.ones_like(out))
    assert not full_size_fp32, f"{name} made float32 tensors of the input's size: {full_size_fp32}"


@pytest.mark.parametrize("name", ["l1bn", "linfbn", "topkbn", "lpbn_p3", "meanbn"])
def test_bf16_eval_mode_is_one_affine(name):
    """Eval mode is a per-channel affine of the running statistics, as in BatchNorm2d."""
    layer = _perturbed(_norm(name, 16))
    layer(torch.randn(8, 16, 4, 4))  # running statistics
    layer.eval()
    x = torch.randn(8, 16, 4, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
    assert got.dtype == torch.bfloat16
    want = copy.deepcopy(layer).double()(x.double())
    assert _relative_rms(got, want) < 4e-3  # one bf16 rounding
