"""The input check every model runs before its first conv."""

import torch


def check_input(x: torch.Tensor, min_size: int, model: str) -> None:
    """Raise a clear error for inputs that are not (N, 3, H, W) with H, W >= min_size."""
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f"{model} expects images as a (N, 3, H, W) tensor with H and W >= {min_size}; "
            f"got shape {tuple(x.shape)}. Add a batch dimension to single images, convert "
            f"grayscale/RGBA to 3-channel RGB, and resize smaller images."
        )

