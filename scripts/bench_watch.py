"""Watchlists at scale: checking each new image against a million partner hashes.

The list: N PDQ hashes (default 1,000,000), most of them random 256-bit
codes, plus the real PDQ hashes of ../shared/bench's dev references, each
with 0 to 24 bits flipped (a partner's hash of the same photo, made by
another hasher): so the dev queries, reposts of those references, really
hit. It is loaded with ``watchlist add`` into an empty collection.

Measured, in one run:

- add: wall time of ``Collection.watchlist_add`` (reading, storing N entries);
- open: building the in-memory index from the catalog, as the first ingest
  of a process does (and again whenever another process changes a list);
- check: each dev query image, with its eight dihedral variants as ingest
  computes them, searched and scored against the list
  (``Watchlists.hits``): p50, p99 and mean per image, on one thread;
- baseline, side by side on the same variants: FAISS's flat binary index
  (``IndexBinaryFlat``, the exhaustive scan python-threatexchange's PDQ
  index is built on) with a range search at 31 bits; the two must find the
  same entries;
- ingest: the same query images ingested into a collection with the list and
  into one without (workers 0, one thread), the difference per image;
- memory: the index's bytes per entry.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import emit, ensure_dev_corpus  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=float, default=1e6)
    parser.add_argument("--queries", type=int, default=400,
                        help="dev query images checked (at most the dev set's)")
    parser.add_argument("--md", type=Path, help="also write the table here")
    args = parser.parse_args()
    import faiss

    import imgmatch
    from imgmatch import Collection
    from imgmatch.ingest import analyse
    from imgmatch.sources import Item
    from imgmatch.watchlists import Watchlists

    faiss.omp_set_num_threads(1)
    dev = ensure_dev_corpus()
    rng = np.random.default_rng(7)
    n = int(args.entries)
    refs = sorted((dev / "references").iterdir())
    queries = sorted((dev / "queries").iterdir())
    rng.shuffle(queries)  # type: ignore[arg-type]
    queries = queries[:args.queries]

    def pdq_bytes(path: Path) -> bytes:
        return bytes.fromhex(imgmatch.hash_bytes(path.read_bytes(), ["pdq"])
                             ["signals"]["pdq"]["hex"])

    real = np.frombuffer(b"".join(pdq_bytes(p) for p in refs), np.uint8).reshape(-1, 32)
    planted = np.unpackbits(real, axis=1)
    for row in planted:
        row[rng.choice(256, size=int(rng.integers(0, 25)), replace=False)] ^= 1
    codes = np.concatenate([rng.integers(0, 256, size=(n - len(real), 32), dtype=np.uint8),
                            np.packbits(planted, axis=1)])
    variants = []
    for path in queries:
        analysis = analyse(path.read_bytes(), ["pdq"], str(path))
        if analysis.image is not None:
            variants.append(analysis.variants["pdq"])

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        listing = work / "list.txt"
        hexes = codes.tobytes().hex()
        with listing.open("w") as fh:
            for i in range(len(codes)):
                fh.write(f"pdq {hexes[64 * i:64 * (i + 1)]}\n")
        with Collection.open(work / "w.db") as c:
            t = time.perf_counter()
            done = c.watchlist_add("partner", listing)
            add_s = time.perf_counter() - t
            assert done["entries_added"] == len(np.unique(codes, axis=0))
            watch = Watchlists(c.catalog)
            t = time.perf_counter()
            index = watch.indexes()["pdq"]
            open_s = time.perf_counter() - t
            ours, hits = [], 0
            found = []
            for vs in variants:
                t = time.perf_counter()
                got = watch.hits([(0, {"pdq": vs})])
                ours.append(time.perf_counter() - t)
                hits += bool(got)
                found.append({h.entry_id for h in got})
            memory = index.index.memory_bytes() / len(index)
            entry_ids = np.array([r[0] for r in c.catalog.conn.execute(
                "SELECT id FROM watch_entries ORDER BY id")], dtype=np.int64)
            stored = np.frombuffer(b"".join(bytes(r[0]) for r in c.catalog.conn.execute(
                "SELECT value FROM watch_entries ORDER BY id")), np.uint8).reshape(-1, 32)
        flat = faiss.IndexBinaryFlat(256)
        flat.add(stored)
        theirs, agree = [], 0
        for vs, mine in zip(variants, found):
            q = np.frombuffer(b"".join(v.data for v in vs), np.uint8).reshape(-1, 32)
            t = time.perf_counter()
            lims, _, labels = flat.range_search(q, 32)  # FAISS: distance < radius
            theirs.append(time.perf_counter() - t)
            agree += {int(entry_ids[i]) for i in labels} == mine
        # the whole ingest, with and without the list
        plain_s = with_s = 0.0
        for name, attach in (("plain", False), ("watched", True)):
            with Collection.open(work / f"{name}.db") as c:
                if attach:
                    c.watchlist_add("partner", listing)
                    c.watch_lookup("0" * 64)  # the index is built once per process, first
                items = [Item(str(p), imgmatch.Sighting(source=str(p)), path=p) for p in queries]
                t = time.perf_counter()
                c.ingest(items, signals=["pdq", "phash", "dhash"], link=False)
                seconds = time.perf_counter() - t
                if attach:
                    with_s = seconds
                    alerts = len(c.alerts(limit=100_000))
                else:
                    plain_s = seconds

    ms = [1000 * x for x in ours]
    base = [1000 * x for x in theirs]
    per_image = 1000 * (with_s - plain_s) / len(queries)
    lines = [
        f"Watchlist of {len(codes):,} PDQ hashes ({len(real)} of them real photos' hashes "
        f"with 0-24 bits flipped), {len(variants)} query images of ../shared/bench's dev set, "
        "each with its 8 dihedral variants, one thread:",
        "",
        "| measure | imgmatch (multi-index hash tables) | FAISS IndexBinaryFlat (scan) |",
        "|---|---|---|",
        f"| check per image, p50 | {np.percentile(ms, 50):.3f} ms | "
        f"{np.percentile(base, 50):.1f} ms |",
        f"| check per image, p99 | {np.percentile(ms, 99):.3f} ms | "
        f"{np.percentile(base, 99):.1f} ms |",
        f"| check per image, mean | {np.mean(ms):.3f} ms | {np.mean(base):.1f} ms |",
        f"| same entries found | {agree} of {len(variants)} images | (reference) |",
        f"| images with a hit | {hits} of {len(variants)} | |",
        f"| add the list ({len(codes):,} lines) | {add_s:.1f} s | |",
        f"| build the index from the catalog | {open_s:.1f} s | |",
        f"| index memory per entry | {memory:.0f} B | 32 B |",
        f"| ingest of the {len(queries)} images, with the list vs without | "
        f"{with_s:.2f} s vs {plain_s:.2f} s: {per_image:+.2f} ms per image; "
        f"{alerts} alerts | |",
    ]
    return emit(lines, args.md)


if __name__ == "__main__":
    sys.exit(main())
