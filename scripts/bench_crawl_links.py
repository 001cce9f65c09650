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
  the robust model dropped show here first;
- why those images have no right link (``--why``): each is compared with
  every other image of its picture as ``imgmatch explain`` compares two
  images, and its best pair says where the link was lost: it scores a link
  but was never put forward for verification at ingest (the candidates'
  budget), or it scores under the match score, capped by a named rule or
  weighed down by the model (with the inliers its verification found), by
  the kind of picture (the reference's ``kind``);
- the same links clustered again with other values of a constant of
  ``imgmatch.cluster`` (``--recluster ATTACH_SCORE=0.5,0.65``): settings
  of the clustering compared on one ingest, without its noise between runs.

``--fixed-batches N`` ingests in this process (``--workers 0``) in batches
of N images that end by size alone, never by time: the same engine then
makes the same links run after run, where the default ingest's batches end
where the workers' pace puts them and move a few links (±0.002 of recall
between runs). Two engines, or two settings, compared this way differ by
what they do, not by where batches ended; the default ingest is still what
a user runs.

``--set MODULE.NAME=VALUE`` changes a constant of ``imgmatch.MODULE``
(``match``, ``descriptors``, ``features``, ``evidence``, ``cluster``) in
the crawl's CLI (``--set match.LINK_VERIFY=8``), to compare a setting with
the default on the same crawl.

The set defaults to the fit half of the second set: this is a diagnostic
for choosing what to change, not a held-out figure.
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from imgmatch import Explanation

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import emit, shared_bench, wrapped_cli  # noqa: E402
from bench_sets import ensure  # noqa: E402


#: A batch's age at which it is written, for ``--fixed-batches``: never
#: (a literal the CLI's wrapper can write; infinity's repr is not one).
FOREVER = 1e12

def fixed_batches(size: int, changed: dict[tuple[str, str], object]) -> list[str]:
    """The ingest's arguments for ``--fixed-batches``, and (in ``changed``)
    the setting that ends batches by size alone."""
    changed[("ingest", "FLUSH_SECONDS")] = FOREVER
    return ["--workers=0", f"--batch-size={size}"]


#: The modules whose constants ``--set`` may change.
SETTABLE = ("match", "descriptors", "features", "evidence", "cluster")


def settings(items: list[str]) -> dict[tuple[str, str], object]:
    """``--set`` items as {(module, name): value}; ValueError names a bad one."""
    import importlib

    out: dict[tuple[str, str], object] = {}
    for item in items:
        key, _, text = item.partition("=")
        module, _, name = key.partition(".")
        if module not in SETTABLE or not hasattr(importlib.import_module(f"imgmatch.{module}"),
                                                 name):
            raise ValueError(f"--set {item}: not a constant of imgmatch.{'/'.join(SETTABLE)}")
        try:
            out[(module, name)] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"--set {item}: the value must be a Python literal (8, 0.5, None)")
    return out


def crawl(data: Path, work: Path, ingest_args: list[str],
          changed: dict[tuple[str, str], object] | None = None) -> dict:
    exe = wrapped_cli(work, changed or {})
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


def reference_kinds(data: Path) -> dict[str, str]:
    """Each picture's kind, by its truth label in the crawl (``picture:ID``):
    a reference's, or the source kind of the negatives drawn from a picture
    that is not among the references."""
    out = {f"picture:{row['negative_source_id']}": row["source_kind"]
           for row in csv.DictReader(open(data / "queries.csv")) if row["is_negative"] == "1"}
    out.update({f"picture:{row['reference_id']}": row["kind"]
                for row in csv.DictReader(open(data / "references.csv"))})
    return out


def why_unlinked(work: Path, truth: dict[str, str], lonely_images: list[str],
                 kinds: dict[str, str]) -> Counter:
    """(cause, kind) of each image without a right link, from its best pair
    with another image of its picture (see the module's docstring)."""
    from imgmatch import Collection, ImgmatchError
    from imgmatch.match import MATCH_SCORE

    by_label: dict[str, list[str]] = {}
    for digest, label in truth.items():
        if label:
            by_label.setdefault(label, []).append(digest)
    out: Counter = Counter()
    with Collection.open(work / "case.db") as collection:
        for digest in lonely_images:
            best = None
            for other in by_label[truth[digest]]:
                if other == digest:
                    continue
                try:
                    found = collection.explain(digest, other)
                except ImgmatchError:  # nothing to compare (a failed decode)
                    continue
                if best is None or found.score > best.score:
                    best = found
            out[(cause(best, MATCH_SCORE), kinds.get(truth[digest], "?"))] += 1
    return out


#: Inliers from which a pair's verification counts as geometry found (the
#: support from which local features agree, :data:`imgmatch.evidence.AGREED_SUPPORT`).
FOUND_INLIERS = 20


def cause(best: Explanation | None, match_score: float) -> str:
    """Where the link of an image's best pair was lost (``best``: an
    :class:`imgmatch.Explanation`, or None where no pair could be compared)."""
    if best is None:
        return "no pair to compare"
    if best.score >= match_score:
        return "scores a link: not put forward at ingest"
    if best.rules:
        return "under the match score: rule " + ", ".join(sorted(best.rules))
    inliers = (best.verification or {}).get("inliers") or 0
    if inliers >= FOUND_INLIERS:
        return f"under the match score: the model, {FOUND_INLIERS} inliers or more"
    return f"under the match score: the model, fewer than {FOUND_INLIERS} inliers"


#: Bands of link scores, as clusters use them (see :mod:`imgmatch.cluster`).
BANDS = ("strong: joins clusters", "a partial overlap's cap", "attaches a lone image",
         "a lead only")


def band(score: float) -> str:
    """Which of :data:`BANDS` a link's score falls in: from the cluster score,
    at the partial-link cap exactly, from the attach score, under it."""
    from imgmatch import cluster, match

    if score >= cluster.STRONG_SCORE:
        return BANDS[0]
    if score == match.PARTIAL_LINK_CAP:
        return BANDS[1]
    return BANDS[2] if score >= cluster.ATTACH_SCORE else BANDS[3]


def link_bands(links: list[tuple[int, int, float]], sha: dict[int, str],
               truth: dict[str, str], kind: dict[str, str]) -> dict[str, Counter]:
    """Per band of score: the links joining images of one picture (right),
    the others (wrong), and the wrong ones with a collage or a screenshot on
    either side. The set labels a collage or a screenshot by one picture, so
    its links to the other photos it shows count as wrong: reuse of a part,
    which the report keeps as leads (weak links)."""
    out: dict[str, Counter] = {name: Counter() for name in BANDS}
    for a, b, score in links:
        got = out[band(score)]
        right = bool(truth.get(sha[a])) and truth.get(sha[a]) == truth.get(sha[b])
        got["right" if right else "wrong"] += 1
        if not right and {kind.get(sha[a]), kind.get(sha[b])} & {"collage", "screenshot"}:
            got["wrong, a collage or screenshot"] += 1
    return out


def analyse(data: Path, work: Path, why: bool = False
            ) -> tuple[dict, Counter, Counter, int, int, int, Counter, dict[str, Counter]]:
    import crawl_eval

    from imgmatch import cluster, match
    from imgmatch.catalog import Catalog
    from imgmatch.pairs import near_pairs
    from imgmatch.signals import get

    truth = crawl_eval.build_manifest(data, work / "crawl.jsonl")
    with Catalog.open(work / "case.db", readonly=True) as catalog:
        sha = dict(catalog.conn.execute("SELECT id, sha256 FROM images"))
        scored = catalog.conn.execute("SELECT a, b, score FROM links").fetchall()
        links = [(a, b) for a, b, _ in scored]
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
        lonely_images = []
        for digest, label in truth.items():
            if label and seen[label] > 1:
                images[kind.get(digest, "?")] += 1
                lonely[kind.get(digest, "?")] += digest not in linked
                if digest not in linked:
                    lonely_images.append(digest)
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
    causes = why_unlinked(work, truth, lonely_images, reference_kinds(data)) if why else Counter()
    bands = link_bands(scored, sha, truth, kind)
    return bound, images, lonely, unlinked, by_hashes, len(close), causes, bands


def recluster_settings(items: list[str]) -> list[tuple[str, list[str]]]:
    """``--recluster`` items as (name, value texts); ValueError names a bad one."""
    from imgmatch import cluster

    out = []
    for item in items:
        name, _, texts = item.partition("=")
        try:
            if not hasattr(cluster, name) or not texts:
                raise ValueError
            for text in texts.split(","):
                ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"--recluster {item}: not NAME=V1,V2 (Python literals) of a "
                             "constant of imgmatch.cluster") from None
        out.append((name, texts.split(",")))
    return out


def reclustered(data: Path, work: Path, items: list[tuple[str, list[str]]]) -> list[str]:
    """Table rows: the crawl's stored links clustered again with each value of
    a constant of :mod:`imgmatch.cluster` (``--recluster NAME=V1,V2``), scored
    like the report's clusters. The links stay those of the one ingest, so the
    values are compared without the ingest's noise between runs."""
    import crawl_eval

    from imgmatch import cluster, match
    from imgmatch.catalog import Catalog

    truth = crawl_eval.build_manifest(data, work / "crawl.jsonl")
    with Catalog.open(work / "case.db", readonly=True) as catalog:
        sha = dict(catalog.conn.execute("SELECT id, sha256 FROM images"))
        links = catalog.conn.execute(
            "SELECT a, b, score FROM links WHERE score >= ?", (match.MATCH_SCORE,)).fetchall()
        regions = catalog.link_regions()
    rows = []
    for name, texts in items:
        kept = getattr(cluster, name)
        try:
            for text in texts:
                setattr(cluster, name, ast.literal_eval(text))
                groups = cluster.guarded_groups(sha, ((a, b, s, ()) for a, b, s in links),
                                                regions)
                score = crawl_eval.score_clusters(
                    [{"images": [{"sha256": sha[i]} for i in g]} for g in groups if len(g) > 1],
                    truth)
                rows.append(f"| {name} = {text} | {score['bcubed_precision']:.4f} | "
                            f"{score['bcubed_recall']:.4f} | {score['false_merges']} "
                            f"| {score['largest_false_merge']} |")
        finally:
            setattr(cluster, name, kept)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="a set in ../shared/bench's layout "
                    "(default: the fit half of the second set)")
    ap.add_argument("--ingest-arg", action="append", default=[],
                    help="an argument of the crawl's ingest (repeat; --ingest-arg=--fast)")
    ap.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=VALUE",
                    help="a constant of imgmatch.MODULE to change in the crawl's CLI "
                         "(repeat; --set match.LINK_VERIFY=8)")
    ap.add_argument("--why", action="store_true",
                    help="also say why each image without a right link has none")
    ap.add_argument("--recluster", action="append", default=[], metavar="NAME=V1,V2",
                    help="also cluster the crawl's links again with each value of a "
                         "constant of imgmatch.cluster (repeat; --recluster "
                         "ATTACH_SCORE=0.5,0.65)")
    ap.add_argument("--md", type=Path, help="also write the Markdown tables here")
    ap.add_argument("--fixed-batches", type=int, metavar="N",
                    help="ingest in this process, in batches of N images ended by size "
                         "alone: the same links every run")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="keep the crawl (its catalog case.db, crawl.jsonl and report) in "
                         "DIR, a new directory, to look into afterwards")
    args = ap.parse_args(argv)
    if args.keep is not None and args.keep.exists():
        ap.error(f"--keep {args.keep}: exists already; name a new directory")
    try:
        changed = settings(args.set)
        again_with = recluster_settings(args.recluster)
    except ValueError as exc:
        ap.error(str(exc))
    import importlib
    for (module, name), value in changed.items():  # here too: --why compares pairs
        setattr(importlib.import_module(f"imgmatch.{module}"), name, value)
    if args.fixed_batches is not None:
        if args.fixed_batches < 1:
            ap.error("--fixed-batches: at least 1")
        args.ingest_arg += fixed_batches(args.fixed_batches, changed)
    data = args.data or ensure("fit")
    sys.path.insert(0, str(shared_bench()))
    with tempfile.TemporaryDirectory(prefix="imgmatch-crawl-links-") as tmp:
        work = Path(tmp)
        if args.keep is not None:
            args.keep.mkdir(parents=True)
            work = args.keep
        report = crawl(data, work, args.ingest_arg, changed)
        bound, images, lonely, unlinked, by_hashes, close, causes, bands = analyse(
            data, work, args.why)
        again = reclustered(data, work, again_with)
    ingest = " ".join(args.ingest_arg + [f"(with {s})" for s in args.set]) or "the default"
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
    lines += ["", "The links by score, as clusters use them (wrong: the set gives the two "
              "images different pictures; a collage or screenshot is given one picture, so "
              "its links to the other photos it shows count here):", "",
              "| band | right | wrong | wrong, a collage or screenshot |", "|---|---|---|---|"]
    lines += [f"| {name} | {got['right']} | {got['wrong']} | "
              f"{got['wrong, a collage or screenshot']} |" for name, got in bands.items()]
    if again:
        lines += ["", "The same links clustered again:", "",
                  "| setting | B-cubed precision | B-cubed recall | clusters mixing pictures "
                  "| the largest of them (images) |",
                  "|---|---|---|---|---|", *again]
    if args.why:
        kinds = sorted({k for _, k in causes}, key=lambda k: (-sum(
            n for (_, kk), n in causes.items() if kk == k), k))
        lines += ["", "Why (each image's best pair with another image of its picture, "
                  "compared as `imgmatch explain` compares them), by the picture's kind:", "",
                  "| cause | all | " + " | ".join(kinds) + " |",
                  "|---|---|" + "---|" * len(kinds)]
        for why in sorted({c for c, _ in causes}, key=lambda c: (-sum(
                n for (cc, _), n in causes.items() if cc == c), c)):
            lines.append(f"| {why} | {sum(n for (c, _), n in causes.items() if c == why)} | "
                         + " | ".join(str(causes[(why, k)]) for k in kinds) + " |")
    return emit(lines, args.md)


if __name__ == "__main__":
    sys.exit(main())
