"""Normalization methods, chosen by name and passed into any architecture.

A :class:`NormSpec` tells an architecture what to put in each norm slot and which
structural variants the method needs (conv biases, residual scales, a norm on the
logits, its own weight init, a conv reparametrisation). Architectures never look at a
norm's name.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Optional

from torch import nn

from .common import group_count, same_kind
from .ilm import ILMNorm
from .mimic import init_mimic
from .norm_matters import (L1BatchNorm2d, LpBatchNorm2d, MeanBatchNorm2d, TopKBatchNorm2d,
                           apply_bounded_weight_norm)
from .running_stats import FrozenNorms, freeze_norms, recalibrate_norms

__all__ = ["NormSpec", "register_norm", "get_norm", "list_norms", "create_norm", "replace_norms",
           "prefers_channels_last", "fuse_norms", "recalibrate_norms", "freeze_norms",
           "FrozenNorms"]


@dataclasses.dataclass(frozen=True)
class NormSpec:
    """A normalization method and how it sits in a network.

    ``make(num_channels, **kwargs)`` builds the layer for one norm slot, or returns
    ``None`` for an empty slot (the architecture then leaves the slot out).
    The remaining fields are the structural hooks of methods that change more than
    the norm layer itself; the defaults describe an ordinary norm.
    """

    name: str
    title: str
    rule: str  # how the layer is built for C channels, as shown in the docs' naming table
    make: Callable[..., Optional[nn.Module]]
    kwargs: dict = dataclasses.field(default_factory=dict)
    paper: Optional[str] = None
    # Convs in front of a norm slot carry a bias (a norm-free network needs one).
    conv_bias: bool = False
    # Residual branch scale: (1-based global block index, block expansion) -> initial value.
    residual_scale: Optional[Callable[[int, int], float]] = None
    # Learnable scale on a projection (conv) shortcut: variant ("imagenet"/"cifar") -> initial
    # value, or None for no scale.
    shortcut_scale: Optional[Callable[[str], Optional[float]]] = None
    # Whether a projection shortcut's conv has a bias: (variant, block expansion) -> bool.
    # None: as conv_bias.
    shortcut_conv_bias: Optional[Callable[[str, int], bool]] = None
    # A norm applied to the logits: logits_norm(num_classes, **kwargs), as make; it may return
    # None where the kwargs leave it out (mimic's logits_bn=False).
    logits_norm: Optional[Callable[..., Optional[nn.Module]]] = None
    # Runs once the architecture has built and initialised itself, to re-initialise or
    # transform it: init_model(model, family ("resnet"/"vgg"), variant ("imagenet"/"cifar")).
    init_model: Optional[Callable[[nn.Module, str, str], None]] = None
    # Applied to every conv after init (bounded weight norm reparametrises the weights).
    conv_transform: Optional[Callable[[nn.Conv2d], None]] = None
    # The memory format its models train and evaluate fastest in on CPU: channels_last helps
    # convs and BatchNorm, but GroupNorm-style kernels run several times slower on it.
    # Measured per method by eval/benchmark.py's train suite (eval/results/memory-format/):
    # GroupNorm-style kernels (gn, ilm; in, ln and ilm_in/ilm_ln follow them) and the top-k
    # layers (topkbn, which index entries of the contiguous layout; eval/results/fused-topk/
    # train: 0.89x resnet20_bn, 0.66x channels_last) train faster contiguous; L1 and
    # L-infinity BN with their fused kernels (the trainer's default) in channels_last
    # (eval/results/fused/: l1bn 1.06x resnet20_bn's img/s, 0.85x contiguous;
    # eval/results/fused-linf/: linfbn 0.99x, 0.84x).
    channels_last: bool = True
    # The same in eval mode, where it differs (None: as channels_last). In eval the L1 / top-k
    # layers are BatchNorm's affine kernel, so convs set the format: channels_last (measured:
    # eval/results/inference-format/, l1bn/linfbn 0.75-0.85x BN's img/s -> 0.99-1.05x).
    eval_channels_last: Optional[bool] = None

    def structural_parts(self) -> list[str]:
        """The hooks that make this norm more than a per-slot layer (empty for ordinary norms)."""
        return [f for f in ("residual_scale", "shortcut_scale", "shortcut_conv_bias", "logits_norm",
                            "init_model")
                if getattr(self, f) is not None]

    def transform_convs(self, model: nn.Module) -> None:
        """Apply ``conv_transform`` to every conv of ``model`` (nothing for most norms)."""
        if self.conv_transform:
            for m in list(model.modules()):
                if isinstance(m, nn.Conv2d):
                    self.conv_transform(m)

    def layer(self, num_channels: int) -> Optional[nn.Module]:
        """The norm layer for one slot of ``num_channels`` channels (``None``: empty slot)."""
        return self.make(num_channels, **self.kwargs)

    def logits_layer(self, num_classes: int) -> Optional[nn.Module]:
        """The norm on ``num_classes`` logits (``None``: none, or no classifier)."""
        if not (self.logits_norm and num_classes):
            return None
        return self.logits_norm(num_classes, **self.kwargs)

    def with_kwargs(self, **kwargs: Any) -> "NormSpec":
        """This norm with some of its keyword arguments changed (see ``kwargs``)."""
        unknown = sorted(set(kwargs) - set(self.kwargs))
        if unknown:
            accepted = ", ".join(sorted(self.kwargs)) or "none"
            raise ValueError(
                f"norm {self.name!r} does not take {', '.join(map(repr, unknown))}; "
                f"its norm_kwargs are: {accepted}"
            )
        wrong = [f"{k}={v!r} (its default is {self.kwargs[k]!r})" for k, v in kwargs.items()
                 if not same_kind(v, self.kwargs[k])]
        if wrong:
            raise ValueError(f"norm {self.name!r} takes each argument as the kind of value its default "
                             f"is (an int for a float; a finite number), not {'; '.join(wrong)}")
        return dataclasses.replace(self, kwargs={**self.kwargs, **kwargs})


_NORMS: dict[str, NormSpec] = {}


def register_norm(spec: NormSpec) -> NormSpec:
    """Add a norm to the registry; every architecture then accepts it by name."""
    if spec.name in _NORMS:
        raise ValueError(f"a norm named {spec.name!r} is already registered")
    if not spec.name.isidentifier() or spec.name != spec.name.lower():
        raise ValueError(f"norm names are lower-case identifiers, got {spec.name!r}")
    _NORMS[spec.name] = spec
    return spec


def list_norms() -> list[str]:
    """Names of all registered norms, in registration order."""
    return list(_NORMS)


def get_norm(name: str) -> NormSpec:
    """The registered norm called ``name``; unknown names get close matches."""
    try:
        return _NORMS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), _NORMS, n=3, cutoff=0.4)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown norm {name!r}.{hint} Registered norms: {', '.join(_NORMS)}"
        ) from None


def fuse_norms(model: nn.Module, enabled: bool = True) -> int:
    """Turn the compiled training kernels of ``model``'s norm layers on (or off): ILM-Norm, L1
    and L-infinity batch norm train about as fast as GroupNorm / BatchNorm2d with them, and
    top-k batch norm compiles its statistics and selection. The first training step per input
    shape compiles (seconds on CPU); without a working compiler the layers warn once and stay
    eager. A layer takes part where its ``has_fused_kernels`` is true (a registered norm of your
    own can declare it, with a ``fused`` attribute). Returns how many layers it set."""
    layers = [m for m in model.modules() if getattr(m, "has_fused_kernels", False)]
    for layer in layers:
        layer.fused = enabled
    return len(layers)


def prefers_channels_last(model: nn.Module, training: bool = True) -> bool:
    """Whether a zoo model trains (``training``) or evaluates fastest in channels_last, its
    norm's measured preference; other models: True, as for convs and BatchNorm."""
    norm = (getattr(model, "config", None) or {}).get("norm")
    if norm not in _NORMS:
        return True
    spec = get_norm(norm)
    if not training and spec.eval_channels_last is not None:
        return spec.eval_channels_last
    return spec.channels_last


def _check_per_layer(spec: NormSpec, what: str) -> None:
    parts = spec.structural_parts()
    if parts:
        raise ValueError(
            f"norm {spec.name!r} ({spec.title}) is structural, not a per-layer norm: it needs "
            f"{', '.join(parts)}, which only the zoo's architectures provide, so {what}. Build a "
            f"zoo model instead: zoo.create_model('resnet50', norm={spec.name!r}) or "
            f"zoo.list_models('*_{spec.name}')"
        )


def create_norm(name: str, num_channels: int, **kwargs: Any) -> nn.Module:
    """The layer a registered norm puts in a slot of ``num_channels`` channels, for your own
    networks: ``create_norm("gn", 64)``; ``kwargs`` override the norm's own arguments."""
    spec = get_norm(name)
    _check_per_layer(spec, "it has no single layer to create")
    if spec.conv_transform:
        raise ValueError(
            f"norm {name!r} also reparametrises the convs in front of it, which a lone layer "
            f"cannot do: use zoo.replace_norms(model, {name!r}) on your network instead"
        )
    layer = spec.with_kwargs(**kwargs).layer(num_channels)
    return nn.Identity() if layer is None else layer


def replace_norms(model: nn.Module, name: str, **kwargs: Any) -> nn.Module:
    """Swap every ``BatchNorm2d`` and ``GroupNorm`` of ``model`` (in place) for the registered
    norm ``name``, freshly initialised, on the same device and dtype; returns ``model``.

    Works on any network, e.g. a torchvision ResNet. A norm that reparametrises convs (``bwn``)
    is applied to every ``Conv2d`` too. Structural norms (``mimic``) raise an error.
    """
    spec = get_norm(name)
    _check_per_layer(spec, "it cannot be swapped in layer by layer")
    spec = spec.with_kwargs(**kwargs)
    replaced = []
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, (nn.BatchNorm2d, nn.GroupNorm)):
                continue
            channels = child.num_features if isinstance(child, nn.BatchNorm2d) else child.num_channels
            layer = spec.layer(channels) or nn.Identity()
            like = next(iter(list(child.parameters()) + list(child.buffers())), None)
            if like is not None:
                layer.to(device=like.device, dtype=like.dtype)
            setattr(parent, child_name, layer.train(child.training))
            replaced.append(type(child).__name__)
    if not replaced:
        raise ValueError("the model has no BatchNorm2d or GroupNorm layer to replace")
    spec.transform_convs(model)
    config = getattr(model, "config", None)
    if isinstance(config, dict) and "arch" in config:  # a zoo model: keep its config true
        config.update(name=f"{config['arch']}_{spec.name}", norm=spec.name,
                      norm_kwargs=dict(spec.kwargs), norm_rule=spec.rule,
                      replaced_norms_from=config.get("norm"))
    return model


def _group_norm(num_channels: int, *, max_groups: int, min_group_channels: int, eps: float):
    return nn.GroupNorm(group_count(num_channels, max_groups, min_group_channels), num_channels, eps=eps)


register_norm(NormSpec(
    name="bn",
    title="Batch Normalization",
    rule="BatchNorm2d(C)",
    make=lambda c, eps, momentum: nn.BatchNorm2d(c, eps=eps, momentum=momentum),
    kwargs={"eps": 1e-5, "momentum": 0.1},
    paper="Ioffe & Szegedy, ICML 2015, arXiv:1502.03167",
))
register_norm(NormSpec(
    name="gn",
    title="Group Normalization",
    rule="GroupNorm(min(32, C // 2), C)",
    make=_group_norm,
    kwargs={"max_groups": 32, "min_group_channels": 2, "eps": 1e-5},
    paper="Wu & He, ECCV 2018, arXiv:1803.08494",
    channels_last=False,
))
register_norm(NormSpec(
    name="in",
    title="Instance Normalization",
    rule="InstanceNorm2d(C, affine=True)",
    make=lambda c, eps: nn.InstanceNorm2d(c, eps=eps, affine=True),
    kwargs={"eps": 1e-5},
    paper="Ulyanov, Vedaldi & Lempitsky, arXiv:1607.08022",
    channels_last=False,
))
register_norm(NormSpec(
    name="ln",
    title="Layer Normalization",
    rule="GroupNorm(1, C)",
    make=lambda c, eps: nn.GroupNorm(1, c, eps=eps),
    kwargs={"eps": 1e-5},
    paper="Ba, Kiros & Hinton, arXiv:1607.06450",
    channels_last=False,
))
register_norm(NormSpec(
    name="none",
    title="no normalization",
    rule="empty slot; convs get a bias",
    make=lambda c: None,
    conv_bias=True,
))

_ILM_PAPER = "Jia, Chen & Chen, CVPR 2019, arXiv:1904.03516"
_ILM_KWARGS = {"key_group_size": 16, "reduction": 16, "eps": 1e-5}
register_norm(NormSpec(
    name="ilm",
    title="ILM-Norm over Group Norm",
    rule="ILMNorm(C, base='gn'): GroupNorm(min(32, C // 2), C) statistics, per-sample gain and shift",
    make=lambda c, **kw: ILMNorm(c, "gn", **kw),
    kwargs={"max_groups": 32, "min_group_channels": 2, **_ILM_KWARGS},
    paper=_ILM_PAPER,
    channels_last=False,
))
register_norm(NormSpec(
    name="ilm_in",
    title="ILM-Norm over Instance Norm",
    rule="ILMNorm(C, base='in'): per-channel statistics, per-sample gain and shift",
    make=lambda c, **kw: ILMNorm(c, "in", **kw),
    kwargs=dict(_ILM_KWARGS),
    paper=_ILM_PAPER,
    channels_last=False,
))
register_norm(NormSpec(
    name="ilm_ln",
    title="ILM-Norm over Layer Norm",
    rule="ILMNorm(C, base='ln'): per-sample statistics, per-sample gain and shift",
    make=lambda c, **kw: ILMNorm(c, "ln", **kw),
    kwargs=dict(_ILM_KWARGS),
    paper=_ILM_PAPER,
    channels_last=False,
))


def _mimic_logits_norm(num_classes: int, logits_bn: bool) -> Optional[nn.Module]:
    # logits_bn=False is the paper's "weight mean only" ablation (Table 2).
    return nn.BatchNorm1d(num_classes, affine=False) if logits_bn else None


register_norm(NormSpec(
    name="mimic",
    title="MimicNorm",
    rule="empty slot; zero-mean conv filters, residual scales, BatchNorm1d on the logits "
         "(logits_bn=False: none)",
    make=lambda c, logits_bn: None,
    kwargs={"logits_bn": True},
    paper="Fei, Dai, Li, Zou & Xiong, AAAI 2021, arXiv:2010.09278",
    conv_bias=True,
    residual_scale=lambda k, expansion: 1.2 ** (2 if expansion == 1 else 3) / k,
    shortcut_scale=lambda variant: 1.2 if variant == "imagenet" else None,
    # The authors' CIFAR bottleneck builds its shortcut conv with bias=False; their CIFAR basic
    # block and ImageNet blocks keep a bias there, like every other conv.
    shortcut_conv_bias=lambda variant, expansion: variant == "imagenet" or expansion == 1,
    logits_norm=_mimic_logits_norm,
    init_model=init_mimic,
))

_NM_PAPER = "Hoffer, Banner, Golan & Soudry, NeurIPS 2018, arXiv:1803.01814"
_BN_KWARGS = {"eps": 1e-5, "momentum": 0.1}
register_norm(NormSpec(
    name="l1bn",
    title="L1 Batch Norm",
    rule="L1BatchNorm2d(C): scale 1 / (sqrt(pi/2) mean(abs(x - mu)) + eps)",
    make=lambda c, **kw: L1BatchNorm2d(c, **kw),
    kwargs=dict(_BN_KWARGS),
    paper=_NM_PAPER,
))
register_norm(NormSpec(
    name="linfbn",
    title="L-infinity Batch Norm",
    rule="TopKBatchNorm2d(C, k=1): scale from max(abs(x - mu))",
    make=lambda c, **kw: TopKBatchNorm2d(c, k=1, **kw),
    kwargs=dict(_BN_KWARGS),
    paper=_NM_PAPER,
))
register_norm(NormSpec(
    name="topkbn",
    title="Top-k Batch Norm",
    rule="TopKBatchNorm2d(C, k=10): scale from the mean of the 10 largest abs(x - mu)",
    make=lambda c, **kw: TopKBatchNorm2d(c, **kw),
    kwargs={"k": 10, **_BN_KWARGS},
    paper=_NM_PAPER,
    channels_last=False,
    eval_channels_last=True,
))
register_norm(NormSpec(
    name="lpbn",
    title="Lp Batch Norm",
    rule="LpBatchNorm2d(C, p=2): scale (mean(abs(x - mu)^p) + eps)^(-1/p)",
    make=lambda c, **kw: LpBatchNorm2d(c, **kw),
    kwargs={"p": 2.0, **_BN_KWARGS},
    paper=_NM_PAPER,
))
register_norm(NormSpec(
    name="meanbn",
    title="Mean-only Batch Norm",
    rule="MeanBatchNorm2d(C): x - mu + bias",
    make=lambda c, momentum: MeanBatchNorm2d(c, momentum=momentum),
    kwargs={"momentum": 0.1},
    paper=_NM_PAPER,
))
register_norm(NormSpec(
    name="bwn",
    title="Bounded Weight Norm",
    rule="MeanBatchNorm2d(C); every conv weight rho * v / norm(v) per output channel",
    make=lambda c, momentum: MeanBatchNorm2d(c, momentum=momentum),
    kwargs={"momentum": 0.1},
    paper=_NM_PAPER,
    conv_transform=apply_bounded_weight_norm,
))
