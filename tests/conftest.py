import json
import os
import pickle
from pathlib import Path

import pytest
import torch

import zoo
import zoo.data
import zoo.hub
from hub_server import FakeHub

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist each worker gets its share of the cores, and so do the processes its
# tests start (OMP_NUM_THREADS): more threads than cores make every test slower.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _SHARE = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(_SHARE)
    os.environ["OMP_NUM_THREADS"] = str(_SHARE)


# The modules that take longest (fresh processes, compiled kernels) start first: xdist hands
# out whole modules in collection order (--dist loadscope), and one of them started last
# would leave a worker running alone at the end.
# Longest first, by their summed test time in a --durations run (2026-12-06): trainer runs,
# compiled kernels, the tiny benchmark, then the modules of 20-60 s.
LONGEST_FIRST = ("train/test_train.py", "zoo/test_fused_norms.py", "eval/test_eval_scripts.py",
                 "eval/test_batch_sweep.py", "eval/test_validate.py", "test_docs.py",
                 "hostile/test_deploy_cli.py", "zoo/test_convert.py", "zoo/test_deploy.py",
                 "eval/test_deploy_table.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        module = item.path.relative_to(REPO / "tests").as_posix()
        return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every other test keeps its place


def pytest_addoption(parser):
    parser.addoption("--regen-golden", action="store_true",
                     help="rewrite tests/zoo/golden/*.json from the current code")


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared real data (``../shared/data`` beside the repo, or $NORMZOO_DATA)."""
    root = zoo.data.SHARED_DATA
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


@pytest.fixture
def not_distributed(monkeypatch):
    """The test runs as one process, even under torchrun: the trainer and eval/validate.py
    read these."""
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def hub():
    """A fake Hugging Face Hub on a loopback port (tests/support/hub_server.py)."""
    server = FakeHub().start()
    yield server
    server.stop()


@pytest.fixture
def manifest(tmp_path, monkeypatch) -> Path:
    """An empty temporary manifest, in use through $NORMZOO_MANIFEST."""
    path = tmp_path / "pkg" / "weights_manifest.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"schema_version": 1, "weights": []}))
    monkeypatch.setenv("NORMZOO_MANIFEST", str(path))
    return path


# The checkpoint the command-line tools are given: what a registered file records.
CLI_NAME = "resnet20_gn.cifar10"
CLI_METRICS = {"top1": 50.0, "top5": 90.0, "split": "cifar10 test[:1000]", "num_images": 1000}
CLI_RECIPE = {"command": "tests/hostile", "commit": "0" * 40}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained resnet20_gn saved with a figure and a recipe, as a registered file has."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / f"{CLI_NAME}.safetensors"
    return zoo.save_checkpoint(zoo.create_model("resnet20_gn"), path, tag="cifar10",
                               metrics=CLI_METRICS, recipe=CLI_RECIPE)


@pytest.fixture
def registered_manifest(manifest, checkpoint) -> Path:
    """``manifest`` with ``checkpoint`` registered and shipped."""
    zoo.hub.register(checkpoint, ship=True)
    return manifest


def one_error_line(err: str, *fragments: str) -> str:
    """A command-line tool's stderr: exactly one ``error: ...`` line, holding each fragment."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def assert_onnx_matches(model, x, folder: Path, expected) -> None:
    """``model`` exported to ONNX (dynamo) under ``folder`` and run by onnxruntime on ``x``
    gives ``expected`` (the [test] extra installs the exporter and the runtime)."""
    import onnxruntime

    torch.onnx.export(model, (x,), dynamo=True).save(str(folder / "model.onnx"))
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-5)


def write_cifar(folder: Path, meta_name: str, meta: dict, splits: dict) -> None:
    """A CIFAR folder in the python layout: ``splits`` maps a file name to (data, labels,
    label key)."""
    folder.mkdir(parents=True)
    (folder / meta_name).write_bytes(pickle.dumps(meta))
    for name, (data, labels, key) in splits.items():
        (folder / name).write_bytes(pickle.dumps({"data": data, key: labels}))


@pytest.fixture(scope="module")
def tiny_cifar10(data_root, tmp_path_factory) -> Path:
    """A CIFAR-10 folder of 16 real test images as every split (train: five batches of 16)."""
    from zoo.data import load_cifar

    real = load_cifar(data_root / "cifar10", "test")
    data, labels = real.images[:16].reshape(16, -1).numpy(), real.labels[:16].tolist()
    root = tmp_path_factory.mktemp("tiny") / "cifar10"
    splits = {f"data_batch_{i}": (data, labels, "labels") for i in range(1, 6)}
    splits["test_batch"] = (data, labels, "labels")
    write_cifar(root / "cifar-10-batches-py", "batches.meta", {"label_names": real.classes}, splits)
    return root
