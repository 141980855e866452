"""Fine-tuning with ``python -m train --weights/--checkpoint``: a shipped CIFAR-10 checkpoint
fine-tuned and linearly probed on the shared (partial) CIFAR-100, MimicNorm's projection on
the new optimizer, and the refusals. One thread, a few steps each.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

import train.loop
import zoo
from zoo.weights import read_metadata

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def no_worldsize(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def args(model, data_root, out, *extra, data="cifar100"):
    return ["--model", model, "--recipe", "finetune", "--data", str(data_root / data),
            "--out", str(out), "--batch-size", "64", *map(str, extra)]


def log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def backbone(state: dict, model) -> dict:
    head = tuple(f"{name}." for name in model.head_names())
    return {k: v for k, v in state.items() if not k.startswith(head)}


def test_shipped_cifar10_weights_fine_tune_on_cifar100(data_root, tmp_path, capsys):
    default = zoo.get_model_weights("resnet20_bn").DEFAULT
    shipped = load_file(default.fetch())
    run = train.loop.Run(train.loop.parse_args(
        args("resnet20_bn", data_root, tmp_path / "r", "--weights", "DEFAULT", "--num-classes", 100)))
    printed = capsys.readouterr().out
    assert f"loaded {default.value.name}" in printed and "new 100-class head" in printed
    state = run.model.state_dict()
    kept = backbone(state, run.model)
    assert set(kept) == set(backbone(shipped, run.model)) and len(kept) == len(shipped) - 2
    assert all(torch.equal(kept[k], shipped[k]) for k in kept)  # step 0: the checkpoint exactly
    assert state["fc.weight"].shape == (100, 64) and state["fc.bias"].shape == (100,)
    assert not torch.equal(state["fc.weight"][:10], shipped["fc.weight"])

    out = tmp_path / "ft"
    assert train.loop.main(args("resnet20_bn", data_root, out, "--weights", "DEFAULT",
                                "--num-classes", 100, "--epochs", 4)) == 0
    losses = [r["train_loss"] for r in log(out)]
    assert losses[-1] < losses[0] - 0.1, losses  # 4 short epochs at the preset's lr 0.01
    meta = read_metadata(out / "model.safetensors")
    assert (meta["num_classes"], meta["dataset"], meta["tag"]) == (100, "cifar100", "cifar100")
    assert meta["metrics"]["split"] == "cifar100 test[:916]"
    assert zoo.create_model("resnet20_bn", weights=out / "model.safetensors").config["num_classes"] == 100


def test_linear_probe_leaves_the_backbone_bit_identical(data_root, tmp_path, capsys):
    source = zoo.get_weight("resnet20_bn.cifar10").fetch()
    out = tmp_path / "probe"
    assert train.loop.main(args("resnet20_bn", data_root, out, "--checkpoint", source,
                                "--freeze-backbone", "--epochs", 3, "--lr", 0.05)) == 0
    assert "linear probe: training fc only" in capsys.readouterr().out
    before, after = load_file(source), load_file(out / "model.safetensors")
    model = zoo.create_model("resnet20_bn")
    kept = backbone(after, model)
    # Norm statistics included: the backbone's BatchNorms ran in eval mode.
    assert kept and all(torch.equal(kept[k], before[k]) for k in kept)
    assert after["fc.weight"].shape == (100, 64)
    losses = [r["train_loss"] for r in log(out)]
    assert losses[-1] < losses[0], losses


def test_freeze_norms_keeps_every_norm_as_loaded_while_the_rest_trains(data_root, tmp_path, capsys):
    shipped = load_file(zoo.get_model_weights("resnet20_bn").DEFAULT.fetch())
    out = tmp_path / "frozen"
    argv = ["--model", "resnet20_bn", "--recipe", "test_tiny", "--data", str(data_root / "cifar10"),
            "--out", str(out), "--limit-train", 128, "--epochs", 1, "--weights", "DEFAULT",
            "--freeze-norms"]
    assert train.loop.main(list(map(str, argv))) == 0
    assert ("+ --freeze-norms: froze 19 BatchNorm2d: running statistics in training mode too, "
            "affine parameters frozen") in capsys.readouterr().out
    after = load_file(out / "model.safetensors")
    norms = [f"{name}.{key}" for name, m in zoo.create_model("resnet20_bn").named_modules()
             if isinstance(m, torch.nn.BatchNorm2d) for key in m.state_dict()]
    assert len(norms) == 19 * 5  # weight, bias, running mean and var, num_batches_tracked
    assert all(torch.equal(after[k], shipped[k]) for k in norms)
    assert not torch.equal(after["conv1.weight"], shipped["conv1.weight"])  # the rest trained


@pytest.fixture(scope="module")
def mimic_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mimic") / "resnet20_mimic.cifar10.safetensors"
    return zoo.save_checkpoint(zoo.create_model("resnet20_mimic"), path, tag="cifar10")


def _centred_convs(state: dict, model) -> list[str]:
    from zoo.norms.mimic import is_weight_mean_conv

    return [f"{name}.weight" for name, m in model.named_modules() if is_weight_mean_conv(m)]


def test_mimic_fine_tuning_keeps_filters_zero_mean_and_the_probe_keeps_them(
        data_root, tmp_path, mimic_checkpoint, capsys):
    model = zoo.create_model("resnet20_mimic")
    convs = _centred_convs(model.state_dict(), model)
    before = load_file(mimic_checkpoint)

    tuned = tmp_path / "tuned"
    assert train.loop.main(args("resnet20_mimic", data_root, tuned, "--checkpoint", mimic_checkpoint,
                                "--epochs", 1)) == 0
    after = load_file(tuned / "model.safetensors")
    assert after["logits_norm.running_mean"].shape == (100,)
    for key in convs:  # trained, and re-projected to zero-mean filters after every step
        assert not torch.equal(after[key], before[key])
        assert after[key].mean(dim=(1, 2, 3)).abs().max() < 1e-6

    probe = tmp_path / "probe"
    assert train.loop.main(args("resnet20_mimic", data_root, probe, "--checkpoint", mimic_checkpoint,
                                "--epochs", 1, "--freeze-backbone")) == 0
    assert "training fc, logits_norm only" in capsys.readouterr().out
    after = load_file(probe / "model.safetensors")
    assert all(torch.equal(after[k], before[k]) for k in backbone(after, model))


@pytest.mark.parametrize("extra, data, message", [
    (["--freeze-backbone"], "cifar100", "--freeze-backbone needs --weights or --checkpoint"),
    (["--freeze-norms"], "cifar100", "--freeze-norms needs --weights or --checkpoint"),
    (["--weights", "DEFAULT", "--num-classes", 10], "cifar100", "--num-classes 10, but"),
    (["--weights", "DEFAULT", "--checkpoint", "x.safetensors"], "cifar100", "not both"),
    (["--weights", "nope"], "cifar100", "nope"),
    (["--recipe", "cifar10_cpu"], "cifar100", "recipe cifar10_cpu trains on cifar10, but"),
])
def test_refusals_exit_2_with_one_error_line(data_root, tmp_path, capsys, extra, data, message):
    assert train.loop.main(args("resnet20_bn", data_root, tmp_path / "r", *extra, data=data)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
