"""Normalization methods, chosen by name and passed into any architecture.

A :class:`NormSpec` tells an architecture what to put in each norm slot and which
structural variants the method needs (conv biases, residual scales, a norm on the
logits, its own weight init). Architectures never look at a norm's name.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Optional

from torch import nn

from .common import group_count

__all__ = ["NormSpec", "register_norm", "get_norm", "list_norms"]


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
    rule: str  # how the layer is built for C channels, as shown in the README
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
    # A norm applied to the logits, built for num_classes.
    logits_norm: Optional[Callable[[int], nn.Module]] = None
    # Runs once the architecture has built and initialised itself, to re-initialise or
    # transform it: init_model(model, family ("resnet"/"vgg"), variant ("imagenet"/"cifar")).
    init_model: Optional[Callable[[nn.Module, str, str], None]] = None

    def layer(self, num_channels: int) -> Optional[nn.Module]:
        """The norm layer for one slot of ``num_channels`` channels (``None``: empty slot)."""
        return self.make(num_channels, **self.kwargs)

    def with_kwargs(self, **kwargs: Any) -> "NormSpec":
        """This norm with some of its keyword arguments changed (see ``kwargs``)."""
        unknown = sorted(set(kwargs) - set(self.kwargs))
        if unknown:
            accepted = ", ".join(sorted(self.kwargs)) or "none"
            raise ValueError(
                f"norm {self.name!r} does not take {', '.join(map(repr, unknown))}; "
                f"its norm_kwargs are: {accepted}"
            )
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
))
register_norm(NormSpec(
    name="in",
    title="Instance Normalization",
    rule="InstanceNorm2d(C, affine=True)",
    make=lambda c, eps: nn.InstanceNorm2d(c, eps=eps, affine=True),
    kwargs={"eps": 1e-5},
    paper="Ulyanov, Vedaldi & Lempitsky, arXiv:1607.08022",
))
register_norm(NormSpec(
    name="ln",
    title="Layer Normalization",
    rule="GroupNorm(1, C)",
    make=lambda c, eps: nn.GroupNorm(1, c, eps=eps),
    kwargs={"eps": 1e-5},
    paper="Ba, Kiros & Hinton, arXiv:1607.06450",
))
register_norm(NormSpec(
    name="none",
    title="no normalization",
    rule="empty slot; convs get a bias",
    make=lambda c: None,
    conv_bias=True,
))
