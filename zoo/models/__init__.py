"""Architectures; importing this module registers them."""

from .resnet import BasicBlock, Bottleneck, PadShortcut, ResNet
from .vgg import VGG, VGG_CONFIGS

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "PadShortcut", "VGG", "VGG_CONFIGS"]
