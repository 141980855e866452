"""``python -m train``: train a zoo model with a named recipe; resumable, seeded, exported.

    python -m train --model resnet20_ilm --recipe cifar10_cpu --data ../shared/data/cifar10 --out runs/r20_ilm
    torchrun --nproc_per_node=2 -m train ...       # DDP: gloo on CPU, nccl on GPU

The run folder holds recipe.json, log.jsonl (one row per epoch), curves.png,
checkpoint.pt (every epoch, atomically; ``--resume`` continues from it) and, at the end,
model.safetensors + hub/ (the Hub-ready folder). ``--register`` adds it to the manifest.
A new run needs a folder without another run's files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shlex
import signal
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

import zoo
from zoo.cli import one_line, rank
from zoo.data import load_cifar
from zoo.evaluate import cifar_batches, evaluate, rank_and_world, split_name
from zoo.progress import progress_bar
from zoo.weights import (WeightsError, default_preprocessing, eval_transforms, git_commit,
                         new_head, sha256sum)

from .data import CifarTrainBatches, imagenet_train_loader
from .recipes import RECIPES, Recipe, for_model, get_recipe, override


RESUME_HELP = (
    "continue from OUT/checkpoint.pt. The command must repeat the run's --model, --recipe and "
    "its overrides (--epochs, --batch-size, --lr, --warmup-epochs, --amp), --seed, "
    "--limit-train, data (the dataset and its number of training images), --num-classes, "
    "--weights/--checkpoint (the same weights), --freeze-backbone and memory format "
    "(--channels-last; by default the run's own); a mismatch is refused. These may change: "
    "--data's path, --test-data, --device, --workers, --compile, --fused-norms, --sync-bn, --tag, "
    "--register")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a zoo model name, e.g. resnet20_ilm")
    p.add_argument("--recipe", default="cifar10_cpu", help=f"one of: {', '.join(RECIPES)}")
    p.add_argument("--data", required=True, help="CIFAR folder (python layout) or ImageNet train tree")
    p.add_argument("--out", required=True, help="run folder (created; resumed with --resume)")
    p.add_argument("--resume", action="store_true", help=RESUME_HELP)
    p.add_argument("--weights", help="start from published weights (fine-tuning): DEFAULT, a tag or model.tag")
    p.add_argument("--checkpoint", help="start from a local NormZoo checkpoint (file or Hub folder)")
    p.add_argument("--num-classes", type=int,
                   help="classifier size, the data's (default: read from --data); with weights of "
                        "another size the head is new")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="train only the head (a linear probe); the backbone's norms stay in eval mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="override the recipe")
    p.add_argument("--batch-size", type=int, help="override the recipe (global batch)")
    p.add_argument("--lr", type=float, help="override the recipe")
    p.add_argument("--warmup-epochs", type=float,
                   help="override the recipe's linear warm-up (and a method's own, e.g. mimic's)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="override the recipe's autocast (bf16 on CPU, fp16 on CUDA)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="memory format (default: the norm's measured preference, "
                        "zoo.prefers_channels_last; a resumed run keeps its own)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--fused-norms", action=argparse.BooleanOptionalAction, default=True,
                   help="compiled training kernels for the norms that have them (ILM, L1, "
                        "L-inf and top-k BN; zoo.fuse_norms): the same formula at about "
                        "GroupNorm's / BatchNorm2d's speed, after a few seconds of compiling per "
                        "input shape")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun on GPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--limit-train", type=int, help="use only the first N training images (smoke runs)")
    p.add_argument("--test-data", help="CIFAR test folder for the final figure (default: --data)")
    p.add_argument("-j", "--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="ImageNet loader workers")
    p.add_argument("--tag", help="weights tag (default: the dataset, e.g. cifar10)")
    p.add_argument("--register", action="store_true",
                   help="at the end, add the checkpoint to the manifest (shipped if under 20 MB)")
    p.add_argument("--stop-after-epoch", type=int, help=argparse.SUPPRESS)  # tests: simulate a stop
    return p


def parse_args(argv=None):
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded as the run's command
    return args


def _say(text: str) -> None:
    if rank() == 0:
        print(text, flush=True)


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


def command_line(argv=None) -> str:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    prefix = f"torchrun --nproc_per_node={world} -m train" if world > 1 else "python -m train"
    return f"{prefix} {shlex.join(sys.argv[1:] if argv is None else argv)}"


# A folder holding any of these holds a run: a new run there would mix with it.
RUN_FILES = ("recipe.json", "log.jsonl", "checkpoint.pt", "model.safetensors")
CHECKPOINT_KEYS = {"epoch", "step", "model", "optimizer", "scheduler", "scaler", "torch_rng",
                   "python_rng", "recipe", "model_name"}
# The recipe's fields that have a flag; the others change only with the preset or the norm.
RECIPE_FLAGS = {"name": "--recipe", "epochs": "--epochs", "batch_size": "--batch-size",
                "lr": "--lr", "warmup_epochs": "--warmup-epochs", "amp": "--amp"}


class Run:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.device = torch.device(args.device)
        arch, norm = zoo.parse_model_name(args.model)
        overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                     "warmup_epochs": args.warmup_epochs, "amp": args.amp}
        base, self.adjustments = for_model(
            get_recipe(args.recipe), norm, keep=tuple(k for k, v in overrides.items() if v is not None))
        self.recipe = override(base, **overrides)
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
        zoo.fuse_norms(self.model, args.fused_norms)
        self.model.to(self.device)
        if args.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.train_model = self.model
        if torch.distributed.is_initialized():
            if args.sync_bn and self.device.type == "cuda":
                self.train_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.train_model)
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.train_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if args.compile:
            self.train_model = torch.compile(self.train_model)
        r = self.recipe
        self.optimizer = torch.optim.SGD(param_groups(self.model, r), lr=r.lr, momentum=r.momentum,
                                         nesterov=r.nesterov)
        if norm == "mimic":
            zoo.attach_weight_mean(self.model, self.optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(r, self.steps_per_epoch))
        self.scaler = torch.amp.GradScaler("cuda", enabled=r.amp and self.device.type == "cuda")
        self.epoch, self.step = 0, 0  # next epoch to run, and next step inside it
        self.stop_requested = False
        self.must_match = self._must_match()

    def _must_match(self) -> dict:
        """What a --resume must repeat (RESUME_HELP), by flag; the checkpoint records it."""
        args = self.args
        return {"--model": args.model, "recipe": _settings(dataclasses.asdict(self.recipe)),
                "--seed": args.seed, "--limit-train": args.limit_train,
                "data": f"{self.dataset} with {self.train_images} training images",
                "--num-classes": _num_classes(self.dataset),
                "--weights/--checkpoint": self.start_weights,
                "--freeze-backbone": args.freeze_backbone, "--channels-last": args.channels_last}

    def _recipe_json(self) -> dict:
        """The run folder's recipe.json ({} where there is none)."""
        path = self.out / "recipe.json"
        if not path.is_file():
            return {}
        try:
            record = json.loads(path.read_text())
            if isinstance(record, dict):
                return record
            problem = "not a JSON object"
        except ValueError as e:  # not JSON, or not text
            problem = e
        raise ValueError(f"{path} is not the run's record ({problem}); restore it to resume the "
                         f"run, or start again with another --out")

    def _memory_format(self) -> bool:
        """channels_last or not: the flag, else the run's recorded format on --resume (which
        load() holds the flag to), else the norm's measured preference."""
        args = self.args
        recorded = self._recipe_json().get("channels_last") if args.resume else None
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
            self.start_weights = None
            return zoo.create_model(args.model, num_classes=num_classes,
                                    **({"zero_init_residual": True} if self.recipe.zero_init_residual else {}))
        model = zoo.create_model(args.model, weights=start, progress=rank() == 0)
        # the weights themselves, not the path given: a moved checkpoint still resumes
        self.start_weights = (model.config["weights"] if args.weights
                              else f"sha256 {sha256sum(model.config['weights'])[:16]}")
        total = len(model.state_dict())
        new = new_head(model, num_classes) if num_classes != model.config["num_classes"] else []
        _say(f"loaded {model.config['weights']}: {total - len(new)} of {total} tensors"
             + (f"; a new {num_classes}-class head, freshly initialised: {', '.join(new)}" if new else ""))
        if args.freeze_backbone:
            head = tuple(f"{name}." for name in model.head_names())
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith(head))
            _say(f"linear probe: training {', '.join(model.head_names())} only; the backbone is "
                 f"frozen and its norms stay in eval mode")
        return model

    def _data(self) -> None:
        r, args = self.recipe, self.args
        if r.dataset.startswith("cifar"):
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

    # -- checkpoints ---------------------------------------------------------------------

    def state(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(),
                "python_rng": list(random.getstate()[1]),
                "recipe": dataclasses.asdict(self.recipe), "model_name": self.args.model,
                "must_match": self.must_match}

    def save(self) -> None:
        if rank() != 0:
            return
        tmp = self.out / ".checkpoint.pt.tmp"
        torch.save(self.state(), tmp)
        os.replace(tmp, self.out / "checkpoint.pt")

    def load(self) -> None:
        path = self.out / "checkpoint.pt"
        if not path.is_file():
            started = any((self.out / f).exists() for f in RUN_FILES)
            fix = (f"the run in {self.out} cannot be continued: start again with another --out"
                   if started else "start without --resume")
            raise FileNotFoundError(f"--resume: {path} does not exist; {fix}")
        try:
            with warnings.catch_warnings():  # a foreign pickle's protocol: refused below anyway
                warnings.filterwarnings("ignore", "Detected pickle protocol")
                state = torch.load(path, map_location="cpu", weights_only=True)  # no full unpickle
        except Exception as e:  # a truncated or garbled file: torch raises many kinds
            raise WeightsError(_cannot_resume(path, e)) from None
        if not (isinstance(state, dict) and CHECKPOINT_KEYS <= state.keys()):
            raise WeightsError(_cannot_resume(path, "not a NormZoo training checkpoint"))
        self._check_same_run(state)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"])
            random.setstate((3, tuple(state["python_rng"]), None))
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            raise WeightsError(_cannot_resume(path, e)) from None
        self.epoch, self.step = state["epoch"], state["step"]

    def _check_same_run(self, state: dict) -> None:
        """Refuse a --resume that changes what the run must keep (RESUME_HELP), naming each
        change with both values."""
        recorded = _plain(state.get("must_match") or self._recorded_before_must_match(state))
        now = _plain(self.must_match)
        changes = []
        for key, was in recorded.items():
            if key == "recipe":
                changes += [_change(RECIPE_FLAGS.get(f, f"the recipe's {f}"), was.get(f),
                                    now["recipe"].get(f))
                            for f in {**was, **now["recipe"]} if was.get(f) != now["recipe"].get(f)]
            elif was != now.get(key):
                changes.append(_change(key, was, now.get(key)))
        if changes:
            raise ValueError(f"{self.out} holds a run with other settings, which --resume must "
                             f"keep: {'; '.join(changes)}. Resume with the run's own flags, or "
                             f"start a new run with another --out")

    def _recorded_before_must_match(self, state: dict) -> dict:
        """What a run started before checkpoints recorded must_match can be checked against:
        the checkpoint's model and recipe, and recipe.json's seed, memory format and command."""
        recorded = {"--model": state["model_name"], "recipe": _settings(state["recipe"])}
        first = self._recipe_json()
        if "command" in first:
            tokens = shlex.split(first["command"])
            started = parser().parse_known_args(tokens[tokens.index("-m") + 2:])[0]
            recorded.update({"--limit-train": started.limit_train,
                             "--freeze-backbone": started.freeze_backbone})
        for flag, key in ("--seed", "seed"), ("--channels-last", "channels_last"):
            if key in first:
                recorded[flag] = first[key]
        return recorded

    def _open_folder(self) -> None:
        """Make the run folder and check it before any work: it must be writable, and a new
        run's folder must hold no other run's files."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            found = [f for f in RUN_FILES if (self.out / f).exists()]
            with tempfile.TemporaryFile(dir=self.out):  # checkpoints are written here, then renamed
                pass
        except OSError as e:
            raise ValueError(f"cannot write the run folder {self.out} ({e.strerror or e}); pick "
                             f"another --out, or make it writable") from None
        if found and not self.args.resume:
            resumable = "checkpoint.pt" in found and "model.safetensors" not in found
            raise FileExistsError(
                f"{self.out} already holds a run; "
                + ("pass --resume to continue it, or pick another --out" if resumable else
                   "pick another --out (it has nothing to resume: finished, or stopped before its "
                   "first checkpoint)") + f". It has {', '.join(found)}")
        if torch.distributed.is_initialized():
            torch.distributed.barrier()  # every rank has looked before rank 0 writes
        if rank() == 0 and not self.args.resume:
            # created now, exclusively: a new run appends only to its own log
            (self.out / "log.jsonl").touch(exist_ok=False)

    # -- training ------------------------------------------------------------------------

    def autocast(self):
        dtype = torch.bfloat16 if self.device.type == "cpu" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.recipe.amp)

    def train_epoch(self) -> dict:
        self.train_model.train()
        if self.args.freeze_backbone:  # a linear probe: the backbone's norm statistics stay as loaded
            self.model.eval()
            for name in self.model.head_names():
                self.model.get_submodule(name).train()
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = seen = 0
        start = tick = time.perf_counter()
        self.step_seconds = []  # per step, data included: eval/benchmark.py's train suite
        bar = progress_bar(self.steps_per_epoch, f"epoch {self.epoch + 1}", unit="step",
                           initial=self.step, enabled=rank() == 0)
        for x, y in self.epoch_batches(self.epoch, self.step):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
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
        counts = torch.tensor([loss_sum.item(), correct, seen], dtype=torch.float64)
        if torch.distributed.is_initialized():
            if torch.distributed.get_backend() == "nccl":
                counts = counts.cuda()
            torch.distributed.all_reduce(counts)
        loss_total, correct, seen = counts.tolist()
        return {"train_loss": loss_total / max(seen, 1), "train_acc": 100 * correct / max(seen, 1),
                "img_per_s": seen / seconds, "seconds": seconds}

    def validate(self) -> dict:
        if self.val is None:
            return {}
        images, labels = self.val
        transform = eval_transforms(default_preprocessing(self.model))
        with progress_bar(len(labels), "validation", enabled=rank() == 0) as bar:
            result = evaluate(self.model, cifar_batches(images, labels, transform, 500),
                              device=self.device, amp=self.recipe.amp,
                              channels_last=self.args.channels_last, progress=bar.update)
        return {"val_acc": result.top1, "val_top5": result.top5}

    def fit(self) -> Optional[dict]:
        self._open_folder()
        if self.args.resume:
            self.load()
            _say(f"resumed {self.out / 'checkpoint.pt'} at epoch {self.epoch + 1}, step {self.step}")
        if rank() == 0:
            record = {"recipe": dataclasses.asdict(self.recipe), "adjustments": self.adjustments,
                      "model": self.args.model,
                      "command": command_line(getattr(self.args, "argv", None)),
                      "commit": git_commit(), "seed": self.args.seed,
                      "channels_last": self.args.channels_last,
                      "fused_norms": self.args.fused_norms}
            first = self._recipe_json() if self.args.resume else {}
            if first:
                # The run's command stays the one that started it (a --resume command does not
                # reproduce a run from scratch); the resumes are listed beside it.
                record["resumed"] = first.get("resumed", []) + [
                    {"command": record["command"], "commit": record["commit"]}]
                record["command"], record["commit"] = first["command"], first["commit"]
            (self.out / "recipe.json").write_text(json.dumps(record, indent=2) + "\n")
        _say(f"{self.args.model}, recipe {self.recipe.name} ({self.recipe.source}):\n"
             f"{self.recipe.describe()}" + "".join(f"\n  + {a}" for a in self.adjustments))
        signal.signal(signal.SIGTERM, self._on_sigterm)
        while self.epoch < self.recipe.epochs:
            row = self.train_epoch()
            if self.stop_requested:
                self.save()
                _say(f"stopped by SIGTERM at epoch {self.epoch + 1}, step {self.step}; saved "
                     f"{self.out / 'checkpoint.pt'} (continue with --resume)")
                return None
            row = {"epoch": self.epoch + 1, "lr": self.optimizer.param_groups[0]["lr"], **row,
                   **self.validate()}
            self.epoch, self.step = self.epoch + 1, 0
            self.save()
            if rank() == 0:
                with open(self.out / "log.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
            _say(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            if self.args.stop_after_epoch and self.epoch >= self.args.stop_after_epoch:
                return None
        return self.finish()

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True  # finish the current step, save, exit

    def finish(self) -> Optional[dict]:
        from zoo.hub import build_folder, local_weights, register

        r, args = self.recipe, self.args
        metrics = None
        if self.dataset.startswith("cifar"):
            test = load_cifar(args.test_data or args.data, "test")
            transform = eval_transforms(default_preprocessing(self.model))
            with progress_bar(len(test.labels), "test", enabled=rank() == 0) as bar:
                result = evaluate(self.model, cifar_batches(test.images, test.labels, transform,
                                                            500),
                                  device=self.device, progress=bar.update)
            metrics = {"top1": round(result.top1, 2), "top5": round(result.top5, 2),
                       "split": split_name(self.dataset, result.num_images),
                       "num_images": result.num_images}
            _say(f"test: top-1 {result.top1:.2f}%, top-5 {result.top5:.2f}% on {metrics['split']}")
        if rank() != 0:
            return metrics
        self.plot()
        recipe_json = json.loads((self.out / "recipe.json").read_text())
        path = zoo.save_checkpoint(self.model.cpu().float(), self.out / "model.safetensors",
                                   tag=args.tag or self.dataset, dataset=self.dataset, metrics=metrics,
                                   recipe={"command": recipe_json["command"],
                                           "commit": recipe_json["commit"],
                                           **run_summary(self.out, r)})
        hub = self.out / "hub"
        if metrics is not None:
            build_folder(local_weights(path), hub, progress=False)
            _say(f"wrote {path} and the Hub folder {hub}")
        if args.register:
            entry = register(path, ship=path.stat().st_size < 20_000_000)
            _say(f"registered {entry['name']} in the manifest"
                 + (f" (shipped as zoo/{entry['shipped']})" if entry["shipped"] else ""))
        return metrics

    def plot(self) -> None:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            _say("matplotlib is not installed: no curves.png (pip install matplotlib)")
            return
        rows = [json.loads(line) for line in (self.out / "log.jsonl").read_text().splitlines()]
        epochs = [r["epoch"] for r in rows]
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
        ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train loss")
        ax_loss.set_xlabel("epoch")
        ax_loss.legend()
        ax_acc.plot(epochs, [r["train_acc"] for r in rows], label="train top-1 (augmented)")
        if "val_acc" in rows[0]:
            ax_acc.plot(epochs, [r["val_acc"] for r in rows], label="val top-1")
        ax_acc.set_xlabel("epoch")
        ax_acc.set_ylabel("%")
        ax_acc.legend()
        fig.suptitle(f"{self.args.model}, recipe {self.recipe.name}")
        fig.tight_layout()
        fig.savefig(self.out / "curves.png", dpi=100)
        plt.close(fig)


def run_summary(out: Path, recipe: Recipe) -> dict:
    """How the run went, from its log: what a published checkpoint's recipe records besides
    the command (zoo.weights.RECIPE_KEYS)."""
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    val = rows[-1].get("val_acc") if rows else None
    return {"name": recipe.name, "epochs": recipe.epochs,
            "val_top1": None if val is None else round(val, 2),
            # The median epoch: a run that shared the machine for a while keeps its typical speed.
            "img_per_s": round(statistics.median(r["img_per_s"] for r in rows)) if rows else None,
            "minutes": round(sum(r["seconds"] for r in rows) / 60, 1)}


def _cannot_resume(path: Path, problem) -> str:
    if isinstance(problem, Exception):  # its first sentence: torch's go on about other things
        first = one_line(problem).split(". ")[0][:200]
        problem = f"{type(problem).__name__}: {first}" if first else type(problem).__name__
    return (f"cannot resume from {path}: it is truncated, corrupt or not this run's checkpoint "
            f"({problem}); start the run again with another --out")


def _settings(recipe: dict) -> dict:
    """A recipe's fields but its source, a description that may be reworded."""
    return {k: v for k, v in recipe.items() if k != "source"}


def _plain(record: dict) -> dict:
    """As JSON holds it (tuples become lists), so records compare whatever stored them."""
    return json.loads(json.dumps(record))


def _change(flag: str, was, now) -> str:
    def shown(value):
        return "none" if value is None else value

    return f"{flag} {shown(was)} in the run, {shown(now)} here"


def _num_classes(dataset: str) -> int:
    return {"cifar10": 10, "cifar100": 100, "imagenet": 1000}[dataset]


def main(argv=None) -> int:
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
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, zoo.WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        # Put back the SIGTERM handler fit() installed: it holds the Run (and its DDP model),
        # which must go before the process group does, and SIGTERM must work again after.
        if sigterm is not None and signal.getsignal(signal.SIGTERM) is not sigterm:
            signal.signal(signal.SIGTERM, sigterm)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0
