"""``create_model(..., features_only=True)``: a zoo model's stages as a feature extractor."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn


class FeatureMaps(nn.Module):
    """``create_model(..., features_only=True)``: the model cut after its last chosen stage,
    returning the chosen stages' feature maps as a list (timm's contract), with their
    ``feature_info``. Built with torchvision's ``create_feature_extractor``."""

    def __init__(self, model: nn.Module, out_indices: Optional[Sequence[int]] = None):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        stages = model.feature_info
        out_indices = tuple(range(len(stages))) if out_indices is None else tuple(out_indices)
        if not out_indices or any(isinstance(i, bool) or not isinstance(i, int)
                                  or not -len(stages) <= i < len(stages) for i in out_indices):
            raise ValueError(f"out_indices must be stage indices in 0..{len(stages) - 1} (or "
                             f"negative from the end); {model.config['name']} has stages "
                             f"{[s['module'] for s in stages]}, got {out_indices!r}")
        self.out_indices = tuple(i % len(stages) for i in out_indices)
        self.feature_info = [dict(stages[i]) for i in self.out_indices]
        self.body = create_feature_extractor(
            model, {s["module"]: f"stage{i}" for i, s in zip(self.out_indices, self.feature_info)})
        self.config = {**model.config, "features_only": True, "out_indices": list(self.out_indices)}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x).values())
