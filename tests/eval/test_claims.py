"""eval/claims.py without training: the statistics against a hand computation, which
published checkpoints count as seed 0, and a finished cell read back into its claims."""

import json
import math
import shlex
import statistics

import pytest

import claims  # eval/claims.py (pyproject's pythonpath)
import grid
import zoo
from zoo import report

CLAIM = claims.Claim("x", "x matches y", "paper", "matches", claims.Arm("a", ()), claims.Arm("b", ()))


def rows(a: list[float], b: list[float]) -> list[dict]:
    return ([{"arm": "a", "seed": s, "val_top1": v, "test_top1": v - 1, "status": "ok"}
             for s, v in enumerate(a)]
            + [{"arm": "b", "seed": s, "val_top1": v, "test_top1": None, "status": "ok"}
               for s, v in enumerate(b)])


def test_the_paired_interval_and_the_means_match_a_hand_computation():
    a, b = [91.0, 90.2, 90.9, 88.0], [90.5, 90.4, 90.0]  # a's seed 3 has no pair
    got = claims.summary(CLAIM, rows(a, b), seeds=3)
    diffs = [x - y for x, y in zip(a, b)]
    half = 4.303 * statistics.stdev(diffs) / math.sqrt(3)  # t(0.975, df 2)
    assert got["n"] == 3 and got["diff"] == pytest.approx(statistics.mean(diffs), abs=0.005)
    assert got["ci"] == pytest.approx([statistics.mean(diffs) - half, statistics.mean(diffs) + half],
                                      abs=0.011)
    assert got["a_val_top1_n"] == 4 and got["a_val_top1_mean"] == pytest.approx(statistics.mean(a), abs=0.005)
    assert got["a_val_top1_std"] == pytest.approx(statistics.stdev(a), abs=0.005)
    assert got["b_test_top1_n"] == 0 and got["b_test_top1_mean"] is None


@pytest.mark.parametrize("kind, ci, n, verdict", [
    ("matches", [-0.5, 0.9], 3, "holds"),
    ("matches", [1.2, 2.5], 3, "does not hold"),
    ("matches", [-3.0, -1.1], 3, "does not hold"),
    ("matches", [-0.5, 1.4], 3, "not resolved at n=3"),
    ("better", [0.1, 0.9], 3, "holds"),
    ("better", [-0.9, -0.1], 3, "does not hold"),
    ("better", [-0.2, 0.9], 4, "not resolved at n=4"),
    ("matches", [-0.1, 0.1], 2, "pending: 2 of 3 paired seeds"),
    ("better", None, 1, "pending: 1 of 3 paired seeds"),
])
def test_verdicts(kind, ci, n, verdict):
    assert claims.verdict(kind, ci, n) == verdict


def test_published_checkpoints_count_as_seed_0_where_their_command_trains_the_same():
    bn = claims.published(claims.BN.cell(0))
    assert bn["source"] == "published resnet20_bn.cifar10_long" and bn["val_top1"] > 80
    assert claims.published(claims.BN.cell(1)) is None  # another seed
    # the l1bn weights were trained with the Norm Matters zero-init: the "on" arm, not "off"
    on, off = claims.arm("resnet20_l1bn", init="on"), claims.arm("resnet20_l1bn", init="off")
    assert claims.published(on.cell(0))["source"] == "published resnet20_l1bn.cifar10_long"
    assert claims.published(off.cell(0)) is None
    bwn = claims.arm("resnet20_bwn", "--lr", "0.05")
    assert bwn.name.endswith(".lr0.05") and claims.published(bwn.cell(0)) is not None
    assert claims.published(claims.arm("resnet20_bwn").cell(0)) is None  # lr 0.1 is another run


def test_a_finished_cell_is_read_into_its_claims(data_root, tmp_path):
    cell = claims.arm("resnet20_l1bn", init="off").cell(0)
    folder = tmp_path / "runs" / cell.name
    folder.mkdir(parents=True)
    (folder / "recipe.json").write_text(json.dumps(
        {"command": "python -m train " + " ".join(cell.flags) + " --data D --out O", "commit": "c" * 40}))
    (folder / "log.jsonl").write_text(json.dumps(
        {"epoch": 55, "val_acc": 91.5, "train_loss": 0.01, "img_per_s": 800.0, "seconds": 60.0}) + "\n")
    zoo.save_checkpoint(zoo.create_model("resnet20_l1bn"), folder / "model.safetensors",
                        tag="t", dataset="cifar10",
                        metrics={"top1": 90.7, "top5": 99.0, "split": "cifar10 test[:1000]",
                                 "num_images": 1000})
    results = tmp_path / "results"
    assert claims.main(["--data", str(data_root / "cifar10"), "--no-train", "--runs",
                        str(tmp_path / "runs"), "--results", str(results), "--claims",
                        "l1bn_matches_bn", "ilm_improves_gn"]) == 0
    written = json.loads((results / "claims.json").read_text())
    l1 = written["claims"][0]
    assert l1["key"] == "l1bn_matches_bn" and l1["a_val_top1_mean"] == 91.5
    assert l1["a_test_top1_mean"] == 90.7 and l1["n"] == 1  # paired with the published bn seed 0
    assert l1["diff"] == pytest.approx(91.5 - claims.published(claims.BN.cell(0))["val_top1"])
    section = report.claims_section(written)
    assert "| L1 batch norm matches batch norm |" in section and "pending: 1 of 3" in section
    assert (results / "claims.csv").read_text().count("\n") == 1 + 4  # l1bn, bn, ilm, gn


def test_unknown_claims_are_refused(data_root, tmp_path, capsys):
    assert claims.main(["--data", str(data_root / "cifar10"), "--claims", "l2bn", "--runs",
                        str(tmp_path / "runs")]) == 2
    assert "unknown claim 'l2bn'; claims: l1bn_matches_bn" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_grid_settings_tell_runs_apart_by_their_norm_kwargs(tmp_path):
    base = ("--model", "resnet20_mimic", "--recipe", "test_tiny")
    wm_only = grid.Cell("wm", (*base, "--norm-kwargs", '{"logits_bn": false}'))
    assert grid.settings(wm_only.flags)["norm_kwargs"] == {"logits_bn": False}
    assert grid.settings((*base, "--norm-kwargs", '{"logits_bn": true}')) == grid.settings(base)
    folder = tmp_path / "wm"
    folder.mkdir()
    (folder / "recipe.json").write_text(json.dumps(
        {"command": f"python -m train {shlex.join(base)} --data D --out O"}))
    with pytest.raises(grid.GridError, match=r"norm_kwargs \{\} there, \{'logits_bn': False\} here"):
        grid.check_same_run(folder, wm_only)
    grid.check_same_run(folder, grid.Cell("wm", base))  # the same run: no error
