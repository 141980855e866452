"""Grids of training runs: each cell is one ``python -m train`` run folder.

The batch sweep (eval/batch_sweep.py) and the claims (eval/claims.py) are grids of cells
(method x seed x setting). This module runs them: a stopped grid continues where it stopped
(a cell with a checkpoint resumes, a finished one is read back), a finished cell trained
with other settings is refused rather than reused, a cell whose loss became NaN is a result
("diverged"), and the grid's wall time is summed over its invocations.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]

# What a finished cell must share with the cell asked for (the trainer's own --resume rule,
# applied to finished runs too); paths and speed flags may differ.
SETTINGS = ("model", "norm_kwargs", "seed", "limit_train", "num_classes", "weights", "checkpoint",
            "freeze_backbone", "freeze_norms", "recalibrate_norms")


class GridError(Exception):
    """A grid that cannot go on: the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Cell:
    name: str                # its run folder under the grid's runs folder
    flags: tuple[str, ...]   # ``python -m train`` flags, without --data, --out and --resume

    def value(self, flag: str) -> Optional[str]:
        """The value given to ``flag`` (None if absent)."""
        return self.flags[self.flags.index(flag) + 1] if flag in self.flags else None


def settings(flags: Iterable[str]) -> dict:
    """What a run with these trainer flags trains: the model and its norm's arguments, the
    recipe after the method's adjustments and the overrides, the seed and the starting weights."""
    from train.cli import norm_kwargs, parser
    from train.recipes import for_model, get_recipe, override
    from zoo import parse_model_name

    args = parser().parse_known_args([*flags, "--data", "-", "--out", "-"])[0]
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                 "warmup_epochs": args.warmup_epochs, "amp": args.amp,
                 "zero_init_residual": args.zero_init_residual}
    recipe, _ = for_model(get_recipe(args.recipe), parse_model_name(args.model)[1],
                          keep=tuple(k for k, v in overrides.items() if v is not None))
    recipe = override(recipe, **overrides)
    return {**{k: getattr(args, k) for k in SETTINGS}, "recipe": dataclasses.asdict(recipe),
            "norm_kwargs": norm_kwargs(args.model, args.norm_kwargs)}


def recorded_flags(command: str) -> list[str]:
    """The trainer flags of a recorded ``python -m train ...`` command (recipe.json's, or a
    published checkpoint's recipe.command)."""
    tokens = shlex.split(command)
    return tokens[tokens.index("-m") + 2:] if "-m" in tokens else []


def differences(was: dict, now: dict) -> list[str]:
    """The settings that differ, each with both values."""
    out = [f"{k} {was[k]!r} there, {now[k]!r} here" for k in SETTINGS if was[k] != now[k]]
    out += [f"the recipe's {k} {was['recipe'].get(k)!r} there, {v!r} here"
            for k, v in now["recipe"].items() if was["recipe"].get(k) != v]
    return out


def check_same_run(folder: Path, cell: Cell) -> None:
    """Refuse a run folder that holds a run with other settings than the cell's."""
    record = folder / "recipe.json"
    if not record.is_file():
        return
    try:
        command = json.loads(record.read_text())["command"]
    except (ValueError, KeyError):
        raise GridError(f"{record} is unreadable or has no command: move the folder away to "
                        f"train cell {cell.name} again") from None
    changed = differences(settings(recorded_flags(command)), settings(cell.flags))
    if changed:
        raise GridError(f"{folder} holds a run with other settings than cell {cell.name}: "
                        f"{'; '.join(changed)}. Give the grid another --runs folder, or move "
                        f"the old cell away to retrain it")


DIVERGED = re.compile(r"loss is \S+ at epoch (\d+), step (\d+): the run diverged")


def train_cell(cell: Cell, runs: Path, data: str, threads: int) -> dict:
    """Train the cell, or continue it, or read it back when it is done. Returns its folder,
    its epoch rows (log.jsonl; a diverged run's, those before it diverged) and a status:
    "ok", or "diverged" with the epoch and step (the same seed diverges again, so a diverged
    cell is not retrained)."""
    from train.run_folder import RunFolder

    folder = runs / cell.name
    diverged = folder / "diverged.json"
    if diverged.is_file():
        return {"folder": folder, "rows": RunFolder(folder).log(), **json.loads(diverged.read_text())}
    check_same_run(folder, cell)
    if not (folder / "model.safetensors").is_file():
        with cell_lock(runs, cell):
            if not (folder / "model.safetensors").is_file():  # or another process finished it
                result = _train(cell, folder, data, threads)
                if result is not None:
                    diverged.write_text(json.dumps(result) + "\n")
                    return {"folder": folder, "rows": RunFolder(folder).log(), **result}
    rows = RunFolder(folder).log()
    if not rows:
        raise GridError(f"{folder} has model.safetensors but no epoch in log.jsonl: move the "
                        f"folder away to train cell {cell.name} again")
    return {"folder": folder, "rows": rows, "status": "ok"}


@contextlib.contextmanager
def cell_lock(runs: Path, cell: Cell) -> Iterator[None]:
    """One process at a time trains a cell (a second one would resume the same checkpoint, or
    delete a folder the first has not checkpointed yet): a lock file beside its folder."""
    from filelock import FileLock, Timeout

    runs.mkdir(parents=True, exist_ok=True)
    lock = FileLock(runs / f"{cell.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise GridError(f"cell {cell.name} is being trained by another process (it holds "
                        f"{lock.lock_file}): let it finish, or stop it, then run again") from None
    try:
        yield
    finally:
        lock.release()


def _train(cell: Cell, folder: Path, data: str, threads: int) -> Optional[dict]:
    """Run the cell's trainer to the end, from its checkpoint if it has one; None, or where
    it diverged."""
    resume = (folder / "checkpoint.pt").is_file()
    if folder.exists() and not resume:
        shutil.rmtree(folder)  # stopped before its first checkpoint: nothing to keep
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "train", *cell.flags, "--data", data, "--out", str(folder),
               *(["--resume"] if resume else [])]
    with open(folder / "train.log", "a") as log:
        done = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if not done.returncode:
        return None
    last = (folder / "train.log").read_text().strip().splitlines()[-1:]
    match = DIVERGED.search(last[0] if last else "")
    if not match:
        raise GridError(f"cell {cell.name} failed (exit {done.returncode}); its log: "
                        f"{folder / 'train.log'}")
    return {"status": "diverged", "epoch": int(match[1]), "step": int(match[2])}


def run_grid(cells: list, work: Callable, jobs: int, runs: Path,
             describe: Callable[[dict], str]) -> tuple[list[dict], list[dict]]:
    """Run ``work(cell)`` for every cell, ``jobs`` at a time, printing each result with
    ``describe``. Returns the rows and the grid's invocations so far, each with its wall
    seconds (runs/invocations.jsonl)."""
    from train.run_folder import read_jsonl

    runs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows: list[dict] = []
    try:
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            futures = [pool.submit(work, cell) for cell in cells]
            for future in concurrent.futures.as_completed(futures):
                try:
                    rows.append(future.result())
                except (GridError, subprocess.CalledProcessError):
                    pool.shutdown(cancel_futures=True)
                    raise
                print(f"[{len(rows)}/{len(cells)}] {describe(rows[-1])}", flush=True)
    finally:  # the wall time, summed over invocations (a stopped grid continues)
        log = runs / "invocations.jsonl"
        cut_off = log.is_file() and not log.read_bytes().endswith(b"\n")
        with open(log, "a") as f:
            f.write("\n" * cut_off + json.dumps({"seconds": round(time.perf_counter() - start, 1),
                                "cells_done": len(rows)}) + "\n")
    return rows, read_jsonl(runs / "invocations.jsonl")


def refuse_overwrite(settings_path: Path, changed: Callable[[dict], list[str]],
                     force: bool, folder_flag: str = "--results",
                     holds: str = "results of other settings") -> None:
    """Refuse to replace results whose recorded settings (``settings_path``) differ from
    this run's, as ``changed(recorded)`` names them (a trial run into the default results
    folder would overwrite the committed results), unless ``force``."""
    if force or not settings_path.is_file():
        return
    try:
        recorded = json.loads(settings_path.read_text())
    except ValueError:
        return  # unreadable: nothing worth keeping
    names = changed(recorded)
    if names:
        raise GridError(f"{settings_path} holds {holds} ({', '.join(names)}); "
                        f"write these to another {folder_flag} folder, or pass --force to replace "
                        f"them")


def refuse_losing_rows(results_path: Path, settings: dict, row_key: tuple[str, ...],
                       measured: Iterable[tuple], force: bool) -> None:
    """refuse_overwrite for an eval script's ``{"header", "rows"}`` file (``--out``): this run
    would lose what the file holds if its header differs in one of ``settings`` or it has rows
    whose ``row_key`` values this run does not measure (a ``--models`` subset)."""
    def changed(recorded: dict) -> list[str]:
        header = recorded.get("header", {})
        names = [f"{k} {header[k]}" for k, v in settings.items() if k in header and header[k] != v]
        dropped = {tuple(r.get(k) for k in row_key) for r in recorded.get("rows", [])} - set(measured)
        return names + [" ".join(f"{k} {v}" if i else str(v) for i, (k, v) in enumerate(zip(row_key, d)))
                        for d in sorted(dropped, key=str)]
    refuse_overwrite(results_path, changed, force, "--out", "results this run would not reproduce")
