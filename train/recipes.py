"""Training recipes as data: named presets, plus what each method needs on top.

A recipe is printed in full when a run starts and stored in the run folder, so a
run can be repeated from its folder alone. ``for_model`` applies the method's own
requirements (METHODS.md) to any preset and says which it applied.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    dataset: str                 # "cifar10", "cifar100", "imagenet", or "cifar": whichever --data holds
    epochs: int
    batch_size: int              # global: split between torchrun processes
    lr: float
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False  # weight decay on 1-d parameters (norm gains, biases, scales)
    schedule: str = "cosine"     # "cosine" (to 0) or "step" (x gamma at milestones)
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0   # linear warm-up per iteration from lr * warmup_start
    warmup_start: float = 0.1
    label_smoothing: float = 0.0
    augment: str = "crop_flip"   # CIFAR: "crop_flip" | "crop_flip_rotate"; ImageNet: "rrc_flip"
    val_images: int = 5000       # held out from the end of the training set (0: none)
    amp: bool = False            # bf16 autocast on CPU, fp16 (with a GradScaler) on CUDA
    zero_init_residual: bool = False
    source: str = ""             # where the recipe comes from

    def describe(self) -> str:
        return "\n".join(f"  {f.name:<20} {getattr(self, f.name)}" for f in dataclasses.fields(self))


RECIPES = {r.name: r for r in (
    Recipe("cifar10_cpu", "cifar10", epochs=20, batch_size=128, lr=0.1, nesterov=True,
           weight_decay=5e-4, schedule="cosine", warmup_epochs=1, amp=True,
           source="NormZoo's shared CPU recipe: 20 epochs, about 25 minutes of ResNet-20 on 2 cores"),
    Recipe("cifar10_cpu_long", "cifar10", epochs=55, batch_size=128, lr=0.1, nesterov=True,
           weight_decay=5e-4, schedule="cosine", warmup_epochs=1, amp=True,
           source="cifar10_cpu over 55 epochs, a third of He et al.'s 164: the cosine schedule "
                  "and 5e-4 decay on weights that let short CIFAR schedules reach the step "
                  "schedule's accuracy (Loshchilov & Hutter 2017); tuned on resnet20_bn's "
                  "validation figure"),
    Recipe("he2016_cifar", "cifar10", epochs=164, batch_size=128, lr=0.1, weight_decay=1e-4,
           schedule="step", milestones=(82, 123), decay_norm_and_bias=True, val_images=0,
           source="He et al. 2016, CIFAR-10 ResNets: 64k iterations, /10 at 32k and 48k"),
    Recipe("ilm_cifar", "cifar10", epochs=350, batch_size=32, lr=0.1, weight_decay=5e-4,
           schedule="step", milestones=(150, 250), decay_norm_and_bias=True, val_images=0,
           source="ILM-Norm paper, CIFAR (METHODS.md)"),
    Recipe("mimic_cifar100", "cifar100", epochs=150, batch_size=256, lr=0.1, weight_decay=5e-4,
           schedule="step", milestones=(80, 110, 135), warmup_epochs=2,
           augment="crop_flip_rotate", decay_norm_and_bias=True, val_images=0,
           source="MimicNorm paper, CIFAR-100 (METHODS.md)"),
    Recipe("mimic_lr_cifar10", "cifar10", epochs=10, batch_size=256, lr=0.1, weight_decay=5e-4,
           schedule="step", warmup_epochs=2, augment="crop_flip_rotate", decay_norm_and_bias=True,
           source="MimicNorm paper's Table 2 (best accuracy in the first 10 epochs, by lr) on "
                  "CIFAR-10: the first 10 epochs of mimic_cifar100 (batch 256, 2-epoch warm-up, "
                  "crop_flip_rotate, weight decay 5e-4 on norm parameters and biases too), with no "
                  "lr step (its first is at epoch 80); 5,000 images held out, validated every epoch"),
    Recipe("norm_matters_cifar", "cifar10", epochs=164, batch_size=128, lr=0.1, weight_decay=5e-4,
           schedule="step", milestones=(81, 122), zero_init_residual=True, val_images=0,
           source="Norm Matters paper, CIFAR (METHODS.md): /10 at 81 and 122, each block's last "
                  "gain starting at 0 as in the authors' code. The other recipes start every gain "
                  "at 1 for these norms too: at equal init L1 BN matches BN, and the zero-init "
                  "gains cost it accuracy (docs/claims.md)"),
    Recipe("imagenet_resnet", "imagenet", epochs=90, batch_size=256, lr=0.1, weight_decay=1e-4,
           schedule="step", milestones=(30, 60, 80), augment="rrc_flip", val_images=0,
           decay_norm_and_bias=True, source="Goyal et al. / torchvision ResNet recipe"),
    Recipe("mimic_imagenet", "imagenet", epochs=90, batch_size=256, lr=0.1, weight_decay=1e-4,
           schedule="step", milestones=(30, 60, 85), warmup_epochs=2, augment="rrc_flip",
           decay_norm_and_bias=True, val_images=0, source="MimicNorm paper, ImageNet (METHODS.md)"),
    Recipe("norm_matters_imagenet", "imagenet", epochs=90, batch_size=256, lr=0.1, weight_decay=1e-4,
           schedule="step", milestones=(30, 60, 80), augment="rrc_flip", zero_init_residual=True,
           val_images=0, source="Norm Matters paper, ImageNet (METHODS.md; bwn: lr 0.2, wd 0)"),
    Recipe("finetune", "cifar", epochs=10, batch_size=64, lr=0.01, nesterov=True,
           weight_decay=5e-4, schedule="cosine", warmup_epochs=0.5, val_images=0, amp=True,
           source="fine-tuning from --weights/--checkpoint on any CIFAR (10 or 100 classes): "
                  "lr 0.01, short warm-up; with --freeze-backbone a linear probe"),
    Recipe("test_tiny", "cifar10", epochs=2, batch_size=32, lr=0.05, weight_decay=5e-4,
           schedule="cosine", warmup_epochs=0.5, val_images=64,
           source="a few steps for tests and smoke runs (use with --limit-train)"),
)}

def has_gain(norm: str) -> bool:
    """Whether the norm's layer has a learnable gain (``weight``) for zero_init_residual to
    zero; mean-only BN, ILM-Norm, MimicNorm and empty slots have none."""
    from torch import nn

    from zoo import get_norm

    return isinstance(getattr(get_norm(norm).layer(16), "weight", None), nn.Parameter)


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}") from None


def for_model(recipe: Recipe, norm: str, keep: tuple[str, ...] = ()) -> tuple[Recipe, list[str]]:
    """The recipe with the method's own requirements applied, and what was changed and why.
    Fields in ``keep`` are set on the command line, which wins over the method's choice."""
    changes: dict = {}
    why: list[str] = []
    if norm == "mimic" and recipe.warmup_epochs < 2 and "warmup_epochs" not in keep:
        changes["warmup_epochs"] = 2.0
        why.append("mimic: 2-epoch warm-up (the author's advice for stability); the weight-mean "
                   "projection is attached to the optimizer")
    if norm == "bwn" and recipe.weight_decay:
        changes["weight_decay"] = 0.0
        why.append("bwn: no weight decay (bounded weight norm fixes each filter's norm)")
    if norm == "bwn" and recipe.amp and "amp" not in keep:
        changes["amp"] = False
        why.append("bwn: float32, no autocast (mean-only BN bounds no activation scale; under "
                   "bf16 cifar10_cpu_long diverged in epoch 7 from a gradient spike that the "
                   "same state does not have in float32)")
    if not has_gain(norm) and recipe.zero_init_residual and "zero_init_residual" not in keep:
        changes["zero_init_residual"] = False
        why.append(f"{norm}: zero_init_residual=False (its blocks end without a norm gain to "
                   f"start at 0)")
    return (dataclasses.replace(recipe, **changes) if changes else recipe), why


def override(recipe: Recipe, **values: Optional[object]) -> Recipe:
    """The recipe with command-line overrides (None means: keep). Values that cannot train
    are refused, named by their flag: epochs and batch size below 1, an lr that is not a
    finite number above 0, a warm-up that is negative or longer than the run."""
    changes = {k: v for k, v in values.items() if v is not None}
    for name, value in changes.items():
        flag = "--" + name.replace("_", "-")
        if name in ("epochs", "batch_size") and not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{flag} must be a whole number of at least 1, not {value!r}")
        if name == "lr" and not (isinstance(value, (int, float)) and 0 < value < math.inf):
            raise ValueError(f"{flag} must be a finite number above 0, not {value!r}")
    epochs = changes.get("epochs", recipe.epochs)
    warmup = changes.get("warmup_epochs")
    if warmup is not None and not (isinstance(warmup, (int, float)) and 0 <= warmup <= epochs):
        raise ValueError(f"--warmup-epochs must be a number from 0 to the run's {epochs} epochs, "
                         f"not {warmup!r}")
    return dataclasses.replace(recipe, **changes) if changes else recipe
