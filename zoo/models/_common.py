"""What every architecture shares: the input check and the last steps of init."""

import torch
from torch import nn

from ..norms import NormSpec


def check_input(x: torch.Tensor, min_size: int, model: str) -> None:
    """Raise a clear error for inputs that are not (N, 3, H, W) with H, W >= min_size."""
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f"{model} expects images as a (N, 3, H, W) tensor with H and W >= {min_size}; "
            f"got shape {tuple(x.shape)}. Add a batch dimension to single images, convert "
            f"grayscale/RGBA to 3-channel RGB, and resize smaller images."
        )


def apply_norm_init(model: nn.Module, norm: NormSpec, family: str, variant: str) -> None:
    """Run a norm's own init and conv transform once the architecture has initialised itself."""
    if norm.init_model:
        norm.init_model(model, family, variant)
    norm.transform_convs(model)


def new_logits_norm(norm: NormSpec, num_classes: int, like: torch.Tensor):
    """The norm's logits norm for a new class count, on ``like``'s device and dtype (or None)."""
    return norm.logits_norm(num_classes).to(like) if norm.logits_norm else None
