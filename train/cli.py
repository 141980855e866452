"""``python -m train``: train a zoo model with a named recipe; resumable, seeded, exported.

    python -m train --model resnet20_ilm --recipe cifar10_cpu --data ../shared/data/cifar10 --out runs/r20_ilm
    python -m train --model resnet20_ilm --recipe cifar10_cpu --download --out runs/r20_ilm   # CIFAR-10 into the cache
    torchrun --nproc_per_node=2 -m train ...       # DDP: gloo on CPU, nccl on GPU

The run folder holds recipe.json, log.jsonl (one row per epoch), curves.png,
checkpoint.pt (every epoch, atomically; ``--resume`` continues from it) and, at the end,
model.safetensors + hub/ (the Hub-ready folder). ``--register`` adds it to the manifest.
A new run needs a folder without another run's files.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Optional

import torch

import zoo
from zoo.cli import add_download_argument, rank

from .recipes import RECIPES


RESUME_HELP = (
    "continue from OUT/checkpoint.pt. The command must repeat the run's --model, --recipe and "
    "its overrides (--epochs, --batch-size, --lr, --warmup-epochs, --amp, --zero-init-residual), "
    "--norm-kwargs, --seed, "
    "--limit-train, data (the dataset and its number of training images), --num-classes, "
    "--weights/--checkpoint (the same weights), --freeze-backbone, --freeze-norms and memory "
    "format (--channels-last; by default the run's own); a mismatch is refused. These may change: "
    "--data's path, --test-data, --device, --workers, --compile, --fused-norms, --sync-bn, "
    "--recalibrate-norms, --tag, --register")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a zoo model name, e.g. resnet20_ilm")
    p.add_argument("--recipe", default="cifar10_cpu", help=f"one of: {', '.join(RECIPES)}")
    p.add_argument("--data", help="CIFAR folder (python layout) or ImageNet train tree (CIFAR: or "
                                  "--download)")
    add_download_argument(p)
    p.add_argument("--out", required=True, help="run folder (created; resumed with --resume)")
    p.add_argument("--resume", action="store_true", help=RESUME_HELP)
    p.add_argument("--weights", help="start from published weights (fine-tuning): DEFAULT, a tag or model.tag")
    p.add_argument("--checkpoint", help="start from a local NormZoo checkpoint (file or Hub folder)")
    p.add_argument("--num-classes", type=int,
                   help="classifier size, the data's (default: read from --data); with weights of "
                        "another size the head is new")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="train only the head (a linear probe); the backbone's norms stay in eval mode")
    p.add_argument("--freeze-norms", action="store_true",
                   help="fine-tuning at small batches: every norm with running statistics computes "
                        "with them in training mode too and its affine parameters stay as loaded "
                        "(zoo.freeze_norms); per-sample norms (gn, in, ln, ilm*) train as usual")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="override the recipe")
    p.add_argument("--batch-size", type=int, help="override the recipe (global batch)")
    p.add_argument("--lr", type=float, help="override the recipe")
    p.add_argument("--warmup-epochs", type=float,
                   help="override the recipe's linear warm-up (and a method's own, e.g. mimic's)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="override the recipe's autocast (bf16 on CPU, fp16 on CUDA)")
    p.add_argument("--zero-init-residual", action=argparse.BooleanOptionalAction, default=None,
                   help="override the recipe's start of every block's last norm gain at 0 (and "
                        "a method's own: the Norm Matters layers default to on)")
    p.add_argument("--norm-kwargs", metavar="JSON",
                   help="the norm's own arguments as a JSON object (zoo.create_model's norm_kwargs), "
                        "e.g. '{\"logits_bn\": false}': mimic without its logits BN, the paper's "
                        "\"weight mean only\"")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="memory format (default: the norm's measured preference, "
                        "zoo.prefers_channels_last; a resumed run keeps its own)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--fused-norms", action=argparse.BooleanOptionalAction, default=True,
                   help="compiled training kernels for the norms that have them (ILM, L1, "
                        "L-inf and top-k BN; zoo.fuse_norms): the same formula at about "
                        "GroupNorm's / BatchNorm2d's speed, after a few seconds of compiling per "
                        "input shape")
    p.add_argument("--recalibrate-norms", type=int, default=0, metavar="N",
                   help="after the last epoch, re-estimate the norms' running statistics over N "
                        "training batches (zoo.recalibrate_norms: precise BN) before the test "
                        "figure and the export; prints the validation top-1 before and after "
                        "(default 0: off)")
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


def norm_kwargs(model: str, text: Optional[str]) -> dict:
    """``--norm-kwargs`` ``text`` for ``model``'s norm: the arguments it sets to other values than
    the norm's defaults (naming a default changes nothing a resume or a grid compares). One
    ValueError for text that is not a JSON object or names an argument the norm does not take."""
    if text is None:
        return {}
    spec = zoo.get_norm(zoo.parse_model_name(model)[1])
    example = f"e.g. its defaults: --norm-kwargs '{json.dumps(spec.kwargs)}'"
    try:
        given = json.loads(text)
    except ValueError as e:
        raise ValueError(f"--norm-kwargs {text!r} is not JSON ({e}); pass a JSON object, "
                         f"{example}") from None
    if not isinstance(given, dict):
        raise ValueError(f"--norm-kwargs takes a JSON object of the norm's arguments, not "
                         f"{text!r}; {example}")
    try:
        spec.with_kwargs(**given)
    except ValueError as e:
        raise ValueError(f"--norm-kwargs: {e}") from None
    default = spec.kwargs
    return {k: v for k, v in given.items() if type(v) is not type(default[k]) or v != default[k]}


def command_line(argv=None) -> str:
    """The command that started this process, as recipe.json records it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    prefix = f"torchrun --nproc_per_node={world} -m train" if world > 1 else "python -m train"
    return f"{prefix} {shlex.join(sys.argv[1:] if argv is None else argv)}"


def say(text: str) -> None:
    """Print on rank 0 only (every rank runs the same code)."""
    if rank() == 0:
        print(text, flush=True)
