"""Where a robust ingest's time goes, per image, on the ad-sized JPEGs.

Two measures, each in this process on one thread (so they add up to what
one core spends per image):

- analysis: ``analyse`` (decode, hashes and, in the robust tier, ORB on the
  image and its mirror) over the files' bytes, for the hash tier and the
  robust tier, and ORB's ``detectAndCompute`` alone;
- linking: an in-process robust ingest (``--workers 0``) of the same files,
  timing ``IndexLinker.links`` (descriptor votes, geometric verification,
  scoring) and counting the verifications it runs, with the time of the
  descriptor votes and of the verifications inside it, of the
  candidates verified again the other way round (``match.verify_reversed``),
  and of the tiles' search of screenshots and collages (its votes and
  verifications are among those above too).

``--both-orientations`` verifies the image and its mirror against every
candidate, as ingest did before it counted votes per orientation
(``match.LINK_ORIENTATION_VOTES`` set to 0): the baseline of that change.

Then, in a fresh process, a robust ingest of the same files with one worker
process (two cores: the worker analyses, this process links and writes):
the CPU seconds per image of each (``getrusage``), which shows whether the
parent takes more than its share.

``scripts/bench ingest`` gives the rates; this says what to make cheaper.

``--dump-links FILE`` instead writes every link of an in-process robust
ingest in batches of a fixed size (``--batch-size``; never cut short by
time, so the same files give the same batches), one line each: the two
images' SHA-256, the score, the transform and the regions. Two engines'
files compare with ``diff``: a change meant to be exact (a faster path
to the same result) must leave it unchanged.

``--files LIST`` takes the files from a text file, one path a line, for
either (default: the ad-sized JPEGs); ``--composites-of SET`` takes a
set's positive collage and screenshot queries, then its references: what
composites cost.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import emit, ensure_ad_sized, ensure_dev_corpus  # noqa: E402


class Timed:
    """Wraps a function to add up its calls' seconds (one thread)."""

    def __init__(self, owner: object, name: str) -> None:
        self.owner, self.name = owner, name
        self.inner = getattr(owner, name)
        self.seconds, self.calls = 0.0, 0
        #: the sum of the calls' results, where they are counts
        self.returned = 0
        setattr(owner, name, self)

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            result = self.inner(*args, **kwargs)
            if isinstance(result, int):
                self.returned += result
            return result
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1

    def __get__(self, obj, objtype=None):  # used as a method: bind like a function
        return self if obj is None else (lambda *a, **k: self(obj, *a, **k))

    def restore(self) -> None:
        setattr(self.owner, self.name, self.inner)


#: In a process of its own: a robust ingest with one worker, CPU per image
#: of this process and of its worker (children are counted once reaped).
_SPLIT_PROBE = """
import json, resource, sys, tempfile, time
from pathlib import Path
import imgmatch
from imgmatch.sources import iter_paths
files = [Path(p) for p in sys.argv[1:]]
started = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp, imgmatch.Collection.open(Path(tmp) / "c.db") as c:
    c.ingest(iter_paths(files), signals=imgmatch.ROBUST_SIGNALS, workers=1)
wall = time.perf_counter() - started
me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print(json.dumps({"wall": wall, "parent": (me.ru_utime + me.ru_stime) / len(files),
                  "worker": (kids.ru_utime + kids.ru_stime) / len(files)}))
"""


def cpu_split(files: list[Path]) -> dict[str, float]:
    import json
    import subprocess

    done = subprocess.run([sys.executable, "-c", _SPLIT_PROBE, *map(str, files)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def composites_then_references(data: Path) -> list[Path]:
    """A set's positive collage and screenshot queries, then its references
    (as its CSV files list them): composites catalogued before the photos
    they show, the most linking work an image can ask for."""
    import csv

    with (data / "queries.csv").open(newline="") as fh:
        composites = [data / row["file"] for row in csv.DictReader(fh)
                      if row["family"] in ("collage", "screenshot") and row["is_negative"] == "0"]
    with (data / "references.csv").open(newline="") as fh:
        references = [data / row["file"] for row in csv.DictReader(fh)]
    return composites + references


def dump_links(files: list[Path], out: Path, batch_size: int) -> int:
    """Ingest ``files`` in fixed batches and write every link to ``out``;
    returns how many."""
    import imgmatch
    from imgmatch import ingest
    from imgmatch.sources import Item

    flush, ingest.FLUSH_SECONDS = ingest.FLUSH_SECONDS, float("inf")  # batches end by size
    try:
        with tempfile.TemporaryDirectory() as tmp, \
                imgmatch.Collection.open(Path(tmp) / "c.db") as c:
            items = [Item(str(p), imgmatch.Sighting(source=str(p)), path=p) for p in files]
            c.ingest(items, signals=imgmatch.ROBUST_SIGNALS, workers=0, batch_size=batch_size)
            rows = c.catalog.conn.execute(
                "SELECT a.sha256, b.sha256, l.score, l.transform, l.regions FROM links l "
                "JOIN images a ON a.id = l.a JOIN images b ON b.id = l.b "
                "ORDER BY a.sha256, b.sha256").fetchall()
    finally:
        ingest.FLUSH_SECONDS = flush
    out.write_text("".join(f"{a} {b} {score!r} {transform} {regions}\n"
                           for a, b, score, transform, regions in rows))
    return len(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--both-orientations", action="store_true",
                    help="verify both orientations of every candidate (the baseline)")
    ap.add_argument("--md", type=Path, help="also write the table here")
    ap.add_argument("--dump-links", type=Path, metavar="FILE",
                    help="instead, write every link of an ingest in fixed batches here")
    ap.add_argument("--files", type=Path, metavar="LIST",
                    help="the files to ingest, one path a line (default: the ad-sized "
                         "JPEGs)")
    ap.add_argument("--composites-of", type=Path, metavar="SET",
                    help="the files to ingest: a set's positive collage and screenshot "
                         "queries, then its references (a half of the second set)")
    ap.add_argument("--split-only", action="store_true",
                    help="only the ingest with one worker on two cores (quick, to run "
                         "two engines in turn several times)")
    ap.add_argument("--batch-size", type=int, default=64,
                    help="with --dump-links: images a batch")
    args = ap.parse_args()
    files = ([Path(line) for line in args.files.read_text().split()] if args.files else
             composites_then_references(args.composites_of) if args.composites_of else
             sorted(ensure_ad_sized(ensure_dev_corpus()).glob("*.jpg"))[:args.images])
    if args.split_only:
        split = cpu_split(files)
        return emit([_split_line(files, split)], args.md)
    if args.dump_links:
        found = dump_links(files, args.dump_links, args.batch_size)
        print(f"{found} links of {len(files)} images written to {args.dump_links}")
        return 0

    import imgmatch
    from imgmatch import features, match
    from imgmatch.analysis import analyse
    from imgmatch.sources import Item
    from imgmatch.workers import single_threaded

    single_threaded()
    if args.both_orientations:
        match.LINK_ORIENTATION_VOTES = 0
    datas = [p.read_bytes() for p in files]
    n = len(datas)

    per_image: dict[str, float] = {}
    for label, signals in (("hash tier", imgmatch.HASH_SIGNALS),
                           ("robust tier", imgmatch.ROBUST_SIGNALS)):
        started = time.perf_counter()
        for data in datas:
            analyse(data, signals, "bench")
        per_image[label] = 1000 * (time.perf_counter() - started) / n
    orb = Timed(features, "extract_both")
    framed = Timed(features, "regions")
    for data in datas:
        analyse(data, imgmatch.ROBUST_SIGNALS, "bench")
    orb.restore()
    framed.restore()

    links = Timed(match.IndexLinker, "links")
    votes = Timed(match, "votes_across")  # the collection's and the batch's, ranked as one
    verify = Timed(features, "verify")
    reverse = Timed(match, "verify_reversed")
    tiles = Timed(match, "_search_tiles")  # its votes and verifications counted above too
    try:
        with tempfile.TemporaryDirectory() as tmp, \
                imgmatch.Collection.open(Path(tmp) / "c.db") as c:
            items = [Item(str(p), imgmatch.Sighting(source=str(p)), path=p) for p in files]
            summary = c.ingest(items, signals=imgmatch.ROBUST_SIGNALS, workers=0)
    finally:
        for timed in (links, votes, verify, reverse, tiles):
            timed.restore()
    added = summary.images_added
    lines = [
        (f"{n} images of {args.files}" if args.files else
         f"{n} images of {args.composites_of.name}, its collages and screenshots first"
         if args.composites_of else f"{n} ad-sized JPEGs")
        + ", one thread, milliseconds per image"
        + (" (both orientations verified):" if args.both_orientations else ":"),
        "",
        "| step | ms per image |",
        "|---|---|",
        f"| analysis, hash tier (decode, PDQ, pHash, dHash) | {per_image['hash tier']:.1f} |",
        f"| analysis, robust tier | {per_image['robust tier']:.1f} |",
        f"| ... of which ORB on the image and its mirror | {1000 * orb.seconds / n:.1f} |",
        f"| ... of which looking for framed pictures | {1000 * framed.seconds / n:.1f} |",
        f"| linking at ingest (votes, verification, scores) | {1000 * links.seconds / added:.1f} |",
        f"| ... of which descriptor votes | {1000 * votes.seconds / added:.1f} |",
        f"| ... of which geometric verification | {1000 * verify.seconds / added:.1f} |",
        f"| ... of which verifying again the other way round | "
        f"{1000 * reverse.seconds / added:.1f} |",
        f"| ... of which the tiles' search (their features, votes and verification; "
        f"{tiles.calls} images) | {1000 * tiles.seconds / added:.1f} |",
        f"| verifications run (all images) | {verify.calls} |",
        f"| candidates verified again the other way round (all images) | {reverse.returned} |",
        f"| links found | {summary.links_added} |",
    ]
    lines += ["", _split_line(files, cpu_split(files))]
    return emit(lines, args.md)


def _split_line(files: list[Path], split: dict[str, float]) -> str:
    return (f"A robust ingest of the same files with one worker on two cores: "
            f"{len(files) / split['wall']:.0f} images/s; CPU per image, the parent "
            f"(linking and writing) {1000 * split['parent']:.1f} ms, the worker "
            f"(analysis) {1000 * split['worker']:.1f} ms.")


if __name__ == "__main__":
    sys.exit(main())
