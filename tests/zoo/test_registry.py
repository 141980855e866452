import pytest
import torch
from torch import nn

import zoo
from zoo import norms as norm_registry
from zoo.norms import NormSpec
from zoo.norms.common import group_count

IMAGENET_ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                  "vgg11", "vgg13", "vgg16", "vgg19"]
CIFAR_ARCHS = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
               "cifar_resnet18", "cifar_resnet50", "cifar_vgg11", "cifar_vgg16"]


def test_registered_names_are_the_documented_ones():
    assert sorted(zoo.list_archs()) == sorted(IMAGENET_ARCHS + CIFAR_ARCHS)
    assert zoo.list_norms() == ["bn", "gn", "in", "ln", "none", "ilm", "ilm_in", "ilm_ln", "mimic",
                                "l1bn", "linfbn", "topkbn", "lpbn", "meanbn", "bwn"]
    for arch in zoo.list_archs():
        spec = zoo.get_arch(arch)
        assert (spec.dataset, spec.num_classes) == (
            ("imagenet", 1000) if arch in IMAGENET_ARCHS else ("cifar", 10))


def test_every_name_parses_back_to_its_arch_and_norm():
    names = zoo.list_models()
    assert len(names) == len(set(names)) == len(zoo.list_archs()) * len(zoo.list_norms())
    for arch in zoo.list_archs():
        assert zoo.parse_model_name(arch) == (arch, "bn")
        for norm in zoo.list_norms():
            assert zoo.parse_model_name(f"{arch}_{norm}") == (arch, norm)


def test_names_parse_by_arch_prefix_not_by_underscores(monkeypatch):
    monkeypatch.setitem(norm_registry._NORMS, "gn_in",
                        NormSpec("gn_in", "test norm", "GroupNorm", lambda c: nn.GroupNorm(1, c)))
    assert zoo.parse_model_name("resnet20_gn_in") == ("resnet20", "gn_in")
    assert zoo.parse_model_name("cifar_resnet18_gn_in") == ("cifar_resnet18", "gn_in")
    assert zoo.parse_model_name("cifar_vgg16_none") == ("cifar_vgg16", "none")
    assert "cifar_vgg11_gn_in" in zoo.list_models()


def test_list_models_filters_by_pattern():
    bn = zoo.list_models("resnet*_bn")
    assert bn[:5] == ["resnet18_bn", "resnet34_bn", "resnet50_bn", "resnet101_bn", "resnet152_bn"]
    assert set(bn) == {f"resnet{d}_bn" for d in (18, 34, 50, 101, 152, 20, 32, 44, 56, 110)}
    assert zoo.list_models(["vgg11_*", "*_ln"]) == [
        n for n in zoo.list_models() if n.startswith("vgg11_") or n.endswith("_ln")]
    assert zoo.list_models("nothing*") == []


@pytest.mark.parametrize("call, match", [
    (lambda: zoo.create_model("resnet50_gm"), "resnet50_gn"),
    (lambda: zoo.create_model("resnt50"), "resnet50"),
    (lambda: zoo.create_model("resnet56", norm="gm"), "'gn'"),
    (lambda: zoo.get_arch("vgg17"), "vgg1"),
])
def test_unknown_names_list_close_matches(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_norm_in_name_and_argument_must_agree():
    assert zoo.create_model("resnet56", norm="gn").config["norm"] == "gn"
    assert zoo.create_model("resnet56_gn", norm="gn").config["name"] == "resnet56_gn"
    with pytest.raises(ValueError, match=r"create_model\('resnet56', norm='bn'\)"):
        zoo.create_model("resnet56_gn", norm="bn")


@pytest.mark.parametrize("kwargs", [{"weights": "DEFAULT"}, {"pretrained": True}])
def test_asking_for_unpublished_weights_names_the_model(kwargs):
    # The shipped manifest publishes nothing for the ImageNet GN ResNet-50.
    with pytest.raises(zoo.WeightsError, match="no pretrained weights are published for 'resnet50_gn'"):
        zoo.create_model("resnet50_gn", **kwargs)
    with pytest.raises(zoo.WeightsError, match="'resnet50_gn'.*weights='path/to/model.safetensors'"):
        zoo.resnet50_gn(**kwargs)


def test_bad_arguments_get_clear_errors():
    with pytest.raises(TypeError, match="unexpected keyword argument.*'depth'.*zero_init_residual"):
        zoo.create_model("resnet20", depth=3)
    with pytest.raises(TypeError, match="dropout"):
        zoo.create_model("vgg11", zero_init_residual=True)
    with pytest.raises(ValueError, match="norm 'gn' does not take 'groups'.*max_groups"):
        zoo.create_model("resnet20_gn", norm_kwargs={"groups": 4})
    for bad in (-3, True, "10", 2.0):
        with pytest.raises(ValueError, match="num_classes must be a non-negative integer"):
            zoo.create_model("resnet20", num_classes=bad)


def test_config_records_how_the_model_was_built():
    model = zoo.create_model("resnet56", norm="gn", num_classes=100)
    assert model.config == {
        "name": "resnet56_gn", "arch": "resnet56", "norm": "gn",
        "norm_kwargs": {"max_groups": 32, "min_group_channels": 2, "eps": 1e-5},
        "norm_rule": "GroupNorm(min(32, C // 2), C)", "num_classes": 100, "dataset": "cifar",
        "input_size": [3, 32, 32], "min_input_size": [3, 32, 32],
    }
    assert model.fc.out_features == 100
    cfg = zoo.create_model("resnet50_bn", zero_init_residual=True).config
    assert cfg["zero_init_residual"] is True and cfg["input_size"] == [3, 224, 224]


@pytest.mark.parametrize("name", ["resnet56_gn", "resnet50_gn", "vgg11_gn", "cifar_resnet18_gn"])
def test_group_norm_follows_the_group_rule(name):
    with torch.device("meta"):
        model = zoo.create_model(name)
    gns = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert gns
    for m in gns:
        assert m.num_groups == min(32, m.num_channels // 2)
    assert {m.num_groups for m in gns if m.num_channels == 16} <= {8}


def test_norm_kwargs_change_the_layers_and_the_config():
    with torch.device("meta"):
        model = zoo.create_model("resnet20_gn", norm_kwargs={"max_groups": 4, "eps": 1e-3})
    gns = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert all(m.num_groups == 4 and m.eps == 1e-3 for m in gns)
    assert model.config["norm_kwargs"] == {"max_groups": 4, "min_group_channels": 2, "eps": 1e-3}


def test_layer_norm_is_one_group_and_instance_norm_is_affine():
    with torch.device("meta"):
        ln, inorm = zoo.create_model("resnet20_ln"), zoo.create_model("resnet20_in")
    assert all(m.num_groups == 1 for m in ln.modules() if isinstance(m, nn.GroupNorm))
    ins = [m for m in inorm.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert ins and all(m.affine and not m.track_running_stats for m in ins)


def test_group_count_rejects_uneven_splits():
    assert group_count(16, 32, 2) == 8 and group_count(64, 32, 2) == 32
    with pytest.raises(ValueError, match=r"cannot split 70 channels into groups = min\(32, 70 // 2\) = 32"):
        group_count(70, 32, 2)


def test_builders_are_keyword_only_and_documented():
    builder = zoo.resnet50_gn
    assert builder.__name__ == "resnet50_gn"
    for text in ("ResNet-50", "Group Normalization", "GroupNorm(min(32, C // 2), C)", ">= 64"):
        assert text in builder.__doc__
    with pytest.raises(TypeError):
        builder(None)
    with torch.device("meta"):
        assert builder(num_classes=10).config["num_classes"] == 10
        assert zoo.resnet50(num_classes=3).config["name"] == "resnet50_bn"
    assert "Alias of ``resnet50_bn``" in zoo.resnet50.__doc__
    from zoo import cifar_vgg16_none  # noqa: F401  (module-level builders import by name)
    with pytest.raises(AttributeError):
        zoo.resnet51_gn


def test_register_norm_rejects_duplicates_and_bad_names():
    with pytest.raises(ValueError, match="already registered"):
        zoo.register_norm(zoo.get_norm("bn"))
    with pytest.raises(ValueError, match="lower-case identifiers"):
        zoo.register_norm(NormSpec("Bad-Name", "x", "x", lambda c: None))
