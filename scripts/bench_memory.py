"""Flat memory: peak RSS of an ingest of 20,000 and of 200,000 small images.

The trees are synthetic (distinct 64x64 JPEGs of 16x16 random colour blocks,
made once and kept beside the repository; smoother images collide under the
64-bit hashes' threshold and would measure false links, not memory). Each ingest runs in a fresh process with two workers; the peak
RSS reported is that of the largest process (the parent, which holds the
indexes). What may grow with the collection is the in-memory index, by
design (bytes per image in docs/benchmarks.md); everything else streams.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import DATA  # noqa: E402
from bench_ingest import measure  # noqa: E402


def make_tree(n: int) -> Path:
    from PIL import Image

    root = DATA / f"blocks-{n}"
    stamp = root / "done.json"
    if stamp.exists():
        return root
    rng = np.random.default_rng(n)
    for i in range(n):
        folder = root / f"{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
        img = Image.fromarray(pixels).resize((64, 64), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        (folder / f"{i:07d}.jpg").write_bytes(buf.getvalue())
    stamp.write_text(json.dumps({"count": n}))
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20000,200000")
    parser.add_argument("--signals", default="phash,dhash")
    args = parser.parse_args()
    rows = []
    for n in (int(float(s)) for s in args.sizes.split(",")):
        tree = make_tree(n)
        work = Path(tempfile.mkdtemp(prefix="imgmatch-memory-"))
        try:
            seconds, rss = measure([sys.executable, "-m", "imgmatch.cli", "--db",
                                    str(work / "c.db"), "ingest", str(tree), "--workers", "2",
                                    "--signals", args.signals, "--quiet", "--json"], {0, 1})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rows.append((n, seconds, rss))
        print(f"{n}: {seconds:.1f} s, peak RSS {rss:.0f} MB", file=sys.stderr)
    lines = ["| images | signals | seconds | images/s | peak RSS (MB) |", "|---|---|---|---|---|"]
    lines += [f"| {n:,} | {args.signals} | {s:.1f} | {n / s:.0f} | {r:.0f} |" for n, s, r in rows]
    if len(rows) >= 2:
        lines.append(f"\npeak RSS at {rows[-1][0]:,} / at {rows[0][0]:,}: "
                     f"{rows[-1][2] / rows[0][2]:.2f}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
