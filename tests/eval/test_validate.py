"""Evaluation: zoo.evaluate (counting, ImageNet labels, unreadable images, shards) and the
eval/{imagenet,cifar}_val.py front ends of eval/validate.py, on the shared real data.

ImageNet models run on small subsets at a 64-pixel crop (resize 73) so the file stays fast on
a CPU; the CIFAR checkpoint is a ResNet-20 (GroupNorm) trained a few steps on real CIFAR-10
images, evaluated on all 1,000 shared test images. Most CLI runs call ``validate.main``
in-process; a real process is used where the process boundary matters (exit status, the
manifest from ``$NORMZOO_MANIFEST``, no traceback, torchrun).
"""

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import zoo
import zoo.hub
from zoo.data import load_cifar
from zoo.evaluate import (EvalResult, ImageNetVal, cifar_batches, evaluate, imagenet_loader,
                          imagenet_wnids, shard, split_name)
from zoo.preprocessing import default_preprocessing, eval_transforms
from zoo.weights import read_metadata

from conftest import REPO

_spec = importlib.util.spec_from_file_location("nz_eval_validate", REPO / "eval" / "validate.py")
validate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(validate)

SMALL = {"input_size": [3, 64, 64], "resize": 73, "crop": 64, "interpolation": "bilinear",
         "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
OVERRIDES = ["--img-size", "64", "--resize", "73"]  # the checkpoint says 224/256


def _synsets(data_root):
    return (data_root / "imagenet" / "meta" / "imagenet_synsets.txt").read_text().split()


def _ground_truth(data_root) -> dict:
    lines = (data_root / "imagenet" / "meta" / "val_ground_truth.txt").read_text().splitlines()
    return {name: int(label) for name, label in (line.split() for line in lines if line.strip())}


def cli(capsys, dataset, *argv):
    """``eval/{dataset}_val.py ARGV`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    rc = validate.main([str(a) for a in argv] + ["--no-progress"], dataset=dataset)
    out, err = capsys.readouterr()
    return rc, out, err


def _env(manifest) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "NORMZOO_MANIFEST": str(manifest), "PYTHONPATH": str(REPO)}


def _one_error_line(err: str, *fragments: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _table_rows(out: str, model: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith(f"| {model} ")]


@pytest.fixture(autouse=True)
def _not_distributed(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------------------------------------
# 1. ImageNet class indices: wnid list, tree and flat layouts


def test_shipped_class_list_is_the_standard_one(data_root):
    wnids = imagenet_wnids()
    assert wnids == _synsets(data_root)
    loc = (data_root / "imagenet" / "meta" / "LOC_synset_mapping.txt").read_text().splitlines()
    assert wnids == [line.split()[0] for line in loc]
    assert len(set(wnids)) == 1000 and wnids[0] == "n01440764" and wnids[999] == "n15075141"


def test_val_tree_labels_are_wnid_indices_and_match_the_ground_truth(data_root):
    val = data_root / "imagenet" / "val"
    data = ImageNetVal(val, transform=None, crop=64)  # listing only: nothing is decoded
    assert len(data) == 1300
    synsets, truth = _synsets(data_root), _ground_truth(data_root)
    for path, label in data.samples:
        assert label == synsets.index(path.parent.name) == truth[path.name], path
    assert len({label for _, label in data.samples}) == 725
    by_name = {path.name: label for path, label in data.samples}
    hand_checked = {  # wnid folder, file, class index (meta/imagenet_synsets.txt line - 1)
        ("n01440764", "ILSVRC2012_val_00023559.JPEG"): 0,    # tench
        ("n01440764", "ILSVRC2012_val_00024327.JPEG"): 0,
        ("n01443537", "ILSVRC2012_val_00044095.JPEG"): 1,    # goldfish
        ("n02123045", "ILSVRC2012_val_00012551.JPEG"): 281,  # tabby
        ("n04589890", "ILSVRC2012_val_00019243.JPEG"): 904,  # window screen
    }
    for (wnid, name), label in hand_checked.items():
        assert (val / wnid / name).is_file()
        assert by_name[name] == label == truth[name]
    # Folder enumeration would give 0..724: the last present class is not 724 here.
    last = sorted(p.name for p in val.iterdir())[-1]
    assert synsets.index(last) != 724 and max(by_name.values()) > 724


@pytest.fixture(scope="module")
def imagenet_subset(tmp_path_factory, data_root):
    """41 shared val images (every 32nd), as a wnid tree and as a flat folder (symlinks)."""
    root = tmp_path_factory.mktemp("imagenet_subset")
    every = ImageNetVal(data_root / "imagenet" / "val", transform=None, crop=64).samples
    chosen = every[::32]
    tree, flat = root / "tree", root / "flat"
    flat.mkdir()
    for path, _ in chosen:
        (tree / path.parent.name).mkdir(parents=True, exist_ok=True)
        (tree / path.parent.name / path.name).symlink_to(path)
        (flat / path.name).symlink_to(path)
    return {"tree": tree, "flat": flat, "samples": chosen,
            "ground_truth": data_root / "imagenet" / "meta" / "val_ground_truth.txt"}


@pytest.fixture(scope="module")
def imagenet_model(imagenet_subset):
    """A seeded resnet18_bn whose head scores ten images' classes by similarity to those images'
    features (and three decoy classes higher still), so top-1 and top-5 hits depend on which
    image is which; and its hit counts, computed in one batch outside ``evaluate``."""
    torch.manual_seed(0)
    model = zoo.create_model("resnet18_bn").eval()
    transform = eval_transforms(SMALL)
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p, _ in imagenet_subset["samples"]])
    labels = torch.tensor([label for _, label in imagenet_subset["samples"]])
    fc, model.fc = model.fc, nn.Identity()
    with torch.no_grad():
        feats = model(images)
        model.fc = fc
        mu = feats.mean(0)
        present = set(labels.tolist())
        decoys = [c for c in range(1000) if c not in present][:3]
        for k, i in enumerate(range(0, 40, 4)):  # ten images, each its class's prototype
            w = 20 * (feats[i] - mu) / (feats[i] - mu).square().sum()
            targets = [(int(labels[i]), w)] + ([(decoys[k], 1.5 * w)] if k < 3 else [])
            for c, wc in targets:  # a decoy outscores the first three images' own class
                fc.weight[c], fc.bias[c] = wc, -(wc @ mu)
        top5 = model(images).topk(5, dim=1).indices
    counts = (int((top5[:, 0] == labels).sum()), int((top5 == labels[:, None]).any(1).sum()))
    return model, counts


def test_flat_layout_gives_the_same_labels_and_scores_as_the_tree(imagenet_subset, imagenet_model):
    model, (hand1, hand5) = imagenet_model
    transform = eval_transforms(SMALL)
    tree = ImageNetVal(imagenet_subset["tree"], transform, 64)
    flat = ImageNetVal(imagenet_subset["flat"], transform, 64, ground_truth=imagenet_subset["ground_truth"])
    pairs = {p.name: label for p, label in tree.samples}
    assert len(pairs) == len(imagenet_subset["samples"]) == 41
    assert {p.name: label for p, label in flat.samples} == pairs
    assert pairs == {p.name: label for p, label in imagenet_subset["samples"]}
    results = [evaluate(model, imagenet_loader(d, 16, 0)) for d in (tree, flat)]
    for r in results:
        assert (r.num_images, r.correct1, r.correct5, r.unreadable) == (41, hand1, hand5, [])
    assert 0 < hand1 < hand5 < 41  # the comparison has teeth


def test_imagenet_cli_on_the_flat_folder_prints_overrides_and_matches(imagenet_subset, imagenet_model,
                                                                      tmp_path, capsys):
    model, (hand1, hand5) = imagenet_model
    ckpt = zoo.save_checkpoint(model, tmp_path / "r18.safetensors", tag="test", metrics={
        "top1": 100.0 * hand1 / 41, "top5": 100.0 * hand5 / 41,
        "split": split_name("imagenet-1k", 41), "num_images": 41})
    assert read_metadata(ckpt)["preprocessing"]["crop"] == 224
    rc, out, err = cli(capsys, "imagenet", "--checkpoint", ckpt, "--data", imagenet_subset["flat"],
                       "--ground-truth", imagenet_subset["ground_truth"], "-j", "0", "-b", "16",
                       *OVERRIDES)
    assert rc == 0, err
    assert "preprocessing overridden by flags: crop 224 -> 64; resize 256 -> 73" in out
    (row,) = _table_rows(out, "resnet18_bn")
    row = dict(zip(validate.COLUMNS, row))
    assert row["images"] == "41" and row["img_size"] == "64" and row["split"] == "imagenet-1k val (41 images)"
    assert float(row["top1"]) == round(100.0 * hand1 / 41, 3) and row["diff"] == "0.0"
    assert row["status"] == "ok"


def test_imagenet_layout_errors(tmp_path, data_root):
    some = next((data_root / "imagenet" / "val" / "n01440764").iterdir())
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(some, flat / some.name)
    with pytest.raises(ValueError, match="flat folder of images; pass the ground-truth file"):
        ImageNetVal(flat, None, 64)
    (tmp_path / "gt.txt").write_text("ILSVRC2012_val_00000001.JPEG 65\n")
    with pytest.raises(ValueError, match=f"has no label for {some.name}"):
        ImageNetVal(flat, None, 64, ground_truth=tmp_path / "gt.txt")
    bad = tmp_path / "bad"
    (bad / "cats").mkdir(parents=True)
    shutil.copy(some, bad / "cats" / some.name)
    with pytest.raises(ValueError, match="folders cats are not ImageNet wnids"):
        ImageNetVal(bad, None, 64)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageNetVal(tmp_path / "missing", None, 64)
    (tmp_path / "empty" / "n01440764").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no images"):
        ImageNetVal(tmp_path / "empty", None, 64)


# ---------------------------------------------------------------------------------------------
# 2. Counting, against cases worked out by hand


class Lookup(nn.Module):
    """Fixed logits per image: the image's pixel [0, 0, 0] holds its row in ``table``."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", torch.tensor(table, dtype=torch.float32))

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].long()]


def _batches(labels, batch_size):
    for start in range(0, len(labels), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(labels)))
        images = idx.float()[:, None, None, None].expand(-1, 3, 2, 2).contiguous()
        yield images, torch.tensor(labels)[idx], idx


def test_top1_top5_counts_by_hand():
    # logits over 8 classes; ranks written out: class order by descending logit
    table = [
        [9, 1, 2, 3, 4, 5, 6, 0],  # order 0,6,5,4,3,...  label 0 -> top-1 hit
        [1, 9, 8, 7, 6, 0, 5, 4],  # order 1,2,3,4,6,...  label 4 -> top-5 hit (4th)
        [9, 8, 7, 6, 5, 4, 3, 2],  # order 0,1,2,3,4,...  label 7 -> miss (8th)
        [0, 0.5, 9, 1, 2, 3, 4, 5],  # order 2,7,6,5,4    label 2 -> top-1 hit
        [5, 4, 3, 2, 1, 9, 8, 7],  # order 5,6,7,0,1      label 1 -> top-5 hit (5th)
        [1, 2, 3, 4, 5, 6, 7, 8],  # order 7,6,5,4,3      label 2 -> miss (6th)
        [9, 0, 0, 0, 0, 0, 0, 0],  # unreadable (label -1): would be a hit, is not scored
    ]
    labels = [0, 4, 7, 2, 1, 2, -1]
    seen = []
    result = evaluate(Lookup(table), _batches(labels, 4), progress=seen.append)
    assert isinstance(result, EvalResult)
    assert (result.num_images, result.correct1, result.correct5, result.unreadable) == (6, 2, 4, [6])
    assert result.top1 == pytest.approx(100 * 2 / 6) and result.top5 == pytest.approx(100 * 4 / 6)
    assert sum(seen) == 6 and result.seconds >= 0


def test_fewer_than_five_classes_top5_is_every_class():
    table = [[3, 2, 1], [3, 2, 1], [1, 3, 2], [1, 2, 3]]
    labels = [0, 2, 1, 0]  # top-1 hits: rows 0 and 2
    result = evaluate(Lookup(table), _batches(labels, 3))
    assert (result.num_images, result.correct1, result.correct5) == (4, 2, 4)
    assert (result.top1, result.top5) == (50.0, 100.0)


def test_only_unreadable_images_score_nothing():
    result = evaluate(Lookup([[1, 0]] * 3), _batches([-1, -1, -1], 2))
    assert (result.num_images, result.correct1, result.unreadable) == (0, 0, [0, 1, 2])
    assert result.top1 == 0.0


# ---------------------------------------------------------------------------------------------
# 3. Grayscale / CMYK / corrupt images


@pytest.fixture
def odd_images(tmp_path, data_root):
    """A wnid tree with a real RGB image, a real grayscale one, a CMYK JPEG and two corrupt files."""
    folder = tmp_path / "odd" / "n01440764"
    folder.mkdir(parents=True)
    rgb = data_root / "imagenet" / "val" / "n01440764" / "ILSVRC2012_val_00023559.JPEG"
    shutil.copy(rgb, folder / "a_rgb.JPEG")
    gray = data_root / "imagenet" / "train-sample" / "n04532670" / "n04532670_viaduct.JPEG"
    shutil.copy(gray, folder / "b_gray.JPEG")
    with Image.open(rgb) as img:
        img.convert("CMYK").save(folder / "c_cmyk.jpeg", quality=90)
    (folder / "d_truncated.JPEG").write_bytes(rgb.read_bytes()[:2000])
    (folder / "e_garbage.JPEG").write_bytes(b"\xff\xd8\xff not a jpeg at all " * 40)
    with Image.open(folder / "b_gray.JPEG") as g, Image.open(folder / "c_cmyk.jpeg") as c:
        assert (g.mode, c.mode) == ("L", "CMYK")
    return folder.parent


def test_grayscale_and_cmyk_are_converted_corrupt_files_reported(odd_images):
    data = ImageNetVal(odd_images, eval_transforms(SMALL), 64)
    names = [p.name for p, _ in data.samples]
    assert names == ["a_rgb.JPEG", "b_gray.JPEG", "c_cmyk.jpeg", "d_truncated.JPEG", "e_garbage.JPEG"]
    for i in range(3):
        image, label, index = data[i]
        assert image.shape == (3, 64, 64) and (label, index) == (0, i)
    gray = data[1][0]  # the three channels of a converted grayscale image are equal up to normalisation
    mean, std = torch.tensor(SMALL["mean"])[:, None, None], torch.tensor(SMALL["std"])[:, None, None]
    raw = gray * std + mean
    assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[1], raw[2], atol=1e-5)
    for i in (3, 4):
        image, label, index = data[i]
        assert (label, index) == (-1, i) and not image.any() and image.shape == (3, 64, 64)
    result = evaluate(Lookup([[1.0] + [0.0] * 999] * 1), _constant_zero_batches(data))
    assert (result.num_images, result.correct1, result.unreadable) == (3, 3, [3, 4])
    strict = ImageNetVal(odd_images, eval_transforms(SMALL), 64, strict=True)
    with pytest.raises(ValueError, match="unreadable image .*d_truncated.JPEG"):
        strict[3]


def _constant_zero_batches(data):
    """The loader's batches with every image replaced by row 0 of a Lookup (labels untouched)."""
    for images, labels, indices in imagenet_loader(data, 2, 0):
        yield torch.zeros_like(images), labels, indices


@pytest.fixture(scope="module")
def small_r18(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("r18") / "r18.safetensors"
    return zoo.save_checkpoint(zoo.create_model("resnet18_bn"), path, tag="test", preprocessing=SMALL)


def test_cli_reports_unreadable_paths_and_strict_is_fatal(odd_images, small_r18, capsys):
    rc, out, err = cli(capsys, "imagenet", "--checkpoint", small_r18, "--data", odd_images, "-j", "0")
    assert rc == 0, err
    folder = odd_images / "n01440764"
    assert (f"resnet18_bn: 2 unreadable image(s), not scored: {folder / 'd_truncated.JPEG'}, "
            f"{folder / 'e_garbage.JPEG'}") in out
    (row,) = _table_rows(out, "resnet18_bn")
    assert dict(zip(validate.COLUMNS, row))["images"] == "3"
    # --strict: fatal, one line naming the file, also when a DataLoader worker reads it
    for workers in ("0", "1"):
        rc, out, err = cli(capsys, "imagenet", "--checkpoint", small_r18, "--data", odd_images,
                           "--strict", "-j", workers)
        assert rc == 2
        _one_error_line(err, "unreadable image", str(folder / "d_truncated.JPEG"))


# ---------------------------------------------------------------------------------------------
# 4. CIFAR end to end: train, measure, save, register, re-measure through the CLI


@pytest.fixture(scope="module")
def cifar_ckpt(tmp_path_factory, data_root):
    """resnet20_gn after a few SGD steps on real CIFAR-10 training images, saved with the
    figure ``evaluate`` measured on the 1,000 shared test images."""
    torch.manual_seed(0)
    model = zoo.create_model("resnet20_gn")
    transform = eval_transforms(default_preprocessing(model))
    train = load_cifar(data_root / "cifar10", "train")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(15):
        idx = torch.randint(len(train.labels), (64,), generator=g)
        loss = F.cross_entropy(model(transform(train.images[idx])), train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = load_cifar(data_root / "cifar10", "test")
    result = evaluate(model, cifar_batches(test.images, test.labels, transform, 256))
    assert result.num_images == 1000 and result.unreadable == []
    metrics = {"top1": result.top1, "top5": result.top5, "split": split_name("cifar10", 1000),
               "num_images": 1000}
    path = tmp_path_factory.mktemp("cifar") / "resnet20_gn.safetensors"
    zoo.save_checkpoint(model, path, tag="cifar10", metrics=metrics,
                        recipe={"command": "tests/eval/test_validate.py: 15 SGD steps", "commit": "0" * 40})
    return {"path": path, "result": result, "metrics": metrics, "model": model, "transform": transform}


@pytest.fixture(scope="module")
def published(tmp_path_factory, cifar_ckpt):
    """A manifest folder with the checkpoint registered and shipped (copied in by each test)."""
    folder = tmp_path_factory.mktemp("manifest")
    manifest = folder / "weights_manifest.json"
    manifest.write_text(json.dumps({"schema_version": 1, "weights": []}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NORMZOO_MANIFEST", str(manifest))
        entry = zoo.hub.register(cifar_ckpt["path"], ship=True)
    assert entry["default"] and entry["shipped"] == "pretrained/resnet20_gn.cifar10.safetensors"
    assert entry["metrics"] == cifar_ckpt["metrics"]
    return folder


@pytest.fixture
def published_manifest(published, tmp_path, monkeypatch):
    """A copy of the published folder, its manifest in use through $NORMZOO_MANIFEST."""
    folder = shutil.copytree(published, tmp_path / "manifest")
    monkeypatch.setenv("NORMZOO_MANIFEST", str(folder / "weights_manifest.json"))
    return folder / "weights_manifest.json"


def test_split_names():
    assert split_name("cifar10", 1000) == "cifar10 test[:1000]"
    assert split_name("cifar100", 916) == "cifar100 test[:916]"
    assert split_name("imagenet-1k", 1300) == "imagenet-1k val (1300 images)"


def test_cifar_evaluate_is_independent_of_batching_and_memory_format(cifar_ckpt, data_root):
    test = load_cifar(data_root / "cifar10", "test")
    ref = cifar_ckpt["result"]
    assert ref.top1 > 10.0  # a few steps already beat chance on the real test images
    batches = cifar_batches(test.images, test.labels, cifar_ckpt["transform"], 97)
    again = evaluate(cifar_ckpt["model"], batches, channels_last=True)
    assert (again.correct1, again.correct5, again.num_images) == (ref.correct1, ref.correct5, 1000)


def test_cifar_cli_remeasures_the_recorded_figure_exactly(cifar_ckpt, published_manifest, data_root,
                                                          tmp_path):
    out_json = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "eval/cifar_val.py", "--model", "resnet20_gn", "--weights", "DEFAULT",
         "--data", str(data_root / "cifar10"), "--device", "cpu", "--no-progress",
         "--results-file", str(out_json), "--results-format", "json"],
        cwd=REPO, env=_env(published_manifest), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(out_json.read_text())
    assert tuple(row) == validate.COLUMNS
    recorded = cifar_ckpt["metrics"]
    assert row["model"] == "resnet20_gn" and row["weights"] == "resnet20_gn.cifar10"
    assert row["images"] == 1000 and row["split"] == "cifar10 test[:1000]" == recorded["split"]
    assert row["top1"] == round(recorded["top1"], 3) and row["top5"] == round(recorded["top5"], 3)
    assert row["recorded_top1"] == recorded["top1"] and row["diff"] == 0.0 and row["status"] == "ok"
    assert row["top1_err"] == round(100 - recorded["top1"], 3) and row["img_per_sec"] > 0
    assert row["param_count"] == round(sum(p.numel() for p in cifar_ckpt["model"].parameters()) / 1e6, 3)
    assert (row["img_size"], row["crop_pct"], row["interpolation"]) == (32, 1.0, "bilinear")
    assert "diff 0.0: ok" in proc.stdout and "error" not in proc.stderr and "REGRESSION" not in proc.stderr


def test_cifar_regression_tolerance_limit_and_checkpoint_figure(cifar_ckpt, published_manifest,
                                                                data_root,
                                                                 tmp_path, capsys):
    data = ["--data", data_root / "cifar10", "--device", "cpu"]
    entries = json.loads(published_manifest.read_text())
    recorded = entries["weights"][0]["metrics"]["top1"] + 1.0
    entries["weights"][0]["metrics"]["top1"] = recorded
    published_manifest.write_text(json.dumps(entries, indent=2))

    rc, out, err = cli(capsys, "cifar", "--model", "resnet20_gn", "--weights", "DEFAULT", *data)
    assert rc == 1
    assert (f"REGRESSION: resnet20_gn scored 1.00 points below its recorded {recorded}% "
            f"(tolerance 0.25)") in err
    (row,) = _table_rows(out, "resnet20_gn")
    assert dict(zip(validate.COLUMNS, row))["status"] == "REGRESSION"
    assert float(dict(zip(validate.COLUMNS, row))["diff"]) == -1.0

    rc, out, err = cli(capsys, "cifar", "--model", "resnet20_gn", "--weights", "DEFAULT", *data,
                       "--tolerance", "1.5")
    assert rc == 0 and "REGRESSION" not in err

    rc, out, err = cli(capsys, "cifar", "--model", "resnet20_gn", "--weights", "DEFAULT", *data,
                       "--limit", "500")
    assert rc == 0, err
    assert "not comparable (recorded on cifar10 test[:1000])" in out and "cifar10 test[:500]" in out

    # The bare file carries its own (unraised) figure.
    rc, out, err = cli(capsys, "cifar", "--checkpoint", cifar_ckpt["path"], *data,
                       "--results-file", tmp_path / "r.csv")
    assert rc == 0, err
    (row,) = csv.DictReader((tmp_path / "r.csv").open())
    assert tuple(row) == validate.COLUMNS
    assert float(row["recorded_top1"]) == cifar_ckpt["metrics"]["top1"] and float(row["diff"]) == 0.0
    assert row["weights"] == str(cifar_ckpt["path"]) and row["status"] == "ok"


def test_cifar_glob_evaluates_models_with_weights_and_counts_the_rest(cifar_ckpt,
                                                                      published_manifest, data_root,
                                                                      tmp_path, capsys):
    matching = [n for n in zoo.list_models("resnet20_*")
                if zoo.get_arch(zoo.parse_model_name(n)[0]).dataset == "cifar"]
    assert "resnet20_gn" in matching and len(matching) > 1
    rc, out, err = cli(capsys, "cifar", "--model", "resnet20_*", "--weights", "DEFAULT",
                       "--data", data_root / "cifar10", "--device", "cpu",
                       "--results-file", tmp_path / "glob.csv", "--results-format", "csv")
    assert rc == 0, err
    assert f"skipped {len(matching) - 1} matching model(s) without published weights" in out
    rows = list(csv.DictReader((tmp_path / "glob.csv").open()))
    assert [r["model"] for r in rows] == ["resnet20_gn"] and rows[0]["status"] == "ok"
    assert float(rows[0]["top1"]) == round(cifar_ckpt["metrics"]["top1"], 3)


# ---------------------------------------------------------------------------------------------
# 5. Bad input: exit 2 and one "error: ..." line


@pytest.fixture
def error_inputs(cifar_ckpt, small_r18, data_root, tmp_path):
    bad = tmp_path / "not_wnids" / "cats"
    bad.mkdir(parents=True)
    return {"gn": cifar_ckpt["path"], "r18": small_r18, "cifar10": data_root / "cifar10",
            "cifar100": data_root / "cifar100", "missing": tmp_path / "nowhere",
            "notwnids": bad.parent}


@pytest.mark.parametrize("dataset, argv, fragments", [
    ("cifar", "--checkpoint {gn} --data {missing}", ["nowhere holds no CIFAR data"]),
    ("imagenet", "--checkpoint {r18} --data {missing} -j 0", ["nowhere does not exist"]),
    ("imagenet", "--checkpoint {r18} --data {notwnids} -j 0", ["folders cats are not ImageNet wnids"]),
    ("cifar", "--model resnet21_gn --weights DEFAULT --data {cifar10}", ["unknown model 'resnet21_gn'"]),
    ("cifar", "--model 'resnet21_*' --weights DEFAULT --data {cifar10}", ["no cifar model matches"]),
    ("cifar", "--model resnet20_bn --checkpoint {gn} --data {cifar10}",
     ["holds weights of resnet20_gn, not resnet20_bn"]),
    ("cifar", "--checkpoint {gn} --data {cifar100}", ["has 10 classes", "has 100"]),
    ("imagenet", "--model resnet18_bn --weights DEFAULT --data {missing}",
     ["resnet18_bn has no published weights", "--checkpoint"]),
    ("imagenet", "--model 'resnet18_*' --weights DEFAULT --data {missing}", ["--checkpoint"]),
    ("cifar", "--model resnet18_bn --weights DEFAULT --data {cifar10}",
     ["resnet18_bn is not a CIFAR model; use eval/imagenet_val.py"]),
    ("imagenet", "--model resnet20_gn --weights DEFAULT --data {missing}",
     ["resnet20_gn is not an ImageNet model; use eval/cifar_val.py"]),
    ("cifar", "--model resnet20_gn --data {cifar10}", ["pass --weights DEFAULT", "--checkpoint"]),
], ids=["cifar-missing-data", "imagenet-missing-data", "not-wnids", "unknown-model", "unknown-glob",
        "other-architecture", "class-count", "imagenet-no-weights", "imagenet-glob-no-weights",
        "imagenet-model-in-cifar", "cifar-model-in-imagenet", "no-weights-flag"])
def test_bad_input_is_one_error_line(dataset, argv, fragments, error_inputs, published_manifest,
                                     capsys):
    args = [a.strip("'").format(**error_inputs) for a in argv.split()]
    rc, out, err = cli(capsys, dataset, *args)
    assert rc == 2
    _one_error_line(err, *fragments)


def test_bad_input_in_a_real_process_has_no_traceback(cifar_ckpt, published_manifest, data_root):
    proc = subprocess.run(
        [sys.executable, "eval/cifar_val.py", "--model", "resnet20_bn", "--checkpoint",
         str(cifar_ckpt["path"]), "--data", str(data_root / "cifar100")],
        cwd=REPO, env=_env(published_manifest), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    _one_error_line(proc.stderr, "holds weights of resnet20_gn, not resnet20_bn")


# ---------------------------------------------------------------------------------------------
# 6. Distributed: shards without padding, counts summed once


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 101])
def test_shards_cover_every_index_once(monkeypatch, world, n):
    assert shard(n) == range(n)  # not distributed: everything
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: world)
    parts = []
    for rank in range(world):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        parts.append(list(shard(n)))
    assert sorted(i for part in parts for i in part) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    # cifar_batches hands each rank exactly its shard, with the matching labels
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: world - 1)
    labels = torch.arange(n) * 10
    got = [(imgs, lab, idx) for imgs, lab, idx in cifar_batches(labels.clone(), labels, lambda x: x, 3)]
    assert [i for _, _, idx in got for i in idx.tolist()] == parts[-1]
    assert all(torch.equal(lab, idx * 10) and torch.equal(imgs, idx * 10) for imgs, lab, idx in got)


def test_torchrun_two_processes_count_each_image_once(cifar_ckpt, published_manifest, data_root,
                                                      tmp_path, capsys):
    data = ["--checkpoint", str(cifar_ckpt["path"]), "--data", str(data_root / "cifar10"),
            "--limit", "101", "--device", "cpu", "--no-progress", "--results-format", "json"]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "eval/cifar_val.py", *data, "--results-file", str(tmp_path / "dist.json")],
        cwd=REPO, env=_env(published_manifest), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (dist,) = json.loads((tmp_path / "dist.json").read_text())
    assert len(_table_rows(proc.stdout, "resnet20_gn")) == 1  # printed by rank 0 only

    rc, out, err = cli(capsys, "cifar", *data, "--results-file", tmp_path / "one.json")
    assert rc == 0, err
    (single,) = json.loads((tmp_path / "one.json").read_text())
    assert dist["images"] == single["images"] == 101
    assert (dist["top1"], dist["top5"]) == (single["top1"], single["top5"])
    assert dist["split"] == single["split"] == "cifar10 test[:101]"
    assert dist["status"] == single["status"] == "not comparable (recorded on cifar10 test[:1000])"
    test = load_cifar(data_root / "cifar10", "test")
    direct = evaluate(cifar_ckpt["model"], cifar_batches(test.images[:101], test.labels[:101],
                                                         cifar_ckpt["transform"], 256))
    assert round(direct.top1, 3) == single["top1"]


@pytest.mark.parametrize("limit", ["0", "-5"])
def test_limit_must_be_positive(limit, capsys):
    with pytest.raises(SystemExit) as exit_info:
        validate.main(["--model", "resnet20_gn", "--weights", "DEFAULT", "--data", "x",
                       "--limit", limit], dataset="cifar")
    assert exit_info.value.code == 2
    assert "must be a positive number of images" in capsys.readouterr().err


def test_check_manifest_remeasures_every_entry_and_fails_on_a_raised_figure(published_manifest,
                                                                            data_root):
    def run():
        return subprocess.run([sys.executable, "eval/check_manifest.py", "--cifar-data",
                               str(data_root / "cifar10")], cwd=REPO, env=_env(published_manifest),
                              capture_output=True, text=True, timeout=300)

    good = run()
    assert good.returncode == 0, good.stdout + good.stderr
    assert "resnet20_gn.cifar10: top-1" in good.stdout and "diff 0.0): ok" in good.stdout
    assert "0 file problem(s), 0 accuracy problem(s)" in good.stdout

    data = json.loads(published_manifest.read_text())
    data["weights"][0]["metrics"]["top1"] += 1.0
    published_manifest.write_text(json.dumps(data))
    raised = run()
    assert raised.returncode == 1 and "REGRESSION" in raised.stdout
