"""Regenerate the README's generated sections from the registry (never edit them by hand).

    python tools/update_readme.py          # rewrite README.md
    python tools/update_readme.py --check  # exit 1 if README.md is out of date
"""

import argparse
import re
import sys
from pathlib import Path

import torch

import zoo

README = Path(__file__).resolve().parents[1] / "README.md"


def naming_section() -> str:
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


# Published full-schedule figures for the same model on the same dataset (METHODS.md), shown
# beside ours and labelled as such.
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


def _val_images(recipe: dict):
    from train.recipes import RECIPES

    known = RECIPES.get(recipe.get("name"))
    return known.val_images if known else None


def weights_section() -> str:
    from zoo.weights import load_manifest

    entries = load_manifest(zoo.weights.MANIFEST_PATH)["weights"]
    norms = zoo.list_norms()
    # Same architecture together, the longest recipe first, methods in the registry's order.
    entries.sort(key=lambda e: (e["architecture"], -(e["recipe"]["epochs"] or 0),
                                norms.index(e["norm"])))
    lines = ["| weights | test top-1 % | top-5 % | measured on | val top-1 % | epochs | minutes "
             "| train img/s | paper's full-schedule figure | params | GMACs | file | recipe |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        m, r = e["metrics"], e["recipe"]
        lines.append(
            f"| `{e['name']}`{' (default)' if e['default'] else ''} | "
            f"{_with_error(m['top1'], m['num_images'])} | {m['top5']} | {m['split']} | "
            f"{_with_error(r['val_top1'], _val_images(r))} | {_known(r['epochs'])} | "
            f"{_known(r['minutes'])} | {_known(r['img_per_s'])} | "
            f"{PAPER_FIGURES.get((e['model'], e['dataset']), '—')} | "
            f"{e['num_params'] / 1e6:.2f} M | {e['gmacs']} | {e['size_bytes'] / 2**20:.1f} MiB"
            f"{', shipped' if e['shipped'] else ''} | `{r['command']}` at {r['commit'][:10]} |")
    if len(lines) == 2:
        return "No weights are published yet."
    notes = [f"- `{e['name']}`: {e['notes']}" for e in entries if e["notes"]]
    return "\n".join(lines + ([""] + notes if notes else []))


def performance_section() -> str:
    """From the committed CPU run of eval/benchmark.py (eval/results/benchmark-cpu.*)."""
    sys.path.insert(0, str(README.parent / "eval"))
    import benchmark

    results = README.parent / "eval" / "results"
    if not (results / "benchmark-cpu.csv").is_file():
        return "No benchmark run is committed yet: `python eval/benchmark.py`."
    rows, header = benchmark.read(results, "cpu")
    return benchmark.readme_section(rows, header, "eval/results/benchmark-cpu.md")


def batch_sweep_section() -> str:
    """From the committed run of eval/batch_sweep.py (eval/results/batch-sweep.*)."""
    sys.path.insert(0, str(README.parent / "eval"))
    import batch_sweep

    results = README.parent / "eval" / "results"
    if not (results / "batch-sweep.csv").is_file():
        return "No sweep is committed yet: `python eval/batch_sweep.py --data ../shared/data/cifar10`."
    return batch_sweep.readme_section(*batch_sweep.read(results))


SECTIONS = {"naming": naming_section, "weights": weights_section, "performance": performance_section,
            "batch-sweep": batch_sweep_section}


def render(text: str) -> str:
    for key, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- {key}:start -->\n).*?(<!-- {key}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md lacks the <!-- {key}:start/end --> markers")
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, exit 1 if out of date")
    args = parser.parse_args()
    current = README.read_text()
    fresh = render(current)
    if args.check:
        if fresh != current:
            print("README.md is out of date: run python tools/update_readme.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
