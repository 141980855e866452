"""Old import paths that keep working for one release after a name moves."""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable


def moved_names(module: str, moved: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for names that moved out of ``module``: ``moved`` maps each name
    to the module that holds it now. Using an old path warns (``DeprecationWarning``)."""
    def __getattr__(name: str) -> Any:
        if name in moved:
            warnings.warn(f"{module}.{name} moved to {moved[name]}.{name}; the old name goes in "
                          f"the next release", DeprecationWarning, stacklevel=2)
            return getattr(importlib.import_module(moved[name]), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
