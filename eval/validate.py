"""Validate NormZoo checkpoints on ImageNet or CIFAR, and gate on the recorded figure.

    python eval/imagenet_val.py --model resnet50_ilm --checkpoint ilm.safetensors --data DIR
    python eval/imagenet_val.py --model 'resnet*' --weights DEFAULT --data DIR
    python eval/cifar_val.py --model 'resnet20_*' --weights DEFAULT --data ../shared/data/cifar10
    python eval/cifar_val.py --model 'resnet20_*' --weights DEFAULT --download   # into the cache

Each checkpoint is compared with the figure recorded for it (its manifest entry, or a
bare file's own metadata): more than --tolerance points below it on the same split exits
with status 1. Under ``torchrun --nproc_per_node=N`` every process scores its own shard.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import torch
from torchvision.transforms import InterpolationMode

import zoo
from zoo import cli
from zoo.data import load_cifar
from zoo.evaluate import ImageNetVal, cifar_batches, evaluate, imagenet_loader, split_name
from zoo.progress import progress_bar
from zoo.preprocessing import default_preprocessing, eval_transforms
from zoo.weights import WeightsError, cache_dir, read_metadata

COLUMNS = ("model", "weights", "top1", "top1_err", "top5", "top5_err", "param_count", "img_size",
           "crop_pct", "interpolation", "images", "img_per_sec", "split", "recorded_top1",
           "diff", "status")


def parse_args(argv, dataset: str):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a model name, a glob such as 'resnet20_*', or 'all' "
                                   "(with --checkpoint: taken from the file when left out)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", help="'DEFAULT', a tag or 'model.tag' from the manifest")
    src.add_argument("--checkpoint", help="a NormZoo .safetensors file or Hub-ready folder")
    p.add_argument("--data", required=dataset == "imagenet",
                   help="ImageNet val folder (tree of wnid folders, or flat with --ground-truth)"
                   if dataset == "imagenet" else "CIFAR folder (python layout)")
    if dataset == "cifar":
        cli.add_download_argument(p)
    if dataset == "imagenet":
        p.add_argument("--ground-truth", help="for a flat folder: lines 'ILSVRC2012_val_00000001.JPEG 65'")
        p.add_argument("--strict", action="store_true", help="an unreadable image is fatal")
        p.add_argument("-j", "--workers", type=int, default=min(4, os.cpu_count() or 1))
    positive = cli.positive_int("must be a positive number of images, got {text}")
    p.add_argument("-b", "--batch-size", type=positive, default=256 if dataset == "cifar" else 64)
    p.add_argument("--limit", type=positive, help="evaluate only the first N images")
    p.add_argument("--amp", action="store_true", help="autocast: bfloat16 on CPU, float16 on CUDA")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="memory format (default: the norm's measured preference, "
                        "zoo.prefers_channels_last)")
    p.add_argument("--device", type=_device, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--img-size", type=int, help="override the weights' crop size")
    p.add_argument("--resize", type=int, help="override the weights' resize")
    p.add_argument("--interpolation", choices=[m.value for m in InterpolationMode],
                   help="override the weights' interpolation")
    p.add_argument("--mean", type=float, nargs=3, help="override the weights' mean")
    p.add_argument("--std", type=float, nargs=3, help="override the weights' std")
    p.add_argument("--tolerance", type=float, default=0.25,
                   help="allowed top-1 drop below the recorded figure, in points (default: %(default)s)")
    p.add_argument("--results-file", help="write the results table here")
    p.add_argument("--results-format", choices=("csv", "json"), default="csv")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:1, "
                                         f"...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: CUDA is not available here; use --device cpu")
    return text


def jobs(args, dataset: str) -> tuple[list[tuple[str, object]], int]:
    """The (model name, weights) pairs to evaluate and how many matched models had no weights."""
    family = "cifar" if dataset == "cifar" else "imagenet"
    if args.checkpoint:
        saved = read_metadata(args.checkpoint).get("model")
        name = args.model or saved
        if name is None:
            raise ValueError(f"{args.checkpoint} does not say which model it holds; pass --model")
        if any(c in name for c in "*?[") or name == "all":
            raise ValueError("--checkpoint holds one model: pass its name, not a glob")
        return [(name, args.checkpoint)], 0
    if not args.model:
        raise ValueError("pass --model (a name, glob or 'all') with --weights, or --checkpoint")
    if not args.weights:
        raise ValueError(f"pass --weights DEFAULT (or a tag) to evaluate published weights, or "
                         f"--checkpoint FILE for your own; an untrained {args.model} scores chance")
    if any(c in args.model for c in "*?[") or args.model == "all":
        names = [n for n in zoo.list_models(None if args.model == "all" else args.model)
                 if zoo.get_arch(zoo.parse_model_name(n)[0]).dataset == family]
        if not names:
            raise ValueError(f"no {family} model matches {args.model!r}")
        published = {n.split(".")[0] for n in zoo.list_weights()}
        with_weights = [n for n in names if n in published]
        return [(n, args.weights) for n in with_weights], len(names) - len(with_weights)
    arch, norm = zoo.parse_model_name(args.model)
    if zoo.get_arch(arch).dataset != family:
        other = "eval/imagenet_val.py" if family == "cifar" else "eval/cifar_val.py"
        raise ValueError(f"{args.model} is not {'a CIFAR' if family == 'cifar' else 'an ImageNet'} "
                         f"model; use {other}")
    published = {n.split(".")[0] for n in zoo.list_weights()}
    if f"{arch}_{norm}" not in published and not Path(args.weights).exists():
        raise ValueError(f"{arch}_{norm} has no published weights; evaluate your own file with "
                         f"--checkpoint FILE")
    return [(f"{arch}_{norm}", args.weights)], 0


def preprocessing_for(model, args) -> tuple[dict, list[str]]:
    prep = dict(model.config.get("preprocessing") or default_preprocessing(model))
    overridden = []
    for flag, key in (("img_size", "crop"), ("resize", "resize"), ("interpolation", "interpolation"),
                      ("mean", "mean"), ("std", "std")):
        value = getattr(args, flag)
        if value is not None and value != prep.get(key):
            overridden.append(f"{key} {prep.get(key)} -> {value}")
            prep[key] = list(value) if isinstance(value, list) else value
    if args.img_size:
        prep["input_size"] = [3, args.img_size, args.img_size]
    return prep, overridden


def recorded_metrics(model) -> dict:
    weights = model.config["weights"]
    if Path(weights).exists():
        return read_metadata(weights).get("metrics") or {}
    return zoo.get_weight(weights).entry["metrics"]


def run_one(name, weights, args, dataset, cifar, say) -> dict:
    model = zoo.create_model(name, weights=weights, progress=not args.no_progress)
    prep, overridden = preprocessing_for(model, args)
    if overridden:
        say(f"{name}: preprocessing overridden by flags: {'; '.join(overridden)}")
    transform = eval_transforms(prep)
    if dataset == "cifar":
        images, labels = cifar.images, cifar.labels
        if args.limit:
            images, labels = images[: args.limit], labels[: args.limit]
        num_classes, total = len(cifar.classes), len(labels)
        batches = cifar_batches(images, labels, transform, args.batch_size)
        data_name = "cifar10" if num_classes == 10 else "cifar100"
    else:
        data = ImageNetVal(args.data, transform, prep["crop"], ground_truth=args.ground_truth,
                           strict=args.strict)
        if args.limit:
            data.samples = data.samples[: args.limit]
        num_classes, total = 1000, len(data)
        batches = imagenet_loader(data, args.batch_size, args.workers)
        data_name = "imagenet-1k"
    if model.config["num_classes"] != num_classes:
        raise ValueError(f"{name} with {model.config['weights']} has {model.config['num_classes']} "
                         f"classes but the data in {args.data} has {num_classes}")
    with progress_bar(total, name, enabled=not args.no_progress and cli.rank() == 0) as bar:
        result = evaluate(model, batches, device=args.device, amp=args.amp,
                          channels_last=(zoo.prefers_channels_last(model, training=False)
                                         if args.channels_last is None else args.channels_last),
                          progress=bar.update)
    split = split_name(data_name, result.num_images)  # the images scored: unreadable ones are not
    if result.unreadable:
        paths = [str(data.samples[i][0]) for i in result.unreadable]
        say(f"{name}: {len(paths)} unreadable image(s), not scored: {', '.join(paths[:10])}")
    recorded = recorded_metrics(model)
    row = {
        "model": name, "weights": model.config["weights"],
        "top1": round(result.top1, 3), "top1_err": round(100 - result.top1, 3),
        "top5": round(result.top5, 3), "top5_err": round(100 - result.top5, 3),
        "param_count": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "img_size": prep["crop"],
        "crop_pct": round(prep["crop"] / prep["resize"], 3) if prep.get("resize") else 1.0,
        "interpolation": prep["interpolation"], "images": result.num_images,
        "img_per_sec": round(result.img_per_s, 1), "split": split,
        "recorded_top1": recorded.get("top1"), "diff": None, "status": "no recorded figure",
    }
    if recorded.get("top1") is not None:
        if recorded.get("split") != split or result.unreadable:
            row["status"] = f"not comparable (recorded on {recorded.get('split')})"
        else:
            row["diff"] = round(result.top1 - recorded["top1"], 3)
            row["status"] = ("REGRESSION" if row["diff"] < -args.tolerance else "ok")
    return row


def main(argv=None, dataset: str = "imagenet") -> int:
    args = parse_args(argv, dataset)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
        if args.device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"

    rank = cli.rank()  # kept: the process group is destroyed before the table is printed

    def say(text: str, err: bool = False) -> None:
        # Errors from any rank: a rank that fails alone must say why (torchrun then stops the rest).
        if rank == 0 or err:
            prefix = f"[rank {rank}] " if err and torch.distributed.is_initialized() else ""
            print(prefix + text, file=sys.stderr if err else sys.stdout, flush=True)

    rows = []
    try:
        if args.results_file:
            check_writable(Path(args.results_file))
        todo, skipped = jobs(args, dataset)
        if skipped:
            say(f"skipped {skipped} matching model(s) without published weights "
                f"(evaluate your own file with --checkpoint)")
        if not todo:
            raise ValueError(f"no model matching {args.model!r} has published weights; "
                             f"evaluate your own file with --checkpoint")
        cifar = None
        if dataset == "cifar":
            if args.download:
                args.data = cli.downloaded_cifar(args.data, args.download, cache_dir())
            if not args.data:
                raise ValueError("pass --data, a CIFAR folder (python layout), or --download to "
                                 "fetch CIFAR-10 (--download cifar100: CIFAR-100)")
            cifar = load_cifar(args.data, "test")
        for name, weights in todo:
            rows.append(run_one(name, weights, args, dataset, cifar, say))
            r = rows[-1]
            say(f"{r['model']} ({r['weights']}): top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  on "
                f"{r['split']}, {r['img_per_sec']} img/s; recorded {r['recorded_top1']}, "
                f"diff {r['diff']}: {r['status']}")
    except (ValueError, FileNotFoundError, WeightsError) as e:
        say(f"error: {_one_line(e)}", err=True)
        return 2
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    say("\n| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for r in rows:
        say("| " + " | ".join("" if r[c] is None else str(r[c]) for c in COLUMNS) + " |")
    regressions = [r for r in rows if r["status"] == "REGRESSION"]
    for r in regressions:
        say(f"REGRESSION: {r['model']} scored {-r['diff']:.2f} points below its recorded "
            f"{r['recorded_top1']}% (tolerance {args.tolerance})", err=True)
    if args.results_file and rows and rank == 0:
        try:
            write_results(rows, args.results_file, args.results_format)
        except OSError as e:  # checked before evaluating, yet it can still fail (disk full)
            say(f"error: could not write {args.results_file} ({e}); the results are the table "
                f"above", err=True)
            return 2
    return 1 if regressions else 0


def _one_line(e: Exception) -> str:
    """``e``'s message; for one re-raised from a DataLoader worker, the original message
    rather than the worker's traceback."""
    text = str(e)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def check_writable(path: Path) -> None:
    """Refuse a results file that could not be written before evaluating, not after."""
    if path.is_dir():
        raise ValueError(f"--results-file {path} is a folder; name a file in it")
    if not path.parent.is_dir():
        raise ValueError(f"--results-file {path}: {path.parent} is not an existing folder")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise ValueError(f"--results-file {path} is not writable")


def write_results(rows, path, fmt) -> None:
    path = Path(path)
    if fmt == "json":
        path.write_text(json.dumps(rows, indent=2) + "\n")
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    sys.exit(main())
