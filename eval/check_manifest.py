"""Re-measure every weights_manifest.json entry: sha256, size, strict load, params, GMACs,
and accuracy against the recorded figure (same evaluation code as eval/validate.py).

    python eval/check_manifest.py                       # CIFAR entries on ../shared/data
    python eval/check_manifest.py --imagenet-data DIR   # ImageNet entries too

Exit status 1 when any file or figure disagrees with the manifest.
"""

from __future__ import annotations

import argparse
import sys

import validate  # a sibling in eval/, on sys.path when this runs as a script
from zoo.data import SHARED_DATA, load_cifar
from zoo.evaluate import ImageNetVal
from zoo.hub import check_files
from zoo.weights import WeightsError, load_manifest

SHARED_CIFAR = SHARED_DATA / "cifar10"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar-data", default=str(SHARED_CIFAR), help="default: %(default)s")
    p.add_argument("--imagenet-data", help="ImageNet val folder; ImageNet entries are skipped without it")
    p.add_argument("--tolerance", type=float, default=0.25)
    args = p.parse_args(argv)

    try:
        entries = load_manifest()["weights"]
        datasets = {"cifar" if e["dataset"].startswith("cifar") else "imagenet" for e in entries}
        # A data folder that is wrong for every entry is one mistake, not one problem per entry.
        cifar = load_cifar(args.cifar_data, "test") if "cifar" in datasets else None
        if args.imagenet_data is not None and "imagenet" in datasets:
            ImageNetVal(args.imagenet_data, None, 224)  # lists the images; decodes none
        problems = check_files()
    except (WeightsError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in problems:
        print(f"FILE: {line}")
    regressions = skipped = 0
    for e in entries:
        dataset = "cifar" if e["dataset"].startswith("cifar") else "imagenet"
        data = args.cifar_data if dataset == "cifar" else args.imagenet_data
        if data is None:
            skipped += 1
            continue
        va = validate.parse_args(["--model", e["model"], "--weights", e["name"], "--data", data,
                                  "--tolerance", str(args.tolerance), "--no-progress"], dataset)
        try:
            row = validate.run_one(e["model"], e["name"], va, dataset, cifar, print)
        except (ValueError, FileNotFoundError, WeightsError) as err:
            print(f"{e['name']}: error: {err}")
            regressions += 1
            continue
        print(f"{e['name']}: top-1 {row['top1']} on {row['split']} (recorded {row['recorded_top1']}, "
              f"diff {row['diff']}): {row['status']}")
        regressions += row["status"] == "REGRESSION"
    print(f"{len(entries)} entries: {len(problems)} file problem(s), {regressions} accuracy "
          f"problem(s), {skipped} skipped for lack of data")
    return 1 if problems or regressions else 0


if __name__ == "__main__":
    sys.exit(main())
