"""Norm Matters: batch norms with cheap, low-precision-friendly scales, and bounded weight norm.

Hoffer, Banner, Golan & Soudry, "Norm matters: efficient and accurate normalization schemes
in deep networks", NeurIPS 2018, arXiv:1803.01814.

Every batch norm here reduces per channel over N*H*W: mu = mean(x), A = |x - mu|, a scale s
from A, and y = (x - mu) * s * weight + bias. They follow PyTorch's conventions, not the
original code's: ``running = (1 - momentum) * running + momentum * batch`` in training mode,
``running_mean`` starts at 0 and ``running_scale`` (the running average of s) at 1, weight
starts at 1 and bias at 0, and eval mode uses the running statistics at any batch size.

Training-mode forward and backward are closed forms in a few fused passes (custom autograd
functions): a per-channel affine ``x * a + b`` through the eval form of ``batch_norm``, and
the per-channel sums sum(g) and sum(g * (x - mu)) through one ``native_batch_norm_backward``
reduction, which keeps their cost close to ``nn.BatchNorm2d``'s.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.utils import parametrize

from .common import (channel_affine, channel_sums, fp32_statistics, fused_kernel, like_format,
                     statistics_dtype)

__all__ = [
    "L1BatchNorm2d",
    "TopKBatchNorm2d",
    "LpBatchNorm2d",
    "MeanBatchNorm2d",
    "BoundedWeightNorm",
    "apply_bounded_weight_norm",
]

# E|x - mu| = sigma * sqrt(2 / pi) for Gaussian x: this factor turns the mean deviation into sigma.
_L1_TO_STD = math.sqrt(math.pi / 2)


def _per_channel(values: torch.Tensor) -> torch.Tensor:
    """A (C,) tensor shaped to broadcast against (N, C, H, W)."""
    return values[:, None, None]


def _values_per_channel(x: torch.Tensor) -> int:
    return x.size(0) * x.size(2) * x.size(3)


def _channel_sum(values: torch.Tensor) -> torch.Tensor:
    """Per-channel sum, in the statistics dtype (float32 for bf16 values)."""
    zero = values.new_zeros(values.size(1), dtype=statistics_dtype(values))
    return channel_sums(values, values, zero)[0]


def _channel_mean(x: torch.Tensor) -> torch.Tensor:
    return _channel_sum(x) / _values_per_channel(x)


def _deviation(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``x - mean`` per channel, in x's dtype, rounded once."""
    return channel_affine(x, mean, torch.ones_like(mean), None)


def _add_scaled(grad: torch.Tensor, values: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``grad += values * coef`` per channel, in place (coef in the statistics dtype).

    Both tensors share x's dtype, so in bf16 the op runs on bf16 data with a bf16 coef: a
    mixed-dtype addcmul is unvectorised. The rounding of coef only touches this correction term.
    """
    return grad.addcmul_(values, _per_channel(coef.to(grad.dtype)))


_DIMS = (0, 2, 3)  # a channel's values: every sample and position


@fused_kernel
def _l1_forward_fused(x, weight, bias, eps: float):
    """_L1Scale's forward as plain ops (fused by torch.compile): (y, mean, scale)."""
    values = x.to(weight.dtype)
    mean = values.mean(_DIMS)
    d = values - _per_channel(mean)
    scale = 1.0 / (_L1_TO_STD * d.abs().mean(_DIMS) + eps)
    y = d * _per_channel(scale * weight) + _per_channel(bias)
    return y.to(x.dtype), mean, scale


@fused_kernel
def _l1_backward_fused(grad, x, weight, mean, scale):
    """_L1Scale's backward as plain ops (fused by torch.compile): the gradients of x, weight
    and bias."""
    n = _values_per_channel(x)
    g, d = grad.to(mean.dtype), x.to(mean.dtype) - _per_channel(mean)
    sign = d.sign()
    sum_grad, sum_grad_dev = g.sum(_DIMS), (g * d).sum(_DIMS)
    sign_coef = -_L1_TO_STD * scale * sum_grad_dev / n
    mean_sign = sign.sum(_DIMS) / n
    grad_x = _per_channel(weight * scale) * (
        g - _per_channel(sum_grad / n) + _per_channel(sign_coef) * (sign - _per_channel(mean_sign)))
    return grad_x.to(grad.dtype), scale * sum_grad_dev, sum_grad


class _L1Scale(torch.autograd.Function):
    """y = (x - mu) * s * w + b, s = 1 / (c * mean|x - mu| + eps), c = sqrt(pi / 2).

    With d = x - mu, m = mean|d|, per channel:
    dL/dx = w * s * (g - mean(g) - c * s * mean(g * d) * (sign(d) - mean(sign(d)))).
    ``fused``: the compiled kernels (three passes over x forward, two backward), else eager
    kernels (four forward, five backward).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, fused):
        ctx.fused = fused
        result = _l1_forward_fused(x, weight, bias, eps) if fused else None
        if result is None:
            n = _values_per_channel(x)
            mean = _channel_mean(x)
            buffer = _deviation(x, mean).abs_()
            scale = 1.0 / (_L1_TO_STD * _channel_sum(buffer) / n + eps)
            result = channel_affine(x, mean, scale * weight, bias, out=buffer), mean, scale
        out, mean, scale = result
        ctx.save_for_backward(x, weight, mean, scale)
        ctx.mark_non_differentiable(mean, scale)
        return out, mean, scale

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_mean, _grad_scale):
        x, weight, mean, scale = ctx.saved_tensors
        if ctx.fused:
            grads = _l1_backward_fused(like_format(grad_out, x), x, weight, mean, scale)
            if grads is not None:
                grad_x, grad_weight, grad_bias = grads
                return grad_x if ctx.needs_input_grad[0] else None, grad_weight, grad_bias, None, None
        n = _values_per_channel(x)
        sum_grad, sum_grad_dev = channel_sums(grad_out, x, mean)
        grad_x = None
        if ctx.needs_input_grad[0]:
            sign = _deviation(x, mean).sign_()
            mean_sign = _channel_sum(sign) / n
            gain = weight * scale
            sign_coef = -_L1_TO_STD * scale * sum_grad_dev / n  # -c * s * mean(g * d)
            # grad_x = gain * (g - mean(g) + sign_coef * (sign - mean_sign))
            grad_x = channel_affine(grad_out, sum_grad / n + sign_coef * mean_sign, gain, None)
            _add_scaled(grad_x, sign, gain * sign_coef)
        return grad_x, scale * sum_grad_dev, sum_grad, None, None


def _linf_to_std(n: int) -> float:
    """The paper's factor that turns the largest |x - mu| of n Gaussian values into sigma."""
    return 0.5 * (1 + math.sqrt(math.pi * math.log(4))) / math.sqrt(2 * math.log(n))


# Below this many rows (or above this many entries), torch.topk beats the max rounds of
# _top_k_per_row on one thread; on more, torch.topk splits its rows between them and beats
# the rounds' small ops (CPU, k = 10, 2048 rows of 49: 1.51 against 0.70 ms on one thread,
# 0.76 against 1.38 ms on two).
_TOPK_ROUNDS_MIN_ROWS = 512
_TOPK_ROUNDS_MAX_ENTRIES = 2 ** 21


def _top_k_per_row(values: torch.Tensor, k: int):
    """The k largest entries of each row of a non-negative (R, L) tensor: (values, columns).

    torch.topk's CPU cost is mostly per row. For many rows of float32 on one CPU thread, k
    rounds of one vectorized max over packed int64 keys are up to 3x faster: a non-negative
    float32 orders like its int32 bit pattern, and the column in the low 32 bits makes every
    key distinct (ties go to the higher column) and says which entry to take out.
    """
    rows, length = values.shape
    if k == 1:
        return values.max(1, keepdim=True)
    if (values.device.type != "cpu" or values.dtype != torch.float32
            or torch.get_num_threads() > 1
            or rows < _TOPK_ROUNDS_MIN_ROWS or rows * length > _TOPK_ROUNDS_MAX_ENTRIES):
        return values.topk(k, 1)
    low_bits = 0xFFFFFFFF
    column = torch.arange(length, device=values.device)
    keys = values.view(torch.int32).to(torch.int64).bitwise_left_shift_(32)
    keys.bitwise_or_(column)
    picked = []
    for _ in range(k):
        best = keys.amax(1, keepdim=True)
        picked.append(best)
        keys.scatter_(1, best & low_bits, -1)  # -1 is below every real key
    picked = torch.cat(picked, 1)
    top_values = picked.bitwise_right_shift(32).to(torch.int32).view(torch.float32)
    return top_values, picked & low_bits


def _block_deviations(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """(C, H*W): each spatial position's largest |x - mu| over the batch, in mean's dtype
    (so no rounding mis-ranks blocks), max(max(x) - mu, mu - min(x)) from two reductions
    over N, updated in place: fresh allocations cost page faults on CPU."""
    rows = x.view(x.size(0), x.size(1), -1)
    mean_col = mean[:, None]
    block_max = rows.amax(0).to(mean.dtype).sub_(mean_col)
    return torch.maximum(block_max, rows.amin(0).to(mean.dtype).neg_().add_(mean_col),
                         out=block_max)


def _torch_topk(values: torch.Tensor, k: int):
    return values.topk(k, 1)


@fused_kernel
def _topk_selection_fused(x: torch.Tensor, weight: torch.Tensor, k: int):
    """_TopKScale's forward statistics for k > 1 as plain ops for torch.compile: the mean, in
    weight's dtype, then _top_abs_deviations' values and indices. One loop reads x for both
    the channel sums and the block maxima, where eager kernels take three passes: the sums
    run over N first, the maxima's iteration space. The selection around torch.topk fuses
    too (measured on two threads, where _top_k_per_row takes torch.topk as well)."""
    mean = x.view(x.size(0), x.size(1), -1).to(weight.dtype).sum(0).sum(1) / _values_per_channel(x)
    return (mean, *_top_abs_deviations(x, mean, k, _torch_topk))


def _top_abs_deviations(x: torch.Tensor, mean: torch.Tensor, k: int, top_k=_top_k_per_row):
    """Per channel, the k largest |x - mu| and where they are in x (contiguous).

    Never materialises |x - mu|: each spatial position's N values form a block, whose
    largest deviation (_block_deviations) is cheap. The top-k entries lie in the k blocks
    with the largest block maxima (a block outside them is beaten by k blocks, so by k
    entries), so only k * N candidates per channel are gathered and ranked, by
    ``top_k(values, k)`` per row. Returns (values (C, k), flat indices into x (C, k)).
    """
    batch, channels = x.size(0), x.size(1)
    spatial_size = x.size(2) * x.size(3)
    block_dev = _block_deviations(x, mean)
    num_blocks = min(k, spatial_size)
    _, block_pos = top_k(block_dev, num_blocks)  # (C, num_blocks)
    by_channel = x.view(batch, channels, -1).permute(1, 0, 2)  # (C, N, H*W) view
    candidates = by_channel.gather(2, block_pos[:, None, :].expand(channels, batch, num_blocks))
    candidates = candidates.to(mean.dtype).sub_(mean[:, None, None]).abs_().view(channels, -1)
    top_abs, top_pos = top_k(candidates, k)
    sample = top_pos // num_blocks
    spatial = block_pos.gather(1, top_pos % num_blocks)
    channel = torch.arange(channels, device=x.device)[:, None]
    return top_abs, (sample * channels + channel) * spatial_size + spatial


@fused_kernel
def _linf_forward_fused(x, weight, bias, const: float, eps: float):
    """_TopKScale's forward for k = 1 as plain ops (fused by torch.compile): (y, mean, scale,
    top). The largest |x - mu|, top, is max(max(x) - mu, mu - min(x)), so one pass takes every
    statistic."""
    values = x.to(weight.dtype)
    mean = values.mean(_DIMS)
    top = torch.maximum(values.amax(_DIMS) - mean, mean - values.amin(_DIMS))
    scale = 1.0 / (const * top + eps)
    y = (values - _per_channel(mean)) * _per_channel(scale * weight) + _per_channel(bias)
    return y.to(x.dtype), mean, scale, top


@fused_kernel
def _linf_backward_fused(grad, x, weight, mean, scale, top, const: float):
    """_TopKScale's backward for k = 1 as plain ops (fused by torch.compile): the gradients of
    x, weight and bias, and each channel's selected entry (its position key; N * H * W where
    no entry matched ``top``).

    The selected entry is the eager kernel's: the first with the largest |x - mu| in (h, w,
    sample) order. A minimum over int32 keys, ``2 * position + (x < mu)``, finds it and its
    sign in the same pass as the sums (x - mu rounds exactly as in the forward, so the largest
    matches ``top`` bit for bit); comparing each entry's position with it puts the sign term
    into the writing pass."""
    batch, channels, height, width = x.shape
    n = _values_per_channel(x)
    g, d = grad.to(mean.dtype), x.to(mean.dtype) - _per_channel(mean)
    sum_grad, sum_grad_dev = g.sum(_DIMS), (g * d).sum(_DIMS)
    position = (torch.arange(height * width, dtype=torch.int32, device=x.device)
                .view(1, 1, height, width) * batch
                + torch.arange(batch, dtype=torch.int32, device=x.device).view(batch, 1, 1, 1))
    key = torch.where(d.abs() == _per_channel(top), 2 * position + (d < 0).int(), 2 * n)
    first = key.amin(_DIMS)
    picked = first >> 1
    sign = torch.where(top == 0, 0.0, 1.0 - 2.0 * (first & 1))
    sign_coef = const * scale * sum_grad_dev * sign  # c_n * s * sum(g * d) / k * sign, k = 1
    grad_x = _per_channel(weight * scale) * (
        g - _per_channel((sum_grad - sign_coef) / n)
        - torch.where(position == _per_channel(picked), _per_channel(sign_coef), 0.0))
    return grad_x.to(grad.dtype), scale * sum_grad_dev, sum_grad, picked


class _TopKScale(torch.autograd.Function):
    """y = (x - mu) * s * w + b, s = 1 / (c_n * mean(topk(|x - mu|, k)) + eps).

    With d = x - mu, S the k selected entries and 1_S their indicator, per channel:
    dL/dx = w * s * (g - mean(g) - c_n * s * sum(g * d) / k * (1_S * sign(d) - sum_S(sign(d)) / n)).
    The sign term touches only the k selected entries. ``fused``: for k = 1 the compiled
    kernels (two passes over x forward, two backward); for k > 1 the compiled statistics and
    selection (_topk_selection_fused), then eager kernels; else eager kernels.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, k, eps, fused):
        n = _values_per_channel(x)
        k = min(k, n)
        const = _linf_to_std(n)
        ctx.const, ctx.k = const, k
        result = _linf_forward_fused(x, weight, bias, const, eps) if fused and k == 1 else None
        if result is None:
            x = x.contiguous()  # the selected entries are kept as flat (N, C, H, W) indices
            selected = _topk_selection_fused(x, weight, k) if fused and k > 1 else None
            if selected is None:
                mean = _channel_mean(x)
                selected = (mean, *_top_abs_deviations(x, mean, k))
            mean, top_abs, flat_index = selected
            scale = 1.0 / (const * top_abs.mean(1) + eps)
            result = channel_affine(x, mean, scale * weight, bias), mean, scale, flat_index
        out, mean, scale, found = result  # found: the fused kernels' top, else the indices
        ctx.save_for_backward(x, weight, mean, scale, found)
        ctx.mark_non_differentiable(mean, scale)
        return out, mean, scale

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_mean, _grad_scale):
        x, weight, mean, scale, found = ctx.saved_tensors
        if found.is_floating_point():  # the fused forward ran
            grads = _linf_backward_fused(like_format(grad_out, x), x, weight, mean, scale, found,
                                         ctx.const)
            # A channel without a selected entry would mean x - mu rounded differently from
            # the forward; never seen, but the eager kernels are the safe answer then.
            if grads is not None and bool((grads[3] < _values_per_channel(x)).all()):
                grad_x, grad_weight, grad_bias, _ = grads
                return (grad_x if ctx.needs_input_grad[0] else None, grad_weight, grad_bias,
                        None, None, None)
            # The backward's compile failed, or no match: find the entries again.
            x = x.contiguous()
            found = _top_abs_deviations(x, mean, ctx.k)[1]
        flat_index = found
        grad_out = grad_out.contiguous()  # grad_x follows its layout and takes flat indices
        n = _values_per_channel(x)
        sum_grad, sum_grad_dev = channel_sums(grad_out, x, mean)
        grad_x = None
        if ctx.needs_input_grad[0]:
            sign = (x.take(flat_index) - mean[:, None]).sign_()
            gain = weight * scale
            sign_coef = ctx.const * scale * sum_grad_dev / ctx.k
            shift = (sum_grad - sign_coef * sign.sum(1)) / n
            grad_x = channel_affine(grad_out, shift, gain, None)
            grad_x.view(-1).index_add_(0, flat_index.view(-1),
                                       (-(gain * sign_coef)[:, None] * sign).view(-1).to(grad_x.dtype))
        return grad_x, scale * sum_grad_dev, sum_grad, None, None, None


class _LpScale(torch.autograd.Function):
    """y = (x - mu) * s * w + b, s = (mean(|x - mu|^p) + eps)^(-1/p), for p >= 1.

    With d = x - mu, psi = sign(d) |d|^(p-1), per channel:
    dL/dx = w * s * (g - mean(g) - s^p * mean(g * d) * (psi - mean(psi))).
    Powers are taken of z = d * r, r = 1 / sqrt(var + eps) (BatchNorm's own normalised
    output), and scaled back by powers of r: |d|^p of a half-precision input would overflow.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, p, eps):
        n = _values_per_channel(x)
        z, mean, inv_std = torch.native_batch_norm(x, None, None, None, None, True, 0.0, eps)
        mean, inv_std = mean.to(weight.dtype), inv_std.to(weight.dtype)
        powers = z.abs_().pow_(p)
        moment = _channel_sum(powers) / n / inv_std.pow(p)
        scale = (moment + eps).pow(-1.0 / p)
        out = channel_affine(x, mean, scale * weight, bias, out=powers)
        ctx.save_for_backward(x, weight, mean, inv_std, scale)
        ctx.p = p
        ctx.mark_non_differentiable(mean, scale)
        return out, mean, scale

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_mean, _grad_scale):
        x, weight, mean, inv_std, scale = ctx.saved_tensors
        p = ctx.p
        n = _values_per_channel(x)
        sum_grad, sum_grad_dev = channel_sums(grad_out, x, mean)
        grad_x = None
        if ctx.needs_input_grad[0]:
            z = channel_affine(x, mean, inv_std, None)
            psi_z = z.abs().pow_(p - 1).mul_(z.sign_())  # psi = psi_z / r^(p-1)
            mean_psi_z = _channel_sum(psi_z) / n
            gain = weight * scale
            # -s^p * mean(g * d), times 1 / r^(p-1) to apply to psi_z
            psi_coef = -scale.pow(p) * sum_grad_dev / n / inv_std.pow(p - 1)
            # grad_x = gain * (g - mean(g) + psi_coef * (psi_z - mean(psi_z)))
            grad_x = channel_affine(grad_out, sum_grad / n + psi_coef * mean_psi_z, gain, None)
            _add_scaled(grad_x, psi_z, gain * psi_coef)
        return grad_x, scale * sum_grad_dev, sum_grad, None, None


class _MeanShift(torch.autograd.Function):
    """y = x - mu + b; dL/dx = g - mean(g) per channel, each in one fused pass.

    (Autograd through ``x - x.mean()`` would materialise the broadcast mean gradient and then
    add it: two full-size tensors where one will do.)
    """

    @staticmethod
    def forward(ctx, x, bias):
        mean = _channel_mean(x)
        ctx.num_values = _values_per_channel(x)
        ctx.mark_non_differentiable(mean)
        return channel_affine(x, mean, torch.ones_like(mean), bias), mean

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_mean):
        sum_grad = _channel_sum(grad_out)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = channel_affine(grad_out, sum_grad / ctx.num_values, torch.ones_like(sum_grad), None)
        return grad_x, sum_grad


def _check_input(x: torch.Tensor, num_features: int, training: bool) -> None:
    if x.dim() != 4 or x.size(1) != num_features:
        raise ValueError(f"expected a (N, {num_features}, H, W) input, got shape {tuple(x.shape)}")
    if training and _values_per_channel(x) < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input "
                         f"size {tuple(x.shape)}")


class _ScaledBatchNorm2d(nn.Module):
    """The shared parts: parameters, running statistics, eval mode and the checks."""

    def __init__(self, num_features: int, eps: float, momentum: float):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.empty(num_features))
        self.bias = nn.Parameter(torch.empty(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_scale", torch.ones(num_features))
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_scale.fill_(1)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def _batch_normalize(self, x, weight, bias):
        """Training-mode (y, batch mean, batch scale)."""
        raise NotImplementedError

    @fp32_statistics
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.num_features, self.training)
        # Parameters and buffers in the statistics dtype (they may be bf16 after a user's
        # model.to()); x stays as it is and the output takes its dtype.
        dtype = statistics_dtype(x)
        weight, bias = self.weight.to(dtype), self.bias.to(dtype)
        if not self.training:  # a per-channel affine, BatchNorm2d's eval kernel
            return channel_affine(x, self.running_mean.to(dtype),
                                  self.running_scale.to(dtype) * weight, bias)
        out, mean, scale = self._batch_normalize(x, weight, bias)
        with torch.no_grad():
            for running, batch in ((self.running_mean, mean), (self.running_scale, scale)):
                running.mul_(1 - self.momentum).add_(batch.to(running.dtype), alpha=self.momentum)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class L1BatchNorm2d(_ScaledBatchNorm2d):
    """L1 batch norm (Hoffer et al., "Norm matters", NeurIPS 2018, arXiv:1803.01814).

    Per channel over N*H*W: mu = mean(x), ``s = 1 / (sqrt(pi/2) * mean(|x - mu|) + eps)``,
    ``y = (x - mu) * s * weight + bias``. sqrt(pi/2) makes the mean absolute deviation an
    estimate of sigma for Gaussian x, so s matches BatchNorm's 1/sigma.

    ``fused=True`` (or :func:`zoo.fuse_norms` on a model) runs training mode through kernels
    compiled by torch.compile, about as fast as BatchNorm2d's; the first call per input shape
    compiles (seconds). Same formula; without a working compiler it warns once and stays eager.
    """

    has_fused_kernels = True

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 fused: bool = False):
        super().__init__(num_features, eps, momentum)
        self.fused = fused

    def _batch_normalize(self, x, weight, bias):
        return _L1Scale.apply(x, weight, bias, self.eps, self.fused)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", fused=True" if self.fused else "")


class TopKBatchNorm2d(_ScaledBatchNorm2d):
    """Top-k / L-infinity batch norm (Hoffer et al., "Norm matters", NeurIPS 2018,
    arXiv:1803.01814).

    Per channel over n = N*H*W values: mu = mean(x),
    ``const = 0.5 * (1 + sqrt(pi * ln 4)) / sqrt(2 * ln n)``,
    ``s = 1 / (const * mean(topk(|x - mu|, k)) + eps)``, ``y = (x - mu) * s * weight + bias``.
    const turns the expected maximum deviation of n Gaussian values into sigma. k = 1 is the
    paper's pure L-infinity norm; the authors' later code uses k = 10. A batch with fewer than
    k values per channel (n < k) averages all n of them (k_eff = min(k, n)).

    ``fused=True`` (or :func:`zoo.fuse_norms` on a model) runs training mode through kernels
    compiled by torch.compile, as :class:`L1BatchNorm2d`'s: all of it for k = 1; for k > 1
    the statistics and the selection of the k entries (one read of x where eager kernels
    take three), while the output and the backward run batch norm's eager kernels.
    """

    has_fused_kernels = True

    def __init__(self, num_features: int, k: int = 10, eps: float = 1e-5, momentum: float = 0.1,
                 fused: bool = False):
        if k < 1:
            raise ValueError(f"k must be a positive integer, got {k}")
        super().__init__(num_features, eps, momentum)
        self.k = k
        self.fused = fused

    def _batch_normalize(self, x, weight, bias):
        return _TopKScale.apply(x, weight, bias, self.k, self.eps, self.fused)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, k={self.k}, eps={self.eps}, momentum={self.momentum}"
                + (", fused=True" if self.fused else ""))


class LpBatchNorm2d(_ScaledBatchNorm2d):
    """Lp batch norm (Hoffer et al., "Norm matters", NeurIPS 2018, arXiv:1803.01814).

    Per channel over N*H*W: mu = mean(x), ``s = (mean(|x - mu|^p) + eps)^(-1/p)``,
    ``y = (x - mu) * s * weight + bias``, p >= 1. p = 2 is BatchNorm with the biased variance
    (and runs BatchNorm's own kernels).
    """

    def __init__(self, num_features: int, p: float = 2.0, eps: float = 1e-5, momentum: float = 0.1):
        if not p >= 1:
            raise ValueError(f"p must be >= 1, got {p}")
        super().__init__(num_features, eps, momentum)
        self.p = float(p)

    def _batch_normalize(self, x, weight, bias):
        if self.p == 2:
            out, mean, inv_std = torch.native_batch_norm(
                x, weight, bias, None, None, True, 0.0, self.eps)
            return out, mean.detach(), inv_std.detach()
        return _LpScale.apply(x, weight, bias, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, p={self.p}, eps={self.eps}, momentum={self.momentum}"


class MeanBatchNorm2d(nn.Module):
    """Mean-only batch norm (Hoffer et al., "Norm matters", NeurIPS 2018, arXiv:1803.01814).

    Per channel over N*H*W: ``y = x - mean(x) + bias``; no scale and no weight. The paper pairs
    it with bounded weight norm on the conv in front (:func:`apply_bounded_weight_norm`).
    """

    def __init__(self, num_features: int, momentum: float = 0.1):
        super().__init__()
        self.num_features = num_features
        self.momentum = momentum
        self.bias = nn.Parameter(torch.empty(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        nn.init.zeros_(self.bias)

    @fp32_statistics
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.num_features, self.training)
        dtype = statistics_dtype(x)
        bias = self.bias.to(dtype)
        if not self.training:
            running_mean = self.running_mean.to(dtype)
            return channel_affine(x, running_mean, torch.ones_like(running_mean), bias)
        out, mean = _MeanShift.apply(x, bias)
        with torch.no_grad():
            self.running_mean.mul_(1 - self.momentum).add_(
                mean.to(self.running_mean.dtype), alpha=self.momentum)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_features}, momentum={self.momentum}"


class BoundedWeightNorm(nn.Module):
    """Bounded weight normalization (Hoffer et al., "Norm matters", NeurIPS 2018, arXiv:1803.01814).

    A parametrization for ``torch.nn.utils.parametrize.register_parametrization``: per output
    channel c, ``w_c = rho * v_c / ||v_c||_2`` (norm over all dims but 0). rho is a fixed
    per-layer scalar, a buffer, so a saved state_dict reloads to the same weights. With a
    normalization after the layer the weight's norm no longer matters, and fixing it makes
    weight decay unnecessary (the paper's point).

    In training mode every forward first renormalises the direction in place, under
    ``no_grad``: ``v_c <- v_c / ||v_c||``, as the authors' layer does (convNet.pytorch
    ``models/modules/bwn.py``, which the paper's networks use). Then ``||v|| = 1`` at every
    step and the gradient reaching v is ``rho * (g - (v . g) v)``; without the renormalisation
    ``||v||`` drifts and every step is scaled by ``1 / ||v||^2`` (their ``bwn_alt.py``).
    Eval mode leaves v alone: ``w`` does not depend on v's scale, so outputs are the same and
    export and ``torch.compile`` see no parameter update.
    """

    def __init__(self, rho: float | torch.Tensor):
        super().__init__()
        rho = torch.as_tensor(rho).detach().clone()
        self.register_buffer("rho", rho if rho.is_floating_point() else rho.float())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                weight.div_(_channel_norms(weight).to(weight.dtype))
        return weight * (self.rho / _channel_norms(weight)).to(weight.dtype)

    def extra_repr(self) -> str:
        return "rho=?" if self.rho.is_meta else f"rho={self.rho.item():.4g}"


def _channel_norms(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel L2 norms, shaped to broadcast over ``weight``, in at least float32.

    Clamped away from 0, so an all-zero channel stays zero rather than turning into NaN.
    """
    dtype = torch.promote_types(weight.dtype, torch.float32)
    norms = torch.linalg.vector_norm(weight, dim=tuple(range(1, weight.dim())), keepdim=True,
                                     dtype=dtype)
    return norms.clamp_min(torch.finfo(dtype).tiny)


def apply_bounded_weight_norm(module: nn.Module) -> nn.Module:
    """Parametrize every ``nn.Conv2d`` weight in ``module`` with :class:`BoundedWeightNorm`.

    Each conv's rho is the mean per-output-channel L2 norm of its current weight (in the
    weight's dtype, float32 at least), so the weights keep their directions and, on average,
    their size. Returns ``module``.
    """
    for conv in [m for m in module.modules() if isinstance(m, nn.Conv2d)]:
        if parametrize.is_parametrized(conv, "weight"):
            raise ValueError(f"{conv} already has a weight parametrization")
        with torch.no_grad():  # a tensor, not a float: models may be built on the meta device
            rho = _channel_norms(conv.weight).mean()
        parametrize.register_parametrization(conv, "weight", BoundedWeightNorm(rho))
    return module
