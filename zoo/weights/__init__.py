"""Pretrained weights: the manifest, checkpoint files, where they come from and how they load.

Every published checkpoint is one entry of ``weights_manifest.json`` (package data of
``zoo``), named ``{model}.{tag}``: ``resnet20_ilm.cifar10``. A file is found, in order:

1. an explicit local file or Hub-ready folder the user passes (``weights="path"``);
2. the copy shipped inside the package (small CIFAR checkpoints), so clones work offline;
3. the Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``; ``HF_HUB_OFFLINE`` is honoured);
4. ``hf_hub_download`` at the entry's pinned commit (``HF_ENDPOINT`` is honoured);
5. the entry's mirror URL, streamed with ``requests`` into NormZoo's cache (at most
   ``size_bytes``; one process at a time per file, under a lock file beside it).

A file from 2-5 is used only if its sha256 equals the manifest's. Files are safetensors:
nothing on the load path unpickles.

The modules, each importing only those above it when it runs (and none ``zoo.registry``,
which imports this package and hands it its model-name rule, ``set_model_name_parser``):

- ``errors``: :class:`WeightsError`, and ``short_list`` for the keys its messages name;
- ``files``: checkpoint files, safetensors and their metadata;
- ``manifest``: the schema (:class:`ManifestEntry`), loading, validating, writing;
- ``fetch``: a verified copy of an entry's file (steps 2-5);
- ``api``: :class:`Weights`, the enums, listing, resolving ``weights=`` and loading.
"""

from ..deprecation import moved_names
from .api import (HF_HUB_PREFIX, Weights, get_model_weights, get_weight, list_weights,
                  load_weights, resolve_weights, weights_of)
from .errors import WeightsError, short_list
from .fetch import cache_dir
from .files import (HUB_FILENAME, MAX_IMAGE_SIDE, check_metadata_options, checkpoint_file,
                    read_checkpoint, read_metadata, save_checkpoint, sha256sum)
from .manifest import (ENTRY_KEYS, MANIFEST_PATH, METRICS_KEYS, PREPROCESSING_KEYS, RECIPE_KEYS,
                       SCHEMA_VERSION, UNPUBLISHED, ManifestEntry, Metrics, Preprocessing, Recipe,
                       load_manifest, manifest_lock, manifest_path,
                       set_model_name_parser, split_model_name,
                       validate_manifest, write_manifest)

__all__ = [
    "Weights", "WeightsError", "get_weight", "list_weights", "get_model_weights", "weights_of",
    "resolve_weights", "load_weights", "HF_HUB_PREFIX",
    "save_checkpoint", "read_checkpoint", "read_metadata", "checkpoint_file", "sha256sum",
    "check_metadata_options", "MAX_IMAGE_SIDE",
    "HUB_FILENAME", "cache_dir", "short_list",
    "ManifestEntry", "Preprocessing", "Metrics", "Recipe", "ENTRY_KEYS", "PREPROCESSING_KEYS",
    "METRICS_KEYS", "RECIPE_KEYS", "MANIFEST_PATH", "SCHEMA_VERSION", "UNPUBLISHED",
    "manifest_path", "manifest_lock", "load_manifest", "validate_manifest", "write_manifest",
    "set_model_name_parser", "split_model_name",
]

# Helpers that are not about weights lived here; the old paths work until the next release.
__getattr__ = moved_names(__name__, {
    "eval_transforms": "zoo.preprocessing", "default_preprocessing": "zoo.preprocessing",
    "new_head": "zoo.heads", "head_keys": "zoo.heads", "git_commit": "zoo.cli"})
