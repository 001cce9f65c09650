"""pHash and dHash, giving the values imagehash gives on the same pixels.

imagehash resizes with Lanczos to 32x32 (pHash) or 9x8 (dHash) and compares
DCT coefficients with their median, or neighbours with each other. We do the
same resizes through Pillow, with a box reduction first (``reducing_gap``:
Lanczos then works on an image only 3 or 24 times larger than its output,
not 10 to 100 times), and replace scipy's DCT with one fixed matrix
product, so no scipy import is paid at start-up. The values match imagehash
on a full decode of the file to a bit or two (docs/benchmarks.md). Bit
order is imagehash's: the first coefficient is the most significant bit of
the hex string.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..decode import Decoded
from .base import HashValue, SignalType, dihedral_dcts, pack_bits, threshold_rows

#: Default match thresholds for 64-bit hashes (inclusive), chosen on the
#: accuracy benchmark (docs/benchmarks.md). Two unrelated photos differ in
#: about 32 of 64 bits on average, but real photos are not random bits:
#: smooth, plain or studio pictures share many. On the benchmark's pooled
#: candidates no wrong pair came within 11 bits on pHash, while dHash put
#: 223 wrong pairs within 10 bits and none within 4.
PHASH_THRESHOLD = 8
DHASH_THRESHOLD = 4

#: Lanczos works on at least this many times the output size after Pillow's
#: box reduction. Against imagehash on naive full decodes of the benchmark
#: photos, pHash differs by 0.22 bits on average and dHash by 0.35
#: (``scripts/bench conformance``); a dHash gap of 12 or 16 moved plain
#: photos (Meta's labelme test images) by 7 to 8 bits.
PHASH_REDUCING_GAP = 3.0
DHASH_REDUCING_GAP = 24.0


def _dct_rows(n_out: int, n_in: int) -> np.ndarray:
    k = np.arange(n_out)[:, None]
    n = np.arange(n_in)[None, :]
    # scipy.fftpack.dct type II, unnormalised: 2 * sum x[n] cos(pi k (2n+1) / 2N)
    return 2.0 * np.cos(np.pi * k * (2 * n + 1) / (2 * n_in))


_PHASH_DCT = _dct_rows(8, 32)


def _flatness(pixels: np.ndarray) -> int:
    """0-100: how much the thumbnail varies (a gate for plain images)."""
    return int(min(100, round(float(pixels.std()) * 2)))


#: :func:`information` counts an image as fully informative when this share of
#: its thumbnail stands out from the background, and this share of neighbouring
#: pixels differ (a plain fill or a flat drawing leaves most of them equal).
BUSY_FULL = 0.4
MOVING_FULL = 0.4
#: How far (grey levels of 255) a pixel must be from the median to stand out,
#: and how close two neighbours must be to count as equal.
BUSY_LEVELS = 12.0
EQUAL_LEVELS = 2.0


def information(pixels: np.ndarray) -> int:
    """0-100: how much a picture carries, from its 32x32 grey thumbnail.

    The smallest of three shares: contrast (as :func:`_flatness`), the
    pixels that stand out from the median (a night sky or a near-black photo
    with a few bright points has few), and the neighbouring pixels that
    differ (clip art, logos and banners on plain backgrounds have large flat
    fills). Such pictures hash alike whatever they show, so their hashes
    are not evidence.
    """
    busy = float((np.abs(pixels - np.median(pixels)) > BUSY_LEVELS).mean())
    steps = np.concatenate([np.abs(np.diff(pixels, axis=0)).ravel(),
                            np.abs(np.diff(pixels, axis=1)).ravel()])
    moving = float((steps > EQUAL_LEVELS).mean())
    return int(round(min(_flatness(pixels), 100 * min(1.0, busy / BUSY_FULL),
                         100 * min(1.0, moving / MOVING_FULL))))


class PHash(SignalType):
    """imagehash's pHash: median-thresholded 8x8 low DCT of a 32x32 thumbnail."""

    name = "phash"
    bits = 64
    threshold = PHASH_THRESHOLD
    #: the quality is the picture's :func:`information`; a near-uniform one is no
    #: evidence at all, and each tier's gate for plain pictures was chosen on the
    #: fit half of the second benchmark set (:data:`imgmatch.evidence.MODELS`)
    min_quality = 5


    def _low(self, image: Decoded) -> tuple[np.ndarray, int]:
        pixels = np.asarray(image.grey.resize((32, 32), Image.Resampling.LANCZOS,
                                              reducing_gap=PHASH_REDUCING_GAP),
                            dtype=np.float64)
        return _PHASH_DCT @ pixels @ _PHASH_DCT.T, information(pixels)

    def compute(self, image: Decoded) -> HashValue:
        low, q = self._low(image)
        return HashValue(self.name, pack_bits(low > np.median(low)), q)

    def link_variants(self, image: Decoded) -> list[HashValue]:
        return self.dihedral(image)

    def dihedral(self, image: Decoded) -> list[HashValue]:
        """Variants from one DCT: mirrors flip the signs of odd frequencies."""
        low, q = self._low(image)
        return [HashValue(self.name, bits, q) for bits in
                threshold_rows(dihedral_dcts(low, first_frequency=0), lower_median=False)]


class DHash(SignalType):
    """imagehash's dHash: left-right gradient signs of a 9x8 thumbnail."""

    name = "dhash"
    bits = 64
    threshold = DHASH_THRESHOLD
    min_quality = 5

    def _pixels(self, image: Decoded) -> np.ndarray:
        return np.asarray(image.grey.resize((9, 8), Image.Resampling.LANCZOS,
                                            reducing_gap=DHASH_REDUCING_GAP),
                          dtype=np.int16)

    def compute(self, image: Decoded) -> HashValue:
        pixels = self._pixels(image)
        return HashValue(self.name, pack_bits(pixels[:, 1:] > pixels[:, :-1]),
                         _flatness(pixels))

    def link_variants(self, image: Decoded) -> list[HashValue]:
        """Identity, mirror, flip and rotate-180 from one 9x8 thumbnail.

        Pillow's resampling grid is symmetric, so resizing a mirrored image
        and mirroring the resized one give the same pixels, but for the box
        reduction's partial last box, which a mirror moves to the other edge
        (a test bounds the difference): the first four of
        :data:`DIHEDRAL_OPS` cost nothing more (the transposes would need a
        8x9 thumbnail of their own).
        """
        px = self._pixels(image)
        q = _flatness(px)
        return [HashValue(self.name, pack_bits(v[:, 1:] > v[:, :-1]), q)
                for v in (px, px[:, ::-1], px[::-1, :], px[::-1, ::-1])]
