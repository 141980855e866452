"""ILM-Norm: a GN/IN/LN whose per-sample affine is predicted from the input's own statistics."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .common import (channel_affine, fp32_statistics, fused_kernel, group_count, statistics_dtype,
                     tracing)

__all__ = ["ILMNorm"]

_BASES = ("gn", "in", "ln")


class ILMNorm(nn.Module):
    r"""Instance-Level Meta Normalization (Jia, Chen & Chen, CVPR 2019, arXiv:1904.03516).

    For x of shape (N, C, H, W), per sample:

    1. key statistics: ``key_mean`` and unbiased ``key_var`` of each of the
       ``Gk = C / key_group_size`` groups of consecutive channels, over
       ``key_group_size·H·W`` values;
    2. ``gain = sigmoid(Dw(E(key_var)))``, ``shift = tanh(Db(E(key_mean)))``, with one encoder
       ``E = ReLU(Linear(Gk -> e))`` shared by both decoders ``Dw, Db = Linear(e -> Gk)``
       (no biases), ``e = Gk // reduction`` if ``Gk >= reduction`` else 2; each key group's
       value is repeated over its channels;
    3. ``weight = gain + weight_bias``, ``bias = shift + bias_bias`` (learned (C,) offsets,
       initialised to 1 and 0);
    4. ``y = (x - mu) / sqrt(var + eps) * weight + bias``, with the mean and *unbiased*
       variance of the base norm's groups: ``G = group_count(C, max_groups,
       min_group_channels)`` for ``base="gn"``, ``G = C`` for ``"in"``, ``G = 1`` for ``"ln"``.

    No running statistics: train and eval compute the same. The encoder is stored once (the
    original registers it three times), as ``encoder``; the ReLU has no state.

    Speed: one reduction over "fine" groups of ``gcd(key_group_size, C / G)`` channels gives
    both the key and the norm statistics (merged exactly), the output is written in
    place, and the backward is fused by hand (see ``_ILMNormFunction``); it is
    first-order differentiable only. ``fused=True`` (or :func:`zoo.fuse_norms` on a model)
    runs training mode's forward and backward through torch.compile, which fuses the passes
    over the activation into GroupNorm's count; the first call per input shape compiles
    (seconds). Same formula; without a working compiler it warns once and stays eager.
    """

    has_fused_kernels = True

    def __init__(self, num_channels: int, base: str = "gn", *, max_groups: int = 32,
                 min_group_channels: int = 2, key_group_size: int = 16, reduction: int = 16,
                 eps: float = 1e-5, fused: bool = False):
        super().__init__()
        if base not in _BASES:
            raise ValueError(f"ILMNorm base must be one of {', '.join(map(repr, _BASES))}; "
                             f"got {base!r}")
        if key_group_size < 1 or reduction < 1:
            raise ValueError(f"ILMNorm needs key_group_size >= 1 and reduction >= 1; got "
                             f"key_group_size={key_group_size}, reduction={reduction}")
        if num_channels < 1 or num_channels % key_group_size:
            raise ValueError(
                f"ILMNorm needs the channel count to be a positive multiple of "
                f"key_group_size={key_group_size} (its key-statistics groups); got "
                f"{num_channels} channels")
        if not eps > 0:
            raise ValueError(f"ILMNorm needs eps > 0; got eps={eps}")
        if base == "gn":
            num_groups = group_count(num_channels, max_groups, min_group_channels)
        else:
            num_groups = num_channels if base == "in" else 1

        num_key_groups = num_channels // key_group_size
        embed_dim = num_key_groups // reduction if num_key_groups >= reduction else 2
        self.num_channels = num_channels
        self.base = base
        self.num_groups = num_groups
        self.key_group_size = key_group_size
        self.eps = eps
        self.fused = fused
        # Key groups and norm groups are both runs of these groups of consecutive channels.
        self.fine_group_size = math.gcd(key_group_size, num_channels // num_groups)

        self.encoder = nn.Linear(num_key_groups, embed_dim, bias=False)
        self.gain_decoder = nn.Linear(embed_dim, num_key_groups, bias=False)
        self.shift_decoder = nn.Linear(embed_dim, num_key_groups, bias=False)
        self.weight_bias = nn.Parameter(torch.ones(num_channels))
        self.bias_bias = nn.Parameter(torch.zeros(num_channels))

    def extra_repr(self) -> str:
        return (f"{self.num_channels}, base={self.base!r}, num_groups={self.num_groups}, "
                f"key_group_size={self.key_group_size}, eps={self.eps}"
                + (", fused=True" if self.fused else ""))

    @fp32_statistics
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_channels:
            raise ValueError(f"ILMNorm({self.num_channels}) expects input of shape "
                             f"(N, {self.num_channels}, H, W); got {tuple(x.shape)}")
        group_values = self.num_channels // self.num_groups * x.shape[2] * x.shape[3]
        if group_values < 2:
            raise ValueError(
                f"ILMNorm(base={self.base!r}) on input {tuple(x.shape)} normalises groups of "
                f"{group_values} value(s): the unbiased variance needs at least 2 (n - 1 > 0)")
        return _ILMNormFunction.apply(
            x.contiguous(), self, self.encoder.weight, self.gain_decoder.weight,
            self.shift_decoder.weight, self.weight_bias, self.bias_bias)


def _group_sum(values: torch.Tensor, size: int) -> torch.Tensor:
    """Sums of runs of ``size`` consecutive entries along the last dim.

    A matrix-vector product: torch's reduction over a short inner dim is several times
    slower, and such tiny ops are most of the layer's time on small maps.
    """
    if size == 1:
        return values
    sums = values.reshape(values.numel() // size, size) @ values.new_ones(size)
    return sums.view(*values.shape[:-1], values.shape[-1] // size)


def _merge_groups(fine_mean: torch.Tensor, fine_var: torch.Tensor, count: int, ratio: int):
    """Mean and unbiased variance of each run of ``ratio`` consecutive groups of ``count`` values.

    Takes the groups' means and biased variances, shaped (N, groups). Exact parallel
    variance, M2 = sum(count * var_i) + count * sum((mean_i - mean)^2), never
    E[x^2] - E[x]^2, which cancels catastrophically.
    """
    if ratio == 1:
        return fine_mean, fine_var * (count / (count - 1))
    shape = (fine_mean.shape[0], fine_mean.shape[1] // ratio)
    runs = (fine_mean.numel() // ratio, ratio)  # explicit sizes: the batch may be empty
    average = fine_mean.new_full((ratio,), 1 / ratio)
    fine_mean = fine_mean.view(runs)
    mean = fine_mean @ average
    deviation = fine_mean - mean.unsqueeze(1)
    m2_per_value = torch.addcmul(fine_var.view(runs), deviation, deviation) @ average
    return mean.view(shape), m2_per_value.mul_(ratio * count / (ratio * count - 1)).view(shape)


def _repeat(values: torch.Tensor, times: int) -> torch.Tensor:
    """(N, groups) -> (N, groups * times): each group's value repeated over its sub-groups."""
    if times == 1:
        return values
    return values.unsqueeze(2).expand(-1, -1, times).flatten(1)


class _ILMNormFunction(torch.autograd.Function):
    """ILM-Norm forward and its hand-fused backward.

    y = (x - mean) * scale + bias per (n, c), where mean, scale and bias depend on x only
    through the key and norm groups' means and unbiased variances. As
    d var / dx = 2 (x - mean) / (m - 1) and d mean / dx = 1 / m over a group of m values,
        dx = scale * dy + alpha * x + beta,
    alpha and beta constant over each fine group. One reduction over dy and x gives the
    per-(n, c) sums(dy * (x - mean)) and sum(dy), which drive the tiny (N, C)-sized chain
    rule by hand (no autograd graph); dx is then scale * dy plus alpha * x + beta. A bf16 x
    stays bf16 throughout: float32 statistics, per-(n, c) float32 coefficients applied by
    mixed-type kernels, output and dx in bf16. On small maps the tiny ops dominate, so they
    are kept few.
    """

    @staticmethod
    def forward(ctx, x, layer, *params):
        sizes = (layer.fine_group_size, layer.key_group_size,
                 layer.num_channels // layer.num_groups, layer.eps)
        ctx.fused = layer.fused and layer.training
        result = _forward_fused(x, sizes, *params) if ctx.fused else None
        if result is None:
            result = _forward(x, sizes, False, *params)
        ctx.sizes, ctx.param_dtypes = sizes, [p.dtype for p in params]
        ctx.save_for_backward(x, *result[1:])
        return result[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        # Like the forward (see fp32_statistics), never under autocast: a backward called
        # inside an autocast region would run the small matmuls in low precision.
        with torch.autocast(dy.device.type, enabled=False):
            x, *saved = ctx.saved_tensors
            need_dx = ctx.needs_input_grad[0]
            dy = dy.contiguous()
            grads = _backward_fused(dy, x, ctx.sizes, need_dx, *saved) if ctx.fused else None
            if grads is None:
                grads = _backward(dy, x, ctx.sizes, need_dx, False, *saved)
        dx, *param_grads = grads
        return (dx, None, *[g if g.dtype == dtype else g.to(dtype)
                            for g, dtype in zip(param_grads, ctx.param_dtypes)])


def _forward(x, sizes, plain, *params):
    """_ILMNormFunction's forward: (y, the tensors its backward needs). ``plain``: the passes
    over x as plain ops, for torch.compile to fuse; else the fastest eager kernels."""
    n, c, h, w = x.shape
    fine, key, group, eps = sizes
    count = fine * h * w  # values per fine group
    # Statistics and parameters in float32 (float64 for a float64 x), whatever x's dtype:
    # a bf16 x is read as it is (see fp32_statistics).
    dtype = statistics_dtype(x)
    encoder_weight, gain_weight, shift_weight, weight_bias, bias_bias = (
        p if p.dtype == dtype else p.to(dtype) for p in params)

    if plain:  # one pass under Inductor
        fine_var, fine_mean = torch.var_mean(x.view(n, c // fine, count).to(dtype), dim=2,
                                             correction=0)
        fine_rstd = fine_var.add(eps).rsqrt()
    else:
        # The native GroupNorm kernel is the fastest accurate eager moments pass on CPU
        # (torch.var_mean is ~10x slower); given float32 unit affine parameters it returns
        # float32 moments of a bf16 x. Its output z = (x - fine_mean) * fine_rstd is the
        # buffer y is written into. eps > 0 keeps z finite on constant groups; the variance
        # comes back exact up to rounding (absolute error ~ ulp * eps, far below what eps adds).
        z, fine_mean, fine_rstd = torch.native_group_norm(
            x, weight_bias.new_ones(c), weight_bias.new_zeros(c), n, c, h * w, c // fine, eps)
        fine_var = fine_rstd.pow(-2).sub_(eps).clamp_min_(0)
    key_mean, key_var = _merge_groups(fine_mean, fine_var, count, key // fine)
    mean, var = _merge_groups(fine_mean, fine_var, count, group // fine)

    key_stats = torch.stack((key_var, key_mean))
    codes = F.linear(key_stats, encoder_weight).relu_()  # one call of the shared encoder
    gain = F.linear(codes[0], gain_weight).sigmoid_()
    shift = F.linear(codes[1], shift_weight).tanh_()
    weight = (gain.unsqueeze(2) + weight_bias.view(-1, key)).view(n, c)
    bias = (shift.unsqueeze(2) + bias_bias.view(-1, key)).view(n, c)
    rstd = var.add(eps).rsqrt_()

    group_shape = (n, c // group, group)
    rows = (1, n * c, h * w)
    out = None if plain or tracing() else z.view(rows)
    if plain:  # (x - mean) * scale + bias as written: no fold, so no cancellation to avoid
        scale = (weight.view(group_shape) * rstd.unsqueeze(2)).view(n, c, 1, 1)
        y = ((x.to(dtype) - _repeat(mean, group).view(n, c, 1, 1)) * scale
             + bias.view(n, c, 1, 1)).to(x.dtype)
    elif x.dtype == dtype:
        # y is one per-(n, c) affine pass (batch_norm's eval kernel on an (1, N*C, H*W) view),
        # written into z's buffer in eager mode (a fresh large tensor costs page faults;
        # torch.export gets a new tensor, as out= variants do not trace). From z:
        # y = z * z_scale + z_shift with x - mean = z / fine_rstd + fine_mean - mean,
        # accurate even when |mean| >> std, where the fold x * a + (bias - mean * a) that
        # the kernel computes would cancel. Shapes (n, norm groups, fine groups per norm
        # group, fine group channels).
        fine_shape = (n, c // group, group // fine)
        channel_shape = fine_shape + (fine,)
        weight_4d = weight.view(channel_shape)
        z_scale = weight_4d * (rstd.unsqueeze(2) / fine_rstd.view(fine_shape)).unsqueeze(3)
        if group == fine:  # then mean is fine_mean
            z_shift = bias
        else:
            offset = (fine_mean.view(fine_shape) - mean.unsqueeze(2)) * rstd.unsqueeze(2)
            z_shift = torch.addcmul(bias.view(channel_shape), weight_4d, offset.unsqueeze(3))
        y = channel_affine(z.view(rows), z_scale.new_zeros(n * c), z_scale.reshape(-1),
                           z_shift.reshape(-1), out=out)
    else:
        # From x, rounded once to x's low precision; the fold's float32 cancellation,
        # ~1e-7 |mean| / std, stays far below bf16's 4e-3.
        y = channel_affine(x.view(rows), mean.unsqueeze(2).expand(group_shape).reshape(-1),
                           (weight.view(group_shape) * rstd.unsqueeze(2)).view(-1),
                           bias.view(-1), out=out)
    if not plain:
        # Not a view: autograd forbids in-place ops (the ReLU after) on a Function's views.
        y = z if out is not None else y.view(x.shape).clone()

    return (y, encoder_weight, gain_weight, shift_weight, key_stats, codes, gain, shift, mean,
            rstd, weight, fine_mean, fine_rstd)


def _backward(dy, x, sizes, need_dx, plain, encoder_weight, gain_weight, shift_weight, key_stats,
              codes, gain, shift, mean, rstd, weight, fine_mean, fine_rstd):
    """_ILMNormFunction's backward: dx (None unless need_dx) and the parameters' gradients,
    in the statistics dtype; ``plain`` as for _forward."""
    fine, key, group, _ = sizes
    count = fine * x.shape[2] * x.shape[3]  # values per fine group
    n, c = weight.shape

    # Per (n, c): sum(dy * z) and sum(dy), z = (x - fine_mean) * fine_rstd, from GroupNorm's
    # backward on (1, N*C, H*W) views asked for its affine gradients only (one pass that
    # writes nothing; batch_norm's is several times slower on bf16 rows); then
    # dL/dscale = sum(dy * (x - mean)) = sum(dy * z) / fine_rstd + (fine_mean - mean) sum(dy)
    # and dL/dbias = sum(dy). dx starts as dy * scale, batch_norm's eval kernel.
    rows = (1, n * c, x.shape[2] * x.shape[3])
    group_shape = (n, c // group, group)
    scale = (weight.view(group_shape) * rstd.unsqueeze(2)).view(-1)
    if plain:  # one reduction pass under Inductor
        values, grads = x.view(n, c, -1).to(scale.dtype), dy.view(n, c, -1).to(scale.dtype)
        d_bias = grads.sum(2).view(-1)
        d_scale = (grads * (values - _repeat(mean, group).unsqueeze(2))).sum(2).view(-1)
    else:
        if n:
            _, sum_dy_z, d_bias = torch.ops.aten.native_group_norm_backward(
                dy.view(rows), x.view(rows), fine_mean.view(1, -1), fine_rstd.view(1, -1),
                torch.ones_like(scale), 1, n * c, rows[2], n * c // fine, [False, True, True])
            dx = channel_affine(dy.view(rows), torch.zeros_like(scale), scale, None) if need_dx else None
        else:  # an empty batch would crash those kernels
            sum_dy_z, d_bias, dx = scale.new_empty(0), scale.new_empty(0), torch.empty_like(x)
        offset = (_repeat(fine_mean, fine) - _repeat(mean, group)).reshape(-1)
        d_scale = torch.addcmul(sum_dy_z / _repeat(fine_rstd, fine).reshape(-1), offset, d_bias)

    # scale = weight * rstd, weight = gain + weight_bias, bias = shift + bias_bias.
    d_weight = d_scale.view(group_shape) * rstd.unsqueeze(2)
    d_rstd, d_mean = _group_sum(torch.stack((d_scale, d_bias)).view(2, n, c) * weight, group)
    d_var = rstd.pow(3).mul_(d_rstd).mul_(-0.5)  # rstd = (var + eps)^(-1/2)
    d_mean = d_mean.mul_(rstd).neg_()  # y depends on mean directly through (x - mean)
    d_gain, d_shift = _group_sum(torch.stack((d_weight.view(n, c), d_bias.view(n, c))), key)
    d_gain_logits = d_gain.mul_(gain - gain.square())
    d_shift_logits = torch.addcmul(d_shift, d_shift * shift, shift, value=-1)
    d_codes = torch.ops.aten.threshold_backward(
        torch.stack((d_gain_logits @ gain_weight, d_shift_logits @ shift_weight)), codes, 0)
    d_key_var, d_key_mean = d_codes @ encoder_weight
    param_grads = (
        d_codes.flatten(0, 1).T @ key_stats.flatten(0, 1),
        d_gain_logits.T @ codes[0],
        d_shift_logits.T @ codes[1],
        d_weight.view(n, c).sum(0),
        d_bias.view(n, c).sum(0),
    )
    if not need_dx:
        return (None, *param_grads)

    # Per key group and per norm group of m values: alpha = 2 dL/dvar / (m - 1),
    # beta = dL/dmean / m - alpha * mean; summed on the fine groups both consist of.
    key_values, group_values = key * count // fine, group * count // fine
    key_alpha = d_key_var * (2 / (key_values - 1))
    key_beta = torch.addcmul(d_key_mean / key_values, key_alpha, key_stats[1], value=-1)
    norm_alpha = d_var.mul_(2 / (group_values - 1))
    norm_beta = torch.addcmul(d_mean.div_(group_values), norm_alpha, mean, value=-1)
    alpha = _repeat(key_alpha, key // fine) + _repeat(norm_alpha, group // fine)
    beta = _repeat(key_beta, key // fine) + _repeat(norm_beta, group // fine)
    if plain:
        dx = (grads * scale.view(n, c, 1) + values * _repeat(alpha, fine).unsqueeze(2)
              + _repeat(beta, fine).unsqueeze(2)).to(dy.dtype)
    elif dx.dtype == alpha.dtype:
        per_fine_group = (n, c // fine, count)
        dx = dx.view(per_fine_group)
        dx.addcmul_(x.view(per_fine_group), alpha.unsqueeze(2)).add_(beta.unsqueeze(2))
    else:  # bf16 dx: alpha * x + beta in float32 (one kernel), then a bf16 add
        fine_rows = (1, n * c // fine, count)
        dx.view(fine_rows).add_(channel_affine(x.view(fine_rows), alpha.new_zeros(alpha.numel()),
                                               alpha.view(-1), beta.view(-1)))
    return (dx.view_as(x), *param_grads)


# The plain forms compiled into fused loops (ILMNorm(fused=True), zoo.fuse_norms): GroupNorm's
# pass count, one reduction and one output pass each way.
@fused_kernel
def _forward_fused(x, sizes, *params):
    return _forward(x, sizes, True, *params)


@fused_kernel
def _backward_fused(dy, x, sizes, need_dx, *saved):
    return _backward(dy, x, sizes, need_dx, True, *saved)
