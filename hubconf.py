"""torch.hub entry points for NormZoo: one per registered model name, plus bare
architecture names (``resnet50`` is ``resnet50_bn``).

    torch.hub.list("<repo>")
    torch.hub.load("<repo>", "resnet50_gn", num_classes=10)
    torch.hub.load("<repo>", "resnet20_ilm", weights="DEFAULT")   # see zoo.list_weights()
"""

dependencies = ["torch", "safetensors"]  # checked by torch.hub before loading

import os as _os
import sys as _sys

_ZOO_DIR = _os.path.join(_os.path.dirname(_os.path.realpath(__file__)), "zoo")


def _import_zoo():
    # torch.hub puts this repo first on sys.path, but a module named "zoo" that is already
    # imported (PyPI has an unrelated one, or another NormZoo checkout) would be reused silently.
    loaded = _sys.modules.get("zoo")
    if loaded is None:
        import zoo as loaded
    origin = _os.path.dirname(_os.path.realpath(getattr(loaded, "__file__", None) or "?"))
    if origin != _ZOO_DIR:
        raise ImportError(
            f"this NormZoo hub repo needs its own 'zoo' package ({_ZOO_DIR}), but a different "
            f"module named 'zoo' is already imported from {origin}. Load the hub model in a fresh "
            f"Python process, or remove the other 'zoo' from sys.modules (or uninstall it) first."
        )
    return loaded


_zoo = _import_zoo()
globals().update({name: _zoo.get_builder(name) for name in _zoo.list_models() + _zoo.list_archs()})
