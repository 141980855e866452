"""timm's and torchvision's model habits on every norm: feature extraction, the head contract,
gradient checkpointing and export."""

import copy

import pytest
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

import zoo
import zoo.heads

from conftest import assert_onnx_matches

NORMS = zoo.list_norms()
BATCH_NORMS = ["bn", "l1bn", "linfbn", "topkbn", "lpbn", "meanbn", "bwn"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _cifar_input(batch=2):
    return torch.randn(batch, 3, 32, 32)


@pytest.mark.parametrize("name", [f"resnet20_{n}" for n in NORMS] + ["cifar_vgg11_ilm",
                                                                      "resnet18_l1bn"])
def test_create_feature_extractor_works_with_no_arguments(name):
    model = zoo.create_model(name).eval()
    x = torch.randn(2, 3, 64, 64) if name.startswith("resnet18") else _cifar_input()
    stage = model.feature_info[-2]["module"]
    last = model.head_names()[-1]  # the classifier, or MimicNorm's logits norm after it
    extractor = create_feature_extractor(model, {stage: "stage", last: "logits"})
    seen = {}
    model.get_submodule(stage).register_forward_hook(lambda m, i, out: seen.update(stage=out))
    with torch.no_grad():
        expected = model(x)
        out = extractor(x)
    assert torch.equal(out["logits"], expected)
    assert torch.equal(out["stage"], seen["stage"])
    extractor.train()(x)["logits"].sum().backward()  # the training graph traces too
    with pytest.raises(ValueError, match="expects images"):
        extractor(torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("name", ["resnet20_mimic", "cifar_vgg11_bn", "resnet18_gn"])
def test_forward_features_and_forward_head_compose_to_forward(name):
    model = zoo.create_model(name).eval()
    x = torch.randn(2, 3, 64, 64) if name == "resnet18_gn" else _cifar_input()
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape[1] == model.feature_info[-1]["num_chs"]
        assert torch.equal(model.forward_head(features), model(x))
        pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (2, model.num_features)


@pytest.mark.parametrize("name, size", [("resnet18_gn", 64), ("resnet20_ilm", 32),
                                        ("cifar_resnet50_mimic", 32), ("cifar_vgg11_bn", 32)])
def test_features_only_returns_each_stage_with_its_feature_info(name, size):
    model = zoo.create_model(name, features_only=True)
    maps = model(torch.randn(2, 3, size, size))
    assert len(maps) == len(model.feature_info) >= 4
    for fmap, info in zip(maps, model.feature_info):
        assert fmap.shape == (2, info["num_chs"], size // info["reduction"], size // info["reduction"])
    assert model.config["features_only"] and model.config["name"] == name

    chosen = zoo.create_model(name, features_only=True, out_indices=(1, -1))
    assert [i["module"] for i in chosen.feature_info] == [model.feature_info[1]["module"],
                                                         model.feature_info[-1]["module"]]
    with pytest.raises(ValueError, match="out_indices must be stage indices 0..") as raised:
        zoo.create_model(name, features_only=True, out_indices=(9,))
    assert model.feature_info[0]["module"] in str(raised.value)
    with pytest.raises(ValueError, match="pass both"):
        zoo.create_model(name, out_indices=(1,))


def test_features_only_keeps_pretrained_weights():
    model = zoo.create_model("resnet20_bn", weights="DEFAULT").eval()
    features = zoo.create_model("resnet20_bn", weights="DEFAULT", features_only=True,
                                out_indices=(-1,)).eval()
    x = _cifar_input()
    with torch.no_grad():
        assert torch.equal(features(x)[0], model.forward_features(x))


@pytest.mark.parametrize("norm", NORMS)
def test_head_contract_and_reload_after_reset(norm, tmp_path):
    name = f"resnet20_{norm}"
    model = zoo.create_model(name).eval()
    assert model.get_classifier() is model.fc
    x = _cifar_input()

    model.reset_classifier(100)
    assert model.config["num_classes"] == 100 and model(x).shape == (2, 100)
    if model.logits_norm is not None:
        assert model.logits_norm.num_features == 100
    path = zoo.save_checkpoint(model, tmp_path / "100.safetensors", tag="t")
    reloaded = zoo.create_model(name, weights=path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))

    model.reset_classifier(0)  # timm: no classifier, the model returns pooled features
    assert model.config["num_classes"] == 0 and model.logits_norm is None
    with torch.no_grad():
        pooled = model(x)
        assert pooled.shape == (2, model.num_features)
        assert torch.equal(pooled, model.forward_head(model.forward_features(x), pre_logits=True))
    path = zoo.save_checkpoint(model, tmp_path / "0.safetensors", tag="t")
    reloaded = zoo.create_model(name, weights=path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), pooled)
    with pytest.raises(ValueError, match="non-negative integer"):
        model.reset_classifier(-1)


def test_head_contract_on_vgg_and_a_hand_swapped_classifier():
    vgg = zoo.create_model("cifar_vgg11_mimic").eval()
    assert vgg.get_classifier() is vgg.classifier[-1]
    vgg.reset_classifier(0)
    assert vgg(_cifar_input()).shape == (2, 4096) and vgg.head_names() == ["classifier.6"]
    assert zoo.create_model("cifar_vgg11_gn", num_classes=0)(_cifar_input()).shape == (2, 4096)

    mimic = zoo.create_model("resnet20_mimic").eval()
    mimic.fc = nn.Identity()  # the usual way to get features: the logits BN must not run
    assert mimic(_cifar_input()).shape == (2, 64)


def test_new_head_is_reset_classifier():
    model = zoo.create_model("resnet20_mimic", weights="DEFAULT", num_classes=100)
    assert model.config["num_classes"] == 100 and model.logits_norm.num_features == 100
    assert zoo.heads.head_keys(model) == ["fc.bias", "fc.weight", "logits_norm.num_batches_tracked",
                                           "logits_norm.running_mean", "logits_norm.running_var"]


@pytest.mark.parametrize("name", [f"resnet20_{n}" for n in BATCH_NORMS + ["gn", "ilm", "mimic"]]
                         + ["cifar_vgg11_linfbn"])
def test_grad_checkpointing_gives_equal_gradients_and_running_statistics(name):
    plain = zoo.create_model(name).double().train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing()
    x, y = _cifar_input(4).double(), torch.randint(0, 10, (4,))
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # the same dropout masks
        nn.functional.cross_entropy(model(x), y).backward()
    grads = dict(checkpointed.named_parameters())
    for key, p in plain.named_parameters():
        torch.testing.assert_close(grads[key].grad, p.grad, rtol=1e-12, atol=1e-14)
    buffers = dict(checkpointed.named_buffers())
    assert all(torch.equal(buffers[k], b) for k, b in plain.named_buffers())
    assert any("running" in k for k in buffers) == (name.split("_")[-1] in BATCH_NORMS + ["mimic"])
    checkpointed.set_grad_checkpointing(False)
    assert not checkpointed.grad_checkpointing


@pytest.mark.parametrize("norm", NORMS)
def test_torch_export_matches_eager_with_gradients_enabled(norm):
    model = zoo.create_model(f"resnet20_{norm}").eval()
    x = _cifar_input()
    exported = torch.export.export(model, (x,)).module()
    out = exported(x)  # as a default script runs it: gradients enabled
    assert torch.equal(out, model(x))


@pytest.mark.parametrize("norm", ["bn", "gn", "ilm", "mimic", "l1bn", "bwn"])
def test_onnx_export_matches_eager(norm, tmp_path):
    model = zoo.create_model(f"resnet20_{norm}").eval()
    x = _cifar_input()
    with torch.no_grad():
        expected = model(x)
    assert_onnx_matches(model, x, tmp_path, expected)
