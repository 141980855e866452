"""What every architecture shares: the input check, the last steps of init, timm's feature
and head contract, and gradient checkpointing."""

import contextlib

import torch
from torch import nn

from ..heads import check_num_classes
from ..norms import NormSpec


def check_input(x: torch.Tensor, min_size: int, model: str) -> torch.Tensor:
    """``x``, or a clear error for inputs that are not (N, 3, H, W) with H, W >= min_size.

    Returning ``x`` keeps the check on the data path of a traced graph, which
    create_feature_extractor would otherwise prune."""
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f"{model} expects images as a (N, 3, H, W) tensor with H and W >= {min_size}; "
            f"got shape {tuple(x.shape)}. Add a batch dimension to single images, convert "
            f"grayscale/RGBA to 3-channel RGB, and resize smaller images."
        )
    return x


def apply_norm_init(model: nn.Module, norm: NormSpec, family: str, variant: str) -> None:
    """Run a norm's own init and conv transform once the architecture has initialised itself."""
    if norm.init_model:
        norm.init_model(model, family, variant)
    norm.transform_convs(model)


def new_logits_norm(norm: NormSpec, num_classes: int, like: torch.Tensor):
    """The norm's logits norm for a new class count, on ``like``'s device and dtype (or None)."""
    layer = norm.logits_layer(num_classes)
    return None if layer is None else layer.to(like)


def checkpointed(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` through ``torch.utils.checkpoint``, which runs the forward again in the
    backward: that second run would update the batch norms' running statistics twice, so the
    module's buffers are put back as the first run left them."""
    from torch.utils.checkpoint import checkpoint

    @contextlib.contextmanager
    def restoring_buffers():
        buffers = list(module.buffers())
        saved = [b.clone() for b in buffers]
        try:
            yield
        finally:
            with torch.no_grad():
                for b, s in zip(buffers, saved):
                    b.copy_(s)

    return checkpoint(module, x, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), restoring_buffers()))


class ZooNet(nn.Module):
    """timm's model contract, shared by the architectures.

    ``forward_features(x)`` (the last feature map), ``forward_head(x, pre_logits=False)``,
    ``get_classifier()``, ``reset_classifier(num_classes)`` (0: no classifier, the model
    returns the pooled features), ``set_grad_checkpointing()``, ``num_features`` (the pooled
    width) and ``feature_info`` (per stage: module name, channels, reduction), which
    ``create_model(..., features_only=True)`` uses.

    A subclass builds ``logits_norm`` and the classifier at ``_classifier`` (a module name),
    sets ``_norm``, ``_family``, ``_variant``, ``num_features`` and ``feature_info``, and
    defines ``forward_features``, ``_pool`` and ``_init_classifier``.
    """

    _classifier: str
    grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits from ``forward_features``' map; ``pre_logits=True``: the pooled features."""
        x = self._pool(x)
        if pre_logits:
            return x
        classifier = self.get_classifier()
        x = classifier(x)
        # A classifier swapped for Identity leaves features, which a logits norm must not see.
        if self.logits_norm is not None and not isinstance(classifier, nn.Identity):
            x = self.logits_norm(x)
        return x

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self._classifier)

    def head_names(self) -> list[str]:
        """The modules ``reset_classifier`` replaces: what a linear probe trains."""
        return [self._classifier] + (["logits_norm"] if self.logits_norm is not None else [])

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised classifier (and logits norm) for ``num_classes``; 0 leaves
        none, so the model returns pooled features. ``model.config`` follows."""
        check_num_classes(num_classes)
        like = next(self.parameters())
        if num_classes:
            classifier = nn.Linear(self.num_features, num_classes)
            self._init_classifier(classifier)
            apply_norm_init(classifier, self._norm, self._family, self._variant)
            classifier = classifier.to(like)
        else:
            classifier = nn.Identity()
        parent, _, child = self._classifier.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, child, classifier)
        self.logits_norm = new_logits_norm(self._norm, num_classes, like)
        for module in (classifier, self.logits_norm):
            if module is not None:
                module.train(self.training)  # a new module would be in training mode
        if getattr(self, "config", None) is not None:
            self.config["num_classes"] = num_classes

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward instead of keeping them (less
        memory, about one more forward of time); running statistics update once per step."""
        self.grad_checkpointing = enable

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpointed(module, x)
        return module(x)


