"""zoo.deploy: int8 post-training quantization (torchao's PT2E flow, the [deploy] extra) and
writing a deployable file."""

import sys
import zipfile

import pytest
import torch
from torch import nn

import zoo
from zoo.data import load_cifar
from zoo.deploy import quantize_int8, save_model
from zoo.preprocessing import eval_transforms

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def images(data_root):
    """64 real CIFAR-10 test images, preprocessed as the shipped ResNet-20s expect."""
    model = zoo.create_model("resnet20_bn", weights="DEFAULT")
    return eval_transforms(model.config["preprocessing"])(
        load_cifar(data_root / "cifar10", "test").images[:64]).as_subclass(torch.Tensor)


# Without the extra


def test_int8_without_torchao_says_which_extra_to_install(monkeypatch, images):
    for name in [m for m in sys.modules if m.split(".")[0] == "torchao"] + ["torchao"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed, imported or not
    model = zoo.create_model("resnet20_bn").eval()
    with pytest.raises(ImportError, match=r'needs torchao.*pip install -e "\.\[deploy\]"'):
        quantize_int8(model, [images[:8]])


def test_int8_refuses_training_mode_and_batches_that_are_not_images(images):
    model = zoo.create_model("resnet20_bn")
    with pytest.raises(ValueError, match=r"eval mode.*model\.eval\(\)"):
        quantize_int8(model, [images[:8]])
    with pytest.raises(ValueError, match=r"float image tensors \(N, C, H, W\).*got a torch\.uint8 tensor"):
        quantize_int8(model.eval(), [torch.zeros(2, 3, 32, 32, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="no calibration batch"):
        quantize_int8(model.eval(), [])


def test_save_model_writes_only_complete_files_of_known_formats(tmp_path, images):
    model = zoo.create_model("resnet20_l1bn", weights="DEFAULT").eval()
    with pytest.raises(ValueError, match=r"extension must be \.pt2 or \.onnx"):
        save_model(model, images[:2], tmp_path / "model.pt")
    size = save_model(zoo.fold_norms(model)[0], images[:2], tmp_path / "model.pt2")
    assert size == (tmp_path / "model.pt2").stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"]  # no partial file left
    with zipfile.ZipFile(tmp_path / "model.pt2") as archive:  # a PT2 archive (not unpickled here)
        assert any(name.endswith(".json") and "/models/" in name for name in archive.namelist())


# With the extra


@pytest.mark.parametrize("name", ["resnet20_l1bn", "resnet20_ilm"])
def test_int8_model_keeps_its_predictions_and_reports_float_layers(name, images):
    pytest.importorskip("torchao")
    model = zoo.create_model(name, weights="DEFAULT").eval()
    quantized, report = quantize_int8(model, [(images[:32], None), (images[32:48], None)])
    assert report.calibration_images == 48 and report.int8_layers == 20  # 19 convs and the fc
    int8 = [t for t in quantized.state_dict().values() if t.dtype == torch.int8]
    assert len(int8) == 20
    float_weights = [k for k, t in quantized.state_dict().items() if t.dim() == 4 and t.is_floating_point()]
    assert float_weights == []  # the float copies convert_pt2e leaves behind are gone
    if name == "resnet20_ilm":
        assert len(report.float_layers) == 19 and all("ILMNorm" in n for n, _ in report.float_layers)
        assert "float, per-sample statistics" in str(report)
    else:
        assert report.float_layers == [] and len(report.fold.folded) == 19
    with torch.no_grad():
        expected, out = model(images), quantized(images[:50])  # any batch size
    assert (out.argmax(1) == expected[:50].argmax(1)).float().mean() >= 0.9
    assert float((out - expected[:50]).norm() / expected[:50].norm()) < 0.1
    with pytest.raises(ValueError, match="eval mode"):
        quantize_int8(model.train(), [images[:8]])


def test_int8_model_exports_to_onnx_with_a_dynamic_batch(tmp_path, images):
    pytest.importorskip("torchao")
    onnxruntime = pytest.importorskip("onnxruntime")
    model = zoo.create_model("resnet20_bwn", weights="DEFAULT").eval()
    quantized, report = quantize_int8(model, [images[:32]])
    assert len(report.fold.materialised) == 19  # bwn's weights, plain before quantizing
    save_model(quantized, images[:2], tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: images[:5].numpy()})
    with torch.no_grad():
        expected = quantized(images[:5])
    assert torch.equal(torch.from_numpy(out).argmax(1), expected.argmax(1))
    # onnxruntime's int8 kernels round a little differently from torch's reference ops
    assert float((torch.from_numpy(out) - expected).norm() / expected.norm()) < 0.05


def test_zoo_evaluate_scores_an_int8_model(images):
    pytest.importorskip("torchao")
    from zoo.evaluate import evaluate

    model = zoo.create_model("resnet20_bn", weights="DEFAULT").eval()
    quantized, _ = quantize_int8(model, [images[:32]])
    labels = model(images).argmax(1)
    result = evaluate(quantized, [(images, labels, torch.arange(64))])
    assert result.num_images == 64 and result.top1 >= 90  # agrees with the float model
    assert isinstance(quantized, nn.Module) and not quantized.training
