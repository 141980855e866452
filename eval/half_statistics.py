"""Would the batch norms' statistics survive float16? Measured on real activations.

    python eval/half_statistics.py --data ../shared/data/cifar10   # -> eval/results/claims/

Norm Matters claims that L1 and L-infinity batch norm keep low-precision training stable where
L2 batch norm fails: L2's statistic squares the deviations |x - mu|, and a float16 square
overflows past 65,504, that is for |x - mu| >= 256. PyTorch's batch norms (ours too) compute a
float16 input's statistics in float32, so they cannot fail this way; this script asks whether
they would if they did not. It runs each model in training mode on CIFAR-10 training batches,
takes every norm layer's input, and computes each scale s (L2: 1 / sqrt(var + eps); L1:
1 / (sqrt(pi/2) mean|x - mu| + eps); L-infinity: 1 / (c_n max|x - mu| + eps)) twice: in
float64, and op by op in float16 (each elementwise result rounded to float16; reductions
accumulate in float32 and round, as PyTorch's float16 reductions do). It records the largest
|x - mu|, the float16 scales that fail (infinite, NaN or 0), and the worst relative error of the rest.
Markdown comes from zoo.report; ``python tools/update_docs.py`` puts it in docs/claims.md.
A run of fewer models or other settings does not replace --out's results unless --force.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from torch import nn

import zoo
from grid import GridError, refuse_losing_rows  # a sibling in eval/, on sys.path when this runs as a script
from zoo import report
from zoo.cli import one_line, positive_int, run_header
from zoo.data import SHARED_DATA, load_cifar
from zoo.norms.norm_matters import L1BatchNorm2d, TopKBatchNorm2d
from zoo.evaluate import cifar_batches
from zoo.preprocessing import default_preprocessing, eval_transforms
from zoo.weights import WeightsError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "eval" / "results" / "claims"
CIFAR10 = SHARED_DATA / "cifar10"
MODELS = ("resnet20_bn", "resnet20_l1bn", "resnet20_linfbn")
STATISTICS = ("L2", "L1", "Linf")
HALF_MAX = torch.finfo(torch.float16).max
EPS = 1e-5  # the eps of every batch norm measured
BATCH_NORMS = (nn.BatchNorm2d, L1BatchNorm2d, TopKBatchNorm2d)


def spread(dev: torch.Tensor, statistic: str) -> torch.Tensor:
    """Per-channel spread a scale divides by, before eps, from the deviations ``dev = x - mu``
    (C, n), op by op in dev's dtype: the variance (L2, whose eps goes under the square root),
    sqrt(pi/2) mean|x - mu| (L1) or c_n max|x - mu| (L-infinity)."""
    if statistic == "L2":
        return (dev * dev).mean(1)
    if statistic == "L1":
        return math.sqrt(math.pi / 2) * dev.abs().mean(1)
    c_n = 0.5 * (1 + math.sqrt(math.pi * math.log(4))) / math.sqrt(2 * math.log(dev.size(1)))
    return c_n * dev.abs().amax(1)


def scales(dev: torch.Tensor, statistic: str) -> torch.Tensor:
    """Per-channel scale s from the deviations ``dev = x - mu`` (C, n), op by op in dev's dtype."""
    found = spread(dev, statistic)
    return 1 / (torch.sqrt(found + EPS) if statistic == "L2" else found + EPS)


def compare(x: torch.Tensor) -> dict:
    """One norm input (N, C, H, W): the largest |x - mu|, and each statistic's float16 scales
    against float64 ones."""
    values = x.transpose(0, 1).reshape(x.size(1), -1)
    exact = values.double() - values.double().mean(1, keepdim=True)
    half = values.half() - values.half().mean(1, keepdim=True)
    found = {"max_dev": exact.abs().max().item()}
    for statistic in STATISTICS:
        s64, s16 = scales(exact, statistic), scales(half, statistic).double()
        usable = torch.isfinite(s16) & (s16 > 0)  # 0 is 1 / inf: an overflowed statistic
        errors = ((s16 - s64).abs() / s64)[usable]
        found[statistic] = {"failed": int((~usable).sum()), "channels": len(s16),
                            "max_rel_err": errors.max().item() if len(errors) else None}
    return found


def measure(model: nn.Module, batches) -> dict:
    """``compare`` over every norm layer and batch, merged to one row of worst cases."""
    seen: list[dict] = []
    norms = [m for m in model.modules() if isinstance(m, BATCH_NORMS)]
    hooks = [m.register_forward_pre_hook(lambda _, inputs: seen.append(compare(inputs[0]))) for m in norms]
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for hook in hooks:
        hook.remove()
    row = {"norm_layers": len(norms), "max_dev": max(s["max_dev"] for s in seen)}
    for statistic in STATISTICS:
        row[statistic] = {"failed": sum(s[statistic]["failed"] for s in seen),
                          "channels": sum(s[statistic]["channels"] for s in seen),
                          "max_rel_err": max((s[statistic]["max_rel_err"] for s in seen
                                              if s[statistic]["max_rel_err"] is not None), default=None)}
    return row


def trained_model(name: str) -> nn.Module:
    """``name`` with its DEFAULT weights; a ValueError unless it has them and batch norms of the
    kinds measured."""
    if "DEFAULT" not in zoo.get_model_weights(name).__members__:
        raise ValueError(f"{name} has no DEFAULT weights to measure; these have: "
                         f"{', '.join(sorted({w.split('.')[0] for w in zoo.list_weights()}))}")
    model = zoo.create_model(name, weights="DEFAULT")
    if not any(isinstance(m, BATCH_NORMS) for m in model.modules()):
        raise ValueError(f"{name} has no batch norm of the kinds measured "
                         f"({', '.join(t.__name__ for t in BATCH_NORMS)})")
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=CIFAR10, help="CIFAR-10 (python layout; default: %(default)s)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: %(default)s)")
    p.add_argument("--images", type=positive_int(), default=1024,
                   help="the first training images, unaugmented (default: %(default)s)")
    p.add_argument("-b", "--batch-size", type=positive_int(), default=128,
                   help="the recipes' batch (default: %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--force", action="store_true",
                   help="replace an --out table of other models or settings (default: refuse)")
    args = p.parse_args(argv)
    try:
        trained = {name: trained_model(name) for name in args.models.split(",")}
        train = load_cifar(args.data, "train")
        images, labels = train.images[: args.images], train.labels[: args.images]
        settings = {"images": len(images), "batch_size": args.batch_size}
        refuse_losing_rows(args.out / "half-statistics.json", settings, ("model",),
                           [(name,) for name in trained], args.force)
        args.out.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError, WeightsError, GridError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    rows = []
    for name, default_model in trained.items():
        torch.manual_seed(0)  # the init row: the weights as a seeded run starts
        for weights, model in (("DEFAULT", default_model), ("init", zoo.create_model(name))):
            transform = eval_transforms(default_preprocessing(model))
            batches = (x for x, _, _ in cifar_batches(images, labels, transform, args.batch_size))
            rows.append({"model": name, "weights": weights, **measure(model, batches)})
            print(f"  {name:18} {weights:8} largest |x - mu| {rows[-1]['max_dev']:.1f}",
                  file=sys.stderr, flush=True)
    header = {**run_header("eval/half_statistics.py", argv), **settings, "half_max": HALF_MAX}
    (args.out / "half-statistics.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    print(report.half_statistics_section(rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
