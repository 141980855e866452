"""Seeded outputs of a few models, so a change in init or forward cannot pass unnoticed.
Regenerate (only after an intended change) with `python -m pytest tests/zoo/test_golden.py --regen-golden`."""

import json
from pathlib import Path

import pytest
import torch

import zoo

GOLDEN = Path(__file__).parent / "golden" / "outputs.json"
MODELS = ["resnet20_bn", "resnet20_gn", "resnet32_none", "cifar_resnet18_in",
          "cifar_vgg11_ln", "resnet18_gn", "vgg11_bn"]


def _outputs(name):
    torch.manual_seed(0)
    model = zoo.create_model(name)
    size = model.config["min_input_size"][-1]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eval_out = model.eval()(x)
        torch.manual_seed(2)
        train_out = model.train()(x)
    return {"eval": eval_out[:, :10].tolist(), "train": train_out[:, :10].tolist()}


@pytest.fixture(scope="module")
def golden(request):
    if request.config.getoption("--regen-golden"):
        rows = ",\n".join(f" {json.dumps(n)}: {json.dumps(_outputs(n))}" for n in MODELS)
        GOLDEN.write_text("{\n" + rows + "\n}\n")
    if not GOLDEN.is_file():
        pytest.fail(f"{GOLDEN} is missing: run pytest tests/zoo/test_golden.py --regen-golden")
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name", MODELS)
def test_seeded_outputs_match_the_golden_file(name, golden):
    assert name in golden, "run pytest tests/zoo/test_golden.py --regen-golden"
    got = _outputs(name)
    for mode in ("eval", "train"):
        torch.testing.assert_close(torch.tensor(got[mode]), torch.tensor(golden[name][mode]),
                                   rtol=1e-4, atol=1e-5, msg=f"{name} {mode}")
