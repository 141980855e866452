"""VGG-11...19 for ImageNet and the CIFAR VGG of the MimicNorm paper: one implementation, any norm.

Module names follow torchvision: with ``norm="bn"`` the model matches ``vggNN_bn``, with
``norm="none"`` the plain ``vggNN`` (an empty norm slot leaves no module behind, so the
``features`` indices shift exactly as torchvision's do).
"""

from __future__ import annotations

import functools
from typing import Sequence, Union

import torch
from torch import nn

from ..norms import NormSpec, get_norm
from ..registry import ArchSpec, register_arch
from ._common import ZooNet, apply_norm_init, check_input

torch.fx.wrap("check_input")

__all__ = ["VGG", "VGG_CONFIGS"]

# Output channels of each 3x3 conv; "M" is a 2x2 max-pool (torchvision's configs A, B, D, E).
VGG_CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"),
}


class VGG(ZooNet):
    """VGG with any registered norm after each conv.

    ``variant="imagenet"`` pools the features to 7x7 (inputs >= 64); ``"cifar"`` feeds the
    1x1x512 map left by five max-pools on 32x32 inputs to a 512-input classifier.
    Convs always carry a bias, as torchvision's do.
    """

    def __init__(self, config: Sequence[Union[int, str]], *, norm: Union[str, NormSpec] = "bn",
                 num_classes: int = 1000, variant: str = "imagenet", dropout: float = 0.5):
        super().__init__()
        norm = get_norm(norm) if isinstance(norm, str) else norm
        if variant not in ("imagenet", "cifar"):
            raise ValueError(f"variant must be 'imagenet' or 'cifar', got {variant!r}")
        self.min_input_size = 64 if variant == "imagenet" else 32
        self._norm, self._variant = norm, variant
        layers: list[nn.Module] = []
        channels = 3
        self.feature_info = []
        for v in config:
            if v == "M":  # a stage ends at the ReLU before each pool
                self.feature_info.append({"module": f"features.{len(layers) - 1}",
                                          "num_chs": channels, "reduction": 2 ** len(self.feature_info)})
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers.append(nn.Conv2d(channels, v, kernel_size=3, padding=1))
            slot = norm.layer(v)
            if slot is not None:
                layers.append(slot)
            layers.append(nn.ReLU(inplace=True))
            channels = v
        self.features = nn.Sequential(*layers)
        pool = 7 if variant == "imagenet" else 1
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(channels * pool * pool, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes) if num_classes else nn.Identity(),
        )
        self.num_features = 4096
        self.logits_norm = norm.logits_layer(num_classes)
        self._classifier, self._family = f"classifier.{len(self.classifier) - 1}", "vgg"

        # Only the VGG's own layers: norms (ILM has Linear layers) initialise themselves.
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for m in self.classifier:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
        apply_norm_init(self, norm, "vgg", variant)

    def _init_classifier(self, fc: nn.Linear) -> None:
        nn.init.normal_(fc.weight, 0, 0.01)
        nn.init.zeros_(fc.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = check_input(x, self.min_input_size, type(self).__name__)
        if not self.grad_checkpointing:
            return self.features(x)
        start = 0
        for stage in self.feature_info:  # the stages' runs of layers, each with its pool
            end = int(stage["module"].split(".")[1]) + 2
            x = self._run(self.features[start:end], x)
            start = end
        return x

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled map through all but the last Linear: timm's VGG pre-logits, 4096 wide."""
        x = torch.flatten(self.avgpool(x), 1)
        for layer in self.classifier[:-1]:
            x = layer(x)
        return x


_SIMONYAN = "Simonyan & Zisserman, ICLR 2015, arXiv:1409.1556"

for _depth in (11, 13, 16, 19):
    register_arch(ArchSpec(
        name=f"vgg{_depth}", title=f"VGG-{_depth}",
        build=functools.partial(VGG, VGG_CONFIGS[_depth]),
        dataset="imagenet", num_classes=1000, input_size=224, min_input_size=64,
        paper=_SIMONYAN, options=("dropout",),
    ))
for _depth in (11, 16):
    register_arch(ArchSpec(
        name=f"cifar_vgg{_depth}", title=f"CIFAR VGG-{_depth}",
        build=functools.partial(VGG, VGG_CONFIGS[_depth], variant="cifar"),
        dataset="cifar", num_classes=10, input_size=32, min_input_size=32,
        paper=f"{_SIMONYAN}; CIFAR variant of the MimicNorm paper", options=("dropout",),
    ))
