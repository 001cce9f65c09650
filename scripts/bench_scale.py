"""Scale: synthetic collections of PDQ hashes loaded through imgmatch's bulk path.

For each size N: N random 256-bit codes plus planted near-duplicates of some
of them (at 0 to 31 bits, inside PDQ's threshold, and 32 to 40, outside),
written as a python-threatexchange hash list and loaded with
``imgmatch import-hashes`` (the same path partners' lists take). Then:

- add: wall time and peak RSS of the import (catalog rows and index);
- open: a fresh process opening the collection and its indexes for querying;
- query: one PDQ hash, one thread, matches joined with their sightings from
  the catalog (``find_matches``); p50/p99 over the planted queries; also with
  the 8 rotations and mirrors of each hash (what ``query --pdq`` does); and
  the index's share alone (its range search), the rest being the catalog
  join and scoring;
- recall: the index's range search against a brute-force numpy scan;
- memory and disk: index bytes per image in memory, catalog and index bytes
  per image on disk;
- stats: ``imgmatch stats`` wall time;
- all-pairs: ``imgmatch link --workers 2`` in a fresh process (the clustering
  workload: every pair within PDQ's threshold, written as links), checked
  against the planted pairs; beside it the baseline, FAISS's flat binary
  range search of every code against all, timed on a sample of queries and
  scaled to N (all of them would take half an hour at 1e6).

64-bit codes (pHash, dHash) have no hash-list format: their index is measured
on its own (build, query at pHash's threshold, recall, memory) at the same sizes,
with the peak of a merge at 1% growth (traced numpy memory, as a multiple of
the index's own) and ``--only-64`` to measure nothing else.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import emit  # noqa: E402
from bench_ingest import measure  # noqa: E402

QUERIES = 200


def planted(rng: np.random.Generator, codes: np.ndarray, n: int, lo: int, hi: int):
    """Copies of n random codes with lo..hi random bits flipped: (rows, copies, distances)."""
    rows = rng.choice(len(codes), size=n, replace=False)
    bits = codes.shape[1] * 8
    copies, distances = [], []
    for r in rows:
        d = int(rng.integers(lo, hi + 1))
        unpacked = np.unpackbits(codes[r]).copy()
        unpacked[rng.choice(bits, size=d, replace=False)] ^= 1
        copies.append(np.packbits(unpacked))
        distances.append(d)
    return rows, np.array(copies), distances


def write_list(path: Path, codes: np.ndarray) -> None:
    with path.open("w") as fh:
        hexes = codes.tobytes().hex()
        width = codes.shape[1] * 2
        for i in range(len(codes)):
            fh.write(f"pdq {hexes[i * width:(i + 1) * width]} item-{i}\n")


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_pdq(n: int, work: Path, rng: np.random.Generator, with_pairs: bool = True) -> dict:
    from imgmatch import Collection
    from imgmatch.match import find_matches
    from imgmatch.mih import popcount_rows
    from imgmatch.signals import HashValue, get

    base = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    rows_in, near, d_in = planted(rng, base, QUERIES, 0, 31)
    rows_out, far, _ = planted(rng, base, QUERIES // 4, 32, 40)
    everything = np.concatenate([base, near, far])
    distinct = len(np.unique(everything, axis=0))  # a copy at distance 0 is the same hash
    db = work / "c.db"
    built = work / "built.json"  # a kept collection (--keep) is measured again, not rebuilt
    if not built.exists():
        listing = work / "list.txt"
        write_list(listing, everything)
        seconds, rss = measure([sys.executable, "-m", "imgmatch.cli", "--db", str(db),
                                "import-hashes", str(listing), "--no-link", "--json"], {0})
        listing.unlink()
        linked, link_s = None, None
        if with_pairs:
            t = time.perf_counter()
            linked = json.loads(subprocess.run(
                [sys.executable, "-m", "imgmatch.cli", "--db", str(db), "link", "--workers", "2",
                 "--json"], check=True, capture_output=True, text=True).stdout)["pdq"]
            link_s = time.perf_counter() - t
        built.write_text(json.dumps([seconds, rss, linked, link_s]))
    seconds, rss, linked, link_s = json.loads(built.read_text())
    open_probe = ("import sys, time\nt = time.perf_counter()\nfrom imgmatch import Collection\n"
                  "c = Collection.open(sys.argv[1], readonly=True)\nc.indexes\n"
                  "print(time.perf_counter() - t)")
    cold = float(subprocess.run([sys.executable, "-c", open_probe, str(db)], check=True,
                                capture_output=True, text=True).stdout)
    t = time.perf_counter()
    stats = subprocess.run([sys.executable, "-m", "imgmatch.cli", "--db", str(db), "stats",
                            "--json"], check=True, capture_output=True, text=True)
    stats_s = time.perf_counter() - t
    assert json.loads(stats.stdout)["images"] == distinct

    pdq = get("pdq")
    with Collection.open(db, readonly=True) as c:
        index = c.indexes["pdq"]
        one, eight, bare, found_self = [], [], [], 0
        for code in near:
            value = HashValue("pdq", code.tobytes())
            t = time.perf_counter()
            index.range_search(code, 31)
            bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            matches = find_matches(c.catalog, c.indexes, {"pdq": [value]}, top_k=10)
            one.append(time.perf_counter() - t)
            found_self += any(m.signals["pdq"] == value.hex for m in matches)
            t = time.perf_counter()
            find_matches(c.catalog, c.indexes, {"pdq": pdq.dihedral_of_value(value)}, top_k=10)
            eight.append(time.perf_counter() - t)
        # recall of the index against a scan of every code
        all_codes, all_ids = index.mih.live()
        sample = np.concatenate([near[:50], far[:10]])
        hits = truth = 0
        for q in sample:
            expected = set(all_ids[popcount_rows(all_codes ^ q) <= 31].tolist())
            got = set(index.range_search(q, 31)[0][0].tolist())
            truth += len(expected)
            hits += len(expected & got)
        memory = index.memory_bytes()
        # every pair within 31 involves a planted code (random ones are ~128 bits
        # apart): the oracle is a scan of the planted rows and their copies
        planted_codes = np.unique(np.concatenate([base[rows_in], base[rows_out], near, far]),
                                  axis=0)
        oracle = {tuple(sorted((a.tobytes(), b.tobytes())))
                  for k, a in enumerate(planted_codes) for b in planted_codes[k + 1:]
                  if int(popcount_rows((a ^ b)[None])[0]) <= 31}
        pairs = [(a, b) for a, b, *_ in c.catalog.links()]
        values = c.catalog.signals_of(sorted({i for p in pairs for i in p}))
        got = {tuple(sorted((values[a]["pdq"][0], values[b]["pdq"][0]))) for a, b in pairs}
        flat_s = faiss_all_pairs_seconds(all_codes) if linked else None
    total = distinct
    return {
        "signal": "pdq", "n": total, "add_s": seconds, "add_peak_rss_mb": rss,
        "open_s": cold, "stats_s": stats_s,
        "query_p50_ms": 1000 * float(np.percentile(one, 50)),
        "query_p99_ms": 1000 * float(np.percentile(one, 99)),
        "index_p50_ms": 1000 * float(np.percentile(bare, 50)),
        "join_p50_ms": 1000 * float(np.percentile(np.subtract(one, bare), 50)),
        "query8_p50_ms": 1000 * float(np.percentile(eight, 50)),
        "query8_p99_ms": 1000 * float(np.percentile(eight, 99)),
        "recall": hits / truth if truth else 1.0, "self_found": found_self / len(near),
        "index_bytes_per_image": memory / total,
        **({} if linked is None else {
            "link_s": link_s, "link_pairs": linked["pairs"], "oracle_pairs": len(oracle),
            "link_recall": len(got & oracle) / len(oracle), "link_extra": len(got - oracle),
            "faiss_all_pairs_s": flat_s}),
        "disk_bytes_per_image": (folder_bytes(db) + folder_bytes(Path(str(db) + ".indexes"))
                                 + sum(folder_bytes(p) for p in db.parent.glob("c.db-*")))
        / total,
    }


def faiss_all_pairs_seconds(codes: np.ndarray, sample: int = 2000) -> float:
    """FAISS flat range search, every code against all: timed on a sample, scaled to N."""
    import faiss

    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(codes)
    queries = codes[np.random.default_rng(0).choice(len(codes), min(sample, len(codes)),
                                                    replace=False)]
    t = time.perf_counter()
    index.range_search(queries, 32)  # FAISS's radius is exclusive: distance <= 31
    return (time.perf_counter() - t) * len(codes) / len(queries)


def bench_64(n: int, rng: np.random.Generator) -> dict:
    from imgmatch.mih import MultiIndexHash, popcount_rows
    from imgmatch.signals import get

    radius = get("phash").threshold  # dHash's is smaller, so cheaper

    codes = rng.integers(0, 256, size=(n, 8), dtype=np.uint8)
    ids = np.arange(1, n + 1, dtype=np.int64)
    _, near, _ = planted(rng, codes, QUERIES, 0, radius)
    index = MultiIndexHash(64)
    t = time.perf_counter()
    index.add(ids, codes)
    index.rebuild()
    build = time.perf_counter() - t
    times, hits, truth = [], 0, 0
    for q in near:
        t = time.perf_counter()
        got = index.range_search(q, radius)[0][0]
        times.append(time.perf_counter() - t)
        expected = set(ids[popcount_rows(codes ^ q) <= radius].tolist())
        truth += len(expected)
        hits += len(expected & set(got.tolist()))
    return {"signal": "64-bit", "n": n, "add_s": build,
            "query_p50_ms": 1000 * float(np.percentile(times, 50)),
            "query_p99_ms": 1000 * float(np.percentile(times, 99)),
            "recall": hits / truth, "index_bytes_per_image": index.memory_bytes() / n,
            "merge_peak_x": merge_peak(codes, ids, rng)}


def merge_peak(codes: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> float:
    """Peak memory while 1% new codes are merged into an index of ``codes``, as a
    multiple of the memory held just before (traced from the index's creation)."""
    from imgmatch.mih import MultiIndexHash

    extra = rng.integers(0, 256, size=(max(1, len(codes) // 100), 8), dtype=np.uint8)
    tracemalloc.start()
    try:
        index = MultiIndexHash(64)
        index.add(ids, codes, merge=False)
        index.rebuild()
        index.add(np.arange(len(ids) + 1, len(ids) + 1 + len(extra)), extra, merge=False)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        index.rebuild()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak / held


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000",
                        help="comma-separated collection sizes (1e7 takes a while)")
    parser.add_argument("--md", type=Path, help="also write the Markdown table here")
    parser.add_argument("--skip-pairs", action="store_true",
                        help="leave out the all-pairs link pass and its FAISS baseline")
    parser.add_argument("--only-64", action="store_true",
                        help="measure only the 64-bit index (no PDQ collection)")
    parser.add_argument("--keep", type=Path, help="build the collections in this folder and "
                        "keep them; one already there is measured again, not rebuilt (its add "
                        "and link figures are those of its build)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    rows = []
    for size in (int(float(s)) for s in args.sizes.split(",")):
        rng = np.random.default_rng(size)
        if args.only_64:
            rows.append(bench_64(size, rng))
            print(json.dumps(rows[-1]), file=sys.stderr)
            continue
        if args.keep:
            work = args.keep / f"pdq-{size}"
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(tempfile.mkdtemp(prefix="imgmatch-scale-"))
        try:
            rows.append(bench_pdq(size, work, rng, with_pairs=not args.skip_pairs))
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        rows.append(bench_64(size, rng))
        print(json.dumps(rows[-2:]), file=sys.stderr)
    lines = ["| codes | N | add (s) | add peak RSS (MB) | open (s) | query p50 / p99 (ms) | "
             "8 rotations p50 / p99 (ms) | recall | index bytes/image | disk bytes/image | "
             "stats (s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    pair_lines = ["| N | all-pairs + links, 2 cores (s) | pairs found / planted | wrong pairs | "
                  "FAISS flat all-vs-all, scaled (s) |", "|---|---|---|---|---|"]
    join_lines = ["| N | query p50 (ms) | index alone p50 (ms) | catalog join and scoring p50 (ms) |",
                  "|---|---|---|---|"]
    merge_lines = ["| N | 64-bit index: peak of a merge at 1% growth (x the index) |", "|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['signal']} | {r['n']:,} | {r['add_s']:.1f} | "
            + (f"{r['add_peak_rss_mb']:.0f} | {r['open_s']:.2f} | " if "open_s" in r else "- | - | ")
            + f"{r['query_p50_ms']:.2f} / {r['query_p99_ms']:.2f} | "
            + (f"{r['query8_p50_ms']:.2f} / {r['query8_p99_ms']:.2f}" if "query8_p50_ms" in r
               else "-")
            + f" | {r['recall']:.4f} | {r['index_bytes_per_image']:.0f} | "
            + (f"{r['disk_bytes_per_image']:.0f} | {r['stats_s']:.2f} |" if "stats_s" in r
               else "- | - |"))
        if "merge_peak_x" in r:
            merge_lines.append(f"| {r['n']:,} | {r['merge_peak_x']:.2f} |")
        if "index_p50_ms" in r:
            join_lines.append(f"| {r['n']:,} | {r['query_p50_ms']:.2f} | "
                              f"{r['index_p50_ms']:.2f} | {r['join_p50_ms']:.2f} |")
        if "link_s" in r:
            pair_lines.append(
                f"| {r['n']:,} | {r['link_s']:.1f} | {r['link_pairs']} / {r['oracle_pairs']} "
                f"(recall {r['link_recall']:.4f}) | {r['link_extra']} | "
                f"{r['faiss_all_pairs_s']:.0f} |")
    out = lines
    for table in (join_lines, pair_lines, merge_lines):
        if len(table) > 2:  # tables with rows only (--only-64 fills one)
            out = out + [""] + table
    return emit(out, args.md)


if __name__ == "__main__":
    sys.exit(main())
