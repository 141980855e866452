"""Pretrained weights end to end: Hub download, cache, offline, tampering, mirror, torch.hub,
publishing and the ``python -m zoo.hub`` tools, all against a loopback server (tests/support/hub_server.py).

huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE when it is imported, so every
load runs in a fresh Python process (each doing several loads to keep the count small);
publishing is tested in-process at the ``HfApi`` boundary.
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

import zoo
import zoo.hub
from zoo.weights import WeightsError, load_manifest, write_manifest
from hub_server import FakeHub

from conftest import REPO

MODEL = "resnet20_gn"
NAME = f"{MODEL}.cifar10"
REPO_ID = "normzoo-test/resnet20-gn"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
FILENAME = "model.safetensors"
METRICS = {"top1": 91.23, "top5": 99.71, "split": "test", "num_images": 10000}
RECIPE = {"command": "python -m train --model resnet20_gn", "commit": "f" * 40}

# What every subprocess starts with: the reference input/output and a load() that reports.
PRELUDE = """
import json, os, sys
import torch, zoo
from safetensors.torch import load_file
ref = load_file(sys.argv[1])

def load(weights="DEFAULT"):
    try:
        model = zoo.create_model("resnet20_gn", weights=weights, progress=False).eval()
    except zoo.WeightsError as e:
        return {"ok": False, "error": str(e)}
    with torch.no_grad():
        return {"ok": True, "equal": torch.equal(model(ref["x"]), ref["y"])}
"""


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A trained-looking resnet20_gn checkpoint plus its reference input and outputs."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(1234)
    model = zoo.create_model(MODEL).eval()
    with torch.no_grad():
        for p in model.parameters():  # make the norms' affine parameters non-trivial too
            p.add_(0.05 * torch.randn_like(p))
        x = torch.randn(2, 3, 32, 32)
        y = model(x)
    ckpt = zoo.save_checkpoint(model, root / "ckpt" / f"{NAME}.safetensors", tag="cifar10",
                               metrics=METRICS, recipe=RECIPE)
    other = zoo.save_checkpoint(model, root / "ckpt" / f"{MODEL}.tampered.safetensors",
                                tag="tampered", metrics=METRICS, recipe=RECIPE)
    ref = root / "ref.safetensors"
    save_file({"x": x, "y": y}, str(ref))
    return {"ckpt": ckpt, "other": other, "ref": ref, "bytes": ckpt.read_bytes(),
            "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}


def _tampered(data: bytes) -> bytes:
    """Same length, one byte of tensor data flipped: still a valid safetensors file."""
    i = len(data) - 100
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]


def _make_manifest(tmp_path, monkeypatch, ckpt, *, published=False, ship=False,
                   mirror_url=None, name="manifest") -> Path:
    """A fresh manifest (selected through NORMZOO_MANIFEST) with ``ckpt`` registered."""
    path = tmp_path / name / "weights_manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schema_version": 1, "weights": []}))
    monkeypatch.setenv("NORMZOO_MANIFEST", str(path))
    zoo.hub.register(ckpt, ship=ship, hub_repo_id=REPO_ID, mirror_url=mirror_url)
    if published:
        data = load_manifest(path)
        data["weights"][-1]["revision"] = COMMIT
        write_manifest(data, path)
    return path


def _env(manifest: Path, tmp_path: Path, endpoint: str, *, offline=False, hf_home=None,
         cache=None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "NORMZOO_", "HUGGINGFACE_"))
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        HF_ENDPOINT=endpoint,
        HF_HOME=str(hf_home or tmp_path / "hf_home"),
        NORMZOO_MANIFEST=str(manifest),
        NORMZOO_CACHE=str(cache or tmp_path / "normzoo_cache"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY="127.0.0.1,localhost",
    )
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def _run(code: str, env: dict, ref: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code), str(ref)],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=180)


def _result(proc: subprocess.CompletedProcess):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _gets(hub: FakeHub, path: str) -> int:
    return sum(1 for method, p in hub.requests if method == "GET" and p.split("?")[0] == path)


def _resolve_path(filename=FILENAME) -> str:
    return f"/{REPO_ID}/resolve/{COMMIT}/{filename}"


def _dead_endpoint() -> str:
    """A loopback URL nothing listens on."""
    server = FakeHub()
    url = server.url
    server.server.server_close()
    return url


def _files_under(root: Path, locks: bool = True) -> list[Path]:
    return [p for p in root.rglob("*") if (p.is_file() or p.is_symlink())
            and (locks or p.suffix != ".lock")]


# ---------------------------------------------------------------------------------------------
# 1. The Hub download path, the cache, and offline use


def test_hf_hub_prefix_loads_pinned_and_unpinned_repos_and_offline(tmp_path, monkeypatch,
                                                                    artifacts, hub):
    """weights="hf-hub:owner/name[@revision]": a repo in the manifest is its pinned, sha256-
    verified entry; any other repo's model.safetensors is checked against its own metadata
    and logged as not pinned; the HF cache serves it offline."""
    manifest = _make_manifest(tmp_path, monkeypatch, artifacts["ckpt"], published=True)
    other = "someone/r20-gn-finetune"
    other_commit = "fedcba9876543210fedcba9876543210fedcba98"
    hub.files[(REPO_ID, COMMIT, FILENAME)] = artifacts["bytes"]
    hub.files[(other, other_commit, FILENAME)] = artifacts["bytes"]
    env = _env(manifest, tmp_path, hub.url)
    proc = _run(f"""
        print(json.dumps([load("hf-hub:{REPO_ID}"), load("hf-hub:{REPO_ID}@{COMMIT}"),
                          load("hf-hub:{other}@{other_commit}"),
                          load("hf-hub:someone/missing@{other_commit}"), load("{other}"),
                          load("hf-hub:{other}@")]))
    """, env, artifacts["ref"], tmp_path)
    pinned, pinned_at, unpinned, missing, bare, empty_revision = _result(proc)
    assert pinned == pinned_at == unpinned == {"ok": True, "equal": True}
    assert _gets(hub, _resolve_path()) == 1  # the second pinned load came from the cache
    assert proc.stderr.count("is not in NormZoo's manifest, so no sha256 pins it") == 1
    assert missing["error"].startswith(f"could not get {FILENAME} of hf-hub:someone/missing@")
    assert f"write weights='hf-hub:{other}'" in bare["error"]
    assert "is not 'hf-hub:owner/name' or 'hf-hub:owner/name@revision'" in empty_revision["error"]

    hub.stop()
    offline = _run(f'print(json.dumps(load("hf-hub:{other}@{other_commit}")))',
                   _env(manifest, tmp_path, hub.url, offline=True), artifacts["ref"], tmp_path)
    assert _result(offline) == {"ok": True, "equal": True}



def test_hub_download_then_cache_then_offline_cold(tmp_path, monkeypatch, artifacts, hub):
    manifest = _make_manifest(tmp_path, monkeypatch, artifacts["ckpt"], published=True)
    entry = load_manifest(manifest)["weights"][0]
    assert (entry["revision"], entry["hub_repo_id"], entry["shipped"]) == (COMMIT, REPO_ID, None)
    hub.files[(REPO_ID, COMMIT, FILENAME)] = artifacts["bytes"]
    env = _env(manifest, tmp_path, hub.url)

    first = _result(_run("print(json.dumps(load()))", env, artifacts["ref"], tmp_path))
    assert first == {"ok": True, "equal": True}
    assert _gets(hub, _resolve_path()) == 1

    hub.stop()  # the cached copy is enough now
    second = _result(_run("""
        print(json.dumps([load(), load("cifar10"), load("resnet20_gn.cifar10")]))
    """, env, artifacts["ref"], tmp_path))
    assert second == [{"ok": True, "equal": True}] * 3

    # Offline with a cold cache: a clear error, no request, an ordinary traceback.
    watcher = FakeHub().start()
    try:
        watcher.files[(REPO_ID, COMMIT, FILENAME)] = artifacts["bytes"]
        cold = _env(manifest, tmp_path, watcher.url, offline=True, hf_home=tmp_path / "cold")
        proc = _run('zoo.create_model("resnet20_gn", weights="DEFAULT", progress=False)',
                    cold, artifacts["ref"], tmp_path)
        assert watcher.requests == []
    finally:
        watcher.stop()
    assert proc.returncode == 1
    err = proc.stderr
    assert err.count("Traceback (most recent call last)") == 1
    assert "During handling of the above exception" not in err  # no chained noise
    assert "The above exception was the direct cause" not in err
    message = err[err.index("zoo.weights.WeightsError: "):]
    assert message.startswith(f"zoo.weights.WeightsError: could not get a verified copy of {NAME}")
    assert f"Hugging Face Hub {REPO_ID}@{COMMIT[:12]}" in message
    assert "not in the cache and HF_HUB_OFFLINE is set" in message
    assert f"hf download {REPO_ID} {FILENAME} --revision {COMMIT}" in message
    assert "HF_HUB_OFFLINE" in message.split("To fix:")[1]
    assert "HF_HOME" in message
    assert f"weights='path/to/{FILENAME}'" in message
    assert artifacts["sha256"] in message
    cold_files = _files_under(tmp_path / "cold") if (tmp_path / "cold").exists() else []
    assert not [p for p in cold_files if p.name == FILENAME]


# ---------------------------------------------------------------------------------------------
# 2. A tampered file on the Hub


def test_tampered_hub_file_is_retried_once_then_removed(tmp_path, monkeypatch, artifacts, hub):
    manifest = _make_manifest(tmp_path, monkeypatch, artifacts["ckpt"], published=True)
    bad = _tampered(artifacts["bytes"])
    hub.files[(REPO_ID, COMMIT, FILENAME)] = bad
    hf_home = tmp_path / "hf_home"
    out = _result(_run("print(json.dumps(load()))", _env(manifest, tmp_path, hub.url),
                       artifacts["ref"], tmp_path))

    assert out["ok"] is False
    error = out["error"]
    assert error.startswith(f"could not get a verified copy of {NAME}")
    assert error.count("downloaded file") == 2 and "sha256" in error
    assert hashlib.sha256(bad).hexdigest()[:16] in error and artifacts["sha256"][:16] in error
    assert "corrupt, truncated or tampered" in error
    assert "To fix:" in error
    assert _gets(hub, _resolve_path()) == 2  # one retry, no more

    left = _files_under(hf_home)
    assert not [p for p in left if p.name == FILENAME], left  # no snapshot pointer
    assert not [p for p in left if p.is_file() and not p.is_symlink()
                and p.stat().st_size == len(bad) and p.read_bytes() == bad], left  # no blob
    repo_cache = hf_home / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    assert not any((repo_cache / "blobs").glob("*")) if (repo_cache / "blobs").exists() else True


# ---------------------------------------------------------------------------------------------
# 3. The mirror URL (an unpublished entry)


def test_mirror_download_cache_and_tampered_mirror(tmp_path, monkeypatch, artifacts, hub):
    good_url, bad_url = f"{hub.url}/mirror/x.safetensors", f"{hub.url}/mirror/t.safetensors"
    manifest = _make_manifest(tmp_path, monkeypatch, artifacts["ckpt"], mirror_url=good_url)
    zoo.hub.register(artifacts["other"], hub_repo_id=REPO_ID, mirror_url=bad_url)
    entries = {e["name"]: e for e in load_manifest(manifest)["weights"]}
    assert entries[NAME]["revision"] == entries[f"{MODEL}.tampered"]["revision"] == "unpublished"
    assert entries[NAME]["default"] and not entries[f"{MODEL}.tampered"]["default"]
    hub.mirror["x.safetensors"] = artifacts["bytes"]
    hub.mirror["t.safetensors"] = _tampered(artifacts["other"].read_bytes())
    good_cache, bad_cache = tmp_path / "good_cache", tmp_path / "bad_cache"
    env = _env(manifest, tmp_path, hub.url, cache=good_cache)

    out = _result(_run(f"""
        os.environ["NORMZOO_CACHE"] = {str(bad_cache)!r}
        tampered = load("tampered")
        os.environ["NORMZOO_CACHE"] = {str(good_cache)!r}
        print(json.dumps([tampered, load()]))
    """, env, artifacts["ref"], tmp_path))
    tampered, good = out
    assert good == {"ok": True, "equal": True}
    assert tampered["ok"] is False
    assert tampered["error"].count(f"mirror download {bad_url}") == 2 and "sha256" in tampered["error"]
    assert "It is not published" not in tampered["error"] and f"download {bad_url}" in tampered["error"]
    assert "Hugging Face Hub: not published yet" in tampered["error"]
    assert _gets(hub, "/mirror/t.safetensors") == 2
    assert _gets(hub, "/mirror/x.safetensors") == 1
    assert not any("/resolve/" in p for _, p in hub.requests)  # unpublished: the Hub is skipped
    # no partial file, no temp file; each cache file's lock stays (other processes share it)
    assert _files_under(bad_cache / "weights", locks=False) == []
    cached = _files_under(good_cache / "weights", locks=False)
    assert [p.name for p in cached] == [f"{NAME}-{artifacts['sha256'][:16]}.safetensors"]
    assert cached[0].read_bytes() == artifacts["bytes"]

    hub.stop()
    again = _result(_run("print(json.dumps(load()))", env, artifacts["ref"], tmp_path))
    assert again == {"ok": True, "equal": True}
    assert _gets(hub, "/mirror/x.safetensors") == 1


# ---------------------------------------------------------------------------------------------
# 4. A Hub cache file corrupted on disk


def test_corrupted_hub_cache_is_replaced(tmp_path, monkeypatch, artifacts, hub):
    manifest = _make_manifest(tmp_path, monkeypatch, artifacts["ckpt"], published=True)
    hub.files[(REPO_ID, COMMIT, FILENAME)] = artifacts["bytes"]
    out = _result(_run(f"""
        from pathlib import Path
        from huggingface_hub import constants, try_to_load_from_cache

        def corrupt():
            pointer = Path(try_to_load_from_cache({REPO_ID!r}, {FILENAME!r}, revision={COMMIT!r}))
            blob = pointer.resolve()
            data = bytearray(blob.read_bytes())
            data[-100] ^= 0xFF
            blob.write_bytes(bytes(data))
            return str(pointer), str(blob)

        first = load()
        pointer, blob = corrupt()
        second = load()  # online: detected, removed, downloaded again
        corrupt()
        constants.HF_HUB_OFFLINE = True  # as if HF_HUB_OFFLINE=1 had been set at import
        offline = load()  # detected and removed, nothing to download it with
        left = [str(p) for p in Path(pointer).parents[2].rglob("*") if p.is_file()]
        print(json.dumps([first, second, offline, pointer, blob, left]))
    """, _env(manifest, tmp_path, hub.url), artifacts["ref"], tmp_path))
    first, second, offline, pointer, blob, left = out
    assert first == second == {"ok": True, "equal": True}
    assert pointer != blob and Path(blob).parent.name == "blobs"
    assert _gets(hub, _resolve_path()) == 2  # detected, removed, downloaded again

    assert offline["ok"] is False
    assert "Hugging Face cache file" in offline["error"] and "sha256" in offline["error"]
    assert "not in the cache and HF_HUB_OFFLINE is set" in offline["error"]
    assert left == [] and not Path(pointer).is_symlink()  # the corrupt copy is gone
    assert _gets(hub, _resolve_path()) == 2


# ---------------------------------------------------------------------------------------------
# 5. torch.hub with a shipped entry, offline


def test_torch_hub_load_shipped_weights_offline(tmp_path, monkeypatch, artifacts):
    manifest = _make_manifest(tmp_path, monkeypatch, artifacts["ckpt"], ship=True)
    entry = load_manifest(manifest)["weights"][0]
    assert entry["shipped"] == f"pretrained/{NAME}.safetensors"
    assert (manifest.parent / entry["shipped"]).read_bytes() == artifacts["bytes"]
    env = _env(manifest, tmp_path, _dead_endpoint(), offline=True)
    out = _result(_run(f"""
        model = torch.hub.load({str(REPO)!r}, "resnet20_gn", source="local",
                               weights="DEFAULT", progress=False).eval()
        with torch.no_grad():
            equal = torch.equal(model(ref["x"]), ref["y"])
        print(json.dumps({{"equal": equal, "weights": model.config["weights"],
                          "zoo": os.path.dirname(zoo.__file__)}}))
    """, env, artifacts["ref"], tmp_path))
    assert out == {"equal": True, "weights": NAME, "zoo": str(REPO / "zoo")}
    assert not (tmp_path / "hf_home" / "hub").exists()  # nothing was downloaded


# ---------------------------------------------------------------------------------------------
# 6. Publishing at the HfApi boundary, and the CLI


FAKE_OID = "fedcba9876543210fedcba9876543210fedcba98"


def _fake_api(calls: list):
    class FakeHfApi:
        def __init__(self, token=None, **kwargs):
            calls.append(("init", {"token": token, **kwargs}))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
            return f"https://hub.invalid/{repo_id}"

        def upload_folder(self, **kwargs):
            folder = Path(kwargs["folder_path"])
            files = {p.relative_to(folder).as_posix(): p.read_bytes()
                     for p in folder.rglob("*") if p.is_file()}
            calls.append(("upload_folder", {**kwargs, "files": files}))
            return type("CommitInfo", (), {"oid": FAKE_OID,
                                           "commit_url": f"https://hub.invalid/commit/{FAKE_OID}"})()

        def create_tag(self, repo_id, **kwargs):
            calls.append(("create_tag", {"repo_id": repo_id, **kwargs}))

    return FakeHfApi


def _front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n", 2)[1])


def test_publish_uploads_the_folder_tags_and_pins(tmp_path, monkeypatch, artifacts):
    manifest = _make_manifest(tmp_path, monkeypatch, artifacts["ckpt"], ship=True)
    calls = []
    monkeypatch.setattr(zoo.hub, "HfApi", _fake_api(calls))
    monkeypatch.setattr(zoo.hub, "get_token", lambda: "hf_fake_token")

    result = zoo.hub.publish(NAME, "someone/rn20-gn", out=tmp_path / "out")
    assert result == {"folder": tmp_path / "out", "repo_id": "someone/rn20-gn", "revision": FAKE_OID}
    assert [c[0] for c in calls] == ["init", "create_repo", "upload_folder", "create_tag"]
    assert calls[0][1]["token"] == "hf_fake_token"
    assert calls[1][1] == {"repo_id": "someone/rn20-gn", "repo_type": "model", "exist_ok": True}

    upload = calls[2][1]
    assert upload["repo_id"] == "someone/rn20-gn" and upload["repo_type"] == "model"
    assert Path(upload["folder_path"]) == tmp_path / "out"
    assert NAME in upload["commit_message"]
    files = upload["files"]
    assert sorted(files) == ["README.md", "config.json", FILENAME]
    entry = load_manifest(manifest)["weights"][0]
    assert hashlib.sha256(files[FILENAME]).hexdigest() == entry["sha256"] == artifacts["sha256"]

    config = json.loads(files["config.json"])
    assert config["num_classes"] == 10
    assert config["architecture"] == "resnet20" and config["model"] == MODEL
    assert config["weights"] == NAME and config["sha256"] == artifacts["sha256"]
    assert config["preprocessing"] == entry["preprocessing"]
    assert config["preprocessing"]["input_size"] == [3, 32, 32]
    assert config["label_names"] == zoo.data.CIFAR10_CLASSES
    assert len(config["label_names"]) == 10 and "airplane" in config["label_names"]

    readme = files["README.md"].decode()
    front = _front_matter(readme)
    assert front["library_name"] == "pytorch" and front["license"] == "mit"
    assert {"image-classification", "normzoo", "gn", "resnet20"} <= set(front["tags"])
    assert front["datasets"] == ["cifar10"] and front["metrics"] == ["accuracy"]
    assert f"| test | 10000 | {METRICS['top1']} | {METRICS['top5']} |" in readme
    assert artifacts["sha256"] in readme and RECIPE["command"] in readme

    tag = calls[3][1]
    assert tag["repo_id"] == "someone/rn20-gn" and tag["revision"] == FAKE_OID
    assert tag["repo_type"] == "model" and tag["tag"].startswith("cifar10-")

    assert (entry["revision"], entry["hub_repo_id"]) == (FAKE_OID, "someone/rn20-gn")
    assert zoo.get_weight(NAME).entry["revision"] == FAKE_OID


def test_push_to_hub_publishes_a_users_own_checkpoint(tmp_path, monkeypatch, artifacts):
    """A fine-tune that is in no manifest: model or file, with or without measured figures;
    the card's model-index reads back through huggingface_hub; the manifest is untouched."""
    from huggingface_hub import ModelCard

    manifest = _make_manifest(tmp_path, monkeypatch, artifacts["ckpt"], ship=True)
    before = manifest.read_bytes()
    calls = []
    monkeypatch.setattr(zoo.hub, "HfApi", _fake_api(calls))
    monkeypatch.setattr(zoo.hub, "get_token", lambda: None)
    model = zoo.create_model(MODEL, num_classes=100)
    with pytest.raises(WeightsError, match="no Hugging Face token"):
        zoo.push_to_hub(model, "someone/r20-gn-c100")
    assert calls == []

    monkeypatch.setattr(zoo.hub, "get_token", lambda: "hf_fake_token")
    scratch = tmp_path / "scratch"  # where push_to_hub's temporary folder goes, and goes away
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    result = zoo.push_to_hub(model, "someone/r20-gn-c100", private=True)
    assert result == {"folder": None, "repo_id": "someone/r20-gn-c100", "revision": FAKE_OID}
    assert [c[0] for c in calls] == ["init", "create_repo", "upload_folder", "create_tag"]
    assert calls[1][1]["private"] is True
    files = calls[2][1]["files"]
    assert sorted(files) == ["README.md", "config.json", FILENAME]
    assert json.loads(files["config.json"])["num_classes"] == 100
    card = files["README.md"].decode()
    assert "No metrics were measured for this checkpoint" in card
    assert 'weights="hf-hub:someone/r20-gn-c100"' in card and "model-index" not in card
    assert list(scratch.iterdir()) == [] and manifest.read_bytes() == before

    measured = zoo.save_checkpoint(model, tmp_path / "ft.safetensors", tag="c100",
                                   dataset="cifar100", metrics=METRICS, recipe=RECIPE)
    zoo.push_to_hub(measured, "someone/r20-gn-c100")
    readme = tmp_path / "README.md"
    readme.write_bytes(calls[-2][1]["files"]["README.md"])
    results = ModelCard.load(readme).data.eval_results
    assert [(r.metric_name, r.metric_value, r.dataset_type, r.dataset_split) for r in results] == [
        ("top-1 accuracy", METRICS["top1"], "cifar100", "test"),
        ("top-5 accuracy", METRICS["top5"], "cifar100", "test")]
    assert RECIPE["command"] in readme.read_text() and manifest.read_bytes() == before

    assert zoo.hub.main(["publish", "--checkpoint", str(measured), "--repo-id", "someone/x",
                         "--dry-run", "--out", str(tmp_path / "dry")]) == 0
    assert sorted(p.name for p in (tmp_path / "dry").iterdir()) == ["README.md", "config.json",
                                                                    FILENAME]
    with pytest.raises(SystemExit) as exit_:
        zoo.hub.main(["publish", "--checkpoint", str(measured)])
    assert exit_.value.code == 2
    assert len(calls) == 8 and manifest.read_bytes() == before


def test_publish_without_token_and_dry_run_make_no_hub_call(tmp_path, monkeypatch, artifacts):
    manifest = _make_manifest(tmp_path, monkeypatch, artifacts["ckpt"], ship=True)
    before = manifest.read_bytes()
    calls = []
    monkeypatch.setattr(zoo.hub, "HfApi", _fake_api(calls))
    monkeypatch.setattr(zoo.hub, "get_token", lambda: None)

    with pytest.raises(WeightsError, match="no Hugging Face token.*HF_TOKEN.*--dry-run"):
        zoo.hub.publish(NAME, out=tmp_path / "no_token")
    assert calls == [] and manifest.read_bytes() == before

    monkeypatch.setattr(zoo.hub, "get_token", lambda: "hf_fake_token")
    result = zoo.hub.publish(NAME, out=tmp_path / "dry", dry_run=True)
    assert result == {"folder": tmp_path / "dry", "repo_id": REPO_ID, "revision": None}
    assert sorted(p.name for p in (tmp_path / "dry").iterdir()) == ["README.md", "config.json", FILENAME]
    assert (tmp_path / "dry" / FILENAME).read_bytes() == artifacts["bytes"]
    assert calls == [] and manifest.read_bytes() == before


def test_cli_publish_dry_run_and_check(tmp_path, monkeypatch, capsys, artifacts):
    manifest = _make_manifest(tmp_path, monkeypatch, artifacts["ckpt"], ship=True)
    before = manifest.read_bytes()
    calls = []
    monkeypatch.setattr(zoo.hub, "HfApi", _fake_api(calls))

    out_dir = tmp_path / "cli_out"
    assert zoo.hub.main(["publish", NAME, "--dry-run", "--out", str(out_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"built {out_dir}"
    assert sorted(p.name for p in out_dir.iterdir()) == ["README.md", "config.json", FILENAME]
    assert calls == [] and manifest.read_bytes() == before

    assert zoo.hub.main(["check"]) == 0
    assert capsys.readouterr().out.strip() == "all 1 entries match their files"

    shipped = manifest.parent / load_manifest(manifest)["weights"][0]["shipped"]
    shipped.write_bytes(_tampered(artifacts["bytes"]))
    assert zoo.hub.main(["check"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{NAME}: could not get a verified copy of {NAME}")
    assert "shipped copy" in out and "sha256" in out and "corrupt, truncated or tampered" in out
    assert "weights='path/to/" in out  # how to get going anyway

    # The real entry point, as a user runs it: same verdict and exit status.
    env = _env(manifest, tmp_path, _dead_endpoint(), offline=True)
    proc = subprocess.run([sys.executable, "-m", "zoo.hub", "check"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr
    assert f"{NAME}: could not get a verified copy" in proc.stdout and "Traceback" not in proc.stderr
