"""eval/claims.py without training: the statistics against a hand computation, which
published checkpoints count as seed 0, and a finished cell read back into its claims."""

import csv
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
    # each seed is its own run: seed 1 is published under its own tag, seed 9 never ran
    assert claims.published(claims.BN.cell(1))["source"] == "published resnet20_bn.cifar10_long_s1"
    assert claims.published(claims.BN.cell(9)) is None
    # the DEFAULT l1bn weights were trained with the Norm Matters zero-init: the "on" arm; the
    # "off" arm's seed 0 is published under its own tag (--no-zero-init-residual)
    on, off = claims.arm("resnet20_l1bn", init="on"), claims.arm("resnet20_l1bn", init="off")
    assert claims.published(on.cell(0))["source"] == "published resnet20_l1bn.cifar10_long"
    assert claims.published(off.cell(0))["source"] == "published resnet20_l1bn.cifar10_long_equal_init"
    bwn = claims.arm("resnet20_bwn", "--lr", "0.05")
    assert bwn.name.endswith(".lr0.05") and claims.published(bwn.cell(0)) is not None
    assert claims.published(claims.arm("resnet20_bwn").cell(0)) is None  # lr 0.1 is another run


def test_a_published_checkpoint_keeps_its_arm_when_the_recipe_adjustment_changes(monkeypatch):
    """The DEFAULT l1bn command has no --zero-init-residual: the Norm Matters adjustment set it.
    Without the adjustment the command alone reads as equal init, but the checkpoint was built
    with zero-init gains (its model_kwargs), so it stays the "on" arm's and not the "off" arm's."""
    from train import recipes

    for_model = recipes.for_model
    monkeypatch.setattr(recipes, "for_model", lambda recipe, norm, keep=(): for_model(
        recipe, norm, keep + ("zero_init_residual",)))  # as if the adjustment were gone
    on, off = claims.arm("resnet20_l1bn", init="on"), claims.arm("resnet20_l1bn", init="off")
    assert claims.published(on.cell(0))["source"] == "published resnet20_l1bn.cifar10_long"
    assert claims.published(off.cell(0))["source"] == "published resnet20_l1bn.cifar10_long_equal_init"


def test_a_finished_cell_is_read_into_its_claims(data_root, tmp_path, monkeypatch):
    arm = claims.arm("resnet20_l1bn", init="off")
    cell, own = arm.cell(0), {arm.cell(seed) for seed in range(3)}
    published = claims.published  # the arm's seeds from their run folders, not their published copies
    monkeypatch.setattr(claims, "published", lambda c: None if c in own else published(c))
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
    # --claims picks what to train; every claim is written, the others from their finished cells
    assert [c["key"] for c in written["claims"]] == [c.key for c in claims.CLAIMS]
    arms = {r["arm"] for r in csv.DictReader((results / "claims.csv").open())}
    assert {claims.arm("resnet20_l1bn", init="off").name, claims.BN.name, "resnet20_mimic.cifar10_cpu_long"} <= arms


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


# ---------------------------------------------------------------------------------------------
# MimicNorm's learning-rate table (mimic_lr_robust): models x lr at seed 0

LR = claims.MIMIC_LR


def test_the_lr_claim_defines_16_one_seed_cells_with_readable_names():
    arms = LR.arms()
    assert len({a.name for a in arms}) == 16
    # the verdict's four cells train first
    assert [a.name for a in arms[:4]] == [f"resnet20_{m}.mimic_lr_cifar10.lr{lr}"
                                          for m in ("bn", "mimic") for lr in (1.0, 2.0)]
    wm_only = LR.arm(LR.rows[2], 1.0)
    assert wm_only.name == "resnet20_mimic.wm_only.mimic_lr_cifar10.lr1.0"
    assert wm_only.cell(LR.seed) == grid.Cell(
        "resnet20_mimic.wm_only.mimic_lr_cifar10.lr1.0.s0",
        ("--model", "resnet20_mimic", "--norm-kwargs", '{"logits_bn": false}', "--recipe",
         "mimic_lr_cifar10", "--lr", "1.0", "--seed", "0"))
    trained = [grid.settings(a.cell(0).flags) for a in arms]
    assert len({json.dumps(s, sort_keys=True) for s in trained}) == 16  # 16 different runs
    assert {(s["model"], json.dumps(s["norm_kwargs"])) for s in trained} == {
        ("resnet20_bn", "{}"), ("resnet20_mimic", "{}"),
        ("resnet20_mimic", '{"logits_bn": false}'), ("resnet20_none", "{}")}
    assert sorted({s["recipe"]["lr"] for s in trained}) == [0.1, 0.4, 1.0, 2.0]
    assert all(s["seed"] == 0 and s["recipe"]["name"] == "mimic_lr_cifar10"
               and s["recipe"]["epochs"] == 10 for s in trained)


def lr_rows(scores: dict) -> list[dict]:
    """Rows as cell_row gives them: {(row name, lr): best val, "diverged" or (best, "diverged")}."""
    out = []
    for (name, lr), got in scores.items():
        row = next(r for r in LR.rows if r.name == name)
        best, diverged = (got[0], True) if isinstance(got, tuple) else (got, False)
        if got == "diverged":
            best, diverged = None, True
        out.append({"arm": LR.arm(row, lr).name, "seed": 0, "best_val_top1": best,
                    "best_epoch": None if best is None else 7,
                    "status": "diverged at epoch 9, step 3" if diverged else "ok"})
    return out


M, B = "resnet20_mimic", "resnet20_bn"


def test_first_trains_only_the_lr_tables_judged_cells(data_root, tmp_path, monkeypatch):
    """--first 4 on the learning-rate claim trains its verdict's four cells; every other cell,
    its own and the other claims', is only read."""
    asked = []
    monkeypatch.setattr(claims, "cell_row", lambda arm, seed, args: asked.append((arm.name, args.train)))
    rc = claims.main(["--data", str(data_root / "cifar10"), "--claims", "mimic_lr_robust", "--first", "4",
                      "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")])
    assert rc == 0
    trained = sorted(name for name, train in asked if train)
    assert trained == sorted(f"resnet20_{m}.mimic_lr_cifar10.lr{lr}" for m in ("bn", "mimic") for lr in (1.0, 2.0))
    assert len(asked) == len(claims.cells(claims.CLAIMS, claims.MIN_SEEDS))  # the rest read


@pytest.mark.parametrize("scores, verdict, diffs", [
    ({(M, 1.0): 40.0, (B, 1.0): 30.0, (M, 2.0): 35.0, (B, 2.0): "diverged"}, "holds at one seed",
     {"1.0": 10.0, "2.0": 25.0}),  # a run diverged before validating counts as chance, 10%
    ({(M, 1.0): 40.0, (B, 1.0): 39.5, (M, 2.0): 35.0, (B, 2.0): 20.0}, "not resolved at one seed",
     {"1.0": 0.5, "2.0": 15.0}),  # within MARGIN at lr 1.0
    ({(M, 1.0): 29.0, (B, 1.0): 30.0, (M, 2.0): (25.0,), (B, 2.0): 26.0}, "does not hold at one seed",
     {"1.0": -1.0, "2.0": -1.0}),  # (25.0,): its best before it diverged
    ({(M, 1.0): 40.0, (B, 1.0): 30.0, (M, 2.0): 35.0}, "pending: 3 of 4 cells", {"1.0": 10.0}),
    ({(M, 0.1): 50.0, (B, 0.1): 40.0}, "pending: 0 of 4 cells", {}),  # lr 0.1 is not judged
])
def test_the_lr_verdict_sets_mimic_against_bn_at_lr_1_and_2(scores, verdict, diffs):
    got = claims.lr_summary(LR, lr_rows(scores))
    assert (got["verdict"], got["diffs"]) == (verdict, diffs)


def test_the_lr_table_shows_best_values_divergence_and_pending_cells():
    got = claims.lr_summary(LR, lr_rows({(M, 0.4): 41.234, (M, 1.0): (25.5,), (M, 2.0): "diverged"}))
    mimic = next(r for r in got["table"] if r["name"] == M)
    assert [c["lr"] for c in mimic["cells"]] == [0.1, 0.4, 1.0, 2.0]
    section = report.claims_section({"command": "python eval/claims.py", "commit": "c" * 40,
                                     "machine": "m", "seeds": 3, "verdicts": claims.VERDICTS,
                                     "claims": [got]})
    assert "| MimicNorm | `resnet20_mimic` | pending | 41.23 (epoch 7) | 25.50 (epoch 7), then " \
           "diverged in epoch 9 | diverged in epoch 9 |" in section
    assert "| lr 0.1 | lr 0.4 | lr 1.0 | lr 2.0 |" in section
    assert "Verdict: **pending: 2 of 4 cells** (`resnet20_mimic` against `resnet20_bn` at lr " \
           "1.0 and 2.0)" in section
    assert "| claim | arm a |" not in section  # no two-arm claim asked for: no empty table


def test_no_train_shows_the_lr_claim_from_its_finished_and_diverged_cells(data_root, tmp_path):
    runs = tmp_path / "runs"
    done = LR.arm(LR.rows[1], 1.0).cell(0)
    folder = runs / done.name
    folder.mkdir(parents=True)
    (folder / "recipe.json").write_text(json.dumps(
        {"command": "python -m train " + shlex.join(done.flags) + " --data D --out O", "commit": "c" * 40}))
    (folder / "log.jsonl").write_text("".join(json.dumps(
        {"epoch": e, "val_acc": v, "train_loss": 1.0, "img_per_s": 800.0, "seconds": 60.0}) + "\n"
        for e, v in enumerate([30.0, 45.5, 41.0], 1)))
    zoo.save_checkpoint(zoo.create_model("resnet20_mimic"), folder / "model.safetensors", tag="t")
    diverged = runs / LR.arm(LR.rows[0], 1.0).cell(0).name  # bn: its log until epoch 2
    diverged.mkdir()
    (diverged / "diverged.json").write_text(json.dumps({"status": "diverged", "epoch": 3, "step": 5}))
    (diverged / "log.jsonl").write_text(json.dumps({"epoch": 1, "val_acc": 12.0}) + "\n"
                                        + json.dumps({"epoch": 2, "val_acc": 20.25}) + "\n")
    results = tmp_path / "results"
    assert claims.main(["--data", str(data_root / "cifar10"), "--no-train", "--runs", str(runs),
                        "--results", str(results), "--claims", "mimic_lr_robust"]) == 0
    written = {c["key"]: c for c in json.loads((results / "claims.json").read_text())["claims"]}
    written = written["mimic_lr_robust"]
    cells = {(r["name"], c["lr"]): c for r in written["table"] for c in r["cells"]}
    assert cells[(M, 1.0)] == {"lr": 1.0, "best_val_top1": 45.5, "best_epoch": 2, "status": "ok"}
    assert cells[(B, 1.0)] == {"lr": 1.0, "best_val_top1": 20.25, "best_epoch": 2,
                               "status": "diverged at epoch 3, step 5"}
    assert cells[(M, 2.0)]["status"] == "pending" and written["diffs"] == {"1.0": 25.25}
    assert written["verdict"] == "pending: 2 of 4 cells"
    lr_rows = [r for r in csv.DictReader((results / "claims.csv").open()) if "mimic_lr" in r["arm"]]
    assert len(lr_rows) == 2


def test_a_cell_another_process_trains_is_refused_and_kept(tmp_path):
    """A second grid on the same cell resumed the same checkpoint beside the first, or deleted
    the folder the first had not checkpointed yet."""
    from filelock import FileLock

    cell = claims.arm("resnet20_l1bn", init="off").cell(1)
    folder = tmp_path / cell.name
    folder.mkdir()
    (folder / "train.log").write_text("epoch 0: 10/351 step\n")  # the other run, before its checkpoint
    with FileLock(tmp_path / f"{cell.name}.lock"):  # the other grid's
        with pytest.raises(grid.GridError, match=f"cell {cell.name} is being trained by another "
                                                 f"process .*: let it finish, or stop it"):
            grid.train_cell(cell, tmp_path, "data", threads=1)
    assert (folder / "train.log").read_text() == "epoch 0: 10/351 step\n"


def test_the_small_batch_claims_share_one_bn_arm_named_by_its_flags():
    gn, ilm = (next(c for c in claims.CLAIMS if c.key == key)
               for key in ("gn_beats_bn_batch8", "ilm_beats_bn_batch8"))
    assert gn.b == ilm.b and gn.b.name == "resnet20_bn.cifar10_cpu_long.b8.e10.lr0.00625"
    cell = gn.a.cell(2)
    assert cell.value("--batch-size") == "8" and cell.value("--epochs") == "10"
    assert float(cell.value("--lr")) == 0.1 * 8 / 128  # the batch sweep's linear scaling
    assert grid.settings(cell.flags)["recipe"]["batch_size"] == 8  # the effective recipe
    trained = [a.name for a, _ in claims.cells([gn, ilm], 3)]
    assert len(trained) == 9 and len(set(trained)) == 3  # 3 arms x 3 seeds, bn's trained once


def test_a_finished_cell_without_a_log_is_one_error_not_an_empty_row(tmp_path):
    cell = claims.BN.cell(0)
    folder = tmp_path / cell.name
    folder.mkdir()
    (folder / "recipe.json").write_text(json.dumps(
        {"command": "python -m train " + " ".join(cell.flags) + " --data D --out O"}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(grid.GridError, match="has model.safetensors but no epoch in log.jsonl"):
        grid.train_cell(cell, tmp_path, "D", threads=1)
