import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

import zoo
from zoo.data import load_cifar

from conftest import REPO


def test_cifar10_test_split(data_root):
    split = load_cifar(data_root / "cifar10", "test")
    assert split.images.shape == (1000, 3, 32, 32) and split.images.dtype == torch.uint8
    assert split.labels.shape == (1000,) and split.labels.dtype == torch.int64
    assert split.classes[:3] == ["airplane", "automobile", "bird"] and len(split.classes) == 10
    assert split.labels[:4].tolist() == [3, 8, 8, 0]  # cat, ship, ship, airplane: the real test set
    assert 86 <= split.labels.bincount().min() and split.labels.bincount().max() <= 112


def test_cifar10_train_split_is_complete(data_root):
    split = load_cifar(data_root / "cifar10" / "cifar-10-batches-py", "train")
    assert split.images.shape == (50000, 3, 32, 32)
    assert split.labels.bincount().tolist() == [5000] * 10


def test_cifar100_partial_split(data_root):
    train, test = load_cifar(data_root / "cifar100", "train"), load_cifar(data_root / "cifar100", "test")
    assert len(train.labels) == 486 and len(test.labels) == 916 and len(test.classes) == 100
    assert int(test.labels.max()) < 100


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickles_that_run_code_are_refused(data_root, tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    shutil.copy(data_root / "cifar10" / "cifar-10-batches-py" / "batches.meta", folder)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": _Exploit(), "labels": [0]}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"test_batch: not a readable CIFAR pickle \(refusing to load posix.system"):
        load_cifar(tmp_path, "test")
    assert not (tmp_path / "pwned").exists()


def test_missing_or_wrong_folders_say_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no CIFAR data"):
        load_cifar(tmp_path)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_cifar(tmp_path, "val")


def _demo(*args, data_root):
    env = {**os.environ, "NORMZOO_DATA": str(data_root)}
    return subprocess.run([sys.executable, "-m", "zoo", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_demo_classifies_real_cifar_images(data_root):
    result = _demo("--limit", "100", "--model", "resnet20_ln", data_root=data_root)
    assert result.returncode == 0, result.stderr
    assert "model: resnet20_ln = resnet20 with norm 'ln' (GroupNorm(1, C))" in result.stdout
    assert "UNTRAINED" in result.stdout and "/100; chance is 10%" in result.stdout
    assert "         cat -> " in result.stdout  # the first test image is a cat


def test_demo_default_is_a_shipped_pretrained_model_scoring_its_recorded_figure(data_root):
    result = _demo(data_root=data_root)
    assert result.returncode == 0, result.stderr
    entry = zoo.get_model_weights("resnet20_bn").DEFAULT.entry
    assert entry["shipped"] and entry["default"]
    assert f"weights {entry['name']}" in result.stdout
    assert "       from the copy shipped with NormZoo, " in result.stdout  # where they came from
    # The demo's own loop (the weights' preprocessing, argmax) re-measures the manifest figure.
    assert f"top-1: {entry['metrics']['top1']:.1f}% (" in result.stdout
    assert f"/{entry['metrics']['num_images']})" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet50_gn"], "is an ImageNet model"),
    (["--model", "resnet20_gm"], "unknown model 'resnet20_gm'. Did you mean 'resnet20_gn'"),
    (["--data", "/nonexistent"], "/nonexistent holds no CIFAR data"),
])
def test_demo_bad_input_gets_one_clear_error(args, message, data_root):
    result = _demo(*args, data_root=data_root)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
