"""Progress and provenance: what a long run says while it runs, and where weights came from."""

import logging

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
