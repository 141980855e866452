"""Is L-infinity batch norm's gap to batch norm at equal init the method's, or ours?

    python eval/linf_gap.py --data ../shared/data/cifar10   # -> eval/results/claims/linf-gap.json

Issue 31 names three ways our implementation could cost accuracy, and this script checks each
on every published equal-init seed of bn, l1bn and linfbn (the arms of eval/claims.py's
``*_matches_bn`` claims):
- the running-statistics estimate: val top-1 with the weights' running statistics, and after
  re-estimating them as a plain average over --recalibrate training batches (precise BN,
  zoo.recalibrate_norms; the trainer's own augmented batches). A poor momentum estimate would
  show as accuracy that recalibrating recovers.
- eps: over the same batches, the most any batch norm's eps changes any channel's scale,
  1 - s(eps) / s(0). Near 0, eps cannot matter.
- the fused kernels: one training step as the trainer takes it (train mode, its memory format,
  bf16 autocast where the run had it) on each of --steps batches from the same weights, with
  zoo.fuse_norms on and off: the relative error of the whole gradient against the eager step
  in float64. The eager kernels' error is what every run at that precision has; fused kernels
  close to it add little to it. This compares single steps, not two full runs.
Val is the recipes' 5,000 held-out training images. Markdown comes from zoo.report;
``python tools/update_docs.py`` puts it in docs/claims.md.
A run of fewer weights or other settings does not replace --out's results unless --force.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
from pathlib import Path

import torch
from torch import nn

import zoo
from claims import BN, CLAIMS, published_entry  # siblings in eval/, on sys.path as a script
from grid import GridError, recorded_flags, refuse_losing_rows, settings
from half_statistics import CIFAR10, RESULTS, spread
from train.data import CifarTrainBatches
from train.recipes import get_recipe
from zoo import report
from zoo.cli import one_line, positive_int, run_header
from zoo.data import load_cifar
from zoo.evaluate import cifar_batches, evaluate
from zoo.norms.common import fused_failure
from zoo.norms.norm_matters import L1BatchNorm2d, TopKBatchNorm2d
from zoo.weights import WeightsError

VAL_IMAGES = get_recipe(BN.cell(0).value("--recipe")).val_images  # held out from the end of train
# The equal-init arms of the *_matches_bn claims, by model
ARMS = {a.cell(0).value("--model"): a
        for a in (BN, *(c.a for c in CLAIMS if c.key in ("l1bn_matches_bn", "linfbn_matches_bn")))}
STATISTIC = {nn.BatchNorm2d: "L2", L1BatchNorm2d: "L1", TopKBatchNorm2d: "Linf"}


def published_weights(models: list[str], seeds: int) -> list[tuple[str, int, str, bool]]:
    """(model, seed, weights tag, whether it trained under autocast) of every published cell of
    ``models``' arms among seeds 0..seeds-1."""
    unknown = [m for m in models if m not in ARMS]
    if unknown:
        raise ValueError(f"--models: {', '.join(unknown)} is not one of {', '.join(ARMS)}")
    found = []
    for arm_, seed in itertools.product([ARMS[m] for m in models], range(seeds)):
        entry = published_entry(arm_.cell(seed))
        if entry is not None:
            model, tag = entry["name"].split(".", 1)
            amp = settings(recorded_flags(entry["recipe"]["command"]))["recipe"]["amp"]
            found.append((model, seed, tag, amp))
    return found


def eps_effect(layer: nn.Module, x: torch.Tensor) -> float:
    """The most ``layer``'s eps changes a channel's scale on the batch ``x``: 1 - s(eps) / s(0)."""
    statistic = STATISTIC[type(layer)]
    if statistic == "Linf" and layer.k != 1:
        raise ValueError(f"top-k batch norm with k={layer.k}: only k=1 (linfbn) is measured")
    values = x.detach().double().transpose(0, 1).reshape(x.size(1), -1)
    found = spread(values - values.mean(1, keepdim=True), statistic)
    ratio = found / (found + layer.eps)
    return (1 - (ratio.sqrt() if statistic == "L2" else ratio)).max().item()


def recalibrated(model: nn.Module, batches: list[torch.Tensor]) -> tuple[nn.Module, float]:
    """A copy of ``model`` with its statistics re-estimated on ``batches``, and the largest
    eps effect its batch norms saw on them."""
    model = copy.deepcopy(model)
    effects = []
    hooks = [m.register_forward_pre_hook(lambda m, inputs: effects.append(eps_effect(m, inputs[0])))
             for m in model.modules() if type(m) in STATISTIC]
    zoo.recalibrate_norms(model, batches)
    for hook in hooks:
        hook.remove()
    return model, max(effects)


def gradient_errors(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
                    amp: bool) -> dict:
    """One training step per batch from the same weights as the trainer takes it (under bf16
    autocast where ``amp``), with the fused kernels and without: the relative error of the whole
    gradient (every parameter's, as one vector) against the eager step in float64 without
    autocast, the largest over the batches. "fused" is None, with the reason in "fused_off",
    where the model's norms have no fused kernels or they did not compile here."""
    kernels = ("fused", "eager") if zoo.fuse_norms(copy.deepcopy(model)) else ("eager",)
    worst = {"fused": None, "eager": 0.0, "fused_off": None if "fused" in kernels else "no fused kernels"}
    for x, y in batches:
        grads = {}
        for kind in (*kernels, "exact"):
            dtype = torch.float64 if kind == "exact" else torch.float32
            step = copy.deepcopy(model).train().to(dtype)
            zoo.fuse_norms(step, kind == "fused")
            with torch.autocast("cpu", torch.bfloat16, enabled=amp and kind != "exact"):
                loss = nn.functional.cross_entropy(step(x.to(dtype)), y)
            loss.backward()
            grads[kind] = torch.cat([p.grad.double().flatten() for p in step.parameters()])
            if kind == "fused" and fused_failure() is not None:
                return {**worst, "fused_off": f"did not compile: {fused_failure()}"}
        for kind in kernels:
            error = ((grads[kind] - grads["exact"]).norm() / grads["exact"].norm()).item()
            worst[kind] = max(worst[kind] or 0.0, error)
    return worst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=CIFAR10, help="CIFAR-10 (python layout; default: %(default)s)")
    p.add_argument("--models", default=",".join(ARMS), help="comma-separated (default: %(default)s)")
    p.add_argument("--seeds", type=positive_int(), default=3, help="seeds 0..N-1 (default: %(default)s)")
    p.add_argument("--recalibrate", type=positive_int(), default=200,
                   help="training batches to re-estimate the statistics on, at most an epoch's "
                        "(default: %(default)s)")
    p.add_argument("-b", "--batch-size", type=positive_int(), default=128,
                   help="the recipes' batch (default: %(default)s)")
    p.add_argument("--steps", type=positive_int(), default=4,
                   help="training batches to compare the fused and eager kernels on, at most an "
                        "epoch's (default: %(default)s)")
    p.add_argument("--val-images", type=positive_int(), default=VAL_IMAGES,
                   help="the last N training images (default: the recipes' %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--force", action="store_true",
                   help="replace an --out table of other weights or settings (default: refuse)")
    args = p.parse_args(argv)
    try:
        train = load_cifar(args.data, "train")
        if args.val_images + args.batch_size > len(train.labels):
            raise ValueError(f"--val-images {args.val_images} leaves less than a batch of "
                             f"{args.batch_size} of the {len(train.labels)} training images: "
                             f"give fewer, or a smaller --batch-size")
        cells = published_weights(args.models.split(","), args.seeds)
        if not cells:
            raise ValueError("no equal-init weights of bn, l1bn or linfbn are published yet: "
                             "python eval/claims.py trains them")
        split = len(train.labels) - args.val_images
        # At most an epoch of batches each
        recalibrate, steps = (min(n, split // args.batch_size) for n in (args.recalibrate, args.steps))
        run_settings = {"val_images": args.val_images, "recalibrate_batches": recalibrate,
                        "batch_size": args.batch_size, "steps": steps}
        refuse_losing_rows(args.out / "linf-gap.json", run_settings, ("model", "seed"),
                           [(name, seed) for name, seed, _, _ in cells], args.force)
        models = [zoo.create_model(name, weights=tag) for name, _, tag, _ in cells]
        args.out.mkdir(parents=True, exist_ok=True)  # before the minutes of work that fill it
    except (ValueError, OSError, WeightsError, GridError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    val_images, val_labels = train.images[split:], train.labels[split:]
    rows = []
    for (model_name, seed, tag, amp), model in zip(cells, models):
        channels_last = zoo.prefers_channels_last(model)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        # The trainer's batches (seed 0's epoch 0, for every seed's weights: any such batches
        # estimate the statistics): augmented, normalised, in its memory format.
        batches = list(itertools.islice(
            CifarTrainBatches(train.images[:split], train.labels[:split], args.batch_size, seed=0,
                              channels_last=channels_last).epoch(0), max(recalibrate, steps)))
        transform = zoo.get_weight(f"{model_name}.{tag}").transforms()

        def val_top1(m: nn.Module) -> float:
            return round(evaluate(m, cifar_batches(val_images, val_labels, transform, 256)).top1, 2)

        fresh, eps = recalibrated(model, [x for x, _ in batches[:recalibrate]])
        rows.append({"model": model_name, "seed": seed, "weights": tag, "val_top1": val_top1(model),
                     "val_top1_recalibrated": val_top1(fresh), "eps_effect": eps,
                     "amp": amp, "gradient_error": gradient_errors(model, batches[:steps], amp)})
        print(f"  {model_name:16} seed {seed}  val {rows[-1]['val_top1']:.2f}  recalibrated "
              f"{rows[-1]['val_top1_recalibrated']:.2f}", file=sys.stderr, flush=True)
    header = {**run_header("eval/linf_gap.py", argv), **run_settings}
    (args.out / "linf-gap.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    print(report.linf_gap_section(rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
