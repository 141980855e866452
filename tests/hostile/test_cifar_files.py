"""CIFAR files that are not what they claim (issue 17: D10): one clear error naming the file
and the field, and a minimal folder still loads. CIFAR that is not there (issue 29): the
command lines fetch it with --download, here from a loopback mirror of torchvision's URL."""

import hashlib
import http.server
import io
import pickle
import tarfile
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10

import train.loop
import validate  # eval/ (pyproject's pythonpath)
from zoo.__main__ import main as demo_main
from zoo.data import CIFAR10_CLASSES, download_cifar, load_cifar

from conftest import one_error_line

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




# --download: CIFAR fetched with torchvision's download into a cache folder

CIFAR10_FILES = ["batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch"]


def _cifar10_archive(images_per_file: int) -> bytes:
    """cifar-10-python.tar.gz as torchvision downloads it (the python layout), with a few
    random images in each file."""
    rng = np.random.default_rng(0)
    contents = {"batches.meta": {"label_names": CIFAR10_CLASSES, "num_vis": 3072}}
    for name in CIFAR10_FILES[1:]:
        contents[name] = {"data": rng.integers(0, 256, (images_per_file, 3072), dtype=np.uint8),
                          "labels": rng.integers(0, 10, images_per_file).tolist()}
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, content in contents.items():
            data = pickle.dumps(content, protocol=4)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive.getvalue()


@pytest.fixture
def cifar_mirror(tmp_path, monkeypatch):
    """torchvision's CIFAR-10 URL and md5 pointed at a loopback server holding a tiny archive
    (20 images a file); NormZoo's cache in tmp_path/cache. ``body`` is what the server
    answers (None: 404), ``requests`` the paths it was asked for."""
    archive = _cifar10_archive(20)
    mirror = types.SimpleNamespace(body=archive, requests=[])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            mirror.requests.append(self.path)
            if mirror.body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(mirror.body)))
            self.end_headers()
            try:
                self.wfile.write(mirror.body)
            except ConnectionError:  # torchvision's redirect probe reads only the headers
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(CIFAR10, "url",
                        f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz")
    monkeypatch.setattr(CIFAR10, "tgz_md5", hashlib.md5(archive).hexdigest())
    monkeypatch.setenv("NORMZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # loopback only, whatever proxy is set
    yield mirror
    server.shutdown()
    server.server_close()


def _error_line(err: str) -> str:
    """The one error line, among the lines of torchvision's download bar."""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize("command", ["python -m zoo", "eval/cifar_val.py", "python -m train"])
def test_download_fetches_cifar_into_the_cache_once(command, cifar_mirror, checkpoint, tmp_path,
                                                    capsys):
    runs = []

    def run(*argv):
        runs.append(argv)
        capsys.readouterr()
        argv = [str(a) for a in argv]
        if command == "python -m zoo":
            rc = demo_main(argv)
        elif command == "eval/cifar_val.py":
            rc = validate.main(["--checkpoint", str(checkpoint), "--device", "cpu", "--no-progress",
                                *argv], dataset="cifar")
        else:
            rc = train.loop.main(["--model", "resnet20_gn", "--recipe", "test_tiny", "--out",
                                  str(tmp_path / f"run{len(runs)}"), *argv])
        return rc, *capsys.readouterr()

    nowhere = tmp_path / "nowhere"
    rc, out, err = run("--data", nowhere)
    assert rc == 2
    one_error_line(err, f"{nowhere} holds no CIFAR data", command, "with --download")
    if command != "python -m zoo":  # the demo's default is ../shared/data/cifar10
        rc, out, err = run()
        assert rc == 2
        one_error_line(err, "pass --data, a CIFAR folder (python layout), or --download")
    assert cifar_mirror.requests == []

    rc, out, err = run("--download")
    assert rc == 0, err
    cached = tmp_path / "cache" / "data" / "cifar10"
    assert cifar_mirror.requests and set(cifar_mirror.requests) == {"/cifar-10-python.tar.gz"}
    assert [p.name for p in cached.iterdir()] == ["cifar-10-batches-py"]  # the archive removed
    assert sorted(p.name for p in (cached / "cifar-10-batches-py").iterdir()) == CIFAR10_FILES
    assert load_cifar(cached, "test").labels.shape == (20,)
    if command == "python -m zoo":
        assert f"data:  {cached}, test split, 20 images, 10 classes" in out
    # written: the cache, and the trainer's run folder; nothing else
    assert {p.name for p in tmp_path.iterdir()} <= {"cache", f"run{len(runs)}"}

    asked = len(cifar_mirror.requests)
    assert download_cifar(cached) == cached and len(cifar_mirror.requests) == asked  # there already


@pytest.mark.parametrize("served, reason", [
    ("truncated", "its md5 is not the one torchvision expects"),
    ("missing", "HTTP Error 404"),
])
def test_a_failed_download_is_one_line_and_leaves_no_file(served, reason, cifar_mirror, tmp_path,
                                                          capsys):
    cifar_mirror.body = cifar_mirror.body[:-100] if served == "truncated" else None
    capsys.readouterr()
    assert demo_main(["--download"]) == 2
    line = _error_line(capsys.readouterr().err)
    cached = tmp_path / "cache" / "data" / "cifar10"
    assert f"could not download cifar10 from {CIFAR10.url} into {cached} ({reason}" in line
    assert list(cached.iterdir()) == []  # no partial archive
