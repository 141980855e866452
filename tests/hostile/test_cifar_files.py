"""CIFAR files that are not what they claim (issue 17: D10): one clear error naming the file
and the field, and a minimal folder still loads."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.data import load_cifar

# One torch thread (the tiny models gain nothing from more); one process, even under torchrun.
pytestmark = pytest.mark.usefixtures("one_thread", "not_distributed")


# D10: CIFAR files that are not what they claim


def _cifar_folder(tmp_path, test_batch, meta=None) -> Path:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    meta = {"label_names": ["a", "b"]} if meta is None else meta
    (root / "batches.meta").write_bytes(pickle.dumps(meta))
    (root / "test_batch").write_bytes(pickle.dumps(test_batch))
    return root


GOOD_BATCH = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}


@pytest.mark.parametrize("test_batch, meta, file, problem", [
    ({"labels": [0, 1]}, None, "test_batch", "'data' missing"),
    ({"data": GOOD_BATCH["data"]}, None, "test_batch", "'labels' missing"),
    ([GOOD_BATCH["data"], [0, 1]], None, "test_batch", "it holds a list, not a dict with 'data', "
                                                        "'labels'"),
    (GOOD_BATCH, {"names": ["a", "b"]}, "batches.meta", "'label_names' missing"),
    (GOOD_BATCH, "label names", "batches.meta", "it holds a str"),
    (dict(GOOD_BATCH, labels=["x", "y"]), None, "test_batch", "and <U1 labels of shape (2,)"),
    (dict(GOOD_BATCH, labels=7), None, "test_batch", "labels of shape ()"),
])
def test_cifar_file_without_its_fields(test_batch, meta, file, problem, tmp_path):
    root = _cifar_folder(tmp_path, test_batch, meta)
    with pytest.raises(ValueError) as raised:
        load_cifar(tmp_path, "test")
    assert type(raised.value) is ValueError
    assert str(raised.value).startswith(f"{root / file}: ")
    assert problem in str(raised.value)


def test_cifar_minimal_folder_still_loads(tmp_path):
    _cifar_folder(tmp_path, GOOD_BATCH)
    split = load_cifar(tmp_path, "test")
    assert split.images.shape == (2, 3, 32, 32) and split.labels.tolist() == [0, 1]
    assert split.labels.dtype == torch.int64 and split.classes == ["a", "b"]


