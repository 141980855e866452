"""``python -m zoo.convert`` given careless input (issue 17: D11): one ``error: ...`` line,
and nothing of the file's pickle runs."""

import os
import warnings

import pytest
import torch

import zoo
import zoo.convert

from conftest import one_error_line

# One torch thread (the tiny models gain nothing from more); one process, even under torchrun.
pytestmark = pytest.mark.usefixtures("one_thread", "not_distributed")


# D11: python -m zoo.convert


def _convert(capsys, *argv):
    capsys.readouterr()
    rc = zoo.convert.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_convert_given_a_folder_says_so(tmp_path, capsys):
    rc, out, err = _convert(capsys, "torchvision", tmp_path, "--out", tmp_path / "out.safetensors",
                            "--model", "resnet18_bn")
    assert rc == 2
    one_error_line(err, f"{tmp_path} is a folder; pass the checkpoint file in it")
    rc, out, err = _convert(capsys, "torchvision", tmp_path / "r18.pth", "--out", tmp_path,
                            "--model", "resnet18_bn")
    assert rc == 2
    one_error_line(err, f"the output {tmp_path} is a folder; name the .safetensors file")


def test_convert_names_the_refused_global_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    src = tmp_path / "trojan.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": Payload()}, src)
    rc, out, err = _convert(capsys, "cifar-reproduction", src, "--out", tmp_path / "o.safetensors")
    assert rc == 2
    one_error_line(err, f"refusing to unpickle {src}: loading it needs the object "
                         f"{os.mkdir.__module__}.mkdir", "torch.save(model.state_dict()")
    assert not marker.exists() and not (tmp_path / "o.safetensors").exists()


# What torch's weights-only unpickler has said on refusing a file (torch 2.6 and 2.14 wordings).
REFUSALS = {
    "global (2.6)": ("Weights only load failed. ...\n\tWeightsUnpickler error: Unsupported global: "
                     "GLOBAL io.open was not an allowed global by default. Please use ...",
                     "loading it needs the object io.open"),
    "blocked module (2.14)": ("Weights only load failed. In PyTorch 2.6, ...\n\n\nTrying to load "
                              "unsupported GLOBAL posix.system whose module posix is blocked.\n",
                              "loading it needs the object posix.system"),
    "no global named": ("Weights only load failed. ...\nPlease file an issue ...: WeightsUnpickler "
                        "error: \n\nUnsupported operand 149\n\nCheck the documentation ...",
                        "stops at 'Unsupported operand 149'"),
    "unknown wording": ("\x1b[1mSomething new\x1b[0m happened\nmore",
                        "stops at 'Something new happened'"),
}


@pytest.mark.parametrize("message, said", REFUSALS.values(), ids=REFUSALS.keys())
def test_convert_explains_a_refusal_in_any_torch_wording(message, said):
    assert said in zoo.convert._refusal(message)


def test_convert_does_not_leak_the_pickle_protocol_warning(tmp_path, capsys):
    state_dict = {("linear" + k[2:] if k.startswith("fc.") else k): v
                  for k, v in zoo.create_model("resnet20_bn").state_dict().items()}
    src = tmp_path / "resnet20.th"
    torch.save(state_dict, src, pickle_protocol=3)  # torch.load warns of any protocol but 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, out, err = _convert(capsys, "cifar-reproduction", src,
                                "--out", tmp_path / "o.safetensors")
    assert rc == 0, err
    assert [str(w.message) for w in caught if "pickle protocol" in str(w.message)] == []
    assert "tensors mapped into resnet20_bn" in out and err == ""


