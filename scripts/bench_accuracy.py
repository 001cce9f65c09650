"""Matching accuracy on ../shared/bench, side by side with the PDQ baseline.

Each system is imgmatch's own library: the references are ingested into a
fresh collection, every query image is queried with ``min_score=0`` (so the
full ranking is scored), and ../shared/bench/score.py scores the predictions:
micro-average precision, recall at precision 0.99 and 0.90, recall per
transform family at the P99 threshold, and the share of negative queries
reaching it. The share of negatives at or above imgmatch's own match score
(0.5) is the false-alarm rate a user sees with the defaults.

Systems:
- ``pdq``: PDQ alone, with its 8 rotations and mirrors (the baseline);
- ``hashes``: the default hash tier (PDQ, pHash, dHash);
- ``robust``: the hash tier plus local features verified geometrically.

``--calibration`` also prints the score-to-precision table of each system
(the precision among all pooled predictions at or above each score).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import emit, ensure_dev_corpus, shared_bench, wrapped_cli  # noqa: E402
from bench_sets import ensure as ensure_second  # noqa: E402

SYSTEMS = {
    "pdq": {"signals": ("pdq",)},
    "hashes": {"signals": ("pdq", "phash", "dhash")},
    "robust": {"signals": ("pdq", "phash", "dhash", "orb")},
}


def load_scorer():
    spec = importlib.util.spec_from_file_location("bench_score", shared_bench() / "score.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_score"] = module
    spec.loader.exec_module(module)
    return module


class ImgmatchSystem:
    """score.py's system protocol over an imgmatch collection."""

    def __init__(self, signals: tuple[str, ...], workers: int = 1) -> None:
        self.signals = signals
        self.workers = workers
        self.tmp = tempfile.TemporaryDirectory(prefix="imgmatch-accuracy-")
        self.collection = None
        self.ref_of: dict[str, str] = {}
        self.query_ms: list[float] = []
        #: candidates per query (the scorer pools the top 10)
        self.top_k = 10
        #: per query file stem, the evidence of each returned match
        self.evidence: dict[str, list[dict]] = {}
        #: per query file stem, whether its tiles were searched (the whole
        #: image left it unexplained: :func:`imgmatch.match.explained`)
        self.tiled: dict[str, bool] = {}

    def index(self, reference_paths: list[str]) -> None:
        from imgmatch import Collection, Sighting

        self.reference_paths = list(reference_paths)

        self.collection = Collection.open(Path(self.tmp.name) / "bench.db")
        summary = self.collection.add_many(
            ((p, Sighting(source=p)) for p in reference_paths),
            signals=self.signals, workers=self.workers)
        if summary.failures:
            raise SystemExit(f"{len(summary.failures)} references failed: {summary.failures[:3]}")
        for sha, source in self.collection.catalog.conn.execute(
                "SELECT i.sha256, s.source FROM images i JOIN sightings s ON s.image_id = i.id"):
            self.ref_of[sha] = Path(source).stem

    def search(self, query_path: str) -> list[tuple[str, float]]:
        from imgmatch import features

        cut, view_boxes = [], features.view_boxes
        features.view_boxes = lambda grey, *args: cut.append(grey.shape) or view_boxes(grey, *args)
        try:
            t = time.perf_counter()
            matches = self.collection.query(query_path, top_k=self.top_k, min_score=0.0)
            self.query_ms.append((time.perf_counter() - t) * 1000)
        finally:
            features.view_boxes = view_boxes
        self.tiled[Path(query_path).stem] = bool(cut)
        self.evidence[Path(query_path).stem] = [
            {"reference": self.ref_of[m.sha256], "score": m.score, "distances": m.distances,
             "inliers": m.inliers, "agreed": list(m.agreed),
             "low_information": m.low_information, "evidence": m.evidence} for m in matches]
        return [(self.ref_of[m.sha256], m.score) for m in matches][:10]

    def memory_bytes(self) -> float:
        """Bytes per image of every index in memory (hash tables and descriptor votes),
        measured after the queries, when every structure has been built."""
        c = self.collection
        total = sum(index.memory_bytes() for index in c.indexes.values())
        if c.descriptors is not None:
            total += c.descriptors.memory_bytes()
        return total / max(c.catalog.counts()["images"], 1)

    def stored_bytes(self) -> float:
        """Bytes per image in the catalog file and the index folder together,
        at rest: the write-ahead log (up to 4 MB while a collection is open,
        gone when it closes) is copied back into the catalog and emptied
        first, so a small set's figure is not a log shared out over few images."""
        db = Path(self.tmp.name) / "bench.db"
        if db.exists():
            self.collection.catalog.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        total = sum(p.stat().st_size for p in Path(self.tmp.name).rglob("*") if p.is_file())
        images = self.collection.catalog.counts()["images"]
        return total / max(images, 1) if db.exists() else 0.0


def composites(dev: Path, out: Path, count: int) -> list[tuple[Path, str, list[str]]]:
    """Screenshots and collages the dev set lacks, made from its references (seeded):
    [(file, kind, reference ids inside)]. A screenshot puts one reference,
    cropped, in a phone's interface; a collage puts 2 to 4 in a grid."""
    import random

    from PIL import Image, ImageDraw, ImageOps

    rng = random.Random(20261129)
    refs = sorted((dev / "references").glob("*.jpg"))
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for n in range(count):
        if n % 2 == 0:
            ref = rng.choice(refs)
            photo = Image.open(ref).convert("RGB")
            keep = rng.uniform(0.7, 1.0)
            w, h = int(photo.width * keep), int(photo.height * keep)
            x, y = rng.randint(0, photo.width - w), rng.randint(0, photo.height - h)
            photo = ImageOps.contain(photo.crop((x, y, x + w, y + h)), (520, 640))
            page = Image.new("RGB", (540, 1080), rng.choice([(250, 250, 250), (18, 18, 18)]))
            draw = ImageDraw.Draw(page)
            draw.rectangle((0, 0, 540, 60), fill=(40, 40, 40))
            draw.text((16, 22), "9:41  4G  76%", fill="white")
            top = rng.randint(90, 200)
            page.paste(photo, ((540 - photo.width) // 2, top))
            draw.text((20, top + photo.height + 20), f"Call 555-{rng.randint(1000, 9999)} "
                      "new in town", fill=(0, 90, 200))
            draw.rectangle((20, 980, 520, 1040), fill=(0, 120, 255))
            made.append((out / f"screenshot_{n:03d}.jpg", "screenshot", [ref.stem]))
            image = page
        else:
            chosen = rng.sample(refs, rng.choice((2, 3, 4)))
            cols = 2
            rows = (len(chosen) + 1) // 2
            cell = rng.choice((300, 400))
            image = Image.new("RGB", (cols * cell, rows * cell), "white")
            for i, ref in enumerate(chosen):
                tile = ImageOps.fit(Image.open(ref).convert("RGB"), (cell - 6, cell - 6))
                image.paste(tile, ((i % cols) * cell + 3, (i // cols) * cell + 3))
            made.append((out / f"collage_{n:03d}.jpg", "collage", [r.stem for r in chosen]))
        image.save(made[-1][0], quality=rng.randint(70, 90))
    return made


def composite_recall(system: ImgmatchSystem, made) -> dict[str, dict]:
    """Per kind: share of the references inside found at >= 0.5, and wrong matches >= 0.5."""
    out: dict[str, dict] = {}
    for path, kind, inside in made:
        found = {ref for ref, score in system.search(str(path)) if score >= 0.5}
        row = out.setdefault(kind, {"queries": 0, "inside": 0, "found": 0, "wrong": 0})
        row["queries"] += 1
        row["inside"] += len(inside)
        row["found"] += len(found & set(inside))
        row["wrong"] += len(found - set(inside))
    return out


#: The families whose ingest-time links ``--ingest-links`` measures: a
#: screenshot or a collage should link, when it is catalogued, to the photo
#: it shows (the crawl's clusters leave collages out).
LINKED_FAMILIES = ("screenshot", "collage")


def ingest_links(system: ImgmatchSystem, queries) -> dict[str, dict]:
    """Catalogue the screenshots and collages among the positive queries
    beside the references, then count, per family, those linked to their
    reference (a link of 0.5 or more: a lead) and their links to other
    references. ``before_photos``: the same count where they are catalogued
    first, in a collection of their own, and the references after them (a
    crawl meets a screenshot before its photo as often as after).
    ``found_by_photo``: in that collection, those a query with their photo
    finds at 0.5 or more."""
    from imgmatch import Collection, Sighting

    chosen = [q for q in queries if not q.is_negative and q.family in LINKED_FAMILIES]
    system.collection.add_many(((q.path, Sighting(source=q.path)) for q in chosen),
                               signals=system.signals, workers=system.workers)
    out = _linked(system.collection, chosen, system.ref_of)
    with tempfile.TemporaryDirectory(prefix="imgmatch-reversed-") as tmp, \
            Collection.open(Path(tmp) / "c.db") as reversed_order:
        reversed_order.add_many(((q.path, Sighting(source=q.path)) for q in chosen),
                                signals=system.signals, workers=system.workers)
        reversed_order.add_many(((p, Sighting(source=p)) for p in system.reference_paths),
                                signals=system.signals, workers=system.workers)
        for family, row in _linked(reversed_order, chosen, system.ref_of).items():
            out[family]["before_photos"] = row
        for family, row in _found_by_photo(reversed_order, chosen, system).items():
            out[family]["found_by_photo"] = row
    return out


def _found_by_photo(collection, chosen, system: ImgmatchSystem) -> dict[str, dict]:
    """Per family, the composites a query with their photo finds at 0.5 or more
    (an investigator's photo, searched for among screenshots and collages)."""
    import hashlib

    path_of = {Path(p).stem: p for p in system.reference_paths}
    composites = {hashlib.sha256(Path(q.path).read_bytes()).hexdigest(): q for q in chosen}
    found: dict[str, set[str]] = {}
    for reference in sorted({q.reference_id for q in chosen}):
        found[reference] = {m.sha256 for m in collection.query(path_of[reference], top_k=50)
                            if m.sha256 in composites}
    out: dict[str, dict] = {}
    for sha, q in composites.items():
        row = out.setdefault(q.family, {"images": 0, "found": 0, "wrong": 0})
        row["images"] += 1
        row["found"] += sha in found[q.reference_id]
        # found by the photo of another reference: it shows none of them
        row["wrong"] += sum(sha in shas for ref, shas in found.items() if ref != q.reference_id)
    return out


def _linked(collection, chosen, ref_of: dict[str, str]) -> dict[str, dict]:
    import hashlib

    out: dict[str, dict] = {}
    for q in chosen:
        record = collection.image(hashlib.sha256(Path(q.path).read_bytes()).hexdigest())
        linked = {ref_of[link.sha256] for link in record.links
                  if link.sha256 in ref_of and link.score >= 0.5}
        row = out.setdefault(q.family, {"images": 0, "linked": 0, "wrong": 0})
        row["images"] += 1
        row["linked"] += q.reference_id in linked
        row["wrong"] += len(linked - {q.reference_id})
    return out


def calibration(scorer, predictions, ds,
                steps=(0.3, 0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.98, 0.99)):
    """Precision and recall of the pooled top-10 predictions at or above each score."""
    gt = {q.query_id: q.reference_id for q in ds.queries if not q.is_negative}
    best: dict[tuple[str, str], float] = {}
    for q, r, s in predictions:
        best[(q, r)] = max(best.get((q, r), -1.0), s)
    rows = []
    for t in steps:
        kept = [(q, r) for (q, r), s in best.items() if s >= t]
        correct = sum(1 for q, r in kept if gt.get(q) == r)
        rows.append((t, correct / len(kept) if kept else float("nan"), correct / len(gt)))
    return rows


#: The families whose queries show a picture among other things: broken down
#: by what the picture is (issue 15 asks for "the photos inside collages").
COMPOSITE_FAMILIES = ("collage", "screenshot", "chain")


def by_kind(predictions, queries, threshold: float | None,
            families=COMPOSITE_FAMILIES) -> dict[str, dict[str, tuple[int, int]]]:
    """Per family and kind of original: (found at or above the run's
    precision-0.99 threshold, positive queries). The scorer pools kinds per
    family; a family's misses can all be of one kind (flat clip art, banners
    and app screens, not photos), which the family's figure hides."""
    best: dict[tuple[str, str], float] = {}
    for q, r, s in predictions:
        best[(q, r)] = max(best.get((q, r), -1.0), float(s))
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for q in queries:
        if q.is_negative or q.family not in families:
            continue
        found = threshold is not None and best.get((q.query_id, q.reference_id), -1.0) >= threshold
        row = out.setdefault(q.family, {})
        hits, total = row.get(q.kind or "unknown", (0, 0))
        row[q.kind or "unknown"] = (hits + found, total + 1)
    return out


def negatives_over(predictions, ds, score: float) -> float:
    negatives = {q.query_id for q in ds.queries if q.is_negative}
    top: dict[str, float] = {}
    for q, _, s in predictions:
        if q in negatives:
            top[q] = max(top.get(q, -1.0), s)
    return sum(1 for s in top.values() if s >= score) / max(len(negatives), 1)


def run_set(scorer, ds_dir: Path, args) -> tuple[dict, list[str]]:
    """Every system on one set: metrics, false clusters among its references, and
    optionally the simulated crawl. Returns (figures, Markdown lines)."""
    ds = scorer.load_dataset(ds_dir)
    queries = scorer.subsample_queries(ds.queries, args.max_queries or None)
    results = {}
    for name in args.systems.split(","):
        system = ImgmatchSystem(**SYSTEMS[name])
        print(f"{ds_dir.name}: running {name} on {len(ds.references)} references, "
              f"{len(queries)} queries", file=sys.stderr)
        run = scorer.run_system(system, ds, queries=queries, progress=False)
        metrics = scorer.evaluate(run["predictions"], ds, queries)
        ms = sorted(system.query_ms)
        clustered = sum(len(c.image_ids) for c in system.collection.clusters(min_sightings=1)
                        if len(c.image_ids) > 1)
        results[name] = {
            "metrics": metrics, "cost": run["cost"],
            "false_alarm_at_0.5": negatives_over(run["predictions"], ds, 0.5),
            "query_ms_p50": ms[len(ms) // 2], "query_ms_p99": ms[int(len(ms) * 0.99)],
            "bytes_per_image": system.stored_bytes(),
            "memory_per_image": system.memory_bytes(),
            "calibration": calibration(scorer, run["predictions"], ds),
            "by_kind": by_kind(run["predictions"], queries, metrics["threshold_p99"]),
            "false_clusters": {"images": clustered, "references": len(ds.references)},
            "evidence": system.evidence,
            "tiled": {kind: sum(system.tiled.get(Path(q.path).stem, False) for q in qs) / len(qs)
                      for kind, qs in (("positive", [q for q in queries if not q.is_negative]),
                                       ("negative", [q for q in queries if q.is_negative]))
                      if qs},
        }
        if args.composites:
            made = composites(ds_dir, Path(system.tmp.name) / "composites", args.composites)
            results[name]["composites"] = composite_recall(system, made)
        if args.ingest_links and "orb" in system.signals:
            results[name]["ingest_links"] = ingest_links(system, queries)
        system.collection.close()
        if args.crawl and name in CRAWL_ARGS:
            results[name]["crawl"] = crawl(ds_dir, CRAWL_ARGS[name])

    lines = [f"**{ds_dir.name}**: {len(ds.references)} references, {len(queries)} queries "
             f"({sum(not q.is_negative for q in queries)} positive).", "",
             "| system | µAP | R@P99 | R@P90 | negatives ≥ P99 threshold | negatives ≥ 0.5 "
             "| references in false clusters | index img/s | query p50 / p99 ms "
             "| on disk B/img | in memory B/img |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        m = r["metrics"]
        fc = r["false_clusters"]
        lines.append(
            f"| {name} | {m['uAP']:.3f} | {m['recall_at_p99']:.3f} | {m['recall_at_p90']:.3f} "
            f"| {100 * m['overall']['neg_false_alarm_at_t99']:.1f}% "
            f"| {100 * r['false_alarm_at_0.5']:.1f}% "
            f"| {fc['images']} ({100 * fc['images'] / max(fc['references'], 1):.1f}%) "
            f"| {r['cost']['index_images_per_s']:.1f} "
            f"| {r['query_ms_p50']:.0f} / {r['query_ms_p99']:.0f} | {r['bytes_per_image']:,.0f} "
            f"| {r['memory_per_image']:,.0f} |")
    tiled = [f"{name} {', '.join(f'{100 * v:.0f}% of {k}' for k, v in r['tiled'].items())}"
             for name, r in results.items() if any(v < 1 for v in r["tiled"].values())]
    if tiled:
        lines += ["", "Queries whose tiles were searched (the whole image left them "
                  "unexplained): " + "; ".join(tiled) + "."]
    for name, r in results.items():
        if r.get("ingest_links"):
            lines += ["", f"Linked to their reference when catalogued ({name}; links of 0.5 "
                      "or more), after the references and before them:", "",
                      "| family | images | linked to their reference | links to other "
                      "references | catalogued before the references: linked | links to "
                      "other references | found by a query with their photo | found by "
                      "the photo of another reference |",
                      "|---|---|---|---|---|---|---|---|"]
            lines += [f"| {fam} | {row['images']} | {row['linked']} "
                      f"({100 * row['linked'] / row['images']:.1f}%) | {row['wrong']} | "
                      f"{row['before_photos']['linked']} "
                      f"({100 * row['before_photos']['linked'] / row['images']:.1f}%) | "
                      f"{row['before_photos']['wrong']} | {row['found_by_photo']['found']} "
                      f"({100 * row['found_by_photo']['found'] / row['images']:.1f}%) | "
                      f"{row['found_by_photo']['wrong']} |"
                      for fam, row in sorted(r["ingest_links"].items())]
    families = sorted({f for r in results.values() for f in r["metrics"]["per_family"]})
    lines += ["", "Recall@1 / recall at precision 0.99, per transform family:", "",
              "| family | " + " | ".join(results) + " |",
              "|---|" + "---|" * len(results)]
    for fam in families:
        cells = []
        for r in results.values():
            row = r["metrics"]["per_family"].get(fam, {})
            r1, value = row.get("recall_at_1"), row.get("recall_at_t99")
            cells.append("n/a" if value is None else
                         f"{r1 if r1 is not None else float('nan'):.3f} / {value:.3f}")
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    lines += kind_lines(results)
    crawled = {n: r["crawl"] for n, r in results.items() if "crawl" in r}
    if crawled:
        lines += ["", "The simulated crawl (``crawl_eval.py``: every image an ad, clusters of "
                  "the report scored against the pictures they show):", "",
                  "| ingest | B-cubed precision | B-cubed recall | clusters mixing pictures "
                  "| largest of them (images) |", "|---|---|---|---|---|"]
        for n, c in crawled.items():
            lines.append(f"| {n} ({' '.join(CRAWL_ARGS[n]) or 'default'}) "
                         f"| {c.get('bcubed_precision', float('nan')):.3f} "
                         f"| {c.get('bcubed_recall', float('nan')):.3f} "
                         f"| {c.get('false_merges', 'n/a')} "
                         f"| {c.get('largest_false_merge', 'n/a')} |")
    if args.composites:
        lines += ["", f"Screenshots and collages made from the references ({args.composites}, "
                  "seeded): share of the pictured references found at score >= 0.5, and "
                  "wrong matches at >= 0.5:", "",
                  "| system | screenshots found | collage photos found | wrong matches |",
                  "|---|---|---|---|"]
        for name, r in results.items():
            c = r["composites"]
            shot, coll = c.get("screenshot", {}), c.get("collage", {})
            lines.append(
                f"| {name} | {shot.get('found', 0)}/{shot.get('inside', 0)} "
                f"| {coll.get('found', 0)}/{coll.get('inside', 0)} "
                f"| {shot.get('wrong', 0) + coll.get('wrong', 0)} |")
    if args.calibration:
        for name, r in results.items():
            lines += ["", f"Score to precision, {name} (pooled top-10 predictions):", "",
                      "| score ≥ | precision | recall |", "|---|---|---|"]
            lines += [f"| {t:.2f} | {p:.4f} | {rc:.3f} |" for t, p, rc in r["calibration"]]
    return results, lines


def kind_lines(results: dict) -> list[str]:
    """The composite families' queries found at precision 0.99, by kind of original."""
    lines: list[str] = []
    for name, r in results.items():
        table = r.get("by_kind") or {}
        if not table:
            continue
        kinds = sorted({k for row in table.values() for k in row})
        lines += ["", f"Found at precision 0.99 ({name}), by kind of original: found / "
                  "positive queries:", "",
                  "| family | " + " | ".join(kinds) + " | all |",
                  "|---|" + "---|" * (len(kinds) + 1)]
        for fam, row in sorted(table.items()):
            cells = [f"{row[k][0]} / {row[k][1]}" if k in row else "-" for k in kinds]
            hits, total = sum(h for h, _ in row.values()), sum(t for _, t in row.values())
            lines.append(f"| {fam} | " + " | ".join(cells) + f" | {hits} / {total} |")
    return lines


#: Which ingest each system's crawl uses (the CLI's flags).
CRAWL_ARGS = {"hashes": ["--fast"], "robust": []}


#: Settings of :mod:`imgmatch.descriptors` and :mod:`imgmatch.match` changed
#: on the command line, by module: the crawl's CLI processes are given them too.
SETTINGS: dict[str, dict[str, object]] = {"descriptors": {}, "match": {}, "features": {}}


def _switch(text: str) -> bool:
    """A 0/1 command-line setting."""
    return bool(int(text))


#: Settings given on the command line as they are: (flag, module, name, type, help).
SETTING_OPTIONS = (
    ("--verifiable", "match", "VERIFIABLE", int,
     "keypoints an image needs for a failed verification to count against a pair"),
    ("--twin-bits", "features", "TWIN_BITS", int,
     "bits within which two descriptors of one image are one pattern repeated (-1: none is)"),
    ("--full-distinct", "features", "FULL_DISTINCT", float,
     "share of distinct inliers from which they count in full"),
    ("--stored-features", "features", "STORED_FEATURES", int,
     "keypoints an image's stored features keep"),
    ("--stored-bytes", "features", "STORED_BYTES", int,
     "bytes of each descriptor an image's stored features keep (8, 16 or 32)"),
    ("--ratio-narrow", "features", "RATIO_NARROW", float,
     "the ratio test where a pair is compared on fewer bytes than whole descriptors"),
    ("--upscale-to", "features", "UPSCALE_TO", int,
     "smaller images are enlarged to this longer side before their features are taken"),
    ("--shared-votes", "descriptors", "SHARED_VOTES", _switch,
     "1: rank candidates by votes shared among the images each descriptor voted for, 0: "
     "by whole votes"),
    ("--tile-gate-inliers", "match", "TILE_GATE_INLIERS",
     lambda text: None if text == "none" else int(text),
     "inliers over a part of a new image from which an ingest searches its tiles (none: "
     "never)"),
    ("--tile-framed", "match", "TILE_FRAMED", _switch,
     "1: an ingest searches the tiles of a new image that frames pictures, 0: only by "
     "--tile-gate-inliers"),
    ("--framed-quarters", "match", "FRAMED_QUARTERS", _switch,
     "1: an ingest searches the quarters and centre of an image that frames pictures too"),
    ("--align-within", "match", "ALIGN_WITHIN", _switch,
     "0: a photo verified within the part of an older image where it lies is not "
     "compared aligned with that part"),
    ("--tile-gridded", "match", "TILE_GRIDDED", _switch,
     "0: an ingest does not search the tiles of an image that only looks like a grid"),
    ("--grid-cells", "features", "GRID_CELLS", _switch,
     "search a grid's cells, cut where its seams run, among an image's tiles (0/1)"),
    ("--query-parts", "match", "QUERY_PARTS", _switch,
     "0: a query that is a photo is not verified against the parts images kept"),
    ("--keep-parts", "match", "KEEP_PARTS", _switch,
     "0: an image whose tiles were searched at ingest does not keep their features"),
    ("--part-verify", "match", "PART_VERIFY", _switch,
     "0: a new image is not verified against the parts its candidates kept"),
    ("--per-part", "descriptors", "PER_PART", int,
     "descriptors the vote index takes of each part an image kept"),
    ("--part-features", "features", "PART_FEATURES", int,
     "keypoints each part an image keeps stores"),
    ("--part-agrees", "match", "PART_AGREES", _switch,
     "0: a part's verification counts without its aligned comparison agreeing"),
    ("--align-share", "features", "ALIGN_SHARE", float,
     "share of a stored image a query must cover for the aligned comparison"),
    ("--max-regions", "features", "MAX_REGIONS", int,
     "framed pictures an image's tiles include (0: quarters and centre only)"),
    ("--framing-candidates", "match", "FRAMING_CANDIDATES", int,
     "older images read again to verify a new image or a query within the part of them "
     "where it lies (0: none)"),
    ("--query-framed-only", "match", "QUERY_FRAMED_ONLY", _switch,
     "1: a query is verified within a stored image only where its place is a framed "
     "picture, 0: wherever it lies"),
    ("--query-reverse", "match", "QUERY_REVERSE", _switch,
     "1: a query verifies its candidates the other way round too, as an ingest does"),
    ("--reverse-verify", "match", "REVERSE_VERIFY", _switch,
     "1: at ingest, a candidate verified but not linked is verified the other way round "
     "too, 0: never"),
    ("--centre-align", "match", "CENTRE_ALIGN", _switch,
     "1: a match covering too little of the stored image for the whole aligned comparison "
     "is compared on the stored image's centre, 0: not at all"),
    ("--centre-over-whole", "match", "CENTRE_OVER_WHOLE", _switch,
     "1: agreeing centres also stand for a whole aligned comparison that disagrees"),
    ("--centre-share", "features", "CENTRE_SHARE", float,
     "share of a stored image's centre a query must cover for the centre's aligned "
     "comparison"),
    ("--centre-side", "features", "CENTRE_SIDE", float,
     "share of each side of an image that its stored centre hash covers"),
)


def crawl(ds_dir: Path, ingest_args: list[str]) -> dict:
    """../shared/bench/crawl_eval.py on a set, through this environment's CLI
    (wrapped, if settings were changed, so that it uses them)."""
    with tempfile.TemporaryDirectory(prefix="imgmatch-crawl-") as work:
        exe = wrapped_cli(Path(work), {(module, name): value
                                       for module, values in SETTINGS.items()
                                       for name, value in values.items()})
        out = Path(work) / "crawl.json"
        cmd = [sys.executable, str(shared_bench() / "crawl_eval.py"), "--data", str(ds_dir),
               "--exe", str(exe), "--json", str(out), "--work", work]
        cmd += [f"--ingest-arg={a}" for a in ingest_args]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default="pdq,hashes,robust")
    ap.add_argument("--data", type=Path, action="append",
                    help="a built benchmark folder in ../shared/bench's format; repeat for "
                         "several (default: ../shared/bench's dev set and the check half "
                         "of the second set, both built beside the repository if missing)")
    ap.add_argument("--max-queries", type=int, default=0,
                    help="a stratified subsample of the queries (0: all)")
    ap.add_argument("--calibration", action="store_true")
    ap.add_argument("--crawl", action="store_true",
                    help="also score the report of each set as a simulated crawl")
    ap.add_argument("--per-image", type=int, default=0,
                    help="descriptors per image in the vote index (default: the library's)")
    ap.add_argument("--composites", type=int, default=0,
                    help="screenshots and collages made from the references (0: none; the "
                         "second set has its own)")
    ap.add_argument("--compact-rows", type=float, default=0,
                    help="search local descriptors with the compact inverted file of visual "
                         "words from this many rows on (default: the library's threshold, "
                         "above these sets' sizes; 4096 uses it on them)")
    ap.add_argument("--tile-voters", type=int, default=0,
                    help="descriptors of each query tile that vote (default: the library's)")
    ap.add_argument("--explained-share", type=float, default=0,
                    help="skip a query's tiles when one match scoring 0.98 covers this share "
                         "of it (default: the library's, off: every query searches its tiles)")
    ap.add_argument("--keep-best-by", choices=("support", "score"),
                    help="which of a candidate's verifications (one per query view that "
                         "voted for it) counts (default: the library's)")
    for flag, module, name, kind, text in SETTING_OPTIONS:
        ap.add_argument(flag, type=kind, default=argparse.SUPPRESS,
                        help=f"{text} (imgmatch.{module}.{name}; default: the library's)")
    ap.add_argument("--ingest-links", action="store_true",
                    help="then catalogue the screenshot and collage queries beside the "
                         "references, and count those linked to their reference at ingest")
    ap.add_argument("--link-candidates", metavar="VOTERS,MIN_VOTES,VERIFY",
                    help="the ingest's descriptor candidates (imgmatch.match.LINK_VOTERS, "
                         "LINK_MIN_VOTES, LINK_VERIFY) for --ingest-links (default: the "
                         "library's)")
    ap.add_argument("--md", type=Path, help="also write the Markdown tables here")
    ap.add_argument("--json", type=Path, help="write every figure as JSON")
    args = ap.parse_args(argv)

    from imgmatch import descriptors, features, match
    if args.compact_rows:
        SETTINGS["descriptors"]["COMPACT_ROWS"] = int(args.compact_rows)
    if args.per_image:
        SETTINGS["descriptors"]["PER_IMAGE"] = args.per_image
    for flag, module, name, kind, _ in SETTING_OPTIONS:
        dest = flag[2:].replace("-", "_")
        if hasattr(args, dest):  # given (a setting may be None: "never")
            SETTINGS[module][name] = getattr(args, dest)
    for module in (descriptors, match, features):
        for name, value in SETTINGS[module.__name__.rsplit(".", 1)[-1]].items():
            setattr(module, name, value)
    if args.tile_voters:  # this process's queries and ingests (not the crawl's CLI)
        match.TILE_VOTERS = args.tile_voters
    if args.explained_share:
        match.EXPLAINED_SHARE = args.explained_share
    if args.keep_best_by:
        match.KEEP_BEST_BY = args.keep_best_by
    if args.link_candidates:  # this process's ingests only (not the crawl's CLI)
        (match.LINK_VOTERS, match.LINK_MIN_VOTES,
         match.LINK_VERIFY) = (int(v) for v in args.link_candidates.split(","))
        match.LINK_ORIENTATION_VOTES = match.LINK_MIN_VOTES
    scorer = load_scorer()
    sets = args.data or [ensure_dev_corpus(), ensure_second("check")]
    lines: list[str] = []
    figures = {}
    for ds_dir in sets:
        figures[ds_dir.name], more = run_set(scorer, ds_dir, args)
        lines += more + [""]
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    return emit(lines, args.md)


if __name__ == "__main__":
    sys.exit(main())
