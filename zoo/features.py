"""``create_model(..., features_only=True)``: a zoo model's stages as a feature extractor."""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn


class FeatureMaps(nn.Module):
    """``create_model(..., features_only=True)``: the model cut after its last chosen stage,
    returning the chosen stages' feature maps as a list (timm's contract), in the order of
    ``out_indices``, with their ``feature_info`` in the same order. Built with torchvision's
    ``create_feature_extractor``."""

    def __init__(self, model: nn.Module, out_indices: Union[int, Sequence[int], None] = None):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        stages = model.feature_info
        self.out_indices = stage_indices(out_indices, stages, model.config["name"])
        self.feature_info = [dict(stages[i]) for i in self.out_indices]
        self.body = create_feature_extractor(
            model, {stages[i]["module"]: f"stage{i}" for i in self.out_indices})
        self.config = {**model.config, "features_only": True, "out_indices": list(self.out_indices)}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.body(x)  # in the model's order; the list follows out_indices
        return [maps[f"stage{i}"] for i in self.out_indices]


def stage_indices(out_indices: Union[int, Sequence[int], None], stages: list[dict],
                  name: str) -> tuple[int, ...]:
    """``out_indices`` as stage indices 0..n-1: all stages for None, the last n for an int n
    (timm's convention), a sequence's indices in its order with negatives counted from the
    end. Anything else, a duplicate included, is one ValueError."""
    count = len(stages)
    if out_indices is None:
        return tuple(range(count))
    if isinstance(out_indices, bool):
        problem = "a bool"
    elif isinstance(out_indices, int):
        if 1 <= out_indices <= count:
            return tuple(range(count - out_indices, count))
        problem = f"{out_indices} stages, of {count}"
    elif not isinstance(out_indices, (list, tuple, range)):
        problem = f"a {type(out_indices).__name__}, not a list or tuple of stage indices"
    elif not out_indices:
        problem = "no stage"
    else:
        bad = [i for i in out_indices if isinstance(i, bool) or not isinstance(i, int)
               or not -count <= i < count]
        chosen = () if bad else tuple(i % count for i in out_indices)
        twice = sorted({i for i in chosen if chosen.count(i) > 1})
        if chosen and not twice:
            return chosen
        problem = (f"{bad[0]!r} is not a stage" if bad else
                   ", ".join(f"stage {i} twice" for i in twice))
    raise ValueError(
        f"out_indices must be stage indices 0..{count - 1} (negative from the end), each once, or a "
        f"number of last stages 1..{count}; {name} has stages {[s['module'] for s in stages]}, "
        f"got {out_indices!r}: {problem}")
