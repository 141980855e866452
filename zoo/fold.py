"""Folding eval-mode norms into the conv or linear before them, as inference engines expect.

In eval mode BatchNorm and every Norm Matters batch norm is a fixed per-channel affine map,
``(x - running_mean) * scale + bias``, so the conv in front can absorb it:
``torch.nn.utils.fusion``'s helpers do the arithmetic, and each method only says what its
scale is. Per-sample norms (GN, IN, LN, ILM-Norm) compute their statistics from each input
and cannot fold; they stay, and the report says so.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
from typing import Optional

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from .norms.ilm import ILMNorm
from .norms.norm_matters import L1BatchNorm2d, LpBatchNorm2d, MeanBatchNorm2d, TopKBatchNorm2d

__all__ = ["FoldReport", "fold_norms", "by_reason"]

_SCALED = (L1BatchNorm2d, TopKBatchNorm2d, LpBatchNorm2d)
_PER_SAMPLE = (nn.GroupNorm, nn.LayerNorm, ILMNorm)
_INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclasses.dataclass
class FoldReport:
    """What :func:`fold_norms` did: ``folded`` (norm, the conv or linear it went into),
    ``kept`` (norm, why it stays) and ``materialised`` (weights whose parametrization,
    such as bounded weight norm, became a plain tensor)."""

    folded: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    kept: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    materialised: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"folded {len(self.folded)} norm(s), kept {len(self.kept)}, "
                 f"materialised {len(self.materialised)} parametrised weight(s)"]
        if self.folded:
            lines.append("  folded: " + ", ".join(f"{norm} into {into}" for norm, into in self.folded))
        lines += [f"  kept, {why}: {', '.join(names)}" for why, names in by_reason(self.kept).items()]
        if self.materialised:
            lines.append("  materialised: " + ", ".join(self.materialised))
        return "\n".join(lines)


def by_reason(layers: list[tuple[str, str]]) -> dict[str, list[str]]:
    """``{reason: [layer, ...]}`` from ``(layer, reason)`` pairs, in first-seen order."""
    grouped: dict[str, list[str]] = {}
    for name, why in layers:
        grouped.setdefault(why, []).append(name)
    return grouped


def _affine(norm: nn.Module) -> Optional[tuple]:
    """The fusion helpers' ``(running_mean, running_var, eps, weight, bias)`` that make
    ``norm``'s eval forward, or None for a layer with no fixed affine map."""
    if isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d)) and norm.running_mean is not None:
        return norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
    # Unit variance and eps 0 leave the helpers' scale weight * rsqrt(var + eps) = weight.
    if isinstance(norm, _SCALED):  # (x - mean) * running_scale * weight + bias
        unit = torch.ones_like(norm.running_mean)
        return norm.running_mean, unit, 0.0, norm.running_scale * norm.weight, norm.bias
    if isinstance(norm, MeanBatchNorm2d):  # x - mean + bias
        return norm.running_mean, torch.ones_like(norm.running_mean), 0.0, None, norm.bias
    return None


def _why_not_foldable(norm: nn.Module) -> Optional[str]:
    """Why a layer without a fixed affine map (``_affine`` None) cannot fold, or None if it
    is not a norm."""
    if isinstance(norm, _PER_SAMPLE) or (isinstance(norm, _INSTANCE_NORMS) and norm.running_mean is None):
        return "per-sample statistics: it normalises each input by its own, so no fixed map folds"
    if isinstance(norm, _BATCH_NORMS) and norm.running_mean is None:
        return "no running statistics (track_running_stats=False): it normalises each batch by its own"
    if "running_mean" in norm._buffers:
        raise ValueError(f"fold_norms does not know the norm type {type(norm).__name__}, which "
                         f"keeps running statistics; fold it yourself or replace it with a "
                         f"registered norm (zoo.list_norms())")
    return None


class _NormsAsLeaves(torch.fx.Tracer):
    """torch.fx's tracer, keeping every norm one call in the graph (a norm of the user's
    own, a BatchNorm subclass too), so none is traced through unseen."""

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return ("running_mean" in m._buffers or isinstance(m, _PER_SAMPLE + _INSTANCE_NORMS)
                or super().is_leaf_module(m, qualified_name))


def _previous(node: torch.fx.Node, modules: dict, calls: collections.Counter) -> Optional[str]:
    """The conv or linear that alone feeds ``node`` and feeds nothing else, or None; a layer
    called more than once (shared) folds nowhere."""
    source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
    if not (isinstance(source, torch.fx.Node) and source.op == "call_module"
            and len(source.users) == 1 and calls[source.target] == calls[node.target] == 1):
        return None
    return source.target if isinstance(modules[source.target], (nn.Conv2d, nn.Linear)) else None


@torch.no_grad()
def _fold_into(layer: nn.Module, norm: nn.Module) -> None:
    """Fold ``norm``'s affine map into ``layer``, computing in float64."""
    mean, var, eps, weight, bias = (None if t is None else t.double() if torch.is_tensor(t) else t
                                    for t in _affine(norm))
    if isinstance(layer, nn.Linear):
        weight = torch.ones_like(mean) if weight is None else weight
        bias = torch.zeros_like(mean) if bias is None else bias
        fused_w, fused_b = fuse_linear_bn_weights(layer.weight.double(), _double(layer.bias),
                                                  mean, var, eps, weight, bias)
    else:
        fused_w, fused_b = fuse_conv_bn_weights(layer.weight.double(), _double(layer.bias),
                                                mean, var, eps, weight, bias)
    dtype, requires_grad = layer.weight.dtype, layer.weight.requires_grad
    layer.weight = nn.Parameter(fused_w.to(dtype), requires_grad)
    layer.bias = nn.Parameter(fused_b.to(dtype), requires_grad)


def _double(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.double()


def fold_norms(model: nn.Module, inplace: bool = False) -> tuple[nn.Module, FoldReport]:
    """Fold every eval-mode norm of ``model`` that is a fixed per-channel affine map (bn, the
    Norm Matters batch norms, MimicNorm's logits norm) into the conv or linear before it, and
    put ``nn.Identity`` in its place; materialise parametrised weights (bounded weight norm).

    Returns ``(folded model, report)``; the folded model computes what ``model`` does, up to
    rounding. Per-sample norms (gn, in, ln, ilm*) and a norm whose input is not the output of
    a conv (or linear) used by nothing else stay, and the report says why. ``model`` must be
    in eval mode; it is copied unless ``inplace``.
    """
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(f"fold_norms needs a model in eval mode (folding uses the running "
                         f"statistics), but {training[0]} is in training mode; call model.eval() first")
    if not inplace:
        model = copy.deepcopy(model)
    report = FoldReport()
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            # A deep copy shares the parametrized class with the original, and removing a
            # parametrization edits that class: give this module a class of its own first.
            cls = type(module)
            module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            for tensor_name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
                report.materialised.append(f"{name}.{tensor_name}")
    try:
        graph = _NormsAsLeaves().trace(model)
    except Exception as e:
        raise ValueError(f"fold_norms finds each norm's conv by tracing the model with torch.fx, "
                         f"which failed for {type(model).__name__}: {type(e).__name__}: {e}") from None
    modules = dict(model.named_modules())
    calls = collections.Counter(n.target for n in graph.nodes if n.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        norm = modules[node.target]
        foldable = _affine(norm) is not None
        why = None if foldable else _why_not_foldable(norm)
        if not foldable and why is None:
            continue  # not a norm
        if foldable:
            previous = _previous(node, modules, calls)
            if previous is None:
                why = ("its input is not the output of a conv or linear layer that feeds only it "
                       "(and each called once)")
            elif isinstance(norm, nn.BatchNorm1d) != isinstance(modules[previous], nn.Linear):
                why = f"{previous} is a {type(modules[previous]).__name__}, which it cannot fold into"
        if why is not None:
            report.kept.append((f"{node.target} ({type(norm).__name__})", why))
            continue
        _fold_into(modules[previous], norm)
        parent, _, child = node.target.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Identity())
        report.folded.append((f"{node.target} ({type(norm).__name__})", previous))
    return model, report
