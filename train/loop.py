"""The training loop: ``Run`` builds the model, its data, optimizer and schedule from the
flags (train/cli.py), then trains epoch by epoch, checkpointing into the run folder after each
(train/run_folder.py), and ends with the test figure and the exported files (train/finish.py).
``main`` runs it as ``python -m train``, under torchrun in a process group.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import zoo
from zoo.cli import downloaded_cifar, git_commit, rank
from zoo.data import load_cifar
from zoo.deprecation import moved_names
from zoo.evaluate import keeps_running_statistics, rank_and_world
from zoo.heads import new_head
from zoo.progress import progress_bar
from zoo.weights import cache_dir, sha256sum

from .cli import command_line, norm_kwargs, parse_args, say
from .data import CifarTrainBatches, imagenet_train_loader
from .finish import export, plot_curves, score, test_figure
from .recipes import Recipe, for_model, get_recipe, override
from .run_folder import DiskFullError, RunFolder, must_match

__all__ = ["Run", "main", "parse_args", "param_groups", "lr_lambda"]


def param_groups(model: torch.nn.Module, recipe: Recipe) -> list[dict]:
    """Weight decay on weights; none on 1-d parameters (norm gains, biases, scalar scales)
    unless the recipe decays them too."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 and not recipe.decay_norm_and_bias else decay).append(p)
    return [{"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(recipe: Recipe, steps_per_epoch: int):
    """Per-iteration lr factor: linear warm-up, then cosine to 0 or steps at milestones."""
    import math

    total = recipe.epochs * steps_per_epoch
    warmup = int(recipe.warmup_epochs * steps_per_epoch)
    milestones = [m * steps_per_epoch for m in recipe.milestones]

    def factor(step: int) -> float:
        if step < warmup:
            return recipe.warmup_start + (1 - recipe.warmup_start) * step / warmup
        if recipe.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))
        return recipe.gamma ** sum(step >= m for m in milestones)

    return factor


class Run:
    """One training run, built from the parsed flags (train.cli.parse_args)."""

    def __init__(self, args):
        self.args = args
        if not args.out.strip():  # Path("") is the current folder: the repo root, say
            raise ValueError(f"--out {args.out!r} names no folder; pass the run folder, e.g. "
                             f"--out runs/{args.model}")
        self.out = Path(args.out)
        self.folder = RunFolder(self.out)
        self.device = torch.device(args.device)
        arch, norm = zoo.parse_model_name(args.model)
        self.norm_kwargs = norm_kwargs(args.model, args.norm_kwargs)
        overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                     "warmup_epochs": args.warmup_epochs, "amp": args.amp,
                     "zero_init_residual": args.zero_init_residual}
        base, self.adjustments = for_model(
            get_recipe(args.recipe), norm, keep=tuple(k for k, v in overrides.items() if v is not None))
        self.recipe = override(base, **overrides)
        if args.recalibrate_norms < 0:
            raise ValueError(f"--recalibrate-norms takes a number of training batches, not "
                             f"{args.recalibrate_norms} (0 or left out: no recalibration)")
        if args.limit_train is not None and args.limit_train < 1:
            raise ValueError(f"--limit-train must be at least 1, not {args.limit_train} (leave it "
                             f"out to train on every image)")
        world = rank_and_world()[1]
        if self.recipe.batch_size % world:
            raise ValueError(f"batch size {self.recipe.batch_size} does not split between {world} "
                             f"processes")
        args.channels_last = self._memory_format()
        self._data()
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        self.model = self._build_model()
        if args.recalibrate_norms and not any(map(keeps_running_statistics, self.model.modules())):
            raise ValueError(f"--recalibrate-norms: {args.model} has no norm with running "
                             f"statistics to re-estimate (gn, in, ln and ilm* keep none)")
        zoo.fuse_norms(self.model, args.fused_norms)
        self.model.to(self.device)
        if args.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.train_model = self._wrapped(self.model)
        r = self.recipe
        self.optimizer = torch.optim.SGD(param_groups(self.model, r), lr=r.lr, momentum=r.momentum,
                                         nesterov=r.nesterov)
        if norm == "mimic":
            zoo.attach_weight_mean(self.model, self.optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(r, self.steps_per_epoch))
        self.scaler = torch.amp.GradScaler("cuda", enabled=r.amp and self.device.type == "cuda")
        self.epoch, self.step = 0, 0  # next epoch to run, and next step inside it
        self.stop_requested = False
        self.must_match = must_match(args, self.recipe,
                                     f"{self.dataset} with {self.train_images} training images",
                                     _num_classes(self.dataset), self.start_weights, self.norm_kwargs)

    def _wrapped(self, model: torch.nn.Module) -> torch.nn.Module:
        """What the steps call: the model, under DDP in a process group (SyncBatchNorm with
        --sync-bn on GPU), compiled with --compile."""
        args = self.args
        if torch.distributed.is_initialized():
            # frozen norms use no batch statistics: nothing to synchronise
            if args.sync_bn and self.device.type == "cuda" and not args.freeze_norms:
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if args.compile:
            model = torch.compile(model)
        return model

    def _memory_format(self) -> bool:
        """channels_last or not: the flag, else the run's recorded format on --resume (which
        load() holds the flag to), else the norm's measured preference."""
        args = self.args
        recorded = self.folder.record().get("channels_last") if args.resume else None
        if args.channels_last is not None:
            return args.channels_last
        if recorded is not None:
            return recorded
        return zoo.get_norm(zoo.parse_model_name(args.model)[1]).channels_last

    def _build_model(self) -> torch.nn.Module:
        """A fresh model, or (fine-tuning) the given weights with a new head when the class
        count differs; with --freeze-backbone only the head trains."""
        args = self.args
        num_classes = _num_classes(self.dataset)
        if args.num_classes not in (None, num_classes):
            raise ValueError(f"--num-classes {args.num_classes}, but {args.data} holds {self.dataset} "
                             f"with {num_classes} classes")
        if args.weights and args.checkpoint:
            raise ValueError("pass --weights (published) or --checkpoint (a local file), not both")
        start = args.weights or (Path(args.checkpoint) if args.checkpoint else None)
        if start is None:
            if args.freeze_backbone:
                raise ValueError("--freeze-backbone needs --weights or --checkpoint: a trained "
                                 "backbone to keep")
            if args.freeze_norms:
                raise ValueError("--freeze-norms needs --weights or --checkpoint: trained norm "
                                 "statistics to keep")
            self.start_weights = None
            return zoo.create_model(args.model, num_classes=num_classes, norm_kwargs=self.norm_kwargs,
                                    **({"zero_init_residual": True} if self.recipe.zero_init_residual else {}))
        # the weights' own norm_kwargs; other values given here are refused
        model = zoo.create_model(args.model, weights=start, progress=rank() == 0,
                                 norm_kwargs=self.norm_kwargs)
        # the weights themselves, not the path given: a moved checkpoint still resumes
        self.start_weights = (model.config["weights"] if args.weights
                              else f"sha256 {sha256sum(model.config['weights'])[:16]}")
        total = len(model.state_dict())
        new = new_head(model, num_classes) if num_classes != model.config["num_classes"] else []
        say(f"loaded {model.config['weights']}: {total - len(new)} of {total} tensors"
            + (f"; a new {num_classes}-class head, freshly initialised: {', '.join(new)}" if new else ""))
        if args.freeze_backbone:
            head = tuple(f"{name}." for name in model.head_names())
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith(head))
            say(f"linear probe: training {', '.join(model.head_names())} only; the backbone is "
                f"frozen and its norms stay in eval mode")
        if args.freeze_norms:
            self.adjustments.append(f"--freeze-norms: {zoo.freeze_norms(model)}")
        return model

    def _data(self) -> None:
        r, args = self.recipe, self.args
        if r.dataset.startswith("cifar"):
            if args.download:
                args.data = downloaded_cifar(args.data, args.download, cache_dir())
            if not args.data:
                raise ValueError("pass --data, a CIFAR folder (python layout), or --download to "
                                 "fetch CIFAR-10 (--download cifar100: CIFAR-100)")
            train = load_cifar(args.data, "train")
            self.dataset = "cifar100" if len(train.classes) == 100 else "cifar10"
            self.train_images = len(train.labels)
            if r.dataset not in ("cifar", self.dataset):
                raise ValueError(f"recipe {r.name} trains on {r.dataset}, but {args.data} holds "
                                 f"{self.dataset}; pass {r.dataset} data or a recipe for any CIFAR "
                                 f"(--recipe finetune)")
            images, labels = train.images, train.labels
            if args.limit_train:
                images, labels = images[: args.limit_train], labels[: args.limit_train]
            if r.val_images >= len(labels):
                raise ValueError(f"{len(labels)} training images leave none after holding out "
                                 f"{r.val_images} for validation")
            cut = len(labels) - r.val_images
            self.val = (images[cut:], labels[cut:]) if r.val_images else None
            self.batches = CifarTrainBatches(images[:cut], labels[:cut], r.batch_size, seed=args.seed,
                                             augment=r.augment, channels_last=args.channels_last)
            self.steps_per_epoch = len(self.batches)
            if self.steps_per_epoch == 0:
                raise ValueError(f"{cut} training images make no batch of {r.batch_size}")
        else:
            if args.download or not args.data:
                raise ValueError(f"recipe {r.name} trains on ImageNet, which --download does not "
                                 f"fetch: pass --data, the ImageNet train tree")
            self.dataset, self.val = "imagenet", None
            self.loader, self.sampler = imagenet_train_loader(args.data, r.batch_size, args.workers,
                                                              seed=args.seed)
            self.train_images = len(self.loader.dataset)
            self.steps_per_epoch = len(self.loader)

    def epoch_batches(self, epoch: int, start_step: int):
        if self.recipe.dataset.startswith("cifar"):
            return self.batches.epoch(epoch, start_step)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        torch.manual_seed(self.args.seed * 100_003 + epoch)  # the loader's shuffle and workers
        batches = iter(self.loader)
        for _ in range(start_step):
            next(batches)
        return batches

    # -- the loop ------------------------------------------------------------------------

    def fit(self) -> Optional[dict]:
        """Train to the recipe's last epoch (from the checkpoint with --resume), then finish;
        the test metrics, or None for a run stopped early."""
        self.folder.open(self.args.resume)
        if self.args.resume:
            self.load()
            say(f"resumed {self.out / 'checkpoint.pt'} at epoch {self.epoch + 1}, step {self.step}")
        on_rank0(lambda: self.folder.write_record(self._record(), self.args.resume))
        say(f"{self.args.model}, recipe {self.recipe.name} ({self.recipe.source}):\n"
            f"{self.recipe.describe()}" + "".join(f"\n  + {a}" for a in self.adjustments))
        signal.signal(signal.SIGTERM, self._on_sigterm)
        while self.epoch < self.recipe.epochs:
            row = self.train_epoch()
            if self.stop_requested:
                self.save()
                say(f"stopped by SIGTERM at epoch {self.epoch + 1}, step {self.step}; saved "
                    f"{self.out / 'checkpoint.pt'} (continue with --resume)")
                return None
            row = {"epoch": self.epoch + 1, "lr": self.optimizer.param_groups[0]["lr"], **row,
                   **self.validate()}
            self.epoch, self.step = self.epoch + 1, 0
            # the row first: a stop before the checkpoint trains the epoch again
            on_rank0(lambda: self.folder.append_log(row))
            self.save()
            say(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            if self.args.stop_after_epoch and self.epoch >= self.args.stop_after_epoch:
                return None
        return self.finish()

    def train_epoch(self) -> dict:
        """The epoch's steps (the rest of them after a resume); its loss, accuracy and speed,
        summed over the processes."""
        self._train_mode()
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = seen = 0
        start = tick = time.perf_counter()
        self.step_seconds = []  # per step, data included: eval/benchmark.py's train suite
        bar = progress_bar(self.steps_per_epoch, f"epoch {self.epoch + 1}", unit="step",
                           initial=self.step, enabled=rank() == 0)
        for x, y in self.epoch_batches(self.epoch, self.step):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            loss, logits = self.train_step(x, y)
            loss_sum += loss.detach().double() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.update(1)
            self.step_seconds.append(time.perf_counter() - tick)
            tick = time.perf_counter()
            if self.stop_requested:
                break
        bar.close()
        seconds = time.perf_counter() - start
        loss_total, correct, seen = _summed_over_processes([loss_sum.item(), correct, seen])
        return {"train_loss": loss_total / max(seen, 1), "train_acc": 100 * correct / max(seen, 1),
                "img_per_s": seen / seconds, "seconds": seconds}

    def _train_mode(self) -> None:
        self.train_model.train()
        if self.args.freeze_backbone:  # a linear probe: the backbone's norm statistics stay as loaded
            self.model.eval()
            for name in self.model.head_names():
                self.model.get_submodule(name).train()

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a batch, and the lr schedule's; the loss and the logits."""
        with self.autocast():
            logits = self.train_model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.recipe.label_smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {self.epoch + 1}, step "
                                     f"{self.step}: the run diverged")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return loss, logits

    def autocast(self):
        dtype = torch.bfloat16 if self.device.type == "cpu" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.recipe.amp)

    def validate(self) -> dict:
        """Top-1 and top-5 on the recipe's held-out training images ({} without any)."""
        if self.val is None:
            return {}
        images, labels = self.val
        result = score(self.model, images, labels, "validation", self.device, amp=self.recipe.amp,
                       channels_last=self.args.channels_last)
        return {"val_acc": result.top1, "val_top5": result.top5}

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True  # finish the current step, save, exit

    # -- the run folder ------------------------------------------------------------------

    def _record(self) -> dict:
        """recipe.json: how this process runs (RunFolder.write_record keeps a resumed run's
        first command)."""
        return {"recipe": dataclasses.asdict(self.recipe), "adjustments": self.adjustments,
                "model": self.args.model, "command": command_line(getattr(self.args, "argv", None)),
                "commit": git_commit(), "seed": self.args.seed,
                "channels_last": self.args.channels_last, "fused_norms": self.args.fused_norms}

    def state(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(),
                "python_rng": list(random.getstate()[1]),
                "recipe": dataclasses.asdict(self.recipe), "model_name": self.args.model,
                "must_match": self.must_match}

    def save(self) -> None:
        on_rank0(lambda: self.folder.save_checkpoint(self.state()))

    def load(self) -> None:
        """Continue from the run folder's checkpoint: the model, optimizer, schedule, scaler
        and random states, after the checks a resume must pass."""
        state = self.folder.read_checkpoint(self.must_match)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"])
            random.setstate((3, tuple(state["python_rng"]), None))
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            raise self.folder.cannot_resume(e) from None
        self.epoch, self.step = state["epoch"], state["step"]
        on_rank0(lambda: self.folder.keep_log_through(self.epoch))

    # -- the end -------------------------------------------------------------------------

    def finish(self) -> Optional[dict]:
        """The test figure (CIFAR), then on rank 0 curves.png, model.safetensors, the Hub
        folder and, with --register, the manifest entry; the test metrics."""
        args = self.args
        if args.recalibrate_norms:
            self.recalibrate_norms(args.recalibrate_norms)
        metrics = (test_figure(self.model, args.test_data or args.data, self.dataset, self.device)
                   if self.dataset.startswith("cifar") else None)
        if rank() != 0:
            return metrics
        plot_curves(self.folder, f"{args.model}, recipe {self.recipe.name}")
        export(self.model, self.folder, self.recipe, self.dataset, metrics, tag=args.tag,
               register=args.register)
        return metrics

    def recalibrate_norms(self, num_batches: int) -> None:
        """Precise BN: the norms' running statistics re-estimated over ``num_batches`` training
        batches (a fresh epoch's order), as the plain average; the val top-1 before and after."""
        before = self.validate()
        with self.autocast():
            layers = zoo.recalibrate_norms(
                self.model, self.epoch_batches(self.recipe.epochs, 0), num_batches)
        after = self.validate()
        used = min(num_batches, self.steps_per_epoch)
        change = (f": val top-1 {before['val_acc']:.2f}% -> {after['val_acc']:.2f}%" if before
                  else " (no validation images to compare on)")
        say(f"recalibrated the running statistics of {layers} norm layers over {used} training "
            f"batches{change}")


class RankZeroFailed(Exception):
    """What the other processes of a process group raise when rank 0's write failed."""


def on_rank0(write: Callable[[], None]) -> None:
    """``write`` (to the run folder) on rank 0 only, and its outcome shared: when it raises,
    every rank stops with an error line. The others used to go on into their next collective,
    where torchrun's agent killed them; started by a launcher that does not watch them, they
    waited there for the process group's timeout (half an hour)."""
    error = None
    if rank() == 0:
        try:
            write()
        except Exception as e:  # re-raised below, once the others know
            error = e
    if _summed_over_processes([error is not None])[0] and error is None:
        raise RankZeroFailed("rank 0 stopped the run: its error is above")
    if error is not None:
        raise error


def _summed_over_processes(counts: list[float]) -> list[float]:
    """``counts`` summed over the processes of a process group (as they are without one)."""
    counts = torch.tensor(counts, dtype=torch.float64)
    if torch.distributed.is_initialized():
        if torch.distributed.get_backend() == "nccl":
            counts = counts.cuda()
        torch.distributed.all_reduce(counts)
    return counts.tolist()


def _num_classes(dataset: str) -> int:
    return {"cifar10": 10, "cifar100": 100, "imagenet": 1000}[dataset]


def main(argv=None) -> int:
    """``python -m train``, in a process group under torchrun: 0 for a run that ended or
    stopped as asked, 2 (one error line) for one refused, diverged or out of disk space."""
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if args.device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
        if backend == "nccl":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            args.device = f"cuda:{local}"
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        Run(args).fit()
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, DiskFullError,
            zoo.WeightsError, RankZeroFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the end's files (model.safetensors, hub/, curves.png) on a full disk
        if e.errno != errno.ENOSPC:
            raise
        print(f"error: the disk is full: could not write {e.filename or 'the run files'}; free "
              f"some space, then run the same command with --resume (it finishes from "
              f"{Path(args.out) / 'checkpoint.pt'})", file=sys.stderr)
        return 2
    finally:
        # Put back the SIGTERM handler fit() installed: it holds the Run (and its DDP model),
        # which must go before the process group does, and SIGTERM must work again after.
        if sigterm is not None and signal.getsignal(signal.SIGTERM) is not sigterm:
            signal.signal(signal.SIGTERM, sigterm)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


# Names that moved out of this module with the trainer's split: the old paths work for one
# more release.
__getattr__ = moved_names(__name__, {
    "RESUME_HELP": "train.cli", "parser": "train.cli", "RUN_FILES": "train.run_folder",
    "CHECKPOINT_KEYS": "train.run_folder", "RECIPE_FLAGS": "train.run_folder",
    "run_summary": "train.finish"})
