"""What each NormZoo method costs, measured side by side with its PyTorch baseline in one run.

    python eval/benchmark.py                         # every suite -> eval/results/benchmark-cpu.{csv,md}
    python eval/benchmark.py --suites norms,step --repeats 5
    python eval/benchmark.py --device cuda           # CUDA events and max_memory_allocated
    python eval/benchmark.py --tiny --out /tmp/bench # one shape, one repeat: that it runs

Suites:
  norms      each norm layer's forward+backward (train) and forward (eval) against
             BatchNorm2d / GroupNorm (InstanceNorm, LayerNorm for ILM-IN/LN) on the same
             tensors, at ResNet-20 and ResNet-50 shapes, fp32 and bf16 autocast; the layers
             with compiled training kernels also as "(fused)" (zoo.fuse_norms, what the
             trainer runs; compiled in the warm-up); also the papers' op sequences
             ("original", zoo/reference.py)
  step       one SGD training step per method, ResNet-20 (CIFAR, batch 128) and ResNet-50 /
             VGG-16 (224x224, small batch): time and memory, each configuration in a fresh
             process; memory is the peak RSS during the steps (VmHWM, reset before them) less
             the RSS before them; on a GPU max_memory_allocated less memory_allocated
  inference  img/s per method in eval mode
  train      the trainer's own loop (train/loop.py: batch-augmented CIFAR-10, bf16 autocast,
             SGD) on ResNet-20 at batch 128, each method in a fresh process, in both memory
             formats (the method's default marked): median step after 10 warm-up steps,
             img/s against resnet20_bn's default; and a seed-style loop (PIL images through
             per-image torchvision transforms in a 2-worker DataLoader, fp32) for scale
  hub        a fresh process: torch.hub.load + weights + first logits, against torchvision's
             builder loading the same weights from a local file
  pipeline   eval/imagenet_val.py's data pipeline against a plain ImageFolder + DataLoader
             loop, on full-size JPEGs (../shared/data/imagenet/train-sample)
  deploy     each shipped checkpoint as eval/deploy_table.py deploys it (bf16, fp16, folded,
             int8: torchao's x86 PT2E, timed as torch.compile lowers it to int8 kernels)
             against its fp32 eager model, img/s at batch 256 (CPU; the [deploy] extra)

Every ratio is the median over repeats of a per-repeat ratio (the two sides run back to
back), so it holds on a noisy machine; the spread is half the range of the repeats.
Markdown comes from zoo.report; ``python tools/update_docs.py`` turns the CPU results into
docs/performance.md's generated section.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import zoo
from deploy_table import compile_int8, shipped_checkpoints, variants  # eval/: what the table scores
from zoo import report
from zoo.cli import machine
from zoo.data import SHARED_DATA
from zoo.norms.common import group_count
from zoo.reference import OriginalILMGroupNorm, OriginalTopKBatchNorm2d
# The goals, each norm's baseline and the dtypes: one list, which the performance page reports.
from zoo.report import (DTYPES, FLOOR_SUITES, INFERENCE_TARGETS, NORM_BASELINE, NORM_TARGETS,
                        STEP_TARGETS, TRAIN_TARGET)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "eval" / "results"
IMAGENET_SAMPLE = SHARED_DATA / "imagenet" / "train-sample"
CIFAR10 = SHARED_DATA / "cifar10"
FIELDS = ("suite", "name", "config", "dtype", "baseline", "value", "unit", "spread_pct",
          "ratio", "ratio_spread_pct", "target", "meets")

NORM_SHAPES = {
    "resnet20": [(128, 16, 32, 32), (128, 32, 16, 16), (128, 64, 8, 8)],
    "resnet50": [(16, 256, 56, 56), (16, 512, 28, 28), (16, 1024, 14, 14), (16, 2048, 7, 7)],
}
ORIGINALS = {
    "ilm": lambda c: OriginalILMGroupNorm(c, group_count(c, 32, 2)),
    "l1bn": lambda c: OriginalTopKBatchNorm2d(c),
    "linfbn": lambda c: OriginalTopKBatchNorm2d(c, k=1),
}

METHODS = ("bn", "gn", "ilm", "mimic", "l1bn", "linfbn", "bwn")
STEP_CONFIGS = [("resnet20", 128, 32), ("resnet50", 8, 224), ("vgg16", 4, 224)]
INFERENCE_CONFIGS = [("resnet20", 256, 32), ("resnet50", 16, 224)]
DEPLOY_BATCH = 256


# ---------------------------------------------------------------------------------------------
# Timing

class Clock:
    """Seconds of a block of calls: perf_counter on CPU, CUDA events on a GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], object], number: int) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(number):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3 / number
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - start) / number


def interleaved(fns: dict[str, Callable[[], object]], clock: Clock, repeats: int,
                min_block_s: float) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` times, the functions taking turns."""
    number = {}
    for name, fn in fns.items():  # warm up, then size each block to about min_block_s
        clock(fn, 2)
        number[name] = max(1, int(min_block_s / max(clock(fn, 1), 1e-6)))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(clock(fn, number[name]))
    return times


def _spread_pct(values: list[float]) -> float:
    return round(50 * (max(values) - min(values)) / statistics.median(values), 1)


def row(suite, name, config, dtype, values, unit, baseline="", base_values=None,
        target=None) -> dict:
    """One result: the median of ``values`` and, given a baseline, the median per-repeat ratio."""
    r = {"suite": suite, "name": name, "config": config, "dtype": dtype, "baseline": baseline,
         "value": round(statistics.median(values), 4), "unit": unit,
         "spread_pct": _spread_pct(values), "ratio": "", "ratio_spread_pct": "", "target": "",
         "meets": ""}
    if base_values:
        ratios = [v / b for v, b in zip(values, base_values)]
        r["ratio"], r["ratio_spread_pct"] = round(statistics.median(ratios), 3), _spread_pct(ratios)
        if target is not None:
            r["target"] = target
            met = r["ratio"] >= target if suite in FLOOR_SUITES else r["ratio"] <= target
            r["meets"] = "yes" if met else "no"
    return r


def autocast(dtype: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


# ---------------------------------------------------------------------------------------------
# Suites

def per_layer_norms() -> list[str]:
    """Registered norms with a layer of their own to time (not baselines, not structural)."""
    return [n for n in zoo.list_norms()
            if n not in ("bn", "gn", "in", "ln", "none")
            and not zoo.get_norm(n).structural_parts() and not zoo.get_norm(n).conv_transform]


def norm_layers(norms: list[str]) -> dict[str, tuple[Callable, str]]:
    """Row name -> (factory taking C, baseline row name)."""
    layers = {}
    for norm in norms:
        base = NORM_BASELINE.get(norm, "bn")
        layers.setdefault(base, (lambda c, b=base: zoo.create_norm(b, c), base))
        layers[norm] = (lambda c, n=norm: zoo.create_norm(n, c), base)
        if zoo.fuse_norms(zoo.create_norm(norm, 32)):
            layers[f"{norm} (fused)"] = (lambda c, n=norm: _fused(zoo.create_norm(n, c)), base)
        if norm in ORIGINALS:
            layers[f"{norm} (original)"] = (ORIGINALS[norm], base)
    if "gn" in layers:  # GroupNorm's own cost against BatchNorm2d, for scale
        layers.setdefault("bn", (lambda c: zoo.create_norm("bn", c), "bn"))
        layers["gn"] = (layers["gn"][0], "bn")
    return layers


def _fused(layer: torch.nn.Module) -> torch.nn.Module:
    zoo.fuse_norms(layer)
    return layer


def suite_norms(args, device, clock) -> list[dict]:
    norms = args.norms or per_layer_norms()
    shapes = [(8, 32, 8, 8)] if args.tiny else [s for k in ("resnet20", "resnet50") for s in NORM_SHAPES[k]]
    rows = []
    for shape in shapes:
        c = shape[1]
        torch.compiler.reset()  # torch compiles a function for at most 8 shapes
        layers = {name: make(c).to(device) for name, (make, _) in norm_layers(norms).items()}
        for dtype in DTYPES:
            x = torch.randn(shape, device=device)
            x = x.to(torch.bfloat16) if dtype == "bf16" else x
            grad = torch.randn_like(x)
            x.requires_grad_(True)

            def train_step(layer=None):
                with autocast(dtype, device):
                    out = layer(x)
                out.backward(grad)
                x.grad = None
                layer.zero_grad(set_to_none=True)

            def eval_step(layer=None):
                with torch.no_grad(), autocast(dtype, device):
                    layer(x)

            for mode, step in (("fwd+bwd", train_step), ("fwd (eval)", eval_step)):
                for layer in layers.values():
                    layer.train(mode == "fwd+bwd")
                fns = {name: (lambda s=step, m=layer: s(m)) for name, layer in layers.items()}
                times = interleaved(fns, clock, args.repeats, args.min_block_s)
                for name, (_, base) in norm_layers(norms).items():
                    if name == base:
                        continue
                    target = (NORM_TARGETS.get(name.removesuffix(" (fused)"))
                              if mode == "fwd+bwd" else None)
                    rows.append(row("norms", name, f"{mode} {tuple(shape)}", dtype,
                                    [t * 1e3 for t in times[name]], "ms", base,
                                    [t * 1e3 for t in times[base]], target))
                    _progress(rows[-1])
    return rows


def step_worker(spec: dict) -> dict:
    """Run in a fresh process: time SGD steps of one model; memory above the pre-step level."""
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    model = zoo.create_model(spec["model"], num_classes=spec["num_classes"]).to(device).train()
    memory_format = torch.channels_last if zoo.prefers_channels_last(model) else torch.contiguous_format
    model.to(memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    if zoo.get_norm(model.config["norm"]).name == "mimic":
        zoo.attach_weight_mean(model, opt)
    size, batch = spec["size"], spec["batch"]
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, spec["num_classes"], (batch,), device=device)

    def step():
        with autocast(spec["dtype"], device):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        # Importing torch peaks higher than a small model's step, so the process's high-water
        # mark is reset here (Linux: clear_refs 5 resets VmHWM) and read after the steps.
        Path("/proc/self/clear_refs").write_text("5")
        before = _proc_status_bytes("VmRSS")
    clock = Clock(device)
    seconds = [clock(step, 1) for _ in range(spec["warmup"] + spec["steps"])][spec["warmup"]:]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _proc_status_bytes("VmHWM")
    return {"seconds": seconds, "memory_bytes": peak - before, "peak_bytes": peak}


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field}: peak memory needs Linux on CPU")


def suite_step(args, device, clock) -> list[dict]:
    configs = [("resnet20", 16, 32)] if args.tiny else STEP_CONFIGS
    methods = args.methods
    rows = []
    for arch, batch, size in configs:
        for dtype in DTYPES:
            results = {m: [] for m in methods}
            for _ in range(args.step_repeats):  # methods take turns within each repeat
                for method in methods:
                    spec = {"model": f"{arch}_{method}", "batch": batch, "size": size, "dtype": dtype,
                            "num_classes": 10 if size == 32 else 1000, "device": str(device),
                            "warmup": 1, "steps": 1 if args.tiny else args.step_steps}
                    results[method].append(_worker_in_fresh_process("--worker-step", spec))
            config = f"{arch} batch {batch} at {size}x{size}"
            base = "bn" if "bn" in methods else None
            for method in methods:
                ms = [statistics.median(r["seconds"]) * 1e3 for r in results[method]]
                mib = [r["memory_bytes"] / 2**20 for r in results[method]]
                for values, unit in ((ms, "ms"), (mib, "MiB")):
                    base_values = None
                    if base and method != base:
                        base_values = ([statistics.median(r["seconds"]) * 1e3 for r in results[base]]
                                       if unit == "ms" else [r["memory_bytes"] / 2**20 for r in results[base]])
                    rows.append(row("step", f"{arch}_{method}", config, dtype, values, unit,
                                    base if base_values else "", base_values,
                                    STEP_TARGETS.get((method, unit))))
                    _progress(rows[-1])
    return rows


def suite_inference(args, device, clock) -> list[dict]:
    configs = [("resnet20", 16, 32)] if args.tiny else INFERENCE_CONFIGS
    rows = []
    for arch, batch, size in configs:
        torch.manual_seed(0)
        models = {m: zoo.create_model(f"{arch}_{m}", num_classes=10 if size == 32 else 1000)
                  .to(device).eval() for m in args.methods}
        x = torch.randn(batch, 3, size, size, device=device)
        inputs = {}
        for m, model in models.items():  # each in its norm's memory format
            channels_last = zoo.prefers_channels_last(model, training=False)
            model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            inputs[m] = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        for dtype in DTYPES:
            def infer(m):
                with torch.inference_mode(), autocast(dtype, device):
                    models[m](inputs[m])

            times = interleaved({m: (lambda mm=m: infer(mm)) for m in models},
                                clock, args.repeats, args.min_block_s)
            for m in models:
                base = NORM_BASELINE.get(m, "bn")
                img_s = [batch / t for t in times[m]]
                base_values = [batch / t for t in times[base]] if base in models and m != base else None
                rows.append(row("inference", f"{arch}_{m}", f"{arch} batch {batch} at {size}x{size}",
                                dtype, img_s, "img/s", base if base_values else "", base_values,
                                INFERENCE_TARGETS.get(m) if base_values else None))
                _progress(rows[-1])
    return rows


def train_worker(spec: dict) -> dict:
    """Run in a fresh process: steps of the trainer's own loop (train.loop.Run.train_epoch)."""
    from train.loop import Run, parse_args

    steps = spec["warmup"] + spec["steps"]
    with tempfile.TemporaryDirectory() as out:
        argv = ["--model", spec["model"], "--data", spec["data"], "--out", out, "--epochs", "1",
                "--batch-size", str(spec["batch"]), "--device", spec["device"],
                # the recipe holds 5,000 images out for validation; the rest make the steps
                "--limit-train", str(5000 + spec["batch"] * steps),
                "--channels-last" if spec["channels_last"] else "--no-channels-last"]
        run = Run(parse_args(argv))
        run.train_epoch()
    # The recipe's method adjustments may turn autocast off (bwn trains in float32).
    return {"seconds": run.step_seconds[spec["warmup"]:], "amp": run.recipe.amp}


class PilCifar(torch.utils.data.Dataset):
    """What a seed project does: one PIL image at a time through torchvision transforms."""

    def __init__(self, images, labels):
        from torchvision import transforms as T

        from zoo.data import CIFAR_MEAN, CIFAR_STD

        self.images, self.labels = images.permute(0, 2, 3, 1).numpy(), labels
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                                    T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def seed_loop_worker(spec: dict) -> dict:
    """Run in a fresh process: a seed-style loop (PIL + DataLoader, fp32), same model and step."""
    from zoo.data import load_cifar

    steps = spec["warmup"] + spec["steps"]
    train = load_cifar(spec["data"], "train")
    n = spec["batch"] * steps
    loader = torch.utils.data.DataLoader(PilCifar(train.images[:n], train.labels[:n]),
                                         batch_size=spec["batch"], shuffle=True, num_workers=2,
                                         drop_last=True)
    torch.manual_seed(0)
    model = zoo.create_model(spec["model"]).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    seconds, tick = [], time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seconds.append(time.perf_counter() - tick)
        tick = time.perf_counter()
    return {"seconds": seconds[spec["warmup"]:]}


def _worker_in_fresh_process(flag: str, spec: dict) -> dict:
    result = subprocess.run([sys.executable, __file__, flag, json.dumps(spec)],
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"{flag[2:]} {spec} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def suite_train(args, device, clock) -> list[dict]:
    if not args.cifar10.is_dir():
        raise FileNotFoundError(f"{args.cifar10} does not exist; pass --cifar10 DIR (CIFAR-10, "
                                f"python layout) or leave out the train suite")
    batch, warmup, steps = (16, 1, 2) if args.tiny else (128, 10, args.train_steps)
    base_spec = {"data": str(args.cifar10), "batch": batch, "warmup": warmup, "steps": steps,
                 "device": str(device)}
    methods = args.methods
    results = {}  # (method, channels_last) -> [img/s per repeat]
    dtypes = {}  # method -> the dtype its trainer defaults run in
    for _ in range(args.train_repeats):  # methods take turns within each repeat
        for method in methods:
            for channels_last in (True, False):
                spec = {**base_spec, "model": f"resnet20_{method}", "channels_last": channels_last}
                r = _worker_in_fresh_process("--worker-train", spec)
                results.setdefault((method, channels_last), []).append(
                    batch / statistics.median(r["seconds"]))
                dtypes[method] = "bf16" if r["amp"] else "fp32"
        r = _worker_in_fresh_process("--worker-seed-loop", {**base_spec, "model": "resnet20_bn"})
        results.setdefault(("seed-style loop", None), []).append(batch / statistics.median(r["seconds"]))
    default = {m: zoo.get_norm(m).channels_last for m in methods}
    base = results.get(("bn", default.get("bn"))) if "bn" in methods else None
    rows = []
    for (method, channels_last), img_s in results.items():
        if method == "seed-style loop":
            name, dtype = "seed-style loop (resnet20_bn)", "fp32"
            config = f"seed-style loop, batch {batch}, PIL + DataLoader, contiguous"
        else:
            name, dtype = f"resnet20_{method}", dtypes[method]
            layout = "channels_last" if channels_last else "contiguous"
            default_mark = " (default)" if channels_last == default[method] else ""
            config = f"trainer, batch {batch}, {layout}{default_mark}"
        is_base = method == "bn" and channels_last == default.get("bn")
        target = TRAIN_TARGET if method in default and channels_last == default[method] else None
        rows.append(row("train", name, config, dtype, img_s, "img/s",
                        "" if is_base or not base else "bn", None if is_base else base,
                        None if is_base or not base else target))
        _progress(rows[-1])
    return rows


# What a user runs, each in a fresh interpreter timed from its launch to the first logits.
HUB_LOADS = {
    "zoo": "model = torch.hub.load({root!r}, {model!r}, source='local', weights={path!r})",
    "torchvision": ("import torchvision\nfrom safetensors.torch import load_file\n"
                    "model = torchvision.models.{arch}()\nmodel.load_state_dict(load_file({path!r}))"),
}


def _seconds_to_first_logits(side: str, **spec) -> float:
    code = (f"import time, torch\n{HUB_LOADS[side].format(**spec)}\n"
            f"with torch.inference_mode():\n    model.eval()(torch.randn(1, 3, 224, 224))\n")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=600, cwd=tempfile.gettempdir())
    if result.returncode != 0:
        raise RuntimeError(f"{side} load failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def suite_hub(args, device, clock) -> list[dict]:
    arch = "resnet18" if args.tiny else "resnet50"
    times = {"zoo": [], "torchvision": []}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        path = zoo.save_checkpoint(zoo.create_model(f"{arch}_bn"), Path(tmp) / f"{arch}_bn.safetensors",
                                   tag="bench")
        for _ in range(args.repeats):
            for side in times:
                times[side].append(_seconds_to_first_logits(side, root=str(ROOT), model=f"{arch}_bn",
                                                            arch=arch, path=str(path)))
    config = f"fresh process to first logits, {arch} weights from a local safetensors file"
    rows = [row("hub", "torch.hub.load (zoo)", config, "fp32", times["zoo"], "s", "torchvision",
                times["torchvision"]),
            row("hub", "torchvision builder", config, "fp32", times["torchvision"], "s")]
    for r in rows:
        _progress(r)
    return rows


def suite_pipeline(args, device, clock) -> list[dict]:
    from torchvision import datasets
    from torchvision import transforms as T

    from zoo.evaluate import ImageNetVal, imagenet_loader
    from zoo.preprocessing import default_preprocessing, eval_transforms

    if not args.imagenet_sample.is_dir():
        raise FileNotFoundError(f"{args.imagenet_sample} does not exist; pass --imagenet-sample DIR "
                                f"(an ImageNet <wnid>/*.JPEG tree) or leave out the pipeline suite")
    with torch.device("meta"):
        prep = default_preprocessing(zoo.create_model("resnet18_bn"))
    ours = ImageNetVal(args.imagenet_sample, eval_transforms(prep), prep["crop"])
    plain = datasets.ImageFolder(str(args.imagenet_sample), T.Compose([
        T.Resize(prep["resize"]), T.CenterCrop(prep["crop"]), T.ToTensor(),
        T.Normalize(prep["mean"], prep["std"])]))
    if args.tiny:
        ours.samples, plain.samples = ours.samples[:8], plain.samples[:8]
    workers, batch = args.workers, 32

    def drain(loader_fn):
        for _ in loader_fn():
            pass

    loaders = {
        "imagenet_val.py pipeline": lambda: imagenet_loader(ours, batch, workers),
        "ImageFolder + DataLoader": lambda: torch.utils.data.DataLoader(plain, batch_size=batch,
                                                                        num_workers=workers),
    }
    times = interleaved({k: (lambda f=f: drain(f)) for k, f in loaders.items()}, Clock(torch.device("cpu")),
                        args.repeats, 0.0)
    n = len(ours)
    config = f"{n} full-size JPEGs, resize {prep['resize']} + crop {prep['crop']}, batch {batch}, {workers} workers"
    base = "ImageFolder + DataLoader"
    rows = [row("pipeline", name, config, "fp32", [n / t for t in times[name]], "img/s",
                base if name != base else "", [n / t for t in times[base]] if name != base else None)
            for name in loaders]
    for r in rows:
        _progress(r)
    return rows


def suite_deploy(args, device, clock) -> list[dict]:
    if device.type != "cpu":
        raise RuntimeError("the deploy suite times CPU inference (torchao's x86 int8): use --device cpu")
    batch = 16 if args.tiny else DEPLOY_BATCH
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32)
    rows = []
    for name in args.checkpoints:
        made = {v: m for v, m in variants(name, [x[:8]]).items() if isinstance(m, torch.nn.Module)}
        if "int8" in made:
            made["int8"] = compile_int8(made["int8"], x)

        def infer(model):
            with torch.no_grad():
                model(x)

        times = interleaved({v: (lambda m=m: infer(m)) for v, m in made.items()}, clock,
                            args.repeats, args.min_block_s)
        base = [batch / t for t in times["fp32"]]
        for variant in made:
            how = "torch.compile int8 kernels" if variant == "int8" else "eager"
            rows.append(row("deploy", name, f"batch {batch} at 32x32, {how}", variant,
                            [batch / t for t in times[variant]], "img/s",
                            *(("fp32", base) if variant != "fp32" else ())))
            _progress(rows[-1])
    return rows


# ---------------------------------------------------------------------------------------------
# Output

def _progress(r: dict) -> None:
    ratio = f"  {r['ratio']}x {r['baseline']}" if r["ratio"] != "" else ""
    print(f"  {r['suite']:9} {r['name']:28} {r['config']:42} {r['dtype']:4} "
          f"{r['value']:>10} {r['unit']}{ratio}", file=sys.stderr, flush=True)


def write(rows: list[dict], header: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = f"benchmark-{header['device']}"
    csv_path, md_path, meta_path = out / f"{stem}.csv", out / f"{stem}.md", out / f"{stem}.json"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    meta_path.write_text(json.dumps(header, indent=2) + "\n")
    md_path.write_text(report.benchmark_markdown(rows, header, SUITES))
    return csv_path, md_path


RUNNERS = {"norms": suite_norms, "step": suite_step, "inference": suite_inference,
           "train": suite_train, "hub": suite_hub, "pipeline": suite_pipeline,
           "deploy": suite_deploy}
WORKERS = {"--worker-step": step_worker, "--worker-train": train_worker,
           "--worker-seed-loop": seed_loop_worker}
SUITES = tuple(RUNNERS)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suites", default=",".join(SUITES), help="comma-separated, of: %(default)s")
    p.add_argument("--norms", help="norm layers for the norms suite (default: every per-layer norm)")
    p.add_argument("--methods", default=",".join(METHODS), help="for step/inference (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--step-repeats", type=int, default=2, help="fresh processes per step config")
    p.add_argument("--step-steps", type=int, default=3, help="timed steps per step process (after 1 warm-up)")
    p.add_argument("--min-block-s", type=float, default=0.05, help="seconds per timed block")
    p.add_argument("--train-steps", type=int, default=60, help="timed trainer steps per process "
                   "(after 10 warm-up steps)")
    p.add_argument("--train-repeats", type=int, default=1, help="fresh processes per method and "
                   "memory format in the train suite")
    p.add_argument("--cifar10", type=Path, default=CIFAR10, help="CIFAR-10 for the train suite")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the pipeline suite")
    p.add_argument("--imagenet-sample", type=Path, default=IMAGENET_SAMPLE)
    p.add_argument("--checkpoints", help="shipped CIFAR checkpoints for the deploy suite "
                   "(default: every DEFAULT one)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for benchmark-<device>.csv/.md/.json")
    p.add_argument("--tiny", action="store_true", help="one shape, one repeat: checks that it runs")
    for flag in WORKERS:
        p.add_argument(flag, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for flag, worker in WORKERS.items():
        spec = getattr(args, flag[2:].replace("-", "_"))
        if spec:
            print(json.dumps(worker(json.loads(spec))))
            return 0

    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.norms = [n.strip() for n in args.norms.split(",")] if args.norms else None
    problems = [f"unknown suite {s!r} (of {', '.join(SUITES)})" for s in suites if s not in SUITES]
    problems += [f"{n!r} is not a per-layer norm (of {', '.join(per_layer_norms())})"
                 for n in args.norms or [] if n not in per_layer_norms()]
    problems += [f"unknown method {m!r} (of {', '.join(zoo.list_norms())})"
                 for m in args.methods if m not in zoo.list_norms()]
    args.checkpoints, unshipped = shipped_checkpoints(args.checkpoints)
    problems += unshipped
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        problems.append("--device cuda but torch sees no GPU")
    if problems:
        p.error("; ".join(problems))
    if args.tiny:
        args.repeats, args.step_repeats, args.train_repeats, args.min_block_s = 1, 1, 1, 0.0
    device = torch.device(args.device)
    header = {"date": datetime.date.today().isoformat(), "machine": machine(device),
              "device": device.type, "torch": torch.__version__, "repeats": args.repeats,
              "step_repeats": args.step_repeats, "tiny": args.tiny,
              "command": " ".join(["python eval/benchmark.py", *(sys.argv[1:] if argv is None else argv)])}
    clock = Clock(device)
    rows = []
    for suite in suites:
        print(f"{suite} ...", file=sys.stderr, flush=True)
        try:
            rows += RUNNERS[suite](args, device, clock)
        except (FileNotFoundError, RuntimeError) as e:
            print(f"error: {suite}: {e}", file=sys.stderr)
            return 2
    csv_path, md_path = write(rows, header, args.out)
    print(report.benchmark_markdown(rows, header, SUITES))
    print(f"wrote {csv_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
