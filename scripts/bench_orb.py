"""Two steps of the robust tier on ORB features, each against the way
before it, on the ad-sized JPEGs of ``scripts/bench ingest`` (their grey,
at the analysed size), one core:

- the mirror's features: detected again, or described at the image's own
  keypoints mirrored (what ``features.extract_both`` does): milliseconds
  per image of each, then how many of the latter lie within a pixel (at the
  same pyramid level) of a keypoint the detection finds, and how many of
  those have the same descriptor;
- verification's two nearest stored descriptors of each query descriptor
  (``features.nearest_two``, FAISS's binary flat scan) against OpenCV's
  ``batchDistance``, over pairs of the images' descriptors: milliseconds
  per pair, and whether the distances agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import emit, ensure_ad_sized, ensure_dev_corpus  # noqa: E402

from imgmatch import features  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300, help="ad-sized JPEGs")
    parser.add_argument("--md", type=Path, help="also write the Markdown table here")
    args = parser.parse_args()
    files = sorted(ensure_ad_sized(ensure_dev_corpus()).glob("ad_*.jpg"))[:args.count]
    greys = [features.prepare(np.asarray(Image.open(f).convert("L"))) for f in files]
    orb = features._orb()
    flipped = [np.ascontiguousarray(g[:, ::-1]) for g in greys]
    timings: dict[str, float] = {}

    def timed(name, fn, items):
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            out = [fn(*item) for item in items]
            best = min(best, time.perf_counter() - started)
        timings[name] = 1000 * best / len(items)
        return out

    plain = timed("detect and describe the image", lambda g: orb.detectAndCompute(g, None),
                  [(g,) for g in greys])
    detected = timed("detect and describe its mirror",
                     lambda m: orb.detectAndCompute(m, None), [(m,) for m in flipped])
    described = timed(
        "describe the mirror at the mirrored keypoints",
        lambda m, kps, w: orb.compute(m, features.mirror_keypoints(kps, w,
                                                                   orb.getScaleFactor())),
        [(m, kps, g.shape[1]) for m, (kps, _), g in zip(flipped, plain, greys)])
    near = total = same_bits = 0
    for (kd, dd), (kc, dc) in zip(detected, described):
        if not kd or dc is None:
            continue
        where = np.array([k.pt for k in kd])
        levels = np.array([k.octave for k in kd])
        for j, k in enumerate(kc):
            total += 1
            d = np.hypot(where[:, 0] - k.pt[0], where[:, 1] - k.pt[1])
            d[levels != k.octave] = np.inf
            i = int(np.argmin(d))
            if d[i] < 1.0:
                near += 1
                same_bits += int(np.unpackbits(dd[i] ^ dc[j]).sum()) == 0
    cv2 = features._cv2()
    described_sets = [features.extract(g).descriptors for g in greys]
    pairs = [(a, b) for a, b in zip(described_sets, described_sets[1:])
             if len(a) >= 4 and len(b) >= 4]
    opencv = timed("two nearest descriptors, OpenCV batchDistance (per pair)",
                   lambda a, b: cv2.batchDistance(a, b, dtype=-1, normType=cv2.NORM_HAMMING,
                                                  K=2), pairs)
    ours = timed("two nearest descriptors, FAISS flat scan (per pair)",
                 features.nearest_two, pairs)
    agree = sum(np.array_equal(d1, d2) for (d1, _), (d2, _) in zip(opencv, ours))
    lines = [f"ORB on {len(greys)} ad-sized JPEGs at {features.SIDE} px, one core:", "",
             "| step | ms per image (per pair where said) |", "|---|---|"]
    lines += [f"| {name} | {ms:.2f} |" for name, ms in timings.items()]
    lines += ["", f"Mirrored keypoints within 1 px (same level) of one the mirror's detection "
                  f"finds: {near / total:.2%} of {total:,}; of those, with the same "
                  f"descriptor bit for bit: {same_bits / max(near, 1):.2%}.",
              "", f"Two nearest descriptors: the same distances in {agree} of {len(pairs)} "
                  "image pairs."]
    return emit(lines, args.md)


if __name__ == "__main__":
    sys.exit(main())
