"""Dask against local processes, on one machine: ingest and the link pass.

The cluster is a ``LocalCluster`` of 2 worker processes with 1 thread each
(on loopback, started once by this script); local is ``--workers 2``. Each
measurement is a fresh ``imgmatch`` process, so start-up, connecting to the
scheduler and (on Dask) forking each worker thread's capped process count.

- ingest: the ad-sized JPEGs ``scripts/bench ingest`` uses (0.3 to 2
  megapixels, built from ../shared/bench's dev set if missing), the default
  signals, linking on (the client's work, the same either way). Given as
  paths (the Dask workers read them: shared storage) and, separately, as
  base64 bytes in JSON lines (shipped to the workers with the tasks).
- link: N random PDQ hashes with planted near-duplicates (as ``scripts/bench
  scale`` plants them), loaded once with ``import-hashes --no-link``; each
  mode links its own copy of that catalog, and the pairs must agree.

Every mode runs ``--repeat`` times, interleaved, and the fastest run counts.
The overhead per image is (Dask seconds - local seconds) / images; beside it,
the same with the start-up difference (an ingest of nothing: importing Dask,
connecting, checking the workers) taken out.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import emit, ensure_ad_sized, ensure_dev_corpus  # noqa: E402
from bench_scale import planted, write_list  # noqa: E402


def run(cmd: list[str]) -> tuple[float, dict]:
    """(wall seconds, the --json summary) of one imgmatch command."""
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        sys.exit(f"{' '.join(cmd)} failed: {done.stderr[-2000:]}")
    return seconds, json.loads(done.stdout)


def clear(work: Path, name: str) -> Path:
    for leftover in work.glob(f"{name}*"):
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    return work / name


def bench_ingest(files: list[Path], address: str, work: Path, repeat: int) -> list[dict]:
    paths = work / "paths.jsonl"
    paths.write_text("".join(json.dumps({"path": str(p)}) + "\n" for p in files))
    data = work / "bytes.jsonl"
    data.write_text("".join(json.dumps({"data_b64": base64.b64encode(p.read_bytes()).decode(),
                                        "url": f"https://bench.example/{p.name}"}) + "\n"
                            for p in files))
    nothing = work / "nothing.jsonl"
    nothing.write_text("")
    py = [sys.executable, "-m", "imgmatch.cli"]
    modes = {(feed, where): ["ingest", "--quiet", "--json", "--jsonl", str(listing)]
             + (["--workers", "2"] if where == "local" else ["--dask", address])
             for feed, listing in (("paths", paths), ("bytes", data), ("nothing", nothing))
             for where in ("local", "dask")}
    best: dict[tuple[str, str], float] = {}
    for round_no in range(repeat):
        for mode, args in modes.items():
            db = clear(work, "ingest.db")
            seconds, summary = run(py + ["--db", str(db)] + args)
            assert summary["images_added"] == (0 if mode[0] == "nothing" else len(files))
            best[mode] = min(best.get(mode, float("inf")), seconds)
            print(f"  round {round_no + 1}: ingest {mode}: {seconds:.2f} s", file=sys.stderr)
    rows = [{"what": "start-up: an ingest of nothing", "n": 0,
             "local_s": best[("nothing", "local")], "dask_s": best[("nothing", "dask")]}]
    for feed in ("paths", "bytes"):
        local, dask = best[(feed, "local")], best[(feed, "dask")]
        rows.append({"what": f"ingest, {len(files)} ad-sized JPEGs as {feed}",
                     "n": len(files), "local_s": local, "dask_s": dask,
                     "startup_s": rows[0]["dask_s"] - rows[0]["local_s"]})
    return rows


def bench_link(n: int, address: str, work: Path, repeat: int) -> dict:
    rng = np.random.default_rng(n)
    base = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    _, near, _ = planted(rng, base, 200, 0, 31)
    _, far, _ = planted(rng, base, 50, 32, 40)
    listing = work / "hashes.txt"
    write_list(listing, np.concatenate([base, near, far]))
    built = clear(work, "built.db")
    py = [sys.executable, "-m", "imgmatch.cli"]
    subprocess.run(py + ["--db", str(built), "import-hashes", str(listing), "--no-link",
                         "--json"], check=True, capture_output=True)
    modes = {"local": ["--workers", "2"], "dask": ["--dask", address]}
    best: dict[str, float] = {}
    found: dict[str, dict] = {}
    for round_no in range(repeat):
        for mode, args in modes.items():
            db = clear(work, "link.db")
            shutil.copy(built, db)
            seconds, result = run(py + ["--db", str(db), "link", "--json"] + args)
            best[mode] = min(best.get(mode, float("inf")), seconds)
            found[mode] = result["pdq"]
            print(f"  round {round_no + 1}: link {mode}: {seconds:.2f} s", file=sys.stderr)
    if found["local"] != found["dask"]:
        sys.exit(f"the link passes disagree: {found}")
    return {"what": f"link, {n:,} PDQ hashes ({found['local']['pairs']} pairs)",
            "n": found["local"]["searched"], "local_s": best["local"], "dask_s": best["dask"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=600,
                        help="ad-sized JPEGs to ingest (of the 600 'scripts/bench ingest' uses)")
    parser.add_argument("--hashes", type=float, default=200_000, help="PDQ hashes to link")
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode (fastest counts)")
    parser.add_argument("--md", type=Path, help="also write the Markdown table here")
    args = parser.parse_args()
    try:
        from distributed import LocalCluster
    except ImportError:
        sys.exit("Dask is not installed: pip install 'imgmatch[dask]'")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    files = sorted(ensure_ad_sized(ensure_dev_corpus()).glob("ad_*.jpg"))[:args.count]
    work = Path(tempfile.mkdtemp(prefix="imgmatch-bench-dask-"))
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=":0") as cluster:
            address = cluster.scheduler_address
            rows = bench_ingest(files, address, work, args.repeat)
            rows.append(bench_link(int(args.hashes), address, work, args.repeat))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = ["| workload | local, 2 processes (s) | Dask, 2-worker LocalCluster (s) | "
             "local images/s | Dask images/s | Dask overhead per image (ms) | "
             "... start-up aside (ms) | Dask / local |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = r["n"]
        extra = r["dask_s"] - r["local_s"]
        lines.append(
            f"| {r['what']} | {r['local_s']:.2f} | {r['dask_s']:.2f} | "
            + (f"{n / r['local_s']:,.0f} | {n / r['dask_s']:,.0f} | {1000 * extra / n:.3f} | "
               if n else "- | - | - | ")
            + (f"{1000 * (extra - r['startup_s']) / n:.3f} | " if "startup_s" in r else "- | ")
            + f"{r['dask_s'] / r['local_s']:.2f} |")
    return emit(lines, args.md)


if __name__ == "__main__":
    sys.exit(main())
