"""Evaluation preprocessing: a model family's usual one, and the torchvision transforms that
apply one (a manifest entry's or a checkpoint's ``preprocessing``)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .data import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD

__all__ = ["default_preprocessing", "eval_transforms"]


def default_preprocessing(model: nn.Module) -> dict:
    """The usual evaluation preprocessing of a model's dataset family."""
    size = model.config["input_size"][-1]
    if model.config["dataset"] == "cifar":
        return {"input_size": [3, size, size], "resize": None, "crop": size,
                "interpolation": "bilinear", "mean": list(CIFAR_MEAN), "std": list(CIFAR_STD)}
    return {"input_size": [3, size, size], "resize": round(size / 0.875), "crop": size,
            "interpolation": "bilinear", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def eval_transforms(preprocessing: Mapping[str, Any]):
    """torchvision transforms v2 for evaluation: (resize), center crop, scale to [0, 1], normalize.

    Takes PIL images or uint8 tensors (single or batched).
    """
    from torchvision.transforms import InterpolationMode, v2  # imported on use: slow to import

    steps = [v2.ToImage()]
    if preprocessing.get("resize"):
        steps.append(v2.Resize(preprocessing["resize"],
                               interpolation=InterpolationMode(preprocessing["interpolation"]),
                               antialias=True))
    steps += [v2.CenterCrop(preprocessing["crop"]), v2.ToDtype(torch.float32, scale=True),
              v2.Normalize(preprocessing["mean"], preprocessing["std"])]
    return v2.Compose(steps)
