"""Hostile input to the command-line tools (issue 17: D6, D9, D11, D15): each mistake ends in
one ``error: ...`` line and exit status 2, before any work it would waste, and loses nothing.

The CLIs run in-process through their ``main(argv)``; Hub calls stop at the ``HfApi``
boundary or at a loopback port nothing listens on.
"""

import functools
import importlib.util
import json
import os
import shutil
import socket
import tempfile
import types
import warnings

import pytest
import torch
from huggingface_hub import HfApi
from huggingface_hub.utils import HfHubHTTPError

import zoo
import zoo.convert
import zoo.hub
from zoo.__main__ import main as demo_main
from zoo.data import IMAGENET_MEAN, IMAGENET_STD
from zoo.evaluate import ImageNetVal
from zoo.weights import WeightsError

from conftest import REPO

NAME = "resnet20_gn.cifar10"
METRICS = {"top1": 50.0, "top5": 90.0, "split": "cifar10 test[:1000]", "num_images": 1000}
RECIPE = {"command": "tests/test_hostile_cli.py", "commit": "0" * 40}


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


@pytest.fixture(autouse=True)
def _not_distributed(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained resnet20_gn saved with a figure and a recipe, as a registered file has."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / f"{NAME}.safetensors"
    return zoo.save_checkpoint(zoo.create_model("resnet20_gn"), path, tag="cifar10",
                               metrics=METRICS, recipe=RECIPE)


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
        zoo.hub.publish(NAME)
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
    assert zoo.hub.main(["publish", NAME]) == 2
    out, err = capsys.readouterr()
    _one_error_line(err, f"could not publish {NAME}", reason, "The manifest is unchanged")
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
    assert zoo.hub.main(["publish", NAME]) == 0
    assert uploaded == [["README.md", "config.json", "model.safetensors"]]
    assert list(temp_root.iterdir()) == []
    assert capsys.readouterr().out.strip() == (f"published normzoo/{NAME}@{'f' * 40} and pinned "
                                               f"it in the manifest")


def test_build_onto_a_file_and_a_bad_repo_id_are_one_line(manifest, tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    capsys.readouterr()
    assert zoo.hub.main(["build", NAME, "--out", str(existing)]) == 2
    _one_error_line(capsys.readouterr().err, f"{existing} is a file")
    assert existing.read_text() == "mine"
    assert zoo.hub.main(["build", NAME, "--out", str(existing / "hub")]) == 2
    _one_error_line(capsys.readouterr().err, "Not a directory", str(existing / "hub"))

    assert zoo.hub.main(["publish", NAME, "--repo-id", "not a repo", "--dry-run",
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
    _one_error_line(err, "the weights resnet20_bn.cifar10 were trained on cifar10 (10 classes)",
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
    ckpt = zoo.save_checkpoint(zoo.create_model("resnet20_gn", num_classes=1000),
                               tmp_path / "r20-1k.safetensors", tag="t", dataset="imagenet-1k",
                               preprocessing=small)
    rc, out, err = _validate(capsys, "imagenet", "--checkpoint", ckpt, "--data", folder.parent,
                             "-j", "0", "--device", "cpu", "--results-file", tmp_path / "r.json",
                             "--results-format", "json")
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
