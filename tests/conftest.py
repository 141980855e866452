import os
from pathlib import Path

import pytest

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
