"""A model's classification head: its class count, its state_dict keys, and a fresh one for
fine-tuning.

Its own module, below both the registry and the weights, so loading weights with another class
count does not import the architectures (which import the registry, which imports the weights).
"""

import logging

from torch import nn

_log = logging.getLogger("zoo")


def new_head(model: nn.Module, num_classes: int) -> list[str]:
    """Give a loaded model a freshly initialised ``num_classes`` head (classifier and logits
    norm) for fine-tuning; returns and logs the re-initialised keys."""
    model.reset_classifier(num_classes)  # model.config follows
    reinitialized = head_keys(model)
    _log.warning("%s: loaded %s with a new %d-class head; re-initialised %s",
                 model.config["name"], model.config.get("weights"), num_classes, ", ".join(reinitialized))
    return reinitialized


def head_keys(model: nn.Module) -> list[str]:
    """The state_dict keys of the model's head (classifier and logits norm, ``head_names``)."""
    heads = model.head_names()
    return sorted(k for k in model.state_dict() if any(k.startswith(f"{n}.") for n in heads))


def check_num_classes(num_classes) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be a non-negative integer (0: no classifier, the "
                         f"model returns pooled features), got {num_classes!r}")
