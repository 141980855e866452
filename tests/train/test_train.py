"""The trainer, ``python -m train``: recipes, augmentation, tiny real runs, exact resume, DDP.

Everything runs on a few hundred real CIFAR-10 images with ResNet-20 and the ``test_tiny``
recipe, on one thread per process (the trainer's results are bit-reproducible on a fixed
thread count). Run folders live under tmp_path; ``--register`` writes a temporary manifest
(``NORMZOO_MANIFEST``), never the package's.
"""

import dataclasses
import importlib
import json
import statistics
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import train.data
import train.loop
import zoo
from train.data import CifarTrainBatches, _crop_flip
from train.finish import score
from train.loop import lr_lambda, param_groups
from train.recipes import RECIPES, for_model, get_recipe, override
from zoo.data import CIFAR_MEAN, CIFAR_STD, load_cifar
from zoo.evaluate import cifar_batches, evaluate
from zoo.preprocessing import default_preprocessing, eval_transforms
from zoo.weights import read_metadata

from conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ["bn", "gn", "ilm", "mimic", "l1bn", "bwn"]
CKPT_KEYS = {"epoch", "step", "model", "optimizer", "scheduler", "scaler", "torch_rng",
             "python_rng"}

# Runs the trainer in a subprocess on one thread. NZ_TEST_SIGTERM_AT="epoch,step" sends this
# process a real SIGTERM while that (0-based) step's batch is handed out; NZ_TEST_HANG_AT
# touches OUT/hanging there and then waits to be killed; NZ_TEST_FULL_DISK_ON_RANK=R finds the
# disk full when rank R saves a checkpoint.
DRIVER = r"""
import os, signal, sys, time
import torch
torch.set_num_threads(1)
import train.data, train.loop

def at(name):
    value = os.environ.get(name)
    return tuple(map(int, value.split(","))) if value else None

term_at, hang_at = at("NZ_TEST_SIGTERM_AT"), at("NZ_TEST_HANG_AT")
original = train.data.CifarTrainBatches.epoch

def epoch(self, epoch, start_step=0):
    for step, batch in enumerate(original(self, epoch, start_step), start_step):
        if (epoch, step) == term_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if (epoch, step) == hang_at:
            out = sys.argv[sys.argv.index("--out") + 1]
            open(os.path.join(out, "hanging"), "w").close()
            while True:
                time.sleep(1)
        yield batch

train.data.CifarTrainBatches.epoch = epoch
if os.environ.get("NZ_TEST_FULL_DISK_ON_RANK") == os.environ.get("RANK", "0"):
    import train.run_folder

    def save_on_full_disk(folder, state):
        raise train.run_folder.DiskFullError(folder.path / "checkpoint.pt")
    train.run_folder.RunFolder.save_checkpoint = save_on_full_disk
sys.exit(train.loop.main(sys.argv[1:]))
"""


@pytest.fixture(autouse=True)
def temp_manifest(tmp_path, monkeypatch):
    path = tmp_path / "manifest" / "weights_manifest.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"schema_version": 1, "weights": []}))
    monkeypatch.setenv("NORMZOO_MANIFEST", str(path))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return path


@pytest.fixture(scope="module")
def cifar(data_root):
    return load_cifar(data_root / "cifar10", "train")


@pytest.fixture
def env(temp_manifest):
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "NORMZOO_MANIFEST": str(temp_manifest)}


def tiny_args(model, data_root, out, *extra):
    return ["--model", model, "--recipe", "test_tiny", "--data", str(data_root / "cifar10"),
            "--out", str(out), *map(str, extra)]


def rows(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def checkpoint(out):
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)


def normalized(images):
    x = images.float() / 255
    return (x - torch.tensor(CIFAR_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR_STD).view(3, 1, 1)


@pytest.fixture
def started():
    """Subprocesses a test starts; any still running when it ends (a failure) are killed."""
    procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: torchrun's workers too
            proc.communicate()


def start(started, args, env, **extra_env):
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, *args], cwd=REPO,
                            env={**env, **extra_env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    started.append(proc)
    return proc


def finish(proc, timeout=300):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the trainer did not finish in {timeout} s:\n{out}\n{err}")
    return proc.returncode, out, err


# ---------------------------------------------------------------------------------------------
# Recipes

def test_every_recipe_is_printable_and_named_by_its_key():
    assert "test_tiny" in RECIPES
    for name, recipe in RECIPES.items():
        assert recipe.name == name and recipe.source
        text = recipe.describe()
        lines = text.splitlines()
        assert len(lines) == len(dataclasses.fields(recipe))
        for field, line in zip(dataclasses.fields(recipe), lines):
            assert line.split()[0] == field.name and str(getattr(recipe, field.name)) in line
        assert get_recipe(name) is recipe
    with pytest.raises(ValueError, match="unknown recipe 'nope'; recipes: .*test_tiny"):
        get_recipe("nope")


def test_mimic_lr_cifar10_is_the_first_10_epochs_of_mimic_cifar100_with_val_images():
    first10, paper = RECIPES["mimic_lr_cifar10"], RECIPES["mimic_cifar100"]
    assert dataclasses.replace(first10, name=paper.name, dataset="cifar100", epochs=150,
                               milestones=paper.milestones, val_images=0,
                               source=paper.source) == paper
    assert min(paper.milestones) > first10.epochs and first10.val_images == 5000
    # no lr step in its 10 epochs: the 2-epoch warm-up, then lr (the factor) stays at 1
    factor = lr_lambda(first10, steps_per_epoch=176)
    assert [factor(s) for s in (0, 176, 352, 1759)] == pytest.approx([0.1, 0.55, 1, 1])
    for norm in ("bn", "mimic", "none"):
        assert for_model(first10, norm) == (first10, [])  # every model trains the same recipe


def test_for_model_applies_each_methods_requirements():
    tiny = RECIPES["test_tiny"]
    assert for_model(tiny, "bn") == (tiny, [])
    assert for_model(tiny, "gn") == (tiny, [])

    mimic, why = for_model(tiny, "mimic")
    assert mimic.warmup_epochs >= 2 and len(why) == 1 and "warm-up" in why[0]
    assert for_model(RECIPES["mimic_cifar100"], "mimic") == (RECIPES["mimic_cifar100"], [])
    # a warm-up set on the command line (--warmup-epochs) wins over mimic's own
    assert for_model(tiny, "mimic", keep=("warmup_epochs",)) == (tiny, [])

    bwn, why = for_model(tiny, "bwn")
    assert bwn.weight_decay == 0 and any("no weight decay" in w for w in why)
    assert not bwn.amp and not any("autocast" in w for w in why)  # tiny runs in float32
    cpu = RECIPES["cifar10_cpu_long"]
    bwn, why = for_model(cpu, "bwn")
    assert cpu.amp and not bwn.amp and any("float32, no autocast" in w for w in why)
    assert for_model(cpu, "bwn", keep=("amp",))[0].amp  # --amp on the command line wins
    # the Norm Matters norms train as BN does: every gain starts at 1 (docs/claims.md)
    for norm in ("l1bn", "linfbn", "topkbn", "lpbn"):
        assert for_model(tiny, norm) == (tiny, [])
    # their own recipe keeps the authors' zero-init gains, except on norms without a gain
    norm_matters = RECIPES["norm_matters_cifar"]
    assert for_model(norm_matters, "l1bn") == (norm_matters, [])
    meanbn, why = for_model(norm_matters, "meanbn")
    assert dataclasses.replace(meanbn, zero_init_residual=True) == norm_matters
    assert any("zero_init_residual=False" in w for w in why)


@pytest.mark.parametrize("preset", ["test_tiny", "norm_matters_cifar", "mimic_cifar100"])
def test_every_norm_builds_under_every_adjusted_recipe(preset):
    """What Run builds: the recipe's zero_init_residual must fit the norm (meanbn and bwn
    have no gain to zero; a Norm Matters preset on them used to crash at model creation)."""
    for norm in zoo.list_norms():
        recipe, why = for_model(RECIPES[preset], norm)
        model = zoo.create_model(f"resnet20_{norm}", num_classes=10,
                                 **({"zero_init_residual": True} if recipe.zero_init_residual else {}))
        assert model.config["norm"] == norm
        if preset == "norm_matters_cifar" and not recipe.zero_init_residual:
            assert any("zero_init_residual=False" in w for w in why), norm


def test_override_keeps_what_is_not_given():
    tiny = RECIPES["test_tiny"]
    assert override(tiny, epochs=None, lr=None) is tiny
    changed = override(tiny, epochs=3, lr=0.5, batch_size=None, amp=True)
    assert (changed.epochs, changed.lr, changed.batch_size, changed.amp) == (3, 0.5, 32, True)
    assert override(tiny, epochs=3, warmup_epochs=0.3).warmup_epochs == 0.3
    for bad in (-0.1, 3.5, float("nan")):
        with pytest.raises(ValueError, match=r"--warmup-epochs must be a number from 0 to the "
                                             r"run's 3 epochs"):
            override(tiny, epochs=3, warmup_epochs=bad)


def test_param_groups_exempt_1d_params_unless_the_recipe_decays_them():
    model = zoo.create_model("resnet20_bwn")
    tiny = RECIPES["test_tiny"]
    decay, no_decay = param_groups(model, tiny)
    assert decay["weight_decay"] == tiny.weight_decay and no_decay["weight_decay"] == 0
    assert decay["params"] and all(p.ndim > 1 for p in decay["params"])
    assert no_decay["params"] and all(p.ndim <= 1 for p in no_decay["params"])
    assert {id(p) for p in decay["params"] + no_decay["params"]} == {id(p) for p in model.parameters()}
    fc = dict(model.named_parameters())["fc.bias"]
    assert any(p is fc for p in no_decay["params"])

    every, none = param_groups(model, dataclasses.replace(tiny, decay_norm_and_bias=True))
    assert len(every["params"]) == len(list(model.parameters())) and none["params"] == []


def test_lr_lambda_warmup_then_cosine_to_zero():
    recipe = dataclasses.replace(RECIPES["test_tiny"], epochs=4, warmup_epochs=1.5, warmup_start=0.1)
    f = lr_lambda(recipe, steps_per_epoch=10)
    warm = [f(s) for s in range(16)]
    assert warm[0] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(warm, warm[1:]))
    assert f(15) == pytest.approx(1.0)  # the cosine starts at full lr when the warm-up ends
    cosine = [f(s) for s in range(15, 41)]
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))
    assert f(27) + f(28) == pytest.approx(1.0, abs=0.05)  # half-way down near the middle
    assert f(39) < 0.01 and f(40) == pytest.approx(0.0, abs=1e-12)

    no_warmup = lr_lambda(dataclasses.replace(recipe, warmup_epochs=0), 10)
    assert no_warmup(0) == pytest.approx(1.0)


def test_lr_lambda_step_schedule_drops_by_gamma_at_milestones():
    recipe = RECIPES["he2016_cifar"]  # /10 at epochs 82 and 123, no warm-up
    f = lr_lambda(recipe, steps_per_epoch=10)
    assert f(0) == f(819) == 1.0
    assert f(820) == pytest.approx(0.1) and f(1229) == pytest.approx(0.1)
    assert f(1230) == pytest.approx(0.01) and f(1639) == pytest.approx(0.01)
    halves = lr_lambda(dataclasses.replace(recipe, gamma=0.5, milestones=(1, 2),
                                           warmup_epochs=1, warmup_start=0.2), 4)
    assert [halves(s) for s in range(12)] == pytest.approx(
        [0.2, 0.4, 0.6, 0.8, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25])


# ---------------------------------------------------------------------------------------------
# Augmentation and batches

def naive_crop_flip(x, shifts, flips):
    padded = F.pad(x, (4, 4, 4, 4))
    out = []
    for image, (dy, dx), flip in zip(padded, shifts.tolist(), flips.tolist()):
        crop = image[:, dy:dy + 32, dx:dx + 32]
        out.append(crop.flip(2) if flip else crop)
    return torch.stack(out)


def test_crop_flip_equals_a_per_image_crop_and_flip(cifar):
    g = torch.Generator().manual_seed(1)
    x = cifar.images[:96]
    shifts = torch.randint(0, 9, (96, 2), generator=g)
    shifts[:4] = torch.tensor([[0, 0], [8, 8], [0, 8], [8, 0]])  # the extreme crops
    flips = torch.rand(96, generator=g) < 0.5
    flips[:4] = torch.tensor([False, True, True, False])
    got = _crop_flip(x, shifts, flips)
    assert got.dtype == torch.uint8 and got.shape == x.shape
    assert torch.equal(got, naive_crop_flip(x, shifts, flips))
    centre = _crop_flip(x, torch.full((96, 2), 4), torch.zeros(96, dtype=torch.bool))
    assert torch.equal(centre, x)
    assert (_crop_flip(x, torch.zeros(96, 2, dtype=torch.long), flips)[:, :, :4, :] == 0).all()


def batches(images, labels, augment="crop_flip", **kw):
    return CifarTrainBatches(images, labels, 32, seed=kw.pop("seed", 0), augment=augment, **kw)


def test_epochs_are_seeded_and_cover_each_image_at_most_once(cifar):
    n = 200  # 6 batches of 32; 8 images left over
    images, index = cifar.images[:n], torch.arange(n)  # the "labels" are the image indices
    data = batches(images, index)
    assert len(data) == 6
    first = list(data.epoch(0))
    assert len(first) == 6
    again = list(batches(images, index).epoch(0))
    for (x, y), (x2, y2) in zip(first, again):
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert x.dtype == torch.float32 and x.shape == (32, 3, 32, 32)
    seen = torch.cat([y for _, y in first])
    assert len(seen) == 192 and len(set(seen.tolist())) == 192  # no image twice in an epoch
    second = torch.cat([y for _, y in data.epoch(1)])
    assert len(set(second.tolist())) == 192 and not torch.equal(seen, second)
    other_seed = torch.cat([y for _, y in batches(images, index, seed=1).epoch(0)])
    assert not torch.equal(seen, other_seed)
    # a resumed epoch is the tail of the uninterrupted one
    tail = list(data.epoch(0, start_step=4))
    assert len(tail) == 2
    for (x, y), (x2, y2) in zip(first[4:], tail):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    # the normalised images are the (augmented) real images
    plain = list(batches(images, index, augment="none").epoch(0))
    x, y = plain[0]
    assert torch.allclose(x, normalized(images[y]), atol=1e-6)
    last = list(batches(images, index, channels_last=True).epoch(0))[0][0]
    assert last.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("augment", ["crop_flip", "crop_flip_rotate"])
def test_two_ranks_split_each_global_batch(cifar, monkeypatch, augment):
    n = 160
    images, index = cifar.images[:n], torch.arange(n)
    whole = list(batches(images, index, augment=augment, seed=3).epoch(2))
    parts = []
    for rank in (0, 1):
        monkeypatch.setattr(train.data, "rank_and_world", lambda rank=rank: (rank, 2))
        parts.append(list(batches(images, index, augment=augment, seed=3).epoch(2)))
    assert len(parts[0]) == len(parts[1]) == len(whole) == 5
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts):
        assert len(y0) == len(y1) == 16
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)


def test_unknown_augmentation_is_refused(cifar):
    with pytest.raises(ValueError, match="unknown CIFAR augmentation 'cutout'"):
        batches(cifar.images[:64], cifar.labels[:64], augment="cutout")


# ---------------------------------------------------------------------------------------------
# Tiny real runs, one per method family

@pytest.mark.parametrize("norm", FAMILIES)
def test_tiny_run_learns_and_exports(norm, data_root, cifar, tmp_path, temp_manifest, capsys):
    name = f"resnet20_{norm}"
    out = tmp_path / "run"
    # 128 training images (4 steps of 32) seen 4 times at a small lr, 64 held out for val.
    # l1bn trains through the fused (compiled) kernels, as the trainer does by default; ILM's
    # take most of a minute to compile here, and test_fused_norms checks them, values and
    # gradients, against their formulas.
    argv = tiny_args(name, data_root, out, "--limit-train", 192, "--epochs", 4, "--lr", 0.02,
                     *(["--register"] if norm == "bn" else []),
                     *(["--no-fused-norms"] if norm == "ilm" else []))
    base, adjustments = for_model(RECIPES["test_tiny"], norm)
    recipe = override(base, epochs=4, lr=0.02)
    torch.manual_seed(0)  # what the run starts from (seed 0)
    initial = zoo.create_model(name, num_classes=10,
                               **({"zero_init_residual": True} if recipe.zero_init_residual else {}))

    sigterm = signal.getsignal(signal.SIGTERM)
    assert train.loop.main(argv) == 0
    assert signal.getsignal(signal.SIGTERM) is sigterm  # the run's SIGTERM handler is gone
    printed = capsys.readouterr().out
    assert "test: top-1" in printed and "cifar10 test[:1000]" in printed

    log = rows(out)
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    for r in log:
        assert set(r) == {"epoch", "lr", "train_loss", "train_acc", "img_per_s", "seconds",
                          "val_acc", "val_top5"}
        assert all(math.isfinite(v) for v in r.values())
        assert r["img_per_s"] * r["seconds"] == pytest.approx(128)
    assert log[-1]["train_loss"] < log[0]["train_loss"], [r["train_loss"] for r in log]
    assert log[-1]["lr"] == pytest.approx(0, abs=1e-12)  # the cosine ends at 0

    saved = json.loads((out / "recipe.json").read_text())
    assert saved["recipe"] == json.loads(json.dumps(dataclasses.asdict(recipe)))
    assert saved["adjustments"] == adjustments and saved["seed"] == 0 and saved["model"] == name
    assert saved["command"] == "python -m train " + shlex.join(argv)

    state = checkpoint(out)
    assert CKPT_KEYS <= set(state) and (state["epoch"], state["step"]) == (4, 0)

    path = out / "model.safetensors"
    model = zoo.create_model(name, weights=path)
    assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())
    meta = read_metadata(path)
    assert meta["model"] == name and meta["dataset"] == "cifar10" and meta["tag"] == "cifar10"
    metrics = meta["metrics"]
    assert metrics["split"] == "cifar10 test[:1000]" and metrics["num_images"] == 1000
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 100
    assert meta["recipe"] == {"command": saved["command"], "commit": saved["commit"],
                              "name": "test_tiny", "epochs": 4,
                              "val_top1": round(log[-1]["val_acc"], 2),
                              "img_per_s": round(statistics.median(r["img_per_s"] for r in log)),
                              "minutes": round(sum(r["seconds"] for r in log) / 60, 1)}
    assert saved["commit"]
    assert {p.name for p in (out / "hub").iterdir()} >= {"model.safetensors", "config.json", "README.md"}

    if norm == "bn":  # --register: the temporary manifest gets the entry, shipped beside it
        entry, = json.loads(temp_manifest.read_text())["weights"]
        assert entry["name"] == "resnet20_bn.cifar10" and entry["metrics"] == metrics
        assert (temp_manifest.parent / entry["shipped"]).is_file()
        assert "registered resnet20_bn.cifar10" in printed
        # the figure is the one the saved weights give on the test split
        test = load_cifar(data_root / "cifar10", "test")
        transform = eval_transforms(default_preprocessing(model))
        result = evaluate(model, cifar_batches(test.images, test.labels, transform, 500))
        assert round(result.top1, 2) == metrics["top1"] and result.num_images == 1000

    # the exported weights fit the (unaugmented) training images better than the initial ones
    x, y = normalized(cifar.images[:128]), cifar.labels[:128]
    with torch.no_grad():  # train mode: this moves running statistics, so it comes last
        before = F.cross_entropy(initial.train()(x), y).item()
        after = F.cross_entropy(model.train()(x), y).item()
    assert after < before, (before, after)


def test_norm_kwargs_train_the_model_they_name_and_are_recorded(data_root, tmp_path, capsys):
    """mimic's "weight mean only" (--norm-kwargs '{"logits_bn": false}'): the checkpoints, the
    recorded command and the resume record carry it; val top-1 is logged every epoch."""
    out = tmp_path / "run"
    argv = tiny_args("resnet20_mimic", data_root, out, "--limit-train", 96, "--norm-kwargs",
                     '{"logits_bn": false}')
    assert train.loop.main(argv) == 0
    assert [("val_acc" in r, r["epoch"]) for r in rows(out)] == [(True, 1), (True, 2)]
    assert checkpoint(out)["must_match"]["--norm-kwargs"] == {"logits_bn": False}
    meta = read_metadata(out / "model.safetensors")
    assert meta["norm_kwargs"] == {"logits_bn": False}
    assert """--norm-kwargs '{"logits_bn": false}'""" in meta["recipe"]["command"]
    model = zoo.create_model("resnet20_mimic", weights=out / "model.safetensors")
    assert model.logits_norm is None and "logits_norm.running_mean" not in load_file(out / "model.safetensors")


# ---------------------------------------------------------------------------------------------
# Precise BN: --recalibrate-norms

def test_recalibrate_norms_re_estimates_the_statistics_it_exports(data_root, cifar, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.loop.main(tiny_args("resnet20_l1bn", data_root, out, "--limit-train", 192,
                                     "--epochs", 1, "--no-fused-norms", "--recalibrate-norms", 2)) == 0
    printed = capsys.readouterr().out
    found = re.search(r"recalibrated the running statistics of 19 norm layers over 2 training "
                      r"batches: val top-1 (\S+)% -> (\S+)%", printed)
    assert found, printed
    trained, exported = checkpoint(out)["model"], load_file(out / "model.safetensors")
    running = [k for k in exported if ".running_" in k]
    assert len(running) == 19 * 2 and all(not torch.equal(trained[k], exported[k]) for k in running)
    # the figures printed are the trained model's (the log's) and the exported model's
    assert found[1] == f"{rows(out)[-1]['val_acc']:.2f}"
    model = zoo.create_model("resnet20_l1bn", weights=out / "model.safetensors")
    val = score(model, cifar.images[128:192], cifar.labels[128:192], "val", torch.device("cpu"),
                channels_last=zoo.prefers_channels_last(model))
    assert found[2] == f"{val.top1:.2f}"


@pytest.mark.parametrize("model, count, message", [
    ("resnet20_gn", 2, "--recalibrate-norms: resnet20_gn has no norm with running statistics"),
    ("resnet20_bn", -1, "--recalibrate-norms takes a number of training batches, not -1"),
])
def test_recalibrate_norms_refuses_before_training(data_root, tmp_path, capsys, model, count, message):
    out = tmp_path / "run"
    assert train.loop.main(tiny_args(model, data_root, out, "--limit-train", 128,
                                     "--recalibrate-norms", count)) == 2
    assert message in error_line(capsys)
    assert not (out / "log.jsonl").exists()


# ---------------------------------------------------------------------------------------------
# Exact resume after SIGKILL and SIGTERM

def test_resume_after_sigkill_and_sigterm_is_exact(data_root, tmp_path, env, started):
    """A: 3 epochs of 6 steps uninterrupted. B: SIGKILLed in epoch 2, resumed, stopped by
    SIGTERM in the middle of epoch 3, resumed to the end. B's weights are A's, bit for bit."""
    flags = ("--limit-train", 256, "--epochs", 3, "--no-amp")
    a_out, b_out = tmp_path / "a", tmp_path / "b"
    a = start(started, tiny_args("resnet20_bn", data_root, a_out, *flags), env)  # runs beside B

    b_out.mkdir()
    b_args = tiny_args("resnet20_bn", data_root, b_out, *flags)
    killed = start(started, b_args, env, NZ_TEST_HANG_AT="1,2")
    deadline = time.monotonic() + 300
    while not (b_out / "hanging").exists():
        assert killed.poll() is None, killed.communicate()
        assert time.monotonic() < deadline, "run B never reached epoch 2"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    rc, _, _ = finish(killed)
    assert rc == -signal.SIGKILL
    state = checkpoint(b_out)
    assert (state["epoch"], state["step"]) == (1, 0)  # the end of epoch 1
    assert not (b_out / "model.safetensors").exists()

    # resume; a real SIGTERM arrives while epoch 3's 4th batch is handed out
    rc, stdout, err = finish(start(started, b_args + ["--resume"], env, NZ_TEST_SIGTERM_AT="2,3"))
    assert rc == 0, err
    assert "resumed" in stdout and "at epoch 2, step 0" in stdout
    assert "stopped by SIGTERM at epoch 3, step 4" in stdout and "Traceback" not in err
    state = checkpoint(b_out)
    assert CKPT_KEYS <= set(state)
    assert (state["epoch"], state["step"]) == (2, 4)  # mid-epoch: 4 of 6 steps done
    assert state["scheduler"]["last_epoch"] == 2 * 6 + 4
    assert not (b_out / "model.safetensors").exists()

    rc, stdout, err = finish(start(started, b_args + ["--resume"], env))
    assert rc == 0, err
    assert "at epoch 3, step 4" in stdout
    rc, _, err = finish(a)
    assert rc == 0, err

    a_weights = load_file(a_out / "model.safetensors")
    b_weights = load_file(b_out / "model.safetensors")
    assert a_weights.keys() == b_weights.keys()
    different = [k for k in a_weights if not torch.equal(a_weights[k], b_weights[k])]
    assert not different, different
    a_log, b_log = rows(a_out), rows(b_out)
    assert [r["epoch"] for r in b_log] == [1, 2, 3]
    for key in ("train_loss", "train_acc", "val_acc", "lr"):
        assert [r[key] for r in b_log[:2]] == [r[key] for r in a_log[:2]]
    assert b_log[2]["val_acc"] == a_log[2]["val_acc"] and b_log[2]["lr"] == a_log[2]["lr"]
    assert read_metadata(a_out / "model.safetensors")["metrics"] == \
        read_metadata(b_out / "model.safetensors")["metrics"]
    # the run's command is the one that started it; the resumes are listed beside it
    b_recipe = json.loads((b_out / "recipe.json").read_text())
    assert "--resume" not in b_recipe["command"] and len(b_recipe["resumed"]) == 2
    assert all("--resume" in r["command"] for r in b_recipe["resumed"])
    assert read_metadata(b_out / "model.safetensors")["recipe"]["command"] == b_recipe["command"]


# ---------------------------------------------------------------------------------------------
# Refusals: one clear error line, exit status 2

def error_line(capsys):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def test_refusals_exit_2_with_one_error_line(data_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    base = tiny_args("resnet20_gn", data_root, out, "--limit-train", 128)  # 2 steps an epoch

    assert train.loop.main(base + ["--resume"]) == 2
    assert "does not exist; start without --resume" in error_line(capsys)
    assert not (out / "recipe.json").exists()

    assert train.loop.main(base + ["--stop-after-epoch", "1"]) == 0
    capsys.readouterr()
    state = checkpoint(out)
    assert (state["epoch"], state["step"]) == (1, 0)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    assert train.loop.main(base) == 2
    assert "already holds a run; pass --resume" in error_line(capsys)
    for other, change in ((["--lr", 0.01], "--lr 0.05 in the run, 0.01 here"),
                          (["--epochs", 3], "--epochs 2 in the run, 3 here"),
                          (["--batch-size", 16], "--batch-size 32 in the run, 16 here"),
                          (["--amp"], "--amp False in the run, True here")):
        assert train.loop.main(base + ["--resume", *map(str, other)]) == 2
        assert change in error_line(capsys)
    other_model = tiny_args("resnet20_bn", data_root, out, "--limit-train", 128, "--resume")
    assert train.loop.main(other_model) == 2
    assert "--model resnet20_gn in the run, resnet20_bn here" in error_line(capsys)
    # the run recorded its norm's memory format (GroupNorm: contiguous) and resumes only in it
    gn_format = zoo.get_norm("gn").channels_last
    assert json.loads((out / "recipe.json").read_text())["channels_last"] is gn_format
    other_format = "--no-channels-last" if gn_format else "--channels-last"
    assert train.loop.main(base + ["--resume", other_format]) == 2
    assert f"--channels-last {gn_format} in the run, {not gn_format} here" in error_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched

    unknown = ["--model", "resnet20_gn", "--recipe", "nope", "--data", str(data_root / "cifar10"),
               "--out", str(tmp_path / "other")]
    assert train.loop.main(unknown) == 2
    assert "unknown recipe 'nope'" in error_line(capsys)
    assert train.loop.main(tiny_args("resnet20_zz", data_root, tmp_path / "other")) == 2
    assert "unknown model 'resnet20_zz'" in error_line(capsys)
    assert train.loop.main(tiny_args("resnet20_gn", data_root, tmp_path / "other",
                                     "--limit-train", 64)) == 2
    assert "leave none after holding out 64" in error_line(capsys)

    # two processes cannot split a global batch of 33
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: None)
    assert train.loop.main(tiny_args("resnet20_gn", data_root, tmp_path / "other",
                                     "--limit-train", 128, "--batch-size", 33)) == 2
    assert "batch size 33 does not split between 2 processes" in error_line(capsys)
    assert not (tmp_path / "other").exists()


# ---------------------------------------------------------------------------------------------
# torchrun: 2 processes on CPU (gloo) train like 1 process with the same global batch

@pytest.mark.parametrize("norm", ["gn", "ilm"])
def test_torchrun_two_processes_match_one(norm, data_root, tmp_path, env, started):
    name = f"resnet20_{norm}"
    # 2 epochs of 4 global batches of 32, fp32, a small lr: float noise (reduction order) grows
    # over the steps, by about as much as running on 2 threads instead of 1 makes it grow.
    # Eager norms: compiling ILM's kernels in all three processes was most of this test's time;
    # the subject here is the split between processes, and test_tiny_run_learns_and_exports
    # trains l1bn through the fused kernels.
    flags = ("--limit-train", 192, "--no-amp", "--lr", 0.005, "--no-fused-norms")
    ddp_out, one_out = tmp_path / "ddp", tmp_path / "one"
    ddp = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "train", *tiny_args(name, data_root, ddp_out, *flags)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    started.append(ddp)
    assert train.loop.main(tiny_args(name, data_root, one_out, *flags)) == 0  # meanwhile
    rc, stdout, err = finish(ddp)
    assert rc == 0, stdout + err
    assert stdout.count("test: top-1") == 1  # rank 0 speaks for both

    one, ddp_state = checkpoint(one_out), checkpoint(ddp_out)
    assert one["scheduler"]["last_epoch"] == ddp_state["scheduler"]["last_epoch"] == 8
    one_log, ddp_log = rows(one_out), rows(ddp_out)
    assert [r["epoch"] for r in ddp_log] == [r["epoch"] for r in one_log] == [1, 2]
    for a, b in zip(one_log, ddp_log):
        assert b["img_per_s"] * b["seconds"] == pytest.approx(128)  # counted over both ranks
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-4)
        assert b["lr"] == pytest.approx(a["lr"])

    single = load_file(one_out / "model.safetensors")
    both = load_file(ddp_out / "model.safetensors")
    assert single.keys() == both.keys()
    for k in single:
        assert torch.allclose(single[k], both[k], atol=5e-4, rtol=0), (k, (single[k] - both[k]).abs().max())
    # and the difference is tiny next to what training changed (a wrong split of the batch,
    # or summed instead of averaged gradients, would be of the order of the change itself)
    torch.manual_seed(0)
    initial = zoo.create_model(name, num_classes=10).state_dict()
    diff = torch.cat([(single[k] - both[k]).flatten() for k in single])
    change = torch.cat([(single[k] - initial[k]).flatten() for k in single])
    assert diff.norm() < 0.02 * change.norm(), (diff.norm(), change.norm())
    meta = read_metadata(ddp_out / "model.safetensors")
    assert meta["metrics"]["split"] == "cifar10 test[:1000]" and meta["metrics"]["num_images"] == 1000
    assert meta["recipe"]["command"].startswith(f"torchrun --nproc_per_node=2 -m train --model {name}")


def test_torchrun_stops_every_process_when_rank0_cannot_write(data_root, tmp_path, env, started):
    """Rank 0's first checkpoint hits a full disk: both processes stop with one error line each.
    Rank 1 used to go on into its next all-reduce, where torchrun killed it (and a launcher
    that does not watch its processes left it waiting for the half-hour timeout)."""
    driver, out, logs = tmp_path / "driver.py", tmp_path / "ddp", tmp_path / "logs"
    driver.write_text(DRIVER)
    ddp = subprocess.Popen(  # each rank's stderr to its own file (--redirects 2)
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "--log-dir", str(logs), "--redirects", "2", str(driver),
         *tiny_args("resnet20_gn", data_root, out, "--limit-train", 128, "--no-fused-norms")],
        cwd=REPO, env={**env, "NZ_TEST_FULL_DISK_ON_RANK": "0"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    started.append(ddp)
    rc, _, err = finish(ddp, timeout=120)
    assert rc != 0
    errors = {}
    for rank in ("0", "1"):
        [log] = logs.glob(f"**/attempt_0/{rank}/stderr.log")
        errors[rank] = [line for line in log.read_text().splitlines() if line.startswith("error: ")]
    assert errors == {
        "0": [f"error: the disk is full: could not write {out / 'checkpoint.pt'} (it is as it was, "
              f"and no partial copy is left); free some space, then run again (--resume continues "
              f"from the last checkpoint.pt)"],
        "1": ["error: rank 0 stopped the run: its error is above"]}, err
    assert [r["epoch"] for r in rows(out)] == [1] and not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("name, module", [
    ("RESUME_HELP", "train.cli"), ("parser", "train.cli"), ("RUN_FILES", "train.run_folder"),
    ("CHECKPOINT_KEYS", "train.run_folder"), ("RECIPE_FLAGS", "train.run_folder"),
    ("run_summary", "train.finish")])
def test_names_moved_by_the_split_keep_their_old_path_for_a_release(name, module):
    with pytest.warns(DeprecationWarning, match=f"train.loop.{name} moved to {module}.{name}"):
        assert getattr(train.loop, name) is getattr(importlib.import_module(module), name)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        train.loop.no_such_name
