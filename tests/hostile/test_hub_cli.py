"""``python -m zoo.hub`` given careless input (issue 17: D6): each mistake ends in one
``error: ...`` line and exit status 2, before any work it would waste, and loses nothing.
Hub calls stop at the ``HfApi`` boundary or at a loopback port nothing listens on."""

import functools
import os
import socket
import tempfile
import types

import pytest
from huggingface_hub import HfApi
from huggingface_hub.utils import HfHubHTTPError

import zoo
import zoo.hub
from zoo.weights import WeightsError

from conftest import CLI_NAME, one_error_line

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


