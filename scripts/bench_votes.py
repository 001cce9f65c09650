"""The robust tier's descriptor-vote search at larger collections (synthetic).

The dev set holds 194 references; this measures how candidate voting scales.
Each synthetic image gets :data:`imgmatch.descriptors.PER_IMAGE` random
256-bit descriptors; a planted repost's query shares 40% of its image's
descriptors (each with up to 20 bits flipped), the rest random. Reported per
collection size: building the index (the first search builds FAISS's
structure: a flat scan, or past ``IVF_ROWS`` an inverted file), reopening
it from its saved arrays (the inverted file's cells are saved), the vote
search's latency for one query (image and mirror: 2 x 250 voters) on one
thread, how often the planted image is the top candidate, and memory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import emit  # noqa: E402

from imgmatch import descriptors  # noqa: E402
from imgmatch.features import DESCRIPTOR_BYTES, LocalFeatures  # noqa: E402


def features_of(codes: np.ndarray) -> LocalFeatures:
    return LocalFeatures(np.zeros((len(codes), 2), np.float32), codes, 512, 512)


def planted_query(rng: np.random.Generator, source: np.ndarray) -> LocalFeatures:
    n = descriptors.VOTERS
    shared = source[rng.choice(len(source), int(0.4 * n), replace=False)].copy()
    for row in shared:  # flip up to 20 bits
        for bit in rng.choice(256, rng.integers(0, 21), replace=False):
            row[bit // 8] ^= 1 << (bit % 8)
    noise = rng.integers(0, 256, (n - len(shared), DESCRIPTOR_BYTES), dtype=np.uint8)
    return features_of(np.concatenate([shared, noise]))


def run(images: int, queries: int) -> dict:
    rng = np.random.default_rng(images)
    per = descriptors.PER_IMAGE
    index = descriptors.DescriptorIndex(
        rng.integers(0, 256, (images * per, DESCRIPTOR_BYTES), dtype=np.uint8),
        np.repeat(np.arange(1, images + 1, dtype=np.int64), per))
    t = time.perf_counter()
    index.candidates([features_of(index.codes[:1])], 1)  # builds the FAISS structure
    build = time.perf_counter() - t
    targets = rng.choice(images, queries, replace=False) + 1
    times, hits = [], 0
    for target in targets:
        own = index.codes[(target - 1) * per: target * per]
        query = [planted_query(rng, own),
                 features_of(rng.integers(0, 256, (descriptors.VOTERS, DESCRIPTOR_BYTES),
                                          dtype=np.uint8))]  # the "mirror": unrelated
        t = time.perf_counter()
        found = index.candidates(query, 8)
        times.append(time.perf_counter() - t)
        hits += bool(found) and found[0][0] == target
    times.sort()
    with tempfile.TemporaryDirectory() as tmp:  # reopen: the saved cells spare the build
        descriptors.save(index, Path(tmp) / "votes", collection_id="bench", deletions=0,
                         images=images)
        t = time.perf_counter()
        back, _ = descriptors.load(Path(tmp) / "votes", collection_id="bench")
        back.candidates([features_of(index.codes[:1])], 1)
        reopen = time.perf_counter() - t
    return {"images": images, "rows": images * per, "reopen_s": reopen,
            "structure": type(index._faiss).__name__, "build_s": build,
            "p50_ms": 1000 * times[len(times) // 2], "p99_ms": 1000 * times[int(len(times) * 0.99)],
            "top1": hits / queries, "memory_b_per_image": index.memory_bytes() / images}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1e3,1e4,1e5")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args(argv)
    lines = ["| images | descriptors | structure | first build s | reopen s | vote p50 ms "
             "| vote p99 ms | planted image first | memory B/img |",
             "|---|---|---|---|---|---|---|---|---|"]
    for size in args.sizes.split(","):
        r = run(int(float(size)), args.queries)
        print(r, file=sys.stderr)
        lines.append(f"| {r['images']:,} | {r['rows']:,} | {r['structure']} | {r['build_s']:.1f} "
                     f"| {r['reopen_s']:.1f} "
                     f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['top1']:.2f} "
                     f"| {r['memory_b_per_image']:,.0f} |")
    return emit(lines, args.md)


if __name__ == "__main__":
    sys.exit(main())
