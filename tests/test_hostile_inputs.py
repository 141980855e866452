"""Hostile and careless inputs (issue 17). Each test reproduces one defect that an
issue-17-style probe found (a careless user's mistake, or a file or server made to do harm)
and asserts the one clear error it now ends in, saying what was wrong and how to fix it:
``WeightsError`` or ``ValueError`` from the library, one ``error: ...`` line and exit status 2
from a command-line tool. Nothing is lost on the way.

New findings go here, in the section of their area: weights, checkpoints, caches and data
files; the trainer; the command-line tools. Tests build their files in temporary folders and
send network traffic to loopback (127.0.0.1) only.
"""

import contextlib
import errno
import functools
import hashlib
import http.server
import importlib.util
import json
import os
import pickle
import shutil
import socket
import stat
import tempfile
import threading
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from huggingface_hub import HfApi
from huggingface_hub.utils import HfHubHTTPError
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import train.loop
import zoo
import zoo.convert
import zoo.hub
import zoo.weights
from train.recipes import RECIPES, override
from zoo.__main__ import main as demo_main
from zoo.data import IMAGENET_MEAN, IMAGENET_STD, load_cifar
from zoo.evaluate import ImageNetVal
from zoo.weights import WeightsError, write_manifest

from conftest import REPO
from hub_server import FakeHub

# One torch thread for the whole module: the trainer's results are bit-reproducible on a fixed
# thread count, and the other sections' tiny models do not need more.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _not_distributed(monkeypatch):
    """Every test runs as one process, even under torchrun: the trainer and eval/validate.py
    read these."""
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


# =============================================================================================
# Weights, checkpoints, caches and data files (issue 17: D1, D2, D5, D7, D10, D12, D13, D14):
# each ends in one clear error that says what was wrong and how to fix it, and loses nothing.
#
# Every test builds its own files under tmp_path; network traffic goes to loopback only
# (tests/hub_server.py, or a small server here). Fetches run in-process: the entries are
# unpublished (mirror only) or the Hugging Face cache is pointed at tmp_path.
# =============================================================================================


MODEL = "resnet20_bn"
WEIGHTS_NAME = f"{MODEL}.cifar10"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
WEIGHTS_METRICS = {"top1": 10.0, "top5": 50.0, "split": "test", "num_images": 10000}
WEIGHTS_RECIPE = {"command": "python -m train --model resnet20_bn", "commit": "ab" * 20}


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """An untrained resnet20_bn checkpoint, its bytes and sha256."""
    torch.manual_seed(0)
    path = zoo.save_checkpoint(zoo.create_model(MODEL), tmp_path_factory.mktemp("ckpt")
                               / f"{WEIGHTS_NAME}.safetensors", tag="cifar10",
                               metrics=WEIGHTS_METRICS, recipe=WEIGHTS_RECIPE)
    data = path.read_bytes()
    return {"path": path, "bytes": data, "sha256": hashlib.sha256(data).hexdigest()}


@pytest.fixture(scope="module")
def entry(ckpt) -> dict:
    """The checkpoint's manifest entry (unpublished, no mirror, not shipped)."""
    return dict(zoo.hub.make_entry(ckpt["path"]), default=True)


@pytest.fixture
def hub():
    server = FakeHub().start()
    yield server
    server.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty NormZoo cache in use through NORMZOO_CACHE."""
    root = tmp_path / "normzoo_cache"
    root.mkdir()
    monkeypatch.setenv("NORMZOO_CACHE", str(root))
    return root


def _use_manifest(tmp_path, monkeypatch, *entries) -> Path:
    """A manifest holding ``entries``, written as is and in use through NORMZOO_MANIFEST."""
    path = tmp_path / "pkg" / "weights_manifest.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"schema_version": 1, "weights": list(entries)}))
    monkeypatch.setenv("NORMZOO_MANIFEST", str(path))
    return path


def _mirror_entry(tmp_path, monkeypatch, entry, hub, body: bytes) -> zoo.weights.Weights:
    """The entry, unpublished, with the loopback hub's mirror serving ``body``."""
    _use_manifest(tmp_path, monkeypatch, dict(entry, mirror_url=f"{hub.url}/mirror/w.safetensors"))
    hub.mirror["w.safetensors"] = body
    return zoo.get_weight(WEIGHTS_NAME)


def _mirror_gets(hub) -> int:
    return hub.requests.count(("GET", "/mirror/w.safetensors"))


def _cache_file(cache: Path, ckpt) -> Path:
    return cache / "weights" / f"{WEIGHTS_NAME}-{ckpt['sha256'][:16]}.safetensors"


def _left_in(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "weights").iterdir())


def _tampered(data: bytes) -> bytes:
    """Same length, one byte of tensor data flipped: still a valid safetensors file."""
    return data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:]


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)`` makes a folder tree read-only: for real where the tests do not run
    as root, and otherwise (root writes anyway) by having the os calls that write under it
    raise the PermissionError a read-only folder gives."""
    made = []

    def make(root: Path) -> None:
        if os.geteuid() != 0:
            folders = [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]
            for folder in folders:
                folder.chmod(0o555)
            made.extend(folders)
            return

        def guard(call, writes=lambda *args: True):
            def guarded(path, *args, **kwargs):
                if Path(os.path.abspath(path)).is_relative_to(root) and writes(*args):
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
                return call(path, *args, **kwargs)
            return guarded

        write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        monkeypatch.setattr(os, "open", guard(os.open, lambda flags, *a: flags & write_flags))
        monkeypatch.setattr(os, "mkdir", guard(os.mkdir))
        monkeypatch.setattr(os, "unlink", guard(os.unlink))

    yield make
    for folder in made:
        folder.chmod(0o755)


# ---------------------------------------------------------------------------------------------
# D1: many processes and a bad file in the mirror cache


def _another_process(action, target: Path, good: bytes):
    """What another process does to the cache file while this one reads it."""
    if action == "removes it":
        target.unlink()
    elif action == "replaces it with a good copy":
        tmp = target.with_name("other-process.tmp")
        tmp.write_bytes(good)
        os.replace(tmp, target)


@pytest.mark.parametrize("action, when, downloads", [
    ("removes it", "before", 1),  # was: FileNotFoundError reading it
    ("removes it", "after", 1),  # was: FileNotFoundError removing it
    ("replaces it with a good copy", "after", 0),  # was: removed the good copy, downloaded again
])
def test_mirror_cache_file_changed_by_another_process(action, when, downloads, tmp_path,
                                                      monkeypatch, ckpt, entry, hub, cache):
    """Another process removes or replaces a bad cache file before or after this process's
    check reads it: no FileNotFoundError, no good copy removed, no download in vain."""
    w = _mirror_entry(tmp_path, monkeypatch, entry, hub, ckpt["bytes"])
    target = _cache_file(cache, ckpt)
    target.parent.mkdir(parents=True)
    target.write_bytes(_tampered(ckpt["bytes"]))
    real_sha256sum, reads = zoo.weights.sha256sum, []

    def racing_sha256sum(path):  # the test hook: the other process acts around the first read
        first = Path(path) == target and not reads
        reads.append(Path(path))
        if first and when == "before":
            _another_process(action, target, ckpt["bytes"])
        digest = real_sha256sum(path)
        if first and when == "after":
            _another_process(action, target, ckpt["bytes"])
        return digest

    monkeypatch.setattr(zoo.weights.fetch, "sha256sum", racing_sha256sum)  # what fetching calls
    assert w.fetch(progress=False) == target
    assert target.read_bytes() == ckpt["bytes"]
    assert _mirror_gets(hub) == downloads
    assert reads.count(target) == 2  # checked again under the lock, not trusted from before
    assert _left_in(cache) == [target.name, f"{target.name}.lock"]


# ---------------------------------------------------------------------------------------------
# D2: read-only caches


@pytest.mark.parametrize("state", ["cold", "bad copy", "good copy"])
def test_read_only_normzoo_cache(state, tmp_path, monkeypatch, ckpt, entry, hub, cache,
                                 read_only):
    w = _mirror_entry(tmp_path, monkeypatch, entry, hub, ckpt["bytes"])
    target = _cache_file(cache, ckpt)
    if state != "cold":
        target.parent.mkdir()
        target.write_bytes(ckpt["bytes"] if state == "good copy" else _tampered(ckpt["bytes"]))
    before = {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    read_only(cache)

    if state == "good copy":  # a read-only cache still serves what it holds
        assert w.fetch(progress=False) == target
    else:
        with pytest.raises(WeightsError) as raised:
            w.fetch(progress=False)
        message = str(raised.value)
        assert message.startswith(f"could not get a verified copy of {WEIGHTS_NAME}")
        refused = target.parent if state == "cold" else f"{target}.lock"
        assert f"NormZoo cache {cache}: Permission denied: {refused}; " in message
        assert "make it writable, or set NORMZOO_CACHE to a writable folder" in message
        assert "weights='path/to/model.safetensors'" in message
        assert (f"mirror cache file {target}: sha256" in message) == (state == "bad copy")
    assert _mirror_gets(hub) == 0  # nothing downloaded that could not be kept
    assert {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()} == before


def test_read_only_hf_cache_with_a_tampered_blob(tmp_path, monkeypatch, ckpt, entry, read_only):
    from huggingface_hub import constants

    _use_manifest(tmp_path, monkeypatch, dict(entry, revision=COMMIT))
    hub_cache = tmp_path / "hf_home" / "hub"
    repo = hub_cache / f"models--{entry['hub_repo_id'].replace('/', '--')}"
    blob = repo / "blobs" / ckpt["sha256"]
    pointer = repo / "snapshots" / COMMIT / "model.safetensors"
    blob.parent.mkdir(parents=True)
    pointer.parent.mkdir(parents=True)
    blob.write_bytes(_tampered(ckpt["bytes"]))
    pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    read_only(hub_cache)

    with pytest.raises(WeightsError) as raised:
        zoo.create_model(MODEL, weights="DEFAULT", progress=False)
    message = str(raised.value)
    assert message.startswith(f"could not get a verified copy of {WEIGHTS_NAME}")
    assert f"Hugging Face cache file {pointer}: sha256" in message
    assert (f"Hugging Face cache file {pointer}: cannot remove this bad copy (Permission denied: "
            f"{pointer})") in message
    assert "make the Hugging Face cache writable, or set HF_HOME to a writable folder" in message
    assert "weights='path/to/model.safetensors'" in message
    assert pointer.is_symlink() and blob.read_bytes() == _tampered(ckpt["bytes"])


# ---------------------------------------------------------------------------------------------
# D5: manifest paths and repo ids that leave their place


@pytest.mark.parametrize("field, value", [
    ("filename", "../model.safetensors"), ("filename", "sub/../../model.safetensors"),
    ("filename", "/etc/passwd"), ("filename", "sub\\model.safetensors"),
    ("filename", "C:model.safetensors"), ("filename", "sub//model.safetensors"),
    ("shipped", "../../outside.safetensors"), ("shipped", "/tmp/outside.safetensors"),
    ("shipped", "pretrained\\..\\..\\x.safetensors"), ("shipped", "./pretrained/x.safetensors"),
    ("hub_repo_id", "../outside"), ("hub_repo_id", "owner/.."), ("hub_repo_id", "a/b/c"),
    ("hub_repo_id", "name-only"), ("hub_repo_id", "-owner/name"), ("hub_repo_id", "owner/na--me"),
    ("hub_repo_id", "owner/name."), ("hub_repo_id", "owner\\name"), ("hub_repo_id", None),
    ("hub_repo_id", "o/" + "n" * 97),
])
def test_manifest_refuses_paths_that_leave_their_folder(field, value, tmp_path, monkeypatch,
                                                        entry):
    bad = dict(entry, **{field: value})
    problems = zoo.weights.validate_manifest({"schema_version": 1, "weights": [bad]})
    assert len(problems) == 1
    assert problems[0].startswith(f"entry 0 ({WEIGHTS_NAME}): {field} must be ")
    assert problems[0].endswith(f"not {value!r}")
    _use_manifest(tmp_path, monkeypatch, bad)
    with pytest.raises(WeightsError,
                       match=f"is invalid:\n  entry 0 \\({WEIGHTS_NAME}\\): {field} must be"):
        zoo.get_weight(WEIGHTS_NAME)


@pytest.mark.parametrize("field, value", [
    ("filename", "model.safetensors"), ("filename", "weights/v2/model.safetensors"),
    ("shipped", None), ("shipped", "pretrained/resnet20_bn.cifar10.safetensors"),
    ("hub_repo_id", "normzoo/resnet20_bn.cifar10"), ("hub_repo_id", "Some_One/a-b.c_d"),
])
def test_manifest_accepts_plain_paths(field, value, entry):
    assert zoo.weights.validate_manifest({"schema_version": 1,
                                          "weights": [dict(entry, **{field: value})]}) == []


def test_hub_cache_lookup_errors_are_reasons(tmp_path, monkeypatch, entry):
    """huggingface_hub's own refusal of a name (in an entry that skipped validation) is one
    line of the error, not a raw ValueError."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    bad = dict(entry, revision=COMMIT, filename="../model.safetensors")
    with pytest.raises(WeightsError) as raised:
        zoo.weights.Weights(bad, tmp_path).fetch(progress=False)
    message = str(raised.value)
    assert message.startswith(f"could not get a verified copy of {WEIGHTS_NAME}")
    assert f"Hugging Face Hub {entry['hub_repo_id']}@{COMMIT[:12]}: Invalid filename" in message


# ---------------------------------------------------------------------------------------------
# D7: checkpoint metadata that does not parse


@pytest.mark.parametrize("field, value, problem", [
    ("num_classes", "ten", "must be a non-negative integer, not 'ten'"),
    ("num_classes", "-1", "must be a non-negative integer, not '-1'"),
    ("preprocessing", "{not json", "is not valid JSON"),
    ("norm_kwargs", "[1, 2]", "must be a JSON object"),
    ("recipe", "", "is not valid JSON"),
])
def test_bad_checkpoint_metadata_names_file_and_field(field, value, problem, tmp_path, ckpt):
    with safe_open(str(ckpt["path"]), framework="pt") as f:
        metadata = dict(f.metadata(), **{field: value})
    path = tmp_path / "doctored.safetensors"
    save_file(load_file(str(ckpt["path"])), str(path), metadata=metadata)
    expected = f"{path}: metadata field {field!r} {problem}"
    for load in (zoo.weights.read_metadata, lambda p: zoo.create_model(MODEL, weights=p)):
        with pytest.raises(WeightsError) as raised:
            load(path)
        assert str(raised.value).startswith(expected)
        assert "save it again with zoo.save_checkpoint" in str(raised.value)


# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# D12: file modes follow the umask


@pytest.fixture
def restore_umask():
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_saved_and_cached_files_get_the_umask_mode(mask, mode, restore_umask, tmp_path,
                                                   monkeypatch, ckpt, entry, hub, cache):
    """Was 0600 whatever the umask: the temp file's mode survived the rename."""
    w = _mirror_entry(tmp_path, monkeypatch, entry, hub, ckpt["bytes"])
    os.umask(mask)
    saved = zoo.save_checkpoint(zoo.create_model(MODEL), tmp_path / "out" / "m.safetensors",
                                tag="t")
    cached = w.fetch(progress=False)
    new_manifest = write_manifest({"schema_version": 1, "weights": []}, tmp_path / "new.json")
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in (saved, cached, new_manifest)} == \
        {p.name: mode for p in (saved, cached, new_manifest)}


# ---------------------------------------------------------------------------------------------
# D13: a mirror that sends more than the file


@pytest.fixture
def body_bytes_read(monkeypatch):
    """How many body bytes the client took from the mirror (through Response.iter_content)."""
    read = []
    real = requests.Response.iter_content

    def counting(self, *args, **kwargs):
        for chunk in real(self, *args, **kwargs):
            read.append(len(chunk))
            yield chunk

    monkeypatch.setattr(requests.Response, "iter_content", counting)
    return lambda: sum(read)


def test_oversized_mirror_file_is_refused_by_its_length(tmp_path, monkeypatch, ckpt, entry, hub,
                                                        cache, body_bytes_read):
    """Was: downloaded in full, twice, then refused for its sha256."""
    body = ckpt["bytes"] * 4
    w = _mirror_entry(tmp_path, monkeypatch, entry, hub, body)
    with pytest.raises(WeightsError) as raised:
        w.fetch(progress=False)
    size = len(ckpt["bytes"])
    assert (f"mirror {hub.url}/mirror/w.safetensors: serves {len(body)} bytes, but the file has "
            f"{size}; not downloading it") in str(raised.value)
    assert body_bytes_read() == 0 and _mirror_gets(hub) == 1  # no body read, no second try
    assert _left_in(cache) == [f"{_cache_file(cache, ckpt).name}.lock"]  # no partial file


class _EndlessMirror(http.server.BaseHTTPRequestHandler):
    """Sends ``body`` without a Content-Length (HTTP/1.0, the end is the close)."""

    body, gets = b"", []

    def do_GET(self):
        type(self).gets.append(self.path)
        self.send_response(200)
        self.end_headers()
        try:
            for i in range(0, len(self.body), 1 << 16):
                self.wfile.write(self.body[i:i + (1 << 16)])
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: expected
            pass

    def log_message(self, *args):
        pass


def test_oversized_mirror_file_without_length_is_cut_off(tmp_path, monkeypatch, ckpt, entry,
                                                         cache, body_bytes_read):
    size = len(ckpt["bytes"])
    _EndlessMirror.body, _EndlessMirror.gets = ckpt["bytes"] * 8, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EndlessMirror)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/w.safetensors"
        _use_manifest(tmp_path, monkeypatch, dict(entry, mirror_url=url))
        with pytest.raises(WeightsError) as raised:
            zoo.get_weight(WEIGHTS_NAME).fetch(progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert (f"mirror {url}: sent more than the file's {size} bytes; stopped there"
            in str(raised.value))
    assert size < body_bytes_read() <= size + (1 << 20)  # one read past the size, then stop
    assert len(_EndlessMirror.gets) == 1
    assert _left_in(cache) == [f"{_cache_file(cache, ckpt).name}.lock"]  # no partial file


# ---------------------------------------------------------------------------------------------
# D14: byte-reproducible checkpoints


def test_save_checkpoint_is_byte_reproducible(tmp_path, ckpt):
    torch.manual_seed(0)
    model = zoo.create_model(MODEL)
    paths = [zoo.save_checkpoint(model, tmp_path / f"{i}.safetensors", tag="cifar10",
                                 metrics=WEIGHTS_METRICS, recipe=WEIGHTS_RECIPE) for i in range(3)]
    data = [p.read_bytes() for p in paths]
    assert data[0] == data[1] == data[2] == ckpt["bytes"]  # and the module fixture's save
    n = int.from_bytes(data[0][:8], "little")
    header = data[0][8:8 + n]
    assert n % 8 == 0 and header.startswith(b"{") and header.rstrip(b" ").endswith(b"}")
    keys, metadata_keys = list(json.loads(header)), list(json.loads(header)["__metadata__"])
    assert keys == sorted(keys) and metadata_keys == sorted(metadata_keys)  # canonical order
    state, meta = zoo.read_checkpoint(paths[1])
    assert sorted(state) == sorted(model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert meta["name"] == WEIGHTS_NAME and meta["metrics"] == WEIGHTS_METRICS
    assert meta["recipe"] == WEIGHTS_RECIPE
    loaded = zoo.create_model(MODEL, weights=paths[2])
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


# =============================================================================================
# The trainer, ``python -m train`` (issue 17: D3, D4, D8): each mistake ends in one ``error:``
# line and exit status 2, before any training, and loses nothing.
#
# The trainer runs in-process on one thread with ResNet-20, the ``test_tiny`` recipe and 128
# real CIFAR-10 images (64 of them held out): 2 steps an epoch. Run folders live under
# tmp_path, except the read-only one (see ``read_only_folder``).
# =============================================================================================


def tiny(data_root, out, *extra, model="resnet20_gn", data="cifar10"):
    return ["--model", model, "--recipe", "test_tiny", "--data", str(data_root / data),
            "--out", str(out), "--limit-train", "128", *map(str, extra)]


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def epochs_logged(out: Path) -> list:
    return [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()]


def files(folder: Path) -> dict:
    """Every file under folder, with its bytes: what a refusal must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def stopped_run(data_root, tmp_path, capsys):
    """A resnet20_gn run stopped after its first epoch (of 2): checkpoint.pt to resume from."""
    out = tmp_path / "run"
    assert train.loop.main(tiny(data_root, out, "--stop-after-epoch", 1)) == 0
    capsys.readouterr()
    return out


# ---------------------------------------------------------------------------------------------
# D3: --resume keeps everything the run was started with

def test_resume_refuses_each_setting_the_run_must_keep(data_root, tmp_path, stopped_run, capsys):
    before = files(stopped_run)
    channels_last = zoo.get_norm("gn").channels_last  # the run's memory format: its norm's
    start = tmp_path / "start.safetensors"
    torch.manual_seed(0)
    zoo.save_checkpoint(zoo.create_model("resnet20_gn"), start, tag="cifar10")
    start_sha = zoo.weights.sha256sum(start)[:16]
    changes = [
        (["--seed", 1], ["--seed 0 in the run, 1 here"]),
        (["--limit-train", 192], ["--limit-train 128 in the run, 192 here"]),
        (["--seed", 2, "--limit-train", 160],
         ["--seed 0 in the run, 2 here", "--limit-train 128 in the run, 160 here"]),
        (["--epochs", 3], ["--epochs 2 in the run, 3 here"]),
        (["--batch-size", 16], ["--batch-size 32 in the run, 16 here"]),
        (["--lr", 0.01], ["--lr 0.05 in the run, 0.01 here"]),
        (["--amp"], ["--amp False in the run, True here"]),
        (["--channels-last" if not channels_last else "--no-channels-last"],
         [f"--channels-last {channels_last} in the run, {not channels_last} here"]),
        (["--checkpoint", start, "--freeze-backbone"],
         [f"--weights/--checkpoint none in the run, sha256 {start_sha} here",
          "--freeze-backbone False in the run, True here"]),
    ]
    for extra, named in changes:
        assert train.loop.main(tiny(data_root, stopped_run, "--resume", *extra)) == 2
        line = error_line(capsys)
        assert f"{stopped_run} holds a run with other settings, which --resume must keep" in line
        assert all(change in line for change in named), (named, line)
        assert line.count(" in the run, ") == len(named), line  # only what changed

    assert train.loop.main(tiny(data_root, stopped_run, "--resume", model="resnet20_bn")) == 2
    assert "--model resnet20_gn in the run, resnet20_bn here" in error_line(capsys)
    # other data: named by what it is (the recipe is another one too: any CIFAR)
    assert train.loop.main(["--model", "resnet20_gn", "--recipe", "finetune", "--data",
                            str(data_root / "cifar100"), "--out", str(stopped_run), "--resume",
                            "--limit-train", "128"]) == 2
    line = error_line(capsys)
    assert "--recipe test_tiny in the run, finetune here" in line
    assert "data cifar10 with 50000 training images in the run, cifar100 with 486 training " \
           "images here" in line and "--num-classes 10 in the run, 100 here" in line
    assert files(stopped_run) == before  # nothing touched


def test_resume_may_change_where_the_data_is_and_how_it_runs(data_root, tmp_path, stopped_run,
                                                             capsys):
    moved = tmp_path / "moved"  # the same CIFAR-10, at another path
    moved.symlink_to(data_root / "cifar10")
    argv = ["--model", "resnet20_gn", "--recipe", "test_tiny", "--data", str(moved), "--out",
            str(stopped_run), "--limit-train", "128", "--resume", "--test-data",
            str(data_root / "cifar10"), "--device", "cpu", "-j", "1", "--tag", "mine"]
    assert train.loop.main(argv) == 0
    assert capsys.readouterr().err == ""
    assert (stopped_run / "model.safetensors").is_file()
    assert epochs_logged(stopped_run) == [1, 2]


def test_a_run_started_before_the_record_is_checked_against_recipe_json(data_root, stopped_run,
                                                                        capsys):
    """A checkpoint from before must_match: recipe.json's seed and command still hold."""
    path = stopped_run / "checkpoint.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    del state["must_match"]
    torch.save(state, path)
    before = files(stopped_run)
    for extra, named in ((["--seed", 1], "--seed 0 in the run, 1 here"),
                         (["--limit-train", 192], "--limit-train 128 in the run, 192 here"),
                         (["--lr", 0.01], "--lr 0.05 in the run, 0.01 here")):
        assert train.loop.main(tiny(data_root, stopped_run, "--resume", *extra)) == 2
        assert named in error_line(capsys)
    assert files(stopped_run) == before
    # the run's own flags resume it, and nothing more is said
    assert train.loop.main(tiny(data_root, stopped_run, "--resume")) == 0
    assert capsys.readouterr().err == ""
    assert (stopped_run / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------
# D4: a new run never takes over a folder that holds another run

def test_a_new_run_refuses_a_finished_run_without_its_checkpoint(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.loop.main(tiny(data_root, out)) == 0
    (out / "checkpoint.pt").unlink()  # finished: the weights and log are what matter now
    before = files(out)
    assert train.loop.main(tiny(data_root, out, model="resnet20_bn")) == 2
    line = error_line(capsys)
    assert f"{out} already holds a run; pick another --out (it has nothing to resume" in line
    assert "It has recipe.json, log.jsonl, model.safetensors" in line
    assert files(out) == before  # log.jsonl holds the first run's rows only
    assert train.loop.main(tiny(data_root, out, "--resume")) == 2
    assert "cannot be continued: start again with another --out" in error_line(capsys)


@pytest.mark.parametrize("name", ["recipe.json", "log.jsonl", "checkpoint.pt",
                                  "model.safetensors"])
def test_a_new_run_refuses_a_folder_holding_any_run_file(data_root, tmp_path, capsys, name):
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text("an earlier run's\n")
    assert train.loop.main(tiny(data_root, out)) == 2
    assert "already holds a run; " in error_line(capsys)
    assert files(out) == {name: b"an earlier run's\n"}


def test_a_new_run_in_an_empty_folder_writes_its_own_log(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    assert train.loop.main(tiny(data_root, out, "--stop-after-epoch", 1)) == 0
    assert epochs_logged(out) == [1]


# ---------------------------------------------------------------------------------------------
# D8: ordinary mistakes are refused, not tracebacks

@pytest.mark.parametrize("extra, message", [
    (["--batch-size", 0], "--batch-size must be a whole number of at least 1, not 0"),
    (["--batch-size", -32], "--batch-size must be a whole number of at least 1, not -32"),
    (["--epochs", 0], "--epochs must be a whole number of at least 1, not 0"),
    (["--epochs", -1], "--epochs must be a whole number of at least 1, not -1"),
    (["--lr", 0], "--lr must be a finite number above 0, not 0.0"),
    (["--lr", -0.1], "--lr must be a finite number above 0, not -0.1"),
    (["--lr", "nan"], "--lr must be a finite number above 0, not nan"),
    (["--lr", "inf"], "--lr must be a finite number above 0, not inf"),
    (["--limit-train", 0], "--limit-train must be at least 1, not 0"),
    (["--limit-train", -5], "--limit-train must be at least 1, not -5"),
])
def test_values_that_cannot_train_are_refused_before_anything_is_written(
        data_root, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert train.loop.main(tiny(data_root, out, *extra)) == 2
    assert message in error_line(capsys)
    assert not out.exists()


def test_override_refuses_values_that_cannot_train():
    tiny_recipe = RECIPES["test_tiny"]
    with pytest.raises(ValueError, match="--batch-size must be a whole number of at least 1"):
        override(tiny_recipe, batch_size=0)
    with pytest.raises(ValueError, match="--epochs must be a whole number of at least 1, not 2.5"):
        override(tiny_recipe, epochs=2.5)
    with pytest.raises(ValueError, match="--lr must be a finite number above 0, not 'fast'"):
        override(tiny_recipe, lr="fast")
    assert override(tiny_recipe, epochs=1, batch_size=1, lr=1e-6).epochs == 1


def _payload(marker: Path) -> bytes:
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Exploit())


def _torch_bytes(obj, tmp_path: Path) -> bytes:
    path = tmp_path / "obj.pt"
    torch.save(obj, path)
    return path.read_bytes()


@pytest.mark.parametrize("kind, reason", [
    ("truncated", "RuntimeError: PytorchStreamReader failed reading zip archive"),
    ("empty", "(EOFError)"),
    ("text", "not this run's checkpoint"),
    ("pickle payload", "Weights only load failed"),
    ("a list", "not a NormZoo training checkpoint"),
    ("missing keys", "not a NormZoo training checkpoint"),
    ("wrong tensors", "RuntimeError: Error(s) in loading state_dict"),
])
def test_a_corrupt_checkpoint_is_named_and_kept(data_root, tmp_path, stopped_run, capsys, recwarn,
                                                 kind, reason):
    path = stopped_run / "checkpoint.pt"
    good = path.read_bytes()
    state = torch.load(path, map_location="cpu", weights_only=True)
    marker = tmp_path / "payload_ran"
    bad = {"truncated": lambda: good[: len(good) // 2],
           "empty": lambda: b"",
           "text": lambda: b"checkpoint\n",
           "pickle payload": lambda: _payload(marker),
           "a list": lambda: _torch_bytes([1, 2], tmp_path),
           "missing keys": lambda: _torch_bytes({"epoch": 1, "model": state["model"]}, tmp_path),
           "wrong tensors": lambda: _torch_bytes(
               {**state, "model": {k: v[:1] for k, v in state["model"].items()}}, tmp_path),
           }[kind]()
    path.write_bytes(bad)
    before = files(stopped_run)
    assert train.loop.main(tiny(data_root, stopped_run, "--resume")) == 2
    line = error_line(capsys)
    assert f"cannot resume from {path}: it is truncated, corrupt or not this run's checkpoint" \
           in line and reason in line and "start the run again with another --out" in line
    assert "weights_only" not in line  # no advice to unpickle it
    assert files(stopped_run) == before and not marker.exists()
    assert not [w for w in recwarn if "pickle" in str(w.message)]  # stderr's one line


@contextlib.contextmanager
def read_only_folder():
    """A folder this process cannot write. Root writes anywhere, so as root the test acts as
    nobody (seteuid) meanwhile; hence a fresh temporary folder, as tmp_path admits only root."""
    root = os.geteuid() == 0
    with tempfile.TemporaryDirectory() as parent:
        folder = Path(parent) / "read_only"
        folder.mkdir()
        os.chmod(parent, 0o755)
        folder.chmod(0o555)
        if root:
            os.seteuid(65534)
        try:
            yield folder
        finally:
            if root:
                os.seteuid(0)
            folder.chmod(0o755)  # to be removed


def test_a_read_only_out_is_refused_before_training(data_root, capsys):
    with read_only_folder() as folder:
        for out in (folder, folder / "run"):  # the run folder itself, or one to create there
            assert train.loop.main(tiny(data_root, out)) == 2
            line = error_line(capsys)
            assert f"cannot write the run folder {out} (Permission denied); pick another " \
                   f"--out, or make it writable" in line
        assert list(folder.iterdir()) == []


# =============================================================================================
# The command-line tools (issue 17: D6, D9, D11, D15): each mistake ends in one ``error: ...``
# line and exit status 2, before any work it would waste, and loses nothing.
#
# The CLIs run in-process through their ``main(argv)``; Hub calls stop at the ``HfApi``
# boundary or at a loopback port nothing listens on.
# =============================================================================================


CLI_NAME = "resnet20_gn.cifar10"
CLI_METRICS = {"top1": 50.0, "top5": 90.0, "split": "cifar10 test[:1000]", "num_images": 1000}
CLI_RECIPE = {"command": "tests/test_hostile_inputs.py", "commit": "0" * 40}


def _script(name: str):
    """eval/<name>.py as a module (eval/ is not a package)."""
    path = REPO / "eval" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"hostile_cli_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validate = _script("validate")
check_manifest = _script("check_manifest")


def _one_error_line(err: str, *fragments: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained resnet20_gn saved with a figure and a recipe, as a registered file has."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / f"{CLI_NAME}.safetensors"
    return zoo.save_checkpoint(zoo.create_model("resnet20_gn"), path, tag="cifar10",
                               metrics=CLI_METRICS, recipe=CLI_RECIPE)


@pytest.fixture
def manifest(tmp_path, monkeypatch, checkpoint):
    """A manifest of its own ($NORMZOO_MANIFEST) with the checkpoint registered and shipped."""
    path = tmp_path / "manifest" / "weights_manifest.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"schema_version": 1, "weights": []}))
    monkeypatch.setenv("NORMZOO_MANIFEST", str(path))
    zoo.hub.register(checkpoint, ship=True)
    return path


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    """Where tempfile makes its folders for this test (to see what is left behind)."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


# ---------------------------------------------------------------------------------------------
# D6: python -m zoo.hub


def test_publish_checks_the_token_before_building_anything(manifest, temp_root, monkeypatch):
    monkeypatch.setattr(zoo.hub, "get_token", lambda: None)
    with pytest.raises(WeightsError, match="no Hugging Face token"):
        zoo.hub.publish(CLI_NAME)
    assert list(temp_root.iterdir()) == []  # no folder built, none left behind


def _dead_endpoint() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _http_error(status: str):
    def fail(*args, **kwargs):
        raise HfHubHTTPError(f"{status} for url: https://huggingface.co/api/repos/create",
                             response=types.SimpleNamespace(headers={}, request=None))
    return fail


@pytest.mark.parametrize("where", ["connection refused", "create_repo 404", "upload_folder 401"])
def test_publish_network_errors_are_one_line_and_leave_nothing(where, manifest, temp_root,
                                                               monkeypatch, capsys):
    monkeypatch.setattr(zoo.hub, "get_token", lambda: "hf_fake_token")
    if where == "connection refused":
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        monkeypatch.setattr(zoo.hub, "HfApi", functools.partial(HfApi, endpoint=_dead_endpoint()))
        reason = "Connection refused"
    elif where == "create_repo 404":
        monkeypatch.setattr(HfApi, "create_repo", _http_error("404 Client Error: Not Found"))
        reason = "404 Client Error: Not Found"
    else:
        monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: None)
        monkeypatch.setattr(HfApi, "upload_folder", _http_error("401 Client Error: Unauthorized"))
        reason = "401 Client Error: Unauthorized"
    before = manifest.read_bytes()
    capsys.readouterr()
    assert zoo.hub.main(["publish", CLI_NAME]) == 2
    out, err = capsys.readouterr()
    _one_error_line(err, f"could not publish {CLI_NAME}", reason, "The manifest is unchanged")
    assert out == "" and manifest.read_bytes() == before
    assert list(temp_root.iterdir()) == []  # the temporary build folder is removed


def test_publish_removes_its_temporary_folder_after_uploading(manifest, temp_root, monkeypatch,
                                                              capsys):
    uploaded = []

    def upload_folder(self, folder_path, **kwargs):
        uploaded.append(sorted(os.listdir(folder_path)))
        return types.SimpleNamespace(oid="f" * 40)

    monkeypatch.setattr(zoo.hub, "get_token", lambda: "hf_fake_token")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: None)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "create_tag", lambda self, *a, **k: None)
    assert zoo.hub.main(["publish", CLI_NAME]) == 0
    assert uploaded == [["README.md", "config.json", "model.safetensors"]]
    assert list(temp_root.iterdir()) == []
    assert capsys.readouterr().out.strip() == (f"published normzoo/{CLI_NAME}@{'f' * 40} and "
                                               f"pinned it in the manifest")


def test_build_onto_a_file_and_a_bad_repo_id_are_one_line(manifest, tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    capsys.readouterr()
    assert zoo.hub.main(["build", CLI_NAME, "--out", str(existing)]) == 2
    _one_error_line(capsys.readouterr().err, f"{existing} is a file")
    assert existing.read_text() == "mine"
    assert zoo.hub.main(["build", CLI_NAME, "--out", str(existing / "hub")]) == 2
    _one_error_line(capsys.readouterr().err, "Not a directory", str(existing / "hub"))

    assert zoo.hub.main(["publish", CLI_NAME, "--repo-id", "not a repo", "--dry-run",
                         "--out", str(tmp_path / "out")]) == 2
    _one_error_line(capsys.readouterr().err, "'not a repo' is not a Hub repo id")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# D11: python -m zoo.convert


def _convert(capsys, *argv):
    capsys.readouterr()
    rc = zoo.convert.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_convert_given_a_folder_says_so(tmp_path, capsys):
    rc, out, err = _convert(capsys, "torchvision", tmp_path, "--out", tmp_path / "out.safetensors",
                            "--model", "resnet18_bn")
    assert rc == 2
    _one_error_line(err, f"{tmp_path} is a folder; pass the checkpoint file in it")
    rc, out, err = _convert(capsys, "torchvision", tmp_path / "r18.pth", "--out", tmp_path,
                            "--model", "resnet18_bn")
    assert rc == 2
    _one_error_line(err, f"the output {tmp_path} is a folder; name the .safetensors file")


def test_convert_names_the_refused_global_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    src = tmp_path / "trojan.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": Payload()}, src)
    rc, out, err = _convert(capsys, "cifar-reproduction", src, "--out", tmp_path / "o.safetensors")
    assert rc == 2
    _one_error_line(err, f"refusing to unpickle {src}: loading it needs the object "
                         f"{os.mkdir.__module__}.mkdir", "torch.save(model.state_dict()")
    assert not marker.exists() and not (tmp_path / "o.safetensors").exists()


# What torch's weights-only unpickler has said on refusing a file (torch 2.6 and 2.14 wordings).
REFUSALS = {
    "global (2.6)": ("Weights only load failed. ...\n\tWeightsUnpickler error: Unsupported global: "
                     "GLOBAL io.open was not an allowed global by default. Please use ...",
                     "loading it needs the object io.open"),
    "blocked module (2.14)": ("Weights only load failed. In PyTorch 2.6, ...\n\n\nTrying to load "
                              "unsupported GLOBAL posix.system whose module posix is blocked.\n",
                              "loading it needs the object posix.system"),
    "no global named": ("Weights only load failed. ...\nPlease file an issue ...: WeightsUnpickler "
                        "error: \n\nUnsupported operand 149\n\nCheck the documentation ...",
                        "stops at 'Unsupported operand 149'"),
    "unknown wording": ("\x1b[1mSomething new\x1b[0m happened\nmore",
                        "stops at 'Something new happened'"),
}


@pytest.mark.parametrize("message, said", REFUSALS.values(), ids=REFUSALS.keys())
def test_convert_explains_a_refusal_in_any_torch_wording(message, said):
    assert said in zoo.convert._refusal(message)


def test_convert_does_not_leak_the_pickle_protocol_warning(tmp_path, capsys):
    state_dict = {("linear" + k[2:] if k.startswith("fc.") else k): v
                  for k, v in zoo.create_model("resnet20_bn").state_dict().items()}
    src = tmp_path / "resnet20.th"
    torch.save(state_dict, src, pickle_protocol=3)  # torch.load warns of any protocol but 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, out, err = _convert(capsys, "cifar-reproduction", src,
                                "--out", tmp_path / "o.safetensors")
    assert rc == 0, err
    assert [str(w.message) for w in caught if "pickle protocol" in str(w.message)] == []
    assert "tensors mapped into resnet20_bn" in out and err == ""


# ---------------------------------------------------------------------------------------------
# D15: python -m zoo


def _demo(capsys, *argv):
    capsys.readouterr()
    rc = demo_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("flag", ["-b", "--limit"])
@pytest.mark.parametrize("value", ["0", "-3", "x"])
def test_demo_sizes_must_be_positive(flag, value, data_root, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo_main(["--data", str(data_root / "cifar10"), flag, value])
    assert exit_info.value.code == 2
    assert f"must be a positive whole number, got '{value}'" in capsys.readouterr().err


def test_demo_refuses_weights_trained_on_other_data(data_root, capsys):
    cifar100 = data_root / "cifar100"
    rc, out, err = _demo(capsys, "--data", cifar100, "--limit", "10")
    assert rc == 2 and out == ""  # no figure printed under the pretrained weights' name
    default = zoo.get_model_weights("resnet20_bn").DEFAULT.value.name
    _one_error_line(err, f"the weights {default} were trained on cifar10 (10 classes)",
                    f"{cifar100} holds 100-class data", "--weights none")

    rc, out, err = _demo(capsys, "--data", cifar100, "--limit", "10", "--weights", "none")
    assert rc == 0, err  # an untrained model of the data's class count is what the demo offers
    assert "UNTRAINED" in out and "chance is 1%" in out


# ---------------------------------------------------------------------------------------------
# D9: eval/validate.py, zoo.evaluate.ImageNetVal, eval/check_manifest.py


def _validate(capsys, dataset, *argv):
    capsys.readouterr()
    rc = validate.main([str(a) for a in argv] + ["--no-progress"], dataset=dataset)
    out, err = capsys.readouterr()
    return rc, out, err


def _cifar_args(checkpoint, data_root):
    return ["--checkpoint", checkpoint, "--data", data_root / "cifar10", "--limit", "8",
            "--device", "cpu"]


@pytest.mark.parametrize("where", ["missing folder", "a file as folder", "a folder"])
def test_an_unwritable_results_file_is_refused_before_evaluating(where, checkpoint, data_root,
                                                                 tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("")
    results = {"missing folder": tmp_path / "nowhere" / "r.csv",
               "a file as folder": tmp_path / "file" / "r.csv", "a folder": tmp_path}[where]
    evaluated = []
    monkeypatch.setattr(validate, "run_one", lambda *a: evaluated.append(a))
    rc, out, err = _validate(capsys, "cifar", *_cifar_args(checkpoint, data_root),
                             "--results-file", results)
    assert rc == 2 and evaluated == []
    _one_error_line(err, f"--results-file {results}")


def test_results_are_printed_when_writing_them_still_fails(checkpoint, data_root, tmp_path,
                                                           monkeypatch, capsys):
    def disk_full(rows, path, fmt):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(validate, "write_results", disk_full)
    rc, out, err = _validate(capsys, "cifar", *_cifar_args(checkpoint, data_root),
                             "--results-file", tmp_path / "r.csv")
    assert rc == 2
    assert "| resnet20_gn | " in out and "| cifar10 test[:8] |" in out  # the results, not lost
    _one_error_line(err, f"could not write {tmp_path / 'r.csv'}", "No space left on device",
                    "the table above")


@pytest.mark.parametrize("flags, message", [
    (["-b", "0"], "must be a positive number of images, got 0"),
    (["--device", "nonsense"], "'nonsense' is not a torch device"),
    (["--interpolation", "cubicle"], "invalid choice: 'cubicle'"),
])
def test_validate_refuses_bad_flags_before_running(flags, message, checkpoint, data_root, capsys):
    with pytest.raises(SystemExit) as exit_info:
        validate.main([str(a) for a in _cifar_args(checkpoint, data_root)] + flags, dataset="cifar")
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def _flat_folder(tmp_path, ground_truth: str):
    """A flat folder of two (never decoded) images and a ground-truth file."""
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in (1, 2):
        (folder / f"ILSVRC2012_val_0000000{i}.JPEG").write_bytes(b"")
    (tmp_path / "gt.txt").write_text(ground_truth)
    return folder, tmp_path / "gt.txt"


@pytest.mark.parametrize("line", [
    "ILSVRC2012_val_00000002.JPEG",          # no label
    "ILSVRC2012_val_00000002.JPEG cat",      # not an integer
    "ILSVRC2012_val_00000002.JPEG 5000",     # no such class
    "ILSVRC2012_val_00000002.JPEG -1",       # evaluate's "unreadable" marker
    "ILSVRC2012_val_00000002.JPEG 3 4",      # two labels
])
def test_bad_ground_truth_lines_are_refused_by_line(line, tmp_path):
    folder, gt = _flat_folder(tmp_path, f"ILSVRC2012_val_00000001.JPEG 65\n\n{line}\n")
    with pytest.raises(ValueError, match=f"{gt} line 3: '{line}' is not a file name and a class "
                                         f"index 0-999"):
        ImageNetVal(folder, None, 64, ground_truth=gt)


def test_bad_ground_truth_through_the_cli_is_one_line(checkpoint, tmp_path, capsys):
    folder, gt = _flat_folder(tmp_path, "ILSVRC2012_val_00000001.JPEG 65\n"
                                        "ILSVRC2012_val_00000002.JPEG 1000\n")
    rc, out, err = _validate(capsys, "imagenet", "--checkpoint", checkpoint, "--data", folder,
                             "--ground-truth", gt, "-j", "0")
    assert rc == 2
    _one_error_line(err, f"{gt} line 2: 'ILSVRC2012_val_00000002.JPEG 1000'")

    rc, out, err = _validate(capsys, "imagenet", "--checkpoint", checkpoint, "--data", folder,
                             "--ground-truth", tmp_path / "missing.txt", "-j", "0")
    assert rc == 2
    _one_error_line(err, f"the ground-truth file {tmp_path / 'missing.txt'} does not exist")


def test_an_empty_folder_or_a_file_is_called_what_it_is(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is empty: expected ImageNet"):
        ImageNetVal(tmp_path, None, 64)
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} holds no images"):
        ImageNetVal(tmp_path, None, 64, ground_truth=tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="notes.txt is a file, not a folder"):
        ImageNetVal(tmp_path / "notes.txt", None, 64)


def test_the_split_counts_only_the_images_scored(data_root, tmp_path, capsys):
    folder = tmp_path / "val" / "n01440764"
    folder.mkdir(parents=True)
    shutil.copy(data_root / "imagenet" / "val" / "n01440764" / "ILSVRC2012_val_00023559.JPEG",
                folder / "a.JPEG")
    (folder / "b.JPEG").write_bytes(b"\xff\xd8\xff not a jpeg")
    torch.manual_seed(0)  # a small 1,000-class model: the CLI takes any checkpoint's classes
    small = {"input_size": [3, 32, 32], "resize": 36, "crop": 32, "interpolation": "bilinear",
             "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    small_ckpt = zoo.save_checkpoint(zoo.create_model("resnet20_gn", num_classes=1000),
                                     tmp_path / "r20-1k.safetensors", tag="t",
                                     dataset="imagenet-1k", preprocessing=small)
    rc, out, err = _validate(capsys, "imagenet", "--checkpoint", small_ckpt, "--data",
                             folder.parent, "-j", "0", "--device", "cpu", "--results-file",
                             tmp_path / "r.json", "--results-format", "json")
    assert rc == 0, err
    assert f"1 unreadable image(s), not scored: {folder / 'b.JPEG'}" in out
    (row,) = json.loads((tmp_path / "r.json").read_text())
    assert (row["images"], row["split"]) == (1, "imagenet-1k val (1 images)")


def test_check_manifest_names_a_missing_data_folder_once(manifest, tmp_path, capsys):
    nowhere = tmp_path / "nowhere"
    capsys.readouterr()
    assert check_manifest.main(["--cifar-data", str(nowhere)]) == 2
    out, err = capsys.readouterr()
    _one_error_line(err, f"{nowhere} holds no CIFAR data")
    assert "accuracy problem" not in out
