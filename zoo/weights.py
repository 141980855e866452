"""Pretrained weights: the manifest, checkpoint files, where they come from and how they load.

Every published checkpoint is one entry of ``weights_manifest.json`` (package data, next to
this module), named ``{model}.{tag}``: ``resnet20_ilm.cifar10``. A file is found, in order:

1. an explicit local file or Hub-ready folder the user passes (``weights="path"``);
2. the copy shipped inside this package (small CIFAR checkpoints), so clones work offline;
3. the Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``; ``HF_HUB_OFFLINE`` is honoured);
4. ``hf_hub_download`` at the entry's pinned commit (``HF_ENDPOINT`` is honoured);
5. the entry's mirror URL, streamed with ``requests`` into NormZoo's cache (at most
   ``size_bytes``; one process at a time per file, under a lock file beside it).

A file from 2-5 is used only if its sha256 equals the manifest's. Files are safetensors:
nothing on the load path unpickles.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import fnmatch
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import warnings
from pathlib import Path, PureWindowsPath
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import torch
from torch import nn

_log = logging.getLogger("zoo")

MANIFEST_PATH = Path(__file__).resolve().parent / "weights_manifest.json"
SCHEMA_VERSION = 1
UNPUBLISHED = "unpublished"  # the revision of an entry not (yet) on the Hub
HUB_FILENAME = "model.safetensors"


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
    categories: str             # label names reference: "cifar10", "imagenet-1k" (zoo.data.categories)
    hub_repo_id: str
    filename: str
    revision: str               # a 40-hex Hub commit, or "unpublished"
    mirror_url: Optional[str]   # null or an https URL serving the same bytes
    shipped: Optional[str]      # null, or the package copy's path relative to the manifest's folder
    sha256: str
    size_bytes: int
    num_params: int
    gmacs: float                # multiply-adds per image at the preprocessing's input size, in 1e9
    preprocessing: dict         # Preprocessing's keys
    metrics: dict               # Metrics' keys
    recipe: dict                # Recipe's keys: {"command", "commit"} + the run's summary
    license: str
    paper: str
    default: bool               # the model's weights="DEFAULT"
    notes: Optional[str]        # null, or what a user must know, e.g. trained with an earlier form of a layer

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

    @classmethod
    def problems(cls, entry: Mapping[str, Any]) -> list[str]:
        """What is wrong with one entry (empty when it is valid)."""
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
        if entry["notes"] is not None and not (isinstance(entry["notes"], str) and entry["notes"].strip()):
            problems.append("notes must be null or a non-empty string")
        if entry["mirror_url"] is not None and not str(entry["mirror_url"]).startswith(("https://", "http://")):
            problems.append("mirror_url must be null or an http(s) URL")
        if not (isinstance(entry["hub_repo_id"], str) and _HUB_REPO_ID.fullmatch(entry["hub_repo_id"])):
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


class WeightsError(RuntimeError):
    """Weights that cannot be found, fetched, verified or loaded; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# The manifest


def manifest_path() -> Path:
    """The manifest in use: ``$NORMZOO_MANIFEST`` if set (tests, forks), else the package's."""
    return Path(os.environ.get("NORMZOO_MANIFEST") or MANIFEST_PATH)


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
    path = Path(path) if path is not None else manifest_path()
    _atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Weights objects


@dataclasses.dataclass(frozen=True, eq=False)
class Weights:
    """One published checkpoint: ``zoo.get_weight("resnet20_ilm.cifar10")``.

    ``meta`` holds the manifest's figures (metrics, num_params, gmacs, preprocessing,
    categories as label names, recipe, license, paper); ``transforms()`` is the evaluation
    preprocessing; ``get_state_dict()`` fetches, verifies and reads the file.
    """

    entry: Mapping[str, Any]
    manifest_dir: Path

    @property
    def name(self) -> str:
        return self.entry["name"]

    @property
    def model(self) -> str:
        return self.entry["model"]

    @property
    def tag(self) -> str:
        return self.entry["tag"]

    @property
    def url(self) -> Optional[str]:
        """Where the file is published: its Hub URL at the pinned commit, else the mirror URL
        (None when it is not published)."""
        if self.entry["revision"] != UNPUBLISHED:
            from huggingface_hub import hf_hub_url

            return hf_hub_url(self.entry["hub_repo_id"], self.entry["filename"],
                              revision=self.entry["revision"])
        return self.entry["mirror_url"]

    @property
    def meta(self) -> dict:
        from .data import categories

        meta = {k: v for k, v in self.entry.items() if k not in ("name", "model", "tag")}
        meta["categories"] = categories(self.entry["categories"])
        meta["categories_ref"] = self.entry["categories"]
        return meta

    def transforms(self):
        """The evaluation preprocessing (torchvision transforms v2) these weights expect."""
        from .preprocessing import eval_transforms

        return eval_transforms(self.entry["preprocessing"])

    def get_state_dict(self, progress: bool = True) -> dict[str, torch.Tensor]:
        return read_checkpoint(self.fetch(progress=progress))[0]

    def fetch(self, progress: bool = True) -> Path:
        """A verified local path of the checkpoint file (see the module docstring's order)."""
        return _fetch(self, progress)

    def __eq__(self, other) -> bool:
        return isinstance(other, Weights) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        m = self.entry["metrics"]
        return (f"Weights({self.name!r}, top1={m['top1']}, top5={m['top5']} on {m['split']}, "
                f"revision={self.entry['revision'][:12]})")


def list_weights(pattern: Optional[str] = None) -> list[str]:
    """Names of all published weights (``model.tag``), optionally filtered by a shell pattern."""
    names = [e["name"] for e in load_manifest()["weights"]]
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def get_weight(name: str) -> Weights:
    """The weights named ``model.tag``, e.g. ``get_weight("resnet20_ilm.cifar10")``."""
    path = manifest_path()
    for entry in load_manifest(path)["weights"]:
        if entry["name"] == name:
            return Weights(entry, path.parent)
    model = str(name).split(".", 1)[0]
    tags = _tags_of(model)
    hint = (f"{model} has: {', '.join(tags)}" if tags else
            f"published weights: {', '.join(list_weights()) or 'none yet'}")
    raise WeightsError(f"no weights named {name!r} in {path}; {hint}")


def get_model_weights(model: str) -> type[enum.Enum]:
    """The model's weights as a torchvision ``WeightsEnum``: ``get_model_weights("resnet20_ilm")``
    has a member per tag (``.CIFAR10``) and ``DEFAULT``, an alias of the default entry.

    Members answer ``.meta``, ``.transforms()``, ``.url`` and ``verify`` as torchvision's do, and
    the rest of :class:`Weights` (``.fetch()``, ``.tag``, ``.entry``); ``get_state_dict()``
    reads the verified safetensors file (torchvision's would unpickle a download).
    """
    arch, norm = split_model_name(model)
    members = {w.tag.upper().replace("-", "_"): w for w in weights_of(f"{arch}_{norm}")}
    default = next((w for w in members.values() if w.entry["default"]), None)
    if default is not None:
        members["DEFAULT"] = default
    camel = "".join(p.capitalize() for p in f"{arch}_{norm}".split("_"))
    return _weights_enum()(f"{camel}_Weights", members)


@functools.lru_cache(maxsize=None)
def _weights_enum() -> type[enum.Enum]:
    from torchvision.models import WeightsEnum  # imported on use: torchvision is slow to import

    class NormZooWeightsEnum(WeightsEnum):
        def get_state_dict(self, progress: bool = True, **unused) -> dict[str, torch.Tensor]:
            return self.value.get_state_dict(progress=progress)

        def __getattr__(self, attr: str):
            if attr.startswith("_"):  # Enum's own machinery, never Weights'
                raise AttributeError(attr)
            return getattr(self.value, attr)

    return NormZooWeightsEnum


def weights_of(model: str) -> list[Weights]:
    """The published weights of one model, in manifest order."""
    path = manifest_path()
    return [Weights(e, path.parent) for e in load_manifest(path)["weights"] if e["model"] == model]


def _tags_of(model: str) -> list[str]:
    return [w.tag for w in weights_of(model)]


# The models whose pretrained=True warning was given: it is given once per model and process.
PRETRAINED_WARNED: set[str] = set()


def resolve_weights(model: str, weights: Any, pretrained: bool,
                    progress: bool = True) -> Union[None, Weights, Path]:
    """What ``create_model(model, weights=..., pretrained=...)`` asks for.

    ``None``; a :class:`Weights`; or a local ``Path`` (a file, or a folder holding
    ``model.safetensors``). ``weights`` may be ``"DEFAULT"``, a tag, ``"model.tag"``, a
    Weights object or Enum member, ``"hf-hub:owner/name[@revision]"``, or a path.
    """
    if isinstance(weights, enum.Enum):
        weights = weights.value
    if pretrained:
        if weights is not None:
            raise ValueError("pass either weights=... or pretrained=True, not both")
        available = weights_of(model)
        if not available:
            raise WeightsError(_none_published(model))
        pinned = available[0]  # the model's first published entry; entries are never reordered
        if model not in PRETRAINED_WARNED:
            PRETRAINED_WARNED.add(model)
            warnings.warn(f"pretrained=True loads the fixed weights {pinned.name!r}; "
                          f"weights='DEFAULT' follows the best published ones", stacklevel=3)
        return pinned
    if weights is None:
        return None
    if isinstance(weights, Weights):
        found = weights
    elif isinstance(weights, str) and weights.startswith(HF_HUB_PREFIX):
        return _from_hub_ref(weights[len(HF_HUB_PREFIX):], progress)
    elif isinstance(weights, os.PathLike) or (isinstance(weights, str) and _looks_like_path(weights)):
        path = Path(weights).expanduser()
        if not path.exists():
            hint = (f"; for a Hugging Face Hub repo write weights='{HF_HUB_PREFIX}{weights}'"
                    if isinstance(weights, str) and _HUB_REPO_ID.fullmatch(weights) else "")
            raise WeightsError(f"weights file {path} does not exist{hint}")
        return path
    elif isinstance(weights, str):
        available = weights_of(model)
        if weights == "DEFAULT":
            found = next((w for w in available if w.entry["default"]), None)
            if found is None:
                raise WeightsError(_none_published(model) if not available else
                                   f"{model} has no default weights; pick a tag: "
                                   f"{', '.join(w.tag for w in available)}")
        elif "." in weights:
            found = get_weight(weights)
        else:
            found = next((w for w in available if w.tag == weights), None)
            if found is None:
                raise WeightsError(
                    f"{model} has no weights tagged {weights!r}; "
                    + (f"available tags: {', '.join(w.tag for w in available)}, or 'DEFAULT'"
                       if available else _none_published(model)))
    else:
        raise TypeError(f"weights must be 'DEFAULT', a tag, 'model.tag', a Weights object or a "
                        f"path; got {type(weights).__name__}")
    if found.model != model:
        raise WeightsError(f"weights {found.name!r} are for {found.model}, not {model}; "
                           f"use create_model({found.model!r}, weights={found.name!r})")
    return found


HF_HUB_PREFIX = "hf-hub:"


def _from_hub_ref(ref: str, progress: bool) -> Union[Weights, Path]:
    """``owner/name[@revision]`` on the Hub: the manifest's entry for that repo (then fetched
    and sha256-verified as usual), or else the repo's model.safetensors through
    ``hf_hub_download`` (the HF cache serves it offline), checked only against its own
    metadata by create_model, and logged as not pinned."""
    from huggingface_hub import hf_hub_download

    repo_id, at, revision = ref.partition("@")
    if not _HUB_REPO_ID.fullmatch(repo_id) or (at and not revision):
        raise WeightsError(f"{HF_HUB_PREFIX}{ref} is not '{HF_HUB_PREFIX}owner/name' or "
                           f"'{HF_HUB_PREFIX}owner/name@revision'")
    path = manifest_path()
    for entry in load_manifest(path)["weights"]:
        if entry["hub_repo_id"] == repo_id and revision in ("", entry["revision"]):
            _log.info("%s%s is %s in NormZoo's manifest: verified by its sha256",
                      HF_HUB_PREFIX, ref, entry["name"])
            return Weights(entry, path.parent)
    try:
        with _progress_bars(progress):
            file = Path(hf_hub_download(repo_id, HUB_FILENAME, revision=revision or None,
                                        library_name="normzoo"))
    except Exception as err:  # HTTP, connection (httpx or requests) and cache errors alike
        raise WeightsError(f"could not get {HUB_FILENAME} of {HF_HUB_PREFIX}{ref}: "
                           f"{_first_line(err)}") from None
    _log.warning("%s%s is not in NormZoo's manifest, so no sha256 pins it: loaded %s, checked "
                 "against its own metadata only", HF_HUB_PREFIX, ref, file)
    return file


def _looks_like_path(text: str) -> bool:
    return (text.endswith(".safetensors") or os.sep in text or "/" in text
            or text.startswith(("~", ".")) or Path(text).exists())


def _none_published(model: str) -> str:
    published = sorted({n.split(".")[0] for n in list_weights()})
    return (f"no pretrained weights are published for {model!r} yet; build it untrained with "
            f"weights=None, or load your own file with weights='path/to/model.safetensors'. "
            f"Models with weights: {', '.join(published) or 'none yet'}")


# ---------------------------------------------------------------------------------------------
# Checkpoint files


def sha256sum(path: Union[str, Path]) -> str:
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

    from . import __version__
    from .preprocessing import default_preprocessing

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
    fd, tmp = _temp_beside(path)
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
    return meta


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


def _not_safetensors(path: Path, error: Exception) -> str:
    return (f"{path} is not a readable safetensors file ({error}). NormZoo loads only "
            f"safetensors, never pickles; convert a .pth/.pt checkpoint first "
            f"(python -m zoo.convert) or re-download a truncated file")


def load_weights(model: nn.Module, source: Union[Weights, Path], *, progress: bool = True,
                 num_classes: Optional[int] = None) -> list[str]:
    """Load ``source`` strictly into ``model`` (built for the checkpoint's class count).

    With a different ``num_classes`` the classifier (and logits norm) is then replaced by a
    freshly initialised one; the re-initialised keys are returned and logged.
    """
    from safetensors.torch import load_model

    from .models import new_head

    path = source.fetch(progress=progress) if isinstance(source, Weights) else checkpoint_file(source)
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except RuntimeError as e:
        raise WeightsError(f"{path} does not fit {model.config['name']}: {_first_line(e)}") from None
    except Exception as e:
        raise WeightsError(_not_safetensors(path, e)) from None
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not fit {model.config['name']}: missing keys "
            f"{short_list(missing)}, unexpected keys {short_list(unexpected)}. Was it saved from "
            f"another model? Its metadata says {read_metadata(path).get('model', 'nothing')!r}")
    model.config["weights"] = source.name if isinstance(source, Weights) else str(path)
    model.config["preprocessing"] = (source.entry["preprocessing"] if isinstance(source, Weights)
                                     else read_metadata(path).get("preprocessing"))
    if num_classes is None or num_classes == model.config["num_classes"]:
        return []
    return new_head(model, num_classes)


def short_list(keys: Iterable[str], n: int = 5) -> str:
    """State-dict keys for a message, sorted: the first ``n`` and how many more,
    ``"[a, b, ... 3 more]"``."""
    keys = sorted(keys)  # safetensors' load_model returns sets
    return "[" + ", ".join(keys[:n]) + (f", ... {len(keys) - n} more" if len(keys) > n else "") + "]"


def _first_line(e: Exception) -> str:
    return " ".join(str(e).split())[:500]


# ---------------------------------------------------------------------------------------------
# Fetching and verifying


def cache_dir() -> Path:
    """NormZoo's own download cache (mirror downloads): ``$NORMZOO_CACHE`` or ~/.cache/normzoo."""
    root = os.environ.get("NORMZOO_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "normzoo"
    return Path(root)


def _fetch(w: Weights, progress: bool) -> Path:
    e = w.entry
    tried: list[str] = []

    if e["shipped"]:
        shipped = w.manifest_dir / e["shipped"]
        if shipped.is_file() and _verified(shipped, e, tried, "shipped copy"):
            _log.info("%s: the copy shipped with NormZoo, %s (sha256 verified)", w.name, shipped)
            return shipped
        if not shipped.is_file():
            tried.append(f"shipped copy {shipped}: missing")

    published = e["revision"] != UNPUBLISHED
    if published:
        path = _from_hub(w, progress, tried)
        if path is not None:
            return path
    else:
        tried.append("Hugging Face Hub: not published yet (revision 'unpublished')")

    if e["mirror_url"]:
        path = _from_mirror(w, progress, tried)
        if path is not None:
            return path
    raise WeightsError(
        f"could not get a verified copy of {w.name}:\n  " + "\n  ".join(tried) + "\n"
        + _how_to_fetch(w))


def _how_to_fetch(w: Weights) -> str:
    from huggingface_hub import constants

    e = w.entry
    reinstall = (" A shipped copy that fails its check was damaged: reinstall NormZoo or restore "
                 "the file from git." if e["shipped"] else "")
    if e["revision"] == UNPUBLISHED and not e["mirror_url"]:
        return (f"It is not published anywhere yet; pass a local copy with "
                f"weights='path/to/{w.name}.safetensors'.{reinstall}")
    ways = []
    if e["revision"] != UNPUBLISHED:
        ways.append(f"on a connected machine run `hf download {e['hub_repo_id']} {e['filename']} "
                    f"--revision {e['revision']}` and copy the Hugging Face cache (HF_HOME) here"
                    + (", or unset HF_HUB_OFFLINE" if constants.HF_HUB_OFFLINE else ""))
    if e["mirror_url"]:
        ways.append(f"download {e['mirror_url']}")
    return ("To fix: " + "; or ".join(ways) + f"; or pass the file itself with "
            f"weights='path/to/{e['filename']}' (expected sha256 {e['sha256']}).{reinstall}")


def _verified(path: Path, entry: Mapping, tried: list[str], what: str) -> bool:
    """Whether ``path`` holds the entry's bytes; a mismatch is noted in ``tried``."""
    try:
        actual = sha256sum(path)
    except FileNotFoundError:  # absent, or removed meanwhile by another process
        return False
    if actual == entry["sha256"]:
        return True
    tried.append(f"{what} {path}: sha256 {actual[:16]}... is not the manifest's "
                 f"{entry['sha256'][:16]}... (corrupt, truncated or tampered)")
    return False


def _from_hub(w: Weights, progress: bool, tried: list[str]) -> Optional[Path]:
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    e = w.entry
    where = f"Hugging Face Hub {e['hub_repo_id']}@{e['revision'][:12]}"
    try:
        cached = try_to_load_from_cache(e["hub_repo_id"], e["filename"], revision=e["revision"])
    except Exception as err:  # huggingface_hub's checks of the repo id and filename, or the cache
        tried.append(f"{where}: {_first_line(err)}")
        return None
    if isinstance(cached, str):
        if _verified(Path(cached), e, tried, "Hugging Face cache file"):
            _log.info("%s: the Hugging Face cache, %s (sha256 verified)", w.name, cached)
            return Path(cached)
        if not _remove_hub_file(Path(cached), tried):
            return None  # hf_hub_download would hand back the same bad file
    if constants.HF_HUB_OFFLINE:
        tried.append(f"{where}: not in the cache and HF_HUB_OFFLINE is set")
        return None
    with _progress_bars(progress):
        for _ in range(2):  # a bad download is removed and tried once more
            try:
                path = Path(hf_hub_download(e["hub_repo_id"], e["filename"], revision=e["revision"],
                                            library_name="normzoo"))
            except Exception as err:  # HTTP, connection (httpx or requests) and cache errors alike
                tried.append(f"{where}: {_first_line(err)}")
                return None
            if _verified(path, e, tried, "downloaded file"):
                _log.info("%s: downloaded from the Hugging Face Hub, %s@%s, to %s (sha256 "
                          "verified)", w.name, e["hub_repo_id"], e["revision"][:12], path)
                return path
            if not _remove_hub_file(path, tried):
                return None
    return None


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    """huggingface_hub's download bars on or off (``progress``) for the block."""
    from huggingface_hub.utils import (are_progress_bars_disabled, disable_progress_bars,
                                       enable_progress_bars)

    was_disabled = are_progress_bars_disabled()
    if not enabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


def _remove_hub_file(pointer: Path, tried: list[str]) -> bool:
    """Remove a bad cached Hub file: the snapshot pointer and the blob it points to. False,
    with the reason and the fix in ``tried``, where the cache is read-only."""
    blob = pointer.resolve()
    try:
        pointer.unlink(missing_ok=True)
        if blob != pointer:
            blob.unlink(missing_ok=True)
    except OSError as err:  # PermissionError, or a read-only file system
        tried.append(f"Hugging Face cache file {pointer}: cannot remove this bad copy "
                     f"({_os_reason(err)}); make the Hugging Face cache writable, or set "
                     f"HF_HOME to a writable folder")
        return False
    return True


def _from_mirror(w: Weights, progress: bool, tried: list[str]) -> Optional[Path]:
    import requests
    from filelock import FileLock

    e = w.entry
    target = cache_dir() / "weights" / f"{w.name}-{e['sha256'][:16]}.safetensors"
    try:
        # A good copy is never removed or replaced, so using one needs no lock (and works in a
        # read-only cache).
        if _verified(target, e, tried, "mirror cache file"):
            _log.info("%s: NormZoo's mirror cache, %s (sha256 verified)", w.name, target)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # One process at a time removes a bad copy and downloads. It checks again under the
        # lock, as the process before it may have done just that.
        with FileLock(f"{target}.lock"):
            if _verified(target, e, [], "mirror cache file"):  # a bad copy is noted already
                _log.info("%s: NormZoo's mirror cache, %s, as another process downloaded it "
                          "(sha256 verified)", w.name, target)
                return target
            target.unlink(missing_ok=True)
            return _download(w, target, progress, tried)
    except requests.RequestException as err:  # caught first: requests' errors are OSErrors
        tried.append(f"mirror {e['mirror_url']}: {_first_line(err)}")
    except OSError as err:  # a read-only cache or file system, a full disk
        tried.append(f"NormZoo cache {cache_dir()}: {_os_reason(err)}; make it writable, or set "
                     f"NORMZOO_CACHE to a writable folder")
    return None


def _download(w: Weights, target: Path, progress: bool, tried: list[str]) -> Optional[Path]:
    """Stream the entry's mirror URL into ``target`` (write, verify, rename); a bad download
    is tried once more, one larger than the entry's ``size_bytes`` is stopped there."""
    import requests

    url, size = w.entry["mirror_url"], w.entry["size_bytes"]
    for _ in range(2):
        fd, tmp = _temp_beside(target)
        try:
            with os.fdopen(fd, "wb") as out, requests.get(url, stream=True, timeout=30) as r:
                r.raise_for_status()
                length = r.headers.get("Content-Length", "")
                encoded = r.headers.get("Content-Encoding")  # then the length is the encoded one
                if length.isdigit() and int(length) > size and not encoded:
                    tried.append(f"mirror {url}: serves {int(length)} bytes, but the file has "
                                 f"{size}; not downloading it (wrong file or wrong mirror_url)")
                    return None
                received = 0
                with _progress_bar(size, f"{w.name} (mirror)", progress) as bar:
                    for chunk in r.iter_content(1 << 20):
                        received += len(chunk)
                        if received > size:
                            tried.append(f"mirror {url}: sent more than the file's {size} bytes; "
                                         f"stopped there (wrong file or wrong mirror_url)")
                            return None
                        out.write(chunk)
                        bar.update(len(chunk))
            if _verified(tmp, w.entry, tried, f"mirror download {url}"):
                os.replace(tmp, target)
                _log.info("%s: downloaded from the mirror %s to %s (sha256 verified)", w.name,
                          url, target)
                return target
        finally:
            tmp.unlink(missing_ok=True)
    return None


def _os_reason(err: OSError) -> str:
    return f"{err.strerror}: {err.filename}" if err.strerror and err.filename else _first_line(err)


def _temp_beside(path: Path) -> tuple[int, Path]:
    """A new file next to ``path`` for write-then-rename, opened for writing. Its mode is a
    plain open()'s (0o666 less the umask): mkstemp's 0o600 would survive the rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    return os.open(tmp, flags, 0o666), tmp


def _progress_bar(total: Optional[int], desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not enabled)


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if path.exists():
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# Helpers that are not about weights lived here; the old paths work until the next release.
_MOVED = {"eval_transforms": "zoo.preprocessing", "default_preprocessing": "zoo.preprocessing",
          "new_head": "zoo.models", "head_keys": "zoo.models", "git_commit": "zoo.cli"}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        warnings.warn(f"zoo.weights.{name} moved to {_MOVED[name]}.{name}; the old name goes "
                      f"in the next release", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
