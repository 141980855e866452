import csv
import json
import subprocess
import sys

import pytest
import torch

import benchmark  # eval/benchmark.py (pyproject's pythonpath)
import deploy_table
import grid
import half_statistics
import linf_gap
from zoo import report

from conftest import REPO, one_error_line

# The methods the tiny run takes (each costs fresh processes): the baseline, mimic (the step
# suite's targets) and gn, a method that declares the contiguous memory format where bn and
# mimic declare channels_last. None compiles kernels: tests/train runs the trainer's fused path.
TINY_METHODS = ["bn", "gn", "mimic"]
# The norms suite's layer: L1 BN, with its fused kernel and its "original" row, against BN.
# Compiling costs most of the tiny run; the other fused kernels take the same path here and
# are checked against their formulas in test_fused_norms.
TINY_NORMS = ["l1bn"]
# The deploy suite's checkpoint: one, since each compiles its int8 kernels.
TINY_CHECKPOINT = "resnet20_l1bn"


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory):
    """One tiny run of every suite: one shape, one repeat (a check that it runs, not timing)."""
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run([sys.executable, "eval/benchmark.py", "--tiny", "--out", str(out),
                             "--methods", ",".join(TINY_METHODS), "--norms", ",".join(TINY_NORMS),
                             "--checkpoints", TINY_CHECKPOINT],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out, result


def test_benchmark_tiny_run_writes_well_formed_csv_markdown_and_header(tiny_benchmark):
    out, result = tiny_benchmark
    rows = list(csv.DictReader((out / "benchmark-cpu.csv").open()))
    assert rows and list(rows[0]) == list(benchmark.FIELDS)
    assert {r["suite"] for r in rows} == set(benchmark.SUITES)
    for r in rows:
        assert float(r["value"]) > 0 and float(r["spread_pct"]) >= 0
        assert (r["ratio"] == "") == (r["baseline"] == "")
        if r["ratio"]:
            assert float(r["ratio"]) > 0
        assert r["meets"] in ("", "yes", "no") and (r["meets"] == "") == (r["target"] == "")
    norms = {(r["name"], r["baseline"]) for r in rows if r["suite"] == "norms"}
    assert norms == {("l1bn", "bn"), ("l1bn (original)", "bn"), ("l1bn (fused)", "bn")}
    assert {r["dtype"] for r in rows if r["suite"] == "norms"} == {"fp32", "bf16"}
    step = [r for r in rows if r["suite"] == "step"]
    assert {r["name"] for r in step} == {f"resnet20_{m}" for m in TINY_METHODS}
    assert {r["unit"] for r in step} == {"ms", "MiB"}
    mimic = [r for r in step if r["name"] == "resnet20_mimic"]
    assert all(r["baseline"] == "bn" and r["target"] for r in mimic)
    deploy = {r["dtype"]: r for r in rows if r["suite"] == "deploy"}
    assert list(deploy) == list(deploy_table.VARIANTS)  # the deploy table's variants, in order
    assert all(r["name"] == TINY_CHECKPOINT for r in deploy.values())
    assert all(r["baseline"] == ("" if v == "fp32" else "fp32") for v, r in deploy.items())
    assert "torch.compile int8 kernels" in deploy["int8"]["config"]

    header = json.loads((out / "benchmark-cpu.json").read_text())
    assert header["tiny"] is True and header["torch"] == torch.__version__ and header["machine"]
    markdown = (out / "benchmark-cpu.md").read_text()
    assert markdown == report.benchmark_markdown(rows, header, benchmark.SUITES)
    table_rows = [line for line in markdown.splitlines() if line.startswith("| ")
                  and not line.startswith("| name ")]
    assert len(table_rows) == len(rows)
    assert markdown in result.stdout


def test_benchmark_performance_section_reports_every_goal(tiny_benchmark):
    rows, header = report.read_benchmark(tiny_benchmark[0])
    section = report.performance_section(rows, header, "results.md")
    lines = section.splitlines()
    goals = report.benchmark_goals(rows)
    # every goal of the benchmark is a row of the goals table, in order, with its count of rows met
    labels = [label for label, _ in goals]
    goal_rows = [line for line in lines if any(line.startswith(f"| {label} |") for label in labels)]
    assert [line.split(" | ")[0][2:] for line in goal_rows] == labels
    for (label, these), line in zip(goals, goal_rows):
        assert line.endswith(f"| {sum(r['meets'] == 'yes' for r in these)} of {len(these)} |")
    # the goal list itself: each target of the benchmark, and a line of its own for every compiled
    # kernel the run measured
    for norm in report.NORM_TARGETS:
        assert f"{norm} forward+backward ≤ {report.NORM_TARGETS[norm]}x" in " ".join(labels)
    assert any(label.startswith("l1bn (fused) forward+backward") for label in labels)
    assert not any(label.startswith("ilm (fused)") for label in labels)  # not measured
    for method in report.INFERENCE_TARGETS:
        assert any(label.startswith(f"{method} eval-mode img/s") for label in labels)
    assert sum("mimic training step" in label for label in labels) == len(report.STEP_TARGETS)
    # a goal the run measured reports its rows; the tiny run measures each of these
    measured = [label for label, these in goals if these]
    assert any("trainer img/s" in label for label in measured)
    assert any(label.startswith("l1bn (fused)") for label in measured)
    assert "[results.md](results.md)" in section and header["command"] in section


def test_benchmark_ratio_is_the_median_of_per_repeat_ratios():
    r = benchmark.row("s", "a", "c", "fp32", [2.0, 4.0, 9.0], "ms", "b", [1.0, 1.0, 3.0], target=2.5)
    assert r["value"] == 4.0 and r["ratio"] == 3.0 and r["meets"] == "no"
    floor = benchmark.row("train", "a", "c", "bf16", [2.0, 4.0, 9.0], "img/s", "b", [1.0, 1.0, 3.0],
                          target=2.5)
    assert floor["meets"] == "yes"  # train and inference targets are floors
    assert r["spread_pct"] == round(50 * 7 / 4, 1) and r["ratio_spread_pct"] == round(50 * 2 / 3, 1)
    assert benchmark.row("s", "a", "c", "fp32", [2.0], "img/s")["ratio"] == ""


@pytest.mark.parametrize("flags, message", [
    (["--suites", "norms,nope"], "unknown suite 'nope'"),
    (["--norms", "mimic"], "'mimic' is not a per-layer norm"),
    (["--methods", "bn,nope"], "unknown method 'nope'"),
    (["--checkpoints", "resnet50_bn"], "'resnet50_bn' is not a shipped DEFAULT checkpoint"),
])
def test_benchmark_refuses_bad_flags(flags, message):
    result = subprocess.run([sys.executable, "eval/benchmark.py", "--tiny", *flags],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_benchmark_train_suite_runs_the_trainer_in_both_memory_formats(tiny_benchmark):
    rows, _ = report.read_benchmark(tiny_benchmark[0])
    train = [r for r in rows if r["suite"] == "train"]
    trainer = [r for r in train if r["config"].startswith("trainer")]
    assert {r["name"] for r in trainer} == {f"resnet20_{m}" for m in TINY_METHODS}
    assert len(trainer) == 2 * len(TINY_METHODS)  # channels_last and contiguous
    defaults = [r for r in trainer if r["config"].endswith("(default)")]
    assert len({r["name"] for r in defaults}) == len(defaults) == len(TINY_METHODS)
    for r in defaults:  # the marked format is the norm's declared one
        declared = benchmark.zoo.get_norm(r["name"].split("_", 1)[1]).channels_last
        assert ("channels_last" in r["config"]) == declared
        assert r["name"] == "resnet20_bn" or (r["baseline"] == "bn" and r["target"])
    assert all(not r["target"] for r in trainer if r not in defaults)
    assert {r["dtype"] for r in trainer} == {"bf16"}  # these methods' recipes keep autocast
    assert any(r["name"].startswith("seed-style loop") and r["baseline"] == "bn" for r in train)


def test_benchmark_train_worker_reports_the_precision_the_trainer_ran_in():
    # bwn's method adjustment turns autocast off; its train row must not say bf16.
    spec = {"data": str(benchmark.CIFAR10), "batch": 16, "warmup": 1, "steps": 1,
            "device": "cpu", "model": "resnet20_bwn", "channels_last": False}
    result = benchmark.train_worker(spec)
    assert result["amp"] is False and len(result["seconds"]) == 1


def test_refuse_losing_rows_names_changed_settings_and_rows_not_measured(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"header": {"images": 1024, "batch_size": 128, "commit": "abc"},
                                "rows": [{"model": "a", "seed": 0}, {"model": "b", "seed": 1}]}))
    with pytest.raises(grid.GridError, match=r"would not reproduce \(images 1024, b seed 1\); "
                                             r"write these to another --out folder, or pass --force"):
        grid.refuse_losing_rows(path, {"images": 16, "batch_size": 128}, ("model", "seed"), [("a", 0)], False)
    # The same settings and every row (the commit may differ), or --force: no refusal
    grid.refuse_losing_rows(path, {"images": 1024, "batch_size": 128}, ("model", "seed"),
                            [("a", 0), ("b", 1), ("c", 0)], False)
    grid.refuse_losing_rows(path, {"images": 16, "batch_size": 128}, ("model", "seed"), [], True)


@pytest.mark.parametrize("script, results, flags", [
    (deploy_table, "deploy.json", ["--models", "resnet20_l1bn", "--val-images", "40", "--calibrate", "32"]),
    (half_statistics, "half-statistics.json", ["--models", "resnet20_l1bn", "--images", "16"]),
    (linf_gap, "linf-gap.json", ["--models", "resnet20_linfbn", "--seeds", "1", "--val-images", "40",
                                 "--batch-size", "8"]),
])
def test_a_models_subset_refuses_to_replace_the_rows_it_does_not_measure(script, results, flags,
                                                                          tiny_cifar10, tmp_path, capsys):
    """A trial run into the committed results folder would lose the other models' rows."""
    recorded = json.dumps({"header": {}, "rows": [{"model": "resnet20_bn", "seed": 0}]})
    (tmp_path / results).write_text(recorded)
    rc = script.main(["--data", str(tiny_cifar10), *flags, "--out", str(tmp_path)])
    assert rc == 2 and (tmp_path / results).read_text() == recorded
    one_error_line(capsys.readouterr().err, "would not reproduce (resnet20_bn", "pass --force")


def test_deploy_table_refuses_a_model_without_shipped_weights(tmp_path, capsys):
    assert deploy_table.main(["--models", "resnet20_bn,resnet56_bn", "--out", str(tmp_path)]) == 2
    one_error_line(capsys.readouterr().err, "--models: 'resnet56_bn' is not a shipped DEFAULT checkpoint (of resnet20_bn")
