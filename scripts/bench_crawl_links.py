"""Where a simulated crawl's recall goes: links never made, or clusters not built.

``../shared/bench/crawl_eval.py`` turns a set into a crawl (every image an ad)
and scores the report's clusters (B-cubed). This runs it through the CLI's
ingest (``--ingest-arg`` as crawl_eval takes them), then reads the links the
ingest made against the crawl's truth:

- the report's clusters, and the bound of a perfect clustering of the right
  links alone (links joining images of one picture, as connected components):
  the recall past that bound can only come from links ingest did not make;
- per repost family, the images of pictures seen twice or more that have no
  right link at all;
- the pairs within PDQ's threshold (Meta's 31 bits) left without a link, and
  how many of those the hashes alone score at the match score or more
  (``imgmatch.match.score_pairs``, the link pass's scoring): exact copies
  the robust model dropped show here first.

The set defaults to the fit half of the second set: this is a diagnostic
for choosing what to change, not a held-out figure.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import emit, shared_bench  # noqa: E402
from bench_sets import ensure  # noqa: E402


def crawl(data: Path, work: Path, ingest_args: list[str]) -> dict:
    exe = Path(sys.executable).parent / "imgmatch"
    out = work / "crawl.json"
    subprocess.run([sys.executable, str(shared_bench() / "crawl_eval.py"), "--data", str(data),
                    "--exe", str(exe), "--json", str(out), "--work", str(work),
                    *(f"--ingest-arg={a}" for a in ingest_args)],
                   check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def families(data: Path) -> dict[str, str]:
    """Each image's repost family by SHA-256 (``reference`` for references)."""
    out = {}
    for name, column in (("references.csv", None), ("queries.csv", "family")):
        for row in csv.DictReader(open(data / name)):
            digest = hashlib.sha256((data / row["file"]).read_bytes()).hexdigest()
            out[digest] = row[column] if column else "reference"
    return out


def analyse(data: Path, work: Path) -> tuple[dict, Counter, Counter, int, int, int]:
    import crawl_eval

    from imgmatch import cluster, match
    from imgmatch.catalog import Catalog
    from imgmatch.pairs import near_pairs
    from imgmatch.signals import get

    truth = crawl_eval.build_manifest(data, work / "crawl.jsonl")
    with Catalog.open(work / "case.db", readonly=True) as catalog:
        sha = dict(catalog.conn.execute("SELECT id, sha256 FROM images"))
        links = catalog.conn.execute("SELECT a, b FROM links").fetchall()
        right = [(a, b) for a, b in links if truth.get(sha[a]) and
                 truth.get(sha[a]) == truth.get(sha[b])]
        groups = cluster.guarded_groups(sha, ((a, b, 1.0, ()) for a, b in right))
        bound = crawl_eval.score_clusters(
            [{"images": [{"sha256": sha[i]} for i in g]} for g in groups if len(g) > 1], truth)
        # images of a picture seen twice or more, and those with a right link
        seen = Counter(t for t in truth.values() if t)
        kind = families(data)
        linked = {sha[i] for pair in right for i in pair}
        images, lonely = Counter(), Counter()
        for digest, label in truth.items():
            if label and seen[label] > 1:
                images[kind.get(digest, "?")] += 1
                lonely[kind.get(digest, "?")] += digest not in linked
        rows = [(i, bytes(v)) for chunk in catalog.iter_signal("pdq") for i, v, _ in chunk]
        ids = np.array([i for i, _ in rows], dtype=np.int64)
        codes = np.frombuffer(b"".join(v for _, v in rows), np.uint8).reshape(len(rows), -1)
        close = near_pairs(codes, get("pdq").threshold)
        made = set(links)
        a, b = ids[close.i], ids[close.j]
        a, b = np.minimum(a, b), np.maximum(a, b)
        keep = np.array([(x, y) not in made for x, y in zip(a.tolist(), b.tolist())], bool)
        unlinked = int(keep.sum())
        by_hashes = sum(1 for _ in match.score_pairs(catalog, a[keep], b[keep]))
    return bound, images, lonely, unlinked, by_hashes, len(close)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="a set in ../shared/bench's layout "
                    "(default: the fit half of the second set)")
    ap.add_argument("--ingest-arg", action="append", default=[],
                    help="an argument of the crawl's ingest (repeat; --ingest-arg=--fast)")
    ap.add_argument("--md", type=Path, help="also write the Markdown tables here")
    args = ap.parse_args(argv)
    data = args.data or ensure("fit")
    sys.path.insert(0, str(shared_bench()))
    with tempfile.TemporaryDirectory(prefix="imgmatch-crawl-links-") as tmp:
        work = Path(tmp)
        report = crawl(data, work, args.ingest_arg)
        bound, images, lonely, unlinked, by_hashes, close = analyse(data, work)
    ingest = " ".join(args.ingest_arg) or "the default"
    lines = [f"**{data.name}**, ingest {ingest}:", "",
             "| clusters | B-cubed precision | B-cubed recall | clusters mixing pictures |",
             "|---|---|---|---|",
             f"| the report's | {report['bcubed_precision']:.4f} | {report['bcubed_recall']:.4f} "
             f"| {report['false_merges']} |",
             f"| the right links alone, as components (the bound) | "
             f"{bound['bcubed_precision']:.4f} | {bound['bcubed_recall']:.4f} | - |", "",
             f"Pairs within PDQ's threshold: {close}; left without a link: {unlinked}, of "
             f"which the hashes alone score {by_hashes} at the match score or more.", "",
             "| family | images of pictures seen twice or more | without a right link |",
             "|---|---|---|"]
    lines += [f"| {fam} | {images[fam]} | {lonely[fam]} |"
              for fam in sorted(images, key=lambda f: (-lonely[f], f))]
    return emit(lines, args.md)


if __name__ == "__main__":
    sys.exit(main())
