"""Every markdown table NormZoo writes from its registry and results, in one place.

The measuring scripts write numbers (``eval/benchmark.py``: CSV and JSON; ``eval/batch_sweep.py``:
CSV, JSON and a plot) and call this module for their markdown; ``tools/update_docs.py`` calls it
for the generated blocks of the README and the docs pages. Nothing here measures or trains.

- :func:`naming_tables`: the norms and architectures of the registry (docs/model-api.md).
- :func:`weights_table`, :func:`default_weights_table`: the published checkpoints
  (docs/weights.md, and the README's compact table of the DEFAULT weights).
- :func:`benchmark_markdown`: a benchmark run in full (``benchmark-<device>.md``).
- :func:`performance_section`: a benchmark run as the goals and one small table per suite
  (docs/performance.md).
- :func:`batch_sweep_section`: a batch-size sweep's tables (docs/batch-size.md).
- :func:`claims_section`: the papers' claims against our seeds (docs/claims.md).
- :func:`deploy_section`: each shipped checkpoint folded, cast and quantized (docs/deploy.md).
- :func:`half_statistics_section`: the batch norms' statistics in float16 on real activations
  (docs/claims.md).
- :func:`linf_gap_section`: L-infinity batch norm's gap to batch norm, checked against our
  running statistics, eps and fused kernels (docs/claims.md).

Links inside a block are given by the caller, relative to the page the block goes in.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

# ---------------------------------------------------------------------------------------------
# The benchmark's goals. eval/benchmark.py marks each measured row against them; the
# performance section reports one line per goal, a goal the run did not measure included.

DTYPES = ("fp32", "bf16")
NORM_BASELINE = {"ilm": "gn", "ilm_in": "in", "ilm_ln": "ln"}  # every other norm: "bn"
# The goals on this CPU. Ceilings: norm layers forward+backward against their baseline,
# MimicNorm's training step. Floors: trainer img/s against resnet20_bn's, eval-mode img/s.
NORM_TARGETS = {"ilm": 1.3, "l1bn": 1.2, "linfbn": 1.2, "topkbn": 1.2, "lpbn": 1.2, "meanbn": 1.0}
STEP_TARGETS = {("mimic", "ms"): 0.9, ("mimic", "MiB"): 0.8}
TRAIN_TARGET = 0.8
INFERENCE_TARGETS = {"ilm": 0.9, "l1bn": 0.95, "linfbn": 0.95, "bwn": 0.95}
FLOOR_SUITES = ("train", "inference")  # their targets are minimum ratios


# ---------------------------------------------------------------------------------------------
# The registry

def naming_tables() -> str:
    """Every registered norm (what fills a norm slot, the paper) and architecture."""
    import torch

    import zoo

    lines = ["| norm | method | each norm slot holds | paper |", "|---|---|---|---|"]
    for name in zoo.list_norms():
        spec = zoo.get_norm(name)
        lines.append(f"| `{name}` | {spec.title} | `{spec.rule}` | {spec.paper or ''} |")
    lines += ["", "| arch | architecture | for | classes | input (min) | params with `bn` |",
              "|---|---|---|---|---|---|"]
    for name in zoo.list_archs():
        arch = zoo.get_arch(name)
        with torch.device("meta"):
            params = sum(p.numel() for p in zoo.create_model(name).parameters())
        lines.append(f"| `{name}` | {arch.title} | {arch.dataset} | {arch.num_classes} | "
                     f"{arch.input_size} ({arch.min_input_size}) | {params / 1e6:.2f} M |")
    n_archs, n_norms = len(zoo.list_archs()), len(zoo.list_norms())
    lines += ["", f"{n_archs} architectures x {n_norms} norms = {n_archs * n_norms} models, "
              f"named `{{arch}}_{{norm}}`."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Published weights

# Published full-schedule figures for the same model on the same dataset (docs/methods.md),
# shown beside ours and labelled as such.
PAPER_FIGURES = {
    ("resnet20_bn", "cifar10"): "91.25 (He et al. 2016, 164 epochs, full test set; public option-A "
                                "weights: about 91.5 on test[:1000])",
}


def _known(value) -> str:
    return "" if value is None else str(value)


def _with_error(top1, num_images) -> str:
    """A top-1 figure with its binomial standard error, in points."""
    from zoo.evaluate import standard_error

    if top1 is None:
        return ""
    if not num_images:
        return str(top1)
    return f"{top1} ± {standard_error(top1, num_images):.1f}"


def _in_table_order(entries: Iterable[dict]) -> list[dict]:
    """Same architecture together, the longest recipe first, methods in the registry's order."""
    import zoo

    norms = zoo.list_norms()
    return sorted(entries, key=lambda e: (e["architecture"], -(e["recipe"]["epochs"] or 0),
                                          norms.index(e["norm"])))


def weights_table(entries: Iterable[dict], val_images: Mapping[str, int]) -> str:
    """Every manifest entry with its figures, file and recipe; then the entries' notes.

    ``val_images`` maps a recipe name to the number of held-out images its val figure is on.
    """
    entries = _in_table_order(entries)
    lines = ["| weights | test top-1 % | top-5 % | measured on | val top-1 % | epochs | minutes "
             "| train img/s | paper's full-schedule figure | params | GMACs | file | recipe |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        m, r = e["metrics"], e["recipe"]
        lines.append(
            f"| `{e['name']}`{' (default)' if e['default'] else ''} | "
            f"{_with_error(m['top1'], m['num_images'])} | {m['top5']} | {m['split']} | "
            f"{_with_error(r['val_top1'], val_images.get(r.get('name')))} | {_known(r['epochs'])} | "
            f"{_known(r['minutes'])} | {_known(r['img_per_s'])} | "
            f"{PAPER_FIGURES.get((e['model'], e['dataset']), '—')} | "
            f"{e['num_params'] / 1e6:.2f} M | {e['gmacs']} | {e['size_bytes'] / 2**20:.1f} MiB"
            f"{', shipped' if e['shipped'] else ''} | `{r['command']}` at {r['commit'][:10]} |")
    if len(lines) == 2:
        return "No weights are published yet."
    notes = [f"- `{e['name']}`: {e['notes']}" for e in entries if e["notes"]]
    return "\n".join(lines + ([""] + notes if notes else []))


def default_weights_table(entries: Iterable[dict], val_images: Mapping[str, int]) -> str:
    """The DEFAULT checkpoint of each model: its name and its test and val top-1."""
    defaults = [e for e in _in_table_order(entries) if e["default"]]
    if not defaults:
        return "No weights are published yet."
    lines = ["| model | DEFAULT weights | test top-1 % | val top-1 % |", "|---|---|---|---|"]
    for e in defaults:
        m, r = e["metrics"], e["recipe"]
        lines.append(f"| `{e['model']}` | `{e['name']}` | {_with_error(m['top1'], m['num_images'])} | "
                     f"{_with_error(r['val_top1'], val_images.get(r.get('name')))} |")
    splits = ", ".join(dict.fromkeys(e["metrics"]["split"] for e in defaults))
    return "\n".join(lines + ["", f"Test top-1 measured on {splits}; ± is one standard error."])


# ---------------------------------------------------------------------------------------------
# eval/benchmark.py

def read_benchmark(out: Path, device: str = "cpu") -> tuple[list[dict], dict]:
    """A written benchmark run: its rows (``benchmark-<device>.csv``) and header (``.json``)."""
    stem = Path(out) / f"benchmark-{device}"
    with open(stem.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads(stem.with_suffix(".json").read_text())


def benchmark_markdown(rows: list[dict], header: dict, suites: Iterable[str]) -> str:
    """The full results as markdown: one table per suite, in ``suites``' order, with the run's
    facts on top."""
    lines = [f"Measured {header['date']} on {header['machine']} ({header['device']}), torch "
             f"{header['torch']}, median of {header['repeats']} repeats; ± is half the range. "
             f"Command: `{header['command']}`", ""]
    for suite in suites:
        these = [r for r in rows if r["suite"] == suite]
        if not these:
            continue
        lines += [f"### {suite}", "", "| name | config | dtype | median | ± | vs | ratio | ± | goal |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in these:
            goal = (f"{'≥' if suite in FLOOR_SUITES else '≤'} {r['target']}x: {r['meets']}"
                    if r["target"] != "" else "")
            ratio = f"{float(r['ratio']):.2f}x" if r["ratio"] != "" else ""
            ratio_spread = f"{r['ratio_spread_pct']}%" if r["ratio"] != "" else ""
            lines.append(f"| {r['name']} | {r['config']} | {r['dtype']} | {float(r['value']):.4g} "
                         f"{r['unit']} | {r['spread_pct']}% | {r['baseline']} | {ratio} | "
                         f"{ratio_spread} | {goal} |")
        lines.append("")
    return "\n".join(lines)


def _ratios(rows, **match) -> list[float]:
    return [float(r["ratio"]) for r in rows
            if all(str(r[k]).startswith(v) for k, v in match.items()) and r["ratio"] != ""]


def _span(values: list[float]) -> str:
    if not values:
        return "not measured"
    return f"{min(values):.2f}x" if min(values) == max(values) else f"{min(values):.2f}–{max(values):.2f}x"


def _goal_line(label: str, rows: list[dict]) -> str:
    """A goals-table line: the ratio range per dtype and how many rows meet their target."""
    by_dtype = {d: [float(r["ratio"]) for r in rows if r["dtype"] == d] for d in DTYPES}
    met = sum(r["meets"] == "yes" for r in rows)
    return (f"| {label} | {_span(by_dtype['fp32'])} | {_span(by_dtype['bf16'])} | "
            f"{met} of {len(rows)} |")


def benchmark_goals(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """Every goal of the benchmark, as (label, the rows it covers): the norm layers (a fused
    kernel that was measured has a goal of its own), MimicNorm's step, the trainer, eval mode."""
    fused = {r["name"] for r in rows if r["name"].endswith(" (fused)")}
    goals = []
    for norm, target in NORM_TARGETS.items():
        for name in (norm, f"{norm} (fused)"):
            if name == norm or name in fused:
                goals.append((f"{name} forward+backward ≤ {target}x "
                              f"{'GroupNorm' if NORM_BASELINE.get(norm) == 'gn' else 'BatchNorm2d'}",
                              [r for r in rows if r["suite"] == "norms" and r["name"] == name
                               and r["config"].startswith("fwd+bwd")]))
    for (_, unit), target in STEP_TARGETS.items():
        goals.append((f"mimic training step {'time' if unit == 'ms' else 'memory'} ≤ {target}x "
                      f"its BN twin",
                      [r for r in rows if r["suite"] == "step" and r["name"].endswith("_mimic")
                       and r["unit"] == unit and r["ratio"] != ""]))
    goals.append((f"every method's ResNet-20 trainer img/s ≥ {TRAIN_TARGET}x resnet20_bn's "
                  f"(trainer defaults: each method's memory format and precision)",
                  [r for r in rows if r["suite"] == "train" and r["target"] != ""]))
    for method, target in INFERENCE_TARGETS.items():
        goals.append((f"{method} eval-mode img/s ≥ {target}x {NORM_BASELINE.get(method, 'bn')}'s",
                      [r for r in rows if r["suite"] == "inference"
                       and r["name"].endswith(f"_{method}") and r["target"] != ""]))
    return goals


def performance_section(rows: list[dict], header: dict, full_results: str,
                        label: Optional[str] = None) -> str:
    """A benchmark run as the goals, then each suite in one small table; ``full_results`` is
    the link to the run's full markdown, shown as ``label`` (default: the link)."""
    lines = [f"Measured {header['date']} on {header['machine']} ({header['device']}), torch "
             f"{header['torch']}, with `{header['command']}`: medians of {header['repeats']} "
             f"repeats ({header['step_repeats']} fresh processes per training-step config). "
             f"Ratios are against the PyTorch baseline in the same run. Every row, with its "
             f"spread: [{label or full_results}]({full_results}).", "",
             "| goal (this CPU) | fp32 | bf16 autocast | met |", "|---|---|---|---|"]
    lines += [_goal_line(label, these) for label, these in benchmark_goals(rows)]

    originals = sorted({r["name"].split(" ")[0] for r in rows if r["name"].endswith("(original)")})
    if originals:
        lines += ["", "Norm layers, forward+backward, at the ResNet-20 and ResNet-50 shapes "
                  "(range over shapes; the original is the paper's op sequence):", "",
                  "| layer | vs | NormZoo fp32 | original fp32 | NormZoo bf16 | original bf16 |",
                  "|---|---|---|---|---|---|"]
    per_layer = sorted({r["name"] for r in rows if r["suite"] == "norms" and r["ratio"] != ""
                        and not r["name"].endswith("(original)")},
                       key=lambda n: (n.split(" ")[0] not in originals, n))
    for name in per_layer:
        base = next(r["baseline"] for r in rows if r["suite"] == "norms" and r["name"] == name)
        cells = [_span(_ratios([r for r in rows if r["suite"] == "norms" and r["name"] == layer
                                and r["dtype"] == dtype], config="fwd+bwd"))
                 if any(r["name"] == layer for r in rows) else ""
                 for dtype in DTYPES for layer in (name, f"{name} (original)")]
        lines.append(f"| {name} | {base} | " + " | ".join(cells) + " |")

    step = [r for r in rows if r["suite"] == "step"]
    if step:
        configs = list(dict.fromkeys(r["config"] for r in step))
        lines += ["", "Training step (SGD, forward+backward+update), time and peak memory against "
                  "the BN twin; each configuration in a fresh process:", "",
                  "| method | " + " | ".join(f"{c.split(' ')[0]} {d} time / memory" for c in configs
                                          for d in DTYPES) + " |",
                  "|---|" + "---|" * (len(configs) * len(DTYPES))]
        methods = list(dict.fromkeys(r["name"].split("_", 1)[1] for r in step))
        for method in methods:
            cells = []
            for config in configs:
                for dtype in DTYPES:
                    pair = {r["unit"]: r for r in step if r["config"] == config and r["dtype"] == dtype
                            and r["name"].endswith(f"_{method}")}
                    if not pair:
                        cells.append("")
                    elif pair["ms"]["ratio"] == "":
                        cells.append(f"{float(pair['ms']['value']):.0f} ms / {float(pair['MiB']['value']):.0f} MiB")
                    else:
                        cells.append(f"{float(pair['ms']['ratio']):.2f}x / {float(pair['MiB']['ratio']):.2f}x")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")

    inference = [r for r in rows if r["suite"] == "inference"]
    if inference:
        configs = list(dict.fromkeys(r["config"] for r in inference))
        lines += ["", "Inference (eval mode), images per second:", "",
                  "| method | " + " | ".join(f"{c} {d}" for c in configs for d in DTYPES)
                  + " |", "|---|" + "---|" * (len(configs) * len(DTYPES))]
        for method in dict.fromkeys(r["name"].split("_", 1)[1] for r in inference):
            cells = []
            for config in configs:
                for dtype in DTYPES:
                    r = next((r for r in inference if r["config"] == config and r["dtype"] == dtype
                              and r["name"].endswith(f"_{method}")), None)
                    cells.append("" if r is None else f"{float(r['value']):.0f}"
                                 + (f" ({float(r['ratio']):.2f}x)" if r["ratio"] != "" else ""))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")

    others = [r for r in rows if r["suite"] in ("hub", "pipeline")]
    if others:
        lines += ["", "| loading | config | median | vs | ratio |", "|---|---|---|---|---|"]
        for r in others:
            ratio = f"{float(r['ratio']):.2f}x" if r["ratio"] != "" else ""
            lines.append(f"| {r['name']} | {r['config']} | {float(r['value']):.3g} {r['unit']} | "
                         f"{r['baseline']} | {ratio} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# eval/batch_sweep.py

def read_batch_sweep(results: Path) -> tuple[list[dict], dict]:
    """A written sweep: its CSV rows (numbers parsed, blanks as None) and settings."""
    results = Path(results)
    with open(results / "batch-sweep.csv", newline="") as f:
        rows = [{k: (v if k in ("method", "status") else None if v == "" else
                     float(v) if "." in v else int(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]
    return rows, json.loads((results / "batch-sweep.json").read_text())


def _sweep_table(rows: list[dict], key: str, fmt: Callable[[list[dict]], str], methods: list[str],
                 sizes: list[int]) -> list[str]:
    """Methods x batch sizes; a cell with several seeds shows their mean (and each seed)."""
    lines = ["| method | " + " | ".join(f"batch {b}" for b in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for method in methods:
        cells = []
        for b in sizes:
            values = [r for r in rows if r["method"] == method and r["batch_size"] == b
                      and r[key] is not None]
            failed = [r["status"] for r in rows if r["method"] == method and r["batch_size"] == b
                      and r["status"] != "ok"]
            cells.append("; ".join(([fmt(values)] if values else []) + failed))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _accuracy(key: str) -> Callable[[list[dict]], str]:
    def fmt(values: list[dict]) -> str:
        mean = statistics.mean(v[key] for v in values)
        se = statistics.mean(v[key + "_se"] for v in values)
        seeds = f" ({' / '.join(f'{v[key]:.1f}' for v in values)})" if len(values) > 1 else ""
        return f"{mean:.1f} ± {se:.1f}{seeds}"
    return fmt


def batch_sweep_section(rows: list[dict], settings: dict, results: str = "eval/results",
                        label: str = "eval/results") -> str:
    """A sweep's settings and its three tables (eval mode, batch statistics, speed);
    ``results`` is the link to the folder of its CSV and plot, shown as ``label``."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    sizes = sorted({r["batch_size"] for r in rows})
    with_stats = [m for m in methods if any(r["method"] == m and r["val_top1_batch_stats"] is not None
                                            for r in rows)]
    lines = [
        f"Measured with `{settings['command']}` at {settings['commit'][:10]}, on "
        f"{settings['machine']}: {settings['jobs']} cells at a time, {settings['threads_per_cell']} "
        f"thread(s) each, {settings['wall_minutes']} minutes of wall time. Every cell trains "
        f"CIFAR-10 ResNet-20 from scratch with recipe `{settings['recipe']}` on the same first "
        f"{settings['train_images']:,} training images for {settings['epochs']} epoch(s), "
        f"lr {settings['lr']}, a linear warm-up over {100 * settings['warmup_fraction']:.0f}% of "
        f"the cell: **a fixed budget of images, not converged accuracy** (the 55-epoch weights "
        f"above reach 92%). Top-1 % on the {settings['val_images']:,} held-out images, ± its "
        f"standard error; where two seeds ran, their mean and (each seed).",
        "", f"![val top-1 against batch size]({results}/batch-sweep.png)", "",
        "**Eval mode, as shipped** (running statistics for the batch norms):", ""]
    lines += _sweep_table(rows, "val_top1", _accuracy("val_top1"), methods, sizes)
    lines += ["", "**Batch statistics**: the same weights with their norms in train mode, on "
              "validation batches of the cell's batch size (full batches only). The gap to eval "
              "mode is what the running statistics cost or save at that batch:", ""]
    lines += _sweep_table(rows, "val_top1_batch_stats", _accuracy("val_top1_batch_stats"),
                          with_stats, sizes)
    lines += ["", f"**Training speed**, img/s of one cell ({settings['threads_per_cell']} thread(s), "
                  f"{settings['jobs']} cells at a time):", ""]
    lines += _sweep_table(rows, "img_per_s",
                          lambda v: f"{statistics.mean(x['img_per_s'] for x in v):.0f}", methods, sizes)
    lines += ["", f"Every row: [{label}/batch-sweep.csv]({results}/batch-sweep.csv)."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# eval/claims.py

def _arm_figure(claim: dict, side: str) -> str:
    """An arm's val mean ± std over seeds and its test mean: "91.90 ± 0.20; test 92.3 (n=3)"."""
    n, mean, std = (claim[f"{side}_val_top1_{x}"] for x in ("n", "mean", "std"))
    if not n:
        return "–"
    test = claim[f"{side}_test_top1_mean"]
    return (f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
            + (f"; test {test:.1f}" if test is not None else "") + f" (n={n})")


def _lr_cell(cell: dict) -> str:
    """A learning-rate table's cell: "45.12 (epoch 9)", "diverged in epoch 1", "pending"."""
    best = cell["best_val_top1"]
    if cell["status"].startswith("diverged"):
        when = cell["status"].split(",")[0].replace("diverged at", "diverged in")
        return when if best is None else f"{best:.2f} (epoch {cell['best_epoch']}), then {when}"
    return "pending" if best is None else f"{best:.2f} (epoch {cell['best_epoch']})"


def _lr_table(claim: dict) -> list[str]:
    """A learning-rate claim (eval/claims.py's LrClaim): models x learning rates, each cell the
    run's best val top-1 within the recipe's epochs, then the verdict."""
    lrs = claim["lrs"]
    judged = " and ".join(map(str, claim["judged"]))
    diffs = "; ".join(f"lr {lr}: {d:+.2f}" for lr, d in claim["diffs"].items())
    lines = [f"**{claim['title']}** (`{claim['key']}`). {claim['paper']}. {claim['note']} Best val "
             f"top-1 % (and its epoch) at seed {claim['seed']}; each cell is the arm "
             f"`MODEL.{claim['recipe']}.lrLR`:", "",
             "| model | MODEL | " + " | ".join(f"lr {lr}" for lr in lrs) + " |",
             "|---|---|" + "---|" * len(lrs)]
    lines += [f"| {row['label']} | `{row['name']}` | " + " | ".join(map(_lr_cell, row["cells"])) + " |"
              for row in claim["table"]]
    lines += ["", f"Verdict: **{claim['verdict']}** (`{claim['a']}` against `{claim['b']}` at lr "
              f"{judged}" + (f"; a − b: {diffs}" if diffs else "") + ")."]
    return lines


def claims_section(written: dict, memory: Iterable[dict] = (), results: str = "eval/results/claims",
                   label: str = "eval/results/claims") -> str:
    """The claims table from eval/claims.py's claims.json: each claim's arms (mean ± standard
    deviation over seeds), their paired difference with its 95% interval, and the verdict;
    each learning-rate claim's table (models x learning rates, one seed) with its verdict;
    then MimicNorm's memory claim from the benchmark's training-step rows (``memory``:
    its MiB rows for mimic models). ``results`` links the folder of the claims' CSV, shown as
    ``label``."""
    tables = [c for c in written["claims"] if "table" in c]  # eval/claims.py's LrClaims
    paired = [c for c in written["claims"] if "table" not in c]
    lines = [f"Measured with `{written['command']}` at {written['commit'][:10]}, on "
             f"{written['machine']}."]
    if paired:
        lines[0] += (
            f" CIFAR-10 ResNet-20, recipe `cifar10_cpu_long` (55 epochs, batch 128), "
            f"{written['seeds']} seeds planned per arm. Top-1 % on the 5,000 held-out validation "
            f"images, mean ± standard deviation over seeds (n); test is CIFAR-10 test[:1000]. The "
            f"difference is arm a minus arm b, seed by seed, with a 95% t interval.")
        lines += ["", "| claim | arm a | arm b | a | b | a − b, val [95%] | verdict |",
                  "|---|---|---|---|---|---|---|"]
    for c in paired:
        figures = [_arm_figure(c, side) for side in ("a", "b")]
        diff = "–" if c["diff"] is None else f"{c['diff']:+.2f}" + (
            f" [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}]" if c["ci"] else "") + f" (n={c['n']})"
        lines.append(f"| {c['title']} | `{c['a']}` | `{c['b']}` | {figures[0]} | {figures[1]} | "
                     f"{diff} | {c['verdict']} |")
    lines += ["", "Verdicts: " + "; ".join(f"*{kind}*: {rule}" for kind, rule in
                                         written["verdicts"].items()) + "."]
    if paired:
        lines += ["", "Where each claim comes from, and what differs in our setting:", ""]
        lines += [f"- **{c['title']}** (`{c['key']}`): {c['paper']}." + (f" {c['note']}" if c["note"] else "")
                  for c in paired]
    for c in tables:
        lines += ["", *_lr_table(c)]
    lines += ["", f"Every cell, with its command and commit: [{label}/claims.csv]({results}/claims.csv)."]
    memory = list(memory)
    if memory:
        lines += ["", "**MimicNorm trains with less memory than BN** (Fei et al., AAAI 2021, abstract "
                  "and Tables 1–3: about 20% less). Peak memory of one training step against the BN "
                  "twin, from the benchmark's `step` suite (`python eval/benchmark.py`, "
                  "[performance.md](performance.md)); *holds* where the ratio plus its spread stays "
                  "below 1:", "", "| model | dtype | memory vs BN | verdict |", "|---|---|---|---|"]
        for r in memory:  # read_benchmark's rows hold text
            ratio, spread = float(r["ratio"]), float(r["ratio_spread_pct"])
            verdict = "holds" if ratio * (1 + spread / 100) < 1 else "not resolved"
            lines.append(f"| {r['config']} | {r['dtype']} | {ratio:.2f}x (±{spread:.0f}%) | {verdict} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# eval/deploy_table.py

def read_deploy(results: Path) -> tuple[list[dict], dict]:
    """A written deploy table: its rows and header."""
    written = json.loads((Path(results) / "deploy.json").read_text())
    return written["rows"], written["header"]


def deploy_section(rows: list[dict], header: dict, results: str,
                   speed: Optional[tuple[list[dict], dict]] = None) -> str:
    """Each model's top-1 as deployed (val / test per variant) and, given ``speed`` (a
    benchmark run's rows and header with the deploy suite), its img/s; ``results`` is the link
    to the JSON the rows come from."""
    from zoo.evaluate import standard_error

    variants = list(dict.fromkeys(r["variant"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    cell = {(r["model"], r["variant"]): r for r in rows}

    def accuracy(r: dict) -> str:
        if r["status"] != "ok":
            return r["status"].split(":")[0].split(" (")[0]
        return f"{r['val_top1']:.2f} / {r['test_top1']:.2f}"

    lines = [f"Top-1 % on the {header['val_images']:,} held-out validation images (the last "
             f"{header['val_images']:,} CIFAR-10 training images) / on test[:{header['test_images']}]; "
             f"int8 calibrated on the first {header['calibration_images']:,} training images. "
             f"Measured with `{header['command']}` at {header['commit'][:10]} (torch "
             f"{header['torch']}, {header['date']}). At 90% top-1 a val figure's standard error is "
             f"{standard_error(90, header['val_images']):.1f} points, a test figure's "
             f"{standard_error(90, header['test_images']):.1f}.", "",
             "| model | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    lines += [f"| `{m}` | " + " | ".join(accuracy(cell[m, v]) if (m, v) in cell else "" for v in variants)
              + " |" for m in models]
    if speed:
        speed_rows, speed_header = speed
        timed = {(r["name"], r["dtype"]): r for r in speed_rows if r["suite"] == "deploy"}

        def img_s(r: dict) -> str:
            ratio = f" ({float(r['ratio']):.2f}x)" if r["ratio"] != "" else ""
            return f"{float(r['value']):.0f}{ratio}"

        batch = next(iter(timed.values()))["config"].split(" at ")[0]
        lines += ["", f"Inference img/s, {batch}, on {speed_header['machine']} (× fp32 in the same run; "
                      f"int8 through torch.compile's int8 kernels, the rest eager). Measured "
                      f"{speed_header['date']} with `{speed_header['command']}`:", "",
                  "| model | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
        lines += [f"| `{m}` | " + " | ".join(img_s(timed[m, v]) if (m, v) in timed else ""
                                             for v in variants) + " |" for m in models]
    else:
        lines += ["", "Speed is not measured yet: `python eval/benchmark.py --suites deploy --out "
                      "eval/results/deploy` on a quiet machine adds img/s at batch 256."]
    lines += ["", f"Every figure: [{results}]({results})."]
    return "\n".join(lines)


def half_statistics_section(rows: list[dict], header: dict, results: str = "half-statistics.json") -> str:
    """eval/half_statistics.py's run: per model and weights, the largest |x - mu| its batch
    norms see, and each statistic's float16 scales against float64 ones."""
    overflow_at = header["half_max"] ** 0.5  # L2's float16 squares overflow past this |x - mu|
    statistics_ = ("L2", "L1", "Linf")

    def scale(found: dict) -> str:
        if found["failed"]:
            return f"**{found['failed']:,} of {found['channels']:,} fail**"
        return f"{100 * found['max_rel_err']:.2f}%"

    lines = [f"Measured with `{header['command']}` at {header['commit'][:10]} on {header['machine']} "
             f"(torch {header['torch']}, {header['date']}): the first {header['images']:,} CIFAR-10 "
             f"training images in batches of {header['batch_size']}, training mode. Each cell is "
             f"the worst relative error of a float16 scale against float64 over every batch norm "
             f"and channel, or the count of scales that fail (infinite, NaN or 0). float16 squares overflow "
             f"past {header['half_max']:,.0f}, so L2's at |x − μ| ≥ {overflow_at:.0f}.", "",
             "| model | weights | norm layers | largest \\|x − μ\\| | L2 | L1 | L∞ |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| `{r['model']}` | {r['weights']} | {r['norm_layers']} | {r['max_dev']:.1f} | "
              + " | ".join(scale(r[s]) for s in statistics_) + " |" for r in rows]
    largest = max(r["max_dev"] for r in rows)
    failed = [s for s in statistics_ if any(r[s]["failed"] for r in rows)]
    if failed:
        lines += ["", f"float16 statistics fail here for {', '.join(failed)}."]
    else:
        lines += ["", f"No float16 scale fails: the largest deviation, {largest:.1f}, is "
                      f"{overflow_at / largest:.0f} times below where L2's squares overflow."]
    lines += ["", f"Every figure: [{results}]({results})."]
    return "\n".join(lines)


def linf_gap_section(rows: list[dict], header: dict, results: str = "linf-gap.json") -> str:
    """eval/linf_gap.py's run: per published equal-init seed of bn, l1bn and linfbn, val top-1
    with its running statistics and recalibrated, eps's effect on the scales, and the fused
    and eager kernels' gradients, in the trainer's precision, against float64."""
    tolerance = 1.5  # fused within this factor of the eager kernels' error: "adds little"

    def error(found: dict) -> str:
        fused = "–" if found["fused_off"] == "no fused kernels" else (
            "not compiled" if found["fused"] is None else f"{found['fused']:.3f}")
        return f"{fused} / {found['eager']:.3f}"

    lines = [f"Measured with `{header['command']}` at {header['commit'][:10]} on {header['machine']} "
             f"(torch {header['torch']}, {header['date']}). Val top-1 % on the "
             f"{header['val_images']:,} held-out images in float32, with the weights' running "
             f"statistics and re-estimated on {header['recalibrate_batches']} training batches of "
             f"{header['batch_size']}. eps effect: the most eps changes any channel's scale on "
             f"those batches. Gradient error: the relative error of the whole gradient, fused "
             f"kernels / eager, in the trainer's precision (bf16 autocast where the run had it) "
             f"against the eager step in float64, the largest over {header['steps']} training steps.", "",
             "| model | seed | weights | autocast | val | recalibrated | eps effect | gradient error: fused / eager |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| `{r['model']}` | {r['seed']} | `{r['weights']}` | {'bf16' if r['amp'] else 'no'} | "
              f"{r['val_top1']:.2f} | {r['val_top1_recalibrated']:.2f} | {r['eps_effect']:.0e} | "
              f"{error(r['gradient_error'])} |" for r in rows]
    val = {(r["model"].split("_")[-1], r["seed"]): r["val_top1"] for r in rows}
    gaps = [val[key] - val[("bn", key[1])] for key in val if key[0] == "linfbn" and ("bn", key[1]) in val]
    shift = max(abs(r["val_top1_recalibrated"] - r["val_top1"]) for r in rows)
    eps = max(r["eps_effect"] for r in rows)
    fused = [r["gradient_error"] for r in rows if r["gradient_error"]["fused_off"] != "no fused kernels"]
    compared = [e for e in fused if e["fused"] is not None]
    found = [f"recalibrating moves val by at most {shift:.2f} points",
             f"eps changes no scale by more than {100 * eps:.2g}%"]
    ratio = max((e["fused"] / e["eager"] for e in compared), default=None)
    if compared:
        found.append(f"the fused kernels' gradient error is at most {ratio:.2f} times the eager "
                     f"kernels' ({min(e['eager'] for e in compared):.3f} to "
                     f"{max(e['eager'] for e in compared):.3f} of the gradient)")
    lines += ["", "Across these weights " + ", ".join(found[:-1]) + " and " + found[-1] + "."]
    fused_ok = bool(fused) and len(compared) == len(fused) and ratio <= tolerance  # all compared
    if gaps:
        gap = statistics.mean(gaps)
        small = shift < abs(gap) / 2 and eps < 1e-3 and fused_ok
        lines += ["", f"L∞ BN's val gap to BN on these weights, paired by seed: {gap:+.2f} points "
                      f"(n={len(gaps)}). " + (
                          f"None of the three accounts for it (the fused kernels: within "
                          f"{tolerance:g} times the eager kernels' error)." if small else
                          "Not every check rules itself out (a check not run, or one of the "
                          "gap's size): look there first.")]
    lines += ["", f"Every figure: [{results}]({results})."]
    return "\n".join(lines)
