"""Progress of long loops (training epochs, validation, evaluation): a tqdm bar on a
terminal; piped to a log, a line every ``every_s`` seconds (and a last one at the end, if
any was printed), so a long run never goes silent and a short one adds no noise."""

from __future__ import annotations

import sys
import time
from typing import Optional

__all__ = ["progress_bar"]


def progress_bar(total: Optional[int], desc: str, *, unit: str = "img", initial: int = 0,
                 enabled: bool = True, every_s: float = 60.0):
    """An object with tqdm's ``update(n)`` and ``close()`` (and a context manager)."""
    if enabled and sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=False)
    return _LogLines(total, desc, unit, initial, every_s, enabled)


class _LogLines:
    """tqdm's interface for a log: ``desc: n/total unit (p%), r unit/s`` on stderr."""

    def __init__(self, total, desc, unit, initial, every_s, enabled):
        self.total, self.desc, self.unit, self.every_s, self.enabled = (
            total, desc, unit, every_s, enabled)
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
        of = f"/{self.total}" if self.total else ""
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        print(f"{self.desc}: {self.n}{of} {self.unit}{share}, {rate:.0f} {self.unit}/s",
              file=sys.stderr, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
