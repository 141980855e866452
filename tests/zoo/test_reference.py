"""zoo.reference, the naive formulas the layers are tested against: tiny cases worked by hand,
PyTorch's own BatchNorm1d for the logits BN, and the papers' op sequences against the formulas."""

import math

import pytest
import torch
from torch import nn

from zoo import reference

EPS = reference.EPS


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_channel_rows_hold_each_channels_values():
    x = torch.arange(12.0).view(2, 3, 1, 2)  # sample 0: 0..5, sample 1: 6..11
    assert reference.channel_rows(x).tolist() == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10, 11]]


def test_ilm_by_hand():
    # One sample, two channels of three values, key groups of one channel, IN (two groups).
    x = _t([[0, 1, 2], [2, 2, 8]]).view(1, 2, 1, 3)  # means 1 and 4, unbiased variances 1 and 12
    key_mean, key_var = reference.key_statistics(x, 1)
    assert key_mean.tolist() == [[1, 4]] and key_var.tolist() == [[1, 12]]
    encoder = _t([[1, 0]])           # e = 1: reads channel 0's statistic
    gain_decoder = _t([[1], [0]])    # gain: sigmoid(var_0) for channel 0, sigmoid(0) = 0.5 for 1
    shift_decoder = _t([[0], [-1]])  # shift: 0 for channel 0, tanh(-mean_0) for channel 1
    y = reference.ilm_norm(x, encoder, gain_decoder, shift_decoder, _t([1, 2]), _t([0, 3]),
                           num_groups=2, key_group_size=1)
    x_hat = [[-1 / math.sqrt(1 + EPS), 0, 1 / math.sqrt(1 + EPS)],
             [-2 / math.sqrt(12 + EPS), -2 / math.sqrt(12 + EPS), 4 / math.sqrt(12 + EPS)]]
    weight = [1 / (1 + math.exp(-1)) + 1, 0.5 + 2]
    bias = [0, math.tanh(-1) + 3]
    expected = [[v * weight[c] + bias[c] for v in x_hat[c]] for c in range(2)]
    torch.testing.assert_close(y.view(2, 3), _t(expected), rtol=1e-14, atol=1e-14)


def test_norm_matters_scales_by_hand():
    deviation = _t([[3, 0, 1], [2, 2, 2]])
    torch.testing.assert_close(reference.l1_scale(deviation),
                               1 / (math.sqrt(math.pi / 2) * _t([4 / 3, 2]) + EPS))
    const = 0.5 * (1 + math.sqrt(math.pi * math.log(4))) / math.sqrt(2 * math.log(3))
    torch.testing.assert_close(reference.top_k_scale(deviation, 1), 1 / (const * _t([3, 2]) + EPS))
    # k = 10 > n = 3: all three values
    torch.testing.assert_close(reference.top_k_scale(deviation, 10),
                               1 / (const * _t([4 / 3, 2]) + EPS))
    torch.testing.assert_close(reference.lp_scale(deviation, 2), (_t([10 / 3, 4]) + EPS) ** -0.5)


def test_scaled_batch_norm_by_hand_with_running_statistics():
    x = _t([1, 3]).view(2, 1, 1, 1)  # one channel: mean 2, deviations 1 and 1
    weight, bias = _t([2]), _t([0.5])
    s = 1 / (math.sqrt(math.pi / 2) + EPS)
    running_mean, running_scale = _t([0]), _t([1])
    y = reference.scaled_batch_norm(x, weight, bias, reference.l1_scale,
                                    running_mean=running_mean, running_scale=running_scale)
    torch.testing.assert_close(y.flatten(), _t([-2 * s + 0.5, 2 * s + 0.5]))
    torch.testing.assert_close(running_mean, _t([0.2]))
    torch.testing.assert_close(running_scale, _t([0.9 + 0.1 * s]))
    y = reference.scaled_batch_norm(_t([4]).view(1, 1, 1, 1), weight, bias, reference.l1_scale,
                                    running_mean=running_mean, running_scale=running_scale,
                                    training=False)
    torch.testing.assert_close(y.flatten(), _t([3.8 * (0.9 + 0.1 * s) * 2 + 0.5]))
    y = reference.scaled_batch_norm(x, None, bias, None, running_mean=running_mean)  # mean-only
    torch.testing.assert_close(y.flatten(), _t([-0.5, 1.5]))
    torch.testing.assert_close(running_mean, _t([0.38]))


def test_bounded_weight_norm_by_hand():
    v = _t([[3, 4], [1, 0]]).view(2, 2, 1, 1)  # filter norms 5 and 1
    assert reference.filter_norms(v).flatten().tolist() == [5, 1]
    assert reference.bwn_rho(v).item() == 3
    assert reference.bounded_weight(v, 10).flatten().tolist() == [6, 8, 10, 0]


def test_mimic_pieces_by_hand():
    weight = _t([[1, 2, 3, 6], [1, 1, 1, 1]]).view(2, 1, 2, 2)
    assert reference.center_filters(weight).flatten().tolist() == [-2, -1, 0, 3, 0, 0, 0, 0]
    assert reference.residual_scale_init(2, 3) == pytest.approx(0.864)
    assert reference.residual_scale_init(1, 2) == pytest.approx(1.44)
    branch, shortcut = _t([1, -3]), _t([0.5, 0.5])
    assert reference.mimic_residual(branch, shortcut, 2).tolist() == [2.5, 0]
    assert reference.mimic_residual(branch, shortcut, 2, 4).tolist() == [4, 0]
    y = reference.logits_batch_norm(_t([[1], [3]]))
    torch.testing.assert_close(y.flatten(), _t([-1, 1]) / math.sqrt(1 + EPS))


def test_logits_batch_norm_is_batchnorm1d_without_affine():
    bn = nn.BatchNorm1d(5, affine=False).double()
    running_mean, running_var = _t([0] * 5), _t([1] * 5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        z = torch.randn(7, 5, generator=gen, dtype=torch.float64) * 3 + 1
        torch.testing.assert_close(reference.logits_batch_norm(z, running_mean, running_var), bn(z))
    torch.testing.assert_close(running_mean, bn.running_mean)
    torch.testing.assert_close(running_var, bn.running_var)
    z = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        reference.logits_batch_norm(z, running_mean, running_var, training=False), bn.eval()(z))


@pytest.mark.parametrize("num_groups", [32, 2])
def test_original_ilm_group_norm_computes_the_formula(num_groups):
    torch.manual_seed(0)
    layer = reference.OriginalILMGroupNorm(64, num_groups).double()
    with torch.no_grad():
        for param in layer.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    x = torch.randn(3, 64, 4, 5, dtype=torch.float64) * 2 + 1
    expected = reference.ilm_norm(
        x, layer.fc_embed[0].weight, layer.fc_weight[1].weight, layer.fc_bias[1].weight,
        layer.weight_bias.flatten(), layer.bias_bias.flatten(), num_groups=num_groups)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    assert len(layer.state_dict()) == 7  # the encoder three times, as the original saves it


@pytest.mark.parametrize("k, scale", [(None, reference.l1_scale),
                                      (1, lambda a, eps: reference.top_k_scale(a, 1, eps)),
                                      (10, lambda a, eps: reference.top_k_scale(a, 10, eps))])
def test_original_top_k_batch_norm_computes_the_formula(k, scale):
    layer = reference.OriginalTopKBatchNorm2d(3, k).double()
    with torch.no_grad():
        layer.weight.copy_(_t([0.5, -1, 2]))
        layer.bias.copy_(_t([0.1, 0, -0.3]))
    x = torch.randn(4, 3, 5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = reference.scaled_batch_norm(x, layer.weight, layer.bias, scale)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
