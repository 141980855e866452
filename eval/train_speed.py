"""Training throughput: NormZoo's trainer loop against a seed-style loop, same model, same run.

    python eval/train_speed.py                      # resnet20_bn, batch 128, 3 repeats
    python eval/train_speed.py --model resnet20_ilm --steps 30 --repeats 5

Seed-style: a plain Dataset of PIL images with per-image torchvision transforms (random
crop with padding 4, flip, ToTensor, Normalize) in a 2-worker DataLoader, fp32. Trainer:
uint8 tensors augmented a batch at a time (train/data.py), channels_last, bf16 autocast.
Both run the same SGD step on real CIFAR-10 training images; the two loops alternate and
the median of the repeats is reported, with the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo  # noqa: E402
from train.data import CifarTrainBatches  # noqa: E402
from zoo.data import CIFAR_MEAN, CIFAR_STD, load_cifar  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


class PilCifar(torch.utils.data.Dataset):
    """What a seed project does: one PIL image at a time through torchvision transforms."""

    def __init__(self, images, labels):
        from torchvision import transforms as T

        self.images, self.labels = images.permute(0, 2, 3, 1).numpy(), labels
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                                    T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def timed_steps(model, batches, steps: int, *, amp: bool) -> float:
    """img/s over ``steps`` SGD steps after 3 warm-up steps."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    seen, start = 0, None
    for i, (x, y) in enumerate(batches):
        if i == 3:
            seen, start = 0, time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
        if i == steps + 2:
            break
    return seen / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20_bn")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("-b", "--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    train = load_cifar(args.data, "train")
    n = args.batch_size * (args.steps + 4)
    images, labels = train.images[:n], train.labels[:n]
    seed_loader = torch.utils.data.DataLoader(PilCifar(images, labels), batch_size=args.batch_size,
                                              shuffle=True, num_workers=2, drop_last=True,
                                              persistent_workers=True)
    fast = CifarTrainBatches(images, labels, args.batch_size, seed=0, channels_last=True)
    torch.manual_seed(0)
    seed_model = zoo.create_model(args.model)
    fast_model = zoo.create_model(args.model).to(memory_format=torch.channels_last)
    seed_runs, fast_runs = [], []
    for r in range(args.repeats):
        seed_runs.append(timed_steps(seed_model, seed_loader, args.steps, amp=False))
        fast_runs.append(timed_steps(fast_model, fast.epoch(r), args.steps, amp=True))
    seed, fast_ = statistics.median(seed_runs), statistics.median(fast_runs)
    print(f"{args.model}, batch {args.batch_size}, {args.steps} steps x {args.repeats}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"seed-style loop: {seed:.0f} img/s (runs {', '.join(f'{v:.0f}' for v in seed_runs)})")
    print(f"trainer loop:    {fast_:.0f} img/s (runs {', '.join(f'{v:.0f}' for v in fast_runs)})")
    print(f"ratio: {fast_ / seed:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
