"""What the papers claim, tested on CIFAR-10 ResNet-20 with several seeds.

    python eval/claims.py --data ../shared/data/cifar10              # train what is missing, then write
    python eval/claims.py --data ../shared/data/cifar10 --no-train   # write from the finished cells only
    python eval/claims.py --data DIR --claims l1bn_matches_bn --seeds 3
    python eval/claims.py --data DIR --claims mimic_lr_robust --first 4   # the verdict's cells only

Each claim compares two arms (a model and its trainer flags) over seeds 0..N-1. Every
(arm, seed) is a cell: a run of the project's trainer (``python -m train``) in its own run
folder under --runs (eval/grid.py: resumable, a finished cell is read back, one trained with
other settings is refused). A published checkpoint whose recorded command trains the same
settings counts as the arm's seed 0. Each claim gets its arms' mean and standard deviation
over seeds, the paired difference (arm a - arm b, seed by seed) with a 95% t interval, and a
verdict (VERDICTS). A learning-rate claim (LrClaim) is a table instead: models x learning
rates at one seed, each cell its best val top-1 within the recipe's epochs. Writes claims.csv
(every cell) and claims.json (settings and every claim's figures) to --results;
docs/claims.md is generated from them (tools/update_docs.py).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import shlex
import statistics
import sys
from pathlib import Path
from typing import Optional

from grid import ROOT, Cell, GridError, differences, recorded_flags, run_grid, settings, train_cell

LONG = ("--recipe", "cifar10_cpu_long")
EQUAL_INIT, ZERO_INIT = ("--no-zero-init-residual",), ("--zero-init-residual",)
MARGIN = 1.0  # points of val top-1 within which two arms "match"
VERDICTS = {
    "matches": f"holds if the 95% interval of the difference lies within ±{MARGIN:g} points; does "
               f"not hold if it lies wholly outside; otherwise not resolved at this n",
    "better": "holds if the 95% interval of the difference lies above 0; does not hold if it "
              "lies below 0; otherwise not resolved at this n",
    "lr_robust": f"holds if model a's best val top-1 within the recipe's epochs exceeds model "
                 f"b's by more than {MARGIN:g} points at every learning rate judged; does not "
                 f"hold if it is below b's at every one; otherwise not resolved. One seed: a "
                 f"verdict is one draw. A run that diverged before its first validation counts "
                 f"as chance",
}
MIN_SEEDS = 3
CHANCE = 10.0  # CIFAR-10 top-1 % of a model that learned nothing (NaN logits: argmax 0)


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str                # its run folders: NAME.sSEED
    flags: tuple[str, ...]   # trainer flags, without --seed, --data and --out

    def cell(self, seed: int) -> Cell:
        return Cell(f"{self.name}.s{seed}", (*self.flags, "--seed", str(seed)))


# trainer flags an arm's name shows, as .TAGVALUE: resnet20_gn.cifar10_cpu_long.b8.e10.lr0.00625
ARM_SUFFIXES = (("--batch-size", "b"), ("--epochs", "e"), ("--lr", "lr"))


def arm(model: str, *flags: str, init: Optional[str] = None) -> Arm:
    """CIFAR-10 ResNet-20 with ``cifar10_cpu_long``; ``init`` ("off"/"on") names arms that
    differ in zero_init_residual."""
    suffix = "".join(f".{tag}{flags[flags.index(flag) + 1]}" for flag, tag in ARM_SUFFIXES
                     if flag in flags)
    init_flags = {None: (), "off": EQUAL_INIT, "on": ZERO_INIT}[init]
    if model == "resnet20_bn" and init == "off":
        init_flags = ()  # BN's recipe starts its gains at 1: the flag would change nothing
    name = f"{model}.cifar10_cpu_long{suffix}" + (f".init_{init}" if init else "")
    return Arm(name, ("--model", model, *LONG, *flags, *init_flags))


BN = arm("resnet20_bn", init="off")
# Batch 8 for 10 epochs, the lr scaled linearly with the batch as the batch sweep scales it
SMALL_BATCH = ("--batch-size", "8", "--epochs", "10", "--lr", repr(0.1 * 8 / 128))
SMALL_BATCH_NOTE = ("Batch 8 for 10 epochs of cifar10_cpu_long, lr 0.1 x 8 / 128: the batch sweep's "
                    "cells see half an epoch, too little for a verdict (docs/batch-size.md).")


@dataclasses.dataclass(frozen=True)
class Claim:
    key: str
    title: str
    paper: str      # the paper's statement and where it says it
    kind: str       # "matches" or "better" (a better than b): VERDICTS
    a: Arm
    b: Arm
    note: str = ""


@dataclasses.dataclass(frozen=True)
class LrRow:
    label: str               # as the table shows it
    name: str                # its arms' names: NAME.RECIPE.lrLR
    flags: tuple[str, ...]   # trainer flags, without --recipe, --lr, --seed, --data and --out


@dataclasses.dataclass(frozen=True)
class LrClaim:
    """Models x learning rates at one seed, each cell a run's best val top-1 within its
    recipe's epochs; the verdict (VERDICTS[kind]) sets row ``a`` against row ``b`` at the
    ``judged`` learning rates."""
    key: str
    title: str
    paper: str
    recipe: str
    rows: tuple[LrRow, ...]
    lrs: tuple[float, ...]
    a: str                   # row names
    b: str
    judged: tuple[float, ...]
    note: str = ""
    seed: int = 0
    kind: str = "lr_robust"

    def arm(self, row: LrRow, lr: float) -> Arm:
        return Arm(f"{row.name}.{self.recipe}.lr{lr}", (*row.flags, "--recipe", self.recipe, "--lr", str(lr)))

    def arms(self) -> list[Arm]:
        """Every cell's arm, the verdict's cells (rows a and b at the judged learning rates)
        first: a training budget cut short still decides the verdict."""
        every = [(row, lr) for row in self.rows for lr in self.lrs]
        judged = [(row, lr) for row, lr in every if row.name in (self.a, self.b) and lr in self.judged]
        return [self.arm(row, lr) for row, lr in judged + [c for c in every if c not in judged]]


def lr_row(label: str, model: str, *flags: str, variant: str = "") -> LrRow:
    return LrRow(label, model + (f".{variant}" if variant else ""), ("--model", model, *flags))


MIMIC_LR = LrClaim(
    "mimic_lr_robust", "MimicNorm trains at learning rates where BN degrades",
    "Fei et al., *MimicNorm*, AAAI 2021, Table 2: best CIFAR-100 top-1 in the first 10 epochs "
    "by learning rate; at lr 0.1 no norm 1.24, weight mean only 36.49, MimicNorm 46.92, BN "
    "32.4; at lr 1.0 MimicNorm 9.83, BN 3.93",
    "mimic_lr_cifar10",
    (lr_row("BN", "resnet20_bn"), lr_row("MimicNorm", "resnet20_mimic"),
     lr_row("weight mean only (no logits BN)", "resnet20_mimic", "--norm-kwargs",
            '{"logits_bn": false}', variant="wm_only"),
     lr_row("no norm", "resnet20_none")),
    lrs=(0.1, 0.4, 1.0, 2.0), a="resnet20_mimic", b="resnet20_bn", judged=(1.0, 2.0),
    note="CIFAR-10 (our CIFAR-100 holds 486 training images), ResNet-20, seed 0 only; recipe "
         "`mimic_lr_cifar10`: the first 10 epochs of the paper's CIFAR-100 recipe, best of the "
         "10 epochs' val top-1 on 5,000 held-out images.",
)

CLAIMS = (
    Claim("l1bn_matches_bn", "L1 batch norm matches batch norm",
          "Hoffer et al., *Norm matters*, NeurIPS 2018: L1 BN matches L2 BN's accuracy on "
          "ImageNet ResNets (METHODS.md §3)", "matches",
          arm("resnet20_l1bn", init="off"), BN,
          "Both arms start every gain at 1 (zero-init residual off)."),
    Claim("linfbn_matches_bn", "L∞ batch norm (the maximum, k = 1) matches batch norm",
          "Hoffer et al., *Norm matters*, NeurIPS 2018: L∞ BN matches L2 BN's accuracy on "
          "ImageNet ResNets (METHODS.md §3)", "matches", arm("resnet20_linfbn", init="off"), BN,
          "Both arms start every gain at 1 (zero-init residual off)."),
    Claim("l1bn_zero_init_costs", "Zero-init residual gains cost L1 BN accuracy here",
          "Not a paper claim: the Norm Matters recipes start each block's last gain at 0, and "
          "NormZoo's first l1bn and linfbn weights (tags cifar10, cifar10_long) carry it. Here: "
          "equal init minus zero init",
          "better", arm("resnet20_l1bn", init="off"), arm("resnet20_l1bn", init="on")),
    Claim("linfbn_zero_init_costs", "Zero-init residual gains cost L∞ BN accuracy here",
          "Not a paper claim: as above, for L∞ BN", "better",
          arm("resnet20_linfbn", init="off"), arm("resnet20_linfbn", init="on")),
    Claim("ilm_improves_gn", "ILM-Norm improves on the norm it wraps (GN)",
          "Jia et al., *Instance-Level Meta Normalization*, CVPR 2019: ILM-Norm improves on the "
          "normalizer it wraps", "better", arm("resnet20_ilm"), arm("resnet20_gn"),
          "Batch 128; the paper trains at batch 32 for 350 epochs."),
    Claim("mimic_matches_bn", "MimicNorm matches batch norm",
          "Fei et al., *MimicNorm*, AAAI 2021: BN's accuracy with one BN left, e.g. CIFAR-100 "
          "ResNet-18 74.96 against BN's 74.72 (METHODS.md §2)", "matches", arm("resnet20_mimic"), BN),
    Claim("bwn_matches_bn", "Bounded weight norm with mean-only BN matches batch norm",
          "Hoffer et al., *Norm matters*, NeurIPS 2018: bounded weight normalization, with "
          "mean-only BN and no weight decay, in place of BN", "matches",
          arm("resnet20_bwn", "--lr", "0.05"), BN,
          "bwn at lr 0.05: at 0.1 it diverged in epoch 1 (docs/training.md)."),
    Claim("gn_beats_bn_batch8", "Group norm beats batch norm at batch 8",
          "Wu & He, *Group Normalization*, ECCV 2018: GN's error stays flat as the batch per "
          "GPU shrinks, where BN's rises (ImageNet ResNet-50, batch 32 down to 2)", "better",
          arm("resnet20_gn", *SMALL_BATCH), arm("resnet20_bn", *SMALL_BATCH), SMALL_BATCH_NOTE),
    Claim("ilm_beats_bn_batch8", "ILM-Norm beats batch norm at batch 8",
          "Jia et al., CVPR 2019: ILM-Norm wraps batch-independent norms (GN, IN, LN), which "
          "are proposed for where BN's batch statistics fail", "better",
          arm("resnet20_ilm", *SMALL_BATCH), arm("resnet20_bn", *SMALL_BATCH), SMALL_BATCH_NOTE),
    MIMIC_LR,
)

COLUMNS = ("arm", "model", "seed", "val_top1", "val_top1_se", "best_val_top1", "best_epoch",
           "test_top1", "test_images", "train_loss", "img_per_s", "minutes", "status", "source",
           "command", "commit")

# Two-sided 95% quantiles of Student's t by degrees of freedom (1-10, 15, 20, 30).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
       9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    """The quantile for ``df``, or the next smaller tabulated df's (a wider interval)."""
    return T95[max(k for k in T95 if k <= df)]


def parser() -> argparse.ArgumentParser:
    from zoo.cli import positive_int

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="CIFAR-10 folder (python layout)")
    p.add_argument("--claims", nargs="+", default=[c.key for c in CLAIMS],
                   help=f"which claims to train (default: all; every claim is written, from "
                        f"its finished cells): {', '.join(c.key for c in CLAIMS)}")
    p.add_argument("--seeds", type=positive_int("must be at least 1, not {value}"),
                   default=MIN_SEEDS, help="seeds per arm: 0..N-1")
    p.add_argument("--first", type=positive_int("must be at least 1, not {value}"),
                   help="train only the first N cells of --claims, in training order (a "
                        "learning-rate table's judged cells come first), finished ones "
                        "included: a training budget's cut; the rest are written from what "
                        "has finished")
    p.add_argument("--no-train", dest="train", action="store_false",
                   help="train nothing: write the results from the finished cells")
    p.add_argument("--runs", default=str(ROOT.parent / "runs" / "claims"),
                   help="folder of the cells' run folders")
    p.add_argument("--results", default=str(ROOT / "eval" / "results" / "claims"),
                   help="where claims.csv and claims.json go")
    return p


def published_entry(cell: Cell) -> Optional[dict]:
    """The manifest entry of the shipped checkpoint whose recorded command trains ``cell``'s
    settings. The command is resolved by today's recipes, except for what the entry records
    the model was built with (its model_kwargs: the zero-init residual gains), so a checkpoint
    keeps its arm when a method's recipe adjustment changes."""
    from zoo.weights import MANIFEST_PATH, load_manifest

    wanted = settings(cell.flags)
    for entry in load_manifest(MANIFEST_PATH)["weights"]:
        flags = recorded_flags(entry["recipe"]["command"])
        if "--model" not in flags:
            continue
        trained = settings(flags)
        trained["recipe"]["zero_init_residual"] = entry["model_kwargs"].get("zero_init_residual", False)
        if not differences(trained, wanted):
            return entry
    return None


def published(cell: Cell) -> Optional[dict]:
    """The shipped checkpoint whose recorded command trains ``cell``'s settings, as a row."""
    entry = published_entry(cell)
    if entry is None:
        return None
    return {"val_top1": entry["recipe"].get("val_top1"), "test_top1": entry["metrics"]["top1"],
            "test_images": entry["metrics"]["num_images"], "img_per_s": entry["recipe"].get("img_per_s"),
            "minutes": entry["recipe"].get("minutes"), "status": "ok",
            "source": f"published {entry['name']}", "command": entry["recipe"]["command"],
            "commit": entry["recipe"]["commit"]}


def cell_row(arm_: Arm, seed: int, args) -> Optional[dict]:
    """The cell's row: from a published checkpoint, a finished run folder, or (with --train)
    a run trained now; None where it is not finished and --no-train."""
    from train.recipes import get_recipe
    from zoo.evaluate import standard_error
    from zoo.weights import read_metadata

    cell = arm_.cell(seed)
    row = {"arm": arm_.name, "model": cell.value("--model"), "seed": seed}
    found = published(cell)
    folder = Path(args.runs) / cell.name
    if found is None and (args.train or (folder / "model.safetensors").is_file()
                          or (folder / "diverged.json").is_file()):
        trained = train_cell(cell, Path(args.runs), args.data, threads=os.cpu_count() or 1)
        validated = [r for r in trained["rows"] if "val_acc" in r]  # a diverged run's too
        best = max(validated, key=lambda r: r["val_acc"], default=None)
        if best is not None:
            row.update(best_val_top1=round(best["val_acc"], 2), best_epoch=best["epoch"])
        if trained["status"] != "ok":
            return {**row, "status": f"diverged at epoch {trained['epoch']}, step {trained['step']}",
                    "source": folder.name}
        last, record = trained["rows"][-1], json.loads((folder / "recipe.json").read_text())
        metrics = read_metadata(folder / "model.safetensors").get("metrics") or {}
        found = {"val_top1": round(last["val_acc"], 2), "test_top1": metrics.get("top1"),
                 "test_images": metrics.get("num_images"), "train_loss": round(last["train_loss"], 4),
                 "img_per_s": round(statistics.median(r["img_per_s"] for r in trained["rows"])),
                 "minutes": round(sum(r["seconds"] for r in trained["rows"]) / 60, 1),
                 "status": "ok", "source": folder.name, "command": record["command"],
                 "commit": record["commit"]}
    if found is None:
        return None
    val_images = get_recipe(cell.value("--recipe")).val_images
    se = None if found["val_top1"] is None else round(standard_error(found["val_top1"], val_images), 2)
    return {**row, **found, "val_top1_se": se}


def summary(claim: Claim, rows: list[dict], seeds: int) -> dict:
    """A claim's figures from the cells' rows: each arm's mean and standard deviation, the
    paired difference with its 95% interval, and the verdict."""
    def values(arm_: Arm, key: str) -> dict[int, float]:
        return {r["seed"]: r[key] for r in rows
                if r["arm"] == arm_.name and r.get("status") == "ok" and r.get(key) is not None}

    out = {"key": claim.key, "title": claim.title, "paper": claim.paper, "kind": claim.kind,
           "note": claim.note, "a": claim.a.name, "b": claim.b.name, "seeds_planned": seeds}
    for side, arm_ in (("a", claim.a), ("b", claim.b)):
        for key in ("val_top1", "test_top1"):
            got = list(values(arm_, key).values())
            out[f"{side}_{key}_n"] = len(got)
            out[f"{side}_{key}_mean"] = round(statistics.mean(got), 2) if got else None
            out[f"{side}_{key}_std"] = round(statistics.stdev(got), 2) if len(got) > 1 else None
    a, b = values(claim.a, "val_top1"), values(claim.b, "val_top1")
    diffs = [a[s] - b[s] for s in sorted(a.keys() & b.keys())]
    out["n"] = len(diffs)
    out["diff"] = round(statistics.mean(diffs), 2) if diffs else None
    out["ci"] = None
    if len(diffs) >= 2:
        half = t95(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
        out["ci"] = [round(out["diff"] - half, 2), round(out["diff"] + half, 2)]
    out["verdict"] = verdict(claim.kind, out["ci"], len(diffs))
    return out


def verdict(kind: str, ci: Optional[list[float]], n: int) -> str:
    if n < MIN_SEEDS or ci is None:
        return f"pending: {n} of {MIN_SEEDS} paired seeds"
    low, high = ci
    if kind == "matches":
        if -MARGIN <= low and high <= MARGIN:
            return "holds"
        if low > MARGIN or high < -MARGIN:
            return "does not hold"
    else:
        if low > 0:
            return "holds"
        if high < 0:
            return "does not hold"
    return f"not resolved at n={n}"


def lr_summary(claim: LrClaim, rows: list[dict]) -> dict:
    """A learning-rate claim's table from the cells' rows (each cell: best val top-1 and its
    epoch, and its status; "pending" where it is not finished) and its verdict."""
    found = {r["arm"]: r for r in rows if r["seed"] == claim.seed}

    def cell(row: LrRow, lr: float) -> dict:
        got = found.get(claim.arm(row, lr).name, {})
        return {"lr": lr, "best_val_top1": got.get("best_val_top1"), "best_epoch": got.get("best_epoch"),
                "status": got.get("status", "pending")}

    table = [{"label": row.label, "name": row.name, "cells": [cell(row, lr) for lr in claim.lrs]}
             for row in claim.rows]
    by_name = {r["name"]: {c["lr"]: c for c in r["cells"]} for r in table}
    a = {lr: score(by_name[claim.a][lr]) for lr in claim.judged}
    b = {lr: score(by_name[claim.b][lr]) for lr in claim.judged}
    diffs = {lr: round(a[lr] - b[lr], 2) for lr in claim.judged
             if a[lr] is not None and b[lr] is not None}
    return {"key": claim.key, "title": claim.title, "paper": claim.paper, "kind": claim.kind,
            "note": claim.note, "recipe": claim.recipe, "seed": claim.seed, "a": claim.a,
            "b": claim.b, "lrs": list(claim.lrs), "judged": list(claim.judged), "table": table,
            "diffs": {str(lr): d for lr, d in diffs.items()},
            "verdict": lr_verdict(list(diffs.values()), 2 * len(claim.judged),
                                  sum(x is not None for x in (*a.values(), *b.values())))}


def score(cell: dict) -> Optional[float]:
    """What a table cell counts as in the verdict: its best val top-1; chance for a run that
    diverged before its first validation; None while it is pending."""
    if cell["best_val_top1"] is not None:
        return cell["best_val_top1"]
    return CHANCE if cell["status"].startswith("diverged") else None


def lr_verdict(diffs: list[float], needed: int, finished: int) -> str:
    """``diffs``: a's score minus b's at each learning rate judged where both cells are finished;
    ``needed`` cells judged, ``finished`` of them done."""
    if finished < needed:
        return f"pending: {finished} of {needed} cells"
    if all(d > MARGIN for d in diffs):
        return "holds at one seed"
    if all(d < 0 for d in diffs):
        return "does not hold at one seed"
    return "not resolved at one seed"


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from zoo.cli import cpu_name, git_commit

    unknown = [k for k in args.claims if k not in {c.key for c in CLAIMS}]
    if unknown:
        print(f"error: unknown claim {', '.join(map(repr, unknown))}; claims: "
              f"{', '.join(c.key for c in CLAIMS)}", file=sys.stderr)
        return 2
    # the cells' trainer runs in the project root: paths from here must hold there too
    args.data, args.runs = str(Path(args.data).resolve()), str(Path(args.runs).resolve())
    todo = cells([c for c in CLAIMS if c.key in args.claims], args.seeds)[: args.first]
    # --claims picks what to train; every claim is written, from its finished cells
    others = [cell for cell in cells(CLAIMS, args.seeds) if cell not in todo]
    reading = argparse.Namespace(**{**vars(args), "train": False})
    try:
        rows, invocations = run_grid(todo, lambda cell: cell_row(*cell, args), 1, Path(args.runs),
                                     describe)
        rows += [cell_row(*cell, reading) for cell in others]
    except GridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rows = sorted((r for r in rows if r is not None), key=lambda r: (r["arm"], r["seed"]))
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    with open(results / "claims.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    written = {
        "command": "python eval/claims.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "commit": git_commit(), "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "seeds": args.seeds, "margin": MARGIN, "verdicts": VERDICTS,
        "claims": [summary(c, rows, args.seeds) if isinstance(c, Claim) else lr_summary(c, rows)
                   for c in CLAIMS]}
    (results / "claims.json").write_text(json.dumps(written, indent=2) + "\n")
    for c in written["claims"]:
        figures = (f"a - b by lr: {c['diffs']}" if "table" in c
                   else f"n={c['n']}, difference {c['diff']}, 95% {c['ci']}")
        print(f"{c['key']}: {c['verdict']} ({figures})")
    print(f"wrote {results / 'claims.csv'} and claims.json ({len(rows)} cells finished of "
          f"{len(todo) + len(others)}); now python tools/update_docs.py")
    return 0


def cells(claims: list, seeds: int) -> list[tuple[Arm, int]]:
    """The claims' cells in training order: seed by seed across arms, so every claim gets its
    first pair before any gets its third; then the learning-rate tables, one seed each."""
    arms = list({a.name: a for c in claims if isinstance(c, Claim) for a in (c.a, c.b)}.values())
    return ([(a, s) for s in range(seeds) for a in arms]
            + [(a, c.seed) for c in claims if isinstance(c, LrClaim) for a in c.arms()])


def describe(row: Optional[dict]) -> str:
    if row is None:
        return "not finished (--no-train)"
    return " ".join(f"{k} {row.get(k)}" for k in ("arm", "seed", "val_top1", "test_top1", "source"))


if __name__ == "__main__":
    sys.exit(main())
