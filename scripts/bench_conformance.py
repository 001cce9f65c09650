"""PDQ conformance against Meta's reference hashes, and pHash/dHash against imagehash.

Prints a Markdown table per image: the Hamming distance of imgmatch's PDQ to
the C++ reference and to Meta's Python reference, and its quality score;
then, per image, whether imgmatch's pHash/dHash equal imagehash's on the same
decoded pixels and how far they are from imagehash's naive full decode.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import imagehash
from PIL import Image

from imgmatch.decode import decode
from imgmatch.signals import get

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared",
                        help="folder holding pdq-reference/ (default: ../shared)")
    args = parser.parse_args()
    ref = args.shared / "pdq-reference"
    if not (ref / "reference-hashes.csv").exists():
        print(f"no reference hashes under {ref}", file=sys.stderr)
        return 2
    pdq, phash, dhash = get("pdq"), get("phash"), get("dhash")
    print("| image | to C++ reference | to Python reference | quality |")
    print("|---|---|---|---|")
    worst = {"cpp": 0, "python": 0}
    paths = []
    with open(ref / "reference-hashes.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            path = ref / row["path"]
            paths.append(path)
            value = pdq.compute(decode(path.read_bytes()))
            cells = []
            for key, col in (("cpp", "pdq_cpp_reference"), ("python", "pdq_python_reference")):
                if row[col]:
                    d = value - pdq.from_hex(row[col])
                    worst[key] = max(worst[key], d)
                    cells.append(str(d))
                else:
                    cells.append("-")
            print(f"| {row['path']} | {cells[0]} | {cells[1]} | {value.quality} |")
    print(f"\nlargest distance: {worst['cpp']} bits to the C++ reference, "
          f"{worst['python']} bits to the Python reference (Meta's test allows 16)\n")
    print("| image | pHash = imagehash | dHash = imagehash | pHash vs naive full decode | "
          "dHash vs naive full decode |")
    print("|---|---|---|---|---|")
    for path in paths:
        decoded = decode(path.read_bytes())
        ours_p, ours_d = phash.compute(decoded), dhash.compute(decoded)
        same_p = ours_p.hex == str(imagehash.phash(decoded.image))
        same_d = ours_d.hex == str(imagehash.dhash(decoded.image))
        with Image.open(path) as im:
            naive_p, naive_d = str(imagehash.phash(im)), str(imagehash.dhash(im))
        dp = ours_p - phash.from_hex(naive_p)
        dd = ours_d - dhash.from_hex(naive_d)
        print(f"| {path.relative_to(ref)} | {'yes' if same_p else 'NO'} | "
              f"{'yes' if same_d else 'NO'} | {dp} | {dd} |")
    corpus = args.shared.parent / "imgmatch-bench-data" / "dev"
    if corpus.is_dir():
        files = sorted((corpus / "references").glob("*.jpg")) + sorted(
            (corpus / "queries").iterdir())[:300]
        diffs = {"phash": [], "dhash": []}
        for path in files:
            decoded = decode(path.read_bytes())
            with Image.open(path) as im:
                naive = {"phash": str(imagehash.phash(im)), "dhash": str(imagehash.dhash(im))}
            for name, sig in (("phash", phash), ("dhash", dhash)):
                diffs[name].append(sig.compute(decoded) - sig.from_hex(naive[name]))
        print(f"\nOn {len(files)} images of the shared bench corpus, bits from imagehash on a "
              "naive full decode:\n")
        print("| signal | mean | 99th percentile | max |")
        print("|---|---|---|---|")
        for name, values in diffs.items():
            values = sorted(values)
            print(f"| {name} | {sum(values) / len(values):.2f} | "
                  f"{values[int(0.99 * (len(values) - 1))]} | {values[-1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
