"""Progress of long loops (training epochs, validation, evaluation, mirror downloads): a
tqdm bar on a terminal; piped to a log, a line every ``every_s`` seconds (and a last one at
the end, if any was printed), so a long run never goes silent and a short one adds no noise.
Downloads through huggingface_hub draw its own bars, switched with :func:`hub_progress_bars`."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Optional

__all__ = ["progress_bar", "hub_progress_bars"]


def progress_bar(total: Optional[int], desc: str, *, unit: str = "img", unit_scale: bool = False,
                 initial: int = 0, leave: bool = False, enabled: bool = True,
                 every_s: float = 60.0):
    """An object with tqdm's ``update(n)`` and ``close()`` (and a context manager).

    ``unit_scale`` shows amounts as sizes in steps of 1024, as tqdm writes them (``1.50M``),
    on the bar and in the log lines alike (with ``unit="B"`` a line reads ``desc:
    1.50MB/4.00MB (38%), 1.20MB/s``). ``leave`` keeps the finished bar on the terminal.
    ``enabled=False`` shows nothing."""
    if enabled and sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, unit_divisor=1024,
                    initial=initial, leave=leave)
    return _LogLines(total, desc, unit, unit_scale, initial, every_s, enabled)


@contextlib.contextmanager
def hub_progress_bars(enabled: bool):
    """huggingface_hub's own download bars (``hf_hub_download`` draws them) for the ``with``
    block: off with ``enabled=False``, and back on after it unless they were off before; left
    as they are with ``enabled=True`` (so ``HF_HUB_DISABLE_PROGRESS_BARS`` is honoured)."""
    from huggingface_hub.utils import (are_progress_bars_disabled, disable_progress_bars,
                                       enable_progress_bars)

    was_disabled = are_progress_bars_disabled()
    if not enabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


class _LogLines:
    """tqdm's interface for a log: ``desc: n/total unit (p%), r unit/s`` on stderr (with
    ``unit_scale``, ``desc: 1.50MB/4.00MB (38%), 1.20MB/s``)."""

    def __init__(self, total, desc, unit, unit_scale, initial, every_s, enabled):
        self.total, self.desc, self.unit, self.unit_scale, self.every_s, self.enabled = (
            total, desc, unit, unit_scale, every_s, enabled)
        self.n = self.said = initial
        self.start = self.last = time.monotonic()
        self.initial = initial

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self._say(now)

    def close(self) -> None:
        if self.said != self.initial and self.n != self.said:
            self._say(time.monotonic())

    def _say(self, now: float) -> None:
        self.said, self.last = self.n, now
        if not self.enabled:
            return
        rate = (self.n - self.initial) / max(now - self.start, 1e-9)
        if self.unit_scale:  # "1.50MB/4.00MB", "1.20MB/s": tqdm's sizes, the bar's numbers
            from tqdm import tqdm

            def size(x: float) -> str:
                return tqdm.format_sizeof(x, divisor=1024) + self.unit

            done = size(self.n) + (f"/{size(self.total)}" if self.total else "")
            speed = size(rate)
        else:  # "500/1000 img", "8 img/s"
            done = f"{self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"
            speed = f"{rate:.0f} {self.unit}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        print(f"{self.desc}: {done}{share}, {speed}/s", file=sys.stderr, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
