"""A run's folder and its resume record.

The folder holds recipe.json (how the run started, and each resume), log.jsonl (a row per
epoch) and checkpoint.pt (every epoch); recipe.json and checkpoint.pt are written whole or not
at all, so a full disk (DiskFullError) leaves them as they were. A new run needs a folder without
another run's files; a ``--resume`` must find this run's checkpoint and repeat the settings
the run must keep (``RESUME_HELP``), each change refused by name with both values.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shlex
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

from zoo.cli import one_line, rank
from zoo.weights import WeightsError

from .cli import parser
from .recipes import Recipe

# A folder holding any of these holds a run: a new run there would mix with it.
RUN_FILES = ("recipe.json", "log.jsonl", "checkpoint.pt", "model.safetensors")
CHECKPOINT_KEYS = {"epoch", "step", "model", "optimizer", "scheduler", "scaler", "torch_rng",
                   "python_rng", "recipe", "model_name"}
# The recipe's fields that have a flag; the others change only with the preset or the norm.
RECIPE_FLAGS = {"name": "--recipe", "epochs": "--epochs", "batch_size": "--batch-size",
                "lr": "--lr", "warmup_epochs": "--warmup-epochs", "amp": "--amp",
                "zero_init_residual": "--zero-init-residual"}


class DiskFullError(Exception):
    """A run file that could not be written for lack of space; the file is as it was."""

    def __init__(self, path: Path):
        super().__init__(f"the disk is full: could not write {path} (it is as it was, and no "
                         f"partial copy is left); free some space, then run again (--resume "
                         f"continues from the last checkpoint.pt)")


def read_jsonl(path: Path) -> list[dict]:
    """The readable lines of a JSON-lines file, or none if it does not exist. A cut-off line
    (a stop mid-write, from an older version or another writer) is skipped with a warning
    rather than failing every later read."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines() if path.is_file() else [], 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            print(f"warning: {path}:{number} is not JSON (cut off by a stop?); skipped",
                  file=sys.stderr)
    return rows


def _log_text(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def must_match(args, recipe: Recipe, data: str, num_classes: int,
               start_weights: Optional[str], norm_kwargs: dict) -> dict:
    """What a --resume must repeat (RESUME_HELP), by flag; the checkpoint records it.
    ``norm_kwargs``: the norm's arguments that --norm-kwargs sets to other than the defaults."""
    return {"--model": args.model, "recipe": _settings(dataclasses.asdict(recipe)),
            "--norm-kwargs": norm_kwargs,
            "--seed": args.seed, "--limit-train": args.limit_train, "data": data,
            "--num-classes": num_classes, "--weights/--checkpoint": start_weights,
            "--freeze-backbone": args.freeze_backbone, "--freeze-norms": args.freeze_norms,
            "--channels-last": args.channels_last}


class RunFolder:
    """The run folder ``path``: its files, and the checks a new run and a resume must pass."""

    def __init__(self, path: Path):
        self.path = path
        self.checkpoint = path / "checkpoint.pt"

    def record(self) -> dict:
        """The run's recipe.json ({} where there is none)."""
        path = self.path / "recipe.json"
        if not path.is_file():
            return {}
        try:
            record = json.loads(path.read_text())
            if isinstance(record, dict):
                return record
            problem = "not a JSON object"
        except ValueError as e:  # not JSON, or not text
            problem = e
        raise ValueError(f"{path} is not the run's record ({problem}); restore it to resume the "
                         f"run, or start again with another --out")

    def open(self, resume: bool) -> None:
        """Make the run folder and check it before any work: it must be writable, and a new
        run's folder must hold no other run's files."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            found = [f for f in RUN_FILES if (self.path / f).exists()]
            with tempfile.TemporaryFile(dir=self.path):  # checkpoints are written here, then renamed
                pass
        except OSError as e:
            raise ValueError(f"cannot write the run folder {self.path} ({e.strerror or e}); pick "
                             f"another --out, or make it writable") from None
        if found and not resume:
            resumable = "checkpoint.pt" in found and "model.safetensors" not in found
            raise FileExistsError(
                f"{self.path} already holds a run; "
                + ("pass --resume to continue it, or pick another --out" if resumable else
                   "pick another --out (it has nothing to resume: finished, or stopped before its "
                   "first checkpoint)") + f". It has {', '.join(found)}")
        if torch.distributed.is_initialized():
            torch.distributed.barrier()  # every rank has looked before rank 0 writes
        if rank() == 0 and not resume:
            # created now, exclusively: a new run appends only to its own log
            (self.path / "log.jsonl").touch(exist_ok=False)

    def write_record(self, record: dict, resume: bool) -> None:
        """recipe.json. The run's command stays the one that started it (a --resume command
        does not reproduce a run from scratch); the resumes are listed beside it."""
        first = self.record() if resume else {}
        if first:
            record["resumed"] = first.get("resumed", []) + [
                {"command": record["command"], "commit": record["commit"]}]
            record["command"], record["commit"] = first["command"], first["commit"]
        text = json.dumps(record, indent=2) + "\n"
        self._replace(self.path / "recipe.json", lambda tmp: tmp.write_text(text))

    def append_log(self, row: dict) -> None:
        """One epoch's row at the end of log.jsonl, written with the rest (``_replace``): a
        full disk or a kill leaves the log as it was, never a cut-off line."""
        self._write_log(self.log() + [row])

    def keep_log_through(self, epoch: int) -> None:
        """log.jsonl without the rows after ``epoch``, the checkpoint a resume continues from
        (a stop between an epoch's row and its checkpoint): those epochs train again."""
        path = self.path / "log.jsonl"
        kept = [r for r in self.log() if r.get("epoch", 0) <= epoch]
        if not path.is_file() or path.read_text() != _log_text(kept):
            self._write_log(kept)

    def log(self) -> list[dict]:
        """log.jsonl's rows, one per epoch (``read_jsonl``)."""
        return read_jsonl(self.path / "log.jsonl")

    def _write_log(self, rows: list[dict]) -> None:
        text = _log_text(rows)
        self._replace(self.path / "log.jsonl", lambda tmp: tmp.write_text(text))

    def save_checkpoint(self, state: dict) -> None:
        """checkpoint.pt, atomically (``_replace``)."""
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # through Python's file: a full disk is ENOSPC, not torch's RuntimeError
                torch.save(state, f)

        self._replace(self.checkpoint, write)

    @staticmethod
    def _replace(path: Path, write: Callable[[Path], None]) -> None:
        """``path`` written whole or not at all: ``write`` fills .NAME.tmp beside it, which is
        then renamed over it. On any failure the temp file goes and ``path`` stays as it was;
        a full disk is DiskFullError."""
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            write(tmp)
            os.replace(tmp, path)
        except BaseException as e:  # Ctrl-C too: no partial file stays behind
            tmp.unlink(missing_ok=True)
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise DiskFullError(path) from None
            raise

    def read_checkpoint(self, must_match: dict) -> dict:
        """The checkpoint a --resume continues from, once it is known to be this run's: a
        training checkpoint whose recorded settings are ``must_match``."""
        path = self.checkpoint
        if not path.is_file():
            started = any((self.path / f).exists() for f in RUN_FILES)
            fix = (f"the run in {self.path} cannot be continued: start again with another --out"
                   if started else "start without --resume")
            raise FileNotFoundError(f"--resume: {path} does not exist; {fix}")
        try:
            with warnings.catch_warnings():  # a foreign pickle's protocol: refused below anyway
                warnings.filterwarnings("ignore", "Detected pickle protocol")
                state = torch.load(path, map_location="cpu", weights_only=True)  # no full unpickle
        except Exception as e:  # a truncated or garbled file: torch raises many kinds
            raise self.cannot_resume(e) from None
        if not (isinstance(state, dict) and CHECKPOINT_KEYS <= state.keys()):
            raise self.cannot_resume("not a NormZoo training checkpoint")
        self._check_same_run(state, must_match)
        return state

    def cannot_resume(self, problem) -> WeightsError:
        """The error for a checkpoint that cannot be continued: ``problem`` says why."""
        if isinstance(problem, Exception):  # its first sentence: torch's go on about other things
            first = one_line(problem).split(". ")[0][:200]
            problem = f"{type(problem).__name__}: {first}" if first else type(problem).__name__
        return WeightsError(
            f"cannot resume from {self.checkpoint}: it is truncated, corrupt or not this run's "
            f"checkpoint ({problem}); start the run again with another --out")

    def _check_same_run(self, state: dict, must_match: dict) -> None:
        """Refuse a --resume that changes what the run must keep (RESUME_HELP), naming each
        change with both values."""
        # runs from before --norm-kwargs trained their norm's defaults
        recorded = {"--norm-kwargs": {},
                    **_plain(state.get("must_match") or self._recorded_before_must_match(state))}
        now = _plain(must_match)
        changes = []
        for key, was in recorded.items():
            if key == "recipe":
                changes += [_change(RECIPE_FLAGS.get(f, f"the recipe's {f}"), was.get(f),
                                    now["recipe"].get(f))
                            for f in {**was, **now["recipe"]} if was.get(f) != now["recipe"].get(f)]
            elif was != now.get(key):
                changes.append(_change(key, was, now.get(key)))
        if changes:
            raise ValueError(f"{self.path} holds a run with other settings, which --resume must "
                             f"keep: {'; '.join(changes)}. Resume with the run's own flags, or "
                             f"start a new run with another --out")

    def _recorded_before_must_match(self, state: dict) -> dict:
        """What a run started before checkpoints recorded must_match can be checked against:
        the checkpoint's model and recipe, and recipe.json's seed, memory format and command."""
        recorded = {"--model": state["model_name"], "recipe": _settings(state["recipe"])}
        first = self.record()
        if "command" in first:
            tokens = shlex.split(first["command"])
            started = parser().parse_known_args(tokens[tokens.index("-m") + 2:])[0]
            recorded.update({"--limit-train": started.limit_train,
                             "--freeze-backbone": started.freeze_backbone})
        for flag, key in ("--seed", "seed"), ("--channels-last", "channels_last"):
            if key in first:
                recorded[flag] = first[key]
        return recorded


def _settings(recipe: dict) -> dict:
    """A recipe's fields but its source, a description that may be reworded."""
    return {k: v for k, v in recipe.items() if k != "source"}


def _plain(record: dict) -> dict:
    """As JSON holds it (tuples become lists), so records compare whatever stored them."""
    return json.loads(json.dumps(record))


def _change(flag: str, was, now) -> str:
    def shown(value):
        return "none" if value is None else value

    return f"{flag} {shown(was)} in the run, {shown(now)} here"
