"""The manifest, ``weights_manifest.json``: one :class:`ManifestEntry` per published
checkpoint, whose fields are the schema. Loading validates it (and caches the parse);
writing validates it and replaces the file atomically."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import re
import shutil
from pathlib import Path, PureWindowsPath
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Union

from .errors import WeightsError
from .files import HUB_FILENAME, temp_beside

# Package data of zoo, beside the zoo package's modules (not inside zoo/weights/).
MANIFEST_PATH = Path(__file__).resolve().parents[1] / "weights_manifest.json"
SCHEMA_VERSION = 1
UNPUBLISHED = "unpublished"  # the revision of an entry not (yet) on the Hub


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """An entry's ``preprocessing`` object: what ``eval_transforms`` does before the model."""

    input_size: list[int]       # [3, H, W], what the model sees
    resize: Optional[int]       # the shorter side before the crop; null: none
    crop: int                   # the center crop's side
    interpolation: str          # a torchvision InterpolationMode value, e.g. "bilinear"
    mean: list[float]
    std: list[float]


@dataclasses.dataclass(frozen=True)
class Metrics:
    """An entry's ``metrics`` object: the evaluation its figures come from."""

    top1: float
    top5: float
    split: str                  # e.g. "cifar10-test"
    num_images: int


@dataclasses.dataclass(frozen=True)
class Recipe:
    """An entry's ``recipe`` object: what produced the file, and how the run went (each null
    when unknown)."""

    command: Optional[str]
    commit: Optional[str]
    name: Optional[str]         # the trainer's recipe name
    epochs: Optional[int]
    val_top1: Optional[float]   # final validation top-1 on held-out training images
    img_per_s: Optional[float]  # median training img/s
    minutes: Optional[float]    # wall minutes


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    """One published checkpoint of the manifest: its fields are the schema, in order (as timm's
    ``PretrainedCfg``). Every key is required; a value may be null where the type says
    Optional. ``preprocessing``, ``metrics`` and ``recipe`` are objects with the fields of
    :class:`Preprocessing`, :class:`Metrics` and :class:`Recipe` as keys.

    The manifest holds plain JSON objects, and ``load_manifest`` returns them as dicts;
    ``problems`` checks one, ``from_dict`` checks and types it, ``to_dict`` gives it back.
    """

    name: str                   # "{model}.{tag}"
    model: str                  # "{arch}_{norm}", the zoo model name
    architecture: str           # the registered architecture
    norm: str
    tag: str
    norm_kwargs: dict           # norm keyword arguments the weights were trained with
    model_kwargs: dict          # architecture options the weights were trained with
    dataset: str                # what the metrics were measured on, e.g. "cifar10"
    num_classes: int
    # label names reference: "cifar10", "imagenet-1k" (zoo.data.categories)
    categories: str
    hub_repo_id: str
    filename: str
    revision: str               # a 40-hex Hub commit, or "unpublished"
    mirror_url: Optional[str]   # null or an https URL serving the same bytes
    # null, or the package copy's path relative to the manifest's folder
    shipped: Optional[str]
    sha256: str
    size_bytes: int
    num_params: int
    # multiply-adds per image at the preprocessing's input size, in 1e9
    gmacs: float
    preprocessing: dict         # Preprocessing's keys
    metrics: dict               # Metrics' keys
    recipe: dict                # Recipe's keys: {"command", "commit"} + the run's summary
    license: str
    paper: str
    default: bool               # the model's weights="DEFAULT"
    # null, or what a user must know, e.g. trained with an earlier form of a layer
    notes: Optional[str]

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> ManifestEntry:
        """A manifest entry (a parsed JSON object), checked and typed; WeightsError names
        every problem."""
        problems = cls.problems(entry)
        if problems:
            raise WeightsError(f"manifest entry {entry.get('name', '?')!r} is invalid:\n  "
                               + "\n  ".join(problems))
        return cls(**copy.deepcopy(dict(entry)))

    def to_dict(self) -> dict:
        """The entry as the manifest's JSON object."""
        return dataclasses.asdict(self)

    @staticmethod
    def problems(entry: Mapping[str, Any]) -> list[str]:
        """What is wrong with one entry (empty when it is valid)."""
        return _entry_problems(entry)


def _entry_problems(entry: Mapping[str, Any]) -> list[str]:
    problems = _key_problems(entry, ENTRY_KEYS, "")
    if problems:
        return problems
    for field, schema in _OBJECTS.items():
        if not isinstance(entry[field], dict):
            problems.append(f"{field} must be an object")
        else:
            problems += _key_problems(entry[field], _keys(schema), f"{field}.")
    try:
        arch, norm = split_model_name(entry["model"])
        if (arch, norm) != (entry["architecture"], entry["norm"]):
            problems.append(f"model {entry['model']!r} is {arch} + {norm}, not "
                            f"{entry['architecture']} + {entry['norm']}")
    except ValueError:
        problems.append(f"unknown model {entry['model']!r}")
    if entry["name"] != f"{entry['model']}.{entry['tag']}":
        problems.append(f"name must be '{{model}}.{{tag}}' = {entry['model']}.{entry['tag']}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_\-]*", str(entry["tag"])):
        problems.append("tag must be lowercase letters, digits, '_' and '-'")
    if not (entry["revision"] == UNPUBLISHED or _HEX40.fullmatch(str(entry["revision"]))):
        problems.append(f"revision must be a 40-hex commit or {UNPUBLISHED!r}, not a moving "
                        f"ref such as {entry['revision']!r}")
    if not _SHA256.fullmatch(str(entry["sha256"])):
        problems.append("sha256 must be 64 lowercase hex digits")
    for field in ("num_classes", "size_bytes", "num_params"):
        if isinstance(entry[field], bool) or not isinstance(entry[field], int) or entry[field] < 1:
            problems.append(f"{field} must be a positive integer")
    if not isinstance(entry["default"], bool):
        problems.append("default must be true or false")
    if isinstance(entry["metrics"], dict) and not _key_problems(entry["metrics"], METRICS_KEYS, ""):
        problems += _metrics_problems(entry["metrics"])
    if entry["notes"] is not None and not (isinstance(entry["notes"], str) and entry["notes"].strip()):
        problems.append("notes must be null or a non-empty string")
    if entry["mirror_url"] is not None and not str(entry["mirror_url"]).startswith(("https://", "http://")):
        problems.append("mirror_url must be null or an http(s) URL")
    if not is_hub_repo_id(entry["hub_repo_id"]):
        problems.append(f"hub_repo_id must be 'owner/name' of letters, digits, '-', '_' and '.' "
                        f"(no '--' or '..', not starting or ending with '-' or '.'), not "
                        f"{entry['hub_repo_id']!r}")
    if not _relative_inside(entry["filename"]):
        problems.append(f"filename must be a file's path in the Hub repo such as "
                        f"{HUB_FILENAME!r} ('/'-separated, no '..', '.', leading '/', drive or "
                        f"backslash), not {entry['filename']!r}")
    if entry["shipped"] is not None and not _relative_inside(entry["shipped"]):
        problems.append(f"shipped must be null or a path inside the manifest's folder such as "
                        f"'pretrained/{entry['name']}.safetensors' ('/'-separated, no '..', '.', "
                        f"leading '/', drive or backslash), not {entry['shipped']!r}")
    return problems


def _metrics_problems(metrics: Mapping[str, Any]) -> list[str]:
    problems = [f"metrics.{k} must be a percentage from 0 to 100, not {metrics[k]!r}"
                for k in ("top1", "top5") if not _is_number(metrics[k]) or not 0 <= metrics[k] <= 100]
    if isinstance(metrics["num_images"], bool) or not isinstance(metrics["num_images"], int) \
            or metrics["num_images"] < 1:
        problems.append(f"metrics.num_images must be a positive integer, not {metrics['num_images']!r}")
    if not (isinstance(metrics["split"], str) and metrics["split"].strip()):
        problems.append(f"metrics.split must name the images measured, not {metrics['split']!r}")
    return problems


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _keys(schema: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(schema))


_OBJECTS = {"preprocessing": Preprocessing, "metrics": Metrics, "recipe": Recipe}
# The keys, in order, of an entry and of its objects (the dataclasses' fields).
ENTRY_KEYS = _keys(ManifestEntry)
PREPROCESSING_KEYS = _keys(Preprocessing)
METRICS_KEYS = _keys(Metrics)
RECIPE_KEYS = _keys(Recipe)

_HEX40 = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# The Hub's rule for "owner/name": letters, digits, '-', '_' and '.', neither starting nor
# ending with '-' or '.', no '--' or '..', a name of at most 96 characters.
_HUB_NAME = r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,94}[A-Za-z0-9_])?"
_HUB_REPO_ID = re.compile(rf"(?!.*(?:--|\.\.)){_HUB_NAME}/{_HUB_NAME}")


def is_hub_repo_id(text: Any) -> bool:
    """Whether ``text`` is a Hub repo id, ``owner/name``, by the Hub's rule."""
    return isinstance(text, str) and _HUB_REPO_ID.fullmatch(text) is not None


def manifest_path() -> Path:
    """The manifest in use: ``$NORMZOO_MANIFEST`` if set (tests, forks), else the package's;
    links resolved, so it is written, and its shipped copies found, where the file lies (the
    repo root's weights_manifest.json is a link into zoo/)."""
    return Path(os.environ.get("NORMZOO_MANIFEST") or MANIFEST_PATH).resolve()


@contextlib.contextmanager
def manifest_lock(path: Union[str, Path, None] = None) -> Iterator[None]:
    """One process at a time changes the manifest: hold this from reading it to writing it
    (a lock file beside it, ``weights_manifest.json.lock``)."""
    from filelock import FileLock

    path = Path(path).resolve() if path is not None else manifest_path()
    with FileLock(path.with_name(f"{path.name}.lock")):
        yield


def load_manifest(path: Union[str, Path, None] = None) -> dict:
    """The manifest as a dict ``{"schema_version": 1, "weights": [entry, ...]}``, validated."""
    path = Path(path) if path is not None else manifest_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise WeightsError(f"weights manifest {path} does not exist; reinstall NormZoo or unset "
                           f"NORMZOO_MANIFEST") from None
    return copy.deepcopy(_parse_manifest(text, str(path)))


@functools.lru_cache(maxsize=8)
def _parse_manifest(text: str, path: str) -> dict:
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise WeightsError(f"weights manifest {path} is not valid JSON ({e})") from None
    problems = validate_manifest(manifest)
    if problems:
        raise WeightsError(f"weights manifest {path} is invalid:\n  " + "\n  ".join(problems))
    return manifest


# Model names are the registry's: zoo.registry imports this module and hands its
# parse_model_name over as it is imported, so nothing here imports the registry back.
_model_name_parser: Optional[Callable[[str], tuple[str, str]]] = None


def set_model_name_parser(parse: Callable[[str], tuple[str, str]]) -> None:
    """How a model name splits into ``(architecture, norm)``, raising ValueError for an
    unknown one: the manifest's check of each entry's model and ``get_model_weights`` use it.
    ``zoo.registry`` sets its ``parse_model_name`` when it is imported (``import zoo`` does)."""
    global _model_name_parser
    _model_name_parser = parse
    _parse_manifest.cache_clear()  # manifests checked by another rule are checked again


def split_model_name(name: str) -> tuple[str, str]:
    """``(architecture, norm)`` of a model name, by the rule ``set_model_name_parser`` set."""
    if _model_name_parser is None:
        raise RuntimeError("no model-name rule is set: import zoo (zoo.registry sets it)")
    return _model_name_parser(name)


def validate_manifest(manifest: Any) -> list[str]:
    """Schema problems of a manifest (empty when valid). Files are checked by ``check_files``."""
    if not isinstance(manifest, dict) or set(manifest) != {"schema_version", "weights"}:
        return ['the manifest must be {"schema_version": 1, "weights": [...]}']
    if manifest["schema_version"] != SCHEMA_VERSION:
        return [f"schema_version must be {SCHEMA_VERSION}, got {manifest['schema_version']!r}"]
    if not isinstance(manifest["weights"], list):
        return ["'weights' must be a list of entries"]
    problems, seen, defaults = [], set(), {}
    for i, entry in enumerate(manifest["weights"]):
        where = f"entry {i} ({entry.get('name', '?') if isinstance(entry, dict) else '?'})"
        if not isinstance(entry, dict):
            problems.append(f"{where}: not an object")
            continue
        problems += [f"{where}: {p}" for p in ManifestEntry.problems(entry)]
        name = entry.get("name")
        if name in seen:
            problems.append(f"{where}: duplicate name")
        seen.add(name)
        if entry.get("default") is True:
            if entry.get("model") in defaults:
                problems.append(f"{where}: a second default for {entry['model']} "
                                f"(first: {defaults[entry['model']]})")
            defaults.setdefault(entry.get("model"), name)
    return problems


def _relative_inside(path: Any) -> bool:
    """A relative '/'-separated path that cannot leave its folder, on any OS."""
    return (isinstance(path, str) and "\\" not in path and not PureWindowsPath(path).drive
            and all(part not in ("", ".", "..") for part in path.split("/")))


def _key_problems(d: dict, keys: Iterable[str], prefix: str) -> list[str]:
    missing = [k for k in keys if k not in d]
    unknown = sorted(set(d) - set(keys))
    return ([f"missing key {prefix}{k}" for k in missing]
            + [f"unknown key {prefix}{k}" for k in unknown])


def write_manifest(manifest: dict, path: Union[str, Path, None] = None) -> Path:
    """Validate and write the manifest atomically (sorted keys, one entry per block)."""
    problems = validate_manifest(manifest)
    if problems:
        raise WeightsError("refusing to write an invalid manifest:\n  " + "\n  ".join(problems))
    # resolved: os.replace onto a link would replace the link, not the file it names
    path = Path(path).resolve() if path is not None else manifest_path()
    _atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if path.exists():
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
