"""Import checkpoints people already have: ``python -m zoo.convert SOURCE SRC --out OUT``.

    ilm-authors          the ILM-Norm authors' ImageNet ResNet-50 with ILM-GN -> resnet50_ilm
                         (their network pools a fixed 7x7 map: it is equal at 224x224 inputs)
    torchvision          torchvision ResNet / VGG state_dicts -> --model resnetNN_bn, vggNN_bn,
                         or vggNN_none for a VGG without BN
    cifar-reproduction   the widely used public CIFAR-10 reproduction of He et al.'s ResNets
                         -> resnet20_bn ... resnet110_bn (depth read from the blocks)

SRC is a .pth/.pt/.tar file, read with ``torch.load(weights_only=True)`` (a file that needs
code to unpickle is refused), or a .safetensors file; a ``{"state_dict": ...}`` wrapper and
DataParallel's ``module.`` prefix are removed. OUT is written by ``zoo.save_checkpoint`` with
the preprocessing the source was trained with, so ``weights=OUT`` (and ``--checkpoint``)
load it. Metrics are left unmeasured.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import sys
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from .cli import git_commit, one_line
from .data import IMAGENET_MEAN, IMAGENET_STD
from .registry import create_model, get_arch, list_archs, list_models, parse_model_name
from .weights import WeightsError, save_checkpoint, sha256sum, short_list

__all__ = ["ConvertError", "SOURCES", "convert", "read_state_dict", "map_ilm_authors",
           "map_torchvision", "map_cifar_reproduction"]

StateDict = dict[str, torch.Tensor]


class ConvertError(ValueError):
    """A source file that cannot be converted; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------
# Reading a source file


def read_state_dict(path: Union[str, Path]) -> tuple[StateDict, dict[str, str]]:
    """The tensors of a .safetensors or torch-saved file, as ``(state_dict, dropped)``.

    A ``{"state_dict": ...}`` wrapper is opened (its other entries, such as ``best_prec1``,
    are returned in ``dropped`` with the reason) and ``module.`` prefixes are removed.
    """
    path = Path(path)
    if path.is_dir():
        raise ConvertError(f"{path} is a folder; pass the checkpoint file in it (.pth, .pt, .tar "
                           f"or .safetensors)")
    if not path.is_file():
        raise ConvertError(f"{path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            loaded = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for bad bytes
            raise ConvertError(f"{path} is not a readable safetensors file ({e})") from None
    else:
        loaded = _torch_load(path)
    dropped = {}
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        dropped = {str(k): "checkpoint entry beside the state_dict, not a weight"
                   for k in loaded if k != "state_dict"}
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not loaded:
        raise ConvertError(f"{path} holds {type(loaded).__name__}, not a state_dict (a dict of "
                           f"tensors, possibly wrapped as {{'state_dict': ...}})")
    not_tensors = [str(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConvertError(f"{path}: the state_dict holds entries that are not tensors: "
                           f"{short_list(not_tensors)}")
    return {k.removeprefix("module."): v for k, v in loaded.items()}, dropped


def _torch_load(path: Path):
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():
            # torch warns of any protocol but 2; the load itself says whether it can read the file.
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConvertError(
            f"refusing to unpickle {path}: {_refusal(str(e))}. If you trust the file, load it "
            f"yourself and save only the weights, torch.save(model.state_dict(), "
            f"'weights.pth'), then convert that") from None
    except Exception as e:  # torch raises many types for files that are not its format
        raise ConvertError(f"{path} is not a readable PyTorch checkpoint "
                           f"({type(e).__name__}: {one_line(e, 200)})") from None


def _refusal(message: str) -> str:
    """Why torch's weights-only unpickler refused a file, from its message. The wording
    changes between torch versions ("Unsupported global: GLOBAL io.open was not ...",
    "unsupported GLOBAL posix.system whose module ..."); the opcode's name GLOBAL stays."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return (f"loading it needs the object {found.group(1)}, and unpickling that could run "
                f"arbitrary code")
    # Nothing named (e.g. "Unsupported operand 149" for pickle protocol 4 and later): torch's
    # line saying what it could not read, else its first line.
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", message).splitlines()]
    lines = lines or ["no reason given"]
    detail = next((line for line in lines if line.lower().startswith("unsupported")), lines[0])
    return (f"torch's weights-only loader stops at {detail!r}, and a full unpickle could run "
            f"arbitrary code")


# ---------------------------------------------------------------------------------------------
# The sources' layouts

# The ILM-Norm authors' names of an ILM-GN layer's parameters -> NormZoo's ILMNorm names.
ILM_AUTHORS_NAMES = {
    "fc_embed.0.weight": "encoder.weight",
    "fc_weight.1.weight": "gain_decoder.weight",
    "fc_bias.1.weight": "shift_decoder.weight",
    "weight_bias": "weight_bias",  # (1, C, 1, 1) in the original, (C,) in NormZoo
    "bias_bias": "bias_bias",
}
# The original registers its one encoder three times; these two copies repeat fc_embed.0.weight.
ILM_ENCODER_COPIES = ("fc_weight.0.0.weight", "fc_bias.0.0.weight")


def _split_name(key: str, names) -> tuple[str, Optional[str]]:
    """``("layer1.0.bn1", "fc_embed.0.weight")`` for a key ending in one of ``names``."""
    for name in names:
        if key.endswith("." + name):
            return key[:-len(name) - 1], name
    return key, None


def map_ilm_authors(state_dict: StateDict) -> tuple[StateDict, dict[str, str]]:
    """The ILM-Norm authors' ResNet with zoo names; ``(state_dict, dropped key -> reason)``.

    Every ILM-GN layer's encoder must equal its two copies (refused otherwise, naming the
    layer); the copies are dropped and the offsets reshaped to (C,). Other keys keep their
    (torchvision) names.
    """
    mapped, dropped = {}, {}
    for key, tensor in state_dict.items():
        layer, name = _split_name(key, (*ILM_AUTHORS_NAMES, *ILM_ENCODER_COPIES))
        if name in ILM_ENCODER_COPIES:
            encoder = state_dict.get(f"{layer}.fc_embed.0.weight")
            if encoder is not None and not torch.equal(encoder, tensor):
                raise ConvertError(
                    f"{layer}: the encoder's copies differ ({layer}.fc_embed.0.weight and "
                    f"{key}); the original network shares one encoder, so this checkpoint was "
                    f"edited or is not the ILM-Norm authors' layout")
            dropped[key] = "duplicate of fc_embed.0.weight (equal)"
        elif name in ("weight_bias", "bias_bias"):
            mapped[key] = tensor.flatten()
        elif name is not None:
            mapped[f"{layer}.{ILM_AUTHORS_NAMES[name]}"] = tensor
        else:
            mapped[key] = tensor
    return mapped, dropped


def _ilm_authors_key(zoo_key: str) -> str:
    layer, name = _split_name(zoo_key, ILM_AUTHORS_NAMES.values())
    original = {zoo: original for original, zoo in ILM_AUTHORS_NAMES.items()}
    return zoo_key if name is None else f"{layer}.{original[name]}"


def map_torchvision(state_dict: StateDict) -> tuple[StateDict, dict[str, str]]:
    """torchvision's names are the zoo's (``_bn`` ResNets, ``_bn`` / ``_none`` VGGs): unchanged."""
    return dict(state_dict), {}


def map_cifar_reproduction(state_dict: StateDict) -> tuple[StateDict, dict[str, str]]:
    """The public CIFAR reproduction's ResNet with zoo names: its head ``linear`` is ``fc``."""
    return {"fc" + k[len("linear"):] if k.startswith("linear.") else k: v
            for k, v in state_dict.items()}, {}


def _cifar_reproduction_key(zoo_key: str) -> str:
    return "linear" + zoo_key[len("fc"):] if zoo_key.startswith("fc.") else zoo_key


def _canonical(model: str) -> str:
    return "_".join(parse_model_name(model))


def _ilm_authors_model(state_dict: StateDict, model: Optional[str]) -> str:
    arch, norm = parse_model_name(model or "resnet50_ilm")
    if norm != "ilm":
        raise ConvertError(f"ilm-authors checkpoints hold ILM-GN networks: --model must be an "
                           f"*_ilm model such as resnet50_ilm, not {model}")
    return f"{arch}_{norm}"


def _torchvision_model(state_dict: StateDict, model: Optional[str]) -> str:
    accepted = [m for m in list_models(["resnet*_bn", "vgg*_bn", "vgg*_none"])
                if get_arch(parse_model_name(m)[0]).dataset == "imagenet"]
    if model is None or _canonical(model) not in accepted:
        raise ConvertError(f"torchvision checkpoints need --model, one of {', '.join(accepted)} "
                           f"(vggNN_none is torchvision's VGG without BN)"
                           + (f", not {model}" if model else ""))
    return _canonical(model)


def _cifar_reproduction_model(state_dict: StateDict, model: Optional[str]) -> str:
    blocks = len({m.group(1) for k in state_dict if (m := re.match(r"layer1\.(\d+)\.", k))})
    arch = f"resnet{6 * blocks + 2}"
    if arch not in list_archs() or get_arch(arch).dataset != "cifar":
        raise ConvertError(f"the checkpoint has {blocks} blocks in layer1; the reproduction's "
                           f"ResNet-20/32/44/56/110 have 3/5/7/9/18 (depth 6n+2)")
    if model is not None and _canonical(model) != f"{arch}_bn":
        raise ConvertError(f"--model {model} does not fit: the checkpoint has {blocks} blocks "
                           f"per stage, which is {arch}_bn")
    return f"{arch}_bn"


_IMAGENET_EVAL = {"input_size": [3, 224, 224], "resize": 256, "crop": 224,
                  "interpolation": "bilinear", "mean": list(IMAGENET_MEAN),
                  "std": list(IMAGENET_STD)}


@dataclasses.dataclass(frozen=True)
class Source:
    """A checkpoint layout NormZoo converts from, and what its weights were trained with."""

    name: str  # the CLI's name, also the default tag
    map_state_dict: Callable[[StateDict], tuple[StateDict, dict[str, str]]]
    source_key: Callable[[str], str]  # a zoo key's name in the source (for error messages)
    choose_model: Callable[[StateDict, Optional[str]], str]  # (source, --model) -> zoo model
    dataset: str
    preprocessing: dict


SOURCES = {s.name: s for s in (
    Source("ilm-authors", map_ilm_authors, _ilm_authors_key, _ilm_authors_model,
           "imagenet-1k", _IMAGENET_EVAL),
    Source("torchvision", map_torchvision, str, _torchvision_model, "imagenet-1k", _IMAGENET_EVAL),
    # The reproduction normalises CIFAR with ImageNet's mean and std, at 32x32, no resize.
    Source("cifar-reproduction", map_cifar_reproduction, _cifar_reproduction_key,
           _cifar_reproduction_model, "cifar10",
           {**_IMAGENET_EVAL, "input_size": [3, 32, 32], "resize": None, "crop": 32}),
)}


# ---------------------------------------------------------------------------------------------
# Converting


def _fit(model: torch.nn.Module, mapped: StateDict, source: Source, where: str) -> list[str]:
    """Refuse tensors that do not fit ``model`` (naming keys as the source does); returns
    the model's ``num_batches_tracked`` keys the source lacks, which keep their value 0."""
    expected = model.state_dict()
    absent = [k for k in expected if k not in mapped]
    missing = [source.source_key(k) for k in absent if not k.endswith(".num_batches_tracked")]
    unexpected = [source.source_key(k) for k in mapped if k not in expected]
    wrong_shape = [f"{source.source_key(k)} {tuple(v.shape)} (needs {tuple(expected[k].shape)})"
                   for k, v in mapped.items() if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        raise ConvertError(
            f"{where} does not fit {model.config['name']} in the {source.name} layout: "
            + "; ".join(f"{what} {short_list(keys, 8)}" for what, keys in (
                ("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
                if keys))
    return [k for k in absent if k.endswith(".num_batches_tracked")]


def convert(source: str, src_path: Union[str, Path], out_path: Union[str, Path],
            model: Optional[str] = None, tag: Optional[str] = None, *,
            report: Optional[Callable[[str], None]] = None) -> Path:
    """Convert ``src_path`` from the ``source`` layout (a key of ``SOURCES``) into a NormZoo
    checkpoint at ``out_path``, for ``zoo.create_model(model, weights=out_path)``.

    ``model`` is required for torchvision and checked otherwise; ``tag`` defaults to the
    source's name. ``report`` receives the summary's lines (the CLI passes ``print``).
    """
    if source not in SOURCES:
        raise ConvertError(f"unknown source {source!r}; one of {', '.join(SOURCES)}")
    spec = SOURCES[source]
    tag = tag or source
    if not re.fullmatch(r"[a-z0-9][a-z0-9_\-]*", tag):
        raise ConvertError(f"tag {tag!r} must be lowercase letters, digits, '_' and '-'")
    if Path(out_path).is_dir():
        raise ConvertError(f"the output {out_path} is a folder; name the .safetensors file to "
                           f"write")
    state_dict, dropped = read_state_dict(src_path)
    mapped, renamed_dropped = spec.map_state_dict(state_dict)
    dropped.update(renamed_dropped)
    model_name = spec.choose_model(state_dict, model)
    net = create_model(model_name, progress=False)
    unset = _fit(net, mapped, spec, str(src_path))
    net.load_state_dict(mapped, strict=False)  # _fit checked it: only ``unset`` is not loaded
    command = ["python", "-m", "zoo.convert", source, str(src_path), "--out", str(out_path)]
    command += ["--model", model] if model else []
    command += ["--tag", tag] if tag != source else []
    recipe = {"command": shlex.join(command), "commit": git_commit(),
              "source_sha256": sha256sum(src_path)}
    out = save_checkpoint(net, out_path, tag=tag, dataset=spec.dataset,
                          preprocessing=spec.preprocessing, recipe=recipe)
    if report is not None:
        report(f"{src_path} ({source}) -> {out}: {len(mapped)} tensors mapped into {model_name}")
        reasons: dict[str, list[str]] = {}
        for key, reason in dropped.items():
            reasons.setdefault(reason, []).append(key)
        for reason, keys in reasons.items():
            report(f"  dropped {len(keys)}, {reason}: {short_list(keys, 4)}")
        if unset:
            report(f"  {len(unset)} num_batches_tracked absent from the source, left 0 (BatchNorm "
                   f"reads it only with momentum=None): {short_list(unset, 4)}")
        report(f"load it with zoo.create_model({model_name!r}, weights={str(out)!r})")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", choices=list(SOURCES), help="the checkpoint's layout")
    parser.add_argument("src", help="the checkpoint: .pth, .pt, .tar or .safetensors")
    parser.add_argument("--out", required=True, help="the NormZoo .safetensors file to write")
    parser.add_argument("--model", help="the zoo model (required for torchvision)")
    parser.add_argument("--tag", help="the weights' tag (default: the source's name)")
    args = parser.parse_args(argv)
    try:
        convert(args.source, args.src, args.out, model=args.model, tag=args.tag, report=print)
    except (ValueError, WeightsError, OSError) as e:  # ConvertError is a ValueError
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
