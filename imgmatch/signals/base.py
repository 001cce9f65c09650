"""What a signal is: a named type, and the values it computes.

A signal's value is a :class:`~imgmatch.records.HashValue`, a small immutable
value in the spirit of imagehash's ``ImageHash``: it prints as hex, ``a - b``
is the Hamming distance, and it always knows which signal it belongs to, so a
pHash is never compared with a PDQ hash by mistake. It is defined with the
other plain records, which know nothing of pixels, and re-exported here.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from ..decode import Decoded
from ..errors import SignalError
from ..records import HashValue


_HEX = re.compile(r"[0-9a-f]+")


#: A hash whose bit pattern repeats itself this closely under a small shift
#: is a texture's, not a picture's (see :func:`degenerate`).
PERIODIC_CORRELATION = 0.85


@lru_cache(maxsize=4)
def _shifts(side: int) -> np.ndarray:
    """(shifts, side*side) gather indices of a square's cyclic shifts by up to 3."""
    y, x = np.divmod(np.arange(side * side), side)
    out = [((y - dy) % side) * side + (x - dx) % side
           for dy in range(0, 4) for dx in range(-3, 4) if dy > 0 or dx > 0]
    return np.array(out)


@lru_cache(maxsize=1 << 16)
def degenerate(data: bytes) -> bool:
    """Whether a square hash (8x8 or 16x16 bits) is periodic or lopsided.

    Median-thresholded DCT hashes of pictures look like noise; those of
    periodic textures, star fields and near-black photos repeat a stripe
    pattern (such as ``cc663399cc663399``), which unrelated images of the
    same kind share. Recognised by the bits' cyclic autocorrelation at
    shifts of up to 3 in each direction, and by a popcount far from half.
    Cached: a collection's candidates come back query after query.
    """
    bits = np.unpackbits(np.frombuffer(data, np.uint8)).astype(np.int8)
    side = int(round(len(bits) ** 0.5))
    if side * side != len(bits) or side < 4:
        return False
    if abs(int(bits.sum()) - len(bits) / 2) > 0.4 * len(bits):
        return True
    signs = 2 * bits - 1
    correlation = np.abs((signs[None, :] * signs[_shifts(side)]).mean(axis=1))
    return bool(correlation.max() >= PERIODIC_CORRELATION)


def pack_bits(bits: np.ndarray) -> bytes:
    """Pack a boolean array, first element as the most significant bit."""
    return np.packbits(np.asarray(bits, dtype=bool).ravel()).tobytes()


def threshold_rows(values: np.ndarray, *, lower_median: bool,
                   reverse: bool = False) -> list[bytes]:
    """One packed hash per row: a bit per value above the row's median.

    ``lower_median`` takes the lower middle value (Meta's Torben median)
    instead of numpy's mean of the two middle ones; ``reverse`` puts the last
    value in the most significant bit (Meta's hex order). All rows at once:
    the 8 rotations and mirrors of a hash cost one call.
    """
    rows = values.reshape(values.shape[0], -1)
    if lower_median:
        k = (rows.shape[1] - 1) // 2
        median = np.partition(rows, k, axis=1)[:, k:k + 1]
    else:  # numpy's median (the mean of the two middle values), without its overhead
        ordered = np.sort(rows, axis=1)
        k = rows.shape[1] // 2
        median = (ordered[:, k - 1:k] + ordered[:, k:k + 1]) / 2 if rows.shape[1] % 2 == 0 \
            else ordered[:, k:k + 1]
    bits = rows > median
    if reverse:
        bits = bits[:, ::-1]
    packed = np.packbits(bits, axis=1)
    return [row.tobytes() for row in packed]


class Signal(ABC):
    """What every kind of signal has: a name to be chosen by (``--signals``),
    a version stored beside each value (an image whose value is of another
    version lacks the signal, :mod:`imgmatch.upgrade`), the decode it needs,
    a threshold, and a description for reports and provenance.

    Two kinds exist: a hash (:class:`SignalType`, one short value per image,
    compared by Hamming distance) and local features
    (:class:`~imgmatch.signals.local.LocalSignalType`, many descriptors per
    image, compared by geometric verification). The registry holds both;
    code that treats them differently asks for :attr:`kind`, never a name.
    """

    name: ClassVar[str]
    #: ``hash`` or ``local``
    kind: ClassVar[str]
    version: ClassVar[int] = 1
    #: the longer side the decoded image needs for this signal
    min_side: ClassVar[int] = 64
    #: the suffix of this signal's index folder beside the catalog
    index_suffix: ClassVar[str]

    def prepare(self) -> None:
        """Load what the signal needs (a model file, a library), raising a
        SignalError that says what is wrong before any image is read."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The signal as reports and provenance blocks state it."""


class SignalType(Signal):
    """One kind of binary hash: its name, size, threshold and computation.

    Subclasses are stateless; the registry holds one instance of each.
    ``threshold`` is inclusive: two values match when ``a - b <= threshold``.
    """

    kind: ClassVar[str] = "hash"
    index_suffix: ClassVar[str] = "mih"
    bits: ClassVar[int]
    threshold: ClassVar[int]
    #: values below this quality are too plain to be evidence (None: no gate)
    min_quality: ClassVar[int | None] = None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": self.version, "bits": self.bits,
                "threshold": self.threshold}

    @abstractmethod
    def compute(self, image: Decoded) -> HashValue:
        """The signal of one decoded image."""

    def dihedral(self, image: Decoded) -> list[HashValue]:
        """The 8 values of the image's rotations and mirrors (identity first).

        Queries use these so that one stored value per image matches mirrored
        and rotated copies. The default recomputes on transposed pixels.
        """
        return [self.compute(image.transposed(op)) for op in DIHEDRAL_OPS]

    def link_variants(self, image: Decoded) -> list[HashValue]:
        """The variants ingest searches with to link an image to older copies.

        Identity first, in :data:`DIHEDRAL_OPS` order. By default the image
        and its mirror (the common repost edit); signals whose 8 variants
        come almost free from one computation return all of them.
        """
        return [self.compute(image), self.compute(image.transposed(DIHEDRAL_OPS[1]))]

    def dihedral_of_value(self, value: HashValue) -> list[HashValue]:
        """Dihedral variants from a bare value (no pixels); default: itself only."""
        return [value]

    def from_hex(self, text: str) -> HashValue:
        text = text.strip().lower()
        if text.startswith("0x"):
            text = text[2:]
        if len(text) != self.bits // 4:
            raise SignalError(
                f"a {self.name} hash is {self.bits // 4} hex digits; got {len(text)}")
        if not _HEX.fullmatch(text):
            raise SignalError(f"not a hex string: {text[:80]!r}")
        return HashValue(self.name, bytes.fromhex(text))

    def from_bytes(self, data: bytes, quality: int | None = None) -> HashValue:
        if len(data) * 8 != self.bits:
            raise SignalError(f"a stored {self.name} value must be {self.bits // 8} bytes")
        return HashValue(self.name, bytes(data), quality)

    def usable(self, value: HashValue) -> bool:
        """Whether a value carries enough information to count as evidence."""
        return self.min_quality is None or (value.quality or 0) >= self.min_quality

    def trusts(self, quality: int | None) -> bool:
        """Whether a stored value of this quality counts as evidence; one stored
        without a quality (an imported hash) is trusted."""
        return self.min_quality is None or quality is None or quality >= self.min_quality


def _dihedral_ops():
    from PIL import Image

    T = Image.Transpose
    # identity, mirror, flip, rotate 180, transpose, and the three others
    return (None, T.FLIP_LEFT_RIGHT, T.FLIP_TOP_BOTTOM, T.ROTATE_180,
            T.TRANSPOSE, T.ROTATE_90, T.ROTATE_270, T.TRANSVERSE)


DIHEDRAL_OPS = _dihedral_ops()


def dihedral_dcts(coeffs: np.ndarray, *, first_frequency: int) -> np.ndarray:
    """The DCT coefficients of an image's 8 rotations and mirrors, identity first.

    Mirroring an axis multiplies the coefficient of frequency u on that axis
    by (-1)^u; a transpose swaps the axes. ``first_frequency`` is the
    frequency of the first row/column (PDQ drops DC and starts at 1; pHash
    starts at 0). The order matches :data:`DIHEDRAL_OPS`.
    """
    n = coeffs.shape[0]
    odd = (np.arange(n) + first_frequency) % 2 == 1
    col_sign = np.where(odd, -1.0, 1.0)[None, :]   # left-right mirror
    row_sign = np.where(odd, -1.0, 1.0)[:, None]   # top-bottom flip
    c, t = coeffs, coeffs.T
    return np.stack([c, c * col_sign, c * row_sign, c * row_sign * col_sign,
                     t, t * row_sign, t * col_sign, t * row_sign * col_sign])
