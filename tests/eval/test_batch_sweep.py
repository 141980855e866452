"""eval/batch_sweep.py on a tiny subset: two methods, two batch sizes, a few steps each.

Checks the files it writes and that it trains through the project's trainer; no timing or
accuracy is asserted."""

import csv
import json
import subprocess

import pytest

import batch_sweep  # eval/batch_sweep.py (pyproject's pythonpath)
from zoo import report



def sweep_args(data_root, tmp_path, *extra):
    # test_tiny holds out 64 validation images after the 64-image subset; one seed per cell
    # (each cell is a fresh trainer process: the seeds' rule is checked on cells() alone)
    return ["--data", str(data_root / "cifar10"), "--recipe", "test_tiny", "--methods", "bn", "gn",
            "--batch-sizes", "4", "16", "--train-images", "64", "--epochs", "2", "--jobs", "2",
            "--end-seeds", "1", "--runs", str(tmp_path / "runs"), "--results",
            str(tmp_path / "results"), *extra]


def test_the_end_batch_sizes_get_the_extra_seeds():
    args = batch_sweep.parser().parse_args(["--data", "D", "--methods", "bn", "gn",
                                            "--batch-sizes", "16", "4", "8", "--end-seeds", "2"])
    assert batch_sweep.cells(args) == [  # smallest batch first; the middle one has seed 0 only
        ("bn", 4, 0), ("gn", 4, 0), ("bn", 4, 1), ("gn", 4, 1), ("bn", 8, 0), ("gn", 8, 0),
        ("bn", 16, 0), ("gn", 16, 0), ("bn", 16, 1), ("gn", 16, 1)]


def test_batch_sweep_writes_its_csv_plot_and_settings(data_root, tmp_path):
    assert batch_sweep.main(sweep_args(data_root, tmp_path)) == 0
    results = tmp_path / "results"
    with open(results / "batch-sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == batch_sweep.COLUMNS
    assert [(r["method"], r["batch_size"], r["seed"]) for r in rows] == [
        (m, b, "0") for m in ("bn", "gn") for b in ("4", "16")]
    for r in rows:
        assert r["images"] == "128" and r["epochs"] == "2"  # 64 images x 2 epochs in every cell
        assert int(r["steps"]) * int(r["batch_size"]) == 128
        assert 0 <= float(r["val_top1"]) <= 100 and float(r["val_top1_se"]) > 0
        assert float(r["img_per_s"]) > 0 and float(r["train_loss"]) > 0
        if r["method"] == "bn":  # batch statistics at the cell's batch size, full batches
            assert 0 <= float(r["val_top1_batch_stats"]) <= 100
            assert r["batch_stats_images"] == "64" and float(r["val_top1_batch_stats_se"]) > 0
        else:  # GroupNorm keeps no running statistics: nothing to compare
            assert r["val_top1_batch_stats"] == "" and r["batch_stats_images"] == "0"
    assert (results / "batch-sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    settings = json.loads((results / "batch-sweep.json").read_text())
    assert settings["train_images"] == 64 and settings["threads_per_cell"] >= 1
    section = report.batch_sweep_section(*report.read_batch_sweep(results))  # the docs' tables
    assert "| bn | " in section and "| gn | " in section and "batch 16" in section

    # each cell is a run of the trainer, with the lr scaled by batch and the same warm-up share
    cell = json.loads((tmp_path / "runs" / "bn-b4-s0" / "recipe.json").read_text())
    assert cell["recipe"]["lr"] == pytest.approx(0.05 * 4 / 32) and cell["seed"] == 0
    assert cell["recipe"]["warmup_epochs"] == pytest.approx(0.5 / 2 * 2)
    assert "--limit-train 128" in cell["command"]

    # run again: every cell is done, so nothing trains and the same rows come back
    before = (results / "batch-sweep.csv").read_text()
    stamp = (tmp_path / "runs" / "gn-b16-s0" / "model.safetensors").stat().st_mtime_ns
    assert batch_sweep.main(sweep_args(data_root, tmp_path)) == 0
    assert (results / "batch-sweep.csv").read_text() == before
    assert (tmp_path / "runs" / "gn-b16-s0" / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((results / "batch-sweep.json").read_text())["invocations"] == 2


def test_batch_sweep_refuses_a_subset_that_batch_sizes_do_not_divide(data_root, tmp_path, capsys):
    assert batch_sweep.main(sweep_args(data_root, tmp_path, "--train-images", "60")) == 2
    err = capsys.readouterr().err
    assert "--train-images 60 is not a multiple of batch size 16" in err and "multiple of 16" in err
    assert not (tmp_path / "runs").exists()


def test_a_diverged_cell_is_a_result_and_is_not_retrained(data_root, tmp_path, monkeypatch):
    trained, real_run = [], subprocess.run

    def trainer_that_diverges(command, **kwargs):  # the trainer's own exit on a NaN loss
        if command[1:3] != ["-m", "train"]:
            return real_run(command, **kwargs)
        trained.append(command)
        kwargs["stdout"].write("error: loss is nan at epoch 1, step 5: the run diverged\n")
        return subprocess.CompletedProcess(command, 2)

    monkeypatch.setattr(batch_sweep.subprocess, "run", trainer_that_diverges)
    args = sweep_args(data_root, tmp_path, "--methods", "mimic", "--batch-sizes", "4")
    for _ in range(2):
        assert batch_sweep.main(args) == 0
    assert len(trained) == 1 and trained[0][trained[0].index("--model") + 1] == "resnet20_mimic"
    rows, settings = report.read_batch_sweep(tmp_path / "results")
    assert [(r["method"], r["status"], r["val_top1"]) for r in rows] == [
        ("mimic", "diverged at step 6", None)]
    assert "| mimic | diverged at step 6 |" in report.batch_sweep_section(rows, settings)
