"""``python -m zoo.deploy``: the happy path on tiny data, and one ``error: ...`` line for each
careless input."""

import sys

import numpy as np
import pytest

from zoo.deploy import main as deploy_main

from conftest import one_error_line, write_cifar

pytestmark = pytest.mark.usefixtures("one_thread", "not_distributed")


@pytest.fixture(scope="module")
def tiny_cifar100(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "cifar100"
    data = np.zeros((4, 3072), dtype=np.uint8)
    write_cifar(root / "cifar-100-python", "meta", {"fine_label_names": [f"c{i}" for i in range(100)]},
                {"test": (data, [0, 1, 2, 3], "fine_labels"), "train": (data, [0, 1, 2, 3], "fine_labels")})
    return root


def _deploy(capsys, *argv):
    capsys.readouterr()
    rc = deploy_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_fold_and_export_to_onnx(tiny_cifar10, tmp_path, capsys):
    out_file = tmp_path / "model.onnx"
    rc, out, err = _deploy(capsys, "resnet20_l1bn", "--fold", "--data", tiny_cifar10, "--out", out_file)
    assert rc == 0, err
    assert "cifar10 test[:16]" in out and "before: top-1" in out and "(fp32)" in out
    assert "folded 19 norm(s), kept 0" in out and "% (folded, fp32)" in out
    assert f"wrote {out_file} (" in out and out_file.stat().st_size > 100_000


def test_fold_int8_and_export_to_pt2(tiny_cifar10, tmp_path, capsys):
    pytest.importorskip("torchao")
    out_file = tmp_path / "model.pt2"
    # L1 BN, the example (ILM's float layers: tests/zoo/test_deploy.py, at a third of the cost)
    rc, out, err = _deploy(capsys, "resnet20_l1bn", "--weights", "DEFAULT", "--int8", "--calibrate", "16",
                           "--data", tiny_cifar10, "--out", out_file)
    assert rc == 0, err
    assert "calibrated on 16 image(s); 0 layer(s) left in float" in out and "% (folded, int8)" in out
    assert out_file.is_file()


def test_recalibrate_then_fold(tiny_cifar10, tmp_path, capsys):
    out_file = tmp_path / "model.onnx"
    rc, out, err = _deploy(capsys, "resnet20_l1bn", "--recalibrate", "--calibrate", "16", "--fold",
                           "--data", tiny_cifar10, "--out", out_file)
    assert rc == 0, err
    assert "recalibrated 19 norm(s) on 16 augmented training images" in out
    assert "% (recalibrated, folded, fp32)" in out and out_file.is_file()


def test_recalibrate_a_model_without_running_statistics(tiny_cifar10, tmp_path, capsys):
    rc, out, err = _deploy(capsys, "resnet20_gn", "--recalibrate", "--calibrate", "16",
                           "--data", tiny_cifar10, "--out", tmp_path / "m.onnx")
    assert rc == 2 and not (tmp_path / "m.onnx").exists()
    one_error_line(err, "no norm with running statistics")


def test_int8_without_the_extra(tiny_cifar10, tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "torchao"] + ["torchao"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed, imported or not
    rc, out, err = _deploy(capsys, "resnet20_bn", "--int8", "--data", tiny_cifar10,
                           "--out", tmp_path / "m.pt2")
    assert rc == 2 and not (tmp_path / "m.pt2").exists()
    one_error_line(err, "int8 quantization needs torchao", 'pip install -e ".[deploy]"')


def test_existing_out_is_kept_unless_forced(tiny_cifar10, tmp_path, capsys):
    out_file = tmp_path / "model.onnx"
    out_file.write_text("precious")
    rc, out, err = _deploy(capsys, "resnet20_bn", "--data", tiny_cifar10, "--out", out_file)
    assert rc == 2 and out == "" and out_file.read_text() == "precious"
    one_error_line(err, f"--out {out_file} exists", "--force")
    rc, out, err = _deploy(capsys, "resnet20_bn", "--data", tiny_cifar10, "--out", out_file, "--force")
    assert rc == 0, err
    assert out_file.read_bytes() != b"precious"


@pytest.mark.parametrize("name", ["model.pt", "model"])
def test_unknown_extension(name, tiny_cifar10, tmp_path, capsys):
    rc, out, err = _deploy(capsys, "resnet20_bn", "--data", tiny_cifar10, "--out", tmp_path / name)
    assert rc == 2 and out == ""
    one_error_line(err, "unknown extension", "use .pt2 (torch.export) or .onnx")


def test_unknown_norm(tiny_cifar10, tmp_path, capsys):
    rc, out, err = _deploy(capsys, "resnet20_l2bn", "--data", tiny_cifar10, "--out", tmp_path / "m.pt2")
    assert rc == 2 and out == ""
    one_error_line(err, "unknown model 'resnet20_l2bn'", "zoo.list_norms()")


def test_data_of_another_class_count(tiny_cifar100, tmp_path, capsys):
    rc, out, err = _deploy(capsys, "resnet20_bn", "--int8", "--data", tiny_cifar100, "--out", tmp_path / "m.pt2")
    assert rc == 2 and out == "" and not (tmp_path / "m.pt2").exists()
    one_error_line(err, "resnet20_bn has 10 classes but the data in", "has 100")
