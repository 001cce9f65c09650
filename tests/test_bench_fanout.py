"""The fan-out benchmark, tiny: two real shard services and the merge's check.

What sharding rests on is checked here, not timed: a query's merged answer
from shards equals one collection's answer over the same hashes (a score
depends on the pair alone, not on what else a collection holds), and the
benchmark ends every process it starts. ``scripts/bench fanout`` times it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[1]


def _running_with(text: str) -> list[str]:
    """Command lines of this machine's processes that mention ``text`` (Linux)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in line:
            found.append(line)
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_fanout_merge_equals_one_collection_and_nothing_is_left_running(tmp_path):
    work = tmp_path / "work"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_fanout.py"), "--shards", "2",
         "--per-shard", "1000", "--queries", "12", "--keep", str(work)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("| 2 |"))
    assert row.endswith("| 12 of 12 |")  # merged answers = the single collection's
    assert "its answers equal to the in-process ones: 12 of 12" in done.stdout
    assert _running_with(str(work)) == []
