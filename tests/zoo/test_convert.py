"""python -m zoo.convert: checkpoints in their original layouts become NormZoo checkpoints that
compute what the originals compute; layouts that do not fit, and pickles that need code, are
refused with the keys or the reason named."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import zoo
from zoo import reference
from zoo.convert import ConvertError, convert, map_ilm_authors
from zoo.data import IMAGENET_MEAN, IMAGENET_STD
from zoo.weights import read_checkpoint, read_metadata

from conftest import REPO


@pytest.fixture(scope="module")
def ilm_authors(tmp_path_factory):
    """The authors' ResNet-50 with ILM-GN (torchvision's, a fixed 7x7 average pool), random
    offsets, encoders and decoders, saved as they save it: module. keys in a wrapper."""
    torch.manual_seed(0)
    original = torchvision.models.resnet50(norm_layer=reference.OriginalILMGroupNorm)
    original.avgpool = nn.AvgPool2d(7)
    with torch.no_grad():
        for m in original.modules():
            if isinstance(m, reference.OriginalILMGroupNorm):
                m.weight_bias.copy_(1 + 0.3 * torch.randn_like(m.weight_bias))
                m.bias_bias.normal_(0, 0.3)
                for linear in (m.fc_embed[0], m.fc_weight[1], m.fc_bias[1]):
                    linear.weight.normal_(0, 1)
        original.fc.bias.normal_(0, 1)
    path = tmp_path_factory.mktemp("ilm") / "ilm_gn_resnet50.pth.tar"
    state_dict = {f"module.{k}": v for k, v in original.state_dict().items()}
    torch.save({"state_dict": state_dict, "epoch": 100, "best_prec1": 77.2}, path)
    return original.eval(), path


def test_ilm_authors_resnet50_computes_what_the_original_computes(ilm_authors, tmp_path):
    original, src = ilm_authors
    lines = []
    out = convert("ilm-authors", src, tmp_path / "resnet50_ilm.safetensors", report=lines.append)

    meta = read_metadata(out)
    assert (meta["model"], meta["tag"], meta["dataset"]) == ("resnet50_ilm", "ilm-authors",
                                                             "imagenet-1k")
    assert meta["preprocessing"] == {"input_size": [3, 224, 224], "resize": 256, "crop": 224,
                                     "interpolation": "bilinear", "mean": list(IMAGENET_MEAN),
                                     "std": list(IMAGENET_STD)}
    assert meta["recipe"]["command"].startswith("python -m zoo.convert ilm-authors ")
    assert meta["recipe"]["commit"] and meta["metrics"] == {}
    # 53 ILM layers (stem, 16 blocks x 3, 4 downsamples), each with two encoder copies dropped.
    assert "320 tensors mapped into resnet50_ilm" in lines[0]
    assert any("dropped 106, duplicate of fc_embed.0.weight (equal)" in line for line in lines)
    assert any("dropped 2, checkpoint entry beside the state_dict" in line for line in lines)
    assert lines[-1] == f"load it with zoo.create_model('resnet50_ilm', weights={str(out)!r})"

    converted = zoo.create_model("resnet50_ilm", weights=out).eval().double()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        expected = original.double()(x)
        got = converted(x)
    assert expected.std() > 0.1 and not torch.allclose(expected[0], expected[1])
    torch.testing.assert_close(got, expected)


def test_ilm_authors_missing_key_is_named(ilm_authors, tmp_path):
    wrapper = torch.load(ilm_authors[1], weights_only=True)
    del wrapper["state_dict"]["module.layer1.0.bn1.fc_weight.1.weight"]
    torch.save(wrapper, tmp_path / "broken.pth")
    with pytest.raises(ConvertError, match=r"missing \[layer1\.0\.bn1\.fc_weight\.1\.weight\]"):
        convert("ilm-authors", tmp_path / "broken.pth", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_ilm_authors_unequal_encoder_copies_are_refused(tmp_path):
    encoder = torch.randn(2, 4)
    layer = "module.layer2.1.bn2"
    torch.save({f"{layer}.fc_embed.0.weight": encoder, f"{layer}.fc_weight.0.0.weight": encoder,
                f"{layer}.fc_bias.0.0.weight": encoder + 1e-6}, tmp_path / "edited.pth")
    with pytest.raises(ConvertError, match=r"^layer2\.1\.bn2: the encoder's copies differ"):
        convert("ilm-authors", tmp_path / "edited.pth", tmp_path / "out.safetensors")
    # Equal copies are dropped as duplicates; the offsets become (C,).
    mapped, dropped = map_ilm_authors({"bn1.fc_embed.0.weight": encoder,
                                       "bn1.fc_weight.0.0.weight": encoder.clone(),
                                       "bn1.bias_bias": torch.zeros(1, 64, 1, 1)})
    assert {k: v.shape for k, v in mapped.items()} == {"bn1.encoder.weight": (2, 4),
                                                       "bn1.bias_bias": (64,)}
    assert dropped == {"bn1.fc_weight.0.0.weight": "duplicate of fc_embed.0.weight (equal)"}


def _randomized_torchvision(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(1234)
    return model.eval()


@pytest.mark.parametrize("theirs, ours", [("resnet18", "resnet18_bn"), ("vgg11_bn", "vgg11_bn")])
def test_torchvision_outputs_are_torchvisions(theirs, ours, tmp_path):
    reference = _randomized_torchvision(theirs)
    torch.save(reference.state_dict(), tmp_path / f"{theirs}.pth")
    out = convert("torchvision", tmp_path / f"{theirs}.pth", tmp_path / "out.safetensors",
                  model=ours)
    assert read_metadata(out)["tag"] == "torchvision"
    model = zoo.create_model(ours, weights=out).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert model.state_dict()["features.1.num_batches_tracked" if "vgg" in ours
                              else "bn1.num_batches_tracked"] == 1234


def test_torchvision_layout_problems_are_named(tmp_path):
    state_dict = _randomized_torchvision("resnet18").state_dict()
    del state_dict["layer3.1.bn2.running_var"]
    state_dict["layer3.1.bn2.extra"] = torch.zeros(1)
    state_dict["fc.weight"] = torch.zeros(10, 512)
    torch.save(state_dict, tmp_path / "resnet18.pth")
    with pytest.raises(ConvertError) as raised:
        convert("torchvision", tmp_path / "resnet18.pth", tmp_path / "out.safetensors",
                model="resnet18_bn")
    assert ("missing [layer3.1.bn2.running_var]; unexpected [layer3.1.bn2.extra]; "
            "wrong shape [fc.weight (10, 512) (needs (1000, 512))]") in str(raised.value)
    with pytest.raises(ConvertError, match="checkpoints need --model, one of resnet18_bn"):
        convert("torchvision", tmp_path / "resnet18.pth", tmp_path / "out.safetensors")


def reproduction_checkpoint(num_batches_tracked=True):
    """A random ResNet-20 in the public CIFAR reproduction's layout: module. keys, head
    ``linear``, option-A shortcuts (no parameters), wrapped with best_prec1."""
    generator = torch.Generator().manual_seed(0)
    state_dict = {}
    for key, t in zoo.create_model("resnet20_bn").state_dict().items():
        if key.endswith("num_batches_tracked"):
            if not num_batches_tracked:
                continue
            t = torch.randint(1, 10**6, (), generator=generator)
        elif key.endswith("running_var"):
            t = torch.rand(t.shape, generator=generator) + 0.5
        else:
            t = torch.randn(t.shape, generator=generator) * (0.2 if t.dim() == 4 else 1)
        state_dict["module." + key.replace("fc.", "linear.")] = t
    return {"state_dict": state_dict, "best_prec1": 91.7}


def reproduction_forward(sd, x):
    """He et al.'s CIFAR ResNet-20 straight from the reproduction's tensors, in eval mode."""
    def bn(x, name):
        return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"],
                            sd[f"{name}.weight"], sd[f"{name}.bias"], training=False, eps=1e-5)

    out = F.relu(bn(F.conv2d(x, sd["conv1.weight"], padding=1), "bn1"))
    for stage in (1, 2, 3):
        for block in range(3):
            name, stride = f"layer{stage}.{block}", 2 if stage > 1 and block == 0 else 1
            y = F.relu(bn(F.conv2d(out, sd[f"{name}.conv1.weight"], stride=stride, padding=1),
                          f"{name}.bn1"))
            y = bn(F.conv2d(y, sd[f"{name}.conv2.weight"], padding=1), f"{name}.bn2")
            if stride == 2:  # option A: subsample, zero channels on both sides
                pad = y.shape[1] // 4
                out = F.pad(out[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))
            out = F.relu(y + out)
    return F.linear(out.mean((2, 3)), sd["linear.weight"], sd["linear.bias"])


def test_cifar_reproduction_tensors_and_outputs(tmp_path):
    checkpoint = reproduction_checkpoint()
    torch.save(checkpoint, tmp_path / "resnet20-12fca82f.th.pth")
    out = convert("cifar-reproduction", tmp_path / "resnet20-12fca82f.th.pth",
                  tmp_path / "resnet20.safetensors")

    source = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}
    converted, meta = read_checkpoint(out)
    assert {k.replace("fc.", "linear."): v.shape for k, v in converted.items()} == \
           {k: v.shape for k, v in source.items()}
    for key, tensor in converted.items():
        assert torch.equal(tensor, source[key.replace("fc.", "linear.")]), key
    assert (meta["model"], meta["tag"], meta["dataset"]) == ("resnet20_bn", "cifar-reproduction",
                                                             "cifar10")
    assert meta["preprocessing"] == {"input_size": [3, 32, 32], "resize": None, "crop": 32,
                                     "interpolation": "bilinear", "mean": list(IMAGENET_MEAN),
                                     "std": list(IMAGENET_STD)}

    model = zoo.create_model("resnet20_bn", weights=out).eval().double()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        expected = reproduction_forward({k: v.double() for k, v in source.items()}, x)
        torch.testing.assert_close(model(x), expected)

    with pytest.raises(ConvertError, match="--model resnet56_bn does not fit: .* resnet20_bn"):
        convert("cifar-reproduction", tmp_path / "resnet20-12fca82f.th.pth",
                tmp_path / "other.safetensors", model="resnet56_bn")


def test_a_pickle_that_needs_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    src = tmp_path / "trojan.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": Payload()}, src)
    refused = (r"refusing to unpickle .*trojan\.pth: loading it needs the object io\.open.*"
               r"torch\.save\(model\.state_dict\(\)")
    with pytest.raises(ConvertError, match=refused):
        convert("cifar-reproduction", src, tmp_path / "out.safetensors")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()
    torch.load(src, weights_only=False)  # the payload is live: a full unpickle runs it
    assert marker.exists()


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "zoo.convert", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_converts_and_reports_errors_on_one_line(tmp_path):
    torch.save(reproduction_checkpoint(num_batches_tracked=False), tmp_path / "resnet20.th")
    result = _cli("cifar-reproduction", tmp_path / "resnet20.th", "--out",
                  tmp_path / "out.safetensors", "--model", "resnet20_bn",
                  "--tag", "he2016-reproduction", cwd=REPO)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "97 tensors mapped into resnet20_bn" in lines[0]
    assert any(line.startswith("  dropped 1, checkpoint entry beside the state_dict, not a "
                               "weight: [best_prec1]") for line in lines)
    assert any("19 num_batches_tracked absent from the source, left 0" in line for line in lines)
    assert lines[-1] == (f"load it with zoo.create_model('resnet20_bn', "
                         f"weights={str(tmp_path / 'out.safetensors')!r})")
    model = zoo.create_model("resnet20_bn", weights=tmp_path / "out.safetensors")
    assert model.config["weights"] == str(tmp_path / "out.safetensors")
    assert read_metadata(tmp_path / "out.safetensors")["recipe"]["command"] == (
        f"python -m zoo.convert cifar-reproduction {tmp_path / 'resnet20.th'} --out "
        f"{tmp_path / 'out.safetensors'} --model resnet20_bn --tag he2016-reproduction")

    result = _cli("torchvision", tmp_path / "resnet20.th", "--out", tmp_path / "tv.safetensors",
                  "--model", "resnet18_bn", cwd=REPO)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: {tmp_path / 'resnet20.th'} does not fit resnet18_bn "
                                    f"in the torchvision layout: missing [")
    assert not (tmp_path / "tv.safetensors").exists()
