"""The CLI's one-line progress display for long ingests: count, rate, ETA.

Private to the command line (:mod:`imgmatch.cli`); the library never prints.

Drawn on standard error only when it is a terminal, at most five times a
second, and once more at the end with the final counts; the total is counted
in a background thread (walking a tree is fast next to hashing it) so the
bar and ETA appear once it is known.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.started = time.monotonic()
        self.total: int | None = None
        self._last = 0.0

    def count_in_background(self, make_items: Callable[[], Iterable[object]]) -> None:
        """Count what ``make_items()`` yields in a daemon thread, for the ETA."""
        if not self.enabled:
            return

        def run() -> None:
            n = 0
            try:
                for _ in make_items():
                    n += 1
            except Exception:
                return
            self.total = n

        threading.Thread(target=run, daemon=True).start()

    def update(self, done: int, added: int, failed: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.2:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        line = f"{done:,} files  {rate:,.0f}/s  {added:,} new  {failed:,} failed"
        if self.total and done <= self.total:  # more done than counted: the count was off
            share = done / self.total
            filled = int(share * 24)
            eta = (self.total - done) / rate if rate > 0 else 0
            line = (f"[{'#' * filled}{'.' * (24 - filled)}] {share:4.0%}  " + line
                    + f"  ETA {_clock(eta)}")
        self.stream.write("\r" + line[:150].ljust(100))
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
