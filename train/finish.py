"""The end of a run: the final figure on the test split, then curves.png from the log,
model.safetensors (the weights with the run's recipe and metrics), the Hub-ready folder hub/
and, with ``--register``, the manifest entry."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Optional

import torch

import zoo
from zoo.cli import rank
from zoo.data import load_cifar
from zoo.evaluate import EvalResult, cifar_batches, evaluate, split_name
from zoo.progress import progress_bar
from zoo.preprocessing import default_preprocessing, eval_transforms

from .cli import say
from .recipes import Recipe
from .run_folder import RunFolder


def score(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, what: str,
          device: torch.device, **options) -> EvalResult:
    """``model`` on CIFAR images with its weights' evaluation preprocessing, a progress bar
    named ``what`` on rank 0; ``options`` go to zoo.evaluate.evaluate."""
    transform = eval_transforms(default_preprocessing(model))
    with progress_bar(len(labels), what, enabled=rank() == 0) as bar:
        return evaluate(model, cifar_batches(images, labels, transform, 500), device=device,
                        progress=bar.update, **options)


def test_figure(model: torch.nn.Module, data: str, dataset: str, device: torch.device) -> dict:
    """The run's published figure: top-1 and top-5 on the CIFAR test split in ``data``."""
    test = load_cifar(data, "test")
    result = score(model, test.images, test.labels, "test", device)
    metrics = {"top1": round(result.top1, 2), "top5": round(result.top5, 2),
               "split": split_name(dataset, result.num_images), "num_images": result.num_images}
    say(f"test: top-1 {result.top1:.2f}%, top-5 {result.top5:.2f}% on {metrics['split']}")
    return metrics


def export(model: torch.nn.Module, folder: RunFolder, recipe: Recipe, dataset: str,
           metrics: Optional[dict], *, tag: Optional[str], register: bool) -> None:
    """model.safetensors; with a test figure, the Hub folder hub/; with ``register``, the
    manifest entry (shipped with the package if under 20 MB)."""
    from zoo.hub import build_folder, local_weights
    from zoo.hub import register as add_to_manifest

    record = folder.record()
    path = zoo.save_checkpoint(model.cpu().float(), folder.path / "model.safetensors",
                               tag=tag or dataset, dataset=dataset, metrics=metrics,
                               recipe={"command": record["command"], "commit": record["commit"],
                                       **run_summary(folder.path, recipe)})
    hub = folder.path / "hub"
    if metrics is not None:
        build_folder(local_weights(path), hub, progress=False)
        say(f"wrote {path} and the Hub folder {hub}")
    if register:
        entry = add_to_manifest(path, ship=path.stat().st_size < 20_000_000)
        say(f"registered {entry['name']} in the manifest"
            + (f" (shipped as zoo/{entry['shipped']})" if entry["shipped"] else ""))


def plot_curves(folder: RunFolder, title: str) -> None:
    """curves.png: the training loss, and the training and validation top-1, by epoch."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed: no curves.png (pip install matplotlib)")
        return
    rows = folder.log()
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.legend()
    ax_acc.plot(epochs, [r["train_acc"] for r in rows], label="train top-1 (augmented)")
    if "val_acc" in rows[0]:
        ax_acc.plot(epochs, [r["val_acc"] for r in rows], label="val top-1")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("%")
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(folder.path / "curves.png", dpi=100)
    plt.close(fig)


def run_summary(out: Path, recipe: Recipe) -> dict:
    """How the run went, from its log: what a published checkpoint's recipe records besides
    the command (zoo.weights.RECIPE_KEYS)."""
    rows = RunFolder(Path(out)).log()
    val = rows[-1].get("val_acc") if rows else None
    return {"name": recipe.name, "epochs": recipe.epochs,
            "val_top1": None if val is None else round(val, 2),
            # The median epoch: a run that shared the machine for a while keeps its typical speed.
            "img_per_s": round(statistics.median(r["img_per_s"] for r in rows)) if rows else None,
            "minutes": round(sum(r["seconds"] for r in rows) / 60, 1)}
