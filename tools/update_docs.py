"""Regenerate every generated block of the README and the docs pages (never edit them by hand).

    python tools/update_docs.py          # rewrite the blocks that are out of date
    python tools/update_docs.py --check  # write nothing; exit 1 naming each stale block

A generated block is the text between ``<!-- KEY:start -->`` and ``<!-- KEY:end -->`` in
README.md, CHANGELOG.md or a page of docs/; KEY says what fills it (BLOCKS below), rendered by
zoo.report from the registry, the weights manifest and the committed results in eval/results/.
A block may sit in any of those pages: links inside it are written relative to its page.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Callable

from zoo import report

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- ([a-z0-9-]+):start -->\n(.*?)<!-- \1:end -->", re.S)


def _link(page: Path, target: Path) -> str:
    """``target`` as a link from ``page``."""
    return Path(os.path.relpath(target, page.parent)).as_posix()


def _manifest_entries() -> list[dict]:
    from zoo.weights import MANIFEST_PATH, load_manifest

    return load_manifest(MANIFEST_PATH)["weights"]


def _val_images() -> dict:
    """Each recipe's count of held-out images, which its val figures are measured on."""
    from train.recipes import RECIPES

    return {name: recipe.val_images for name, recipe in RECIPES.items()}


def naming(root: Path, page: Path) -> str:
    return report.naming_tables()


def weights(root: Path, page: Path) -> str:
    return report.weights_table(_manifest_entries(), _val_images())


def default_weights(root: Path, page: Path) -> str:
    return report.default_weights_table(_manifest_entries(), _val_images())


def performance(root: Path, page: Path) -> str:
    """From the committed CPU run of eval/benchmark.py (eval/results/benchmark-cpu.*)."""
    results = root / "eval" / "results"
    if not (results / "benchmark-cpu.csv").is_file():
        return "No benchmark run is committed yet: `python eval/benchmark.py`."
    rows, header = report.read_benchmark(results, "cpu")
    full = results / "benchmark-cpu.md"
    return report.performance_section(rows, header, _link(page, full), full.relative_to(root).as_posix())


def batch_sweep(root: Path, page: Path) -> str:
    """From the committed run of eval/batch_sweep.py (eval/results/batch-sweep.*)."""
    results = root / "eval" / "results"
    if not (results / "batch-sweep.csv").is_file():
        return "No sweep is committed yet: `python eval/batch_sweep.py --data ../shared/data/cifar10`."
    return report.batch_sweep_section(*report.read_batch_sweep(results), results=_link(page, results),
                                      label=results.relative_to(root).as_posix())


def claims(root: Path, page: Path) -> str:
    """From the committed run of eval/claims.py (eval/results/claims/)."""
    results = root / "eval" / "results" / "claims"
    if not (results / "claims.json").is_file():
        return "No claims run is committed yet: `python eval/claims.py --data ../shared/data/cifar10`."
    memory = []
    if (root / "eval" / "results" / "benchmark-cpu.csv").is_file():
        memory = [r for r in report.read_benchmark(root / "eval" / "results", "cpu")[0]
                  if r["suite"] == "step" and r["unit"] == "MiB" and r["name"].endswith("_mimic")]
    return report.claims_section(json.loads((results / "claims.json").read_text()), memory,
                                 results=_link(page, results),
                                 label=results.relative_to(root).as_posix())


def deploy(root: Path, page: Path) -> str:
    """From the committed runs of eval/deploy_table.py (eval/results/deploy/deploy.json) and of
    the benchmark's deploy suite (eval/results/deploy/benchmark-cpu.*)."""
    results = root / "eval" / "results" / "deploy"
    if not (results / "deploy.json").is_file():
        return "No deploy table is committed yet: `python eval/deploy_table.py`."
    speed = report.read_benchmark(results) if (results / "benchmark-cpu.csv").is_file() else None
    return report.deploy_section(*report.read_deploy(results), _link(page, results / "deploy.json"),
                                 speed)


def claims_measurement(script: str, section: Callable[..., str]) -> Callable[[Path, Path], str]:
    """The block of a committed eval/SCRIPT.py run under eval/results/claims/ (SCRIPT.json,
    with - for _), rendered by ``section(rows, header, link)``."""
    def block(root: Path, page: Path) -> str:
        found = root / "eval" / "results" / "claims" / f"{script.replace('_', '-')}.json"
        if not found.is_file():
            return f"Not measured yet: `python eval/{script}.py --data ../shared/data/cifar10`."
        written = json.loads(found.read_text())
        return section(written["rows"], written["header"], _link(page, found))

    return block


BLOCKS: dict[str, Callable[[Path, Path], str]] = {
    "naming": naming, "weights": weights, "default-weights": default_weights,
    "performance": performance, "batch-sweep": batch_sweep, "claims": claims, "deploy": deploy,
    "half-statistics": claims_measurement("half_statistics", report.half_statistics_section),
    "linf-gap": claims_measurement("linf_gap", report.linf_gap_section),
}


def pages(root: Path) -> list[Path]:
    """The pages that may hold generated blocks."""
    return [p for p in [root / "README.md", root / "CHANGELOG.md", *sorted((root / "docs").glob("*.md"))]
            if p.is_file()]


def render(root: Path) -> tuple[dict[Path, str], list[str], list[str]]:
    """Every page as it should be, the stale blocks ("page: key") and the problems found."""
    fresh, stale, problems, found, made = {}, [], [], set(), {}
    for page in pages(root):
        text = page.read_text()
        name = page.relative_to(root).as_posix()
        for key in re.findall(r"<!-- ([a-z0-9-]+):start -->", text):
            if key not in BLOCKS:
                problems.append(f"{name}: unknown block <!-- {key}:start --> (known: {', '.join(BLOCKS)})")
            elif not re.search(rf"<!-- {key}:start -->\n.*?<!-- {key}:end -->", text, re.S):
                problems.append(f"{name}: <!-- {key}:start --> has no <!-- {key}:end --> after it")

        def fill(m: re.Match) -> str:
            key = m.group(1)
            if key not in BLOCKS:
                return m.group(0)
            found.add(key)
            if (key, page.parent) not in made:  # the same block in the same folder is the same text
                made[key, page.parent] = BLOCKS[key](root, page) + "\n"
            if made[key, page.parent] != m.group(2):
                stale.append(f"{name}: {key}")
            return f"<!-- {key}:start -->\n{made[key, page.parent]}<!-- {key}:end -->"

        fresh[page] = MARKER.sub(fill, text)
    problems += [f"no page has the <!-- {key}:start --> ... <!-- {key}:end --> block"
                 for key in BLOCKS if key not in found]
    return fresh, stale, problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 naming each block that is out of date")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the checkout whose README.md, CHANGELOG.md, docs/ and eval/results/ "
                             "to use (default: this one)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    fresh, stale, problems = render(root)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 2
    if args.check:
        for block in stale:
            print(f"out of date: {block}", file=sys.stderr)
        if stale:
            print("run python tools/update_docs.py", file=sys.stderr)
            return 1
        return 0
    for page, text in fresh.items():
        if text != page.read_text():
            page.write_text(text)
    print("\n".join(f"updated {block}" for block in stale) or "every generated block is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
