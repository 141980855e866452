"""The model registry: architectures x norms, model names, builders and ``create_model``.

A model name is ``{arch}_{norm}`` (``resnet50_gn``, ``resnet20_ilm_in``); a bare
architecture name means ``norm="bn"``. Names are parsed by the registered
architecture prefix, never by splitting on ``_``.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Callable, Iterable, Optional, Sequence, Union

from torch import nn

from .features import FeatureMaps
from .heads import check_num_classes
from .norms import NormSpec, get_norm, list_norms
from .weights import (Weights, WeightsError, check_metadata_options, load_weights, read_metadata,
                      resolve_weights, set_model_name_parser, weights_of)

__all__ = [
    "ArchSpec", "register_arch", "get_arch", "list_archs", "list_models",
    "parse_model_name", "create_model", "get_builder",
]

DEFAULT_NORM = "bn"


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """An architecture family member; ``build(norm=NormSpec, num_classes=int, **options)``."""

    name: str
    title: str
    build: Callable[..., nn.Module]
    dataset: str  # what it is built for: "imagenet" or "cifar"
    num_classes: int
    input_size: int  # the training resolution
    min_input_size: int
    paper: str
    options: tuple[str, ...] = ()  # extra keyword arguments users may pass to build


_ARCHS: dict[str, ArchSpec] = {}


def register_arch(spec: ArchSpec) -> ArchSpec:
    if spec.name in _ARCHS:
        raise ValueError(f"an architecture named {spec.name!r} is already registered")
    _ARCHS[spec.name] = spec
    return spec


def list_archs() -> list[str]:
    """Names of all registered architectures, in registration order."""
    return list(_ARCHS)


def get_arch(name: str) -> ArchSpec:
    try:
        return _ARCHS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown architecture {name!r}.{_did_you_mean(name, _ARCHS)} "
                         f"Registered architectures: {', '.join(_ARCHS)}") from None


def list_models(pattern: Union[str, Iterable[str], None] = None) -> list[str]:
    """Every ``{arch}_{norm}`` model name, optionally filtered by shell-style pattern(s).

    Ordered by architecture, then norm, as registered: ``list_models("resnet*_bn")``.
    """
    names = [f"{arch}_{norm}" for arch in _ARCHS for norm in list_norms()]
    if pattern is None:
        return names
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def parse_model_name(name: str) -> tuple[str, str]:
    """``"resnet20_ilm_in"`` -> ``("resnet20", "ilm_in")``; a bare arch name -> ``(arch, "bn")``."""
    if name in _ARCHS:
        return name, DEFAULT_NORM
    norms = set(list_norms())
    if isinstance(name, str):
        for arch in _ARCHS:
            if name.startswith(arch + "_") and name[len(arch) + 1:] in norms:
                return arch, name[len(arch) + 1:]
    raise ValueError(
        f"unknown model {name!r}.{_did_you_mean(name, list_models() + list_archs())} "
        f"Model names are {{arch}}_{{norm}}; see zoo.list_models(), zoo.list_archs() "
        f"and zoo.list_norms()."
    )


set_model_name_parser(parse_model_name)  # the manifest checks entries' model names by this rule


def create_model(
    name: str,
    *,
    norm: Optional[str] = None,
    num_classes: Optional[int] = None,
    weights=None,
    pretrained: bool = False,
    progress: bool = True,
    norm_kwargs: Optional[dict] = None,
    features_only: bool = False,
    out_indices: Union[int, Sequence[int], None] = None,
    **kwargs,
) -> nn.Module:
    """Build a model by name: ``create_model("resnet50_gn")``, ``create_model("resnet56", norm="gn")``.

    Args:
        name: ``{arch}_{norm}`` or a bare architecture name (then ``norm`` picks the norm, default bn).
        norm: a registered norm name; only together with a bare architecture name.
        num_classes: classifier size (default: the architecture's dataset, 1000 or 10); 0: no
            classifier, the model returns pooled features (``model.num_features`` wide).
        weights: ``"DEFAULT"``, a tag, ``"model.tag"``, a :class:`~zoo.weights.Weights`, or a
            local safetensors file / Hub-ready folder. See ``zoo.list_weights()``.
        pretrained: ``True`` is the model's first published (fixed) weights.
        progress: show a progress bar while downloading.
        norm_kwargs: overrides of the norm's own arguments, e.g. ``{"eps": 1e-3}``.
        features_only: return the stages' feature maps instead (a list, as timm's
            ``features_only``), with ``feature_info``: each stage's module, channels, reduction.
        out_indices: which stages ``features_only`` returns, in this order (default: all):
            stage indices, negative from the end, or an int n for the last n (timm's).
        **kwargs: architecture options, e.g. ``zero_init_residual=True`` for ResNets.

    With weights and a different ``num_classes`` everything but the classifier (and a
    logits norm) is loaded; the new head is freshly initialised (for fine-tuning).
    The returned model carries ``model.config``: everything needed to build it again.
    """
    arch_name, name_norm = parse_model_name(name)
    if norm is not None and name != arch_name and norm != name_norm:
        raise ValueError(
            f"{name!r} already names the norm {name_norm!r}; pass norm={norm!r} with the bare "
            f"architecture name instead: create_model({arch_name!r}, norm={norm!r})"
        )
    arch = get_arch(arch_name)
    spec: NormSpec = get_norm(norm if norm is not None else name_norm)
    full_name = f"{arch.name}_{spec.name}"
    source = resolve_weights(full_name, weights, pretrained, progress)
    build_classes = num_classes
    if source is not None:
        # Build what the checkpoint was trained as; a different num_classes gets a new head.
        saved = source.entry if isinstance(source, Weights) else read_metadata(source)
        if saved.get("model", full_name) != full_name:
            raise WeightsError(f"{source} holds weights of {saved['model']}, not {full_name}; "
                               f"use create_model({saved['model']!r}, weights=...)")
        if not isinstance(source, Weights):  # a file's word, not the manifest's: checked first
            check_metadata_options(source, saved, arch.options, spec.kwargs)
        saved_norm_kwargs = saved.get("norm_kwargs", {})
        if norm_kwargs and {**saved_norm_kwargs, **norm_kwargs} != saved_norm_kwargs:
            raise WeightsError(f"the weights were trained with norm_kwargs={saved_norm_kwargs}; "
                               f"norm_kwargs={norm_kwargs} would not fit them")
        norm_kwargs = saved_norm_kwargs
        kwargs = {**saved.get("model_kwargs", {}), **kwargs}
        build_classes = saved.get("num_classes")
    if norm_kwargs:
        spec = spec.with_kwargs(**norm_kwargs)
    unknown = sorted(set(kwargs) - set(arch.options))
    if unknown:
        accepted = ["norm", "num_classes", "weights", "pretrained", "progress", "norm_kwargs",
                    *arch.options]
        raise TypeError(
            f"{full_name} got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(accepted)}"
        )
    for n in (num_classes, build_classes):
        if n is not None:
            check_num_classes(n)
    if out_indices is not None and not features_only:
        raise ValueError("out_indices picks the stages of features_only=True; pass both")
    build_classes = next(n for n in (build_classes, num_classes, arch.num_classes) if n is not None)

    model = arch.build(norm=spec, num_classes=build_classes, **kwargs)
    model.config = {
        "name": full_name,
        "arch": arch.name,
        "norm": spec.name,
        "norm_kwargs": dict(spec.kwargs),
        "norm_rule": spec.rule,
        "num_classes": build_classes,
        "dataset": arch.dataset,
        "input_size": [3, arch.input_size, arch.input_size],
        "min_input_size": [3, arch.min_input_size, arch.min_input_size],
        **kwargs,
    }
    if source is not None:
        load_weights(model, source, progress=progress, num_classes=num_classes)
    return FeatureMaps(model, out_indices) if features_only else model


def get_builder(name: str) -> Callable[..., nn.Module]:
    """A torchvision-style builder for one model name, e.g. ``get_builder("resnet50_gn")``."""
    arch_name, norm_name = parse_model_name(name)
    arch, spec = get_arch(arch_name), get_norm(norm_name)
    canonical = f"{arch_name}_{norm_name}"

    def builder(*, weights=None, progress: bool = True, num_classes: Optional[int] = None,
                pretrained: bool = False, **kwargs) -> nn.Module:
        return create_model(canonical, weights=weights, progress=progress,
                            num_classes=num_classes, pretrained=pretrained, **kwargs)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = _builder_doc(name, arch, spec)
    return builder


def _builder_doc(name: str, arch: ArchSpec, spec: NormSpec) -> str:
    alias = f"Alias of ``{arch.name}_{spec.name}``. " if name == arch.name else ""
    paper = f" ({spec.paper})" if spec.paper else ""
    options = "".join(f", {o}" for o in arch.options)
    dataset = {"imagenet": "ImageNet", "cifar": "CIFAR"}.get(arch.dataset, arch.dataset)
    return f"""{arch.title} with {spec.title} ({spec.name}). {alias}{_weights_doc(f"{arch.name}_{spec.name}")}

    Architecture: {arch.title}, for {dataset} ({arch.paper}).
    Norm: {spec.title}{paper}; each norm slot holds {spec.rule}.
    Input: (N, 3, H, W) RGB with H, W >= {arch.min_input_size}; the usual size is {arch.input_size}x{arch.input_size}.
    Output: {arch.num_classes} logits unless num_classes says otherwise.

    Keyword-only args: weights, progress, num_classes, pretrained, norm_kwargs{options}.
    """


def _weights_doc(model: str) -> str:
    published = weights_of(model)
    if not published:
        return "No pretrained weights are published yet."
    tags = [f"{w.tag}{' (DEFAULT)' if w.entry['default'] else ''}: top-1 "
            f"{w.entry['metrics']['top1']}% on {w.entry['metrics']['split']}" for w in published]
    return "Pretrained weights (weights=TAG): " + "; ".join(tags) + "."


def _did_you_mean(name, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), list(candidates), n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
