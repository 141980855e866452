"""Every shipped DEFAULT checkpoint as deployed: top-1 in fp32, bf16, fp16, folded and int8.

    python eval/deploy_table.py                       # accuracy -> eval/results/deploy/
    python eval/benchmark.py --suites deploy --out eval/results/deploy   # img/s (a quiet machine)

Top-1 on the 5,000 held-out validation images (the last 5,000 CIFAR-10 training images, the
recipes' val split) and on test[:1000]. bf16 and fp16: the model's weights and inputs cast
(the norms keep float32 statistics, as they do for low-precision input); a dtype the CPU
cannot run is recorded as such. folded: zoo.fold_norms, fp32. int8: zoo.deploy.quantize_int8
(folds, then torchao's PT2E x86 quantization, the [deploy] extra) calibrated on the first
--calibrate training images, which the validation images are not among. Speed is the
benchmark's deploy suite (eval/benchmark.py): the same variants, timed side by side with the
fp32 model. Markdown comes from zoo.report; ``python tools/update_docs.py`` puts the table in docs/deploy.md.
A run of fewer models or other settings does not replace --out's results unless --force.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import torch
from torch import nn

import zoo
from grid import GridError, refuse_losing_rows  # a sibling in eval/, on sys.path when this runs as a script
from train.recipes import get_recipe
from zoo import report
from zoo.cli import one_line, positive_int, run_header
from zoo.data import SHARED_DATA, load_cifar
from zoo.deploy import quantize_int8
from zoo.evaluate import cifar_batches, evaluate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "eval" / "results" / "deploy"
CIFAR10 = SHARED_DATA / "cifar10"
VARIANTS = ("fp32", "bf16", "fp16", "folded", "int8")
# The DEFAULT CIFAR weights' recipe holds these out from the end of the training set.
VAL_IMAGES = get_recipe("cifar10_cpu_long").val_images


class Cast(nn.Module):
    """``model`` in ``dtype``: weights and inputs cast, logits back to float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model.to(dtype), dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def shipped_checkpoints(requested: Optional[str]) -> tuple[list[str], list[str]]:
    """The models a comma-separated ``requested`` names (default: every shipped DEFAULT
    checkpoint's), and one problem per name that has no shipped DEFAULT checkpoint."""
    shipped = [w.split(".")[0] for w in zoo.list_weights() if zoo.get_weight(w).entry["default"]]
    names = [m.strip() for m in requested.split(",")] if requested else shipped
    return names, [f"{n!r} is not a shipped DEFAULT checkpoint (of {', '.join(shipped)})"
                   for n in names if n not in shipped]


def variants(name: str, calibration) -> dict:
    """Each variant of ``name``'s DEFAULT weights: a model, or why it cannot run here."""
    model = zoo.create_model(name, weights="DEFAULT").eval()
    made: dict = {"fp32": model}
    for label, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        cast = Cast(zoo.create_model(name, weights="DEFAULT").eval(), dtype)
        try:
            with torch.no_grad():
                cast(torch.zeros(2, 3, 32, 32))
            made[label] = cast
        except RuntimeError as e:  # a CPU kernel missing for the dtype
            made[label] = f"does not run on this CPU ({one_line(e, 80)})"
    made["folded"] = zoo.fold_norms(model)[0]
    try:
        made["int8"] = quantize_int8(model, calibration)[0]
    except ImportError as e:
        made["int8"] = one_line(e)
    return made


def compile_int8(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``quantize_int8``'s model as torch.compile lowers it to x86 int8 kernels, compiled on
    ``example``: inductor with freezing, since the int8 kernels need constant weights."""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(model)
    with inductor_config.patch(freezing=True), torch.no_grad():
        compiled(example)
    return compiled


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=CIFAR10, help="CIFAR-10 (python layout; default: %(default)s)")
    p.add_argument("--models", help="comma-separated model names (default: every DEFAULT checkpoint)")
    p.add_argument("--calibrate", type=positive_int(), default=1000,
                   help="training images to calibrate int8 on (default: %(default)s)")
    p.add_argument("--val-images", type=positive_int(), default=VAL_IMAGES,
                   help="held-out images from the end of the training set (default: %(default)s)")
    p.add_argument("--test-images", type=positive_int(), default=1000)
    p.add_argument("-b", "--batch-size", type=positive_int(), default=250)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--force", action="store_true",
                   help="replace an --out table of other models or settings (default: refuse)")
    args = p.parse_args(argv)
    settings = {"calibration_images": args.calibrate, "val_images": args.val_images,
                "test_images": args.test_images}
    try:
        names, problems = shipped_checkpoints(args.models)
        if problems:
            raise ValueError(f"--models: {'; '.join(problems)}")
        refuse_losing_rows(args.out / "deploy.json", settings, ("model",), [(m,) for m in names],
                           args.force)
        train, test = load_cifar(args.data, "train"), load_cifar(args.data, "test")
        if args.val_images + args.calibrate > len(train.labels):
            raise ValueError(f"{len(train.labels)} training images cannot hold --calibrate "
                             f"{args.calibrate} and --val-images {args.val_images} apart")
    except (ValueError, OSError, GridError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    splits = {"val": (train.images[-args.val_images:], train.labels[-args.val_images:]),
              "test": (test.images[: args.test_images], test.labels[: args.test_images])}
    rows = []
    for name in names:
        transform = zoo.get_weight(zoo.get_model_weights(name).DEFAULT.value.name).transforms()
        calibration = cifar_batches(train.images[: args.calibrate], train.labels[: args.calibrate],
                                    transform, args.batch_size)
        for variant, model in variants(name, calibration).items():
            r = {"model": name, "variant": variant, "status": "ok" if isinstance(model, nn.Module) else model}
            for split, (images, labels) in splits.items():
                r[f"{split}_top1"] = (None if isinstance(model, str) else round(evaluate(
                    model, cifar_batches(images, labels, transform, args.batch_size)).top1, 2))
            rows.append(r)
            print(f"  {name:18} {variant:7} val {r['val_top1']}  test {r['test_top1']}  "
                  f"{'' if r['status'] == 'ok' else r['status']}",
                  file=sys.stderr, flush=True)
    header = {**run_header("eval/deploy_table.py", argv), **settings}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deploy.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    print(report.deploy_section(rows, header, "deploy.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
