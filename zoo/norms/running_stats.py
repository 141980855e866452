"""Running statistics after training: re-estimate them, or freeze them.

The norms that keep running statistics are the batch norms: every ``nn.BatchNorm*`` (``bn``,
MimicNorm's logits norm) and the Norm Matters layers (``l1bn``, ``linfbn``, ``topkbn`` and
``lpbn`` keep ``running_mean`` and ``running_scale``; mean-only BN, in ``meanbn`` and ``bwn``,
``running_mean``). The per-sample norms (GroupNorm, InstanceNorm, LayerNorm, ILM-Norm) compute
the same in training and eval mode and keep nothing. A layer of your own takes part when it
has a ``running_mean`` buffer (and, to be recalibrated, BatchNorm's ``momentum`` and
``reset_running_stats()``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
from typing import Iterable, Optional

import torch
from torch import nn

from ..evaluate import keeps_running_statistics
from .ilm import ILMNorm

__all__ = ["recalibrate_norms", "freeze_norms", "FrozenNorms", "norms_with_statistics"]

_PER_SAMPLE = (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
               nn.InstanceNorm3d, ILMNorm)
_WHICH = ("the norms that keep them are bn (nn.BatchNorm*, also MimicNorm's logits norm), "
          "l1bn, linfbn, topkbn, lpbn, meanbn and bwn; gn, in, ln and ilm* keep none")


def norms_with_statistics(model: nn.Module) -> dict[str, nn.Module]:
    """``model``'s norm layers that keep running statistics, by module name."""
    return {name: m for name, m in model.named_modules() if keeps_running_statistics(m)}


@torch.no_grad()
def recalibrate_norms(model: nn.Module, batches: Iterable,
                      num_batches: Optional[int] = None) -> int:
    """Re-estimate the running statistics of every norm of ``model`` that keeps them, as their
    plain average over ``batches`` (after averaging weights, SWA or EMA, or on new data); the
    other layers are untouched. Returns how many layers it re-estimated.

    ``torch.optim.swa_utils.update_bn`` for every norm in the zoo, not only ``nn.BatchNorm``:
    ``batches`` holds input tensors or ``(input, target)`` pairs, moved to the device of the
    norms' statistics; ``num_batches`` stops after that many. Only the norms run in training
    mode (the rest of the model in eval mode: no dropout, and bwn leaves its weights alone);
    every module gets its mode back, and on an error every statistic its old value.
    """
    if num_batches is not None and (type(num_batches) is not int or num_batches < 1):
        raise ValueError(f"num_batches must be a positive integer (or None for every batch), "
                         f"got {num_batches!r}")
    named = norms_with_statistics(model)
    if not named:
        raise ValueError(f"the model has no norm with running statistics to re-estimate: {_WHICH}")
    unknown = [name for name, m in named.items()
               if not (hasattr(m, "momentum") and hasattr(m, "reset_running_stats"))]
    if unknown:
        raise ValueError(f"layer {unknown[0]!r} keeps running statistics but has no momentum "
                         f"or reset_running_stats(), which recalibrate_norms sets and calls: give "
                         f"it both, as nn.BatchNorm2d has them")
    layers = list(named.values())
    device = layers[0].running_mean.device
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    saved = {m: [b.clone() for b in m.buffers()] for m in layers}
    calls = dict.fromkeys(layers, 0)

    def cumulative(layer, args):
        # Momentum 1/k at a layer's k-th call makes its running buffers the average of the k
        # batches. update_bn gets this from momentum=None, which BatchNorm turns into
        # 1/num_batches_tracked; the Norm Matters layers have no such counter (adding one
        # would change their state_dict), so the hook counts.
        calls[layer] += 1
        if calls[layer] == 1:
            layer.reset_running_stats()  # a NaN in the old statistics would survive 0 * NaN
        layer.momentum = 1 / calls[layer]

    hooks = [m.register_forward_pre_hook(cumulative) for m in layers]
    for m in model.modules():  # set directly: a frozen norm's train() stays in eval mode
        m.training = m in momenta
    try:
        for batch in itertools.islice(batches, num_batches):
            if isinstance(batch, (list, tuple)) and batch:
                batch = batch[0]
            if not isinstance(batch, torch.Tensor):
                raise TypeError(f"each batch must be an input tensor or an (input, target) pair, "
                                f"got {type(batch).__name__}")
            model(batch.to(device))
    except BaseException:
        for m, buffers in saved.items():
            for buffer, old in zip(m.buffers(), buffers):
                buffer.copy_(old)
        raise
    finally:
        for hook in hooks:
            hook.remove()
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, training in modes.items():
            m.training = training
    if not any(calls.values()):
        raise ValueError("batches gave no batch (or none reached a norm): pass an iterable of "
                         "input tensors or (input, target) pairs, e.g. a DataLoader")
    return sum(1 for count in calls.values() if count)


@dataclasses.dataclass
class FrozenNorms:
    """What :func:`freeze_norms` did: the norms it froze and the per-sample norms it left as
    they were, each as {module name: layer type}."""

    frozen: dict[str, str]
    per_sample: dict[str, str]
    affine_frozen: bool

    def __str__(self) -> str:
        if self.frozen:
            affine = "frozen" if self.affine_frozen else "training"
            text = (f"froze {_counted(self.frozen)}: running statistics in training mode too, "
                    f"affine parameters {affine}")
        else:
            text = "no norm with running statistics to freeze"
        if self.per_sample:
            text += (f"; left {_counted(self.per_sample)} as they are (per-sample statistics, "
                     f"nothing to freeze)")
        return text


def _counted(layers: dict[str, str]) -> str:
    counts = collections.Counter(layers.values())
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())


def _stay_in_eval(layer: nn.Module, mode: bool = True) -> nn.Module:
    """A frozen norm's ``train``: eval mode whatever the mode asked."""
    return nn.Module.train(layer, False)


def freeze_norms(model: nn.Module, freeze_affine: bool = True) -> FrozenNorms:
    """Make every norm of ``model`` with running statistics compute with them in training mode
    too, as torchvision's ``FrozenBatchNorm2d`` does for BN (fine-tuning at a few images per
    batch); with ``freeze_affine`` their weights and biases get ``requires_grad=False``.

    In place: each such layer stays in eval mode through ``model.train()`` (its ``train`` is
    replaced), so forward, ``state_dict`` keys and checkpoints are as before. Per-sample norms
    (gn, in, ln, ilm*) have nothing to freeze and are left as they are. Returns what was
    frozen and what was left (readable with ``print``).
    """
    frozen = norms_with_statistics(model)
    for layer in frozen.values():
        layer.train = functools.partial(_stay_in_eval, layer)
        layer.eval()
        if freeze_affine:
            for p in layer.parameters(recurse=False):
                p.requires_grad_(False)
    per_sample = {name: type(m).__name__ for name, m in model.named_modules()
                  if isinstance(m, _PER_SAMPLE) and name not in frozen}
    return FrozenNorms({name: type(m).__name__ for name, m in frozen.items()}, per_sample,
                       freeze_affine)
