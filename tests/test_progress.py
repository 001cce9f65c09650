"""The ingest's progress display: a bar with rate and ETA on a terminal, silent otherwise."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imgmatch.cli_progress import Progress

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_count_rate_and_once_the_total_is_known_a_bar_and_eta():
    out = Terminal()
    progress = Progress(out)
    progress.update(10, 8, 1, force=True)
    assert re.search(r"10 files\s+[\d,]+/s\s+8 new\s+1 failed", out.getvalue())
    assert "ETA" not in out.getvalue()
    progress.total = 40
    progress.update(20, 15, 1, force=True)
    last = out.getvalue().split("\r")[-1]
    assert re.match(r"\[#{12}\.{12}\]  50%  20 files", last)
    assert re.search(r"ETA \d+:\d\d", last)


def test_updates_are_drawn_at_most_five_times_a_second_unless_forced():
    out = Terminal()
    progress = Progress(out)
    progress.update(1, 1, 0)
    progress.update(2, 2, 0)
    assert out.getvalue().count("\r") == 1
    progress.update(3, 3, 0, force=True)
    assert out.getvalue().count("\r") == 2


def test_a_count_that_falls_short_shows_no_bar():
    out = Terminal()
    progress = Progress(out)
    progress.total = 5
    progress.update(9, 9, 0, force=True)
    assert "ETA" not in out.getvalue() and "[" not in out.getvalue()


def test_nothing_is_drawn_when_the_stream_is_not_a_terminal():
    out = io.StringIO()
    progress = Progress(out)
    progress.count_in_background(lambda: range(3))
    progress.update(3, 3, 0, force=True)
    progress.finish()
    assert out.getvalue() == ""


def _ingest_on_a_terminal(db: Path, *extra: str) -> tuple[str, str]:
    """Run ``imgmatch ingest`` with standard error on a pseudo-terminal:
    (what the terminal showed, standard output)."""
    try:
        master, slave = os.openpty()
    except OSError as exc:  # a sandbox without /dev/pts
        pytest.skip(f"no pseudo-terminal here: {exc}")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imgmatch.cli", "--db", str(db), "ingest",
             str(FIXTURES / "originals"), "--workers", "1", *extra],
            stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal's other end closed
                break
            if not chunk:
                break
            shown += chunk
        stdout = proc.stdout.read()
        proc.stdout.close()
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
    return shown.decode(), stdout.decode()


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs pseudo-terminals")
def test_the_cli_draws_progress_on_a_terminal_and_ends_on_the_whole_run(tmp_path):
    shown, stdout = _ingest_on_a_terminal(tmp_path / "c.db")
    lines = [line for line in shown.split("\r") if line.strip()]
    assert lines, "nothing was drawn on the terminal"
    assert re.match(r"\[#{24}\] 100%  6 files\s+[\d,]+/s\s+6 new\s+0 failed\s+ETA 0:00",
                    lines[-1].strip())
    assert "images added:     6" in stdout


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs pseudo-terminals")
def test_the_cli_is_quiet_on_a_terminal_when_asked(tmp_path):
    shown, stdout = _ingest_on_a_terminal(tmp_path / "c.db", "--quiet")
    assert "files" not in shown and "\r" not in shown
    assert stdout == ""  # quiet: no summary either; the exit code says how it went


def test_the_cli_draws_nothing_when_standard_error_is_not_a_terminal(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "imgmatch.cli", "--db", str(tmp_path / "c.db"), "ingest",
         str(FIXTURES / "originals"), "--workers", "1"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "ETA" not in proc.stderr
    assert "images added:     6" in proc.stdout
