"""Forward+backward time of each NormZoo norm layer against its PyTorch baseline.

    python eval/norm_speed.py                          # every per-layer norm, ResNet-20/50 shapes
    python eval/norm_speed.py --norms ilm,l1bn,linfbn --repeats 9 --csv norm_speed.csv
    python eval/norm_speed.py --quick                  # one small shape, one repeat: that it runs

Each configuration runs interleaved with its baseline (BatchNorm2d for the BN family,
the matching GroupNorm / InstanceNorm for ILM) on the same tensors; the ratio is the
median over repeats of the per-repeat ratio, so it holds on a noisy machine. Rows marked
"original" are the papers' op sequences (eval/original_style.py).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo  # noqa: E402
from zoo.norms.common import group_count  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from original_style import OriginalILMGroupNorm, OriginalTopKBatchNorm2d  # noqa: E402

SHAPES = {
    "resnet20": [(128, 16, 32, 32), (128, 32, 16, 16), (128, 64, 8, 8)],
    "resnet50": [(16, 256, 56, 56), (16, 512, 28, 28), (16, 1024, 14, 14), (16, 2048, 7, 7)],
}
BASELINE = {"ilm": "gn", "ilm_in": "in", "ilm_ln": "ln"}  # everything else: "bn"
TARGETS = {"ilm": 2.0, "l1bn": 1.5, "linfbn": 1.5}  # this goals (fwd+bwd ratio)
ORIGINALS = {
    "ilm": lambda c: OriginalILMGroupNorm(c, group_count(c, 32, 2)),
    "l1bn": lambda c: OriginalTopKBatchNorm2d(c),
    "linfbn": lambda c: OriginalTopKBatchNorm2d(c, k=1),
}


def per_layer_norms() -> list[str]:
    """Registered norms with a layer of their own to time (not the baselines, not structural)."""
    return [n for n in zoo.list_norms()
            if n not in ("bn", "gn", "in", "ln", "none")
            and not zoo.get_norm(n).structural_parts() and not zoo.get_norm(n).conv_transform]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_step(layer, x, grad, number: int) -> float:
    _sync(x.device)
    start = time.perf_counter()
    for _ in range(number):
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(grad)
    _sync(x.device)
    return (time.perf_counter() - start) / number


def measure(shape, rows: dict, device, repeats: int, min_block_s: float) -> dict:
    """Median seconds per fwd+bwd step of each row's layer, and the median ratio to its baseline."""
    c = shape[1]
    x = torch.randn(shape, device=device, requires_grad=True)
    grad = torch.randn(shape, device=device)
    layers = {name: make(c).to(device).train() for name, (make, _) in rows.items()}
    number = {}
    for name, layer in layers.items():  # warm up, then size blocks of about min_block_s
        _seconds_per_step(layer, x, grad, 2)
        number[name] = max(1, int(min_block_s / max(_seconds_per_step(layer, x, grad, 1), 1e-6)))
    times = {name: [] for name in layers}
    for _ in range(repeats):
        for name, layer in layers.items():
            times[name].append(_seconds_per_step(layer, x, grad, number[name]))
    result = {}
    for name, (_, baseline) in rows.items():
        ratios = [t / b for t, b in zip(times[name], times[baseline])]
        result[name] = (statistics.median(times[name]), statistics.median(ratios))
    return result


def rows_for(norms: list[str]) -> dict:
    """name -> (layer factory taking C, baseline row name)."""
    rows = {}
    for norm in norms:
        base = BASELINE.get(norm, "bn")
        rows.setdefault(base, (lambda c, b=base: zoo.create_norm(b, c), base))
        rows[norm] = (lambda c, n=norm: zoo.create_norm(n, c), base)
        if norm in ORIGINALS:
            rows[f"{norm} (original)"] = (ORIGINALS[norm], base)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--norms", default=",".join(per_layer_norms()),
                        help="comma-separated norm names (default: all per-layer norms)")
    parser.add_argument("--shapes", default="resnet20,resnet50", help=f"of {', '.join(SHAPES)}")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--min-block-s", type=float, default=0.05,
                        help="seconds per timed block (default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--csv", help="also write the rows to this CSV file")
    parser.add_argument("--quick", action="store_true",
                        help="one small shape, one repeat: checks the script, measures nothing")
    args = parser.parse_args(argv)

    norms = [n.strip() for n in args.norms.split(",") if n.strip()]
    bad = [n for n in norms if n not in per_layer_norms()]
    if bad:
        parser.error(f"not per-layer norms: {', '.join(bad)}; choose from {', '.join(per_layer_norms())}")
    shapes = [(8, 32, 8, 8)] if args.quick else [s for key in args.shapes.split(",") for s in SHAPES[key]]
    repeats, min_block = (1, 0.0) if args.quick else (args.repeats, args.min_block_s)
    device = torch.device(args.device)
    rows = rows_for(norms)

    print(f"# norm layer forward+backward vs PyTorch, {device.type}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {repeats}\n")
    print("| shape (N, C, H, W) | layer | baseline | ms | ratio | target |")
    print("|---|---|---|---|---|---|")
    records = []
    for shape in shapes:
        result = measure(shape, rows, device, repeats, min_block)
        for name, (_, baseline) in rows.items():
            if name == baseline:
                continue
            seconds, ratio = result[name]
            target = TARGETS.get(name, "")
            records.append({"shape": "x".join(map(str, shape)), "layer": name, "baseline": baseline,
                            "ms": round(seconds * 1e3, 3), "ratio": round(ratio, 3), "target": target})
            print(f"| {tuple(shape)} | {name} | {baseline} | {seconds * 1e3:.2f} | {ratio:.2f}x | "
                  f"{f'<= {target}x' if target else ''} |")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
