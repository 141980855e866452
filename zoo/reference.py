"""The naive form of each NormZoo method: its formula in plain torch ops, autograd for gradients.

An independent check on the optimized layers of ``zoo.norms`` (closed-form backwards, fused
and compiled kernels): this module imports none of them. Each function reads like the method's
description in METHODS.md (section 1 ILM-Norm, 2 MimicNorm, 3 Norm Matters), computes in the
dtype it is given (the tests give it float64) and keeps no state beyond the running statistics
it is handed, which it updates in place as ``F.batch_norm`` does.

The two ``Original*`` modules are the papers' op sequences, op for op: the "original" rows of
``eval/benchmark.py`` time them against the optimized layers.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EPS", "L1_TO_STD", "channel_rows",
    "key_statistics", "standardize_groups", "ilm_norm",
    "l1_scale", "top_k_scale", "lp_scale", "scaled_batch_norm",
    "filter_norms", "bwn_rho", "bounded_weight",
    "center_filters", "residual_scale_init", "mimic_residual", "logits_batch_norm",
    "OriginalILMGroupNorm", "OriginalTopKBatchNorm2d",
]

EPS = 1e-5
# E|x - mu| = sigma * sqrt(2 / pi) for Gaussian x: this factor turns the mean deviation into sigma.
L1_TO_STD = math.sqrt(math.pi / 2)


def _per_channel(values: torch.Tensor) -> torch.Tensor:
    """A (C,) tensor shaped (1, C, 1, 1), to broadcast against (N, C, H, W)."""
    return values.view(1, -1, 1, 1)


def channel_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (C, N*H*W): each row holds one channel's values."""
    return x.transpose(0, 1).reshape(x.size(1), -1)


def _update_running(running: torch.Tensor, batch: torch.Tensor, momentum: float) -> None:
    """PyTorch's convention, in place: ``running = (1 - momentum) * running + momentum * batch``."""
    running.copy_((1 - momentum) * running + momentum * batch.detach())


# ---------------------------------------------------------------------------------------------
# ILM-Norm (METHODS.md section 1)

def key_statistics(x: torch.Tensor, key_group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and *unbiased* variance per sample and key group of ``key_group_size`` consecutive
    channels, each (N, C / key_group_size)."""
    keys = x.reshape(x.size(0), x.size(1) // key_group_size, -1)
    return keys.mean(-1), keys.var(-1, unbiased=True)


def standardize_groups(x: torch.Tensor, num_groups: int, eps: float) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` per sample and group of C / num_groups channels, the
    variance *unbiased*: the base norm of ILM (GN: G groups, IN: G = C, LN: G = 1)."""
    n, c, h, w = x.shape
    groups = x.reshape(n, num_groups, -1)
    mean = groups.mean(-1, keepdim=True)
    var = groups.var(-1, unbiased=True, keepdim=True)
    return ((groups - mean) / torch.sqrt(var + eps)).reshape(n, c, h, w)


def ilm_norm(x: torch.Tensor, encoder: torch.Tensor, gain_decoder: torch.Tensor,
             shift_decoder: torch.Tensor, weight_bias: torch.Tensor, bias_bias: torch.Tensor, *,
             num_groups: int, key_group_size: int = 16, eps: float = EPS) -> torch.Tensor:
    """ILM-Norm: the base norm's output times a per-sample gain plus a per-sample shift, both
    predicted from the input's key statistics. No running statistics: train = eval.

    encoder (e, Gk), gain_decoder and shift_decoder (Gk, e) are Linear weights without bias,
    Gk = C / key_group_size; weight_bias and bias_bias are (C,).
    """
    key_mean, key_var = key_statistics(x, key_group_size)
    gain = torch.sigmoid(torch.relu(key_var @ encoder.T) @ gain_decoder.T)
    shift = torch.tanh(torch.relu(key_mean @ encoder.T) @ shift_decoder.T)
    weight = gain.repeat_interleave(key_group_size, dim=1) + weight_bias  # (N, C)
    bias = shift.repeat_interleave(key_group_size, dim=1) + bias_bias
    x_hat = standardize_groups(x, num_groups, eps)
    return x_hat * weight[:, :, None, None] + bias[:, :, None, None]


# ---------------------------------------------------------------------------------------------
# Norm Matters (METHODS.md section 3). A scale maps the (C, n) deviations A = |x - mu| of each
# channel's n = N*H*W values to s, one per channel.

def l1_scale(deviation: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """L1 BN: ``s = 1 / (sqrt(pi/2) * mean(A) + eps)``."""
    return 1 / (L1_TO_STD * deviation.mean(1) + eps)


def top_k_scale(deviation: torch.Tensor, k: int, eps: float = EPS) -> torch.Tensor:
    """L-infinity (k = 1) / top-k BN: ``s = 1 / (const * mean(topk(A, k)) + eps)`` with
    ``const = 0.5 * (1 + sqrt(pi * ln 4)) / sqrt(2 * ln n)``; fewer than k values (n < k)
    average all n of them."""
    n = deviation.size(1)
    const = 0.5 * (1 + math.sqrt(math.pi * math.log(4))) / math.sqrt(2 * math.log(n))
    return 1 / (const * deviation.topk(min(k, n), 1).values.mean(1) + eps)


def lp_scale(deviation: torch.Tensor, p: float, eps: float = EPS) -> torch.Tensor:
    """Lp BN: ``s = (mean(A^p) + eps)^(-1/p)``; p = 2 is BN with the biased variance."""
    return (deviation.pow(p).mean(1) + eps).pow(-1 / p)


def scaled_batch_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: torch.Tensor,
                      scale: Optional[Callable[..., torch.Tensor]], *,
                      running_mean: Optional[torch.Tensor] = None,
                      running_scale: Optional[torch.Tensor] = None, training: bool = True,
                      momentum: float = 0.1, eps: float = EPS) -> torch.Tensor:
    """A Norm Matters batch norm: ``y = (x - mu) * s * weight + bias`` per channel, s =
    ``scale(A, eps)`` (:func:`l1_scale`, :func:`top_k_scale`, :func:`lp_scale`, with k or p
    bound); ``scale=None`` is mean-only BN, ``y = x - mu + bias`` (weight None).

    Training mode takes mu and s from the batch and, where running buffers are given, moves
    them by PyTorch's momentum rule (in place); eval mode takes them from the buffers.
    """
    if training:
        rows = channel_rows(x)
        mean = rows.mean(1)
        s = None if scale is None else scale((rows - mean[:, None]).abs(), eps=eps)
        if running_mean is not None:
            _update_running(running_mean, mean, momentum)
        if running_scale is not None and s is not None:
            _update_running(running_scale, s, momentum)
    else:
        mean, s = running_mean, running_scale
    if scale is None:
        return x - _per_channel(mean) + _per_channel(bias)
    return (x - _per_channel(mean)) * _per_channel(s * weight) + _per_channel(bias)


def filter_norms(weight: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each output channel's filter, shaped to broadcast against ``weight``."""
    return weight.flatten(1).norm(dim=1).view(-1, *[1] * (weight.dim() - 1))


def bwn_rho(weight: torch.Tensor) -> torch.Tensor:
    """Bounded weight norm's fixed scalar: the mean per-channel norm of the initial weight."""
    return weight.flatten(1).norm(dim=1).mean()


def bounded_weight(v: torch.Tensor, rho) -> torch.Tensor:
    """Bounded weight norm: ``w_c = rho * v_c / ||v_c||`` for each output channel c."""
    return rho * v / filter_norms(v)


# ---------------------------------------------------------------------------------------------
# MimicNorm (METHODS.md section 2)

def center_filters(weight: torch.Tensor) -> torch.Tensor:
    """The weight-mean projection: ``W - W.mean(dim=(1, 2, 3))``, each output filter zero-mean."""
    return weight - weight.mean(dim=(1, 2, 3), keepdim=True)


def residual_scale_init(block_index: int, branch_convs: int) -> float:
    """The residual scale's initial value, ``1.2 ** branch_convs / k`` for the k-th block
    (1-based, over the whole network): 2 convs in a basic block, 3 in a bottleneck."""
    return 1.2 ** branch_convs / block_index


def mimic_residual(branch: torch.Tensor, shortcut: torch.Tensor, scale,
                   shortcut_scale=None) -> torch.Tensor:
    """A MimicNorm block's output, ``relu(s * F(x) + shortcut(x))``; ImageNet ResNets also
    scale the projection shortcut."""
    if shortcut_scale is not None:
        shortcut = shortcut_scale * shortcut
    return F.relu(scale * branch + shortcut)


def logits_batch_norm(logits: torch.Tensor, running_mean: Optional[torch.Tensor] = None,
                      running_var: Optional[torch.Tensor] = None, *, training: bool = True,
                      momentum: float = 0.1, eps: float = EPS) -> torch.Tensor:
    """The last BN, ``BatchNorm1d(num_classes, affine=False)`` on the (N, classes) logits:
    ``(z - mean) / sqrt(var + eps)`` over the batch, the variance biased; as in PyTorch, the
    running variance (where buffers are given) moves by the *unbiased* batch variance."""
    if training:
        mean, var = logits.mean(0), logits.var(0, unbiased=False)
        if running_mean is not None:
            _update_running(running_mean, mean, momentum)
            _update_running(running_var, logits.var(0, unbiased=True), momentum)
    else:
        mean, var = running_mean, running_var
    return (logits - mean) / torch.sqrt(var + eps)


# ---------------------------------------------------------------------------------------------
# The papers' op sequences, as modules (the benchmark's "original" rows)

class OriginalILMGroupNorm(nn.Module):
    """ILM-GN as the original computes it: separate reductions for key and group statistics,
    the encoder applied twice, normalisation and affine as separate passes. Registered as the
    original registers it: one encoder in three places (``fc_embed.0``, ``fc_weight.0.0``,
    ``fc_bias.0.0``), (1, C, 1, 1) offsets."""

    def __init__(self, num_channels, num_groups=32, key_group_size=16, reduction=16, eps=EPS):
        super().__init__()
        self.num_groups, self.key_group_size, self.eps = num_groups, key_group_size, eps
        key_groups = num_channels // key_group_size
        hidden = key_groups // reduction if key_groups >= reduction else 2
        self.fc_embed = nn.Sequential(nn.Linear(key_groups, hidden, bias=False),
                                      nn.ReLU(inplace=True))
        self.fc_weight = nn.Sequential(self.fc_embed, nn.Linear(hidden, key_groups, bias=False),
                                       nn.Sigmoid())
        self.fc_bias = nn.Sequential(self.fc_embed, nn.Linear(hidden, key_groups, bias=False),
                                     nn.Tanh())
        self.weight_bias = nn.Parameter(torch.ones(1, num_channels, 1, 1))
        self.bias_bias = nn.Parameter(torch.zeros(1, num_channels, 1, 1))

    def forward(self, x):
        n, c = x.shape[:2]
        key_mean, key_var = key_statistics(x, self.key_group_size)
        weight = self.fc_weight(key_var).repeat_interleave(self.key_group_size, 1).view(n, c, 1, 1)
        bias = self.fc_bias(key_mean).repeat_interleave(self.key_group_size, 1).view(n, c, 1, 1)
        x = standardize_groups(x, self.num_groups, self.eps)
        return x * (weight + self.weight_bias) + (bias + self.bias_bias)


class OriginalTopKBatchNorm2d(nn.Module):
    """L1 (k=None) or top-k / L-infinity BN (training mode) as the original computes it, op by
    op: the normalised x first, then the affine."""

    def __init__(self, num_features, k=None, eps=EPS):
        super().__init__()
        self.k, self.eps = k, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x):
        c = x.size(1)
        flat = channel_rows(x)
        mean = flat.mean(-1)
        deviation = (flat - mean.view(c, 1)).abs()
        if self.k is None:
            scale = l1_scale(deviation, self.eps)
        else:
            scale = top_k_scale(deviation, self.k, self.eps)
        out = (x - _per_channel(mean)) * _per_channel(scale)
        return out * _per_channel(self.weight) + _per_channel(self.bias)
