import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--regen-golden", action="store_true",
                     help="rewrite tests/golden/*.json from the current code")


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared real data (``../shared/data`` beside the repo, or $NORMZOO_DATA)."""
    root = Path(os.environ.get("NORMZOO_DATA", REPO.parent / "shared" / "data"))
    if not (root / "cifar10").is_dir():
        pytest.fail(f"the shared data is not at {root}: set NORMZOO_DATA to the folder "
                    f"holding cifar10/, cifar100/ and imagenet/")
    return root


def _threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: the trainer's results are bit-reproducible
    on a fixed thread count."""
    yield from _threads(1)


@pytest.fixture
def single_thread():
    """One torch thread for one test: tiny tensors gain nothing from a second thread, and
    some kernels choose their method by the thread count (_top_k_per_row's max rounds)."""
    yield from _threads(1)
