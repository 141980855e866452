"""The error of the weights code, and how its messages list state-dict keys."""

from __future__ import annotations

from typing import Iterable


class WeightsError(RuntimeError):
    """Weights that cannot be found, fetched, verified or loaded; the message says what to do."""


# Where users import it from and tracebacks name it: zoo.weights.WeightsError, as before the
# package split.
WeightsError.__module__ = "zoo.weights"


def short_list(keys: Iterable[str], n: int = 5) -> str:
    """State-dict keys for a message, sorted: the first ``n`` and how many more,
    ``"[a, b, ... 3 more]"``."""
    keys = sorted(keys)  # safetensors' load_model returns sets
    return "[" + ", ".join(keys[:n]) + (f", ... {len(keys) - n} more" if len(keys) > n else "") + "]"
