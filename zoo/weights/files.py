"""Checkpoint files: safetensors with NormZoo's metadata, written byte-reproducibly and read
without unpickling anything."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Iterable, Optional, Union

import torch
from torch import nn

from ..cli import one_line
from ..norms.common import same_kind
from ..preprocessing import default_preprocessing
from .errors import WeightsError

HUB_FILENAME = "model.safetensors"  # the checkpoint's name in a Hub repo or Hub-ready folder
# The largest image side a checkpoint's preprocessing may ask for: a lie of 60000 would have
# evaluation and GMAC counts allocate tens of gigabytes.
MAX_IMAGE_SIDE = 1024


def sha256sum(path: Union[str, Path]) -> str:
    """The file's sha256, 64 lowercase hex digits (what the manifest pins)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(model: nn.Module, path: Union[str, Path], *, tag: str,
                    dataset: Optional[str] = None, categories: Optional[str] = None,
                    preprocessing: Optional[dict] = None, metrics: Optional[dict] = None,
                    recipe: Optional[dict] = None) -> Path:
    """Write a zoo model as safetensors with everything needed to rebuild and evaluate it.

    ``dataset``/``categories`` default to cifar10 / imagenet-1k by the model's family;
    ``metrics`` and ``recipe`` are recorded as given (the manifest tools copy them).
    """
    from safetensors.torch import save_model

    from .. import __version__  # set once zoo/__init__ has imported this package

    config = getattr(model, "config", None)
    if not config:
        raise WeightsError("save_checkpoint needs a zoo model (one with model.config); build it "
                           "with zoo.create_model")
    dataset = dataset or ("cifar10" if config["dataset"] == "cifar" else "imagenet-1k")
    options = {k: v for k, v in config.items() if k not in _CONFIG_KEYS}
    metadata = {
        "format": "pt",
        "name": f"{config['name']}.{tag}",
        "model": config["name"],
        "architecture": config["arch"],
        "norm": config["norm"],
        "tag": tag,
        "norm_kwargs": json.dumps(config["norm_kwargs"], sort_keys=True),
        "model_kwargs": json.dumps(options, sort_keys=True),
        "num_classes": str(config["num_classes"]),
        "dataset": dataset,
        "categories": categories or dataset,
        "preprocessing": json.dumps(preprocessing or default_preprocessing(model), sort_keys=True),
        "metrics": json.dumps(metrics or {}, sort_keys=True),
        "recipe": json.dumps(recipe or {}, sort_keys=True),
        "normzoo_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    raw = tmp.with_suffix(".raw")  # safetensors writes its own 0o600 file: copied into tmp
    try:
        with os.fdopen(fd, "wb") as out:
            save_model(model, str(raw), metadata=metadata)  # handles shared tensors
            _write_sorted(raw.read_bytes(), out)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        raw.unlink(missing_ok=True)
    return path


def _write_sorted(safetensors_file: bytes, out) -> None:
    """Write a safetensors file with its JSON header's keys sorted: the writer emits metadata
    in hash order, so the same model would give different bytes (and sha256) on every save."""
    n = int.from_bytes(safetensors_file[:8], "little")
    header = json.dumps(json.loads(safetensors_file[8:8 + n]), sort_keys=True,
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # safetensors' padding: tensor data starts 8-byte aligned
    out.write(len(header).to_bytes(8, "little") + header)
    out.write(memoryview(safetensors_file)[8 + n:])


# model.config keys that are not architecture options
_CONFIG_KEYS = {"name", "arch", "norm", "norm_kwargs", "norm_rule", "num_classes", "dataset",
                "input_size", "min_input_size", "weights", "preprocessing"}
_JSON_METADATA = ("norm_kwargs", "model_kwargs", "preprocessing", "metrics", "recipe")


def read_metadata(path: Union[str, Path]) -> dict:
    """A checkpoint's metadata with JSON fields decoded (``{}`` for a file without any)."""
    from safetensors import safe_open

    path = checkpoint_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            shapes = [f.get_slice(k).get_shape() for k in f.keys()]
    except Exception as e:  # safetensors raises its own error types for non-safetensors bytes
        raise WeightsError(_not_safetensors(path, e)) from None
    meta = dict(raw)
    for key in _JSON_METADATA:
        if key in meta:
            try:
                meta[key] = json.loads(meta[key])
            except json.JSONDecodeError as e:
                raise WeightsError(_bad_metadata(path, key, f"is not valid JSON ({e})")) from None
            if not isinstance(meta[key], dict):
                raise WeightsError(_bad_metadata(path, key, "must be a JSON object"))
    if "num_classes" in meta:
        if not re.fullmatch(r"0|[1-9][0-9]*", meta["num_classes"]):
            raise WeightsError(_bad_metadata(path, "num_classes", f"must be a non-negative "
                                             f"integer, not {meta['num_classes']!r}"))
        meta["num_classes"] = int(meta["num_classes"])
        rows = sorted({shape[0] for shape in shapes if len(shape) == 2})  # linear layers' outputs
        if meta["num_classes"] and meta["num_classes"] not in rows:
            raise WeightsError(_bad_metadata(path, "num_classes", f"is {meta['num_classes']}, but "
                                             f"no linear layer in the file has that many outputs "
                                             f"({', '.join(map(str, rows)) or 'none'})"))
    sides = meta.get("preprocessing", {})
    sides = [*sides.get("input_size", [])[1:], sides.get("crop"), sides.get("resize")]
    if any(isinstance(x, (int, float)) and x > MAX_IMAGE_SIDE for x in sides):
        raise WeightsError(_bad_metadata(path, "preprocessing", f"asks for images of "
                                         f"{max(x for x in sides if isinstance(x, (int, float)))} "
                                         f"pixels a side; at most {MAX_IMAGE_SIDE} are allowed"))
    return meta


def check_metadata_options(path: Union[str, Path], meta: dict, options: Iterable[str],
                           norm_kwargs: dict) -> None:
    """WeightsError, before a model is built, where a checkpoint's metadata gives an
    architecture option outside ``options``, or a norm argument that the norm (its defaults,
    ``norm_kwargs``) lacks or of another type than the default's."""
    unknown = sorted(set(meta.get("model_kwargs", {})) - set(options))
    if unknown:
        raise WeightsError(_bad_metadata(Path(path), "model_kwargs", f"gives {', '.join(unknown)}, "
                                         f"which the model does not take (it takes: "
                                         f"{', '.join(options) or 'none'})"))
    for key, value in meta.get("norm_kwargs", {}).items():
        if key not in norm_kwargs:
            problem = f"gives {key}, which the norm does not take (it takes: {', '.join(norm_kwargs) or 'none'})"
        elif not same_kind(value, norm_kwargs[key]):
            problem = f"gives {key}={value!r}, not a {type(norm_kwargs[key]).__name__}"
        else:
            continue
        raise WeightsError(_bad_metadata(Path(path), "norm_kwargs", problem))


def _bad_metadata(path: Path, field: str, problem: str) -> str:
    return (f"{path}: metadata field {field!r} {problem}. The file was edited or written by "
            f"another tool; save it again with zoo.save_checkpoint or python -m zoo.convert")


def read_checkpoint(path: Union[str, Path]) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state_dict, metadata)`` of a safetensors checkpoint file or Hub-ready folder."""
    from safetensors.torch import load_file

    path = checkpoint_file(path)
    meta = read_metadata(path)
    try:
        return load_file(str(path)), meta
    except Exception as e:
        raise WeightsError(_not_safetensors(path, e)) from None


def checkpoint_file(path: Union[str, Path]) -> Path:
    """The safetensors file a checkpoint path names: the file itself, or the model.safetensors
    of a Hub-ready folder; WeightsError where there is none."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / HUB_FILENAME).is_file():
            raise WeightsError(f"{path} is a folder without {HUB_FILENAME}; pass the checkpoint "
                               f"file itself or a Hub-ready folder")
        path = path / HUB_FILENAME
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    return path


def load_state_into(model: nn.Module,
                    path: Union[str, Path]) -> tuple[Iterable[str], Iterable[str]]:
    """Load a safetensors file into ``model``, not strictly: ``(missing, unexpected)`` keys.
    WeightsError where the tensors do not fit the model or the file is not safetensors."""
    from safetensors.torch import load_model

    try:
        return load_model(model, str(path), strict=False)
    except RuntimeError as e:
        raise WeightsError(f"{path} does not fit {model.config['name']}: {one_line(e, 500)}") from None
    except Exception as e:
        raise WeightsError(_not_safetensors(path, e)) from None


def _not_safetensors(path: Path, error: Exception) -> str:
    return (f"{path} is not a readable safetensors file ({error}). NormZoo loads only "
            f"safetensors, never pickles; convert a .pth/.pt checkpoint first "
            f"(python -m zoo.convert) or re-download a truncated file")


def temp_beside(path: Path) -> tuple[int, Path]:
    """A new file next to ``path`` for write-then-rename, opened for writing. Its mode is a
    plain open()'s (0o666 less the umask): mkstemp's 0o600 would survive the rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    return os.open(tmp, flags, 0o666), tmp
