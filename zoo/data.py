"""Datasets in their standard on-disk layouts, read without trusting the files.

CIFAR-10/100 come as pickles in the "python version" layout; a pickle can run code,
so they are read with an unpickler that builds only numpy arrays and plain containers.
``download_cifar`` fetches them with torchvision's download (never its unpickling reader).
"""

from __future__ import annotations

import functools
import os
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np
import torch

__all__ = ["CifarSplit", "load_cifar", "download_cifar", "CIFAR_DOWNLOADS", "CIFAR_MEAN", "CIFAR_STD", "IMAGENET_MEAN", "IMAGENET_STD",
           "CIFAR10_CLASSES", "imagenet_classes", "categories", "SHARED_DATA"]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# What download_cifar fetches, and where the command lines' --download puts it without
# --data: a folder of the dataset's name under zoo.weights.cache_dir() / "data".
CIFAR_DOWNLOADS = ("cifar10", "cifar100")

# Where the command lines and eval scripts look for data without --data: $NORMZOO_DATA, else
# the project's shared folder beside the checkout (cifar10/, cifar100/, imagenet/ under it).
SHARED_DATA = Path(os.environ.get("NORMZOO_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> list[tuple[str, str]]:
    """The 1,000 ILSVRC2012 classes as (wnid, names) in class-index order (n01440764 = 0)."""
    lines = (Path(__file__).parent / "imagenet_classes.txt").read_text().splitlines()
    return [tuple(line.split(" ", 1)) for line in lines if line.strip()]


def categories(ref: str):
    """Label names for a checkpoint's categories reference, or None where none ship."""
    if ref == "cifar10":
        return list(CIFAR10_CLASSES)
    if ref == "imagenet-1k":
        return [names.split(",")[0] for _, names in imagenet_classes()]
    return None

_NUMPY_GLOBALS = {
    (module, name)
    for prefix in ("numpy.core", "numpy._core")  # numpy 1.x and 2.x spell it differently
    for module, name in ((f"{prefix}.multiarray", "_reconstruct"), (f"{prefix}.multiarray", "scalar"),
                         (f"{prefix}.numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype")}
_BUILTINS = {"list", "dict", "tuple", "set", "frozenset", "bytearray", "bytes", "str", "int",
             "float", "complex", "bool"}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS or (module == "builtins" and name in _BUILTINS):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a CIFAR file holds only numpy arrays, "
            f"lists and strings, so this file is not one (or has been tampered with)"
        )


def _read_pickle(path: Path, keys: tuple[str, ...]) -> dict:
    """A CIFAR pickle: a dict that holds at least ``keys``."""
    with open(path, "rb") as f:
        try:
            content = _RestrictedUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise ValueError(f"{path}: not a readable CIFAR pickle ({e})") from None
    expected = f"a dict with {', '.join(map(repr, keys))}"
    if not isinstance(content, dict):
        raise ValueError(f"{path}: not a CIFAR file: it holds a {type(content).__name__}, not "
                         f"{expected}; extract the dataset archive again")
    missing = [k for k in keys if k not in content]
    if missing:
        raise ValueError(f"{path}: not a CIFAR file: {', '.join(map(repr, missing))} missing "
                         f"(expected {expected}); extract the dataset archive again")
    return content


class CifarSplit(NamedTuple):
    images: torch.Tensor  # uint8, (N, 3, 32, 32)
    labels: torch.Tensor  # int64, (N,)
    classes: list  # class names, index = label


def load_cifar(root: Union[str, Path], split: str = "test") -> CifarSplit:
    """CIFAR-10 or CIFAR-100 (fine labels) from the standard python layout.

    ``root`` is the folder holding ``cifar-10-batches-py/`` or ``cifar-100-python/``,
    or that folder itself; ``split`` is ``"train"`` or ``"test"``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    for sub in ("cifar-10-batches-py", "cifar-100-python"):
        if (root / sub).is_dir():
            root = root / sub
            break
    if (root / "batches.meta").is_file():  # CIFAR-10
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta, names_key, label_key = root / "batches.meta", "label_names", "labels"
    elif (root / "meta").is_file():  # CIFAR-100
        names = [split]
        meta, names_key, label_key = root / "meta", "fine_label_names", "fine_labels"
    else:
        raise FileNotFoundError(
            f"{root} holds no CIFAR data: expected the python layout (cifar-10-batches-py/ or "
            f"cifar-100-python/ as extracted from https://www.cs.toronto.edu/~kriz/cifar.html); "
            f"python -m zoo, python -m train and eval/cifar_val.py fetch it with --download "
            f"(zoo.data.download_cifar in Python)"
        )
    classes = _read_pickle(meta, (names_key,))[names_key]
    images, labels = [], []
    for name in names:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from the CIFAR folder {root}")
        batch = _read_pickle(path, ("data", label_key))
        data, batch_labels = np.asarray(batch["data"]), np.asarray(batch[label_key])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or \
                batch_labels.dtype.kind not in "iu" or batch_labels.shape != data.shape[:1]:
            raise ValueError(f"{path}: expected uint8 data of shape (N, 3072) and N integer "
                             f"labels, got {data.dtype} {data.shape} and {batch_labels.dtype} "
                             f"labels of shape {batch_labels.shape}")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.from_numpy(batch_labels.astype(np.int64)))
    labels = torch.cat(labels)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"{root}: labels outside 0..{len(classes) - 1}")
    return CifarSplit(torch.cat(images), labels, list(classes))


def download_cifar(root: Union[str, Path], dataset: str = "cifar10") -> Path:
    """Fetch CIFAR-10 or CIFAR-100 (``dataset``) into ``root`` with torchvision's download:
    its URL and its md5 of the archive, which is removed once extracted. ``root`` then holds
    ``cifar-10-batches-py/`` or ``cifar-100-python/`` for load_cifar; one that holds the
    dataset's files already is left as it is. ``root``, or ValueError saying what failed."""
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import download_and_extract_archive

    if dataset not in CIFAR_DOWNLOADS:
        raise ValueError(f"only {' and '.join(CIFAR_DOWNLOADS)} can be downloaded, not {dataset!r}")
    source = CIFAR10 if dataset == "cifar10" else CIFAR100
    root = Path(root)
    files = [name for name, _ in source.train_list + source.test_list] + [source.meta["filename"]]
    # Presence, not torchvision's md5s: a re-serialised copy (as ../shared/data) reads the same.
    if all((root / source.base_folder / name).is_file() for name in files):
        return root
    archive = root / source.filename
    fetched = not archive.exists()  # an archive the user put there stays
    try:
        download_and_extract_archive(source.url, root, filename=source.filename,
                                     md5=source.tgz_md5, remove_finished=fetched)
    except (OSError, RuntimeError, EOFError, tarfile.TarError, zlib.error) as e:
        if fetched:
            archive.unlink(missing_ok=True)  # a partial or corrupt download
        reason = ("its md5 is not the one torchvision expects: a corrupt or incomplete download"
                  if isinstance(e, RuntimeError) else str(e))
        raise ValueError(f"could not download {dataset} from {source.url} into {root} ({reason}); "
                         f"run again, or extract {source.filename} there yourself") from None
    return root
