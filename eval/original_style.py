"""The papers' op sequences, written the way the original repositories compute them,
for the speed comparison in ``benchmark.py`` (numerically they compute the same formulas
as ``zoo.norms``; the tests check the zoo's layers against their own naive formulas).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class OriginalILMGroupNorm(nn.Module):
    """ILM-GN as the original computes it: separate reductions for key and group statistics,
    the encoder applied twice, normalisation and affine as separate passes."""

    def __init__(self, num_channels, num_groups, key_group_size=16, reduction=16, eps=1e-5):
        super().__init__()
        self.num_groups, self.key_group_size, self.eps = num_groups, key_group_size, eps
        key_groups = num_channels // key_group_size
        hidden = key_groups // reduction if key_groups >= reduction else 2
        self.fc_embed = nn.Sequential(nn.Linear(key_groups, hidden, bias=False), nn.ReLU(inplace=True))
        self.fc_weight = nn.Sequential(self.fc_embed, nn.Linear(hidden, key_groups, bias=False),
                                       nn.Sigmoid())
        self.fc_bias = nn.Sequential(self.fc_embed, nn.Linear(hidden, key_groups, bias=False),
                                     nn.Tanh())
        self.weight_bias = nn.Parameter(torch.ones(1, num_channels, 1, 1))
        self.bias_bias = nn.Parameter(torch.zeros(1, num_channels, 1, 1))

    def forward(self, x):
        n, c, h, w = x.shape
        keys = x.view(n, c // self.key_group_size, -1)
        key_mean, key_var = keys.mean(-1), keys.var(-1)
        weight = self.fc_weight(key_var).repeat_interleave(self.key_group_size, 1).view(n, c, 1, 1)
        bias = self.fc_bias(key_mean).repeat_interleave(self.key_group_size, 1).view(n, c, 1, 1)
        groups = x.view(n, self.num_groups, -1)
        mean, var = groups.mean(-1, keepdim=True), groups.var(-1, keepdim=True)
        x = ((groups - mean) / (var + self.eps).sqrt()).view(n, c, h, w)
        return x * (weight + self.weight_bias) + (bias + self.bias_bias)


class OriginalTopKBatchNorm2d(nn.Module):
    """L1 (k=None) or top-k / L-infinity BN as the original computes it, op by op."""

    def __init__(self, num_features, k=None, eps=1e-5):
        super().__init__()
        self.k, self.eps = k, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x):
        c = x.size(1)
        flat = x.transpose(0, 1).contiguous().view(c, -1)
        mean = flat.mean(-1)
        centered = flat - mean.view(c, 1)
        if self.k is None:
            spread = centered.abs().mean(-1) * math.sqrt(math.pi / 2)
        else:
            n = flat.size(1)
            const = 0.5 * (1 + math.sqrt(math.pi * math.log(4))) / math.sqrt(2 * math.log(n))
            spread = centered.abs().topk(self.k, -1)[0].mean(-1) * const
        scale = 1 / (spread + self.eps)
        out = (x - mean.view(1, c, 1, 1)) * scale.view(1, c, 1, 1)
        return out * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
