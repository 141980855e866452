"""MimicNorm (Fei, Dai, Li, Zou & Xiong, AAAI 2021, arXiv:2010.09278).

No per-layer norms. Three ingredients stand in for them:
1. weight mean: selected convs keep zero-mean output filters, projected
   ``W <- W - W.mean(dim=(1, 2, 3))`` at construction and after every optimizer step
   (:func:`attach_weight_mean`); a projection, not a reparametrisation, so loading a
   checkpoint never changes it;
2. one ``BatchNorm1d(num_classes, affine=False)`` on the logits;
3. a learnable scale on each residual branch, ``1.2**2 / k`` (basic block) or
   ``1.2**3 / k`` (bottleneck) for the k-th block, and on ImageNet ResNets' projection
   shortcuts, 1.2.
The architectures build 2 and 3 from the :class:`~zoo.norms.NormSpec` hooks; this module
gives the init, the conv selection and the optimizer hook.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["init_mimic", "attach_weight_mean", "center_filters_", "is_weight_mean_conv"]

# Set on the convs whose filters MimicNorm keeps zero-mean.
_MARK = "zoo_weight_mean"


def is_weight_mean_conv(module: nn.Module) -> bool:
    return getattr(module, _MARK, False)


def _selected(conv: nn.Conv2d, variant: str) -> bool:
    if variant == "imagenet":
        return conv.groups == 1
    # CIFAR models skip tiny filters: the 3x3x3 stem (27 weights) and depthwise convs.
    kh, kw = conv.kernel_size
    return conv.in_channels * kh * kw / conv.groups > 50


@torch.no_grad()
def center_filters_(conv: nn.Conv2d) -> None:
    """Make each output filter of ``conv`` zero-mean, in place."""
    conv.weight.sub_(conv.weight.mean(dim=(1, 2, 3), keepdim=True))


@torch.no_grad()
def init_mimic(model: nn.Module, family: str, variant: str) -> None:
    """The paper's init, then the first weight-mean projection of the selected convs.

    Convs: N(0, 2/fan_in) in ResNets; N(0, 2.8/n) in VGGs with n = fan_in on CIFAR and
    k*k*out_channels on ImageNet. Linear: N(0, 2/in_features). Biases 0.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            fan_in = m.in_channels // m.groups * kh * kw
            if family == "vgg":
                std = math.sqrt(2.8 / (fan_in if variant == "cifar" else kh * kw * m.out_channels))
            else:
                std = math.sqrt(2.0 / fan_in)
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
            if _selected(m, variant):
                setattr(m, _MARK, True)
                center_filters_(m)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.in_features))
            nn.init.zeros_(m.bias)


def attach_weight_mean(model: nn.Module, optimizer: torch.optim.Optimizer) -> RemovableHandle:
    """Re-project MimicNorm's selected conv filters to zero mean after every ``optimizer.step()``.

    Only weights the optimizer trains are projected (frozen ones, ``requires_grad=False`` or
    outside the optimizer, stay as they are). Returns the hook's handle (``.remove()``).
    """
    convs = [m for m in model.modules() if is_weight_mean_conv(m)]
    if not convs:
        raise ValueError("the model has no MimicNorm weight-mean convs: build it with "
                         "norm='mimic', e.g. zoo.create_model('resnet20_mimic')")

    def project(opt, args, kwargs):
        trained = {id(p) for group in opt.param_groups for p in group["params"]}
        for conv in convs:
            if conv.weight.requires_grad and id(conv.weight) in trained:
                center_filters_(conv)

    return optimizer.register_step_post_hook(project)
