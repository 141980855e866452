"""Training data: CIFAR held as uint8 tensors and augmented a whole batch at a time.

Every epoch's order and augmentation come from a generator seeded by (seed, epoch), so a
resumed run sees exactly the batches the uninterrupted run would. Under torchrun each
global batch is split between the processes, so N processes see the same global
batches as one.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from zoo.data import CIFAR_MEAN, CIFAR_STD
from zoo.evaluate import rank_and_world


class CifarTrainBatches:
    """Shuffled, augmented, normalised batches of uint8 CIFAR images (N, 3, 32, 32).

    ``augment``: "crop_flip" (random 32x32 crop of the 4-pixel zero-padded image, horizontal
    flip) or "crop_flip_rotate" (also a random rotation within 15 degrees), or "none".
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 seed: int, augment: str = "crop_flip", channels_last: bool = False):
        if augment not in ("crop_flip", "crop_flip_rotate", "none"):
            raise ValueError(f"unknown CIFAR augmentation {augment!r}")
        self.images, self.labels = images, labels
        self.batch_size, self.seed, self.augment = batch_size, seed, augment
        self.channels_last = channels_last
        self.mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)

    def __len__(self) -> int:
        """Batches per epoch (the last, smaller batch is dropped: equal steps on every rank)."""
        return len(self.labels) // self.batch_size

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's part of every global batch of ``epoch``, from ``start_step`` on."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=g)
        shifts = torch.randint(0, 9, (n, 2), generator=g)  # crop offsets in the padded image
        flips = torch.rand(n, generator=g) < 0.5
        angles = (torch.rand(n, generator=g) * 2 - 1) * 15
        rank, world = rank_and_world()
        for step in range(start_step, len(self)):
            pos = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)[rank::world]
            idx = order[pos]
            x = self.images[idx]
            if self.augment != "none":
                x = _crop_flip(x, shifts[pos], flips[pos])
            x = x.float().div_(255)
            if self.augment == "crop_flip_rotate":
                x = _rotate(x, angles[pos])
            x = (x - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]


def _crop_flip(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    rows = shifts[:, 0, None] + torch.arange(h)                        # (n, h)
    cols = shifts[:, 1, None] + torch.arange(w)                        # (n, w)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def _rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    theta = degrees * math.pi / 180
    cos, sin = theta.cos(), theta.sin()
    zeros = torch.zeros_like(cos)
    affine = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(affine, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def imagenet_train_loader(root: str, batch_size: int, workers: int, *, seed: int,
                          size: int = 224) -> tuple[torch.utils.data.DataLoader, Optional[object]]:
    """ImageFolder + transforms v2 (RandomResizedCrop, flip) with DataLoader workers, and the
    DistributedSampler to ``set_epoch`` under torchrun (else None). Class folders must be the
    1,000 wnids."""
    import torchvision
    from torchvision.transforms import v2

    from zoo.data import IMAGENET_MEAN, IMAGENET_STD
    from zoo.evaluate import imagenet_wnids

    wnids = {w: i for i, w in enumerate(imagenet_wnids())}
    transform = v2.Compose([v2.ToImage(), v2.RandomResizedCrop(size, antialias=True),
                            v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = torchvision.datasets.ImageFolder(root, transform=transform)
    # Folder order is not class order on a subset: map each folder through the wnid list.
    unknown = [c for c in dataset.classes if c not in wnids]
    if unknown:
        raise ValueError(f"{root}: folders {', '.join(unknown[:5])} are not ImageNet wnids")
    remap = [wnids[c] for c in dataset.classes]
    dataset.target_transform = remap.__getitem__
    rank, world = rank_and_world()
    sampler = (torch.utils.data.DistributedSampler(dataset, world, rank, shuffle=True, seed=seed)
               if world > 1 else None)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size // world, shuffle=sampler is None, sampler=sampler,
        num_workers=workers, drop_last=True, generator=generator,
        pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)
    return loader, sampler
