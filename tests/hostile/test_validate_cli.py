"""eval/validate.py, zoo.evaluate.ImageNetVal and eval/check_manifest.py given careless input
(issue 17: D9; issue 29: H14): one ``error: ...`` line and exit status 2 before evaluating, and the
results printed even where writing them fails."""

import json
import shutil
import struct
import zlib

import pytest
import torch
from PIL import Image

import zoo
from zoo.data import IMAGENET_MEAN, IMAGENET_STD
from zoo.evaluate import ImageNetVal

import check_manifest  # eval/ (pyproject's pythonpath)
import validate

from conftest import one_error_line

# One torch thread (the tiny models gain nothing from more); one process, even under torchrun.
pytestmark = pytest.mark.usefixtures("one_thread", "not_distributed")


# D9: eval/validate.py, zoo.evaluate.ImageNetVal, eval/check_manifest.py


def _validate(capsys, dataset, *argv):
    capsys.readouterr()
    rc = validate.main([str(a) for a in argv] + ["--no-progress"], dataset=dataset)
    out, err = capsys.readouterr()
    return rc, out, err


def _cifar_args(checkpoint, data_root):
    return ["--checkpoint", checkpoint, "--data", data_root / "cifar10", "--limit", "8",
            "--device", "cpu"]


@pytest.mark.parametrize("where", ["missing folder", "a file as folder", "a folder"])
def test_an_unwritable_results_file_is_refused_before_evaluating(where, checkpoint, data_root,
                                                                 tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("")
    results = {"missing folder": tmp_path / "nowhere" / "r.csv",
               "a file as folder": tmp_path / "file" / "r.csv", "a folder": tmp_path}[where]
    evaluated = []
    monkeypatch.setattr(validate, "run_one", lambda *a: evaluated.append(a))
    rc, out, err = _validate(capsys, "cifar", *_cifar_args(checkpoint, data_root),
                             "--results-file", results)
    assert rc == 2 and evaluated == []
    one_error_line(err, f"--results-file {results}")


def test_results_are_printed_when_writing_them_still_fails(checkpoint, data_root, tmp_path,
                                                           monkeypatch, capsys):
    def disk_full(rows, path, fmt):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(validate, "write_results", disk_full)
    rc, out, err = _validate(capsys, "cifar", *_cifar_args(checkpoint, data_root),
                             "--results-file", tmp_path / "r.csv")
    assert rc == 2
    assert "| resnet20_gn | " in out and "| cifar10 test[:8] |" in out  # the results, not lost
    one_error_line(err, f"could not write {tmp_path / 'r.csv'}", "No space left on device",
                    "the table above")


@pytest.mark.parametrize("flags, message", [
    (["-b", "0"], "must be a positive number of images, got 0"),
    (["--device", "nonsense"], "'nonsense' is not a torch device"),
    (["--interpolation", "cubicle"], "invalid choice: 'cubicle'"),
])
def test_validate_refuses_bad_flags_before_running(flags, message, checkpoint, data_root, capsys):
    with pytest.raises(SystemExit) as exit_info:
        validate.main([str(a) for a in _cifar_args(checkpoint, data_root)] + flags, dataset="cifar")
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def _flat_folder(tmp_path, ground_truth: str):
    """A flat folder of two (never decoded) images and a ground-truth file."""
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in (1, 2):
        (folder / f"ILSVRC2012_val_0000000{i}.JPEG").write_bytes(b"")
    (tmp_path / "gt.txt").write_text(ground_truth)
    return folder, tmp_path / "gt.txt"


@pytest.mark.parametrize("line", [
    "ILSVRC2012_val_00000002.JPEG",          # no label
    "ILSVRC2012_val_00000002.JPEG cat",      # not an integer
    "ILSVRC2012_val_00000002.JPEG 5000",     # no such class
    "ILSVRC2012_val_00000002.JPEG -1",       # evaluate's "unreadable" marker
    "ILSVRC2012_val_00000002.JPEG 3 4",      # two labels
])
def test_bad_ground_truth_lines_are_refused_by_line(line, tmp_path):
    folder, gt = _flat_folder(tmp_path, f"ILSVRC2012_val_00000001.JPEG 65\n\n{line}\n")
    with pytest.raises(ValueError, match=f"{gt} line 3: '{line}' is not a file name and a class "
                                         f"index 0-999"):
        ImageNetVal(folder, None, 64, ground_truth=gt)


def test_bad_ground_truth_through_the_cli_is_one_line(checkpoint, tmp_path, capsys):
    folder, gt = _flat_folder(tmp_path, "ILSVRC2012_val_00000001.JPEG 65\n"
                                        "ILSVRC2012_val_00000002.JPEG 1000\n")
    rc, out, err = _validate(capsys, "imagenet", "--checkpoint", checkpoint, "--data", folder,
                             "--ground-truth", gt, "-j", "0")
    assert rc == 2
    one_error_line(err, f"{gt} line 2: 'ILSVRC2012_val_00000002.JPEG 1000'")

    rc, out, err = _validate(capsys, "imagenet", "--checkpoint", checkpoint, "--data", folder,
                             "--ground-truth", tmp_path / "missing.txt", "-j", "0")
    assert rc == 2
    one_error_line(err, f"the ground-truth file {tmp_path / 'missing.txt'} does not exist")


def test_an_empty_folder_or_a_file_is_called_what_it_is(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is empty: expected ImageNet"):
        ImageNetVal(tmp_path, None, 64)
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} holds no images"):
        ImageNetVal(tmp_path, None, 64, ground_truth=tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="notes.txt is a file, not a folder"):
        ImageNetVal(tmp_path / "notes.txt", None, 64)


def _one_class_val(data_root, tmp_path):
    """An ImageNet val tree of one class holding one real image, and a small 1,000-class
    checkpoint to score it with (the CLI takes any checkpoint's classes)."""
    folder = tmp_path / "val" / "n01440764"
    folder.mkdir(parents=True)
    shutil.copy(data_root / "imagenet" / "val" / "n01440764" / "ILSVRC2012_val_00023559.JPEG",
                folder / "a.JPEG")
    torch.manual_seed(0)
    small = {"input_size": [3, 32, 32], "resize": 36, "crop": 32, "interpolation": "bilinear",
             "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    checkpoint = zoo.save_checkpoint(zoo.create_model("resnet20_gn", num_classes=1000),
                                     tmp_path / "r20-1k.safetensors", tag="t",
                                     dataset="imagenet-1k", preprocessing=small)
    return folder, checkpoint


def _one_image_scored(capsys, folder, checkpoint, tmp_path, unreadable):
    """Validate ``folder``'s tree: ``unreadable`` reported by path, the real image scored."""
    rc, out, err = _validate(capsys, "imagenet", "--checkpoint", checkpoint, "--data",
                             folder.parent, "-j", "0", "--device", "cpu", "--results-file",
                             tmp_path / "r.json", "--results-format", "json")
    assert rc == 0, err
    assert f"1 unreadable image(s), not scored: {unreadable}" in out
    (row,) = json.loads((tmp_path / "r.json").read_text())
    assert (row["images"], row["split"]) == (1, "imagenet-1k val (1 images)")


def test_the_split_counts_only_the_images_scored(data_root, tmp_path, capsys):
    folder, checkpoint = _one_class_val(data_root, tmp_path)
    (folder / "b.JPEG").write_bytes(b"\xff\xd8\xff not a jpeg")
    _one_image_scored(capsys, folder, checkpoint, tmp_path, folder / "b.JPEG")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# H14: a decompression bomb is an unreadable image

def test_a_decompression_bomb_is_reported_as_unreadable(data_root, tmp_path, capsys):
    """A 13400x13400 1-bit PNG (a few KB of zeros) is over twice PIL's pixel limit, so PIL
    refuses to decode it: reported by path and not scored, as any unreadable image."""
    folder, checkpoint = _one_class_val(data_root, tmp_path)
    side = 13400
    rows = zlib.compress(bytes(1 + side // 8) * side, 9)  # each row: filter 0, then 8 pixels a byte
    bomb = folder / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b""))
    assert bomb.stat().st_size < 100_000 and side * side > 2 * Image.MAX_IMAGE_PIXELS
    _one_image_scored(capsys, folder, checkpoint, tmp_path, bomb)

    rc, out, err = _validate(capsys, "imagenet", "--checkpoint", checkpoint, "--data",
                             folder.parent, "-j", "0", "--device", "cpu", "--strict")
    assert rc == 2
    one_error_line(err, f"unreadable image {bomb}: ", "decompression bomb")


def test_check_manifest_names_a_missing_data_folder_once(registered_manifest, tmp_path, capsys):
    nowhere = tmp_path / "nowhere"
    capsys.readouterr()
    assert check_manifest.main(["--cifar-data", str(nowhere)]) == 2
    out, err = capsys.readouterr()
    one_error_line(err, f"{nowhere} holds no CIFAR data")
    assert "accuracy problem" not in out
