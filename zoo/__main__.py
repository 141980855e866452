"""``python -m zoo``: load a model and show what it does on CIFAR-10 test images.

The model gets its default pretrained weights when it has any (shipped with the package,
so this works offline); otherwise it is untrained, seeded, and scores near chance. The
run shows the model, its norm and weights, its predictions, its accuracy and its speed.
Without the CIFAR-10 folder, ``--download`` fetches it into NormZoo's cache first.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import torch

import zoo
import zoo.weights
from zoo.cli import add_download_argument, downloaded_cifar, positive_int
from zoo.data import SHARED_DATA, load_cifar
from zoo.preprocessing import default_preprocessing, eval_transforms

DEFAULT_DATA = SHARED_DATA / "cifar10"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20_bn", help="a CIFAR model name (default: %(default)s)")
    parser.add_argument("--data", help=f"folder with cifar-10-batches-py/ (default: {DEFAULT_DATA}, "
                                       f"or with --download the cache folder)")
    add_download_argument(parser)
    parser.add_argument("--limit", type=positive_int(), default=1000,
                        help="images to classify (default: %(default)s)")
    parser.add_argument("-b", "--batch-size", type=positive_int(), default=250)
    parser.add_argument("--weights", default="DEFAULT",
                        help="'DEFAULT', a tag, a local .safetensors file, or 'none' for an "
                             "untrained model (default: %(default)s, untrained if none are published)")
    parser.add_argument("--seed", type=int, default=0, help="seed for an untrained model")
    args = parser.parse_args(argv)

    try:
        arch, _ = zoo.parse_model_name(args.model)
        if zoo.get_arch(arch).dataset != "cifar":
            raise ValueError(f"{args.model} is an ImageNet model; this demo classifies CIFAR images: "
                             f"pick a CIFAR model from zoo.list_models('resnet20_*')")
        if args.download:
            args.data = downloaded_cifar(args.data, args.download, zoo.weights.cache_dir())
        args.data = args.data or str(DEFAULT_DATA)
        data = load_cifar(args.data, "test")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    images, labels = data.images[: args.limit], data.labels[: args.limit]

    torch.manual_seed(args.seed)
    weights = None if args.weights.lower() == "none" else args.weights
    if weights == "DEFAULT" and not zoo.list_weights("{}_{}.*".format(*zoo.parse_model_name(args.model))):
        weights = None  # nothing published for this model: show it untrained
    try:
        # Weights keep their own head: a new one for other data would score chance under their name.
        with _weights_source() as source:
            model = zoo.create_model(args.model, weights=weights,
                                     num_classes=None if weights else len(data.classes)).eval()
        if model.config["num_classes"] != len(data.classes):
            trained_on = _trained_on(model.config["weights"]) or "a dataset"
            raise ValueError(
                f"the weights {model.config['weights']} were trained on {trained_on} "
                f"({model.config['num_classes']} classes) but {args.data} holds "
                f"{len(data.classes)}-class data; pass --data a folder of {trained_on}, or "
                f"--weights none for an untrained model")
    except (zoo.WeightsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    print(f"NormZoo {zoo.__version__}, torch {torch.__version__}")
    what = (f"weights {cfg['weights']}" if weights else
            f"UNTRAINED (seed {args.seed}; no weights published for it)")
    print(f"model: {cfg['name']} = {cfg['arch']} with norm {cfg['norm']!r} ({cfg['norm_rule']}), "
          f"{params / 1e6:.2f} M parameters, {what}")
    if source:
        print(f"       from {source[-1]}")
    print(f"data:  {args.data}, test split, {len(images)} images, {len(data.classes)} classes")
    # The weights' own evaluation preprocessing (the usual CIFAR one for an untrained model).
    preprocess = eval_transforms(cfg.get("preprocessing") or default_preprocessing(model))

    predictions = []
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in images.split(args.batch_size):
            logits = model(preprocess(batch))
            predictions.append(logits.argmax(1))
    seconds = time.perf_counter() - start
    predicted = torch.cat(predictions)

    print("first images (true -> predicted):")
    for t, p in zip(labels[:8].tolist(), predicted[:8].tolist()):
        print(f"  {data.classes[t]:>10} -> {data.classes[p]}")
    correct = int((predicted == labels).sum())
    print(f"top-1: {100 * correct / len(labels):.1f}% ({correct}/{len(labels)}"
          + (f"; chance is {100 / len(data.classes):.0f}% for an untrained model" if weights is None else "")
          + "), "
          f"{len(labels) / seconds:.0f} img/s on {torch.get_num_threads()} CPU threads")
    return 0


@contextlib.contextmanager
def _weights_source():
    """The zoo logger's INFO lines while loading (where the weights came from), kept to be
    printed once the run goes ahead."""
    class Kept(logging.Handler):
        lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage().split(": ", 1)[-1])  # without the name

    handler = Kept(logging.INFO)
    log = logging.getLogger("zoo")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _trained_on(weights: str) -> Optional[str]:
    """The dataset loaded weights (a manifest name or a file) were trained on, if recorded."""
    if Path(weights).is_file():
        return zoo.weights.read_metadata(weights).get("dataset")
    return zoo.get_weight(weights).entry["dataset"]


if __name__ == "__main__":
    sys.exit(main())
