"""Accuracy against batch size: CIFAR-10 ResNet-20 trained from scratch per (method, batch).

    python eval/batch_sweep.py --data ../shared/data/cifar10        # the committed sweep
    python eval/batch_sweep.py --data DIR --methods bn gn --batch-sizes 8 128 --train-images 2560

A fixed-budget comparison, not converged accuracy. Every cell is a run of the project's
trainer (``python -m train``) on the same first --train-images images, for --epochs, from
the same seed: the same images for every cell. The lr scales linearly with the batch from
the recipe's (Goyal et al. 2017) and the warm-up is the same fraction of every cell, for
every method (a method's own warm-up is overridden). One process trains each cell, so the
batch a norm sees is the batch size. The smallest and the largest batch sizes are also
trained with a second seed (--end-seeds).

Each cell is scored on the recipe's held-out images (the --val-images after the subset):
in eval mode, as shipped (running statistics), and, for norms that keep running
statistics, with batch statistics: the norms in train mode on validation batches of the
cell's batch size, parameters frozen. Cells are run folders under --runs (eval/grid.py): a
stopped sweep continues where it stopped, and a finished cell trained with other settings
is refused, not reused. Writes batch-sweep.csv, .json (settings) and .png to --results; results
of other settings there (the committed sweep's, by default) are replaced only with --force.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Optional

from grid import ROOT, Cell, GridError, refuse_overwrite, run_grid, train_cell

COLUMNS = ("method", "batch_size", "seed", "val_top1", "val_top1_se", "val_top1_batch_stats",
           "val_top1_batch_stats_se", "batch_stats_images", "train_loss", "img_per_s", "epochs",
           "images", "steps", "minutes", "status")
METHODS = ("bn", "gn", "ilm", "l1bn", "linfbn", "mimic")
BATCH_SIZES = (2, 4, 8, 16, 32, 128)


def parser() -> argparse.ArgumentParser:
    from zoo.cli import positive_int

    positive = positive_int("must be at least 1, not {value}", digits_only=False)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="CIFAR-10 folder (python layout)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), help="norm names (resnet20_<norm>)")
    p.add_argument("--batch-sizes", nargs="+", type=positive, default=list(BATCH_SIZES))
    p.add_argument("--recipe", default="cifar10_cpu", help="the trainer recipe every cell starts from")
    p.add_argument("--train-images", type=positive, default=25_600,
                   help="the fixed training subset: the first N training images (a multiple of "
                        "every batch size, so every cell sees the same images)")
    p.add_argument("--epochs", type=positive, default=1, help="passes over the subset")
    p.add_argument("--warmup-fraction", type=float,
                   help="linear warm-up as a fraction of each cell (default: the recipe's)")
    p.add_argument("--end-seeds", type=positive, default=2,
                   help="seeds at the smallest and largest batch size (the others: seed 0)")
    p.add_argument("--jobs", type=positive, default=os.cpu_count() or 1,
                   help="cells trained at once, each on cpu_count / jobs threads")
    p.add_argument("--runs", default=str(ROOT.parent / "runs" / "batch-sweep"),
                   help="folder of the cells' run folders")
    p.add_argument("--results", default=str(ROOT / "eval" / "results"),
                   help="where batch-sweep.csv/.json/.png go")
    p.add_argument("--force", action="store_true",
                   help="replace results of other settings in --results (the committed sweep's, "
                        "by default)")
    p.add_argument("--score-cell", help=argparse.SUPPRESS)  # internal: one cell's batch-stat score
    return p


def cells(args) -> list[tuple[str, int, int]]:
    """(method, batch size, seed): every method at every batch size with seed 0, plus the
    other end seeds at the smallest and largest; the costliest (small batches) first, so
    parallel jobs finish together."""
    ends = {min(args.batch_sizes), max(args.batch_sizes)}
    return [(m, b, s) for b in sorted(set(args.batch_sizes))
            for s in range(args.end_seeds if b in ends else 1) for m in args.methods]


def cell(args, recipe, method: str, batch: int, seed: int) -> Cell:
    """The cell's trainer run: the lr scaled by the batch, the same warm-up share and the
    same images for every cell."""
    lr = recipe.lr * batch / recipe.batch_size
    warmup = args.warmup_fraction * args.epochs
    return Cell(f"{method}-b{batch}-s{seed}", (
        "--model", f"resnet20_{method}", "--recipe", recipe.name,
        "--limit-train", str(args.train_images + recipe.val_images), "--epochs", str(args.epochs),
        "--batch-size", str(batch), "--lr", repr(lr), "--warmup-epochs", repr(warmup),
        "--seed", str(seed)))


def run_cell(args, recipe, cell: Cell, threads: int) -> dict:
    """Train the cell (or continue it), score it with batch statistics, return its CSV row.
    A cell whose loss becomes NaN or infinite is a result too: status "diverged at step N"."""
    from zoo.evaluate import standard_error

    method = cell.value("--model").removeprefix("resnet20_")
    batch = int(cell.value("--batch-size"))
    steps_per_epoch = args.train_images // batch
    row = {"method": method, "batch_size": batch, "seed": int(cell.value("--seed")),
           "epochs": args.epochs, "images": steps_per_epoch * args.epochs * batch,
           "steps": steps_per_epoch * args.epochs}
    trained = train_cell(cell, Path(args.runs), args.data, threads)
    if trained["status"] == "diverged":
        step = (trained["epoch"] - 1) * steps_per_epoch + trained["step"] + 1
        return {**row, "status": f"diverged at step {step}"}
    folder, rows = trained["folder"], trained["rows"]
    running_statistics = keeps_running_statistics(method)
    scored = {"top1": None, "images": 0}
    if running_statistics:
        scored = read_batch_stats(folder)
        if scored is None:
            score = [sys.executable, str(Path(__file__).resolve()), "--data", args.data,
                     "--train-images", str(args.train_images), "--recipe", recipe.name,
                     "--score-cell", str(folder)]
            subprocess.run(score, cwd=ROOT, check=True,
                           env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            scored = read_batch_stats(folder)
    val = rows[-1]["val_acc"]
    return {**row, "val_top1": val, "val_top1_se": round(standard_error(val, recipe.val_images), 2),
            "val_top1_batch_stats": scored["top1"],
            "val_top1_batch_stats_se": None if scored["top1"] is None
            else round(standard_error(scored["top1"], scored["images"]), 2),
            "batch_stats_images": scored["images"],
            "train_loss": round(rows[-1]["train_loss"], 4),
            "img_per_s": round(statistics.median(r["img_per_s"] for r in rows), 1),
            "minutes": round(sum(r["seconds"] for r in rows) / 60, 2), "status": "ok"}


def read_batch_stats(folder: Path) -> Optional[dict]:
    """CELL/batch_stats.json, or None where it is missing or cut off (then it is scored
    again)."""
    try:
        return json.loads((folder / "batch_stats.json").read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        print(f"warning: {folder / 'batch_stats.json'} is cut off; scoring the cell again",
              file=sys.stderr)
        return None


def keeps_running_statistics(method: str) -> bool:
    """Whether the method's norms keep running statistics (so eval mode differs from
    normalising with each batch's own)."""
    import torch

    import zoo
    from zoo.evaluate import keeps_running_statistics as layer_keeps

    with torch.device("meta"):
        model = zoo.create_model(f"resnet20_{method}")
    return any(layer_keeps(module) for module in model.modules())


def score_cell(args) -> None:
    """Write CELL/batch_stats.json: top-1 on the validation images with batch statistics at
    the cell's batch size (full batches only)."""
    import zoo
    from zoo.data import load_cifar
    from zoo.evaluate import cifar_batches, evaluate
    from zoo.preprocessing import default_preprocessing, eval_transforms
    from train.recipes import get_recipe

    folder = Path(args.score_cell)
    record = json.loads((folder / "recipe.json").read_text())
    batch, amp = record["recipe"]["batch_size"], record["recipe"]["amp"]
    model = zoo.create_model(record["model"], weights=folder / "model.safetensors", progress=False)
    train = load_cifar(args.data, "train")
    val = slice(args.train_images, args.train_images + get_recipe(args.recipe).val_images)
    images, labels = train.images[val], train.labels[val]
    n = len(labels) - len(labels) % batch  # every batch full: the statistics of `batch` images
    scored = evaluate(model, cifar_batches(images[:n], labels[:n],
                                           eval_transforms(default_preprocessing(model)), batch),
                      amp=amp, channels_last=record["channels_last"], batch_statistics=True)
    result = {"top1": round(scored.top1, 2), "images": scored.num_images}
    (folder / "batch_stats.json").write_text(json.dumps(result) + "\n")


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    panels = (("val_top1", "eval mode (running statistics), as shipped"),
              ("val_top1_batch_stats", "batch statistics at the training batch size"))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    color = {m: f"C{i}" for i, m in enumerate(methods)}  # one color per method in both panels
    for ax, (key, label) in zip(axes, panels):
        for method in methods:
            points = {}
            for r in rows:
                if r["method"] == method and r.get(key) is not None:
                    points.setdefault(r["batch_size"], []).append(r)
            if not points:
                continue
            sizes = sorted(points)
            mean = [statistics.mean(p[key] for p in points[b]) for b in sizes]
            se = [statistics.mean(p[key + "_se"] for p in points[b]) for b in sizes]
            ax.errorbar(sizes, mean, yerr=se, marker="o", capsize=3, label=method,
                        color=color[method])
            for b in sizes:  # each seed's own point, where a size has more than one
                if len(points[b]) > 1:
                    ax.plot([b] * len(points[b]), [p[key] for p in points[b]], "x",
                            color=color[method])
        diverged = sorted({(r["method"], r["batch_size"]) for r in rows if r["status"] != "ok"},
                          key=lambda c: (methods.index(c[0]), c[1]))
        for i, (method, b) in enumerate(diverged):  # no point to plot: said at the bottom
            ax.annotate(f"{method} diverged", (b, 0), xycoords=("data", "axes fraction"),
                        xytext=(4, 4 + 11 * i), textcoords="offset points", fontsize=8,
                        color=color[method])
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["batch_size"] for r in rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("batch size (per process = what the norm sees)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val top-1 % (± standard error)")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:  # none where every cell diverged
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend below
    fig.savefig(path, dpi=100)
    plt.close(fig)




def describe(row: dict) -> str:
    return " ".join(f"{k} {row.get(k)}" for k in ("method", "batch_size", "seed", "val_top1",
                                                  "val_top1_batch_stats", "img_per_s", "status"))


SWEEP_FLAGS = ("methods", "batch_sizes", "recipe", "train_images", "epochs", "warmup_fraction",
               "end_seeds")


def changed_settings(recorded: dict, args) -> list[str]:
    """The sweep flags in which the results recorded in batch-sweep.json differ from these."""
    try:
        old = parser().parse_known_args(shlex.split(recorded.get("command", ""))[2:])[0]
    except SystemExit:  # not a sweep's command: nothing to compare, so nothing to keep
        return ["its command"]
    if old.warmup_fraction is None:  # the recipe's, as main() resolves it
        old.warmup_fraction = recorded.get("warmup_fraction")
    return ["--" + k.replace("_", "-") for k in SWEEP_FLAGS if getattr(old, k) != getattr(args, k)]


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    import zoo
    from train.recipes import get_recipe
    from zoo.cli import cpu_name, git_commit

    try:
        recipe = get_recipe(args.recipe)
        for method in args.methods:
            zoo.get_norm(method)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.score_cell:
        score_cell(args)
        return 0
    uneven = [b for b in args.batch_sizes if args.train_images % b]
    if uneven:
        print(f"error: --train-images {args.train_images} is not a multiple of batch size "
              f"{', '.join(map(str, uneven))}: the cells would see different images. Use a "
              f"multiple of {math.lcm(*args.batch_sizes)}", file=sys.stderr)
        return 2
    if args.warmup_fraction is None:
        args.warmup_fraction = recipe.warmup_epochs / recipe.epochs
    if not 0 <= args.warmup_fraction <= 1:
        print(f"error: --warmup-fraction must be from 0 to 1, not {args.warmup_fraction}",
              file=sys.stderr)
        return 2
    if not recipe.val_images:
        print(f"error: recipe {recipe.name!r} holds out no validation images, and every cell is "
              f"scored on them: choose a recipe with val_images, e.g. cifar10_cpu", file=sys.stderr)
        return 2
    # the cells' trainer runs in the project root: paths from here must hold there too
    args.data, args.runs = str(Path(args.data).resolve()), str(Path(args.runs).resolve())
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    results, out = Path(args.results), Path(args.runs)
    todo = [cell(args, recipe, *c) for c in cells(args)]
    print(f"{len(todo)} cells, {args.jobs} at a time on {threads} thread(s) each; run folders in {out}",
          flush=True)
    try:
        refuse_overwrite(results / "batch-sweep.json", lambda old: changed_settings(old, args),
                         args.force)
        rows, invocations = run_grid(todo, lambda c: run_cell(args, recipe, c, threads), args.jobs,
                                 out, describe)
    except (GridError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    results.mkdir(parents=True, exist_ok=True)
    order = {m: i for i, m in enumerate(args.methods)}
    rows.sort(key=lambda r: (order[r["method"]], r["batch_size"], r["seed"]))
    with open(results / "batch-sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    settings_path = results / "batch-sweep.json"
    settings = {
        "command": "python eval/batch_sweep.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "commit": git_commit(), "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "jobs": args.jobs, "threads_per_cell": threads, "recipe": recipe.name,
        "train_images": args.train_images, "val_images": recipe.val_images,
        "epochs": args.epochs, "warmup_fraction": args.warmup_fraction,
        "lr": f"{recipe.lr} x batch / {recipe.batch_size}",
        "wall_minutes": round(sum(i["seconds"] for i in invocations) / 60, 1),
        "invocations": len(invocations),
        "cell_minutes": round(sum(r.get("minutes") or 0 for r in rows), 1)}
    settings_path.write_text(json.dumps(settings, indent=2) + "\n")
    plot(rows, results / "batch-sweep.png",
         f"CIFAR-10 ResNet-20, {args.train_images:,} images x {args.epochs} epoch(s) per cell "
         f"(fixed budget), lr {settings['lr']}")
    print(f"wrote {results / 'batch-sweep.csv'}, .json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
