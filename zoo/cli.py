"""Helpers shared by NormZoo's command-line tools: argparse types, CIFAR's ``--download``, the
machine a run measured on, this process's rank, an exception's message as one line, and the
commit the code is at."""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

from .data import CIFAR_DOWNLOADS, download_cifar
from .evaluate import rank_and_world

__all__ = ["positive_int", "add_download_argument", "downloaded_cifar", "cpu_name", "machine", "rank", "first_line", "one_line", "git_commit"]


def positive_int(message: str = "must be a positive whole number, got {text!r}", *,
                 digits_only: bool = True) -> Callable[[str], int]:
    """An argparse ``type``: a whole number of at least 1. Anything else is refused with
    ``message``, formatted with ``text`` (the argument as given) and, for a number below 1,
    ``value``. With ``digits_only=False`` the text is read by ``int()`` (signs and spaces
    allowed), and text that is no number gets argparse's own "invalid _positive value"."""
    def _positive(text: str) -> int:
        if digits_only and not text.isdecimal():
            raise argparse.ArgumentTypeError(message.format(text=text))
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(message.format(text=text, value=value))
        return value

    return _positive


def add_download_argument(parser: argparse.ArgumentParser) -> None:
    """``--download [cifar10|cifar100]`` (downloaded_cifar)."""
    parser.add_argument(
        "--download", nargs="?", const="cifar10", choices=CIFAR_DOWNLOADS,
        help="fetch CIFAR-10 (or the dataset named) with torchvision's download, about 170 MB, "
             "into --data or, without --data, into the cache folder $NORMZOO_CACHE/data/<dataset> "
             "(default ~/.cache/normzoo/data/<dataset>); a folder that holds it already is used "
             "as it is")


def downloaded_cifar(data: Optional[str], dataset: str, cache: Path) -> str:
    """``--download``'s folder: ``data``, or without it ``cache``/data/``dataset``, where rank
    0 fetches the dataset (zoo.data.download_cifar) while the other processes wait."""
    root = Path(data) if data else cache / "data" / dataset
    if rank() == 0:
        download_cifar(root, dataset)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return str(root)


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> str:
    """What a measurement on ``device`` ran on: the GPU's name, or the CPU's with torch's
    thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{cpu_name()}, {threads} thread{'s' if threads > 1 else ''}"


def run_header(script: str, argv: Optional[list[str]] = None,
               device: torch.device = torch.device("cpu")) -> dict:
    """What a measurement records of its own run: the command (``script`` with ``argv``, else
    this process's arguments), the commit, the machine, the date and torch's version."""
    return {"command": " ".join(["python", script, *(argv if argv is not None else sys.argv[1:])]),
            "commit": git_commit(), "machine": machine(device),
            "date": datetime.date.today().isoformat(), "torch": torch.__version__}


def rank() -> int:
    """This process's rank under ``torch.distributed``; 0 when not distributed."""
    return rank_and_world()[0]


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message, blank lines and spaces around it removed ('' for
    an empty message)."""
    return (str(e).strip().splitlines() or [""])[0]


def one_line(e: BaseException, limit: Optional[int] = None) -> str:
    """``e``'s whole message on one line (every run of spaces and newlines one space), cut
    at ``limit`` characters."""
    return " ".join(str(e).split())[:limit]


def git_commit() -> str:
    """This checkout's commit, recorded in checkpoints as what produced them (``-dirty``
    with uncommitted changes), or "unknown" (an installed package, no git)."""
    repo = Path(__file__).resolve().parents[1]
    if not (repo / ".git").exists():  # an installed package: not ours to ask git about
        return "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain",
                                "--untracked-files=no"], cwd=repo, capture_output=True,
                               text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
