"""Do the two pictures agree inside the region they share? A diagnostic of wrong matches.

A verified match says that many keypoints of two images line up under one
similarity. Whether the pixels of the region they then share agree is a
different question: two icons of one series share a drawing and differ
around it; a wallpaper in two aspect ratios agrees wherever the two overlap.
This script asks it of the labelled pairs ``scripts/bench calibrate
--pairs FILE`` wrote (one file per set), with the pictures themselves,
which a collection never stores: each pair is verified again as a query
does (the whole query, then its tiles; the view with the most support),
the query is moved onto the reference's frame, and the two are compared
by normalised cross-correlation (both blurred a little, over the covered
region, and per cell of a 4 x 4 grid).

It prints, per set, how the wrong pairs scoring 0.9 or more divide into
those whose shared region differs and those alike there (the same
picture, or one whose difference is too small to tell), and the recall at precision 0.99 (of these pairs, with the
shipped model's scores) if a pair whose cells disagree were capped: the
rule is chosen on the first set and applied to the others.

    scripts/bench calibrate --tiers robust --pairs ../fit-pairs
    scripts/bench calibrate --tiers robust --data ../imgmatch-bench-data/second-check --pairs ../check-pairs
    scripts/bench region --set ../imgmatch-bench-data/second-fit=../fit-pairs.robust.jsonl \\
        --set ../imgmatch-bench-data/second-check=../check-pairs.robust.jsonl
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_calibrate import recall_at_precision  # noqa: E402
from bench_data import emit  # noqa: E402

GRID = 4


def grey_of(path: Path) -> np.ndarray:
    from imgmatch.decode import decode

    return np.asarray(decode(path.read_bytes()).grey)


def _ncc(a: np.ndarray, b: np.ndarray) -> float | None:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 and a.size >= 50 else None


def agreement(query: np.ndarray, views: list, stored, reference: np.ndarray) -> dict | None:
    """The query verified against the reference as a query would be (its whole
    image, then its tiles: ``views``, with their boxes), moved onto the
    reference's frame and compared."""
    import cv2

    from imgmatch import features

    best = None
    for box, (plain, mirrored) in views:
        found, flipped = features.best_of(plain, mirrored, stored)
        if found.matrix is not None and (best is None or found.support > best[0].support):
            best = (found, flipped, box, plain.width)
    if best is None or best[0].support < 8:
        return None
    found, flipped, box, width = best
    move = features.onto_stored(box, width, found, flipped)[:2]
    frame = (stored.width, stored.height)
    ref = features.prepare(reference)
    moved = cv2.warpAffine(np.ascontiguousarray(query), move, frame, flags=cv2.INTER_AREA)
    covered = cv2.warpAffine(np.full(query.shape, 255, np.uint8), move, frame,
                             flags=cv2.INTER_NEAREST) > 0
    covered = cv2.erode(covered.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    a = cv2.GaussianBlur(ref, (0, 0), 2.0)
    b = cv2.GaussianBlur(moved, (0, 0), 2.0)
    h, w = a.shape
    cells = []
    for gy in range(GRID):
        for gx in range(GRID):
            part = (slice(gy * h // GRID, (gy + 1) * h // GRID),
                    slice(gx * w // GRID, (gx + 1) * w // GRID))
            if covered[part].mean() >= 0.98 and a[part].std() >= 2 and b[part].std() >= 2:
                value = _ncc(a[part], b[part])
                if value is not None:
                    cells.append(value)
    return {"ncc": _ncc(a[covered], b[covered]) if covered.any() else None,
            "covered": float(covered.mean()), "cells": cells,
            "support": round(found.support, 1)}


def low_cells(measured: dict | None) -> float | None:
    """The lower quartile of the covered cells' correlations: a sticker or a
    caption spoils a cell or two; a different picture around a shared
    drawing spoils many."""
    cells = (measured or {}).get("cells") or []
    return float(np.percentile(cells, 25)) if cells else None


def load(data: Path, pairs: Path, min_score: float) -> tuple[list[dict], int]:
    from imgmatch import evidence, features

    queries = {r["query_id"]: r for r in csv.DictReader(open(data / "queries.csv"))}
    references = {r["reference_id"]: r for r in csv.DictReader(open(data / "references.csv"))}
    rows = [json.loads(line) for line in open(pairs)]
    for row in rows:
        row["shipped"] = evidence.Evidence.from_json(row["evidence"], robust=True).settle()
        row["family"] = queries[row["query"]]["family"]
        row["measured"] = None
    @functools.cache
    def grey(path: Path) -> np.ndarray:
        return grey_of(path)

    @functools.cache
    def views(path: Path) -> list:
        """The query's whole image and tiles, each with its features."""
        image = grey(path)
        boxes = [(0, 0, image.shape[1], image.shape[0])] + features.tile_boxes(*image.shape)
        return [(box, features.extract_both(np.ascontiguousarray(
            image[box[1]:box[3], box[0]:box[2]]))) for box in boxes]

    @functools.cache
    def stored(path: Path):
        return features.kept(features.extract(grey(path)))

    for row in rows:
        if row["shipped"] >= min_score and row.get("reference") in references:
            query = data / queries[row["query"]]["file"]
            reference = data / references[row["reference"]]["file"]
            row["measured"] = agreement(grey(query), views(query), stored(reference),
                                        grey(reference))
    positives = sum(r["is_negative"] == "0" for r in queries.values())
    return rows, positives


def capped_recall(rows: list[dict], positives: int, below: float | None, cap: float) -> float:
    scores = []
    for row in rows:
        score = row["shipped"]
        low = low_cells(row["measured"])
        if below is not None and low is not None and low < below:
            score = min(score, cap)
        scores.append((row["query"], row["right"], score))
    return recall_at_precision(scores, positives)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", required=True, metavar="DATA=PAIRS",
                    help="a set's folder and the robust pairs calibrate --pairs wrote for "
                         "it; the first chooses the rule")
    ap.add_argument("--min-score", type=float, default=0.5,
                    help="pairs scoring less are not compared (they set no threshold)")
    ap.add_argument("--md", type=Path)
    args = ap.parse_args(argv)
    sets = []
    for spec in args.set:
        data, _, pairs = spec.partition("=")
        print(f"comparing the pairs of {Path(data).name}", file=sys.stderr)
        sets.append((Path(data).name, *load(Path(data), Path(pairs), args.min_score)))
    lines = ["| set | wrong pairs ≥ 0.9 | shared region differs (NCC < 0.85) | "
             "alike where they overlap (NCC ≥ 0.88) | right pairs ≥ 0.5 with a cell quartile < 0.7 |",
             "|---|---|---|---|---|"]
    for name, rows, _ in sets:
        wrong = [r for r in rows if not r["right"] and r["shipped"] >= 0.9]
        ncc = [(r["measured"] or {}).get("ncc") for r in wrong]
        right = [r for r in rows if r["right"] and r["shipped"] >= 0.5]
        spoilt = [r for r in right if (low_cells(r["measured"]) or 1.0) < 0.7]
        families = ", ".join(f"{f} {n}" for f, n in sorted(
            {f: sum(r["family"] == f for r in spoilt) for f in {r["family"] for r in spoilt}}
            .items(), key=lambda t: -t[1]))
        lines.append(f"| {name} | {len(wrong)} | {sum(v is not None and v < 0.85 for v in ncc)} "
                     f"| {sum(v is not None and v >= 0.88 for v in ncc)} "
                     f"| {len(spoilt)} of {len(right)} ({families}) |")
    rules = [(b, c) for b in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9) for c in (0.9, 0.95, 0.97)]
    _, first, first_pos = sets[0]
    below, cap = max(rules, key=lambda r: capped_recall(first, first_pos, *r))
    lines += ["", f"Pairs whose covered cells' lower quartile correlates under {below} capped "
              f"at {cap} (the best rule on {sets[0][0]}), recall at precision 0.99 of "
              "these pairs:", "", "| set | shipped | capped |", "|---|---|---|"]
    for name, rows, positives in sets:
        lines.append(f"| {name} | {capped_recall(rows, positives, None, 1.0):.3f} "
                     f"| {capped_recall(rows, positives, below, cap):.3f} |")
    return emit(lines, args.md)


if __name__ == "__main__":
    sys.exit(main())
