"""eval/half_statistics.py: its float16 statistics, checked against the layers they model, and
a run on tiny data."""

import json

import pytest
import torch

import half_statistics
from conftest import one_error_line
from zoo import report
from zoo.norms.norm_matters import L1BatchNorm2d, TopKBatchNorm2d

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = {"L2": torch.nn.BatchNorm2d, "L1": L1BatchNorm2d, "Linf": lambda c: TopKBatchNorm2d(c, k=1)}


@pytest.mark.parametrize("statistic", half_statistics.STATISTICS)
def test_float64_scales_are_the_layers_own(statistic):
    """A training-mode layer with unit gain computes y = (x - mu) * s: the script's s must be it."""
    x = torch.randn(8, 3, 5, 5, dtype=torch.float64) * torch.tensor([0.5, 2.0, 30.0], dtype=torch.float64)[:, None, None]
    layer = LAYERS[statistic](3).double().train()
    dev = x - x.mean((0, 2, 3), keepdim=True)
    layer_scale = (layer(x) / dev).mean((0, 2, 3))
    values = dev.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(half_statistics.scales(values, statistic), layer_scale)


def test_only_l2_overflows_float16_past_256():
    """Deviations of +-300: float16 squares are inf, so L2's scale is 0; L1 and Linf stay exact
    to float16 rounding. At +-200 all three are finite."""
    for spread, l2_fails in ((300.0, True), (200.0, False)):
        x = torch.tensor([-spread, spread] * 64).reshape(8, 1, 4, 4)
        found = half_statistics.compare(x)
        assert found["max_dev"] == spread
        assert (found["L2"]["failed"] == 1) is l2_fails
        assert (found["L2"]["max_rel_err"] is None) is l2_fails
        for statistic in ("L1", "Linf") + (() if l2_fails else ("L2",)):
            assert found[statistic]["failed"] == 0
            assert found[statistic]["max_rel_err"] < 2e-3


def test_run_on_tiny_data_writes_rows_and_markdown(tiny_cifar10, tmp_path, capsys):
    rc = half_statistics.main(["--data", str(tiny_cifar10), "--models", "resnet20_l1bn",
                               "--images", "16", "--batch-size", "8", "--out", str(tmp_path)])
    assert rc == 0
    written = json.loads((tmp_path / "half-statistics.json").read_text())
    assert [(r["model"], r["weights"]) for r in written["rows"]] == [("resnet20_l1bn", "DEFAULT"),
                                                                     ("resnet20_l1bn", "init")]
    for row in written["rows"]:
        assert row["norm_layers"] == 19 and 0 < row["max_dev"] < 256
        for statistic in half_statistics.STATISTICS:
            # 2 batches through 19 norms: 7 of 16 channels, 6 of 32, 6 of 64
            assert row[statistic]["channels"] == 2 * (7 * 16 + 6 * 32 + 6 * 64)
            assert row[statistic]["failed"] == 0 and 0 <= row[statistic]["max_rel_err"] < 1e-2
    assert written["header"]["images"] == 16 and written["header"]["half_max"] == 65504
    out = capsys.readouterr().out
    assert "| `resnet20_l1bn` | DEFAULT | 19 |" in out and "No float16 scale fails" in out


@pytest.mark.parametrize("model, fragment", [("resnet56_l1bn", "has no DEFAULT weights"),
                                             ("resnet20_gn", "has no batch norm of the kinds measured"),
                                             ("resnet20_nope", "unknown model")])
def test_unmeasurable_models_are_one_error(tiny_cifar10, tmp_path, capsys, model, fragment):
    rc = half_statistics.main(["--data", str(tiny_cifar10), "--models", model, "--out", str(tmp_path)])
    assert rc == 2 and not (tmp_path / "half-statistics.json").exists()
    one_error_line(capsys.readouterr().err, model, fragment)


def test_failed_scales_render_as_failures():
    ok = {"failed": 0, "channels": 10, "max_rel_err": 0.001}
    header = {"command": "c", "commit": "0123456789ab", "machine": "m", "torch": "2", "date": "d",
              "images": 16, "batch_size": 8, "half_max": 65504.0}
    rows = [{"model": "resnet20_bn", "weights": "init", "norm_layers": 19, "max_dev": 300.0,
             "L2": {"failed": 3, "channels": 10, "max_rel_err": 0.001}, "L1": ok, "Linf": ok}]
    markdown = report.half_statistics_section(rows, header, "x.json")
    assert "| `resnet20_bn` | init | 19 | 300.0 | **3 of 10 fail** | 0.10% | 0.10% |" in markdown
    assert "float16 statistics fail here for L2." in markdown and "No float16 scale fails" not in markdown
