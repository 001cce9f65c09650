"""Forked workers that leave when their parent is killed.

A forked worker holds copies of its parent's pipe ends, so a parent killed
with SIGKILL never reads as end-of-file to it: it would wait for ever, with
whatever it holds in memory. Each worker watches its parent's pid instead.
The pid is taken by the parent before the fork: a parent killed while a
worker starts has already been replaced by the reaper when the worker could
ask ``os.getppid``.
"""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent(parent: int, every: float = 0.5) -> None:
    """End this process within ``every`` seconds of process ``parent`` going."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
