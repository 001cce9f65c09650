"""Local features: keypoints with binary descriptors, and geometric verification.

Global hashes describe a whole picture, so a crop, a border, a sticker, a
screenshot or a collage moves them past any useful threshold. Local
features describe small patches around corners: a reposted photo keeps most
of its patches, in the same arrangement up to a rotation, a scale and a
shift. Verification matches the patches of two images and asks RANSAC for
the similarity transform that most of them agree on; the number of matches
that agree (the *inliers*) is the evidence. Unrelated images, even similar
ones, rarely give more than a handful.

ORB (OpenCV) is used: binary 256-bit descriptors (Hamming distance, the same
machinery as the hashes), rotation-invariant, free of patents, and fast.
Mirrored reposts are found by also extracting the query's features from its
mirror image. This module is pure: pixels in, arrays out; OpenCV (and FAISS, for
the descriptor scan) are imported on first use, so the hash-only tier does
not pay for them.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from .errors import SignalError

#: The name local features go by in a signal list (``--signals pdq,orb``) and
#: in an index manifest: they are chosen like a signal, though not a hash.
NAME = "orb"
#: Feature extraction version: bump when anything changes what is stored.
#: 2: images smaller than :data:`UPSCALE_TO` are enlarged first (features of
#: version 1 still match; ``imgmatch upgrade`` takes them again).
#: 3: the PDQ of the image's centre is stored with them (:attr:`LocalFeatures.centre`;
#: features of version 2 still match, without it, and ``imgmatch upgrade``
#: takes them again).
VERSION = 3
#: Longer side of the grey image features are taken from (pixels).
SIDE = 512
#: Keypoints kept per image, strongest first.
MAX_FEATURES = 500
#: Keypoints an image's stored features keep of them, spread over it
#: (:func:`kept`): what a later query verifies against. All of them: on
#: the fit half of the second set, storing 300 saved about 6.7 KB an image
#: and cost 0.009 µAP and 0.028 recall at precision 0.99, most of it in
#: chained edits (``scripts/bench accuracy --stored-features``,
#: docs/benchmarks.md). Blobs of any count read alike.
STORED_FEATURES = 500
#: Images narrower than this on either side have no features (too few
#: pixels to describe a patch), and are never enlarged.
MIN_SIDE = 32
#: Smaller images are enlarged to this longer side before their features are
#: taken (0: never). ORB's pyramid spans 1.2^7, 3.6 times, of scale, so a
#: thumbnail under a quarter of :data:`SIDE` found none of its original's
#: features (a 96-pixel one: 0 to 3 inliers; enlarged: 120 to 170). Chosen
#: on the fit half of the second set (``scripts/bench accuracy --upscale-to``;
#: µAP / R@P99 / crawl B-cubed recall): never 0.952 / 0.673 / 0.863; 256
#: 0.954 / 0.677 / 0.875; 512 0.953 / 0.647 / 0.852 (every small image
#: blurred up to full size).
UPSCALE_TO = 256
#: Bytes per descriptor (ORB: 256 bits).
DESCRIPTOR_BYTES = 32
#: Bytes of each descriptor that an image's stored features keep: the first
#: ones (ORB's tests come in the order they were learned, least correlated
#: first). A pair is compared on the bytes both sides have, its distances
#: scaled to 256 bits' thresholds, except rows both keep whole
#: (:func:`nearest_features`). With fewer than 32, the rows the vote index
#: takes (:data:`INDEXED_ROWS`) are stored whole as well, so that it can be
#: built again from the catalog, and verification compares them on all
#: their bits. Measured with ``scripts/bench accuracy --stored-bytes``
#: (docs/benchmarks.md): 16 bytes take the robust tier from 22.7 KB an image
#: on disk to 17.8 KB; on the fit half of the second set, recall at
#: precision 0.99 0.936 to 0.934 (screenshots 0.867 to 0.844), negatives
#: over its threshold 1.8% to 1.7%, the crawl 0.998 / 0.934 to 0.998 /
#: 0.933, rotations unchanged (with every row compared on its first 16
#: bytes, the whole ones too, they fell 0.914 to 0.903, and the rocket
#: photo turned 12 degrees of ``tests/test_reverse_links.py`` lost its
#: link). Still all 32: a phone screenshot matched to another photo's
#: screenshot through a tile of their shared interface scores 0.493 with 32
#: bytes and 0.5004 with 16, a lead (``tests/test_evidence.py``, a shared
#: interface is not a shared photo); the ``frame-only`` rule does not yet
#: judge a tile's matches. 8 bytes cost the fit half's collages 0.054.
#: Blobs of any of :data:`STORED_WIDTHS` read alike.
STORED_BYTES = DESCRIPTOR_BYTES
#: Descriptor widths a blob may store.
STORED_WIDTHS = (8, 16, 32)
#: Rows of an image's features the vote index may take (its
#: ``descriptors.PER_IMAGE``, at most): :func:`balanced` rows, whose first
#: rows for any smaller count are these rows' first.
INDEXED_ROWS = 128
#: Lowe's ratio test: a match must be this much closer than the runner-up.
RATIO = 0.8
#: ... where a pair is compared on fewer bytes than a whole descriptor
#: (:data:`STORED_BYTES`). On 16 bytes, on the fit half of the second set
#: (``scripts/bench accuracy --stored-bytes 16 --ratio-narrow R``), 0.85 and
#: 0.9 raised µAP, rotations and collages but not recall at precision 0.99,
#: and let more negative queries reach 0.5 (3.7% to 4.3%, 4.5%).
RATIO_NARROW = RATIO
#: Matches farther than this many bits are never evidence.
MAX_DESCRIPTOR_DISTANCE = 64
#: RANSAC's reprojection tolerance, in pixels at :data:`SIDE`.
REPROJECTION_PX = 8.0
#: Scale changes beyond this (either way) are not reposts but coincidences.
MAX_SCALE = 12.0
#: Support beyond doubt: the mirror is not tried when the image gives this much.
CONCLUSIVE_SUPPORT = 60.0
#: Inliers count in full when at least this share of the overlapping
#: region's keypoints are inliers (see :attr:`Verification.overlap`).
FULL_OVERLAP = 0.25
#: ... and when they span at least this share of that region's area.
FULL_COVERAGE = 0.15
#: Cells per side of the grid that :attr:`Verification.spread` counts in.
SPREAD_GRID = 6
#: Two descriptors of one image within this many bits are one pattern drawn
#: again: the ring of a road sign, a texture, a glyph or an icon's frame.
#: Matches between such repeats are not independent evidence: two different
#: signs inside the same white-rimmed disc gave 160 inliers spread over the
#: whole sign, nearly all of them repeats of one patch (docs/benchmarks.md).
TWIN_BITS = 16
#: Inliers count in full while at least this share of them are distinct
#: (neither end a repeat, :attr:`Verification.repeated`); below it, in
#: proportion. Chosen with :data:`TWIN_BITS` on the fit half of the second
#: set (``scripts/bench accuracy --twin-bits B --full-distinct D``): recall
#: at precision 0.99 0.840 without, 0.868 at 16 bits and half, 0.842 at 12
#: bits, 0.864 at 20 bits (0.868 at 20 bits and 0.3), 0.856 at 24 bits.
FULL_DISTINCT = 0.5

_MAGIC = b"ORB1"
#: a blob that also carries the PDQ of the image's centre (:attr:`LocalFeatures.centre`)
_MAGIC_CENTRE = b"ORB2"
#: blobs of descriptors kept in part, with and without a centre: after the
#: points, :data:`_PART` (bytes kept, whole rows), the descriptors' first
#: bytes, the whole rows' numbers (uint16) and their other bytes
_MAGIC_PART = b"ORB3"
_MAGIC_PART_CENTRE = b"ORB4"
#: a blob whose image keeps the features of its parts as well
#: (:attr:`LocalFeatures.parts`): :data:`_PARTS_HEAD` (magic, the whole
#: image's blob length), that blob, the number of parts, then each part's
#: :data:`_PART_HEAD` (box, PDQ, blob length) and blob
_MAGIC_PARTS = b"ORBP"
_PARTS_HEAD = struct.Struct("<4sI")
_PART_HEAD = struct.Struct("<4f32sI")
_HEADER = struct.Struct("<4sHHH")  # magic, count, width, height
_PART = struct.Struct("<BH")
_POINT_SCALE = 4.0  # points are stored in quarter pixels as uint16


#: Keypoints each stored part of a collage or a screenshot keeps
#: (:func:`part_of`), the strongest of each part of it in turn: what a photo
#: catalogued after it is verified against, at the part's own resolution.
PART_FEATURES = 128
#: Parts an image keeps at most: its quarters and centre, then its framed
#: pictures (:func:`view_boxes`).
MAX_PARTS = 5 + 3


@dataclass(frozen=True)
class Part:
    """A part of an image described at its own resolution: a collage's cell, a
    screenshot's photo. An image keeps its parts when its tiles were searched
    as it was catalogued (:func:`imgmatch.match.worth_tiling`): at the whole
    image's size, a photo that fills a sixth of a collage is left too few
    keypoints, too small, for a photo catalogued later to match it, while
    the cell seen on its own matches the photo as a whole."""

    #: (x0, y0, x1, y1) in the whole image's analysed pixels
    box: tuple[float, float, float, float]
    features: LocalFeatures
    #: PDQ of the part's pixels (what a photo moved onto it is compared with),
    #: or None where too plain to tell pictures apart
    pdq: bytes | None = None


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoint positions (N, 2) in pixels at the analysed size, and descriptors (N, 32)."""

    points: np.ndarray
    descriptors: np.ndarray
    width: int
    height: int
    #: PDQ bits of the image's centre (:func:`centre_box` of the analysed
    #: pixels), where it has the detail to be compared; what a partial match
    #: (a collage's cropped cell, a screenshot's photo) is compared aligned by
    centre: bytes | None = None
    #: Where ``descriptors`` keep only their first bytes (features read from
    #: a blob, :data:`STORED_BYTES`): the rows stored whole, and those whole
    #: descriptors, (K,) and (K, 32): what the vote index takes
    #: (:meth:`whole_descriptors`).
    whole_rows: np.ndarray | None = None
    whole: np.ndarray | None = None
    #: the image's parts, where it kept them (:class:`Part`)
    parts: tuple[Part, ...] = ()

    def __len__(self) -> int:
        return len(self.descriptors)

    def whole_descriptors(self, rows: np.ndarray) -> np.ndarray:
        """These rows' whole (32-byte) descriptors; SignalError where a row
        was stored in part only (the vote index takes more rows than the
        blob kept whole)."""
        if self.descriptors.shape[1] == DESCRIPTOR_BYTES:
            return self.descriptors[rows]
        at = {int(r): i for i, r in enumerate(self.whole_rows if self.whole_rows is not None
                                               else ())}
        missing = [int(r) for r in rows if int(r) not in at]
        if missing:
            raise SignalError(
                f"{len(missing)} of the rows the vote index takes were stored with "
                f"{self.descriptors.shape[1]}-byte descriptors only: the blob keeps "
                f"{len(at)} rows whole (features.INDEXED_ROWS, {INDEXED_ROWS} now), and the "
                f"index asks more (descriptors.PER_IMAGE); keep PER_IMAGE at most "
                f"INDEXED_ROWS, or store descriptors whole (features.STORED_BYTES = "
                f"{DESCRIPTOR_BYTES})")
        assert self.whole is not None
        return self.whole[[at[int(r)] for r in rows]]

    def to_bytes(self) -> bytes:
        """A compact blob: header, quarter-pixel uint16 points, descriptors,
        then the centre's PDQ where there is one. Descriptors are kept whole,
        or (:data:`STORED_BYTES`) their first bytes, with the rows the vote
        index takes kept whole as well. An image with parts wraps that blob
        and adds each part's."""
        if self.parts:
            own = replace(self, parts=()).to_bytes()
            out = [_PARTS_HEAD.pack(_MAGIC_PARTS, len(own)), own,
                   struct.pack("<H", len(self.parts))]
            for part in self.parts:
                blob = part.features.to_bytes()
                out += [_PART_HEAD.pack(*part.box, part.pdq or bytes(32), len(blob)), blob]
            return b"".join(out)
        points = _stored_points(self.points).astype("<u2").tobytes()
        centre = self.centre or b""
        keep = min(STORED_BYTES, self.descriptors.shape[1])
        if keep == DESCRIPTOR_BYTES:
            return (_HEADER.pack(_MAGIC if self.centre is None else _MAGIC_CENTRE, len(self),
                                 self.width, self.height)
                    + points + np.ascontiguousarray(self.descriptors, np.uint8).tobytes()
                    + centre)
        rows = balanced(self, INDEXED_ROWS)
        whole = self.whole_descriptors(rows)
        return (_HEADER.pack(_MAGIC_PART if self.centre is None else _MAGIC_PART_CENTRE,
                             len(self), self.width, self.height)
                + points + _PART.pack(keep, len(rows))
                + np.ascontiguousarray(self.descriptors[:, :keep], np.uint8).tobytes()
                + rows.astype("<u2").tobytes()
                + np.ascontiguousarray(whole[:, keep:], np.uint8).tobytes() + centre)

    @classmethod
    def from_bytes(cls, blob: bytes) -> LocalFeatures:
        if has_parts(blob):
            return _with_parts(blob)
        if len(blob) < _HEADER.size:
            raise SignalError("a local-features blob is too short")
        magic, n, width, height = _HEADER.unpack_from(blob)
        extra = CENTRE_BYTES if magic in (_MAGIC_CENTRE, _MAGIC_PART_CENTRE) else 0
        start = _HEADER.size
        end = len(blob) - extra
        bad = SignalError("not a local-features blob of this version")
        if magic in (_MAGIC, _MAGIC_CENTRE):
            if end != start + n * (4 + DESCRIPTOR_BYTES):
                raise bad
            keep, k = DESCRIPTOR_BYTES, 0
            at = start + 4 * n
        elif magic in (_MAGIC_PART, _MAGIC_PART_CENTRE):
            if end < start + 4 * n + _PART.size:
                raise bad
            keep, k = _PART.unpack_from(blob, start + 4 * n)
            at = start + 4 * n + _PART.size
            if keep not in STORED_WIDTHS or keep == DESCRIPTOR_BYTES or k > n \
                    or end != at + n * keep + k * (2 + DESCRIPTOR_BYTES - keep):
                raise bad
        else:
            raise bad
        points = np.frombuffer(blob, "<u2", count=2 * n, offset=start).reshape(n, 2)
        descriptors = np.frombuffer(blob, np.uint8, count=n * keep, offset=at).reshape(n, keep)
        whole_rows = whole = None
        if keep != DESCRIPTOR_BYTES:
            at += n * keep
            whole_rows = np.frombuffer(blob, "<u2", count=k, offset=at).astype(np.int64)
            if k and (whole_rows.max() >= n or len(np.unique(whole_rows)) != k):
                raise bad
            rest = np.frombuffer(blob, np.uint8, count=k * (DESCRIPTOR_BYTES - keep),
                                 offset=at + 2 * k).reshape(k, DESCRIPTOR_BYTES - keep)
            whole = np.concatenate([descriptors[whole_rows], rest], axis=1)
        return cls(points.astype(np.float32) / _POINT_SCALE, descriptors, width, height,
                   blob[-CENTRE_BYTES:] if extra else None, whole_rows, whole)


def _with_parts(blob: bytes) -> LocalFeatures:
    """Features read from a blob that keeps the image's parts (``ORBP``)."""
    bad = SignalError("not a local-features blob of this version (its parts)")
    if len(blob) < _PARTS_HEAD.size:
        raise bad
    _, size = _PARTS_HEAD.unpack_from(blob)
    at = _PARTS_HEAD.size + size
    if len(blob) < at + 2 or blob[_PARTS_HEAD.size:_PARTS_HEAD.size + 4] == _MAGIC_PARTS:
        raise bad
    whole = LocalFeatures.from_bytes(blob[_PARTS_HEAD.size:at])
    (count,) = struct.unpack_from("<H", blob, at)
    at += 2
    parts = []
    for _ in range(count):
        if len(blob) < at + _PART_HEAD.size:
            raise bad
        *box, pdq, size = _PART_HEAD.unpack_from(blob, at)
        at += _PART_HEAD.size
        if len(blob) < at + size or blob[at:at + 4] == _MAGIC_PARTS \
                or not all(np.isfinite(box)):
            raise bad
        parts.append(Part(tuple(float(v) for v in box),  # type: ignore[arg-type]
                          LocalFeatures.from_bytes(blob[at:at + size]),
                          None if pdq == bytes(32) else pdq))
        at += size
    if at != len(blob):
        raise bad
    return replace(whole, parts=tuple(parts))


def has_parts(blob: bytes) -> bool:
    """Whether a stored blob keeps its image's parts (without reading it)."""
    return blob[:4] == _MAGIC_PARTS


def part_of(found: LocalFeatures, box: tuple[float, float, float, float],
            centre: bytes | None, pdq: bytes | None) -> Part:
    """A part as an image keeps it: :data:`PART_FEATURES` of its features,
    spread over it (:func:`balanced`), with the PDQ of its centre and of
    the whole of it."""
    rows = balanced(found, PART_FEATURES)
    return Part(box, LocalFeatures(found.points[rows], found.descriptors[rows], found.width,
                                   found.height, centre), pdq)


def _stored_points(points: np.ndarray) -> np.ndarray:
    """Points as a blob stores them: whole quarter pixels."""
    return np.clip(np.rint(points * _POINT_SCALE), 0, 65535)


#: Cells per side of the grid that the descriptors an image is indexed and
#: votes by are drawn from in turn (:func:`balanced`). Chosen on the fit
#: half of the second set: µAP 0.940 by strength alone, 0.951 with 3, 0.950
#: with 4, 0.952 with 6 (docs/benchmarks.md).
BALANCE_GRID = 6


def balanced(found: LocalFeatures, count: int, grid: int = BALANCE_GRID) -> np.ndarray:
    """Rows of ``count`` of these features spread over the image: the strongest
    of each cell of a ``grid`` x ``grid`` grid in turn, then the second
    strongest, and so on, in their stored (strongest first) order.

    The strongest keypoints of a picture crowd onto its sharpest part: taken
    by strength alone, a soft photo in a collage beside sharp ones, or a
    screenshot's photo under its interface's text, is left few of the rows
    an image is indexed by and votes with. The cells are those of the
    points as stored (quarter pixels), so an image indexed as it is
    ingested and one indexed again from the catalog get the same rows."""
    n = len(found)
    if n <= count or grid <= 1:
        return np.arange(min(n, count))
    size = np.array([max(found.width, 1), max(found.height, 1)]) * _POINT_SCALE
    where = np.clip((_stored_points(found.points) / size * grid).astype(np.int64), 0, grid - 1)
    cell = where[:, 1] * grid + where[:, 0]
    by_cell = np.argsort(cell, kind="stable")  # within a cell, strongest first
    first = np.searchsorted(cell[by_cell], np.arange(grid * grid))
    rank = np.empty(n, np.int64)
    rank[by_cell] = np.arange(n) - first[cell[by_cell]]
    return np.sort(np.lexsort((np.arange(n), rank))[:count])


def kept(found: LocalFeatures) -> LocalFeatures:
    """What the catalog stores of an image's features: :data:`STORED_FEATURES`
    of them, spread over the image (:func:`balanced`), strongest first."""
    rows = balanced(found, STORED_FEATURES)
    if len(rows) == len(found):
        return found
    return LocalFeatures(found.points[rows], found.descriptors[rows], found.width, found.height,
                         found.centre, parts=found.parts)


def empty(width: int = 0, height: int = 0) -> LocalFeatures:
    return LocalFeatures(np.zeros((0, 2), np.float32),
                         np.zeros((0, DESCRIPTOR_BYTES), np.uint8), width, height)


_ORB = None


def _cv2():
    import cv2

    cv2.setNumThreads(1)  # workers are the parallelism; threads would oversubscribe
    return cv2


def _orb():
    global _ORB
    if _ORB is None:
        _ORB = _cv2().ORB_create(nfeatures=MAX_FEATURES, fastThreshold=10,
                                 edgeThreshold=15, patchSize=31)
    return _ORB


def prepare(grey: np.ndarray) -> np.ndarray:
    """The grey image scaled so its longer side is at most :data:`SIDE`, and
    at least :data:`UPSCALE_TO` (an image at least :data:`MIN_SIDE` pixels on
    each side)."""
    h, w = grey.shape
    longest = max(h, w)
    target = SIDE if longest > SIDE else \
        UPSCALE_TO if longest < UPSCALE_TO and min(h, w) >= MIN_SIDE else longest
    if target != longest:
        cv2 = _cv2()
        scale = target / longest
        grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))),
                          interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return np.ascontiguousarray(grey, dtype=np.uint8)


def extract(grey: np.ndarray) -> LocalFeatures:
    """ORB keypoints and descriptors of a grey image (any size; scaled to :data:`SIDE`)."""
    image = prepare(grey)
    h, w = image.shape
    if min(h, w) < MIN_SIDE:
        return empty(w, h)
    keypoints, descriptors = _orb().detectAndCompute(image, None)
    return _features(keypoints, descriptors, w, h)


def _features(keypoints, descriptors, width: int, height: int) -> LocalFeatures:
    """Detected keypoints and their descriptors, strongest first."""
    if descriptors is None or not keypoints:
        return empty(width, height)
    # strongest first: the descriptor index keeps only the head of the list (ORB
    # can return a few more than asked for when responses tie)
    order = np.argsort([-k.response for k in keypoints], kind="stable")[:MAX_FEATURES]
    points = np.array([keypoints[i].pt for i in order], dtype=np.float32).reshape(-1, 2)
    return LocalFeatures(points, np.ascontiguousarray(descriptors[order]), width, height)


def extract_both(grey: np.ndarray) -> tuple[LocalFeatures, LocalFeatures]:
    """Features of the image and of its mirror image (what a query searches with).

    The mirror's keypoints are the image's, mirrored, so only their
    descriptors are computed on the mirror image, not detected again: half
    the mirror's cost (3.1 to 1.6 ms on an ad-sized photo), for the same
    features: on 300 ad-sized photos, every one of them lay within a pixel
    of a keypoint a detection on the mirror finds, with the same
    descriptor bit for bit (``scripts/bench orb``)."""
    image = prepare(grey)
    h, w = image.shape
    if min(h, w) < MIN_SIDE:
        return empty(w, h), empty(w, h)
    orb = _orb()
    keypoints, descriptors = orb.detectAndCompute(image, None)
    plain = _features(keypoints, descriptors, w, h)
    if not len(plain):
        return plain, empty(w, h)
    flipped = np.ascontiguousarray(image[:, ::-1])
    found, described = orb.compute(flipped, mirror_keypoints(keypoints, w, orb.getScaleFactor()))
    return plain, _features(found, described, w, h)


def mirror_keypoints(keypoints, width: int, scale_factor: float) -> list:
    """ORB keypoints of an image as they lie in its mirror image.

    A keypoint found at pyramid level L has its position scaled back from
    that level, whose width ORB rounds: it is mirrored within that level's
    width, or the levels above 0 would land up to a few pixels off. The
    orientation mirrors too (theta to 180 - theta degrees)."""
    cv2 = _cv2()
    out = []
    for k in keypoints:
        scale = scale_factor ** k.octave
        x = (round(width / scale) - 1 - k.pt[0] / scale) * scale
        out.append(cv2.KeyPoint(x, k.pt[1], k.size, (180.0 - k.angle) % 360.0, k.response,
                                k.octave, k.class_id))
    return out


#: Tiles are taken only from images at least this many pixels on each side.
MIN_TILED_SIDE = 256


def tile_boxes(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of the four quarters of an image and its centre, or none
    when the image is too small to tile."""
    if min(height, width) < MIN_TILED_SIDE:
        return []
    hh, hw = height // 2, width // 2
    return [(x, y, x + hw, y + hh)
            for y, x in ((0, 0), (0, hw), (hh, 0), (hh, hw), (hh // 2, hw // 2))]


#: Framed regions (:func:`regions`): at most this many, the largest first.
MAX_REGIONS = 3
#: A region's share of the image: at least this ...
REGION_MIN_AREA = 0.02
#: ... and at most this (a region the size of the image is the image).
REGION_MAX_AREA = 0.9
#: A region's shorter side, at least this share of the image's shorter side.
REGION_MIN_SIDE = 0.06
#: The share of its bounding box an outline's convex hull fills, at least:
#: a photo's edge is a rectangle; an object's outline is not.
REGION_RECTANGULAR = 0.85
#: The share of the band just outside a region (:data:`REGION_BAND` pixels
#: wide, :data:`REGION_GAP` away, at :data:`REGION_SIDE`) within
#: :data:`REGION_FLAT` grey levels of the band's median, at least: a page's,
#: an app's or a collage's flat background around the picture, where a
#: window or a door inside a photo has more photo around it.
REGION_FRAMED = 0.9
REGION_GAP = 1
REGION_BAND = 2
REGION_FLAT = 6
#: A pixel is on an edge where its 3 x 3 neighbourhood spans this many grey
#: levels (a morphological gradient): low, so a white picture on a
#: light-grey page still has an outline.
REGION_EDGE = 8
#: Regions are looked for in the image reduced to this longer side.
REGION_SIDE = 384


def regions(grey: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of the framed pictures inside an image: rectangles
    set on a flat background, as a screenshot shows an ad's photo or a
    collage its cells. A quarter of a screenshot cuts its photo; the
    rectangle around it holds all of it, and, analysed as an image of its
    own, enough keypoints to verify a flat clip-art picture that the whole
    screenshot's 500 spend on the interface. None in an image smaller than
    :data:`MIN_TILED_SIDE`.

    Every robust analysis looks, so it must cost little next to ORB (0.6 ms
    on an ad-sized photo, against 6): a morphological gradient rather than
    Canny, and outer outlines only, at :data:`REGION_SIDE`; a photo's edges
    then merge into a few outlines, none of them framed. Chosen on the fit
    half of the second set (``scripts/bench framed``, docs/benchmarks.md):
    of its 139 screenshots and 148 collages, 117 and 96 frame pictures; of
    600 ad-sized photos, 1."""
    full_height, full_width = grey.shape[:2]
    if min(full_height, full_width) < MIN_TILED_SIDE:
        return []
    cv2 = _cv2()
    factor = min(1.0, REGION_SIDE / max(full_height, full_width))
    if factor < 1.0:
        grey = cv2.resize(grey, (max(1, round(full_width * factor)),
                                 max(1, round(full_height * factor))),
                          interpolation=cv2.INTER_LINEAR)
    height, width = grey.shape[:2]
    step = cv2.morphologyEx(grey, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    edges = cv2.threshold(step, REGION_EDGE - 1, 255, cv2.THRESH_BINARY)[1]
    outlines, _ = cv2.findContours(edges, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    area, side = height * width, REGION_MIN_SIDE * min(height, width)
    found = []
    for outline in outlines:
        x, y, w, h = cv2.boundingRect(outline)
        if w < side or h < side or not REGION_MIN_AREA * area <= w * h <= REGION_MAX_AREA * area:
            continue
        if cv2.contourArea(cv2.convexHull(outline)) < REGION_RECTANGULAR * w * h:
            continue
        if _framed(grey, x, y, w, h) >= REGION_FRAMED:
            found.append((x, y, x + w, y + h))
    found.sort(key=lambda b: ((b[0] - b[2]) * (b[3] - b[1]), b))  # the largest first
    return [(round(x0 / factor), round(y0 / factor),
             min(full_width, round(x1 / factor)), min(full_height, round(y1 / factor)))
            for x0, y0, x1, y1 in found[:MAX_REGIONS]]


def _framed(grey: np.ndarray, x: int, y: int, w: int, h: int) -> float:
    """The share of the band around a box that is as flat as a background
    (0 for a box with fewer than two edges inside the image)."""
    height, width = grey.shape[:2]
    gap, band = REGION_GAP, REGION_BAND
    parts = []
    for y0, y1, x0, x1 in ((y - gap - band, y - gap, x, x + w),
                           (y + h + gap, y + h + gap + band, x, x + w),
                           (y, y + h, x - gap - band, x - gap),
                           (y, y + h, x + w + gap, x + w + gap + band)):
        y0, y1, x0, x1 = max(0, y0), min(height, y1), max(0, x0), min(width, x1)
        if y1 > y0 and x1 > x0:
            parts.append(grey[y0:y1, x0:x1].ravel())
    if len(parts) < 2:  # one edge inside the image is a photo's flat sky, not a frame
        return 0.0
    ring = np.concatenate(parts).astype(np.int16)
    return float(np.mean(np.abs(ring - np.median(ring)) <= REGION_FLAT))


#: Seams (:func:`gridded`) are looked for this far into the image at least
#: (a share of its side from either edge): a photo's margin is not a seam.
SEAM_FROM = 0.2
#: A seam between two tiles: a step of more than this many grey levels ...
#: (the seams' constants were chosen on the fit half's collages, screenshots
#: and references and on 300 of the ad-sized photos, in a one-off sweep of
#: step 16 / 24, rows 0.75 / 0.9, flat 12 / 20 and gutter 4% / 6%: the most
#: of its collages seen as grids for about 1 photo in 100; ``scripts/bench
#: framed`` gives the counts at these values)
SEAM_STEP = 16
#: ... in at least this share of the rows (or columns) it crosses.
SEAM_ROWS = 0.9
#: A gutter between two tiles: a band of lines within this many grey levels
#: from end to end ...
SEAM_FLAT = 20
#: ... at most this share of the image wide ...
SEAM_GUTTER = 0.06
#: ... with a line on each side that spans more grey levels than this (a
#: tile's content, not a clip-art drawing's wide white margin).
SEAM_BUSY = 40
#: Seams are looked for in the image reduced to this longer side (the grey
#: pixels an ingest keeps of each new image, :data:`ALIGN_SIDE`, unless it
#: is long: :func:`align_grey`).
SEAM_SIDE = 192


def gridded(grey: np.ndarray | None) -> bool:
    """Whether an image looks like a grid of tiles (a collage): a straight
    line across the whole of it, away from its edges, where the picture
    steps from one tile to the next in nearly every row, or a narrow flat
    gutter with content on both sides.

    :func:`regions` finds pictures set on a flat background; tiles that touch,
    or clip art on white beside clip art on white, have no such frame, and
    an ingest did not search their tiles unless the whole image already
    matched a part of another (:func:`imgmatch.match.worth_tiling`). A
    photo seldom has such a line: ``scripts/bench framed`` finds one in 18
    of 600 ad-sized photos, in 125 of the fit half's 520 references (clip
    art and app screens, whose panels are tiles too, and pages of text,
    whose blank lines are narrow gutters) and in 103 of its 131 collages. Cheap enough for every new image (0.1 ms): a few array passes
    over the grey an ingest keeps anyway, reduced to 192 pixels."""
    down, across = seams(grey)
    return bool(down or across)


def seams(grey: np.ndarray | None) -> tuple[list[float], list[float]]:
    """Where an image's seams (:func:`gridded`) lie: the lines down it, as
    shares of its width, and across it, as shares of its height."""
    if grey is None or min(grey.shape[:2]) < 32:
        return [], []
    small = reduce(grey, SEAM_SIDE).astype(np.int16)
    out: list[list[float]] = []
    for lines in (small, small.T):  # seams down the image, then across it
        width = lines.shape[1]
        lo, hi = int(SEAM_FROM * width), int((1 - SEAM_FROM) * width)
        found: list[float] = []
        steps = (np.abs(np.diff(lines, axis=1)) > SEAM_STEP).mean(axis=0)
        # a step between lines i and i + 1 is a seam at i + 1
        found += [(i + 1) / width for i in np.flatnonzero(steps[lo:hi] >= SEAM_ROWS) + lo]
        spread = lines.max(axis=0) - lines.min(axis=0)
        flat = np.concatenate([[False], spread <= SEAM_FLAT, [False]])
        starts = np.flatnonzero(flat[1:-1] & ~flat[:-2])
        ends = np.flatnonzero(flat[1:-1] & ~flat[2:]) + 1  # a flat run is [start, end)
        for start, end in zip(starts.tolist(), ends.tolist()):
            if lo <= start < hi and end - start <= max(1.0, SEAM_GUTTER * width) \
                    and start > 0 and end < width \
                    and spread[start - 1] > SEAM_BUSY and spread[end] > SEAM_BUSY:
                found.append((start + end) / 2 / width)
        merged: list[float] = []
        for at in sorted(found):  # one seam, however many lines it spans
            if merged and at - merged[-1] < CELL_MIN_SIDE:
                continue
            merged.append(at)
        out.append(merged)
    return out[0], out[1]


#: A grid's cell (:func:`cells`) is at least this share of the image's side.
CELL_MIN_SIDE = 0.15
#: At most this many cells are searched, the largest first.
MAX_CELLS = 9
#: Whether a grid's cells are searched among an image's tiles
#: (:func:`view_boxes`); ``scripts/bench accuracy --grid-cells 0`` turns it off.
GRID_CELLS = True


def cells(grey: np.ndarray | None) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of the cells its seams cut an image into, in its
    pixels: a collage's photos, where the quarters would cut a 3-column
    grid's middle column in two. None where no seam is found."""
    if grey is None:
        return []
    h, w = grey.shape[:2]
    boxes = _split(grey, (0, 0, w, h), depth=2)
    boxes = [b for b in boxes if (b[2] - b[0]) >= CELL_MIN_SIDE * w
             and (b[3] - b[1]) >= CELL_MIN_SIDE * h]
    boxes.sort(key=lambda b: (-(b[2] - b[0]) * (b[3] - b[1]), b[1], b[0]))
    return boxes[:MAX_CELLS] if len(boxes) > 1 else []


def _split(grey: np.ndarray, box: tuple[int, int, int, int], depth: int
           ) -> list[tuple[int, int, int, int]]:
    """``box`` cut at its seams, and each piece at its own (``depth`` levels):
    tiles that touch step in most rows of their own band, not of the page."""
    x0, y0, x1, y1 = box
    piece = grey[y0:y1, x0:x1]
    down, across = seams(piece) if depth else ([], [])
    if not down and not across:
        return [box]
    w, h = x1 - x0, y1 - y0
    xs = [x0, *(x0 + int(v * w) for v in down), x1]
    ys = [y0, *(y0 + int(v * h) for v in across), y1]
    return [b for top, bottom in zip(ys, ys[1:]) for left, right in zip(xs, xs[1:])
            for b in _split(grey, (left, top, right, bottom), depth - 1)]


def view_boxes(grey: np.ndarray, quarters: bool = True,
               found: Sequence[tuple[int, int, int, int]] | None = None
               ) -> list[tuple[int, int, int, int]]:
    """The boxes an image's tiles are cut from: a grid's cells (:func:`cells`),
    its quarters and centre (:func:`tile_boxes`; unless ``quarters`` is
    false) where no cell nearly is one, then its framed pictures
    (:func:`regions`, or ``found`` where already looked for)."""
    grid = cells(grey) if GRID_CELLS and min(grey.shape[:2]) >= MIN_TILED_SIDE else []
    quartered = [q for q in (tile_boxes(*grey.shape[:2]) if quarters else [])
                 if not any(iou(q, c) >= CELL_SAME for c in grid)]
    return grid + quartered + (regions(grey) if found is None else list(found))


def described_views(grey: np.ndarray, quarters: bool = True,
                     found: Sequence[tuple[int, int, int, int]] | None = None
                     ) -> list[tuple[tuple[int, int, int, int], tuple[LocalFeatures, LocalFeatures]]]:
    """The tiles :func:`view_boxes` cuts from ``grey``, each with the features
    of it and of its mirror (:func:`extract_both`): what a linker searches a
    collage or a screenshot with."""
    boxes = view_boxes(grey, quarters, found)
    return [(box, extract_both(tile)) for box, tile in zip(boxes, cut(grey, boxes))]


#: A quarter that shares this much of its area with a cell (and the cell of
#: its area) is that cell: a 2 x 2 grid's cells are its quarters.
CELL_SAME = 0.7


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    both = w * h
    return both / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - both)


#: The share of an image a framed picture covers, at least, to count among
#: its frames (:func:`frames`): an ad's photo on a screen, not an icon.
FRAME_MIN_AREA = 0.15
#: The query's keypoints its frames must hold for a verification to say what
#: share of its inliers lie there: a flat picture (or a flat patch of a
#: photo that looks framed) can hold no inlier, whatever matched. Chosen on
#: the fit half's simulated crawl (a one-off count): with 20, 29 of its 45
#: wrong links whose newer image frames a picture would have been held
#: down, and 2 of 624 right ones; with none, 35 and 2, but on the check
#: half the copies of one photo with a flat framed patch were held down too.
FRAME_MIN_KEYPOINTS = 20


def frames(grey: np.ndarray, width: int,
           found: Sequence[tuple[int, int, int, int]] | None = None
           ) -> list[tuple[float, float, float, float]]:
    """The framed pictures (:func:`regions`, or ``found`` where already looked
    for) covering :data:`FRAME_MIN_AREA` of the image or more, as boxes of its
    features analysed ``width`` wide: a match none of whose inliers lie in
    them shares the frame (an app's interface, a page) and not the picture."""
    height_px, width_px = grey.shape[:2]
    factor = width / max(1, width_px)
    return [(x0 * factor, y0 * factor, x1 * factor, y1 * factor)
            for x0, y0, x1, y1 in (regions(grey) if found is None else found)
            if (x1 - x0) * (y1 - y0) >= FRAME_MIN_AREA * width_px * height_px]


def tiles(grey: np.ndarray) -> list[np.ndarray]:
    """The four quarters of an image and its centre, then the pictures framed
    in it: a collage's photos, or a screenshot's, each seen at the
    resolution of a whole image."""
    return cut(grey, view_boxes(grey))


def cut(grey: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> list[np.ndarray]:
    """The pixels of each (x0, y0, x1, y1) box."""
    return [np.ascontiguousarray(grey[y0:y1, x0:x1]) for x0, y0, x1, y1 in boxes]


def where_within(found: Verification, query: LocalFeatures, stored: LocalFeatures,
                 grey_shape: tuple[int, ...], margin: float
                 ) -> tuple[int, int, int, int] | None:
    """The box of ``grey`` (the stored image's pixels, ``grey_shape`` high and
    wide) where the query's whole lies by the verified similarity, widened by
    ``margin`` of its size on each side: the part of a screenshot or a
    collage that shows the query's photo. None where the box is too small
    to take features from."""
    if found.matrix is None or not stored.width:
        return None
    corners = np.array([[0, 0], [query.width, 0], [query.width, query.height],
                        [0, query.height]], np.float64)
    moved = _moved(corners, np.asarray(found.matrix).reshape(2, 3))
    scale = grey_shape[1] / stored.width  # grey pixels per analysed stored pixel
    (x0, y0), (x1, y1) = moved.min(axis=0) * scale, moved.max(axis=0) * scale
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    h, w = grey_shape[:2]
    box = (max(0, int(x0 - dx)), max(0, int(y0 - dy)),
           min(w, int(np.ceil(x1 + dx))), min(h, int(np.ceil(y1 + dy))))
    if min(box[2] - box[0], box[3] - box[1]) < MIN_SIDE:
        return None
    return box


@dataclass(frozen=True)
class Verification:
    """The outcome of matching two images' features geometrically.

    ``overlap`` is the share of keypoints in the region the two images have
    in common (each side's keypoints that the transform puts inside the
    other image; the smaller count) that are inliers. A repost, even cropped
    or in a collage, matches a good share of the keypoints where it overlaps;
    two different photos that share only a logo, a watermark or a pasted
    cut-out match a few, among many that do not.
    """

    inliers: int
    matches: int
    #: the similarity's scale (query pixels per stored pixel) and rotation in degrees
    scale: float = 0.0
    rotation: float = 0.0
    overlap: float = 0.0
    #: the area the stored image's inliers span, as a share of the area its
    #: keypoints in the common region span: a logo or a stamped phone number
    #: is a small patch of a picture, a repost is most of it
    coverage: float = 0.0
    #: the share of the common region's keypoints that lie in a cell (of a
    #: :data:`SPREAD_GRID` grid) holding an inlier, among the cells where
    #: both images have keypoints: a screenshot's status and app bars, or a
    #: site's frame, are bands at the edges that a convex hull spans whole,
    #: while the photo between them matches nothing
    spread: float = 0.0
    #: the query's share that the region the two images share covers, and
    #: the stored image's
    query_share: float = 0.0
    stored_share: float = 0.0
    #: the similarity, query pixels (at the analysed size) to stored pixels
    matrix: tuple[float, ...] | None = None
    #: the share of inliers where either end has a twin in its own image
    #: (another descriptor within :data:`TWIN_BITS`): one pattern repeated
    repeated: float = 0.0
    #: the share of inliers inside the query's frames (:func:`frames`), or
    #: None where the query frames no picture with :data:`FRAME_MIN_KEYPOINTS`
    #: (or none was given)
    framed_share: float | None = None
    #: the box (x0, y0, x1, y1) the inliers span in the query, in its
    #: analysed pixels, and in the stored image, as shares of its sides: where
    #: in each image the pair's evidence lies (a collage's links to two
    #: pictures lie in two cells, :func:`imgmatch.cluster.composites`)
    query_box: tuple[float, float, float, float] | None = None
    stored_box: tuple[float, float, float, float] | None = None

    @property
    def shared_area(self) -> float:
        """The smaller of the two shares: a photo in a collage or a screenshot
        is a part of it."""
        return min(self.query_share, self.stored_share)

    @property
    def support(self) -> float:
        """Inliers, discounted when they are a small share or a small patch of
        the overlap, or mostly one pattern repeated."""
        return (self.inliers * min(1.0, self.overlap / FULL_OVERLAP)
                * min(1.0, self.coverage / FULL_COVERAGE)
                * min(1.0, (1.0 - self.repeated) / FULL_DISTINCT))


NO_MATCH = Verification(0, 0)


def turned(found: Verification, query: LocalFeatures, stored: LocalFeatures
           ) -> Verification | None:
    """The same verification seen from the stored image's side: its
    similarity inverted, the shares and boxes swapped (``query`` and
    ``stored``: the features it was verified between, for their sizes).
    None where there is no similarity to invert. The inliers, and so the
    support, are the pair's either way."""
    if found.matrix is None:
        return None
    forward = np.vstack([np.asarray(found.matrix, np.float64).reshape(2, 3), [0, 0, 1]])
    try:
        back = np.linalg.inv(forward)
    except np.linalg.LinAlgError:
        return None
    query_box = None
    if found.stored_box is not None and stored.width and stored.height:
        x0, y0, x1, y1 = found.stored_box
        query_box = (x0 * stored.width, y0 * stored.height,
                     x1 * stored.width, y1 * stored.height)
    stored_box = None
    if found.query_box is not None and query.width and query.height:
        x0, y0, x1, y1 = found.query_box
        stored_box = (x0 / query.width, y0 / query.height, x1 / query.width, y1 / query.height)
    return replace(found, matrix=tuple(float(v) for v in back[:2].ravel()),
                   scale=1.0 / found.scale if found.scale else 0.0,
                   rotation=-found.rotation, query_share=found.stored_share,
                   stored_share=found.query_share, query_box=query_box,
                   stored_box=stored_box, framed_share=None)


def nearest_two(query: np.ndarray, stored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two nearest stored descriptors of each query descriptor: their
    Hamming distances and rows (-1 where there is no second).

    An exact scan with FAISS's popcount: three times OpenCV's batchDistance
    on two images' ORB descriptors (0.27 against 0.88 ms, ``scripts/bench
    orb``), with the same distances; where the nearest two tie, which one comes first may differ,
    and the ratio test rejects such a match either way."""
    import faiss

    width = min(query.shape[1], stored.shape[1])  # the bytes both sides have
    index = faiss.IndexBinaryFlat(width * 8)
    index.add(np.ascontiguousarray(stored[:, :width], dtype=np.uint8))
    with faiss_threads(parallel=False):  # whichever thread it runs in
        dist, rows = index.search(np.ascontiguousarray(query[:, :width], dtype=np.uint8), 2)
    if width != DESCRIPTOR_BYTES:  # on 256 bits' scale, as the thresholds are
        dist = dist * (DESCRIPTOR_BYTES // width)
    return dist, rows


def _whole_rows(found: LocalFeatures) -> np.ndarray:
    """The rows of these features whose descriptors are whole (all of them
    unless read from a blob that keeps descriptors in part)."""
    if found.descriptors.shape[1] == DESCRIPTOR_BYTES:
        return np.arange(len(found))
    return np.zeros(0, np.int64) if found.whole_rows is None else found.whole_rows


#: Whether two images compared where either keeps its descriptors in part
#: compare the rows both keep whole on all their bits (:func:`nearest_features`).
#: With 16 bytes stored, on the fit half of the second set: rotations at
#: precision 0.99 0.903 without, 0.914 with (as with 32 bytes).
WHOLE_WHERE_BOTH = True


def nearest_features(query: LocalFeatures, stored: LocalFeatures
                     ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`nearest_two` of two images' features; where either keeps its
    descriptors in part, a query row kept whole is compared on all 256 bits
    with the stored rows kept whole, and on the common bytes with the
    others: fewer bits make a distance noisier, and the ratio test pass
    fewer matches."""
    q_rows, s_rows = _whole_rows(query), _whole_rows(stored)
    if min(query.descriptors.shape[1], stored.descriptors.shape[1]) == DESCRIPTOR_BYTES \
            or not WHOLE_WHERE_BOTH or not len(q_rows) or not len(s_rows):
        return nearest_two(query.descriptors, stored.descriptors)
    dist = np.empty((len(query), 2), np.int64)
    rows = np.empty((len(query), 2), np.int64)
    rest = np.setdiff1d(np.arange(len(query)), q_rows)  # rows compared in part only
    if len(rest):
        dist[rest], rows[rest] = nearest_two(query.descriptors[rest], stored.descriptors)
    q_whole = query.whole_descriptors(q_rows)
    d_whole, r_whole = nearest_two(q_whole, stored.whole_descriptors(s_rows))
    r_whole = np.where(r_whole >= 0, s_rows[np.maximum(r_whole, 0)], -1)
    others = np.setdiff1d(np.arange(len(stored)), s_rows)
    if len(others):
        d_part, r_part = nearest_two(query.descriptors[q_rows], stored.descriptors[others])
        r_part = np.where(r_part >= 0, others[np.maximum(r_part, 0)], -1)
    else:
        d_part = np.full((len(q_rows), 2), np.iinfo(np.int32).max, np.int64)
        r_part = np.full((len(q_rows), 2), -1, np.int64)
    d_all = np.concatenate([d_whole, d_part], axis=1).astype(np.int64)
    r_all = np.concatenate([r_whole, r_part], axis=1)
    d_all[r_all < 0] = np.iinfo(np.int32).max
    order = np.argsort(d_all, axis=1, kind="stable")[:, :2]
    dist[q_rows] = np.take_along_axis(d_all, order, axis=1)
    rows[q_rows] = np.take_along_axis(r_all, order, axis=1)
    return dist, rows


@contextmanager
def faiss_threads(parallel: bool) -> Iterator[None]:
    """FAISS on one thread unless the work is large: OpenMP's start-up and
    spinning cost more than they save on small searches and adds, most of all
    when the ingest's workers keep the other cores busy. OpenMP's thread
    count is per thread, so this holds in any thread it is entered in."""
    import faiss

    if parallel:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def verify(query: LocalFeatures, stored: LocalFeatures,
           frames: Sequence[tuple[float, float, float, float]] = (),
           min_support: float = 0.0) -> Verification:
    """Ratio-tested descriptor matches, then RANSAC on a similarity transform.

    A similarity (rotation, uniform scale, shift) covers crops, borders,
    resizes, tilts, screenshots and a photo's place in a collage; a full
    homography would also fit many coincidental matches.

    ``frames``: boxes of the query (at its analysed size) that frame
    pictures (:func:`frames`): the share of inliers inside them is kept.

    ``min_support``: the support under which the caller drops the result;
    a pair with fewer ratio-tested matches, or inliers, than that is given
    up at once (:attr:`Verification.support` is at most the inliers), and
    scoring the geometry, most of a failed verification's cost, is skipped.
    """
    if len(query) < 4 or len(stored) < 4:
        return NO_MATCH
    cv2 = _cv2()
    dist, nearest = nearest_features(query, stored)
    whole = min(query.descriptors.shape[1], stored.descriptors.shape[1]) == DESCRIPTOR_BYTES
    good = (dist[:, 0] <= MAX_DESCRIPTOR_DISTANCE) \
        & (dist[:, 0] < (RATIO if whole else RATIO_NARROW) * dist[:, 1]) & (nearest[:, 0] >= 0)
    n_good = int(good.sum())
    if n_good < max(4.0, min_support):
        return Verification(0, n_good)
    src = query.points[good]
    dst = stored.points[nearest[good, 0]]
    transform, mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=REPROJECTION_PX,
        maxIters=1000, confidence=0.995)
    if transform is None or mask is None:
        return Verification(0, n_good)
    a, b = float(transform[0, 0]), float(transform[1, 0])
    scale = float(np.hypot(a, b))  # stored pixels per query pixel
    if not (1.0 / MAX_SCALE <= scale <= MAX_SCALE):
        return Verification(0, n_good)
    inliers = int(mask.sum())
    if inliers < min_support:
        return Verification(0, n_good)
    # many query points collapsing onto a few stored ones are a texture, not a repost
    if inliers and len(np.unique(np.rint(dst[mask.ravel() == 1]), axis=0)) < inliers // 2:
        return Verification(0, n_good)
    in_stored = _inside(query.points, transform, stored.width, stored.height)
    in_query = _inside(stored.points, cv2.invertAffineTransform(transform),
                       query.width, query.height)
    shared = min(int(in_stored.sum()), int(in_query.sum()))
    region = _hull_area(cv2, stored.points[in_query])
    spanned = _hull_area(cv2, dst[mask.ravel() == 1])
    query_share, stored_share = _shares(cv2, transform, query, stored)
    kept = mask.ravel() == 1
    repeated = _twinned(query.descriptors, np.flatnonzero(good)[kept]) \
        | _twinned(stored.descriptors, nearest[good, 0][kept])
    framed_share = None
    if frames and _within(query.points, frames).sum() >= FRAME_MIN_KEYPOINTS:
        framed_share = float(_within(src[kept], frames).mean())
    return Verification(inliers, n_good, 1.0 / scale, float(np.degrees(np.arctan2(b, a))),
                        inliers / max(shared, inliers, 1),
                        min(1.0, spanned / region) if region > 0 else 0.0,
                        _spread(stored.points[in_query], dst[kept],
                                _moved(query.points, transform)),
                        query_share, stored_share,
                        tuple(float(v) for v in transform.ravel()),
                        float(repeated.mean()) if len(repeated) else 0.0, framed_share,
                        _box(src[kept]), _box(dst[kept], stored.width, stored.height))


def _box(points: np.ndarray, width: float = 1.0, height: float = 1.0
         ) -> tuple[float, float, float, float] | None:
    """The (x0, y0, x1, y1) box ``points`` span, divided by ``width`` and ``height``."""
    if not len(points) or width <= 0 or height <= 0:
        return None
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    return (float(x0) / width, float(y0) / height, float(x1) / width, float(y1) / height)


def mirrored_boxes(boxes: Sequence[tuple[float, float, float, float]], width: float
                   ) -> list[tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) boxes of an image ``width`` wide, as they lie in its mirror."""
    return [(width - x1, y0, width - x0, y1) for x0, y0, x1, y1 in boxes]


def _within(points: np.ndarray, boxes: Sequence[tuple[float, float, float, float]]
            ) -> np.ndarray:
    """Which points lie inside any of the (x0, y0, x1, y1) boxes."""
    inside = np.zeros(len(points), bool)
    for x0, y0, x1, y1 in boxes:
        inside |= ((points[:, 0] >= x0) & (points[:, 0] < x1)
                   & (points[:, 1] >= y0) & (points[:, 1] < y1))
    return inside


def _twinned(descriptors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Whether each of these rows has a twin: another descriptor of the same
    image within :data:`TWIN_BITS` (its nearest is itself)."""
    if not len(rows):
        return np.zeros(0, bool)
    dist, found = nearest_two(descriptors[rows], descriptors)
    return (found[:, 1] >= 0) & (dist[:, 1] <= TWIN_BITS)


def _moved(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Points under a 2x3 affine transform."""
    return points @ transform[:, :2].T + transform[:, 2]


def _spread(region: np.ndarray, inliers: np.ndarray,
            other: np.ndarray | None = None) -> float:
    """The share of the region's keypoints in grid cells that hold an inlier.

    ``region`` holds the stored image's keypoints inside the common region;
    ``other``, the query's keypoints moved onto the stored image: only cells
    where both images have keypoints count (a photo pasted on a blank page
    shares no detail with the page's blank part, so that part is not a
    hole; a different photo in the same app's frame is).
    """
    if len(region) == 0 or len(inliers) == 0:
        return 0.0
    lo = region.min(axis=0)
    size = np.maximum(region.max(axis=0) - lo, 1e-6)
    cells = SPREAD_GRID * SPREAD_GRID

    def cell(points: np.ndarray) -> np.ndarray:
        g = np.clip(((points - lo) / size * SPREAD_GRID).astype(int), 0, SPREAD_GRID - 1)
        return g[:, 1] * SPREAD_GRID + g[:, 0]

    hit = np.zeros(cells, bool)
    hit[cell(inliers)] = True
    counted = cell(region)
    if other is not None and len(other):
        inside = np.all((other >= lo) & (other <= lo + size), axis=1)
        both = np.zeros(cells, bool)
        both[cell(other[inside])] = True
        both |= hit
        counted = counted[both[counted]]
    return float(hit[counted].mean()) if len(counted) else 0.0


def _shares(cv2, transform: np.ndarray, query: LocalFeatures,
            stored: LocalFeatures) -> tuple[float, float]:
    """The query's and the stored image's shares covered by their common region."""
    def frame(w: int, h: int) -> np.ndarray:
        return np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)

    moved = _moved(frame(query.width, query.height), transform).astype(np.float32)
    box = frame(stored.width, stored.height)
    area, _ = cv2.intersectConvexConvex(moved, box)
    moved_area = abs(float(cv2.contourArea(moved)))
    if area <= 0 or moved_area <= 0 or stored.width * stored.height == 0:
        return 0.0, 0.0
    return float(min(1.0, area / moved_area)), float(min(1.0, area / (stored.width * stored.height)))


def _inside(points: np.ndarray, transform: np.ndarray, width: int, height: int) -> np.ndarray:
    """Which points the 2x3 transform puts inside a width x height image."""
    moved = _moved(points, transform)
    return ((moved[:, 0] >= 0) & (moved[:, 0] < width)
            & (moved[:, 1] >= 0) & (moved[:, 1] < height))


def _hull_area(cv2, points: np.ndarray) -> float:
    if len(points) < 3:
        return 0.0
    return float(cv2.contourArea(cv2.convexHull(np.ascontiguousarray(points, np.float32))))


#: The stored image's share the query must cover for an aligned comparison:
#: past it, the part the query lacks (filled from its edges) moves few bits.
#: 0.6 would compare more collages' cells and crops, but on the fit half of
#: the second set (``scripts/bench accuracy --align-share 0.6``) it cost
#: recall at precision 0.99, 0.900 to 0.894 (screenshots 0.767 to 0.733).
ALIGN_SHARE = 0.8


def onto_stored(box: tuple[int, int, int, int], view_width: int, found: Verification,
                mirrored: bool) -> np.ndarray:
    """The 3x3 transform from the query's grey pixels to the stored image's
    analysed pixels: into the verified view (``box`` of the grey, analysed
    ``view_width`` wide, mirrored or not), then the verified similarity."""
    x0, y0, x1, y1 = box
    scale = view_width / max(1, x1 - x0)  # the view's analysed pixels per grey pixel
    # the view's analysed pixels from the grey's: shift, scale, mirror
    to_view = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale], [0, 0, 1]])
    if mirrored:
        to_view = np.array([[-1.0, 0, view_width], [0, 1, 0], [0, 0, 1]]) @ to_view
    similarity = np.vstack([np.asarray(found.matrix).reshape(2, 3), [0, 0, 1]])
    return similarity @ to_view


#: Bytes of the centre's PDQ in a blob.
CENTRE_BYTES = 32
#: The centre's share of each side: the middle half (a quarter of the area),
#: which crops of the edges, a square cell cut from a wide photo and a
#: screenshot's photo under its bars all keep.
CENTRE_SIDE = 0.5


#: The share of the stored image's centre the query must cover for the
#: centre's aligned comparison (:func:`aligned_centre`). On the fit half of
#: the second set (``scripts/bench accuracy --centre-share``), 0.6 and 0.67
#: changed no figure (collages 0.862 at precision 0.99, as at 0.8).
CENTRE_SHARE = ALIGN_SHARE


def centre_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of an image's centre, :data:`CENTRE_SIDE` of each side."""
    margin = (1.0 - CENTRE_SIDE) / 2
    return (round(width * margin), round(height * margin),
            round(width * (1 - margin)), round(height * (1 - margin)))


def aligned_centre(grey: np.ndarray, box: tuple[int, int, int, int], view_width: int,
                   found: Verification, mirrored: bool,
                   stored: LocalFeatures) -> np.ndarray | None:
    """The stored image's centre (:func:`centre_box`) as the query shows it, moved
    onto the stored frame like :func:`aligned`; None where the query covers
    less than :data:`CENTRE_SHARE` of that centre. A query that shows only part
    of the stored image (a collage's cell cut square, a screenshot's photo
    under its bars) is compared where it covers it.

    The whole query counts, not only the view (``box``) verified: a collage's
    cell cut in two by a tile is still whole in the query. Where something
    else lies over the centre (the next cell), the hashes differ, and only
    agreement is evidence (:data:`imgmatch.match.CENTRE_AGREES`)."""
    if found.matrix is None or not stored.width or stored.centre is None:
        return None
    cv2 = _cv2()
    to_stored = onto_stored(box, view_width, found, mirrored)
    x0, y0, x1, y1 = centre_box(stored.width, stored.height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    grey, to_stored = _reduced(grey, to_stored)
    # only the centre is needed: the transform shifted so that it lands at the origin
    shifted = (np.array([[1.0, 0, -x0], [0, 1.0, -y0], [0, 0, 1]]) @ to_stored)[:2]
    # which of the centre's pixels the query covers: its frame moved the same way
    covered = cv2.warpAffine(np.ones(grey.shape, np.uint8), shifted, (x1 - x0, y1 - y0),
                             flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=0)
    if covered.mean() < CENTRE_SHARE:
        return None
    return cv2.warpAffine(np.ascontiguousarray(grey), shifted, (x1 - x0, y1 - y0),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def aligned(grey: np.ndarray, box: tuple[int, int, int, int], view_width: int,
            found: Verification, mirrored: bool, stored: LocalFeatures) -> np.ndarray | None:
    """The query's pixels moved onto the stored image's frame (at the stored
    image's analysed size) by the verified similarity, or None when the query
    covers too little of the stored image to stand for it.

    ``grey`` is the whole query, at any size (an ingest keeps it at
    :data:`ALIGN_SIDE`); ``box`` the part of it the verified features were
    taken from (the whole image, or a tile), ``view_width`` the width those
    features were analysed at. Comparing the stored image's hash with the
    hash of this picture asks whether the region the two share shows the
    same picture: a photo in a screenshot does, and so does a crop or a
    rotation; two signs of one template, or two screenshots of one app,
    match many keypoints but not this.
    """
    if found.matrix is None or found.stored_share < ALIGN_SHARE or not stored.width:
        return None
    cv2 = _cv2()
    to_stored = onto_stored(box, view_width, found, mirrored)
    grey, to_stored = _reduced(grey, to_stored)
    return cv2.warpAffine(np.ascontiguousarray(grey), to_stored[:2],
                          (stored.width, stored.height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def _reduced(grey: np.ndarray, to_stored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A large query reduced by area before it is warped (a warp samples, and
    would alias), with the transform from its pixels adjusted to match."""
    if max(grey.shape) <= 2 * SIDE:
        return grey, to_stored
    width = grey.shape[1]
    grey = reduce(grey, 2 * SIDE)
    shrink = grey.shape[1] / width
    return grey, to_stored @ np.diag([1 / shrink, 1 / shrink, 1.0])


#: Longer side of the grey pixels an ingest's analysis keeps of each new
#: image for the aligned comparison of its link candidates: PDQ looks at
#: 64x64 cells, so this loses nothing it sees, and the analysis stays small
#: enough to cross a worker's pipe unread (see :mod:`imgmatch.workers`).
ALIGN_SIDE = 192
#: ... unless that leaves its shorter side under this many pixels (where
#: the image has them): a banner of 810 x 246 kept at 192 x 58 leaves a
#: region it shares with a crop of it some 35 pixels high, which PDQ blurs
#: into another picture (40 bits from the crop's hash, against 22 for a
#: query's larger pixels, and the pair held down as two pictures).
ALIGN_SHORT = 144


def align_grey(grey: np.ndarray) -> np.ndarray:
    """The grey pixels an ingest keeps of a new image for the aligned
    comparison (:data:`ALIGN_SIDE`, :data:`ALIGN_SHORT`)."""
    h, w = grey.shape[:2]
    side = ALIGN_SIDE
    if ALIGN_SHORT and min(h, w) > 0:
        side = max(side, math.ceil(ALIGN_SHORT * max(h, w) / min(h, w)))
    return reduce(grey, side)


def reduce(grey: np.ndarray, side: int) -> np.ndarray:
    """The grey image scaled down by area so its longer side is at most ``side``."""
    h, w = grey.shape
    scale = side / max(h, w)
    if scale >= 1.0:
        return np.ascontiguousarray(grey, dtype=np.uint8)
    return _cv2().resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))),
                         interpolation=_cv2().INTER_AREA)


def best_of(query: LocalFeatures, mirrored: LocalFeatures | None,
            stored: LocalFeatures,
            frames: Sequence[tuple[float, float, float, float]] = (),
            min_support: float = 0.0) -> tuple[Verification, bool]:
    """The better verification of the query and its mirror; True if the mirror
    won. ``frames``: the query's (:func:`verify`), mirrored for the mirror;
    ``min_support``: as :func:`verify` takes it."""
    plain = verify(query, stored, frames, min_support)
    if mirrored is None or plain.support >= CONCLUSIVE_SUPPORT:
        return plain, False
    flipped = verify(mirrored, stored, mirrored_boxes(frames, mirrored.width), min_support)
    return (flipped, True) if flipped.support > plain.support else (plain, False)
