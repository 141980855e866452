"""ResNets: ImageNet ResNet-18...152, the CIFAR ResNet-20...110 of He et al., and the
CIFAR ResNet-18/50 of the ILM-Norm and MimicNorm papers: one implementation, any norm.

Module names follow torchvision, so ``norm="bn"`` ImageNet models load torchvision
state_dicts unchanged.
"""

from __future__ import annotations

import functools
import itertools
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..norms import NormSpec, get_norm
from ..registry import ArchSpec, register_arch
from ._common import ZooNet, apply_norm_init, check_input

torch.fx.wrap("check_input")

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "PadShortcut"]


def _norm_slot(norm: NormSpec, channels: int) -> nn.Module:
    layer = norm.layer(channels)
    return nn.Identity() if layer is None else layer


def _scalar(value: Optional[float]) -> Optional[nn.Parameter]:
    return None if value is None else nn.Parameter(torch.tensor(float(value)))


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=bias)


class PadShortcut(nn.Module):
    """He et al.'s option-A shortcut: subsample by the stride, then pad zero channels
    equally on both sides of the channel dimension (16 -> 32 adds 8 before and 8 after)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if (out_channels - in_channels) % 2:
            raise ValueError(f"option-A shortcut needs an even channel increase, got "
                             f"{in_channels} -> {out_channels}")
        self.stride = stride
        self.pad = (out_channels - in_channels) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad={self.pad}"


class _Block(nn.Module):
    """What both residual blocks share: the optional branch and shortcut scales."""

    def _init_scales(self, residual_scale: Optional[float], shortcut_scale: Optional[float]):
        self.residual_scale = _scalar(residual_scale)
        self.shortcut_scale = _scalar(shortcut_scale)

    def _merge(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        if self.shortcut_scale is not None:
            identity = identity * self.shortcut_scale
        if self.residual_scale is not None:
            out = out * self.residual_scale
        return self.relu(out + identity)


class BasicBlock(_Block):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, *, norm: NormSpec,
                 residual_scale: Optional[float] = None, shortcut_scale: Optional[float] = None):
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 3, stride, norm.conv_bias)
        self.bn1 = _norm_slot(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3, 1, norm.conv_bias)
        self.bn2 = _norm_slot(norm, planes)
        self.downsample = downsample
        self.stride = stride
        self._init_scales(residual_scale, shortcut_scale)

    @property
    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self._merge(self.bn2(self.conv2(out)), x)


class Bottleneck(_Block):
    """torchvision's ResNet V1.5 bottleneck: the stride sits in the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, *, norm: NormSpec,
                 residual_scale: Optional[float] = None, shortcut_scale: Optional[float] = None):
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 1, 1, norm.conv_bias)
        self.bn1 = _norm_slot(norm, planes)
        self.conv2 = _conv(planes, planes, 3, stride, norm.conv_bias)
        self.bn2 = _norm_slot(norm, planes)
        self.conv3 = _conv(planes, planes * self.expansion, 1, 1, norm.conv_bias)
        self.bn3 = _norm_slot(norm, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self._init_scales(residual_scale, shortcut_scale)

    @property
    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self._merge(self.bn3(self.conv3(out)), x)


class ResNet(ZooNet):
    """A ResNet with any registered norm.

    Args:
        block, layers: block type and blocks per stage.
        norm: a norm name or :class:`~zoo.norms.NormSpec`.
        widths: channels of each stage (before the block expansion).
        variant: ``"imagenet"`` (7x7 stride-2 stem + max-pool, inputs >= 64) or
            ``"cifar"`` (3x3 stride-1 stem, no max-pool, inputs >= 32).
        shortcut: ``"projection"`` (1x1 conv + norm where shapes change, as torchvision)
            or ``"pad"`` (He et al.'s parameter-free option A).
        zero_init_residual: start the last norm gain of every block at 0.
    """

    def __init__(self, block: type, layers: Sequence[int], *, norm: Union[str, NormSpec] = "bn",
                 num_classes: int = 1000, widths: Sequence[int] = (64, 128, 256, 512),
                 variant: str = "imagenet", shortcut: str = "projection",
                 zero_init_residual: bool = False):
        super().__init__()
        norm = get_norm(norm) if isinstance(norm, str) else norm
        if variant not in ("imagenet", "cifar") or shortcut not in ("projection", "pad"):
            raise ValueError(f"variant must be 'imagenet' or 'cifar' and shortcut 'projection' "
                             f"or 'pad'; got {variant!r}, {shortcut!r}")
        self.min_input_size = 64 if variant == "imagenet" else 32
        self.num_stages = len(layers)
        self._norm, self._variant = norm, variant

        self.inplanes = widths[0]
        if variant == "imagenet":
            self.conv1 = _conv(3, self.inplanes, 7, 2, norm.conv_bias)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = _conv(3, self.inplanes, 3, 1, norm.conv_bias)
            self.maxpool = nn.Identity()
        self.bn1 = _norm_slot(norm, self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        block_index = itertools.count(1)  # 1-based global block index, for residual scales
        for i, (width, blocks) in enumerate(zip(widths, layers)):
            stage = self._make_stage(block, width, blocks, 1 if i == 0 else 2,
                                     norm, variant, shortcut, block_index)
            self.add_module(f"layer{i + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = self.inplanes
        self.fc = nn.Linear(self.inplanes, num_classes) if num_classes else nn.Identity()
        self.logits_norm = norm.logits_layer(num_classes)
        self._classifier, self._family = "fc", "resnet"
        stem_stride = 2 if variant == "imagenet" else 1
        self.feature_info = [{"module": "relu", "num_chs": widths[0], "reduction": stem_stride}] + [
            {"module": f"layer{i + 1}", "num_chs": widths[i] * block.expansion,
             "reduction": stem_stride * (2 if variant == "imagenet" else 1) * 2 ** i}
            for i in range(len(layers))]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        apply_norm_init(self, norm, "resnet", variant)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, _Block):
                    weight = getattr(m.last_norm, "weight", None)
                    if not isinstance(weight, nn.Parameter):
                        raise ValueError(f"zero_init_residual needs a norm with a learnable "
                                         f"gain; norm {norm.name!r} has none")
                    nn.init.zeros_(weight)

    def _init_classifier(self, fc: nn.Linear) -> None:
        pass  # PyTorch's default Linear init, as at construction

    def _make_stage(self, block: type, planes: int, blocks: int, stride: int, norm: NormSpec,
                    variant: str, shortcut: str, block_index: Iterator[int]) -> nn.Sequential:
        out_planes = planes * block.expansion
        layers = []
        for i in range(blocks):
            downsample = None
            shortcut_scale = None
            if i == 0 and (stride != 1 or self.inplanes != out_planes):
                if shortcut == "pad":
                    downsample = PadShortcut(self.inplanes, out_planes, stride)
                else:
                    bias = (norm.shortcut_conv_bias(variant, block.expansion)
                            if norm.shortcut_conv_bias else norm.conv_bias)
                    conv = _conv(self.inplanes, out_planes, 1, stride, bias)
                    slot = norm.layer(out_planes)
                    downsample = nn.Sequential(conv) if slot is None else nn.Sequential(conv, slot)
                    shortcut_scale = norm.shortcut_scale(variant) if norm.shortcut_scale else None
            k = next(block_index)
            residual_scale = norm.residual_scale(k, block.expansion) if norm.residual_scale else None
            layers.append(block(self.inplanes, planes, stride if i == 0 else 1, downsample,
                                norm=norm, residual_scale=residual_scale,
                                shortcut_scale=shortcut_scale))
            self.inplanes = out_planes
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = check_input(x, self.min_input_size, type(self).__name__)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.num_stages + 1):
            stage = getattr(self, f"layer{i}")
            if self.grad_checkpointing:
                for block in stage:
                    x = self._run(block, x)
            else:
                x = stage(x)
        return x

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(x), 1)


_HE = "He, Zhang, Ren & Sun, CVPR 2016, arXiv:1512.03385"
_OPTIONS = ("zero_init_residual",)

for _depth, _block, _layers in [(18, BasicBlock, (2, 2, 2, 2)), (34, BasicBlock, (3, 4, 6, 3)),
                                (50, Bottleneck, (3, 4, 6, 3)), (101, Bottleneck, (3, 4, 23, 3)),
                                (152, Bottleneck, (3, 8, 36, 3))]:
    register_arch(ArchSpec(
        name=f"resnet{_depth}", title=f"ResNet-{_depth}",
        build=functools.partial(ResNet, _block, _layers),
        dataset="imagenet", num_classes=1000, input_size=224, min_input_size=64,
        paper=_HE, options=_OPTIONS,
    ))

for _depth in (20, 32, 44, 56, 110):
    _n = (_depth - 2) // 6
    register_arch(ArchSpec(
        name=f"resnet{_depth}", title=f"CIFAR ResNet-{_depth}",
        build=functools.partial(ResNet, BasicBlock, (_n, _n, _n), widths=(16, 32, 64),
                                variant="cifar", shortcut="pad"),
        dataset="cifar", num_classes=10, input_size=32, min_input_size=32,
        paper=f"{_HE}, option-A shortcut", options=_OPTIONS,
    ))

for _depth, _block, _layers in [(18, BasicBlock, (2, 2, 2, 2)), (50, Bottleneck, (3, 4, 6, 3))]:
    register_arch(ArchSpec(
        name=f"cifar_resnet{_depth}", title=f"CIFAR ResNet-{_depth} (3x3 stem)",
        build=functools.partial(ResNet, _block, _layers, variant="cifar"),
        dataset="cifar", num_classes=10, input_size=32, min_input_size=32,
        paper=f"{_HE}; CIFAR variant of the ILM-Norm and MimicNorm papers", options=_OPTIONS,
    ))
