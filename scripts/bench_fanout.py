"""Fan-out over shards: one PDQ query sent to N ``imgmatch serve`` processes at once.

What a sharded deployment adds to a query's latency, measured with real
service processes on this machine. Each shard is ``imgmatch serve`` over a
collection of its own: ``--per-shard`` random PDQ hashes loaded with
``import-hashes --no-link``, as ``scripts/bench scale`` loads its lists.
Near-duplicates are planted across shards as ``scripts/bench scale`` plants
them: each of ``--queries`` groups has its original in one shard and a copy
at 1 to 31 bits from it in every other shard (a quarter of the groups one
more, at 32 to 40 bits: outside PDQ's threshold), so every query finds
something in every shard and the merge has something to get right. A
query is its group's original with 0 to 8 bits flipped.

A small client (one thread per shard, one keep-alive HTTP connection to
each, on 127.0.0.1, an API key per shard made by ``imgmatch keys add``)
sends a query (``POST /v1/query`` with a ``pdq`` field: the hash and its 8
rotations and mirrors, as ``imgmatch query --pdq``) to every shard at once
and merges their answers by score into one top-k. For each N of
``--shards``, after one untimed pass of every query (warm shards, open
connections), each query is timed:

- alone: sent to each of the N shards by itself, one after the other;
- fan-out: sent to the N shards at once, the answers merged;
- the transport floor: ``GET /healthz`` (no key, no index, no catalog),
  to one shard and fanned out the same way.

Checked for every query: the merged top-k equals the answer of one
collection holding every shard's hashes (built beside them; for N below the
largest, its answer restricted to the first N shards' hashes, which is
exact because no answer fills the top-k; the script fails otherwise). That
collection is also served by itself, and queried in-process beside shard 0.

The N shard processes share this machine's cores with each other and with
the client: the latency the fan-out adds here is an upper bound for shards
on machines of their own. Every process the script starts is ended when it
stops, on error and interrupt too.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import emit  # noqa: E402

IMGMATCH = [sys.executable, "-m", "imgmatch.cli"]
HOST = "127.0.0.1"  # loopback only: nothing here listens beyond this machine


# ------------------------------------------------------------------ processes
class Processes:
    """Every process the benchmark starts, each the leader of a session of its
    own, so that it and its children (a service's decoding workers) are ended
    together, by its id, whatever way the benchmark stops."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log: Path) -> subprocess.Popen:
        with log.open("ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 10.0) -> None:
        """SIGTERM to the process's group (a service shuts down cleanly), then
        SIGKILL to whatever of the group is left after ``grace`` seconds."""
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # children that outlived their leader
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(log: Path, chars: int = 2000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def run_all(procs: Processes, jobs: list[tuple[list[str], Path]], at_once: int) -> float:
    """Run commands ``at_once`` at a time (the imports of the collections);
    wall seconds. A failure stops the others (the caller's cleanup)."""
    started = time.perf_counter()
    waiting = list(jobs)
    active: list[tuple[subprocess.Popen, list[str], Path]] = []
    while waiting or active:
        while waiting and len(active) < at_once:
            cmd, log = waiting.pop(0)
            active.append((procs.start(cmd, log), cmd, log))
        time.sleep(0.2)
        for item in list(active):
            proc, cmd, log = item
            if proc.poll() is None:
                continue
            active.remove(item)
            procs.stop(proc)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{_tail(log)}")
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------- data
def flipped(rng: np.random.Generator, code: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """A copy of a 256-bit code with lo..hi random bits flipped."""
    bits = np.unpackbits(code)
    bits[rng.choice(bits.size, size=int(rng.integers(lo, hi + 1)), replace=False)] ^= 1
    return np.packbits(bits)


@dataclass
class Layout:
    """The shards' codes and the queries, from one seed."""

    shards: list[np.ndarray]
    queries: list[str]  # hex

    @classmethod
    def make(cls, n_shards: int, per_shard: int, groups: int, seed: int) -> Layout:
        rng = np.random.default_rng(seed)
        base = [rng.integers(0, 256, size=(per_shard, 32), dtype=np.uint8)
                for _ in range(n_shards)]
        extra: list[list[np.ndarray]] = [[] for _ in range(n_shards)]
        queries = []
        for g in range(groups):
            home = g % n_shards
            original = base[home][int(rng.integers(per_shard))]
            for other in range(n_shards):
                if other != home:  # a repost of it in every other shard
                    extra[other].append(flipped(rng, original, 1, 31))
            if g % 4 == 0 and n_shards > 1:  # and one a little too far to match
                far = int(rng.choice([s for s in range(n_shards) if s != home]))
                extra[far].append(flipped(rng, original, 32, 40))
            queries.append(flipped(rng, original, 0, 8).tobytes().hex())
        shards = [np.concatenate([b, *([np.array(e)] if e else [])])
                  for b, e in zip(base, extra)]
        everything = np.concatenate(shards)
        if len(np.unique(everything, axis=0)) != len(everything):
            raise RuntimeError("two shards hold the same code: change --seed")
        return cls(shards, queries)


def write_list(path: Path, codes: np.ndarray, shard: int | None) -> None:
    """A python-threatexchange hash list; each line's name says its shard
    (``s3-17``), so a match names where it lives in every collection."""
    hexes = codes.tobytes().hex()
    with path.open("w") as fh:
        for i in range(len(codes)):
            fh.write(f"pdq {hexes[64 * i:64 * (i + 1)]} s{shard}-{i}\n")


def write_union(path: Path, shards: list[np.ndarray]) -> None:
    with path.open("w") as fh:
        for s, codes in enumerate(shards):
            hexes = codes.tobytes().hex()
            for i in range(len(codes)):
                fh.write(f"pdq {hexes[64 * i:64 * (i + 1)]} s{s}-{i}\n")


def build(work: Path, layout: Layout, procs: Processes) -> float:
    """Each shard's collection and the one holding them all (two imports at a
    time, the largest first); wall seconds. A built folder is reused."""
    jobs = []
    union = work / "all.db"
    if not union.exists():
        write_union(work / "all.txt", layout.shards)
        jobs.append((IMGMATCH + ["--db", str(union), "import-hashes", str(work / "all.txt"),
                                 "--no-link", "--json"], work / "all.import.log"))
    for s, codes in enumerate(layout.shards):
        db = work / f"shard{s}.db"
        if not db.exists():
            write_list(work / f"shard{s}.txt", codes, s)
            jobs.append((IMGMATCH + ["--db", str(db), "import-hashes",
                                     str(work / f"shard{s}.txt"), "--no-link", "--json"],
                         work / f"shard{s}.import.log"))
    seconds = run_all(procs, jobs, at_once=2)
    for listing in work.glob("*.txt"):
        listing.unlink()
    return seconds


def make_key(db: Path) -> str:
    """A read key for the collection at ``db`` (``imgmatch keys add`` prints it last)."""
    done = subprocess.run(IMGMATCH + ["--db", str(db), "keys", "add", "fanout-bench",
                                      "--scope", "read"],
                          check=True, capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1]


# --------------------------------------------------------------------- client
class ShardClient:
    """One keep-alive HTTP connection to one shard's service."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {key}",
                        "Content-Type": "application/x-www-form-urlencoded"}
        self.conn = http.client.HTTPConnection(HOST, port, timeout=60)
        self.reconnects = 0

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> bytes:
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                data = response.read()
            except (http.client.HTTPException, ConnectionError):
                # the service closes a connection idle for 5 s: open it again, once
                self.conn.close()
                self.reconnects += 1
                if attempt == 2:
                    raise
                continue
            if response.status != 200:
                raise RuntimeError(f"shard on port {self.port}: {response.status} {data[:300]!r}")
            return data
        raise AssertionError("unreachable")

    def query(self, pdq: str) -> list[dict]:
        """The shard's matches for a PDQ hash, best first (its own top-k)."""
        body = urllib.parse.urlencode({"pdq": pdq}).encode()
        return json.loads(self._request("POST", "/v1/query", body, self.headers))["matches"]

    def healthz(self) -> None:
        self._request("GET", "/healthz")

    def close(self) -> None:
        self.conn.close()


def identity(match: dict) -> str:
    """What names an image in every shard: its SHA-256, or for a bare hash its key."""
    return match.get("sha256") or match["image"]["hash_key"]


def merge(answers: list[list[dict]], top_k: int) -> list[dict]:
    """One top-k from the shards' top-ks, best score first (ties by identity,
    so the order does not depend on which shard answered first). An image
    found in several shards (shards split by crawl segment, not by SHA-256)
    is one match with its best score and every shard's sightings."""
    best: dict[str, dict] = {}
    for answer in answers:
        for match in answer:
            key = identity(match)
            seen = best.get(key)
            if seen is None:
                best[key] = match
            else:
                keep, other = (match, seen) if match["score"] > seen["score"] else (seen, match)
                best[key] = keep | {"sightings": keep["sightings"] + other["sightings"]}
    return sorted(best.values(), key=lambda m: (-m["score"], identity(m)))[:top_k]


class FanOut:
    """Sends one query to every shard at once (a thread each) and merges."""

    def __init__(self, shards: list[ShardClient], top_k: int) -> None:
        self.shards = shards
        self.top_k = top_k
        self.pool = ThreadPoolExecutor(max_workers=len(shards))

    def query(self, pdq: str) -> tuple[list[dict], float]:
        """(the merged top-k, seconds the merge alone took)."""
        answers = [f.result() for f in [self.pool.submit(s.query, pdq) for s in self.shards]]
        started = time.perf_counter()
        merged = merge(answers, self.top_k)
        return merged, time.perf_counter() - started

    def healthz(self) -> None:
        for f in [self.pool.submit(s.healthz) for s in self.shards]:
            f.result()

    def close(self) -> None:
        self.pool.shutdown()


def timed(call, *args) -> float:
    started = time.perf_counter()
    call(*args)
    return time.perf_counter() - started


# -------------------------------------------------------------------- service
@dataclass
class Served:
    """A running ``imgmatch serve`` and a client for it."""

    proc: subprocess.Popen
    client: ShardClient
    log: Path


def serve(db: Path, key: str, procs: Processes, log: Path, ready_within: float = 180.0) -> Served:
    """Start the service over ``db`` on a free loopback port; wait until it answers."""
    port = free_port()
    proc = procs.start(IMGMATCH + ["--db", str(db), "serve", "--host", HOST, "--port",
                                   str(port), "--decode-workers", "1"], log)
    deadline = time.monotonic() + ready_within
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the service over {db.name} stopped ({proc.returncode}):\n"
                               f"{_tail(log)}")
        try:
            probe = http.client.HTTPConnection(HOST, port, timeout=1)
            probe.request("GET", "/healthz")
            if probe.getresponse().status == 200:
                probe.close()
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service over {db.name} did not answer in {ready_within} s")
        time.sleep(0.1)
    return Served(proc, ShardClient(port, key), log)


def cpu_seconds(pid: int) -> float:
    """User and system CPU a process has used so far (Linux; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float | None:
    """The resident memory of a process (Linux), for the shard's size in memory."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# ------------------------------------------------------------------ measuring
def ms(values: list[float], q: float) -> float:
    return 1000 * float(np.percentile(values, q))


def oracle(db: Path, queries: list[str], top_k: int) -> tuple[list[list[dict]], list[float]]:
    """Every query's answer from one collection (deep enough to be restricted to
    some shards), and the in-process time of the query as a service asks it."""
    from imgmatch import Collection

    answers, seconds = [], []
    with Collection.open(db, readonly=True) as c:
        c.query_hash(queries[0], top_k=top_k)  # the indexes load on first use
        for q in queries:
            started = time.perf_counter()
            c.query_hash(q, top_k=top_k)
            seconds.append(time.perf_counter() - started)
            answers.append([m.to_json() for m in c.query_hash(q, top_k=100)])
    return answers, seconds


def shard_of(match: dict) -> int:
    """The shard a match lives in, from its sighting's name (``s3-17``)."""
    return int(match["sightings"][0]["source"].split("-")[0][1:])


def measure(clients: list[ShardClient], queries: list[str], truth: list[list[dict]],
            top_k: int, pids: list[int], held: int | None = None) -> dict:
    """Alone, fan-out and transport floor for these shards (services ``pids``),
    the CPU a query costs the shards and the client, and the merge's check
    against ``truth`` restricted to the first ``held`` shards' hashes (by
    default, one shard per client)."""
    n = len(clients)
    held = n if held is None else held
    fan = FanOut(clients, top_k)
    try:
        for q in queries:  # warm: every shard has answered every query once
            fan.query(q)
        alone: list[list[float]] = []
        fanned, merging, mismatches, client_cpu = [], [], 0, 0.0
        shards_cpu = sum(cpu_seconds(p) for p in pids)
        for q, expected in zip(queries, truth):
            alone.append([timed(c.query, q) for c in clients])
            cpu = time.process_time()
            started = time.perf_counter()
            merged, merge_s = fan.query(q)
            fanned.append(time.perf_counter() - started)
            client_cpu += time.process_time() - cpu
            merging.append(merge_s)
            wanted = [m for m in expected if shard_of(m) < held]
            if len(wanted) >= top_k:
                raise RuntimeError("an answer fills the top-k: restricting the single "
                                   "collection's answer to N shards would not be exact")
            wanted.sort(key=lambda m: (-m["score"], identity(m)))
            if [(identity(m), m["score"]) for m in merged] != \
                    [(identity(m), m["score"]) for m in wanted]:
                mismatches += 1
        # each shard answered each query twice: alone, and in the fan-out
        shards_cpu = (sum(cpu_seconds(p) for p in pids) - shards_cpu) / (2 * len(queries))
        floor_one = [timed(clients[0].healthz) for _ in queries]
        floor_fan = [timed(fan.healthz) for _ in queries]
    finally:
        fan.close()
    first = [a[0] for a in alone]
    slowest = [max(a) for a in alone]
    return {
        "n": n, "queries": len(queries), "mismatches": mismatches,
        "found": sum(len(m) for m in truth),
        "alone_p50": ms(first, 50), "alone_p99": ms(first, 99),
        "slowest_p50": ms(slowest, 50), "slowest_p99": ms(slowest, 99),
        "fan_p50": ms(fanned, 50), "fan_p99": ms(fanned, 99),
        "beyond_slowest_p50": ms(list(np.subtract(fanned, slowest)), 50),
        "merge_p50_us": 1000 * ms(merging, 50),
        "shards_cpu_ms": 1000 * shards_cpu, "client_cpu_ms": 1000 * client_cpu / len(queries),
        "floor_one_p50": ms(floor_one, 50), "floor_fan_p50": ms(floor_fan, 50),
        "floor_fan_p99": ms(floor_fan, 99),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="1,2,4,8", help="shard counts N, comma-separated")
    parser.add_argument("--per-shard", type=float, default=200_000,
                        help="random PDQ hashes in each shard (planted copies come on top)")
    parser.add_argument("--queries", type=int, default=400,
                        help="queries, one per planted group")
    parser.add_argument("--top-k", type=int, default=10, help="matches per answer")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--keep", type=Path, help="build the collections in this folder and "
                        "keep them; ones already there are reused (same options)")
    parser.add_argument("--md", type=Path, help="also write the Markdown table here")
    args = parser.parse_args()
    counts = sorted({int(n) for n in args.shards.split(",")})
    largest, per_shard = counts[-1], int(args.per_shard)
    if counts[0] < 1:
        parser.error("--shards: counts of 1 or more")
    # a service's numpy and FAISS threads must not spin while waiting: they share 2 cores
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still cleans up

    work = args.keep or Path(tempfile.mkdtemp(prefix="imgmatch-bench-fanout-"))
    work.mkdir(parents=True, exist_ok=True)
    procs = Processes()
    served: list[Served] = []
    rows: list[dict] = []
    try:
        layout = Layout.make(largest, per_shard, args.queries, args.seed)
        sizes = [len(codes) for codes in layout.shards]
        print(f"building {largest} shards of {sizes[0]:,}-{max(sizes):,} hashes and one of "
              f"{sum(sizes):,} in {work}", file=sys.stderr)
        build_s = build(work, layout, procs)
        keys = [make_key(work / f"shard{s}.db") for s in range(largest)]
        union_key = make_key(work / "all.db")

        truth, all_inproc = oracle(work / "all.db", layout.queries, args.top_k)
        _, shard_inproc = oracle(work / "shard0.db", layout.queries, args.top_k)
        print(f"  built in {build_s:.0f} s; in-process p50: one shard "
              f"{ms(shard_inproc, 50):.2f} ms, all {ms(all_inproc, 50):.2f} ms", file=sys.stderr)

        for n in counts:
            while len(served) < n:
                s = len(served)
                served.append(serve(work / f"shard{s}.db", keys[s], procs,
                                    work / f"shard{s}.serve.log"))
            rows.append(measure([x.client for x in served[:n]], layout.queries, truth,
                                args.top_k, [x.proc.pid for x in served[:n]]))
            rows[-1]["hashes"] = sum(sizes[:n])
            rows[-1]["rss_mb"] = [rss_mb(x.proc.pid) for x in served[:n]]
            print(f"  {json.dumps(rows[-1])}", file=sys.stderr)
        reconnects = sum(x.client.reconnects for x in served)
        for x in served:
            x.client.close()
            procs.stop(x.proc)
        served.clear()

        # the same hashes in one collection behind one service, for comparison
        whole = serve(work / "all.db", union_key, procs, work / "all.serve.log")
        served.append(whole)
        one = measure([whole.client], layout.queries, truth, args.top_k, [whole.proc.pid],
                      held=largest)
        one["rss_mb"] = [rss_mb(whole.proc.pid)]
    finally:
        for x in served:
            x.client.close()
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    bad = sum(r["mismatches"] for r in rows + [one])
    lines = [f"{args.queries} PDQ queries (each with its 8 rotations and mirrors, top "
             f"{args.top_k}); shards of {per_shard:,} random hashes plus planted copies "
             f"({min(sizes):,} to {max(sizes):,} each); every process on this machine's "
             f"{os.cpu_count()} cores:", "",
             "| shards N | hashes in all | one shard alone p50 / p99 (ms) | "
             "slowest of the N alone p50 / p99 (ms) | fan-out p50 / p99 (ms) | "
             "added by the fan-out p50 / p99 (ms) | fan-out minus its slowest shard, p50 (ms) | "
             "merged = one collection |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['hashes']:,} | {r['alone_p50']:.2f} / {r['alone_p99']:.2f} | "
            f"{r['slowest_p50']:.2f} / {r['slowest_p99']:.2f} | "
            f"{r['fan_p50']:.2f} / {r['fan_p99']:.2f} | "
            f"{r['fan_p50'] - r['alone_p50']:+.2f} / {r['fan_p99'] - r['alone_p99']:+.2f} | "
            f"{r['beyond_slowest_p50']:+.2f} | {r['queries'] - r['mismatches']} of "
            f"{r['queries']} |")
    lines += ["", "| shards N | /healthz: one / fan-out p50 (ms) | merge p50 (µs) | "
              "client CPU per fan-out (ms) | shards' CPU per query, all N (ms) | "
              "service resident per shard (MB) |", "|---|---|---|---|---|---|"]
    for r in rows + [one | {"n": f"1 holding all {sum(sizes):,}"}]:
        rss = [v for v in r["rss_mb"] if v is not None]
        lines.append(
            f"| {r['n']} | {r['floor_one_p50']:.2f} / {r['floor_fan_p50']:.2f} | "
            f"{r['merge_p50_us']:.0f} | {r['client_cpu_ms']:.2f} | {r['shards_cpu_ms']:.2f} | "
            + (f"{min(rss):.0f}-{max(rss):.0f} |" if rss else "- |"))
    lines += [
        "",
        f"- one service over all {sum(sizes):,} hashes (one collection), alone: p50 / p99 "
        f"{one['alone_p50']:.2f} / {one['alone_p99']:.2f} ms; its answers equal to the "
        f"in-process ones: {one['queries'] - one['mismatches']} of {one['queries']}",
        f"- the library alone, in-process (`query_hash`, no HTTP): one shard p50 / p99 "
        f"{ms(shard_inproc, 50):.2f} / {ms(shard_inproc, 99):.2f} ms; all hashes in one "
        f"collection {ms(all_inproc, 50):.2f} / {ms(all_inproc, 99):.2f} ms",
        f"- matches in the single collection's answers: {rows[0]['found']:,}; the collections "
        f"built in {build_s:.0f} s (two imports at a time); reconnections: {reconnects}",
    ]
    emit(lines, args.md)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
