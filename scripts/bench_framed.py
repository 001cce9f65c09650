"""Which images frame pictures, and what looking costs.

Every robust analysis runs ``imgmatch.features.regions`` (the rectangles
set on a flat background: a screenshot's photo, a collage's cells), and an
ingest searches the tiles of the images that frame one, so two things
matter: how many screenshots and collages it finds framing a picture (the
ones an ingest can link through it), and how many plain photos it takes
for framing one (each costs a decode and a tile search in the writer),
with the milliseconds it adds to every image. Measured on a set's
references and each repost family (the fit half of the second set unless
told otherwise) and on the ad-sized JPEGs of ``scripts/bench ingest``,
from the grey image the analysis decodes (one thread).

It also counts the images that look like a grid of tiles
(``imgmatch.features.gridded``, on the 192-pixel grey an ingest keeps), and
those of them that frame no picture: the ones whose tiles an ingest now
searches that it did not before.

``--set NAME=VALUE`` changes a ``features`` constant first (``REGION_SIDE=256``).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import emit, ensure_ad_sized, ensure_dev_corpus  # noqa: E402
from bench_sets import ensure  # noqa: E402


def groups(data: Path, ad_sized: Path, count: int) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {"references": [data / r["file"] for r in
                                                 csv.DictReader(open(data / "references.csv"))]}
    for row in csv.DictReader(open(data / "queries.csv")):
        out.setdefault(row["family"], []).append(data / row["file"])
    out[f"ad-sized photos ({count})"] = sorted(ad_sized.glob("*.jpg"))[:count]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a set in ../shared/bench's layout "
                    "(default: the second set's fit half)")
    ap.add_argument("--ad-sized", type=int, default=600, help="how many ad-sized JPEGs")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--md", type=Path, help="also write the table here")
    args = ap.parse_args()
    from imgmatch import features
    from imgmatch.decode import decode

    for setting in args.set:
        name, value = setting.split("=", 1)
        setattr(features, name, type(getattr(features, name))(float(value)))
    data = args.data or ensure("fit")
    ad_sized = ensure_ad_sized(ensure_dev_corpus(), args.ad_sized)
    lines = [f"**{data.name}** and {args.ad_sized} ad-sized JPEGs; "
             f"{', '.join(args.set) or 'the defaults'}:", "",
             "| images | count | framing a picture | regions: 1 / 2 / 3 | ms an image "
             "| a grid of tiles | of them framing none | ms an image |",
             "|---|---|---|---|---|---|---|---|"]
    for name, paths in groups(data, ad_sized, args.ad_sized).items():
        greys = [np.asarray(decode(p.read_bytes(), target=features.SIDE).grey) for p in paths]
        features.regions(greys[0])  # OpenCV's first call loads it
        started = time.perf_counter()
        counts = Counter(len(features.regions(grey)) for grey in greys)
        ms = (time.perf_counter() - started) / len(greys) * 1000
        framed = len(greys) - counts[0]
        small = [features.reduce(grey, features.ALIGN_SIDE) for grey in greys]
        started = time.perf_counter()
        grids = [features.gridded(grey) for grey in small]
        grid_ms = (time.perf_counter() - started) / len(greys) * 1000
        only = sum(g and not features.regions(grey) for g, grey in zip(grids, greys))
        lines.append(f"| {name} | {len(greys)} | {framed} ({framed / len(greys):.0%}) | "
                     f"{counts[1]} / {counts[2]} / {counts[3]} | {ms:.2f} | "
                     f"{sum(grids)} ({sum(grids) / len(greys):.0%}) | {only} | {grid_ms:.2f} |")
    return emit(lines, args.md)


if __name__ == "__main__":
    sys.exit(main())
