"""``python -m train`` given careless input (issue 17: D3, D4, D8; issue 29: H9, H15): each
mistake ends in one ``error:`` line and exit status 2, before any training, and loses nothing;
so does a full disk, during training.

The trainer runs in-process on one thread with ResNet-20, the ``test_tiny`` recipe and 128
real CIFAR-10 images (64 of them held out): 2 steps an epoch. Run folders live under
tmp_path, except the read-only one (see ``read_only_folder``).
"""

import contextlib
import errno
import importlib
import json
import os
import pickle
import tempfile
from pathlib import Path

import pytest
import torch

import train.loop
import zoo
import zoo.weights
from train.recipes import RECIPES, override

# One torch thread: the trainer's results are bit-reproducible on a fixed thread count.
# One process, even under torchrun.
pytestmark = pytest.mark.usefixtures("one_thread", "not_distributed")


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
        (["--norm-kwargs", '{"eps": 0.001}'], ["--norm-kwargs {} in the run, {'eps': 0.001} here"]),
        (["--checkpoint", start, "--freeze-backbone", "--freeze-norms"],
         [f"--weights/--checkpoint none in the run, sha256 {start_sha} here",
          "--freeze-backbone False in the run, True here",
          "--freeze-norms False in the run, True here"]),
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
            str(data_root / "cifar10"), "--device", "cpu", "-j", "1", "--tag", "mine",
            "--norm-kwargs", '{"eps": 1e-05}']  # gn's default: no change
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
                         (["--lr", 0.01], "--lr 0.05 in the run, 0.01 here"),
                         # from before --norm-kwargs too: it trained the norm's defaults
                         (["--norm-kwargs", '{"eps": 0.001}'],
                          "--norm-kwargs {} in the run, {'eps': 0.001} here")):
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
    (["--norm-kwargs", "{eps: 0.001}"], "--norm-kwargs '{eps: 0.001}' is not JSON (Expecting "
                                        "property name enclosed in double quotes"),
    (["--norm-kwargs", "[0.001]"], "--norm-kwargs takes a JSON object of the norm's arguments, "
                                   "not '[0.001]'; e.g. its defaults: --norm-kwargs '{\"max_groups\": "
                                   "32, \"min_group_channels\": 2, \"eps\": 1e-05}'"),
    (["--norm-kwargs", '{"groups": 4}'], "--norm-kwargs: norm 'gn' does not take 'groups'; its "
                                         "norm_kwargs are: eps, max_groups, min_group_channels"),
    (["--norm-kwargs", '{"eps": "x"}'], "--norm-kwargs: norm 'gn' takes each argument as the kind "
                                        "of value its default is (an int for a float; a finite "
                                        "number), not eps='x' (its default is 1e-05)"),
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
            # nobody may not read the venv (under /root): what the trainer imports lazily
            # (torch.optim imports torch._dynamo) is imported first
            importlib.import_module("torch._dynamo")
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




def test_a_full_disk_at_the_end_is_one_line_and_the_resume_finishes(data_root, stopped_run,
                                                                     monkeypatch, capsys):
    """model.safetensors (or hub/, curves.png) on a full disk ended the run in a traceback."""
    def save_on_full_disk(model, path, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    with monkeypatch.context() as patch:
        patch.setattr(zoo, "save_checkpoint", save_on_full_disk)
        assert train.loop.main(tiny(data_root, stopped_run, "--resume")) == 2
    line = error_line(capsys)
    assert f"the disk is full: could not write {stopped_run / 'model.safetensors'}; free some " \
           f"space, then run the same command with --resume" in line
    assert not (stopped_run / "model.safetensors").exists() and epochs_logged(stopped_run) == [1, 2]
    assert train.loop.main(tiny(data_root, stopped_run, "--resume")) == 0
    assert (stopped_run / "model.safetensors").is_file() and epochs_logged(stopped_run) == [1, 2]


@pytest.mark.parametrize("left", ["a row past the checkpoint", "a cut-off line"])
def test_a_resume_drops_log_rows_its_checkpoint_does_not_have(data_root, stopped_run, capsys, left):
    """A stop between an epoch's row and its checkpoint (or an older version's cut-off line)
    left log.jsonl ahead of checkpoint.pt: the resume trains that epoch again, with one row."""
    with open(stopped_run / "log.jsonl", "a") as log:
        log.write('{"epoch": 2, "val_acc": 99.0}\n' if left == "a row past the checkpoint"
                  else '{"epoch": 2, "lr": 0.0')
    assert train.loop.main(tiny(data_root, stopped_run, "--resume")) == 0
    rows = [json.loads(line) for line in (stopped_run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["val_acc"] != 99.0 and "seconds" in rows[1]


# ---------------------------------------------------------------------------------------------
# H15 (issue 29): an empty --out would be the current folder

@pytest.mark.parametrize("out", ["", "   "])
def test_an_empty_out_is_refused_before_anything_is_written(data_root, tmp_path, monkeypatch,
                                                           capsys, out):
    monkeypatch.chdir(tmp_path)  # where an empty --out would train
    assert train.loop.main(tiny(data_root, out)) == 2
    assert f"--out {out!r} names no folder; pass the run folder, e.g. --out runs/" \
           in error_line(capsys)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# H9 (issue 29): a full disk during training

def _full_disk() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _save_on_full_disk(obj, f, *args, **kwargs):
    """torch.save on a full disk: the first bytes written, then ENOSPC."""
    if hasattr(f, "write"):
        f.write(b"PK\x03\x04" + bytes(1000))
    else:
        Path(f).write_bytes(b"PK\x03\x04" + bytes(1000))
    raise _full_disk()


@pytest.mark.parametrize("name", ["checkpoint.pt", "recipe.json", "log.jsonl"])
def test_a_full_disk_is_one_line_and_the_run_still_resumes(data_root, stopped_run, monkeypatch,
                                                           capsys, name):
    """The resume's checkpoint save (after its epoch), its rewrite of recipe.json (before
    training) or its epoch's log row hits a full disk: one line naming the file, the file as
    it was (the log had a cut-off line, and the checkpoint moved on without its row), no temp
    file left, and the run resumes once there is space."""
    before = files(stopped_run)
    write_text = Path.write_text

    def write_text_on_full_disk(path, text, *args, **kwargs):
        if name not in path.name:
            return write_text(path, text, *args, **kwargs)
        write_text(path, text[: len(text) // 2], *args, **kwargs)
        raise _full_disk()

    with monkeypatch.context() as patch:
        if name == "checkpoint.pt":
            patch.setattr(torch, "save", _save_on_full_disk)
        else:
            patch.setattr(Path, "write_text", write_text_on_full_disk)
        assert train.loop.main(tiny(data_root, stopped_run, "--resume")) == 2
    line = error_line(capsys)
    assert f"the disk is full: could not write {stopped_run / name} (" in line
    after = files(stopped_run)
    assert after.keys() == before.keys()  # no temp file left
    assert after[name] == before[name]
    if name == "checkpoint.pt":  # the epoch's row went first: the resume drops it, trains again
        assert epochs_logged(stopped_run) == [1, 2]
    else:
        assert after["log.jsonl"] == before["log.jsonl"] and after["checkpoint.pt"] == before["checkpoint.pt"]

    # a temp file an older version's failed save left behind is no obstacle either
    (stopped_run / ".checkpoint.pt.tmp").write_bytes(b"PK\x03\x04" + bytes(1000))
    assert train.loop.main(tiny(data_root, stopped_run, "--resume")) == 0
    assert capsys.readouterr().err == ""
    assert epochs_logged(stopped_run) == [1, 2] and (stopped_run / "model.safetensors").is_file()
    assert not (stopped_run / ".checkpoint.pt.tmp").exists()
