"""The weights API: :class:`Weights` objects, torchvision-style weight enums, listing and
naming weights, resolving ``create_model``'s ``weights=``/``pretrained=``, and loading them
into a model."""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import functools
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from ..cli import one_line
from ..data import categories
from ..heads import new_head
from ..preprocessing import eval_transforms
from .errors import WeightsError, short_list
from .fetch import fetch_file, hub_download
from .files import (HUB_FILENAME, checkpoint_file, load_state_into, read_checkpoint,
                    read_metadata)
from .manifest import (UNPUBLISHED, is_hub_repo_id, load_manifest, manifest_path,
                       split_model_name)

_log = logging.getLogger("zoo")

HF_HUB_PREFIX = "hf-hub:"


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
        meta = {k: v for k, v in self.entry.items() if k not in ("name", "model", "tag")}
        meta["categories"] = categories(self.entry["categories"])
        meta["categories_ref"] = self.entry["categories"]
        return meta

    def transforms(self):
        """The evaluation preprocessing (torchvision transforms v2) these weights expect."""
        return eval_transforms(self.entry["preprocessing"])

    def get_state_dict(self, progress: bool = True) -> dict[str, torch.Tensor]:
        return read_checkpoint(self.fetch(progress=progress))[0]

    def fetch(self, progress: bool = True) -> Path:
        """A verified local path of the checkpoint file (in the order zoo.weights' docstring
        gives)."""
        return fetch_file(self, progress)

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
        try:
            exists = path.exists()
        except OSError as err:  # a name too long for the file system, say
            raise WeightsError(f"weights file {path} cannot be looked up ({err.strerror}); "
                               f"pass the path of an existing file") from None
        if not exists:
            hint = (f"; for a Hugging Face Hub repo write weights='{HF_HUB_PREFIX}{weights}'"
                    if is_hub_repo_id(weights) else "")
            raise WeightsError(f"weights file {path} does not exist{hint}")
        return _names_its_model(path)
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


def _from_hub_ref(ref: str, progress: bool) -> Union[Weights, Path]:
    """``owner/name[@revision]`` on the Hub: the manifest's entry for that repo (then fetched
    and sha256-verified as usual), or else the repo's model.safetensors through
    ``hf_hub_download`` (the HF cache serves it offline), checked only against its own
    metadata by create_model, and logged as not pinned."""
    repo_id, at, revision = ref.partition("@")
    if not is_hub_repo_id(repo_id) or (at and not revision):
        raise WeightsError(f"{HF_HUB_PREFIX}{ref} is not '{HF_HUB_PREFIX}owner/name' or "
                           f"'{HF_HUB_PREFIX}owner/name@revision'")
    # huggingface_hub writes the commit into refs/<revision> in its cache: no '..' or '/' may
    # take that path out of it (git refs never hold '..', a leading '/' or a backslash either)
    if ".." in revision or revision.startswith("/") or "\\" in revision or "\0" in revision:
        raise WeightsError(f"{HF_HUB_PREFIX}{ref!r}: the revision must be a branch, tag or commit "
                           f"(no '..', leading '/', backslash or NUL), e.g. "
                           f"'{HF_HUB_PREFIX}{repo_id}@main'")
    path = manifest_path()
    for entry in load_manifest(path)["weights"]:
        if entry["hub_repo_id"] == repo_id and revision in ("", entry["revision"]):
            _log.info("%s%s is %s in NormZoo's manifest: verified by its sha256",
                      HF_HUB_PREFIX, ref, entry["name"])
            return Weights(entry, path.parent)
    from huggingface_hub import constants
    from huggingface_hub.errors import EntryNotFoundError

    try:
        file = hub_download(repo_id, HUB_FILENAME, revision or None, progress)
    except Exception as err:  # HTTP, connection (httpx or requests) and cache errors alike
        if constants.HF_HUB_OFFLINE:
            reason = (f"it is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                      f"HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE to download it, or copy a "
                      f"cache that holds it into HF_HOME")
        elif isinstance(err, EntryNotFoundError):
            reason = (f"the repo has no {HUB_FILENAME}, and NormZoo loads only safetensors, "
                      f"never pickles; convert its checkpoint with python -m zoo.convert and "
                      f"pass the file, or ask its owner for a {HUB_FILENAME}")
        else:
            reason = one_line(err, 500)
        raise WeightsError(f"could not get {HUB_FILENAME} of {HF_HUB_PREFIX}{ref}: {reason}") from None
    _names_its_model(file)
    _log.warning("%s%s is not in NormZoo's manifest, so no sha256 pins it: loaded %s, whose "
                 "metadata says it holds %s; its tensors are checked against that model's "
                 "only", HF_HUB_PREFIX, ref, file, read_metadata(file)["model"])
    return file


def _names_its_model(path: Path) -> Path:
    """``path``, once its metadata names the model its tensors are; without that nothing
    checks they belong to the model they would be loaded into (other norms' tensors fit)."""
    if "model" not in read_metadata(path):
        raise WeightsError(f"{checkpoint_file(path)} does not name its model in its metadata, so "
                           f"nothing checks its tensors are this model's; save it with "
                           f"zoo.save_checkpoint, or import it with python -m zoo.convert")
    return path


def _looks_like_path(text: str) -> bool:
    if text.endswith(".safetensors") or os.sep in text or "/" in text or text.startswith(("~", ".")):
        return True
    try:
        return Path(text).exists()
    except OSError:  # too long a name, say: resolve_weights says so as it looks the path up
        return True


def _none_published(model: str) -> str:
    published = sorted({n.split(".")[0] for n in list_weights()})
    return (f"no pretrained weights are published for {model!r} yet; build it untrained with "
            f"weights=None, or load your own file with weights='path/to/model.safetensors'. "
            f"Models with weights: {', '.join(published) or 'none yet'}")


def load_weights(model: nn.Module, source: Union[Weights, Path], *, progress: bool = True,
                 num_classes: Optional[int] = None) -> list[str]:
    """Load ``source`` strictly into ``model`` (built for the checkpoint's class count).

    With a different ``num_classes`` the classifier (and logits norm) is then replaced by a
    freshly initialised one; the re-initialised keys are returned and logged.
    """
    path = source.fetch(progress=progress) if isinstance(source, Weights) else checkpoint_file(source)
    missing, unexpected = load_state_into(model, path)
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
