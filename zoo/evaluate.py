"""The one evaluation function, and the validation data it reads.

``evaluate(model, batches)`` counts top-1/top-5 hits; the eval CLIs, the trainer and the
manifest check all call it, so a published figure and a re-measured one can only differ
if the weights do. Under ``torch.distributed`` each rank evaluates its own shard (no
padding, no overlap) and the counts are summed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

import torch
from torch import nn

__all__ = ["EvalResult", "evaluate", "standard_error", "keeps_running_statistics", "cifar_batches",
           "ImageNetVal", "imagenet_loader", "imagenet_wnids", "read_ground_truth", "rank_and_world",
           "shard", "split_name"]

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


@dataclasses.dataclass
class EvalResult:
    num_images: int       # images scored (unreadable ones excluded)
    correct1: int
    correct5: int
    seconds: float
    unreadable: list[int]  # dataset indices of images that could not be decoded

    @property
    def top1(self) -> float:
        return 100.0 * self.correct1 / max(self.num_images, 1)

    @property
    def top5(self) -> float:
        return 100.0 * self.correct5 / max(self.num_images, 1)

    @property
    def img_per_s(self) -> float:
        return self.num_images / max(self.seconds, 1e-9)


def keeps_running_statistics(module: nn.Module) -> bool:
    """Whether a layer normalises with running statistics in eval mode (BatchNorm and the
    Norm Matters batch norms: a ``running_mean`` buffer of its own; a BatchNorm without
    ``track_running_stats`` holds None there)."""
    return isinstance(module._buffers.get("running_mean"), torch.Tensor)


def standard_error(top1: float, num_images: int) -> float:
    """The binomial standard error of a top-1 figure, sqrt(p (1 - p) / n), in points."""
    p = top1 / 100
    return 100 * (p * (1 - p) / num_images) ** 0.5


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size under ``torch.distributed``; (0, 1) otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shard(n: int) -> range:
    """This process's indices of ``range(n)``: every world_size-th from its rank (all if not
    distributed). Shards are disjoint and cover every index once: no padding."""
    rank, world = rank_and_world()
    return range(rank, n, world)


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterable, *, device: Union[str, torch.device] = "cpu",
             amp: bool = False, channels_last: bool = False, batch_statistics: bool = False,
             progress: Optional[Callable[[int], None]] = None) -> EvalResult:
    """Top-1/top-5 counts of ``model`` over ``(images, labels, indices)`` batches.

    Labels < 0 mark images that could not be read: they are reported, not scored.
    ``amp`` autocasts to bfloat16 on CPU and float16 on CUDA. Counts are summed over all
    ranks when ``torch.distributed`` is initialised. ``batch_statistics``: the norms that
    keep running statistics normalise with each batch's own instead (as in training), on a
    copy, so the model's running estimates stay as they are.
    """
    device = torch.device(device)
    model.eval()  # not chained: an exported int8 model's eval() returns None (zoo.deploy)
    model.to(device)
    if batch_statistics:
        model = copy.deepcopy(model)
        for module in model.modules():
            if keeps_running_statistics(module):
                module.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16)
                if amp else contextlib.nullcontext())
    correct1 = correct5 = scored = 0
    unreadable: list[int] = []
    start = time.perf_counter()
    for images, labels, indices in batches:
        ok = labels >= 0
        unreadable += indices[~ok].tolist()
        if not ok.any():
            continue
        images, labels = images[ok].to(device, non_blocking=True), labels[ok].to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(images)
        top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
        scored += len(labels)
        if progress is not None:
            progress(len(labels))
    seconds = time.perf_counter() - start
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        counts = torch.tensor([correct1, correct5, scored], dtype=torch.int64)
        if torch.distributed.get_backend() == "nccl":
            counts = counts.cuda()
        torch.distributed.all_reduce(counts)
        correct1, correct5, scored = counts.tolist()
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, unreadable)
        unreadable = sorted(i for part in gathered for i in part)
    return EvalResult(scored, correct1, correct5, seconds, unreadable)


def cifar_batches(images: torch.Tensor, labels: torch.Tensor, transform: Callable,
                  batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """This rank's shard of uint8 CIFAR images, preprocessed a batch at a time."""
    indices = torch.as_tensor(shard(len(labels)), dtype=torch.int64)
    for chunk in indices.split(batch_size):
        yield transform(images[chunk]), labels[chunk], chunk


def imagenet_wnids() -> list[str]:
    """The 1,000 ILSVRC2012 wnids in class-index order (n01440764 = 0)."""
    from .data import imagenet_classes

    return [wnid for wnid, _ in imagenet_classes()]


class ImageNetVal(torch.utils.data.Dataset):
    """ImageNet validation images with their 1,000-class indices.

    Layouts: a tree ``root/<wnid>/*.JPEG`` (class index from the wnid's place in the
    1,000-class list, never from folder enumeration, so subsets score correctly), or a
    flat folder of images plus ``ground_truth`` lines ``ILSVRC2012_val_00000001.JPEG 65``.
    Items are ``(image, label, index)``; an unreadable image gives label -1 and a zero
    image unless ``strict``.
    """

    def __init__(self, root: Union[str, Path], transform: Callable, crop: int, *,
                 ground_truth: Union[str, Path, None] = None, strict: bool = False):
        root = Path(root)
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            raise FileNotFoundError(f"ImageNet data folder {root} {what}")
        self.transform, self.crop, self.strict = transform, crop, strict
        folders = sorted(p for p in root.iterdir() if p.is_dir())
        if folders:
            index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
            unknown = [p.name for p in folders if p.name not in index]
            if unknown:
                raise ValueError(f"{root}: folders {', '.join(unknown[:5])} are not ImageNet wnids; "
                                 f"expected root/<wnid>/*.JPEG (e.g. n01440764/)")
            self.samples = [(f, index[d.name]) for d in folders for f in sorted(d.iterdir())
                            if f.suffix.lower() in IMAGE_SUFFIXES]
        else:
            files = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                what = "holds no images" if any(root.iterdir()) else "is empty"
                raise FileNotFoundError(f"{root} {what}: expected ImageNet validation images, as "
                                        f"root/<wnid>/*.JPEG or a flat folder of *.JPEG with a "
                                        f"ground-truth file")
            if ground_truth is None:
                raise ValueError(f"{root} is a flat folder of images; pass the ground-truth file "
                                 f"(lines 'ILSVRC2012_val_00000001.JPEG 65')")
            labels = read_ground_truth(ground_truth)
            missing = [f.name for f in files if f.name not in labels]
            if missing:
                raise ValueError(f"{ground_truth} has no label for {', '.join(missing[:5])}"
                                 f"{' ...' if len(missing) > 5 else ''}")
            self.samples = [(f, labels[f.name]) for f in files]
        if not self.samples:
            raise FileNotFoundError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)})")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")  # grayscale, CMYK, palette -> RGB
        # A decompression bomb (over twice PIL's MAX_IMAGE_PIXELS) is none of PIL's usual errors.
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            if self.strict:
                raise ValueError(f"unreadable image {path}: {e}") from None
            return torch.zeros(3, self.crop, self.crop), -1, i
        return self.transform(image), label, i


def read_ground_truth(path: Union[str, Path]) -> dict[str, int]:
    """``{file name: class index}`` from lines ``ILSVRC2012_val_00000001.JPEG 65``; a line
    that is not a name and a class index 0-999 is refused, naming it (scoring it would
    count a miss, and -1 means "unreadable" to ``evaluate``)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"the ground-truth file {path} {what}")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file of ground-truth lines "
                         f"('ILSVRC2012_val_00000001.JPEG 65')") from None
    num_classes = len(imagenet_wnids())
    labels = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdecimal() or int(fields[1]) >= num_classes:
            raise ValueError(f"{path} line {number}: {line.strip()!r} is not a file name and a "
                             f"class index 0-{num_classes - 1} "
                             f"(e.g. 'ILSVRC2012_val_00000001.JPEG 65')")
        labels[fields[0]] = int(fields[1])
    return labels


def imagenet_loader(dataset: ImageNetVal, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    """This rank's shard of ``dataset`` in order, as ``(images, labels, indices)`` batches."""
    subset = torch.utils.data.Subset(dataset, list(shard(len(dataset))))
    return torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=workers,
                                       shuffle=False, pin_memory=torch.cuda.is_available(),
                                       persistent_workers=False)


def split_name(dataset: str, num_images: int) -> str:
    """How a figure's split is written everywhere: ``"cifar10 test[:1000]"``,
    ``"imagenet-1k val (1300 images)"``. Figures compare only on equal splits."""
    if dataset.startswith("cifar"):
        return f"{dataset} test[:{num_images}]"
    return f"{dataset} val ({num_images} images)"
