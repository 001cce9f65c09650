"""PDQ, Meta's open 256-bit perceptual hash, vectorised with numpy.

Meta's algorithm: luma; a tent filter made of two passes of Jarosz box
filters per axis, with a window of ceil(side / 128); decimation to 64x64 by
sampling at cell centres; the 16x16 lowest non-DC frequencies of a 2-D DCT;
one bit per coefficient above the median. The quality score (0-100) sums the
64x64 image's gradients; Meta rejects hashes under 50 as too plain to match.

Filter and decimation are linear and act on one axis at a time, so they
collapse into one 64 x n filter per axis, nonzero only on a band of about n/64
inputs per output: the downsample gathers those rows, then those columns,
and weights them, instead of running pixel loops. The bands are
cached by image size. Bits are laid out as in Meta's hex: the string is the
256-bit integer in which DCT coefficient (i, j) is bit ``16*i + j``.

Flips and 90-degree rotations act on the DCT by sign flips of odd
frequencies and a transpose, so a query's 8 dihedral hashes come from one
DCT, exactly as Meta's ``pdqHash256esFromFloatLuma`` does.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..decode import Decoded
from .base import HashValue, SignalType, dihedral_dcts, threshold_rows

#: Meta's published match threshold: Hamming distance <= 31 of 256 bits.
PDQ_THRESHOLD = 31
#: Meta's published quality gate: hashes scoring < 50 are not matched.
PDQ_MIN_QUALITY = 50
#: Images smaller than this on a side get an all-zero hash of quality 0.
MIN_HASHABLE_SIDE = 5
#: The longer side PDQ wants its input decoded at (at least): Meta's Python
#: reference works at 512, its C++ one at full size; both agree within a few bits.
WORKING_SIDE = 512

_WINDOW_DIVISOR = 128


def _dct_matrix() -> np.ndarray:
    i = np.arange(1, 17)[:, None]
    j = np.arange(64)[None, :]
    return np.sqrt(2.0 / 64.0) * np.cos((np.pi / 2 / 64.0) * i * (2 * j + 1))


_DCT = _dct_matrix()


@lru_cache(maxsize=1024)
def _band(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two passes of Meta's box filter along one axis, sampled at 64 cell centres,
    as (64 x K input indices, 64 x K weights).

    Meta's 1-D box filter averages ``in[o - (w - h) .. o + h - 1]`` (h = (w+2)//2,
    windows shrinking at the edges). Output i is the box of its sample point
    ``p`` applied to the boxes of p's neighbours, so it draws on only the K
    (about n/64) inputs from the first member's box to the last's: gathering
    those and weighting them costs O(n) per column, where a dense 64 x n
    filter matrix costs O(64 n). Built in O(64 x K x window) vectorised steps
    (not an n x n product), and cached per size.
    """
    window = (n + _WINDOW_DIVISOR - 1) // _WINDOW_DIVISOR
    half = (window + 2) // 2
    o = np.arange(n)
    lo = np.maximum(0, o - (window - half))
    hi = np.minimum(n - 1, o + half - 1)
    count = hi - lo + 1
    picks = ((np.arange(64) + 0.5) * n / 64).astype(np.int64)
    # members[i, m]: the m-th input of the first box at pick i (masked past its end)
    members = lo[picks][:, None] + np.arange(window + 1)[None, :]
    valid = members <= hi[picks][:, None]
    members = np.minimum(members, n - 1)
    share = np.where(valid, 1.0 / (count[picks][:, None] * count[members]), 0.0)
    first = lo[members[:, 0]]
    width = int((hi[members].max(axis=1) - first).max()) + 1
    idx = np.minimum(first[:, None] + np.arange(width)[None, :], n - 1)   # 64 x K
    covers = ((lo[members][:, None, :] <= idx[:, :, None])
              & (idx[:, :, None] <= hi[members][:, None, :]))         # 64 x K x members
    weights = (covers * share[:, None, :]).sum(axis=2)
    # positions past the end were clipped onto the last input: count it once
    weights[(first[:, None] + np.arange(width)[None, :]) > n - 1] = 0.0
    return np.ascontiguousarray(idx), weights.astype(np.float32)


def downsample64(luma: np.ndarray) -> np.ndarray:
    """The 64x64 image PDQ's DCT and quality score are computed from.

    ``luma`` is float luma, or 8-bit grey (then only the rows the filter
    reads are converted to float).
    """
    rows, cols = luma.shape
    row_idx, row_w = _band(rows)
    col_idx, col_w = _band(cols)
    gathered = luma[row_idx].astype(np.float32, copy=False)        # 64 x K x cols
    across = np.matmul(row_w[:, None, :], gathered)[:, 0, :]        # 64 x cols
    picked = across[:, col_idx]                                     # 64 x 64 x K
    return np.einsum("rck,ck->rc", picked, col_w, dtype=np.float64)


def quality(buf64: np.ndarray) -> int:
    """Meta's image-domain quality metric, 0 (flat) to 100 (busy)."""
    dv = np.trunc((buf64[:-1, :] - buf64[1:, :]) * 100 / 255)
    dh = np.trunc((buf64[:, :-1] - buf64[:, 1:]) * 100 / 255)
    total = int(np.abs(dv).sum() + np.abs(dh).sum())
    return min(100, total // 90)


def dct16(buf64: np.ndarray) -> np.ndarray:
    return _DCT @ buf64 @ _DCT.T


def bits_from_dct(coeffs: np.ndarray) -> list[bytes]:
    """256 bits per 16x16 DCT, one per coefficient above the (lower) median,
    in Meta's hex order; ``coeffs`` is one DCT or a stack of them."""
    return threshold_rows(coeffs.reshape(-1, 256), lower_median=True, reverse=True)


def hash_luma(luma: np.ndarray) -> bytes:
    """The PDQ bits of a luma (or 8-bit grey) array, with no decoding: what an
    aligned region of another image is compared by (:mod:`imgmatch.features`)."""
    if min(luma.shape) < MIN_HASHABLE_SIDE:
        return bytes(32)
    return bits_from_dct(dct16(downsample64(luma)))[0]


def dct_and_quality(luma: np.ndarray) -> tuple[np.ndarray | None, int]:
    """PDQ's 16x16 DCT of a luma (or 8-bit grey) array and its quality, or
    (None, 0) where the array is too small to hash."""
    if min(luma.shape) < MIN_HASHABLE_SIDE:
        return None, 0
    buf = downsample64(luma)
    return dct16(buf), quality(buf)


class PDQ(SignalType):
    """Meta's PDQ: 256 bits with a 0-100 quality score."""

    name = "pdq"
    bits = 256
    min_side = WORKING_SIDE
    threshold = PDQ_THRESHOLD
    min_quality = PDQ_MIN_QUALITY

    def _dct_and_quality(self, image: Decoded) -> tuple[np.ndarray | None, int]:
        coeffs, q = dct_and_quality(image.luma)
        if q < PDQ_MIN_QUALITY and image.image.mode == "L":
            # On flat images the 8-bit rounding of a grey decode moves many
            # bits; Meta's float luma from RGB stays within a few of its
            # reference. Rare (plain images), so decode again in colour.
            coloured = image.in_colour()
            if coloured is not image:
                coeffs, q = dct_and_quality(coloured.luma)
        return coeffs, q

    def compute(self, image: Decoded) -> HashValue:
        coeffs, q = self._dct_and_quality(image)
        if coeffs is None:
            return HashValue(self.name, bytes(32), 0)
        return HashValue(self.name, bits_from_dct(coeffs)[0], q)

    def link_variants(self, image: Decoded) -> list[HashValue]:
        return self.dihedral(image)

    def dihedral(self, image: Decoded) -> list[HashValue]:
        coeffs, q = self._dct_and_quality(image)
        if coeffs is None:
            return [HashValue(self.name, bytes(32), 0)] * 8
        return [HashValue(self.name, bits, q)
                for bits in bits_from_dct(dihedral_dcts(coeffs, first_frequency=1))]

    def dihedral_of_value(self, value: HashValue) -> list[HashValue]:
        """Approximate dihedral variants of a bare hash (no pixels at hand).

        A sign flip moves a coefficient across the median only when the
        median is near zero, which it is for natural images, so mirrored
        bits are inverted bits; exact variants need the DCT (``dihedral``).
        """
        bits = np.unpackbits(np.frombuffer(value.data, dtype=np.uint8))[::-1]
        grid = bits.reshape(16, 16).astype(np.float64) * 2 - 1  # +1 above, -1 below
        signs = dihedral_dcts(grid, first_frequency=1).reshape(8, 256)
        packed = np.packbits((signs > 0)[:, ::-1], axis=1)
        return [HashValue(self.name, row.tobytes(), value.quality) for row in packed]
