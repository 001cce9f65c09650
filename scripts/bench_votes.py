"""The robust tier's descriptor-vote search at large collections, from real features.

A collection of N images is made of the dev set's 194 references (their real
ORB descriptors, the strongest :data:`imgmatch.descriptors.PER_IMAGE` each)
among N - 194 synthetic images. A synthetic image is 128 descriptors drawn
from the real descriptors of the second set's references (another set of
pictures), each with 0 to 24 of its 256 bits flipped: distractors spread
over descriptor space the way real ones are, clumps included (at a million
images each real descriptor stands behind about 250 synthetic ones, like a
logo or an interface repeated across a crawl). The queries are the dev
set's positive queries, real reposts under the bench transforms, with
their mirrors, as ``imgmatch query`` searches them.

Reported per size: the first build on every core (the first search places
every row: it samples the vocabulary and fills the posting lists), reopening the saved
index and searching once, one vote search's latency on one thread (p50,
p99), the latency of the robust tier's part of a whole query (the votes,
then geometric verification of the candidates, :func:`full_queries`), for
the image alone and with its 5 tiles as ``imgmatch query`` searches them,
how often the reference is the most voted and among the 8 most voted
(the candidates a query verifies) with 3 votes or more, and the bytes per
image held in memory (the reopened index, its full codes memory-mapped; the
exact scan holds them, and FAISS a copy). ``--exact`` runs the exact scan of full codes on the
same collection, as the baseline (small sizes only: its search grows with
the collection), and ``--cells`` the inverted file over full codes that
serves collections below :data:`imgmatch.descriptors.COMPACT_ROWS` (small
sizes only: its first build grows as rows x sqrt(rows)). ``words`` is the
compact inverted file, forced at every size.

``--settings`` and ``--probes`` show how the compact file's settings were
chosen, on the fit half of the second set only.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import emit, ensure_dev_corpus  # noqa: E402
from bench_sets import ensure as ensure_second  # noqa: E402

from imgmatch import descriptors  # noqa: E402
from imgmatch import match  # noqa: E402
from imgmatch.features import (DESCRIPTOR_BYTES, MAX_FEATURES, SIDE, balanced,  # noqa: E402
                               LocalFeatures, extract_both, tiles)

#: Most bits flipped in a synthetic image's descriptor.
MAX_FLIPS = 24
#: Rows made at a time (bounds the generator's memory).
CHUNK = 1 << 20


def _features(path: str) -> tuple[LocalFeatures, LocalFeatures]:
    from PIL import Image

    with Image.open(path) as im:
        grey = np.asarray(im.convert("L"))
    return extract_both(grey)


def _views(path: str) -> list[tuple[LocalFeatures, LocalFeatures]]:
    """What ``imgmatch query`` searches with: the image and its mirror, then its tiles."""
    from PIL import Image

    with Image.open(path) as im:
        grey = np.asarray(im.convert("L"))
    return [extract_both(grey)] + [extract_both(tile) for tile in tiles(grey)]


def _extract(paths: list[str], views: bool = False) -> list:
    with Pool(2) as pool:
        return pool.map(_views if views else _features, paths, chunksize=16)


def real_features(dev: Path, second: Path) -> dict:
    """The dev references and positive queries (each with its tiles' features),
    and the second set's descriptor pool."""
    refs = list(csv.DictReader(open(dev / "references.csv")))
    queries = [q for q in csv.DictReader(open(dev / "queries.csv")) if q["is_negative"] == "0"]
    pool_refs = list(csv.DictReader(open(second / "references.csv")))
    ref_feats = [f[0] for f in _extract([str(dev / r["file"]) for r in refs])]
    views = _extract([str(dev / q["file"]) for q in queries], views=True)
    pool = np.concatenate([f[0].descriptors
                           for f in _extract([str(second / r["file"]) for r in pool_refs])])
    number = {r["reference_id"]: n for n, r in enumerate(refs)}
    return {"refs": [f.descriptors[balanced(f, descriptors.PER_IMAGE)] for f in ref_feats],
            "ref_blobs": [f.to_bytes() for f in ref_feats],
            "queries": [(v[0][0], v[0][1]) for v in views],
            "views": views, "truth": [number[q["reference_id"]] for q in queries],
            "pool": pool}


def synthetic(rng: np.random.Generator, pool: np.ndarray, rows: int) -> np.ndarray:
    """Rows drawn from the pool, each with 0 to MAX_FLIPS random bits flipped."""
    out = np.empty((rows, DESCRIPTOR_BYTES), np.uint8)
    for at in range(0, rows, CHUNK):
        n = min(CHUNK, rows - at)
        codes = pool[rng.integers(0, len(pool), n)]
        flips = rng.integers(0, MAX_FLIPS + 1, n)
        every = np.arange(n)
        for k in range(MAX_FLIPS):
            bit = rng.integers(0, 256, n)
            on = flips > k  # row gets its k-th flip (a repeated bit flips back: near enough)
            codes[every[on], bit[on] // 8] ^= (1 << (bit[on] % 8)).astype(np.uint8)
        out[at:at + n] = codes
    return out


def collection(rng: np.random.Generator, pool: np.ndarray, refs: list[np.ndarray],
               fillers: int) -> tuple[descriptors.DescriptorIndex, float]:
    """``fillers`` synthetic images (ids 1 to ``fillers``), then the references,
    in a vote index built on every core with the descriptors module's
    current settings; and the seconds the build (the first search) took.
    Searches after it run on one thread."""
    per = descriptors.PER_IMAGE
    index = descriptors.DescriptorIndex(
        np.concatenate([synthetic(rng, pool, fillers * per)] + refs),
        np.concatenate([np.repeat(np.arange(1, fillers + 1, dtype=np.int64), per)]
                       + [np.full(len(r), fillers + 1 + n, np.int64)
                          for n, r in enumerate(refs)]))
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    t = time.perf_counter()
    index.candidates([features_of(refs[0][:1])], 1)  # places every row
    build = time.perf_counter() - t
    faiss.omp_set_num_threads(1)
    return index, build


def features_of(codes: np.ndarray | LocalFeatures) -> LocalFeatures:
    """Features as they are (a real image's: their positions choose the rows
    that vote, :func:`imgmatch.features.balanced`), or codes without
    positions (a synthetic image's: taken in their order)."""
    if isinstance(codes, LocalFeatures):
        return codes
    return LocalFeatures(np.zeros((len(codes), 2), np.float32), codes, 512, 512)


def forced_compact(rows: int = 4096) -> int:
    """A COMPACT_ROWS that puts the compact file in use from about ``rows``
    while keeping the real threshold's sampling points (COMPACT_ROWS x
    REBUILD_GROWTH ** k, see ``descriptors._sample_point``): past the real
    threshold the words are sampled from the same rows as in use."""
    threshold = descriptors.COMPACT_ROWS
    while threshold > rows:
        threshold //= descriptors.REBUILD_GROWTH
    return max(1, threshold)


#: The structures compared: (IVF_ROWS, COMPACT_ROWS) that force each.
STRUCTURES = {"exact": (1 << 62, 1 << 62), "cells": (4096, 1 << 62),
              "words": (4096, forced_compact())}


def run(data: dict, images: int, queries: int, search: str) -> dict:
    rng = np.random.default_rng(images)
    fillers = images - len(data["refs"])
    saved = descriptors.IVF_ROWS, descriptors.COMPACT_ROWS
    descriptors.IVF_ROWS, descriptors.COMPACT_ROWS = STRUCTURES[search]
    try:
        index, build = collection(rng, data["pool"], data["refs"], fillers)
        rows = index.rows  # the references keep up to PER_IMAGE each, some fewer
        chosen = rng.choice(len(data["queries"]), min(queries, len(data["queries"])),
                            replace=False)
        times, first, top8 = [], 0, 0
        for q in chosen:
            plain, mirror = data["queries"][q]
            target = fillers + 1 + data["truth"][q]
            t = time.perf_counter()
            found = index.candidates([features_of(plain), features_of(mirror)], 8)
            times.append(time.perf_counter() - t)
            voted = [i for i, votes in found if votes >= 3]
            first += bool(voted) and voted[0] == target
            top8 += target in voted
        times.sort()
        # the exact scan's full queries would take hours: it is the recall baseline
        whole, tiled = ([float("nan")], [float("nan")]) if search == "exact" \
            else full_queries(index, data, chosen, fillers)
        memory = index.memory_bytes()
        reopen = float("nan")
        if search != "exact":
            with tempfile.TemporaryDirectory() as tmp:
                descriptors.save(index, Path(tmp) / "votes", collection_id="bench",
                                 deletions=0, images=images)
                del index
                t = time.perf_counter()
                back, _ = descriptors.load(Path(tmp) / "votes", collection_id="bench")
                back.candidates([features_of(data["refs"][0][:1])], 1)
                reopen = time.perf_counter() - t
                memory = back.memory_bytes()  # its codes memory-mapped, as a service holds it
                del back
    finally:
        descriptors.IVF_ROWS, descriptors.COMPACT_ROWS = saved
    n = len(chosen)
    return {"images": images, "rows": rows, "search": search,
            "build_s": build, "reopen_s": reopen,
            "p50_ms": _ms(times, 0.5), "p99_ms": _ms(times, 0.99),
            "whole_p50_ms": _ms(whole, 0.5), "whole_p99_ms": _ms(whole, 0.99),
            "tiled_p50_ms": _ms(tiled, 0.5), "tiled_p99_ms": _ms(tiled, 0.99),
            "first": first / n, "top8": top8 / n, "memory_b_per_image": memory / images}


def _ms(times: list[float], share: float) -> float:
    """The ``share`` quantile of sorted seconds, in milliseconds."""
    return 1000 * times[min(len(times) - 1, int(len(times) * share))]


class _Blobs:
    """The catalog's part in a query's verification: each candidate's stored
    local features (:meth:`imgmatch.catalog.Catalog.features_of`), made on
    first use (:func:`stored_blob`); ``making`` is the time that took."""

    def __init__(self, index: descriptors.DescriptorIndex, data: dict, fillers: int) -> None:
        self.index, self.data, self.fillers = index, data, fillers
        self.blobs: dict[int, bytes] = {}
        self.making = 0.0
        #: keypoints of each reference's stored features, as the catalog counts them
        self.counts = [len(LocalFeatures.from_bytes(b)) for b in data["ref_blobs"]]

    def features_of(self, ids: list[int]) -> dict[int, bytes]:
        t = time.perf_counter()
        for i in ids:
            if i not in self.blobs:
                self.blobs[i] = stored_blob(self.index, i, self.data["pool"], self.fillers,
                                            self.data["ref_blobs"])
        self.making += time.perf_counter() - t
        return {i: self.blobs[i] for i in ids}

    def with_features(self, ids, at_least: int = 1) -> set[int]:
        """The images with at least ``at_least`` keypoints (a synthetic image
        has :data:`MAX_FEATURES`; a reference, its real count)."""
        return {i for i in ids if i <= self.fillers
                or self.counts[i - self.fillers - 1] >= at_least}


def stored_blob(index: descriptors.DescriptorIndex, image_id: int, pool: np.ndarray,
                fillers: int, ref_blobs: list[bytes]) -> bytes:
    """An image's stored features as the catalog keeps them. A synthetic
    image's: its indexed descriptors, then more drawn like them up to ORB's
    500, at random points (so its verification matches as many descriptors
    as a real one's)."""
    if image_id > fillers:
        return ref_blobs[image_id - fillers - 1]
    per = descriptors.PER_IMAGE
    rng = np.random.default_rng(image_id)
    codes = np.concatenate([np.asarray(index.codes[(image_id - 1) * per:image_id * per]),
                            synthetic(rng, pool, MAX_FEATURES - per)])
    points = rng.uniform(0, SIDE, (MAX_FEATURES, 2)).astype(np.float32)
    return LocalFeatures(points, codes, SIDE, SIDE).to_bytes()


def full_queries(index: descriptors.DescriptorIndex, data: dict, chosen: np.ndarray,
                 fillers: int) -> tuple[list[float], list[float]]:
    """Seconds per query as ``imgmatch query`` spends them in the robust tier
    (its features given): each view's vote search (the image, then its 5
    tiles), and geometric verification of what they voted for
    (:func:`imgmatch.match.verify_candidates`, the stored features decoded
    from the catalog's blobs). Sorted; for the whole image alone, and with
    the tiles. Not counted: reading the blobs from the catalog, the hash
    lookups."""
    catalog = _Blobs(index, data, fillers)
    times: dict[int, list[float]] = {1: [], 6: []}
    for n_views, spent in times.items():
        for q in chosen:
            t, making = time.perf_counter(), catalog.making
            views = []
            for n, view in enumerate(data["views"][q][:n_views]):
                limit = match.VERIFY_FROM_DESCRIPTORS if n == 0 else match.VERIFY_PER_TILE
                voters = descriptors.VOTERS if n == 0 else match.TILE_VOTERS
                views.append((view, {i for i, votes in index.candidates(list(view), limit,
                                                                        voters=voters)
                                     if votes >= match.MIN_VOTES}))
            match.verify_candidates(catalog, views, {})  # type: ignore[arg-type]
            spent.append(time.perf_counter() - t - (catalog.making - making))
        spent.sort()
    return times[1], times[6]


#: The settings compared by ``--settings``: name, then descriptors' constants.
_WORDS = forced_compact()
SETTINGS = [
    ("exact scan", {"IVF_ROWS": 1 << 62, "COMPACT_ROWS": 1 << 62}),
    ("cells", {"COMPACT_ROWS": 1 << 62}),
    ("words: 32-bit signatures within 6; 2 roots per square root of the words, 1 searched, "
     "4 words (chosen)", {"COMPACT_ROWS": _WORDS}),
    ("words: 1 root per square root of the words, 2 searched, 4 words (before)",
     {"COMPACT_ROWS": _WORDS, "ROOTS": 1.0, "PROBE_ROOTS": 2}),
    ("words: 1 root per square root of the words, 4 searched, 8 words",
     {"COMPACT_ROWS": _WORDS, "ROOTS": 1.0, "PROBE_ROOTS": 4, "PROBE_WORDS": 8}),
    ("words: within 8 bits; 1 root per square root, 4 searched, 8 words",
     {"COMPACT_ROWS": _WORDS, "SIGNATURE_DISTANCE": 8, "ROOTS": 1.0, "PROBE_ROOTS": 4,
      "PROBE_WORDS": 8}),
    ("words: 64-bit signatures within 12; 1 root per square root, 4 searched, 8 words",
     {"COMPACT_ROWS": _WORDS, "SIGNATURE_BITS": 64, "SIGNATURE_DISTANCE": 12, "ROOTS": 1.0,
      "PROBE_ROOTS": 4, "PROBE_WORDS": 8}),
]


def settings_table(fit: Path, others: list[Path]) -> list[str]:
    """The compact file's settings on the fit half: its references (with
    other sets' references as distractors) and its positive queries; how
    often the reference is among the 8 most voted with 3 votes or more."""
    refs = list(csv.DictReader(open(fit / "references.csv")))
    queries = [q for q in csv.DictReader(open(fit / "queries.csv")) if q["is_negative"] == "0"]
    stored = [f[0] for f in _extract([str(fit / r["file"]) for r in refs])]
    for other in others:
        stored += [f[0] for f in _extract([str(other / r["file"]) for r in
                                           csv.DictReader(open(other / "references.csv"))])]
    asked = list(_extract([str(fit / q["file"]) for q in queries]))
    number = {r["reference_id"]: n + 1 for n, r in enumerate(refs)}
    truth = [number[q["reference_id"]] for q in queries]
    lines = ["| setting | reference among the 8 most voted | vote search ms (mean) |",
             "|---|---|---|"]
    for name, changes in SETTINGS:
        saved = {k: getattr(descriptors, k) for k in changes}
        for k, v in changes.items():
            setattr(descriptors, k, v)
        try:
            index = descriptors.DescriptorIndex()
            for n, found_features in enumerate(stored, start=1):
                index.add(n, found_features)
            index.candidates([features_of(stored[0].descriptors[:1])], 1)  # places every row
            found, t = 0, time.perf_counter()
            for (plain, mirror), target in zip(asked, truth):
                voted = index.candidates([features_of(plain), features_of(mirror)], 8)
                found += target in [i for i, votes in voted if votes >= 3]
            ms = 1000 * (time.perf_counter() - t) / len(asked)
        finally:
            for k, v in saved.items():
                setattr(descriptors, k, v)
        lines.append(f"| {name} | {found / len(asked):.3f} | {ms:.1f} |")
        print(lines[-1], file=sys.stderr)
    print(f"{index.rows:,} rows, {len(stored)} images, {len(asked)} queries", file=sys.stderr)
    return lines


#: The query-time settings compared by ``--probes``: (roots searched, words
#: probed, margin: a probed word is skipped when farther than this many bits
#: beyond the row's nearest; None: never).
PROBES: list[tuple[int, int, int | None]] = [
    (4, 8, None), (2, 8, None), (4, 4, None), (2, 4, None), (1, 4, None), (1, 8, None),
    (1, 4, 4), (1, 4, 2), (1, 4, 1)]


def _probe(spec: str) -> tuple[int, int, int | None]:
    """'1x4' (roots searched x words probed), or '1x4+2' (with a margin of 2 bits)."""
    head, _, margin = spec.partition("+")
    roots, words = (int(n) for n in head.split("x"))
    return roots, words, int(margin) if margin else None


def _probe_name(probe: tuple[int, int, int | None]) -> str:
    roots, words, margin = probe
    return f"{roots}x{words}" + (f"+{margin}" if margin is not None else "")


def probes_table(fit: Path, others: list[Path], images: int, queries: int,
                 roots: list[float], probes: list[tuple[int, int, int | None]]) -> list[str]:
    """The compact file's probes at scale, on the fit half: its references
    among ``images`` - 558 synthetic images drawn (like :func:`run`'s) from
    the descriptors of other sets' references, never the fit half's; its
    positive queries. One build per vocabulary (``roots``: roots per square
    root of the words, :data:`imgmatch.descriptors.ROOTS`); each setting of
    ``probes`` searches it."""
    refs = list(csv.DictReader(open(fit / "references.csv")))
    asked_rows = [q for q in csv.DictReader(open(fit / "queries.csv"))
                  if q["is_negative"] == "0"]
    stored = [f[0].descriptors[balanced(f[0], descriptors.PER_IMAGE)]
              for f in _extract([str(fit / r["file"]) for r in refs])]
    pool = np.concatenate([f[0].descriptors for other in others for f in _extract(
        [str(other / r["file"]) for r in csv.DictReader(open(other / "references.csv"))])])
    rng = np.random.default_rng(images)
    chosen = rng.choice(len(asked_rows), min(queries, len(asked_rows)), replace=False)
    asked = [(a, b) for a, b in _extract([str(fit / asked_rows[q]["file"]) for q in chosen])]
    number = {r["reference_id"]: n for n, r in enumerate(refs)}
    fillers = images - len(stored)
    truth = [fillers + 1 + number[asked_rows[q]["reference_id"]] for q in chosen]
    saved = (descriptors.COMPACT_ROWS, descriptors.ROOTS, descriptors.PROBE_ROOTS,
             descriptors.PROBE_WORDS, descriptors.PROBE_MARGIN)
    descriptors.COMPACT_ROWS = forced_compact()
    lines = [f"| roots (per square root of the words) | roots searched, words probed "
             f"| margin (bits) | entries scanned per search (mean) "
             f"| reference among the 8 most voted | vote p50 / p99 ms ({images:,} images) "
             f"| first build s |", "|---|---|---|---|---|---|---|"]
    try:
        for root in roots:
            descriptors.ROOTS = root
            # the same collection for every vocabulary
            index, build = collection(copy.deepcopy(rng), pool, stored, fillers)
            for probe_roots, words, margin in probes:
                descriptors.PROBE_ROOTS, descriptors.PROBE_WORDS = probe_roots, words
                descriptors.PROBE_MARGIN = margin
                found, times = 0, []
                for (plain, mirror), target in zip(asked, truth):
                    t = time.perf_counter()
                    voted = index.candidates([features_of(plain), features_of(mirror)], 8)
                    times.append(time.perf_counter() - t)
                    found += target in [i for i, votes in voted if votes >= 3]
                times.sort()
                scanned = np.mean([index.scanned([features_of(plain), features_of(mirror)])
                                   for plain, mirror in asked[:200]])
                lines.append(f"| {root:g} ({len(index.roots):,}) | {probe_roots}, {words} "
                             f"| {'-' if margin is None else margin} | {scanned:,.0f} "
                             f"| {found / len(asked):.3f} "
                             f"| {_ms(times, 0.5):.1f} / {_ms(times, 0.99):.1f} | {build:.0f} |")
                print(lines[-1], file=sys.stderr)
            del index
    finally:
        (descriptors.COMPACT_ROWS, descriptors.ROOTS, descriptors.PROBE_ROOTS,
         descriptors.PROBE_WORDS, descriptors.PROBE_MARGIN) = saved
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1e3,1e4,1e5,1e6")
    ap.add_argument("--exact", default="1e3,1e4",
                    help="sizes also searched exactly, as the baseline ('' for none)")
    ap.add_argument("--cells", default="1e3,1e4",
                    help="sizes also searched with the inverted file over full codes, the "
                         "structure below COMPACT_ROWS ('' for none)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--settings", action="store_true",
                    help="instead, compare the compact file's settings on the fit half of "
                         "the second set (the check half's and the dev set's references as "
                         "distractors): how they were chosen")
    ap.add_argument("--probes", default="",
                    help="instead, compare the roots searched and words probed at this many "
                         "images, on the fit half (other sets' descriptors as distractors)")
    ap.add_argument("--roots", default="",
                    help="with --probes: the vocabularies compared, as roots per square root "
                         "of the words (comma-separated; default: the library's)")
    ap.add_argument("--probe-list", default="",
                    help="with --probes: the (roots searched, words probed, margin) "
                         "compared, as '2x4,1x4+2' (default: "
                         + ",".join(_probe_name(p) for p in PROBES) + ")")
    ap.add_argument("--md", type=Path)
    args = ap.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(1)
    if args.probes:
        roots = [float(r) for r in args.roots.split(",")] if args.roots \
            else [descriptors.ROOTS]
        probes = [_probe(p) for p in args.probe_list.split(",")] if args.probe_list \
            else PROBES
        return emit(probes_table(ensure_second("fit"), [ensure_second("check"),
                                                        ensure_dev_corpus()],
                                 int(float(args.probes)), args.queries, roots, probes), args.md)
    if args.settings:
        return emit(settings_table(ensure_second("fit"), [ensure_second("check"),
                                                          ensure_dev_corpus()]), args.md)
    data = real_features(ensure_dev_corpus(), ensure_second())
    print(f"{len(data['refs'])} references, {len(data['queries'])} queries, "
          f"{len(data['pool']):,} pool descriptors", file=sys.stderr)
    exact = {int(float(s)) for s in args.exact.split(",") if s}
    cells = {int(float(s)) for s in args.cells.split(",") if s}
    lines = ["| images | descriptors | search | first build s | reopen s | vote p50 / p99 ms "
             "| query with verification p50 / p99 ms | with tiles p50 / p99 ms "
             "| reference most voted | among the 8 most voted | memory B/img |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for size in (int(float(s)) for s in args.sizes.split(",")):
        searches = [n for n, on in (("exact", size in exact), ("cells", size in cells),
                                    ("words", True)) if on]
        for search in searches:
            r = run(data, size, args.queries, search)
            print(r, file=sys.stderr)
            lines.append(f"| {r['images']:,} | {r['rows']:,} | {r['search']} "
                         f"| {r['build_s']:.1f} | {r['reopen_s']:.1f} "
                         f"| {r['p50_ms']:.1f} / {r['p99_ms']:.1f} "
                         f"| {r['whole_p50_ms']:.1f} / {r['whole_p99_ms']:.1f} "
                         f"| {r['tiled_p50_ms']:.1f} / {r['tiled_p99_ms']:.1f} | {r['first']:.3f} "
                         f"| {r['top8']:.3f} | {r['memory_b_per_image']:,.0f} |")
    return emit(lines, args.md)


if __name__ == "__main__":
    sys.exit(main())
