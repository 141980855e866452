"""Progress and provenance: what a long run says while it runs, and where weights came from."""

import logging
import sys

import zoo
import zoo.progress


def test_piped_progress_prints_a_line_every_interval_and_a_last_one(capsys, monkeypatch):
    clock = iter([0.0, 10.0, 61.0, 70.0, 100.0, 131.0]).__next__  # start, 4 updates, close
    monkeypatch.setattr(zoo.progress.time, "monotonic", clock)
    with zoo.progress.progress_bar(1000, "validation") as bar:  # stderr is no terminal here
        for _ in range(4):
            bar.update(250)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["validation: 500/1000 img (50%), 8 img/s",  # at 61 s
                     "validation: 1000/1000 img (100%), 8 img/s"]  # at the end, 131 s


def test_a_piped_download_prints_sizes(capsys, monkeypatch):
    clock = iter([0.0, 61.0, 70.0, 80.0]).__next__  # start, 2 updates, close
    monkeypatch.setattr(zoo.progress.time, "monotonic", clock)
    with zoo.progress.progress_bar(4 << 20, "w (mirror)", unit="B", unit_scale=True,
                                   leave=True) as bar:
        bar.update(3 << 19)  # 1.5 MiB
        bar.update(5 << 19)
    assert capsys.readouterr().err.splitlines() == [
        "w (mirror): 1.50MB/4.00MB (38%), 25.2kB/s",  # at 61 s
        "w (mirror): 4.00MB/4.00MB (100%), 51.2kB/s"]  # at the end, 80 s


def test_a_download_on_a_terminal_gets_a_tqdm_bar_in_bytes(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with zoo.progress.progress_bar(4 << 20, "w (mirror)", unit="B", unit_scale=True,
                                   leave=True) as bar:
        assert (bar.unit, bar.unit_scale, bar.unit_divisor, bar.leave) == ("B", True, 1024, True)
        bar.update(4 << 20)
    last = capsys.readouterr().err.split("\r")[-1]  # tqdm redraws the line; its last state
    assert last.startswith("w (mirror): 100%") and "| 4.00M/4.00M [" in last and "B/s]" in last


def test_a_short_piped_loop_and_a_disabled_one_say_nothing(capsys):
    with zoo.progress.progress_bar(10, "test") as bar:
        bar.update(10)
    with zoo.progress.progress_bar(10, "test", enabled=False, every_s=0) as bar:
        bar.update(5)
        bar.update(5)
    assert capsys.readouterr().err == ""


def test_loading_says_where_the_weights_came_from(caplog):
    with caplog.at_level(logging.INFO, logger="zoo"):
        zoo.create_model("resnet20_bn", weights="cifar10")
    assert [r.getMessage() for r in caplog.records if "sha256 verified" in r.getMessage()] == [
        f"resnet20_bn.cifar10: the copy shipped with NormZoo, "
        f"{zoo.get_weight('resnet20_bn.cifar10').fetch()} (sha256 verified)"]
