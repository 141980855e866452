"""zoo.fold_norms: every foldable norm goes into its conv (or linear) exactly, the rest stay
and are reported, and the folded model exports."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import zoo
from zoo.norms.norm_matters import BoundedWeightNorm

from conftest import assert_onnx_matches

NORMS = zoo.list_norms()
PER_SAMPLE = ["gn", "in", "ln", "ilm", "ilm_in", "ilm_ln"]
DEFAULT_WEIGHTS = sorted(w.split(".")[0] for w in zoo.list_weights() if zoo.get_weight(w).entry["default"])


def _norm_layers(model):
    """The names of the layers that normalise: every module with running statistics, and
    the per-sample norms."""
    kinds = (nn.GroupNorm, nn.InstanceNorm2d, zoo.norms.ilm.ILMNorm)
    return [name for name, m in model.named_modules()
            if "running_mean" in m._buffers or isinstance(m, kinds)]


@torch.no_grad()
def _randomise(model, seed=0):
    """Random running statistics and affine parameters, away from their initial 0s and 1s,
    so a fold that drops or misplaces one shows."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            if t.dim() != 1 or not t.is_floating_point():
                continue
            if name in ("running_var", "running_scale", "weight"):
                t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) * 1.5 + 0.5)
            elif name in ("running_mean", "bias"):
                t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * 0.5)
    return model


def _relative_error(out, expected):
    return float((out - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("arch", ["resnet20", "cifar_vgg11"])
@pytest.mark.parametrize("norm", NORMS)
def test_folded_model_equals_the_unfolded_one_in_float64(norm, arch):
    model = _randomise(zoo.create_model(f"{arch}_{norm}").double()).eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    folded, report = zoo.fold_norms(model)
    with torch.no_grad():
        assert _relative_error(folded(x), model(x)) <= 1e-10
    norms = _norm_layers(model)
    if norm in PER_SAMPLE:
        assert not report.folded and [n.split(" ")[0] for n, _ in report.kept] == norms
        assert all("per-sample" in why for _, why in report.kept)
        assert _norm_layers(folded) == norms
    else:
        assert not report.kept and [n.split(" ")[0] for n, _ in report.folded] == norms
        assert _norm_layers(folded) == []  # a plain model: convs, linears, ReLUs and pools
        assert all(isinstance(folded.get_submodule(n), nn.Identity) for n in norms)
    assert not any(parametrize.is_parametrized(m) for m in folded.modules())
    assert len(report.materialised) == (sum(isinstance(m, nn.Conv2d) for m in model.modules())
                                        if norm == "bwn" else 0)


def test_projection_shortcuts_and_logits_norm_fold():
    # resnet18's 1x1 shortcut conv + norm sits in a Sequential; MimicNorm's logits norm follows fc
    for name, into in (("resnet18_l1bn", "layer2.0.downsample.0"), ("resnet20_mimic", "fc")):
        model = _randomise(zoo.create_model(name).double()).eval()
        x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
        folded, report = zoo.fold_norms(model)
        assert into in [target for _, target in report.folded]
        with torch.no_grad():
            assert _relative_error(folded(x), model(x)) <= 1e-10


@pytest.mark.parametrize("model_name", DEFAULT_WEIGHTS)
def test_folding_shipped_weights_is_exact(model_name):
    model = zoo.create_model(model_name, weights="DEFAULT").eval()
    x = torch.randn(4, 3, 32, 32)
    folded, report = zoo.fold_norms(model.double())
    with torch.no_grad():
        assert _relative_error(folded(x.double()), model(x.double())) <= 1e-10
        # in float32, as deployed: the fold rounds once per weight
        folded32, _ = zoo.fold_norms(model.float())
        torch.testing.assert_close(folded32(x), model(x), rtol=1e-4, atol=1e-4)
    assert bool(report.folded) == (model_name.split("_")[1] not in PER_SAMPLE)


@pytest.mark.parametrize("norm", ["l1bn", "bwn", "mimic", "gn"])
def test_folded_model_exports_through_torch_export(norm):
    model = _randomise(zoo.create_model(f"resnet20_{norm}")).eval()
    folded, _ = zoo.fold_norms(model)
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(folded, (x,)).module()
    with torch.no_grad():
        assert torch.equal(exported(x), folded(x))


@pytest.mark.parametrize("norm", ["linfbn", "bwn", "mimic"])
def test_folded_model_exports_through_onnx(norm, tmp_path):
    model = _randomise(zoo.create_model(f"resnet20_{norm}")).eval()
    folded, _ = zoo.fold_norms(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    assert_onnx_matches(folded, x, tmp_path, expected)


def test_training_mode_is_refused():
    model = zoo.create_model("resnet20_bn").eval()
    model.layer2[0].bn1.train()  # one stray layer is enough to give stale statistics away
    with pytest.raises(ValueError, match=r"eval mode.*layer2\.0\.bn1 is in training mode.*model\.eval\(\)"):
        zoo.fold_norms(model)
    with pytest.raises(ValueError, match="eval mode"):
        zoo.fold_norms(model.train())


@pytest.mark.parametrize("norm", ["l1bn", "bwn", "mimic"])
def test_original_is_untouched_unless_inplace(norm):
    model = _randomise(zoo.create_model(f"resnet20_{norm}")).eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        folded, _ = zoo.fold_norms(model)
        assert folded is not model
        assert model.state_dict().keys() == before.keys()
        assert all(torch.equal(t, before[k]) for k, t in model.state_dict().items())
        assert torch.equal(model(x), expected)  # still runs: bwn's parametrization intact
    assert isinstance(model.bn1, nn.Identity) == (norm == "mimic")
    assert parametrize.is_parametrized(model.conv1) == (norm == "bwn")
    if norm == "bwn":
        assert isinstance(model.conv1.parametrizations.weight[0], BoundedWeightNorm)
    same, _ = zoo.fold_norms(model, inplace=True)
    assert same is model and not parametrize.is_parametrized(model.conv1)


def test_norms_without_a_conv_before_them_are_kept_and_said_why():
    conv = nn.Conv2d(3, 4, 3)
    model = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3), conv, nn.BatchNorm2d(4),
                          zoo.create_norm("l1bn", 4), nn.BatchNorm2d(4, track_running_stats=False))
    model = _randomise(model.double()).eval()
    folded, report = zoo.fold_norms(model)
    assert report.folded == [("3 (BatchNorm2d)", "2")]
    kept = dict(report.kept)
    assert "not the output of a conv" in kept["1 (BatchNorm2d)"]
    assert "not the output of a conv" in kept["4 (L1BatchNorm2d)"]  # its input is a folded norm's
    assert "no running statistics" in kept["5 (BatchNorm2d)"]
    assert "folded 1 norm(s), kept 3" in str(report)
    assert "kept, its input is not the output of a conv or linear layer that feeds only it (and each called once): 1 (BatchNorm2d), 4 (L1BatchNorm2d)" in str(report)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert _relative_error(folded(x), model(x)) <= 1e-10


def test_a_conv_output_used_twice_is_not_folded_into():
    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = _randomise(TwoUsers().double()).eval()
    folded, report = zoo.fold_norms(model)
    assert not report.folded and "feeds only it" in report.kept[0][1]


def test_unknown_norm_with_running_statistics_is_refused():
    class MyNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("running_mean", torch.zeros(3))

        def forward(self, x):
            return x - self.running_mean[:, None, None]

    model = nn.Sequential(nn.Conv2d(3, 3, 1), MyNorm()).eval()
    with pytest.raises(ValueError, match="does not know the norm type MyNorm"):
        zoo.fold_norms(model)
