"""``python -m zoo.hub`` given careless input (issue 17: D6): each mistake ends in one
``error: ...`` line and exit status 2, before any work it would waste, and loses nothing.
Hub calls stop at the ``HfApi`` boundary or at a loopback port nothing listens on."""

import errno
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from huggingface_hub.utils import HfHubHTTPError
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import zoo
import zoo.hub
from zoo.weights import WeightsError, load_manifest
from hub_server import NEVER

from conftest import CLI_METRICS, CLI_NAME, REPO, one_error_line

# One torch thread (the tiny models gain nothing from more); one process, even under torchrun.
pytestmark = pytest.mark.usefixtures("one_thread", "not_distributed")


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    """Where tempfile makes its folders for this test (to see what is left behind)."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


# ---------------------------------------------------------------------------------------------
# D6: python -m zoo.hub


def test_publish_checks_the_token_before_building_anything(registered_manifest, temp_root,
                                                           monkeypatch):
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
def test_publish_network_errors_are_one_line_and_leave_nothing(where, registered_manifest,
                                                               temp_root,
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
    before = registered_manifest.read_bytes()
    capsys.readouterr()
    assert zoo.hub.main(["publish", CLI_NAME]) == 2
    out, err = capsys.readouterr()
    one_error_line(err, f"could not publish {CLI_NAME}", reason, "The manifest is unchanged")
    assert out == "" and registered_manifest.read_bytes() == before
    assert list(temp_root.iterdir()) == []  # the temporary build folder is removed


def test_publish_removes_its_temporary_folder_after_uploading(registered_manifest, temp_root,
                                                              monkeypatch,
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


def test_build_onto_a_file_and_a_bad_repo_id_are_one_line(registered_manifest, tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    capsys.readouterr()
    assert zoo.hub.main(["build", CLI_NAME, "--out", str(existing)]) == 2
    one_error_line(capsys.readouterr().err, f"{existing} is a file")
    assert existing.read_text() == "mine"
    assert zoo.hub.main(["build", CLI_NAME, "--out", str(existing / "hub")]) == 2
    one_error_line(capsys.readouterr().err, "Not a directory", str(existing / "hub"))

    assert zoo.hub.main(["publish", CLI_NAME, "--repo-id", "not a repo", "--dry-run",
                         "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys.readouterr().err, "'not a repo' is not a Hub repo id")
    assert not (tmp_path / "out").exists()




# ---------------------------------------------------------------------------------------------
# Issue 29: register and publish lose no file and write nothing outside their folders


def _relabelled(checkpoint: Path, dest: Path, **fields) -> Path:
    """``checkpoint``'s tensors with some metadata fields replaced (dicts JSON-encoded)."""
    with safe_open(str(checkpoint), framework="pt") as f:
        metadata = dict(f.metadata())
    metadata.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()})
    save_file(load_file(str(checkpoint)), str(dest), metadata=metadata)
    return dest


@pytest.mark.parametrize("case", ["a name that leaves the package",
                                  "an entry's name, then refused", "the manifest write fails"])
def test_register_ship_changes_no_file_until_the_manifest_is_written(case, registered_manifest,
                                                                      checkpoint, tmp_path,
                                                                      monkeypatch, capsys):
    """H2 was: the copy into pretrained/ came before the entry was checked, so a crafted name
    wrote outside the package, and a refused (or unwritten) entry replaced the shipped copy
    another entry's sha256 pins."""
    pretrained = registered_manifest.parent / "pretrained"
    shipped = {p.name: p.read_bytes() for p in pretrained.iterdir()}
    if case == "a name that leaves the package":
        file = _relabelled(checkpoint, tmp_path / "evil.safetensors", name="../../outside/evil")
        fragment = "name must be '{model}.{tag}'"
    elif case == "an entry's name, then refused":
        file = _relabelled(checkpoint, tmp_path / "clash.safetensors", tag="other")
        fragment = "name must be '{model}.{tag}'"
    else:
        file = _relabelled(checkpoint, tmp_path / "second.safetensors", tag="second",
                           name="resnet20_gn.second")

        def full_disk(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(registered_manifest))

        monkeypatch.setattr(zoo.hub, "write_manifest", full_disk)
        fragment = "No space left on device"
    before = registered_manifest.read_bytes()
    capsys.readouterr()
    assert zoo.hub.main(["register", str(file), "--ship"]) == 2
    one_error_line(capsys.readouterr().err, fragment)
    assert registered_manifest.read_bytes() == before
    assert {p.name: p.read_bytes() for p in pretrained.iterdir()} == shipped  # no temp left
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [file.name, "pkg", "tmp"] if (tmp_path / "tmp").exists() else [file.name, "pkg"])


def test_registers_that_overlap_keep_every_entry(manifest, checkpoint, tmp_path, monkeypatch):
    """H3 was: each register read the manifest, computed its entry and wrote it back, so of
    registers that overlapped only the last one's entry survived. The overlap is forced: two
    registers run while the first computes its entry, between its read and its write."""
    others = [_relabelled(checkpoint, tmp_path / f"{tag}.safetensors", tag=tag,
                          name=f"resnet20_gn.{tag}") for tag in ("second", "third")]
    real_make_entry, raced = zoo.hub.make_entry, []

    def overlapping(path, **kwargs):  # the test's hook: the others register meanwhile
        if not raced:
            raced.append(path)
            for other in others:
                zoo.hub.register(other)
        return real_make_entry(path, **kwargs)

    monkeypatch.setattr(zoo.hub, "make_entry", overlapping)
    zoo.hub.register(checkpoint)
    entries = load_manifest(manifest)["weights"]
    assert [e["name"] for e in entries] == ["resnet20_gn.second", "resnet20_gn.third", CLI_NAME]
    assert [e["default"] for e in entries] == [True, False, False]  # still one default


def test_register_refuses_other_weights_under_a_registered_name(registered_manifest, checkpoint,
                                                                 tmp_path, capsys):
    """A re-register replaced the entry, so the tag named new weights (pinned to the old
    entry's Hub revision): a weights tag never changes meaning."""
    file = _relabelled(checkpoint, tmp_path / "newer.safetensors", metrics=dict(CLI_METRICS, top1=51.0))
    shipped = registered_manifest.parent / "pretrained" / f"{CLI_NAME}.safetensors"
    before, before_shipped = registered_manifest.read_bytes(), shipped.read_bytes()
    capsys.readouterr()
    assert zoo.hub.main(["register", str(file), "--ship"]) == 2
    one_error_line(capsys.readouterr().err, f"{CLI_NAME} already names other weights",
                   "--tag NEW")
    assert registered_manifest.read_bytes() == before and shipped.read_bytes() == before_shipped
    assert zoo.hub.main(["register", str(checkpoint), "--mirror-url", "http://127.0.0.1:9/m"]) == 0
    entry, = load_manifest(registered_manifest)["weights"]  # the same file: its mirror updated
    assert entry["mirror_url"] == "http://127.0.0.1:9/m"


def test_register_under_another_tag_ships_a_relabelled_copy(registered_manifest, checkpoint,
                                                            tmp_path, capsys):
    """An extra seed trained under the run's default tag is published under its own."""
    capsys.readouterr()
    assert zoo.hub.main(["register", str(checkpoint), "--tag", "cifar10_s1"]) == 2
    one_error_line(capsys.readouterr().err, "only --ship keeps", "add --ship")
    assert zoo.hub.main(["register", str(checkpoint), "--tag", "cifar10_s1", "--ship"]) == 0
    assert "registered resnet20_gn.cifar10_s1" in capsys.readouterr().out
    entries = {e["name"]: e for e in load_manifest(registered_manifest)["weights"]}
    assert set(entries) == {CLI_NAME, "resnet20_gn.cifar10_s1"}
    new, old = entries["resnet20_gn.cifar10_s1"], entries[CLI_NAME]
    assert (new["tag"], new["default"], old["default"]) == ("cifar10_s1", False, True)
    assert new["metrics"] == old["metrics"] and new["recipe"] == old["recipe"]
    shipped = registered_manifest.parent / new["shipped"]
    assert zoo.weights.read_metadata(shipped)["tag"] == "cifar10_s1"
    original, copy = load_file(str(checkpoint)), load_file(str(shipped))
    assert original.keys() == copy.keys() and all(original[k].equal(copy[k]) for k in original)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]  # no temporary copy left


@pytest.mark.parametrize("field, value", [("top1", float("nan")), ("top1", 1e9), ("top5", "x"),
                                          ("num_images", -1)])
def test_register_refuses_metrics_that_are_not_figures(field, value, registered_manifest,
                                                       checkpoint, tmp_path, capsys):
    """H11 was: NaN went into the manifest (which is then not JSON), and top1 1e9, top5 "x"
    and num_images -1 were registered."""
    file = _relabelled(checkpoint, tmp_path / "odd.safetensors",
                       metrics=dict(CLI_METRICS, **{field: value}))
    before = registered_manifest.read_bytes()
    capsys.readouterr()
    assert zoo.hub.main(["register", str(file)]) == 2
    one_error_line(capsys.readouterr().err, f"metrics.{field} must be")
    assert registered_manifest.read_bytes() == before


SIGTERM_DURING_UPLOAD = """
import os, signal, sys, tempfile
from huggingface_hub import HfApi
import zoo.hub
tempfile.tempdir = sys.argv[1]
zoo.hub.get_token = lambda: "hf_fake_token"
HfApi.create_repo = lambda self, *a, **k: None
HfApi.upload_folder = lambda self, *a, **k: os.kill(os.getpid(), signal.SIGTERM)
sys.exit(zoo.hub.main(["publish", sys.argv[2]]))
"""


@pytest.mark.parametrize("server", ["answers with no JSON", "never answers", "SIGTERM"])
def test_publish_against_a_misbehaving_server_is_one_line_and_leaves_nothing(
        server, registered_manifest, temp_root, hub, monkeypatch, capsys):
    """H12 was: a JSONDecodeError traceback, a publish that hung without a word, and a temporary
    folder left by SIGTERM."""
    before = registered_manifest.read_bytes()
    if server == "SIGTERM":  # a process of its own: the signal ends it
        env = dict(os.environ, PYTHONPATH=str(REPO), NORMZOO_MANIFEST=str(registered_manifest),
                   OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, "-c", SIGTERM_DURING_UPLOAD, str(temp_root),
                               CLI_NAME], env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
        err = proc.stderr
        fragments = ["stopped by SIGTERM"]
    else:
        monkeypatch.setattr(zoo.hub, "get_token", lambda: "hf_fake_token")
        monkeypatch.setattr(zoo.hub, "HfApi", functools.partial(HfApi, endpoint=hub.url))
        monkeypatch.setattr(zoo.hub, "HUB_TIMEOUT_S", 0.2)  # a tiny one: nothing waits long
        hub.api["/api/repos/create"] = (b"<html>upstream error</html>"
                                        if server == "answers with no JSON" else NEVER)
        capsys.readouterr()
        assert zoo.hub.main(["publish", CLI_NAME]) == 2
        err = capsys.readouterr().err
        fragments = [f"could not publish {CLI_NAME}", "The manifest is unchanged",
                     "not JSON" if server == "answers with no JSON" else "no answer in 0.2 s"]
        assert hub.requests == [("POST", "/api/repos/create")]
    one_error_line(err, *fragments)
    assert registered_manifest.read_bytes() == before
    assert list(temp_root.iterdir()) == []
