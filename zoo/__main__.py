"""``python -m zoo``: load a model and show what it does on CIFAR-10 test images.

No pretrained weights are published yet, so the model is untrained and scores near
chance; the run shows the model, its norm and config, its predictions and its speed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

import zoo
from zoo.data import CIFAR_MEAN, CIFAR_STD, load_cifar

DEFAULT_DATA = Path(os.environ.get(
    "NORMZOO_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "cifar10"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20_gn", help="a CIFAR model name (default: %(default)s)")
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="folder with cifar-10-batches-py/ (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=1000, help="images to classify (default: %(default)s)")
    parser.add_argument("-b", "--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0, help="seed for the untrained weights")
    args = parser.parse_args(argv)

    try:
        arch, _ = zoo.parse_model_name(args.model)
        if zoo.get_arch(arch).dataset != "cifar":
            raise ValueError(f"{args.model} is an ImageNet model; this demo classifies CIFAR images: "
                             f"pick a CIFAR model from zoo.list_models('resnet20_*')")
        data = load_cifar(args.data, "test")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    images, labels = data.images[: max(args.limit, 1)], data.labels[: max(args.limit, 1)]

    torch.manual_seed(args.seed)
    model = zoo.create_model(args.model, num_classes=len(data.classes)).eval()
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    print(f"NormZoo {zoo.__version__}, torch {torch.__version__}")
    print(f"model: {cfg['name']} = {cfg['arch']} with norm {cfg['norm']!r} ({cfg['norm_rule']}), "
          f"{params / 1e6:.2f} M parameters, UNTRAINED (seed {args.seed}; no weights published yet)")
    print(f"data:  {args.data}, test split, {len(images)} images, {len(data.classes)} classes")

    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    predictions = []
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in images.split(args.batch_size):
            logits = model((batch.float() / 255 - mean) / std)
            predictions.append(logits.argmax(1))
    seconds = time.perf_counter() - start
    predicted = torch.cat(predictions)

    print("first images (true -> predicted):")
    for t, p in zip(labels[:8].tolist(), predicted[:8].tolist()):
        print(f"  {data.classes[t]:>10} -> {data.classes[p]}")
    correct = int((predicted == labels).sum())
    print(f"top-1: {100 * correct / len(labels):.1f}% ({correct}/{len(labels)}; chance is "
          f"{100 / len(data.classes):.0f}% for an untrained model), "
          f"{len(labels) / seconds:.0f} img/s on {torch.get_num_threads()} CPU threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
