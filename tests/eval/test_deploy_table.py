"""eval/deploy_table.py on tiny data: a row per checkpoint and variant, and its markdown."""

import importlib.util
import json

import pytest

import deploy_table
from zoo import report

pytestmark = pytest.mark.usefixtures("one_thread")


def test_deploy_table_scores_every_variant_and_renders(tiny_cifar10, tmp_path, capsys):
    rc = deploy_table.main(["--data", str(tiny_cifar10), "--models", "resnet20_l1bn,resnet20_gn",
                            "--val-images", "40", "--test-images", "16", "--calibrate", "32",
                            "--out", str(tmp_path)])
    assert rc == 0
    written = json.loads((tmp_path / "deploy.json").read_text())
    rows = {(r["model"], r["variant"]): r for r in written["rows"]}
    assert set(rows) == {(m, v) for m in ("resnet20_l1bn", "resnet20_gn") for v in deploy_table.VARIANTS}
    for model in ("resnet20_l1bn", "resnet20_gn"):
        fp32, folded = rows[model, "fp32"], rows[model, "folded"]
        assert (folded["val_top1"], folded["test_top1"]) == (fp32["val_top1"], fp32["test_top1"])
        assert 0 <= rows[model, "bf16"]["val_top1"] <= 100
    if importlib.util.find_spec("torchao"):
        assert rows["resnet20_gn", "int8"]["status"] == "ok"
    else:  # the [deploy] extra is not installed: the row says so
        assert "needs torchao" in rows["resnet20_gn", "int8"]["status"]
    header = written["header"]
    assert header["val_images"] == 40 and header["calibration_images"] == 32
    markdown = report.deploy_section(written["rows"], header, "deploy.json")
    assert "| model | fp32 | bf16 | fp16 | folded | int8 |" in markdown
    assert f"| `resnet20_l1bn` | {rows['resnet20_l1bn', 'fp32']['val_top1']:.2f} / " in markdown
    assert "Speed is not measured yet" in markdown and markdown in capsys.readouterr().out


def test_deploy_table_refuses_calibration_overlapping_validation(tiny_cifar10, tmp_path, capsys):
    rc = deploy_table.main(["--data", str(tiny_cifar10), "--val-images", "60", "--calibrate", "32",
                            "--out", str(tmp_path)])
    assert rc == 2 and not (tmp_path / "deploy.json").exists()
    assert "80 training images cannot hold --calibrate 32 and --val-images 60 apart" in capsys.readouterr().err


def test_speed_table_renders_the_benchmark_deploy_suite():
    header = {"val_images": 5000, "test_images": 1000, "calibration_images": 1000, "command": "c",
              "commit": "0123456789ab", "torch": "2", "date": "d"}
    rows = [{"model": "resnet20_bn", "variant": v, "status": "ok", "val_top1": 91.0, "test_top1": 92.0}
            for v in ("fp32", "int8")]
    speed_rows = [{"suite": "deploy", "name": "resnet20_bn", "dtype": v, "value": value, "ratio": ratio,
                   "config": "batch 256 at 32x32, eager"} for v, value, ratio in
                  (("fp32", "1000.4", ""), ("int8", "2500.0", "2.5"))]
    speed_rows.append({**speed_rows[0], "suite": "inference", "value": "1.0"})  # another suite's row
    markdown = report.deploy_section(rows, header, "deploy.json",
                                     (speed_rows, {"machine": "m", "date": "d2", "command": "bench"}))
    assert "Inference img/s, batch 256, on m" in markdown and "`bench`" in markdown
    assert "| `resnet20_bn` | 1000 | 2500 (2.50x) |" in markdown
