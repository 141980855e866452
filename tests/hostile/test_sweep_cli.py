"""``eval/batch_sweep.py`` (over eval/grid.py) given careless reruns (issue 29: H8, H13).

Finished cells are written by hand (recipe.json, log.jsonl, an empty model file) so that
nothing trains: a rerun reads them back, or must refuse them.
"""

import json

import batch_sweep  # eval/batch_sweep.py (pyproject's pythonpath)
from conftest import one_error_line
from train.recipes import RECIPES


def sweep(data_root, tmp_path, *extra):
    return ["--data", str(data_root / "cifar10"), "--recipe", "test_tiny", "--methods", "gn",
            "--batch-sizes", "4", "--end-seeds", "1", "--train-images", "64", "--epochs", "2",
            "--jobs", "1", "--runs", str(tmp_path / "runs"), "--results",
            str(tmp_path / "results"), *extra]


def finished_cell(tmp_path, args: list[str]):
    """The folder of the sweep's only cell, as a finished trainer run with ``args``' flags."""
    parsed = batch_sweep.parser().parse_args(args)
    parsed.warmup_fraction = RECIPES["test_tiny"].warmup_epochs / RECIPES["test_tiny"].epochs
    cell = batch_sweep.cell(parsed, RECIPES["test_tiny"], "gn", 4, 0)
    folder = tmp_path / "runs" / cell.name
    folder.mkdir(parents=True)
    command = "python -m train " + " ".join(cell.flags) + " --data D --out O"
    (folder / "recipe.json").write_text(json.dumps({"command": command}))
    (folder / "log.jsonl").write_text(json.dumps(
        {"epoch": 2, "val_acc": 25.0, "train_loss": 2.1, "img_per_s": 100.0, "seconds": 3.0}) + "\n")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def test_h8_a_rerun_with_other_settings_refuses_the_old_cells(data_root, tmp_path, capsys):
    folder = finished_cell(tmp_path, sweep(data_root, tmp_path))
    assert batch_sweep.main(sweep(data_root, tmp_path)) == 0  # the same settings: read back
    capsys.readouterr()
    before = (tmp_path / "results" / "batch-sweep.csv").read_text()
    assert batch_sweep.main(sweep(data_root, tmp_path, "--train-images", "128", "--force")) == 1
    one_error_line(capsys.readouterr().err, str(folder), "limit_train 128 there, 192 here",
                   "another --runs folder")
    assert (tmp_path / "results" / "batch-sweep.csv").read_text() == before


def test_h13_a_recipe_without_validation_images_is_refused_before_training(data_root, tmp_path,
                                                                          capsys):
    assert batch_sweep.main(sweep(data_root, tmp_path, "--recipe", "finetune")) == 2
    one_error_line(capsys.readouterr().err, "'finetune' holds out no validation images")
    assert not (tmp_path / "runs").exists()


def test_h13_cut_off_bookkeeping_is_skipped_or_redone(data_root, tmp_path, capsys):
    finished_cell(tmp_path, sweep(data_root, tmp_path))
    (tmp_path / "runs" / "invocations.jsonl").write_text('{"seconds": 60.0, "cells_done": 1}\n'
                                                         '{"seconds": 1')
    assert batch_sweep.main(sweep(data_root, tmp_path)) == 0
    assert "invocations.jsonl:2 is not JSON" in capsys.readouterr().err
    settings = json.loads((tmp_path / "results" / "batch-sweep.json").read_text())
    assert settings["invocations"] == 2 and settings["wall_minutes"] >= 1.0

    cut = tmp_path / "cell"
    cut.mkdir()
    (cut / "batch_stats.json").write_text('{"top1": 4')
    assert batch_sweep.read_batch_stats(cut) is None  # scored again
    assert "cut off" in capsys.readouterr().err


def test_h13_other_settings_never_overwrite_results_without_force(data_root, tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    committed = {"command": "python eval/batch_sweep.py --data DIR", "warmup_fraction": 0.05}
    (results / "batch-sweep.json").write_text(json.dumps(committed))
    (results / "batch-sweep.csv").write_text("the committed sweep\n")
    finished_cell(tmp_path, sweep(data_root, tmp_path))
    assert batch_sweep.main(sweep(data_root, tmp_path)) == 1
    one_error_line(capsys.readouterr().err, "holds results of other settings", "--methods",
                   "--batch-sizes", "--train-images", "--force")
    assert (results / "batch-sweep.csv").read_text() == "the committed sweep\n"
    assert batch_sweep.main(sweep(data_root, tmp_path, "--force")) == 0
    assert "gn" in (results / "batch-sweep.csv").read_text()


def test_the_committed_sweep_reruns_without_force():
    """Its own command still matches it: rerunning the committed sweep is not refused."""
    committed = json.loads((batch_sweep.ROOT / "eval" / "results" / "batch-sweep.json").read_text())
    args = batch_sweep.parser().parse_args(committed["command"].split()[2:])
    args.warmup_fraction = committed["warmup_fraction"]
    assert batch_sweep.changed_settings(committed, args) == []
    args.methods = ["bn"]
    assert batch_sweep.changed_settings(committed, args) == ["--methods"]
