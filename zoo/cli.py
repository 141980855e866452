"""Helpers shared by NormZoo's command-line tools."""

from __future__ import annotations

import subprocess
from pathlib import Path


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
