"""What the norm layers share: the group rule and the low-precision policy."""

from __future__ import annotations

import functools

import torch

__all__ = ["group_count", "fp32_statistics"]


def group_count(num_channels: int, max_groups: int, min_group_channels: int) -> int:
    """``min(max_groups, C // min_group_channels)`` groups; C must split evenly into them."""
    groups = min(max_groups, num_channels // min_group_channels)
    if groups < 1 or num_channels % groups:
        raise ValueError(
            f"cannot split {num_channels} channels into groups = min({max_groups}, "
            f"{num_channels} // {min_group_channels}) = {groups}: the channel count must be "
            f"a positive multiple of the group count; pass norm_kwargs with other "
            f"max_groups / min_group_channels"
        )
    return groups


def fp32_statistics(forward):
    """Run a norm's forward with statistics in float32 whatever the input precision.

    Under autocast, or on a bf16/fp16 model, reductions in half precision lose accuracy or
    overflow (Norm Matters' point is stability in low precision: keep it). The wrapped forward
    sees autocast disabled and a float32 (or float64) input; its output is cast back to the
    input's dtype, as an ordinary layer's would be.
    """

    @functools.wraps(forward)
    def wrapped(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = forward(self, x if x.dtype in (torch.float32, torch.float64) else x.float())
        return out.to(x.dtype)

    return wrapped
