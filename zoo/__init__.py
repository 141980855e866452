"""NormZoo: normalization methods from the literature as ready PyTorch models.

    >>> from zoo import create_model, list_models
    >>> model = create_model("resnet56", norm="gn", num_classes=100)
    >>> list_models("resnet*_bn")[:2]
    ['resnet18_bn', 'resnet34_bn']

Every model name is also a builder: ``zoo.resnet50_gn(num_classes=10)``. Pretrained weights:
``create_model("resnet20_ilm", weights="DEFAULT")``, ``list_weights()``, ``get_weight(name)``.
"""

from . import models  # noqa: F401  (registers the architectures)
from .fold import FoldReport, fold_norms
from .norms import (FrozenNorms, NormSpec, create_norm, freeze_norms, fuse_norms, get_norm,
                    list_norms, prefers_channels_last, recalibrate_norms, register_norm,
                    replace_norms)
from .norms.mimic import attach_weight_mean
from .registry import (ArchSpec, create_model, get_arch, get_builder, list_archs, list_models,
                       parse_model_name, register_arch)
from .weights import (Weights, WeightsError, get_model_weights, get_weight, list_weights,
                      load_weights, read_checkpoint, save_checkpoint)

__version__ = "0.1.0"

__all__ = [
    "create_model", "list_models", "list_archs", "list_norms", "parse_model_name",
    "get_builder", "get_arch", "get_norm", "register_arch", "register_norm",
    "create_norm", "replace_norms", "prefers_channels_last", "fuse_norms", "attach_weight_mean",
    "recalibrate_norms", "freeze_norms", "FrozenNorms",
    "fold_norms", "FoldReport",
    "get_weight", "list_weights", "get_model_weights", "save_checkpoint", "read_checkpoint",
    "load_weights", "Weights", "WeightsError", "ArchSpec", "NormSpec", "push_to_hub",
    "__version__",
]


def __getattr__(name: str):
    if name == "push_to_hub":  # zoo.hub imports huggingface_hub: only when asked for
        from .hub import push_to_hub

        return push_to_hub
    # Builders such as ``zoo.resnet50_gn`` are made on first use from the registry.
    try:
        builder = get_builder(name)
    except ValueError:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}") from None
    globals()[name] = builder
    return builder
