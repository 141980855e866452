"""Regenerate the README's generated sections from the registry (never edit them by hand).

    python tools/update_readme.py          # rewrite README.md
    python tools/update_readme.py --check  # exit 1 if README.md is out of date
"""

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo  # noqa: E402
from zoo import report  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def naming_section() -> str:
    return report.naming_tables()


def weights_section() -> str:
    from train.recipes import RECIPES
    from zoo.weights import load_manifest

    return report.weights_table(load_manifest(zoo.weights.MANIFEST_PATH)["weights"],
                                {name: r.val_images for name, r in RECIPES.items()})


def performance_section() -> str:
    """From the committed CPU run of eval/benchmark.py (eval/results/benchmark-cpu.*)."""
    results = README.parent / "eval" / "results"
    if not (results / "benchmark-cpu.csv").is_file():
        return "No benchmark run is committed yet: `python eval/benchmark.py`."
    rows, header = report.read_benchmark(results, "cpu")
    return report.performance_section(rows, header, "eval/results/benchmark-cpu.md")


def batch_sweep_section() -> str:
    """From the committed run of eval/batch_sweep.py (eval/results/batch-sweep.*)."""
    results = README.parent / "eval" / "results"
    if not (results / "batch-sweep.csv").is_file():
        return "No sweep is committed yet: `python eval/batch_sweep.py --data ../shared/data/cifar10`."
    return report.batch_sweep_section(*report.read_batch_sweep(results))


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
