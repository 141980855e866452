"""What the norm layers share: the group rule, the low-precision policy and the fused
per-channel kernels the layers are built from."""

from __future__ import annotations

import functools
import math
import warnings
from typing import Callable, Optional

import torch

from ..cli import first_line

__all__ = ["group_count", "fp32_statistics", "statistics_dtype", "tracing", "channel_affine",
           "channel_sums", "fused_kernel", "fused_failure", "like_format"]


def group_count(num_channels: int, max_groups: int, min_group_channels: int) -> int:
    """``min(max_groups, C // min_group_channels)`` groups; C must split evenly into them."""
    groups = min(max_groups, num_channels // min_group_channels)
    if groups < 1 or num_channels % groups:
        raise ValueError(
            f"cannot split {num_channels} channels into groups = min({max_groups}, "
            f"{num_channels} // {min_group_channels}) = {groups}: the channel count must be "
            f"a positive multiple of the group count; pass norm_kwargs with other "
            f"max_groups / min_group_channels"
        )
    return groups


def statistics_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a norm's statistics and per-channel parameters take for input ``x``:
    float32 for bf16/fp16/fp32 input, float64 for float64."""
    return torch.promote_types(x.dtype, torch.float32)


def fp32_statistics(forward):
    """Run a norm's forward with autocast off, on the input as it comes.

    Under autocast, or on a bf16/fp16 model, reductions in half precision lose accuracy or
    overflow (Norm Matters' point is stability in low precision: keep it). So every layer
    reads a low-precision input directly with kernels that accumulate in float32 (the
    mixed-type batch-norm and group-norm kernels: low-precision data, float32 statistics and
    parameters) and writes its output in the input's dtype, as BatchNorm2d and GroupNorm do.
    It never copies the activation to float32: on CPU that copy cost more than the layer.
    Autocast stays off inside, so the few small matmuls (ILM's encoder) run in float32.
    """

    @functools.wraps(forward)
    def wrapped(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.fx.Proxy):
            # FX symbolic tracing (torchvision's create_feature_extractor): the layer becomes
            # one call of the module in the graph, as torch.nn's own layers do, since its
            # shape checks and fused kernels do not trace and autocast needs a real device.
            return x.tracer.create_proxy("call_module", x.tracer.path_of_module(self), (x,), {})
        with torch.autocast(device_type=x.device.type, enabled=False):
            return forward(self, x)

    return wrapped


def tracing() -> bool:
    """Whether torch.compile or torch.export is tracing: they take no out= variants of ops
    whose arguments require grad, so layers write into a fresh tensor then."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return bool(is_compiling and is_compiling())


def channel_affine(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor,
                   shift: Optional[torch.Tensor], out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(x - mean) * scale + shift`` per channel (dim 1), in one fused pass, output in x's dtype.

    batch_norm's eval form: it takes low-precision ``x`` with float32 ``mean``/``scale``/
    ``shift`` and computes in float32 (a plain mixed-dtype ``x * scale`` is unvectorised and
    ~30x slower on CPU). ``out``: a buffer of x's shape and dtype to write into, sparing an
    allocation (on CPU, fresh pages of a large tensor cost about as much as the pass itself).
    """
    unit_var = torch.ones_like(mean)
    if out is None:
        return torch.batch_norm(x, scale, shift, mean, unit_var, False, 0.0, 0.0, False)
    unused_mean, unused_inv_std = mean.new_empty(0), mean.new_empty(0)
    torch.ops.aten.native_batch_norm.out(x, scale, shift, mean, unit_var, False, 0.0, 0.0,
                                         out=out, save_mean=unused_mean, save_invstd=unused_inv_std)
    return out


def channel_sums(grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor):
    """Per channel ``sum(grad)`` and ``sum(grad * (x - mean))`` in the statistics dtype, in one
    pass over the data that writes nothing.

    batch_norm's eval-mode backward with unit variance computes exactly these as its bias and
    weight gradients (accumulating low-precision data in float32); asking for no input
    gradient leaves just the reduction. ``channel_sums(x, x, 0)`` gives sum(x) and sum(x^2),
    several times faster than ``x.sum((0, 2, 3))`` on bf16 data.
    """
    unit_var = torch.ones_like(mean)
    _, sum_grad_dev, sum_grad = torch.ops.aten.native_batch_norm_backward(
        grad, x, None, mean, unit_var, None, None, False, 0.0, [False, True, True])
    return sum_grad, sum_grad_dev


# Why the fused kernels are off in this process (None: they are on, or not yet tried).
_fused_failure: Optional[str] = None


def fused_failure() -> Optional[str]:
    """Why the fused kernels are off in this process (their compile failed), or None."""
    return _fused_failure


def fused_kernel(math: Callable) -> Callable:
    """``math``, a layer's training-mode forward or backward in plain torch ops, compiled by
    torch.compile into a few fused loops; the compiled function returns None where it cannot
    run here, and the layer takes its eager kernels: after a failed compile, and while
    torch.compile or torch.export traces the layer itself (they trace the eager kernels).

    Eager kernels make one pass over the activation per op: an L1 batch norm reads x four
    times where BatchNorm2d reads it twice. Inductor fuses each reduction with the pointwise
    math around it and reads low-precision data straight into float32 registers, so the
    layer costs about what BatchNorm2d does. Shapes are static (one compile per shape, dtype
    and memory format, a few seconds each on CPU; past torch's recompile limit, 8, further
    shapes run eager, and torch logs it). The first call compiles; where that fails (no C++
    compiler, an old torch) one warning says so and the process stays eager, which computes
    the same formula.
    """
    compiled = None

    @functools.wraps(math)
    def run(*args):
        global _fused_failure
        nonlocal compiled
        if _fused_failure is not None or tracing():
            return None
        try:
            if compiled is None:
                compiled = torch.compile(math, dynamic=False)
            return compiled(*args)
        except Exception as e:  # any compile failure: the eager kernels compute the same
            _fused_failure = f"{type(e).__name__}: {first_line(e)}"
            warnings.warn(f"NormZoo's fused norm kernels are off in this process: torch.compile "
                          f"failed ({_fused_failure}); the norms run their eager kernels (same "
                          f"formula, slower)", RuntimeWarning, stacklevel=2)
            return None

    return run


def like_format(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` in ``x``'s memory format (channels_last or contiguous), so a fused kernel sees
    one layout and compiles once per shape."""
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last)
    return t.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def same_kind(value, default) -> bool:
    """Whether ``value`` can stand where a norm's default argument ``default`` does (an int
    for a float; a finite number)."""
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return default is None or type(value) is type(default)
    kinds = (int,) if isinstance(default, int) else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
