"""Flat memory: peak RSS of an ingest of 20,000 and of 200,000 small images.

The trees are synthetic (distinct 64x64 JPEGs of 16x16 random colour blocks,
made once and kept beside the repository; smoother images collide under the
64-bit hashes' threshold and would measure false links, not memory). Each
ingest runs in a fresh process with two workers; the peak RSS reported is
that of the largest process (the parent). An ingest that links holds the
hash indexes in memory, which grow with the collection by design (bytes per
image in docs/benchmarks.md); ``ingest --no-link`` holds nothing that grows,
and the link pass that follows it is measured on its own.
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
    parser.add_argument("--modes", default="link,no-link",
                        help="link (ingest links, holding the indexes) and/or no-link "
                             "(ingest --no-link, then 'imgmatch link' in its own process)")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    rows = []
    for mode in modes:
        for n in (int(float(s)) for s in args.sizes.split(",")):
            tree = make_tree(n)
            work = Path(tempfile.mkdtemp(prefix="imgmatch-memory-"))
            db = str(work / "c.db")
            try:
                extra = ["--no-link"] if mode == "no-link" else []
                seconds, rss = measure([sys.executable, "-m", "imgmatch.cli", "--db", db,
                                        "ingest", str(tree), "--workers", "2", "--signals",
                                        args.signals, "--quiet", "--json", *extra], {0, 1})
                after = ""
                if mode == "no-link":
                    link_s, link_rss = measure([sys.executable, "-m", "imgmatch.cli", "--db", db,
                                                "link", "--workers", "2"], {0, 1})
                    after = f"{link_s:.1f} s, {link_rss:.0f} MB"
            finally:
                shutil.rmtree(work, ignore_errors=True)
            rows.append((mode, n, seconds, rss, after))
            print(f"{mode} {n}: {seconds:.1f} s, peak RSS {rss:.0f} MB {after}", file=sys.stderr)
    lines = ["| ingest | images | signals | seconds | images/s | peak RSS (MB) | "
             "then 'imgmatch link' |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {mode} | {n:,} | {args.signals} | {s:.1f} | {n / s:.0f} | {r:.0f} | "
              f"{after or '-'} |" for mode, n, s, r, after in rows]
    for mode in modes:
        mine = [r for r in rows if r[0] == mode]
        if len(mine) >= 2:
            lines.append(f"\n{mode}: peak RSS at {mine[-1][1]:,} / at {mine[0][1]:,}: "
                         f"{mine[-1][3] / mine[0][3]:.2f}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
