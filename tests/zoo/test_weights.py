"""Pretrained weights: checkpoints, the manifest, create_model(weights=...), errors, packaging.

Everything runs offline on real CIFAR-10 images: models take a few SGD steps so that running
statistics, ILM encoders and MimicNorm's logits norm hold trained values, are saved with
``zoo.save_checkpoint`` and come back bit for bit. Manifests are temporary
(``NORMZOO_MANIFEST``); the package's own manifest is only read.
"""

import json
import logging
import os
import pickle
import shutil
import stat
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2

import zoo
import zoo.cli
import zoo.heads
import zoo.hub
import zoo.preprocessing
import zoo.weights
from zoo.data import CIFAR10_CLASSES, CIFAR_MEAN, CIFAR_STD, load_cifar
from zoo.weights import WeightsError

from conftest import REPO

METRICS = {"top1": 12.5, "top5": 55.0, "split": "cifar10-test[:1000]", "num_images": 1000}
RECIPE = {"command": "python -m train --model resnet20_bn --epochs 0", "commit": "ab" * 20}


# ---------------------------------------------------------------------------------------------
# Shared fixtures and helpers


@pytest.fixture(scope="module")
def cifar(data_root):
    """16 real CIFAR-10 test images: uint8, normalised float, labels."""
    data = load_cifar(data_root / "cifar10", "test")
    raw = data.images[:16]
    x = raw.float() / 255
    x = (x - torch.tensor(CIFAR_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR_STD).view(3, 1, 1)
    return raw, x, data.labels[:16], data.classes


def _train(model, x, y, steps=2, lr=0.0125):
    """A few SGD steps in train mode (MimicNorm with its weight-mean projection); then eval."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    if model.config["norm"] == "mimic":
        zoo.attach_weight_mean(model, optimizer)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def _trained(name, cifar, seed=0, steps=2, size=32, **kwargs):
    torch.manual_seed(seed)
    model = zoo.create_model(name, **kwargs)
    _, x, y, _ = cifar
    if size != 32:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return _train(model, x, y, steps)


def _assert_same_state(a, b):
    sa = a if isinstance(a, dict) else a.state_dict()
    sb = b if isinstance(b, dict) else b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


def _changed_keys(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


def _out(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def bn_ckpt(cifar, tmp_path_factory):
    """A trained resnet20_bn and its checkpoint (tag cifar10) with metrics and recipe."""
    model = _trained("resnet20_bn", cifar)
    path = zoo.save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "resnet20_bn.cifar10.safetensors",
                               tag="cifar10", metrics=METRICS, recipe=RECIPE)
    return model, path


def _register(model, tmp_path, tag, **kwargs):
    path = zoo.save_checkpoint(model, tmp_path / f"{model.config['name']}.{tag}.safetensors",
                               tag=tag, metrics=METRICS, recipe=RECIPE)
    return zoo.hub.register(path, **kwargs)


# ---------------------------------------------------------------------------------------------
# 1. Round trips


@pytest.mark.parametrize("norm", zoo.list_norms())
def test_round_trip_every_norm(norm, cifar, tmp_path):
    name = f"resnet20_{norm}"
    model = _trained(name, cifar)
    torch.manual_seed(0)
    fresh = zoo.create_model(name).eval()
    changed = _changed_keys(model, fresh)
    # the trained state is not the initial one: every running statistic and most tensors moved
    assert len(changed) > len(model.state_dict()) // 2, changed
    assert all(k in changed for k in model.state_dict() if "running_" in k)

    path = zoo.save_checkpoint(model, tmp_path / "ckpt.safetensors", tag="test", metrics=METRICS)
    meta = zoo.weights.read_metadata(path)
    assert (meta["name"], meta["model"], meta["architecture"], meta["norm"], meta["tag"]) == \
        (f"{name}.test", name, "resnet20", norm, "test")
    assert meta["norm_kwargs"] == model.config["norm_kwargs"]
    assert meta["num_classes"] == 10 and meta["dataset"] == "cifar10"
    assert meta["metrics"] == METRICS

    loaded = zoo.create_model(name, weights=path)
    _, x, _, _ = cifar
    out = _out(model, x)
    assert torch.equal(_out(loaded, x), out)
    assert not torch.equal(_out(fresh, x), out)
    _assert_same_state(loaded, model)
    assert loaded.config["weights"] == str(path)
    assert loaded.config.get("preprocessing", meta["preprocessing"]) == meta["preprocessing"]
    skip = ("weights", "preprocessing")
    assert {k: v for k, v in loaded.config.items() if k not in skip} == \
        {k: v for k, v in model.config.items() if k not in skip}

    state, meta2 = zoo.read_checkpoint(path)
    _assert_same_state(state, model)
    assert meta2 == meta


def test_round_trip_restores_norm_kwargs_and_options(cifar, tmp_path):
    model = _trained("resnet20_gn", cifar, norm_kwargs={"eps": 1e-3}, zero_init_residual=True)
    path = zoo.save_checkpoint(model, tmp_path / "gn.safetensors", tag="x")
    loaded = zoo.create_model("resnet20_gn", weights=path)  # no kwargs: the file has them
    assert loaded.config["norm_kwargs"]["eps"] == 1e-3
    assert loaded.config["zero_init_residual"] is True
    assert loaded.layer1[0].bn1.eps == 1e-3
    assert torch.equal(_out(loaded, cifar[1]), _out(model, cifar[1]))
    with pytest.raises(WeightsError, match="norm_kwargs"):
        zoo.create_model("resnet20_gn", weights=path, norm_kwargs={"eps": 1e-5})


@pytest.mark.parametrize("name", ["resnet18_bn", "vgg11_bn"])
def test_round_trip_imagenet_arch(name, cifar, tmp_path):
    torch.manual_seed(0)
    model = zoo.create_model(name, num_classes=10)
    if name.startswith("vgg"):  # 120M classifier weights: train the conv features only (speed)
        model.classifier.requires_grad_(False)
    x = F.interpolate(cifar[1][:8], size=64, mode="bilinear", align_corners=False)
    _train(model, x, cifar[2][:8], steps=1)
    model.requires_grad_(True)
    path = zoo.save_checkpoint(model, tmp_path / "ckpt.safetensors", tag="test")
    assert zoo.weights.read_metadata(path)["preprocessing"]["crop"] == 224
    loaded = zoo.create_model(name, weights=path)
    assert loaded.config["num_classes"] == 10
    out = _out(model, x)
    assert out.shape == (8, 10)
    assert torch.equal(_out(loaded, x), out)
    _assert_same_state(loaded, model)


def test_every_way_to_name_manifest_weights(bn_ckpt, manifest, tmp_path):
    model, path = bn_ckpt
    entry = zoo.hub.register(path, ship=True)
    shipped = manifest.parent / "pretrained" / "resnet20_bn.cifar10.safetensors"
    assert entry["shipped"] == "pretrained/resnet20_bn.cifar10.safetensors" and shipped.is_file()
    assert entry["default"] is True and entry["revision"] == "unpublished"
    assert entry["sha256"] == zoo.weights.sha256sum(path) == zoo.weights.sha256sum(shipped)
    assert entry["num_params"] == sum(p.numel() for p in model.parameters())
    assert zoo.list_weights() == ["resnet20_bn.cifar10"] == zoo.list_weights("resnet20_*")
    assert zoo.list_weights("resnet56*") == []
    assert zoo.get_weight("resnet20_bn.cifar10").fetch(progress=False) == shipped

    enum_cls = zoo.get_model_weights("resnet20_bn")
    assert issubclass(enum_cls, torchvision.models.WeightsEnum)
    assert enum_cls.DEFAULT.value == enum_cls.CIFAR10.value == zoo.get_weight("resnet20_bn.cifar10")
    # torchvision's member API, delegated to Weights (the README's "Pretrained weights" use)
    assert enum_cls.DEFAULT.meta["metrics"] == METRICS and enum_cls.DEFAULT.url is None
    assert isinstance(enum_cls.DEFAULT.transforms(), torchvision.transforms.v2.Compose)
    assert enum_cls.DEFAULT.tag == "cifar10" and enum_cls.DEFAULT.fetch(progress=False) == shipped
    assert enum_cls.verify("CIFAR10") is enum_cls.verify(enum_cls.DEFAULT) is enum_cls.DEFAULT
    torch.testing.assert_close(enum_cls.DEFAULT.get_state_dict(progress=False), model.state_dict())
    folder = zoo.hub.build_folder("resnet20_bn.cifar10", tmp_path / "hub-folder", progress=False)
    assert json.loads((folder / "config.json").read_text())["label_names"] == CIFAR10_CLASSES

    ways = ["DEFAULT", "cifar10", "resnet20_bn.cifar10", zoo.get_weight("resnet20_bn.cifar10"),
            enum_cls.DEFAULT, enum_cls.CIFAR10, folder, str(folder), str(folder / "model.safetensors")]
    for way in ways:
        loaded = zoo.create_model("resnet20_bn", weights=way, progress=False)
        _assert_same_state(loaded, model)
    # the bare architecture name and the torchvision-style builder too
    _assert_same_state(zoo.create_model("resnet20", weights="DEFAULT"), model)
    _assert_same_state(zoo.get_builder("resnet20_bn")(weights="cifar10"), model)
    assert zoo.create_model("resnet20_bn", weights="DEFAULT").config["weights"] == "resnet20_bn.cifar10"


# ---------------------------------------------------------------------------------------------
# 2. Fine-tuning: another num_classes


@pytest.mark.parametrize("name, head, head_in", [("resnet20_mimic", "fc", 64),
                                                 ("cifar_vgg11_mimic", "classifier.6", 4096),
                                                 ("resnet20_bn", "fc", 64)])
def test_new_num_classes_keeps_backbone(name, head, head_in, cifar, tmp_path, caplog):
    model = _trained(name, cifar, steps=1)
    path = zoo.save_checkpoint(model, tmp_path / "ckpt.safetensors", tag="x")
    saved, _ = zoo.read_checkpoint(path)
    with caplog.at_level(logging.WARNING, logger="zoo"):
        tuned = zoo.create_model(name, weights=path, num_classes=5)
    state = tuned.state_dict()
    new = {f"{head}.weight", f"{head}.bias"}
    if "mimic" in name:
        new |= {"logits_norm.running_mean", "logits_norm.running_var",
                "logits_norm.num_batches_tracked"}
    assert set(state) == set(saved)
    for k in set(saved) - new:
        assert torch.equal(state[k], saved[k]), k
    assert state[f"{head}.weight"].shape == (5, head_in) and state[f"{head}.bias"].shape == (5,)
    if "mimic" in name:
        assert tuned.logits_norm is not model.logits_norm
        assert state["logits_norm.running_mean"].shape == (5,)
        assert state["logits_norm.running_var"].shape == (5,)
        assert saved["logits_norm.num_batches_tracked"] > 0
        assert state["logits_norm.num_batches_tracked"] == 0  # fresh, not the trained one
    assert tuned.config["num_classes"] == 5
    assert _out(tuned, cifar[1]).shape == (16, 5)

    records = [r for r in caplog.records if r.name == "zoo" and r.levelno == logging.WARNING]
    assert len(records) == 1, [r.getMessage() for r in records]
    message = records[0].getMessage()
    for k in new - {"logits_norm.num_batches_tracked"}:
        assert k in message, (k, message)
    assert "5-class" in message
    backbone = [k for k in saved if k not in new]
    assert not any(k in message for k in backbone if not k.startswith(head))

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zoo"):
        same = zoo.create_model(name, weights=path, num_classes=10)  # same count: no new head
    assert not [r for r in caplog.records if r.name == "zoo"]
    _assert_same_state(same, model)


# ---------------------------------------------------------------------------------------------
# 3. pretrained=True


def test_pretrained_is_the_first_entry_and_warns_once(bn_ckpt, cifar, manifest, tmp_path, monkeypatch):
    first, _ = bn_ckpt
    second = _trained("resnet20_bn", cifar, seed=1)
    _register(first, tmp_path, "first", ship=True)
    _register(second, tmp_path, "second", default=True, ship=True)
    entries = zoo.weights.load_manifest()["weights"]
    assert [(e["tag"], e["default"]) for e in entries] == [("first", False), ("second", True)]
    monkeypatch.setattr(zoo.weights.api, "PRETRAINED_WARNED", set())

    with pytest.warns(UserWarning, match="resnet20_bn.first"):
        model = zoo.create_model("resnet20_bn", pretrained=True)
    _assert_same_state(model, first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = zoo.create_model("resnet20_bn", pretrained=True)
    _assert_same_state(again, first)
    _assert_same_state(zoo.create_model("resnet20_bn", weights="DEFAULT"), second)

    with pytest.raises(ValueError, match="either weights=... or pretrained=True"):
        zoo.create_model("resnet20_bn", pretrained=True, weights="DEFAULT")
    with pytest.raises(WeightsError, match="no pretrained weights are published for 'resnet20_gn'"):
        zoo.create_model("resnet20_gn", pretrained=True)


# ---------------------------------------------------------------------------------------------
# 4. Bad inputs


def test_file_of_another_model_is_refused(bn_ckpt, tmp_path):
    _, path = bn_ckpt
    with pytest.raises(WeightsError, match="holds weights of resnet20_bn, not resnet20_gn"):
        zoo.create_model("resnet20_gn", weights=path)
    with pytest.raises(WeightsError, match="holds weights of resnet20_bn, not resnet32_bn"):
        zoo.create_model("resnet32", weights=path)


def test_metadata_free_files_are_refused(bn_ckpt, tmp_path):
    """A bare state dict names no model: even where its tensors fit (another norm's often do),
    nothing would check they are the model's (issue 29: H6)."""
    from safetensors.torch import save_file

    model, _ = bn_ckpt
    bare = tmp_path / "bare.safetensors"
    save_file(model.state_dict(), str(bare))
    assert zoo.weights.read_metadata(bare) == {}
    for name in ("resnet20_bn", "resnet20_gn"):
        with pytest.raises(WeightsError, match="does not name its model in its metadata"):
            zoo.create_model(name, weights=bare)


def test_unknown_names_and_tags(bn_ckpt, manifest):
    zoo.hub.register(bn_ckpt[1])
    with pytest.raises(WeightsError, match="published weights: resnet20_bn.cifar10"):
        zoo.get_weight("resnet56_bn.imagenet")
    with pytest.raises(WeightsError, match="published weights: resnet20_bn.cifar10"):
        zoo.create_model("resnet56_bn", weights="resnet56_bn.imagenet")
    with pytest.raises(WeightsError, match="resnet20_bn has: cifar10"):
        zoo.get_weight("resnet20_bn.imagenet")
    with pytest.raises(WeightsError, match="no weights tagged 'imagenet'; available tags: cifar10"):
        zoo.create_model("resnet20_bn", weights="imagenet")
    with pytest.raises(WeightsError) as err:
        zoo.create_model("resnet20_gn", weights="DEFAULT")
    message = str(err.value)
    assert "no pretrained weights are published for 'resnet20_gn'" in message
    assert "weights='path/to/model.safetensors'" in message and "resnet20_bn" in message
    with pytest.raises(WeightsError, match="are for resnet20_bn, not resnet20_gn"):
        zoo.create_model("resnet20_gn", weights=zoo.get_weight("resnet20_bn.cifar10"))
    with pytest.raises(WeightsError, match="are for resnet20_bn, not resnet20_gn"):
        zoo.create_model("resnet20_gn", weights="resnet20_bn.cifar10")
    with pytest.raises(TypeError, match="weights must be"):
        zoo.create_model("resnet20_bn", weights=3)


class _Marker:
    """Unpickling this creates a file: proof that a loader ran the pickle."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_pickles_are_refused_without_unpickling(kind, tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "evil.pth"
    payload = {"conv1.weight": _Marker(marker)}
    if kind == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    assert not marker.exists()
    for weights in (path, str(path)):
        with pytest.raises(WeightsError) as err:
            zoo.create_model("resnet20_bn", weights=weights)
        assert "not a readable safetensors file" in str(err.value)
        assert "never pickles" in str(err.value)
    with pytest.raises(WeightsError):
        zoo.read_checkpoint(path)
    assert not marker.exists()
    # the marker does work when really unpickled (so the check above could fail)
    pickle.loads(pickle.dumps(_Marker(marker))).close()
    assert marker.exists()


def test_truncated_and_missing_files(bn_ckpt, tmp_path):
    _, path = bn_ckpt
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 20):
        truncated = tmp_path / f"cut{cut}.safetensors"
        truncated.write_bytes(data[:cut])
        with pytest.raises(WeightsError, match="not a readable safetensors file") as err:
            zoo.create_model("resnet20_bn", weights=truncated)
        assert "truncated" in str(err.value)
    missing = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(WeightsError, match="does not exist"):
        zoo.create_model("resnet20_bn", weights=str(missing))
    with pytest.raises(WeightsError, match="does not exist"):
        zoo.create_model("resnet20_bn", weights=missing)
    with pytest.raises(WeightsError, match="folder without model.safetensors"):
        zoo.create_model("resnet20_bn", weights=tmp_path)


# ---------------------------------------------------------------------------------------------
# 5. The manifest schema and check_files


def test_package_manifest_is_valid(monkeypatch):
    monkeypatch.delenv("NORMZOO_MANIFEST", raising=False)
    assert zoo.weights.manifest_path() == zoo.weights.MANIFEST_PATH
    assert zoo.weights.MANIFEST_PATH.parent == Path(zoo.__file__).resolve().parent  # zoo's package data
    raw = json.loads(zoo.weights.MANIFEST_PATH.read_text())
    assert zoo.weights.validate_manifest(raw) == []
    assert zoo.weights.load_manifest() == raw
    assert zoo.list_weights() == [e["name"] for e in raw["weights"]]
    for e in raw["weights"]:  # every shipped copy is there, with the manifest's bytes
        if e["shipped"]:
            path = zoo.weights.MANIFEST_PATH.parent / e["shipped"]
            assert zoo.weights.sha256sum(path) == e["sha256"], e["name"]
            assert path.stat().st_size == e["size_bytes"], e["name"]


def test_manifest_entries_round_trip_through_the_dataclass(tmp_path):
    """ManifestEntry's fields are the schema: every shipped entry types and comes back as it
    was, and the manifest written from the typed entries has the same bytes."""
    raw = json.loads(zoo.weights.MANIFEST_PATH.read_text())
    typed = [zoo.weights.ManifestEntry.from_dict(e) for e in raw["weights"]]
    assert [list(t.to_dict()) for t in typed] == [list(zoo.weights.ENTRY_KEYS)] * len(typed)
    assert [t.to_dict() for t in typed] == raw["weights"]
    path = zoo.weights.write_manifest({"schema_version": 1, "weights": [t.to_dict() for t in typed]},
                                      tmp_path / "weights_manifest.json")
    assert path.read_bytes() == zoo.weights.MANIFEST_PATH.read_bytes()
    with pytest.raises(WeightsError, match="missing key license"):
        zoo.weights.ManifestEntry.from_dict({k: v for k, v in raw["weights"][0].items()
                                             if k != "license"})


def test_validate_manifest_rejects_bad_entries(bn_ckpt, manifest):
    entry = zoo.hub.register(bn_ckpt[1])
    assert sorted(entry) == sorted(zoo.weights.ENTRY_KEYS)
    good = {"schema_version": 1, "weights": [entry]}
    assert zoo.weights.validate_manifest(good) == []

    def problems(**change):
        bad = dict(entry, **change)
        for k in [k for k, v in change.items() if v is _DROP]:
            del bad[k]
        return "\n".join(zoo.weights.validate_manifest({"schema_version": 1, "weights": [bad]}))

    assert "unknown key extra" in problems(extra=1)
    assert "missing key license" in problems(license=_DROP)
    assert "revision must be a 40-hex commit" in problems(revision="main")
    assert problems(revision="0123456789abcdef0123456789abcdef01234567") == ""
    assert "sha256 must be 64 lowercase hex" in problems(sha256="ABC")
    assert "sha256 must be 64 lowercase hex" in problems(sha256=entry["sha256"].upper())
    assert "name must be '{model}.{tag}'" in problems(name="resnet20_bn.other")
    assert "unknown model" in problems(model="resnet99_bn")
    assert "is resnet20 + gn" in problems(model="resnet20_gn", name="resnet20_gn.cifar10")
    assert "num_classes must be a positive integer" in problems(num_classes=True)
    assert "missing key metrics.top5" in problems(metrics={"top1": 1, "split": "x", "num_images": 1})
    assert "mirror_url" in problems(mirror_url="ftp://example.org/x")

    other = dict(entry, name="resnet20_bn.other", tag="other", default=True)
    two = "\n".join(zoo.weights.validate_manifest({"schema_version": 1, "weights": [entry, other]}))
    assert "a second default for resnet20_bn" in two
    dup = "\n".join(zoo.weights.validate_manifest({"schema_version": 1, "weights": [entry, entry]}))
    assert "duplicate name" in dup
    assert zoo.weights.validate_manifest({"schema_version": 2, "weights": []})
    assert zoo.weights.validate_manifest({"weights": []})

    # write_manifest refuses, and leaves the file as it was
    before = manifest.read_text()
    with pytest.raises(WeightsError, match="refusing to write an invalid manifest"):
        zoo.weights.write_manifest({"schema_version": 1, "weights": [dict(entry, revision="main")]})
    assert manifest.read_text() == before
    # an invalid manifest on disk is refused on load
    manifest.write_text(json.dumps({"schema_version": 1, "weights": [dict(entry, revision="main")]}))
    with pytest.raises(WeightsError, match="is invalid"):
        zoo.list_weights()
    manifest.write_text("{not json")
    with pytest.raises(WeightsError, match="not valid JSON"):
        zoo.list_weights()


_DROP = object()


@pytest.mark.parametrize("key", ["size_bytes", "sha256", "num_params", "gmacs"])
def test_check_files_flags_doctored_figures(key, bn_ckpt, manifest):
    entry = zoo.hub.register(bn_ckpt[1], ship=True)
    assert entry["gmacs"] == pytest.approx(0.0406, abs=2e-4)  # ResNet-20 at 32x32: 40.6M MACs
    assert zoo.hub.check_files() == []
    data = json.loads(manifest.read_text())
    doctored = {"size_bytes": entry["size_bytes"] + 1, "sha256": "0" * 64,
                "num_params": entry["num_params"] - 1, "gmacs": round(entry["gmacs"] * 2, 4)}[key]
    data["weights"][0][key] = doctored
    manifest.write_text(json.dumps(data))
    problems = zoo.hub.check_files()
    assert len(problems) == 1, problems
    assert problems[0].startswith("resnet20_bn.cifar10:") and key in problems[0]
    if key != "sha256":
        assert f"{doctored!r} in the manifest" in problems[0]


# ---------------------------------------------------------------------------------------------
# 6. A tampered shipped copy


def test_tampered_shipped_copy_is_refused(bn_ckpt, manifest, monkeypatch):
    import safetensors.torch

    zoo.hub.register(bn_ckpt[1], ship=True)
    shipped = manifest.parent / "pretrained" / "resnet20_bn.cifar10.safetensors"
    data = bytearray(shipped.read_bytes())
    data[-100] ^= 0xFF  # a byte of tensor data: still a readable safetensors file
    shipped.write_bytes(bytes(data))
    zoo.read_checkpoint(shipped)  # readable, so only the sha256 check can stop it

    loads = []
    real_load_model = safetensors.torch.load_model
    monkeypatch.setattr(safetensors.torch, "load_model",
                        lambda *a, **k: loads.append(a) or real_load_model(*a, **k))
    for weights in ("DEFAULT", "cifar10", "resnet20_bn.cifar10"):
        with pytest.raises(WeightsError) as err:
            zoo.create_model("resnet20_bn", weights=weights)
        message = str(err.value)
        assert "could not get a verified copy of resnet20_bn.cifar10" in message
        assert "sha256" in message and str(shipped) in message
        assert "not published anywhere yet" in message and "weights='path/to/" in message
    assert loads == []  # never built from the bad bytes
    with pytest.raises(WeightsError, match="sha256"):
        zoo.get_weight("resnet20_bn.cifar10").get_state_dict()
    problems = zoo.hub.check_files()
    assert len(problems) == 1 and "sha256" in problems[0]

    shipped.unlink()
    with pytest.raises(WeightsError, match="missing"):
        zoo.create_model("resnet20_bn", weights="DEFAULT")


# ---------------------------------------------------------------------------------------------
# 7. transforms() and meta


def test_transforms_and_meta(bn_ckpt, cifar, manifest):
    model, path = bn_ckpt
    zoo.hub.register(path)
    w = zoo.get_weight("resnet20_bn.cifar10")
    raw, x, _, classes = cifar
    tf = w.transforms()
    for i in range(3):
        out = tf(raw[i])
        assert out.dtype == torch.float32 and out.shape == (3, 32, 32)
        torch.testing.assert_close(out, x[i], atol=1e-6, rtol=0)
    torch.testing.assert_close(tf(raw[:4]), x[:4], atol=1e-6, rtol=0)  # batched too
    torch.testing.assert_close(_out(model, tf(raw)), _out(model, x), atol=1e-4, rtol=0)

    meta = w.meta
    assert meta["metrics"] == METRICS
    # What the file did not record (the run's summary) is known to be unknown, not invented.
    assert meta["recipe"] == {**dict.fromkeys(zoo.weights.RECIPE_KEYS), **RECIPE}
    assert meta["num_params"] == sum(p.numel() for p in model.parameters())
    assert meta["categories"] == CIFAR10_CLASSES == classes
    assert meta["categories_ref"] == "cifar10" and meta["num_classes"] == 10
    assert meta["preprocessing"]["mean"] == pytest.approx(CIFAR_MEAN)
    assert "resnet20_bn.cifar10" in repr(w) and "12.5" in repr(w)


def test_imagenet_style_transforms():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    pre = zoo.preprocessing.default_preprocessing(zoo.create_model("resnet18_bn"))
    assert (pre["resize"], pre["crop"], pre["input_size"]) == (256, 224, [3, 224, 224])
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    entry = {"preprocessing": pre}
    out = zoo.weights.Weights(entry, REPO).transforms()(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    ref = TF.center_crop(TF.resize(image, 256, interpolation=InterpolationMode.BILINEAR,
                                   antialias=True), 224).float() / 255
    ref = (ref - torch.tensor(pre["mean"]).view(3, 1, 1)) / torch.tensor(pre["std"]).view(3, 1, 1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    tall = torch.randint(0, 256, (2, 3, 500, 240), dtype=torch.uint8)
    assert zoo.preprocessing.eval_transforms(pre)(tall).shape == (2, 3, 224, 224)


@pytest.mark.parametrize("name, module", [
    ("eval_transforms", zoo.preprocessing), ("default_preprocessing", zoo.preprocessing),
    ("new_head", zoo.heads), ("head_keys", zoo.heads), ("git_commit", zoo.cli)])
def test_moved_helpers_keep_their_old_path_for_a_release(name, module):
    with pytest.warns(DeprecationWarning, match=f"zoo.weights.{name} moved to {module.__name__}.{name}"):
        assert getattr(zoo.weights, name) is getattr(module, name)
    with pytest.warns(DeprecationWarning):
        exec(f"from zoo.weights import {name}", {})
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        zoo.weights.no_such_name


# ---------------------------------------------------------------------------------------------
# 8. GMACs


def test_count_gmacs_matches_published_figures():
    from torch.utils.flop_counter import FlopCounterMode
    import torchvision

    resnet50 = zoo.create_model("resnet50_bn").train()
    before = {k: v.clone() for k, v in resnet50.state_dict().items()}
    gmacs50 = zoo.hub.count_gmacs(resnet50, (3, 224, 224))
    assert gmacs50 == pytest.approx(4.09, abs=0.02)  # torchvision's published ResNet-50 figure
    assert resnet50.training  # mode restored, nothing changed
    _assert_same_state(resnet50, before)
    assert zoo.hub.count_gmacs(zoo.create_model("resnet18_bn"), (3, 224, 224)) == \
        pytest.approx(1.81, abs=0.02)

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        torchvision.models.resnet50().eval()(torch.zeros(1, 3, 224, 224))
    assert gmacs50 == pytest.approx(counter.get_total_flops() / 2 / 1e9, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# 9. Packaging


def test_wheel_ships_the_manifest_and_checkpoints(bn_ckpt, tmp_path):
    src = tmp_path / "src"  # a copy, so the build writes nothing into the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "setup.py", "setup.cfg", "MANIFEST.in", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "zoo", src / "zoo", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (src / "zoo" / "pretrained").mkdir(exist_ok=True)
    shutil.copy(bn_ckpt[1], src / "zoo" / "pretrained" / "resnet20_bn.test.safetensors")
    out = tmp_path / "wheels"
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "-q", "-w", str(out), str(src)], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("normzoo-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert {"zoo/weights_manifest.json", "zoo/hub.py", "zoo/registry.py",
                "zoo/pretrained/resnet20_bn.test.safetensors"} <= names
        assert {f"zoo/weights/{p.name}" for p in (REPO / "zoo" / "weights").glob("*.py")} <= names
        info = zf.getinfo("zoo/weights_manifest.json")
        mode = info.external_attr >> 16
        assert mode == 0 or stat.S_ISREG(mode), oct(mode)  # a regular file, not a link
        shipped = json.loads(zf.read("zoo/weights_manifest.json"))
        assert shipped == json.loads((REPO / "zoo" / "weights_manifest.json").read_text())
        assert zoo.weights.validate_manifest(shipped) == []
        assert zf.read("zoo/pretrained/resnet20_bn.test.safetensors") == bn_ckpt[1].read_bytes()
        assert not any(n.startswith(("tests/", "train/", "eval/")) for n in names)
