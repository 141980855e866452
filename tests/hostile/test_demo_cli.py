"""``python -m zoo`` given careless input (issue 17: D15): one ``error: ...`` line."""

import pytest

import zoo
from zoo.__main__ import main as demo_main

from conftest import one_error_line

# One torch thread (the tiny models gain nothing from more); one process, even under torchrun.
pytestmark = pytest.mark.usefixtures("one_thread", "not_distributed")


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
    default = zoo.get_model_weights("resnet20_bn").DEFAULT.value.name
    one_error_line(err, f"the weights {default} were trained on cifar10 (10 classes)",
                    f"{cifar100} holds 100-class data", "--weights none")

    rc, out, err = _demo(capsys, "--data", cifar100, "--limit", "10", "--weights", "none")
    assert rc == 0, err  # an untrained model of the data's class count is what the demo offers
    assert "UNTRAINED" in out and "chance is 1%" in out


