"""Deploying a zoo model: fold its norms, quantize it to int8, export it.

    python -m zoo.deploy resnet20_l1bn --weights DEFAULT --fold --int8 --calibrate 1000 \\
        --data ../shared/data/cifar10 --out model.pt2

prints top-1 on the first --limit CIFAR test images before and after, then writes the model
(``.pt2``: ``torch.export.save``; ``.onnx``: ``torch.onnx.export(dynamo=True)``) with a
dynamic batch size. Int8 is post-training quantization through torchao's PT2E flow with
its x86 quantizer (static, per-channel int8 weights and per-tensor int8 activations),
calibrated on the first --calibrate CIFAR training images; it needs NormZoo's ``[deploy]``
extra (``pip install -e ".[deploy]"``). --recalibrate first re-estimates the norms' running
statistics on those images, augmented as in training (:func:`zoo.recalibrate_norms`).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from .cli import first_line, one_line, positive_int
from .fold import FoldReport, by_reason, fold_norms
from .norms.ilm import ILMNorm

__all__ = ["Int8Report", "quantize_int8", "save_model", "main"]

DEPLOY_EXTRA = 'pip install -e ".[deploy]"'
FORMATS = (".pt2", ".onnx")


@dataclasses.dataclass
class Int8Report:
    """What :func:`quantize_int8` did: the fold before it, the calibration images, how many
    conv and linear weights became int8, and the layers left in float, with why."""

    fold: FoldReport
    calibration_images: int
    int8_layers: int
    float_layers: list[tuple[str, str]]

    def __str__(self) -> str:
        lines = [f"int8: {self.int8_layers} conv/linear layer(s) with int8 weights and inputs, "
                 f"calibrated on {self.calibration_images} image(s); "
                 f"{len(self.float_layers)} layer(s) left in float"]
        lines += [f"  float, {why}: {', '.join(names)}" for why, names in by_reason(self.float_layers).items()]
        return "\n".join(lines) + "\n" + str(self.fold)


def _torchao():
    """torchao's PT2E entry points, or one clear error naming the extra that installs it."""
    try:
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError as e:
        raise ImportError(f"int8 quantization needs torchao, NormZoo's optional [deploy] extra: "
                          f"{DEPLOY_EXTRA} ({first_line(e)})") from None
    return prepare_pt2e, convert_pt2e, allow_exported_model_train_eval, x86


def _images(batch) -> torch.Tensor:
    """A calibration batch's images: the batch itself, or the first item of a tuple (a
    DataLoader's ``(images, labels)``), as a plain tensor (torchvision's Image subclass
    does not export)."""
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not (torch.is_tensor(images) and images.is_floating_point() and images.dim() == 4):
        what = f"a {images.dtype} tensor of shape {tuple(images.shape)}" if torch.is_tensor(images) \
            else type(images).__name__
        raise ValueError(f"calibration batches must be float image tensors (N, C, H, W), or tuples "
                         f"with them first, as preprocessed for the model; got {what}")
    return images.as_subclass(torch.Tensor)


def _batch_dim():
    return ({0: torch.export.Dim("batch")},)


def quantize_int8(model: nn.Module, calibration_batches: Iterable) -> tuple[nn.Module, Int8Report]:
    """``model`` with int8 weights and activations for x86 CPUs, and a report.

    Folds the norms first (:func:`zoo.fold_norms`: ``model`` must be in eval mode and is not
    changed), exports the result, calibrates activation ranges on ``calibration_batches``
    (preprocessed image tensors, or ``(images, labels)`` tuples) and converts it: torchao's
    PT2E flow with its x86 quantizer (``pip install -e ".[deploy]"``). Per-sample norms (gn,
    in, ln, ilm*: statistics computed from each input) stay in float between the int8
    layers, ILM-Norm's encoder with them; the report names every float layer. The result is
    a ``torch.fx.GraphModule`` of reference int8 ops (quantize, dequantize, float op), any
    batch size; ``torch.compile`` lowers them to int8 kernels, and :func:`save_model` writes it.
    """
    folded, fold_report = fold_norms(model)
    batches = (_images(b) for b in calibration_batches)
    first = next(batches, None)
    if first is None:
        raise ValueError("quantize_int8 got no calibration batch: pass a few batches of training "
                         "images (a few hundred images calibrate a CIFAR ResNet)")
    prepare_pt2e, convert_pt2e, allow_train_eval, x86 = _torchao()
    # An inference model: without gradients strict export keeps ILM-Norm's batch size dynamic.
    folded.requires_grad_(False)
    example = first[:2] if len(first) > 1 else torch.cat([first, first])  # batch 1 would specialise
    # Strict export names each call of a reused module apart (a ResNet block calls its ReLU
    # twice); the x86 quantizer's pattern matching needs that (pytorch/ao#4478).
    exported = torch.export.export(folded, (example,), dynamic_shapes=_batch_dim(), strict=True).module()
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    seen = 0
    with torch.no_grad():
        for images in itertools.chain([first], batches):
            prepared(images)
            seen += len(images)
    quantized = convert_pt2e(prepared)
    # convert_pt2e leaves each float weight behind, unused, beside its int8 copy: drop them,
    # so a saved model holds int8 weights only.
    used = {node.target for node in quantized.graph.nodes if node.op == "get_attr"}
    for name, _ in list(quantized.named_parameters()):
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(quantized.get_submodule(owner), attr)
    allow_train_eval(quantized)  # so .eval() works, as zoo.evaluate calls it
    nn.Module.train(quantized, False)  # only marks it inference (its own .eval() leaves it be)
    int8 = sum(str(n.target).startswith("quantized_decomposed.dequantize_per_channel")
               for n in quantized.graph.nodes)
    # The quantizer annotates convs and linears only: a kept norm (ILM-Norm with its gain and
    # shift encoder) runs in float on the dequantized activations.
    float_layers = [(name, f"{why}; it runs in float between the int8 layers")
                    for name, why in fold_report.kept]
    layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in folded.modules())
    layers -= sum(isinstance(m, (nn.Conv2d, nn.Linear)) for ilm in folded.modules()
                  if isinstance(ilm, ILMNorm) for m in ilm.modules())
    if int8 < layers:
        float_layers.append((f"{layers - int8} of {layers} conv/linear layers",
                             "the x86 quantizer has no int8 pattern for where they sit"))
    return quantized, Int8Report(fold_report, seen, int8, float_layers)


def save_model(model: nn.Module, example: torch.Tensor, path) -> int:
    """Write ``model`` to ``path`` (``.pt2``: ``torch.export.save``; ``.onnx``: ONNX through
    ``torch.onnx.export(dynamo=True)``, which needs the ``[onnx]`` extra) with a dynamic batch
    size, traced on ``example``; returns the file's size in bytes. The file appears only when
    complete: it is written beside ``path`` first, then renamed over it."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise ValueError(f"cannot write {path}: the extension must be {' or '.join(FORMATS)}")
    example = example.as_subclass(torch.Tensor)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial{path.suffix}")
    try:
        if path.suffix == ".pt2":
            torch.export.save(torch.export.export(model, (example,), dynamic_shapes=_batch_dim()),
                              temporary)
        else:
            torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=_batch_dim(),
                              verbose=False).save(str(temporary))
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path.stat().st_size


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.2f} MB" if num_bytes >= 1e6 else f"{num_bytes / 1e3:.1f} kB"


def _check_out(path: Path, force: bool) -> None:
    if path.suffix not in FORMATS:
        raise ValueError(f"--out {path}: unknown extension {path.suffix or '(none)'!r}; use .pt2 "
                         f"(torch.export) or .onnx")
    if path.exists() and not force:
        raise ValueError(f"--out {path} exists; pass --force to replace it, or another path")
    if not path.parent.is_dir():
        raise ValueError(f"--out {path}: the folder {path.parent} does not exist")


def _augmented(images: torch.Tensor) -> torch.Tensor:
    """uint8 CIFAR images as the recipes train on them (seeded): a random 32x32 crop of the
    4-pixel zero-padded image, a horizontal flip. Statistics re-estimated on unaugmented
    training images cost resnet20_bn 3 points of test top-1 (docs/deploy.md)."""
    from torchvision.transforms import v2  # imported on use: slow to import

    augment = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return torch.stack([augment(image) for image in images])


def run(args, say=print) -> int:
    from .data import load_cifar
    from .evaluate import cifar_batches, evaluate, split_name
    from .norms.running_stats import recalibrate_norms
    from .preprocessing import default_preprocessing, eval_transforms
    from .registry import create_model

    out = Path(args.out)
    _check_out(out, args.force)
    model = create_model(args.model, weights=args.weights).eval()
    test = load_cifar(args.data, "test")
    if model.config["num_classes"] != len(test.classes):
        raise ValueError(f"{args.model} has {model.config['num_classes']} classes but the data in "
                         f"{args.data} has {len(test.classes)}: pass the matching CIFAR folder")
    transform = eval_transforms(model.config.get("preprocessing") or default_preprocessing(model))
    images, labels = test.images[: args.limit], test.labels[: args.limit]

    def top1(m) -> float:
        return evaluate(m, cifar_batches(images, labels, transform, args.batch_size)).top1

    split = split_name("cifar10" if len(test.classes) == 10 else "cifar100", len(labels))
    say(f"{args.model} ({model.config.get('weights') or 'untrained'}), {split}")
    say(f"before: top-1 {top1(model):.2f}% (fp32)")
    deployed, steps = model, ["fp32"]
    if args.int8 or args.recalibrate:
        train = load_cifar(args.data, "train")
        images_c, labels_c = train.images[: args.calibrate], train.labels[: args.calibrate]
    if args.recalibrate:
        augmented = cifar_batches(_augmented(images_c), labels_c, transform, args.batch_size)
        say(f"recalibrated {recalibrate_norms(model, augmented)} norm(s) on {len(labels_c)} "
            f"augmented training images")
        steps = ["recalibrated", "fp32"]
    if args.int8:
        deployed, report = quantize_int8(model, cifar_batches(images_c, labels_c, transform,
                                                              args.batch_size))
        steps = steps[:-1] + ["folded", "int8"]
        say(str(report))
    elif args.fold:
        deployed, report = fold_norms(model)
        steps = steps[:-1] + ["folded", "fp32"]
        say(str(report))
    say(f"after: top-1 {top1(deployed):.2f}% ({', '.join(steps)})")
    size = save_model(deployed, transform(images[:2]), out)
    say(f"wrote {out} ({_size(size)})")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a CIFAR model name, e.g. resnet20_l1bn")
    parser.add_argument("--weights", default="DEFAULT",
                        help="'DEFAULT', a tag or a .safetensors file (default: %(default)s)")
    parser.add_argument("--fold", action="store_true", help="fold the norms into the convs")
    parser.add_argument("--int8", action="store_true",
                        help="int8 post-training quantization (folds first); needs the [deploy] extra")
    parser.add_argument("--recalibrate", action="store_true",
                        help="first re-estimate the norms' running statistics on the --calibrate "
                             "images, augmented as in training (zoo.recalibrate_norms: for "
                             "averaged weights or new data)")
    parser.add_argument("--calibrate", type=positive_int(), default=1000,
                        help="training images to calibrate int8 (and --recalibrate) on "
                             "(default: %(default)s)")
    parser.add_argument("--data", required=True, help="the CIFAR folder (python layout)")
    parser.add_argument("--limit", type=positive_int(), default=1000,
                        help="test images to score before and after (default: %(default)s)")
    parser.add_argument("-b", "--batch-size", type=positive_int(), default=250)
    parser.add_argument("--out", required=True, help="the file to write: .pt2 or .onnx")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, ImportError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
