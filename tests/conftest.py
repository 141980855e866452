import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist each worker gets its share of the cores, and so do the processes its
# tests start (OMP_NUM_THREADS): more threads than cores make every test slower.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _SHARE = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(_SHARE)
    os.environ["OMP_NUM_THREADS"] = str(_SHARE)


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
