"""eval/linf_gap.py: its eps effect checked against the layers themselves, its gradient errors,
and a run on tiny data."""

import copy
import json

import pytest
import torch

import linf_gap
import zoo
from conftest import one_error_line
from zoo import report
from zoo.norms.norm_matters import L1BatchNorm2d, TopKBatchNorm2d

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = {"L2": torch.nn.BatchNorm2d, "L1": L1BatchNorm2d, "Linf": lambda c: TopKBatchNorm2d(c, k=1)}


@pytest.mark.parametrize("statistic", LAYERS)
def test_eps_effect_is_the_layers_own(statistic):
    """A training-mode layer with unit gain computes y = (x - mu) * s(eps): 1 - y(eps) / y(0) per
    channel is eps's effect on its scale, and the script's is the largest."""
    x = torch.randn(8, 3, 5, 5, dtype=torch.float64) * torch.tensor([0.05, 1.0, 20.0], dtype=torch.float64)[:, None, None]
    layer = LAYERS[statistic](3).double().train()
    layer.eps = 0.01  # large enough to matter for the 0.05 channel
    exact = copy.deepcopy(layer)
    exact.eps = 1e-30  # 0 itself is refused in training
    effect = (1 - layer(x) / exact(x)).mean((0, 2, 3))
    assert effect.argmax() == 0 and effect[0] > 1e-3  # the narrow channel, measurably
    assert linf_gap.eps_effect(layer, x) == pytest.approx(effect.max().item(), rel=1e-9)


def test_eps_effect_refuses_top_k_other_than_one():
    with pytest.raises(ValueError, match="only k=1"):
        linf_gap.eps_effect(TopKBatchNorm2d(3, k=10), torch.randn(4, 3, 4, 4))


def stay_eager(model, enabled=True):
    """zoo.fuse_norms without the compiling: the layers it would set, left eager."""
    return sum(getattr(m, "has_fused_kernels", False) for m in model.modules())


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bf16"])
def test_gradient_errors_measure_the_trainers_precision_against_float64(monkeypatch, amp):
    """Without a compiler both steps are the eager one: equal errors, not 0, and larger under
    bf16 autocast than in float32. A model whose norms have no fused kernels gets only the
    eager error."""
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    bn = linf_gap.gradient_errors(zoo.create_model("resnet20_bn"), [(x, y)], amp)
    assert bn["fused"] is None and bn["fused_off"] == "no fused kernels" and bn["eager"] > 0
    monkeypatch.setattr(zoo, "fuse_norms", stay_eager)
    found = linf_gap.gradient_errors(zoo.create_model("resnet20_linfbn"), [(x, y)], amp)
    assert found["fused"] == found["eager"] and found["fused_off"] is None
    assert (1e-3 < found["eager"] < 0.5) if amp else (0 < found["eager"] < 1e-3)


def test_fused_kernels_that_did_not_compile_are_not_compared(monkeypatch):
    monkeypatch.setattr(zoo, "fuse_norms", stay_eager)
    monkeypatch.setattr(linf_gap, "fused_failure", lambda: "CalledProcessError: no compiler")
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    found = linf_gap.gradient_errors(zoo.create_model("resnet20_l1bn"), [(x, y)], False)
    assert found["fused"] is None and found["fused_off"] == "did not compile: CalledProcessError: no compiler"


def test_run_on_tiny_data_writes_rows_and_markdown(tiny_cifar10, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(zoo, "fuse_norms", stay_eager)
    rc = linf_gap.main(["--data", str(tiny_cifar10), "--models", "resnet20_bn,resnet20_linfbn",
                        "--seeds", "1", "--batch-size", "8", "--val-images", "16",
                        "--recalibrate", "100", "--steps", "1", "--out", str(tmp_path)])
    assert rc == 0
    written = json.loads((tmp_path / "linf-gap.json").read_text())
    rows = written["rows"]
    assert [(r["model"], r["seed"], r["weights"]) for r in rows] == [
        ("resnet20_bn", 0, "cifar10_long"), ("resnet20_linfbn", 0, "cifar10_long_equal_init")]
    assert written["header"]["recalibrate_batches"] == 8  # 64 training images: an epoch of 8
    for row in rows:
        assert 0 <= row["val_top1"] <= 100 and 0 <= row["val_top1_recalibrated"] <= 100
        assert 0 < row["eps_effect"] < 1e-2
    assert rows[0]["gradient_error"]["fused"] is None and rows[1]["gradient_error"]["fused"] > 0
    assert rows[0]["amp"] is rows[1]["amp"] is True  # cifar10_cpu_long trains under bf16 autocast
    out = capsys.readouterr().out
    gap = rows[1]["val_top1"] - rows[0]["val_top1"]
    assert f"| `resnet20_linfbn` | 0 | `cifar10_long_equal_init` | bf16 | {rows[1]['val_top1']:.2f} |" in out
    assert f"paired by seed: {gap:+.2f} points (n=1)" in out


@pytest.mark.parametrize("flags, fragment", [
    (["--models", "resnet20_gn", "--val-images", "16", "-b", "8"], "resnet20_gn is not one of resnet20_bn"),
    (["--val-images", "79"], "--val-images 79 leaves less than a batch of 128"),
])
def test_bad_input_is_one_error(tiny_cifar10, tmp_path, capsys, flags, fragment):
    rc = linf_gap.main(["--data", str(tiny_cifar10), *flags, "--out", str(tmp_path)])
    assert rc == 2 and not (tmp_path / "linf-gap.json").exists()
    one_error_line(capsys.readouterr().err, fragment)


def test_a_gap_the_checks_could_explain_is_not_called_explained():
    header = {"command": "c", "commit": "0123456789ab", "machine": "m", "torch": "2", "date": "d",
              "val_images": 16, "recalibrate_batches": 2, "batch_size": 8, "steps": 1}
    row = {"seed": 0, "weights": "w", "amp": True, "eps_effect": 1e-5}
    rows = [{**row, "model": "resnet20_bn", "val_top1": 92.0, "val_top1_recalibrated": 92.1,
             "gradient_error": {"fused": None, "eager": 0.2, "fused_off": "no fused kernels"}},
            {**row, "model": "resnet20_linfbn", "val_top1": 91.0, "val_top1_recalibrated": 91.1,
             "gradient_error": {"fused": 0.22, "eager": 0.2, "fused_off": None}}]
    markdown = report.linf_gap_section(rows, header)
    assert "| `resnet20_linfbn` | 0 | `w` | bf16 | 91.00 | 91.10 | 1e-05 | 0.220 / 0.200 |" in markdown
    assert "at most 1.10 times the eager kernels'" in markdown
    assert "None of the three accounts for it" in markdown
    rows[1]["val_top1_recalibrated"] = 91.9  # recalibrating recovers most of the gap
    assert "Not every check rules itself out" in report.linf_gap_section(rows, header)
    rows[1]["val_top1_recalibrated"] = 91.1
    rows[1]["gradient_error"] = {"fused": None, "eager": 0.2, "fused_off": "did not compile: X"}
    markdown = report.linf_gap_section(rows, header)
    assert "| not compiled / 0.200 |" in markdown and "Not every check rules itself out" in markdown
