"""A PostgreSQL catalog against an SQLite one, on one machine.

The server is the one ``scripts/postgres start`` makes (Debian's PostgreSQL
on a loopback port, fsync off like the tests' server: say so beside the
figures), or ``--url`` (its maintenance database; each measurement makes a
database of its own). Every imgmatch command is a fresh process.

- ingest: the ad-sized JPEGs of ``scripts/bench ingest``, default signals,
  linking on: SQLite and PostgreSQL with 1 worker, and 2 workers, and, on
  PostgreSQL only, two ingest processes of 1 worker each writing at once (half
  the files each: what two crawler nodes do), which must add every image once.
  Then, in one process, how long each image's write holds the catalog's write
  lock, which all writers share: the bound on many nodes' ingest together.
- a catalog of ``--hashes`` PDQ hashes (a partner's list with planted near
  copies, ``import-hashes``): the import, ``imgmatch stats`` (wall time of the
  command), and a query by hash in a warm process (index search, then the
  catalog's reads: signals, images and sightings of each match), p50 and p99.
- following: ``imgmatch serve`` on the catalog while another process ingests
  one new image at a time (with indexes of its own, as another node): the
  seconds from that ingest's end until the service's query finds the image.

Modes are interleaved over ``--repeat`` rounds; the fastest run counts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import emit, ensure_ad_sized, ensure_dev_corpus  # noqa: E402
from bench_scale import planted, write_list  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PY = [sys.executable, "-m", "imgmatch.cli"]


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    """The maintenance database's URL of a server: ``url``, or one started here."""
    if url:
        yield url
        return
    script = str(ROOT / "scripts" / "postgres")
    env = os.environ | {"IMGMATCH_PG_DIR": "/tmp/imgmatch-bench-postgres",
                        "IMGMATCH_PG_PORT": os.environ.get("IMGMATCH_PG_PORT", "54330")}
    started = subprocess.run([script, "start"], env=env, capture_output=True, text=True)
    if started.returncode:
        sys.exit(f"no PostgreSQL server: {started.stderr}")
    try:
        yield started.stdout.strip().split("=", 1)[1]
    finally:
        subprocess.run([script, "stop"], env=env, capture_output=True)


class Places:
    """Fresh catalogs of either engine: SQLite files under ``work``, and
    databases on the server (each dropped when the next of its name is made)."""

    def __init__(self, admin: str, work: Path) -> None:
        import psycopg

        self.admin = psycopg.connect(admin, autocommit=True)
        self.base = admin.rsplit("/", 1)[0]
        self.work = work

    def fresh(self, engine: str, name: str) -> str:
        if engine == "sqlite":
            for leftover in self.work.glob(f"{name}.db*"):
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            return str(self.work / f"{name}.db")
        self.admin.execute(f"DROP DATABASE IF EXISTS bench_{name} WITH (FORCE)")
        self.admin.execute(f"CREATE DATABASE bench_{name}")
        shutil.rmtree(self.work / f"indexes-{name}", ignore_errors=True)
        return f"{self.base}/bench_{name}"

    def size(self, engine: str, name: str) -> int:
        """The catalog's bytes: the file with its log, or the database less
        an empty database's (PostgreSQL's own system tables)."""
        if engine == "sqlite":
            return sum(p.stat().st_size for p in self.work.glob(f"{name}.db*") if p.is_file())
        self.admin.execute("DROP DATABASE IF EXISTS bench_empty")
        self.admin.execute("CREATE DATABASE bench_empty")
        self.admin.execute("CHECKPOINT")
        empty, full = (self.admin.execute("SELECT pg_database_size(%s)", (db,)).fetchone()[0]
                       for db in ("bench_empty", f"bench_{name}"))
        return int(full - empty)

    def env(self, name: str) -> dict[str, str]:
        """A node's environment: its own index folder."""
        return os.environ | {"IMGMATCH_INDEX_DIR": str(self.work / f"indexes-{name}")}


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        sys.exit(f"{' '.join(cmd)} failed: {done.stderr[-2000:]}")
    return seconds, json.loads(done.stdout)


def bench_ingest(files: list[Path], places: Places, repeat: int) -> dict[str, float]:
    listing = places.work / "files.jsonl"
    listing.write_text("".join(json.dumps({"path": str(p)}) + "\n" for p in files))
    halves = []
    for n, part in enumerate((files[::2], files[1::2])):
        halves.append(places.work / f"half{n}.jsonl")
        halves[-1].write_text("".join(json.dumps({"path": str(p)}) + "\n" for p in part))
    best: dict[str, float] = {}
    for round_no in range(repeat):
        for engine in ("sqlite", "postgresql"):
            for workers in (1, 2):
                db = places.fresh(engine, "ingest")
                seconds, out = timed(PY + ["--db", db, "ingest", "--quiet", "--json", "--jsonl",
                                           str(listing), "--workers", str(workers)],
                                     places.env("ingest"))
                assert out["images_added"] == len(files), out
                mode = f"{engine}, 1 process, {workers} worker{'s' * (workers > 1)}"
                best[mode] = min(best.get(mode, float("inf")), seconds)
                print(f"  round {round_no + 1}: {mode}: {seconds:.2f} s", file=sys.stderr)
        db = places.fresh("postgresql", "ingest")
        started = time.perf_counter()
        runs = [subprocess.Popen(PY + ["--db", db, "ingest", "--quiet", "--json", "--jsonl",
                                       str(half), "--workers", "1"], stdout=subprocess.PIPE,
                                 text=True, env=places.env(f"node{n}"))
                for n, half in enumerate(halves)]
        outs = [json.loads(run.communicate()[0]) for run in runs]
        seconds = time.perf_counter() - started
        assert sum(o["images_added"] for o in outs) == len(files), outs
        mode = "postgresql, 2 processes at once, 1 worker each"
        best[mode] = min(best.get(mode, float("inf")), seconds)
        print(f"  round {round_no + 1}: {mode}: {seconds:.2f} s", file=sys.stderr)
    return best


def bench_catalog(n: int, places: Places, repeat: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(n)
    base = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    _, near, _ = planted(rng, base, 200, 0, 20)
    listing = places.work / "hashes.txt"
    write_list(listing, np.concatenate([base, near]))
    out: dict[str, dict[str, float]] = {}
    for engine in ("sqlite", "postgresql"):
        db = places.fresh(engine, "hashes")
        env = places.env("hashes")
        seconds, _ = timed(PY + ["--db", db, "import-hashes", str(listing), "--platform",
                                 "partner", "--json"], env)
        stats = min(timed(PY + ["--db", db, "stats", "--json"], env)[0] for _ in range(repeat))
        size = places.size(engine, "hashes")
        probe = subprocess.run(
            [sys.executable, "-c", _QUERY_PROBE, db, near.tobytes().hex()],
            capture_output=True, text=True, env=env)
        if probe.returncode:
            sys.exit(probe.stderr)
        out[engine] = {"import_s": seconds, "stats_s": stats,
                       "bytes_per_hash": size / (n + 200)} | json.loads(probe.stdout)
        print(f"  {engine}: {out[engine]}", file=sys.stderr)
    return out


def bench_lock(files: list[Path], places: Places) -> dict[str, float]:
    """Milliseconds per image that an ingest (2 workers) holds the catalog's
    write lock: what every writer of a shared catalog waits for in turn, so
    1000 / it bounds the images/s of all nodes together."""
    out = {}
    listing = places.work / "files.jsonl"
    for link in ("link", "no-link"):
        for engine in ("sqlite", "postgresql"):
            db = places.fresh(engine, "lock")
            probe = subprocess.run([sys.executable, "-c", _LOCK_PROBE, db, str(listing), link],
                                   capture_output=True, text=True, env=places.env("lock"))
            if probe.returncode:
                sys.exit(probe.stderr)
            mode = f"{engine}, {'linking' if link == 'link' else '--no-link'}"
            out[mode] = json.loads(probe.stdout)["held_ms_per_image"]
            print(f"  write lock {mode}: {out[mode]:.3f} ms per image", file=sys.stderr)
    return out


#: In a process of its own: an ingest with the write transactions timed.
_LOCK_PROBE = """
import contextlib, json, sys, time
import imgmatch
from imgmatch.catalog import Catalog
from imgmatch.sources import iter_jsonl_stream
held = [0.0]
real = Catalog._transaction
@contextlib.contextmanager
def timed(self, conn=None):
    started = time.perf_counter()
    with real(self, conn):
        yield
    held[0] += time.perf_counter() - started
Catalog._transaction = timed
with imgmatch.Collection.open(sys.argv[1]) as c:
    summary = c.ingest(iter_jsonl_stream(open(sys.argv[2])), workers=2,
                       link=sys.argv[3] == "link")
print(json.dumps({"held_ms_per_image": 1000 * held[0] / summary.images_added}))
"""


#: In a process of its own: query each planted copy by hash, warm (indexes loaded).
_QUERY_PROBE = """
import json, sys, time
import imgmatch
db, hexes = sys.argv[1], sys.argv[2]
queries = [hexes[i:i + 64] for i in range(0, len(hexes), 64)]
with imgmatch.Collection.open(db, readonly=True) as c:
    c.load_indexes()
    for q in queries[:20]:
        c.query_hash(q, top_k=10)
    times, found = [], 0
    for q in queries:
        t = time.perf_counter()
        matches = c.query_hash(q, top_k=10)
        times.append(time.perf_counter() - t)
        found += bool(matches)
    times.sort()
    print(json.dumps({"query_p50_ms": 1000 * times[len(times) // 2],
                      "query_p99_ms": 1000 * times[int(len(times) * 0.99)],
                      "found": found, "queries": len(queries)}))
"""


def bench_follow(files: list[Path], places: Places, trials: int) -> dict[str, list[float]]:
    """Seconds from a CLI ingest's end to the service finding its image."""
    out: dict[str, list[float]] = {}
    seed, probes = files[:20], files[20:20 + trials]
    for engine in ("sqlite", "postgresql"):
        db = places.fresh(engine, "follow")
        service_env, other_env = places.env("follow"), places.env("other")
        subprocess.run(PY + ["--db", db, "ingest", "--quiet", *map(str, seed)], check=True,
                       env=service_env)
        key = subprocess.run(PY + ["--db", db, "keys", "add", "bench", "--scope", "read"],
                             check=True, capture_output=True, text=True,
                             env=service_env).stdout.strip().splitlines()[-1]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = (places.work / f"serve-{engine}.log").open("w")
        service = subprocess.Popen(PY + ["--db", db, "serve", "--port", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT, env=service_env)
        try:
            _wait_healthy(port)
            delays = []
            for probe in probes:
                subprocess.run(PY + ["--db", db, "ingest", "--quiet", str(probe)], check=True,
                               env=other_env)
                ended = time.perf_counter()
                while not _found(port, key, probe.read_bytes()):
                    if time.perf_counter() - ended > 30:
                        sys.exit(f"{engine}: {probe.name} not found within 30 s")
                    time.sleep(0.02)
                delays.append(time.perf_counter() - ended)
            out[engine] = delays
            print(f"  follow {engine}: {[round(d, 2) for d in delays]}", file=sys.stderr)
        finally:
            service.terminate()
            service.wait(timeout=30)
            log.close()
    return out


def _wait_healthy(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit("the service did not start")


def _found(port: int, key: str, image: bytes) -> bool:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"q.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + image + \
        f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/query?min_score=0.99", data=body, method="POST",
        headers={"Authorization": f"Bearer {key}",
                 "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return bool(json.loads(response.read())["matches"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=600,
                        help="ad-sized JPEGs to ingest (of the 600 'scripts/bench ingest' uses)")
    parser.add_argument("--hashes", type=float, default=200_000,
                        help="PDQ hashes in the catalog that stats and queries run on")
    parser.add_argument("--follow", type=int, default=10,
                        help="images added one at a time beside the service")
    parser.add_argument("--repeat", type=int, default=2, help="runs per mode (fastest counts)")
    parser.add_argument("--url", help="a PostgreSQL server's maintenance database "
                                      "(default: start one with scripts/postgres)")
    parser.add_argument("--md", type=Path, help="also write the Markdown tables here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    files = sorted(ensure_ad_sized(ensure_dev_corpus()).glob("ad_*.jpg"))[:args.count]
    work = Path(tempfile.mkdtemp(prefix="imgmatch-bench-pg-work-"))
    try:
        with server(args.url) as admin:
            places = Places(admin, work)
            ingest = bench_ingest(files, places, args.repeat)
            lock = bench_lock(files, places)
            catalog = bench_catalog(int(args.hashes), places, args.repeat)
            follow = bench_follow(files, places, args.follow)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = len(files)
    sqlite_one = ingest["sqlite, 1 process, 1 worker"]
    lines = [f"Ingest, {n} ad-sized JPEGs, default signals, linking on:", "",
             "| catalog and writers | seconds | images/s | / SQLite with 1 worker |",
             "|---|---|---|---|"]
    for mode, seconds in ingest.items():
        lines.append(f"| {mode} | {seconds:.2f} | {n / seconds:.1f} | "
                     f"{sqlite_one / seconds:.2f} |")
    lines += ["", "The catalog's write lock, held per image by an ingest with 2 workers "
                  "(its write transactions, with linking or without):", "",
              "| catalog | ms per image | so at most, all writers together (images/s) |",
              "|---|---|---|"]
    for engine, ms in lock.items():
        lines.append(f"| {engine} | {ms:.3f} | {1000 / ms:,.0f} |")
    h = int(args.hashes) + 200
    lines += ["", f"A catalog of {h:,} PDQ hashes (a partner's list):", "",
              "| | SQLite | PostgreSQL | PostgreSQL / SQLite |", "|---|---|---|---|"]
    for key, label in (("import_s", "import-hashes (s)"), ("stats_s", "`imgmatch stats` (s)"),
                       ("query_p50_ms", "query by hash, warm, p50 (ms)"),
                       ("query_p99_ms", "query by hash, warm, p99 (ms)")):
        a, b = catalog["sqlite"][key], catalog["postgresql"][key]
        lines.append(f"| {label} | {a:.3f} | {b:.3f} | {b / a:.2f} |")
    a, b = catalog["sqlite"]["bytes_per_hash"], catalog["postgresql"]["bytes_per_hash"]
    lines.append(f"| catalog on disk per hash (B; no indexes) | {a:,.0f} | {b:,.0f} | {b / a:.2f} |")
    found = {e: f"{catalog[e]['found']}/{catalog[e]['queries']}" for e in catalog}
    lines.append(f"| planted copies found | {found['sqlite']} | {found['postgresql']} | |")
    lines += ["", f"A running service finding an image another process ingested "
                  f"({args.follow} images, one at a time; seconds after that ingest ended):",
              "", "| catalog | median | slowest |", "|---|---|---|"]
    for engine, delays in follow.items():
        lines.append(f"| {engine} | {statistics.median(delays):.2f} | {max(delays):.2f} |")
    return emit(lines, args.md)


if __name__ == "__main__":
    sys.exit(main())
