"""Hostile weights, checkpoint and cache files (issue 17: D1, D2, D5, D7, D12, D13, D14):
each ends in one clear error that says what was wrong and how to fix it, and loses nothing.

Every test builds its own files under tmp_path; network traffic goes to loopback only
(tests/support/hub_server.py, or a small server here). Fetches run in-process: the entries are
unpublished (mirror only) or the Hugging Face cache is pointed at tmp_path.
"""

import errno
import hashlib
import http.server
import json
import os
import stat
import threading
from pathlib import Path
from typing import Optional

import pytest
import requests
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import zoo
import zoo.hub
import zoo.weights
from zoo.weights import WeightsError, write_manifest

from conftest import one_error_line

# One torch thread (the tiny models gain nothing from more); one process, even under torchrun.
pytestmark = pytest.mark.usefixtures("one_thread", "not_distributed")


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


def _offline_hf_cache_pointing_to(bad: Path, tmp_path, monkeypatch, ckpt, entry):
    """An offline Hugging Face cache whose snapshot of the entry's pinned revision links to
    ``bad``, written with a tampered copy of the checkpoint. Returns (cache, pointer)."""
    from huggingface_hub import constants

    _use_manifest(tmp_path, monkeypatch, dict(entry, revision=COMMIT))
    hub_cache = tmp_path / "hf_home" / "hub"
    pointer = _hf_repo(tmp_path, entry) / "snapshots" / COMMIT / "model.safetensors"
    bad.parent.mkdir(parents=True)
    pointer.parent.mkdir(parents=True)
    bad.write_bytes(_tampered(ckpt["bytes"]))
    pointer.symlink_to(os.path.relpath(bad, pointer.parent))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_cache, pointer


def _hf_repo(tmp_path, entry) -> Path:
    """The entry's folder in the Hugging Face cache under tmp_path."""
    return tmp_path / "hf_home" / "hub" / f"models--{entry['hub_repo_id'].replace('/', '--')}"


def _hf_blob(tmp_path, entry, ckpt) -> Path:
    return _hf_repo(tmp_path, entry) / "blobs" / ckpt["sha256"]


def test_read_only_hf_cache_with_a_tampered_blob(tmp_path, monkeypatch, ckpt, entry, read_only):
    blob = _hf_blob(tmp_path, entry, ckpt)
    hub_cache, pointer = _offline_hf_cache_pointing_to(blob, tmp_path, monkeypatch, ckpt, entry)
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




# ---------------------------------------------------------------------------------------------
# Issue 29: the Hugging Face cache, the manifest's link, hf-hub: revisions, lying metadata


def _doctored(src: Path, dest: Path, metadata: Optional[dict] = None, **changes) -> Path:
    """``src``'s tensors under other metadata: ``metadata`` as given, or ``src``'s with
    ``changes`` (None drops a field; a dict or list is JSON-encoded as save_checkpoint does)."""
    if metadata is None:
        with safe_open(str(src), framework="pt") as f:
            metadata = dict(f.metadata())
        for field, value in changes.items():
            if value is None:
                metadata.pop(field)
            else:
                metadata[field] = value if isinstance(value, str) else json.dumps(value)
    save_file(load_file(str(src)), str(dest), metadata=metadata or None)
    return dest


def _hub_at(monkeypatch, hub, tmp_path) -> Path:
    """huggingface_hub in this process downloads from the loopback hub into a new cache."""
    from huggingface_hub import constants

    cache = tmp_path / "hf_home" / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    return cache


@pytest.mark.parametrize("target", ["a blob of the cache", "a user's file outside the cache"])
def test_bad_hf_cache_copy_removes_only_what_the_cache_holds(target, tmp_path, monkeypatch, ckpt,
                                                             entry):
    """H1 was: the snapshot pointer's final target was unlinked wherever it lay, so a pointer
    to a user's own file deleted that file."""
    bad = (_hf_blob(tmp_path, entry, ckpt) if target == "a blob of the cache"
           else tmp_path / "mine" / "model.safetensors")
    _, pointer = _offline_hf_cache_pointing_to(bad, tmp_path, monkeypatch, ckpt, entry)

    with pytest.raises(WeightsError) as raised:
        zoo.create_model(MODEL, weights="DEFAULT", progress=False)
    assert f"Hugging Face cache file {pointer}: sha256" in str(raised.value)
    assert not pointer.is_symlink()  # the bad pointer goes either way
    assert bad.exists() == (target == "a user's file outside the cache")


def test_manifest_written_through_a_link_updates_the_linked_file(tmp_path, monkeypatch, ckpt):
    """H4 was: os.replace turned the repo root's weights_manifest.json link into a regular
    file, and the package's manifest beside it stayed stale."""
    real = tmp_path / "pkg" / "weights_manifest.json"
    real.parent.mkdir()
    real.write_text(json.dumps({"schema_version": 1, "weights": []}))
    link = tmp_path / "root" / "weights_manifest.json"
    link.parent.mkdir()
    link.symlink_to(os.path.relpath(real, link.parent))
    monkeypatch.setenv("NORMZOO_MANIFEST", str(link))

    zoo.hub.register(ckpt["path"], ship=True)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert [e["name"] for e in json.loads(real.read_text())["weights"]] == [WEIGHTS_NAME]
    shipped = real.parent / "pretrained" / f"{WEIGHTS_NAME}.safetensors"
    assert shipped.read_bytes() == ckpt["bytes"]  # beside the manifest the link names
    assert sorted(p.name for p in link.parent.iterdir()) == ["weights_manifest.json"]
    assert zoo.get_weight(WEIGHTS_NAME).fetch(progress=False).resolve() == shipped.resolve()


@pytest.mark.parametrize("revision", ["x/../../../../outside/file", "/etc/passwd", "main\\x",
                                      "main\0x"])
def test_hf_hub_revision_that_leaves_the_cache_is_refused(revision, tmp_path, monkeypatch, ckpt,
                                                          hub):
    """H5 was: the revision went to huggingface_hub unchecked, which wrote the commit hash
    into refs/<revision>, a path that '..' took out of the cache."""
    from urllib.parse import quote

    _use_manifest(tmp_path, monkeypatch)
    _hub_at(monkeypatch, hub, tmp_path)
    hub.files[("owner/name", quote(revision, safe=""), "model.safetensors")] = ckpt["bytes"]
    with pytest.raises(WeightsError) as raised:
        zoo.create_model(MODEL, weights=f"hf-hub:owner/name@{revision}", progress=False)
    message = str(raised.value)
    assert "\n" not in message and "the revision must be a branch, tag or commit" in message
    assert hub.requests == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]  # no cache, nothing outside


@pytest.mark.parametrize("metadata, via", [("none", "path"), ("no model field", "path"),
                                           ("none", "hf-hub")])
def test_checkpoint_that_does_not_name_its_model_is_refused(metadata, via, tmp_path, monkeypatch,
                                                            checkpoint, hub):
    """H6 was: a file without metadata, or without 'model', loaded into any model its tensors
    fit (resnet20_gn's into resnet20_ln), and over hf-hub: the log said it was checked."""
    file = _doctored(checkpoint, tmp_path / "model.safetensors",
                     {"format": "pt"} if metadata == "none" else None,
                     **({} if metadata == "none" else {"model": None}))
    weights = file
    if via == "hf-hub":
        _use_manifest(tmp_path, monkeypatch)
        _hub_at(monkeypatch, hub, tmp_path)
        hub.files[("owner/name", "main", "model.safetensors")] = file.read_bytes()
        weights = "hf-hub:owner/name"
    with pytest.raises(WeightsError) as raised:
        zoo.create_model("resnet20_ln", weights=weights, progress=False)
    message = str(raised.value)
    assert "\n" not in message
    assert "does not name its model" in message and "zoo.save_checkpoint" in message


@pytest.mark.parametrize("field, value", [
    ("num_classes", "100000000"),
    ("preprocessing", {"input_size": [3, 60000, 60000], "resize": None, "crop": 60000,
                       "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}),
    ("model_kwargs", {"no_such_option": 1}),
    ("norm_kwargs", {"eps": "x", "momentum": 0.1}),
])
def test_lying_metadata_is_refused_before_anything_is_built(field, value, tmp_path, monkeypatch,
                                                            ckpt, manifest, capsys):
    """H10 was: the model was built (25 GB for 1e8 classes) or its GMACs counted (at 60000 px)
    before anything was checked, and unknown or mistyped options gave raw TypeErrors."""
    real_linear, real_gmacs = torch.nn.Linear.__init__, zoo.hub.count_gmacs

    def bounded_linear(self, in_features, out_features, *args, **kwargs):  # the test's guard
        assert out_features <= 10 ** 6, f"built a Linear with {out_features} outputs"
        real_linear(self, in_features, out_features, *args, **kwargs)

    def bounded_gmacs(model, input_size):
        assert max(input_size) <= 4096, f"counted GMACs at {input_size}"
        return real_gmacs(model, input_size)

    monkeypatch.setattr(torch.nn.Linear, "__init__", bounded_linear)
    monkeypatch.setattr(zoo.hub, "count_gmacs", bounded_gmacs)
    file = _doctored(ckpt["path"], tmp_path / "lying.safetensors", **{field: value})
    with pytest.raises(WeightsError) as raised:
        zoo.create_model(MODEL, weights=file)
    assert str(raised.value).startswith(f"{file}: metadata field {field!r} ")
    before = manifest.read_bytes()
    capsys.readouterr()
    assert zoo.hub.main(["register", str(file)]) == 2
    one_error_line(capsys.readouterr().err, f"{file}: metadata field {field!r} ")
    assert manifest.read_bytes() == before


@pytest.mark.parametrize("case", ["offline, cold cache", "a repo of pickles only",
                                  "a 300-character file name"])
def test_weights_messages_say_what_to_do(case, tmp_path, monkeypatch, ckpt, hub):
    """H15 was: 'check your Internet connection' with HF_HUB_OFFLINE set, a bare '404 Entry Not
    Found' for a repo without model.safetensors, an OSError traceback for a long name."""
    from huggingface_hub import constants

    _use_manifest(tmp_path, monkeypatch)
    _hub_at(monkeypatch, hub, tmp_path)
    weights, expected = "hf-hub:owner/name", []
    if case == "offline, cold cache":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        expected = ["not in the Hugging Face cache", "HF_HUB_OFFLINE is set", "unset"]
    elif case == "a repo of pickles only":
        hub.files[("owner/name", "main", "pytorch_model.bin")] = b"pickle bytes"
        expected = ["has no model.safetensors", "never pickles", "python -m zoo.convert"]
    else:
        weights = str(tmp_path / ("x" * 300 + ".safetensors"))
        expected = ["File name too long"]
    with pytest.raises(WeightsError) as raised:
        zoo.create_model(MODEL, weights=weights, progress=False)
    message = str(raised.value)
    assert "\n" not in message, message
    for fragment in expected:
        assert fragment in message, (fragment, message)
