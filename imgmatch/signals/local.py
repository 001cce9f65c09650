"""Local features as a kind of signal: chosen, versioned and described like a hash.

A hash signal stores one short value per image and compares two by Hamming
distance. Local features store hundreds of keypoint descriptors per image;
two images are compared by matching them and verifying the geometry
(:mod:`imgmatch.features`), and candidates come from a vote index
(:mod:`imgmatch.descriptors`). The pipeline differs, but what the rest of
the engine needs to know is the same as for a hash: the name to choose it
by, the version stored beside each image's value, the decode it needs,
the threshold at which its evidence says "same", and how a report states
it. That is what this type gives, so the collection, the analysis, the
upgrade and the reports ask the registry, never a name.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from .. import evidence, features
from ..errors import SignalError
from .base import Signal
from .pdq import PDQ_MIN_QUALITY, bits_from_dct, dct_and_quality


class LocalSignalType(Signal):
    """Keypoints with binary descriptors, verified geometrically."""

    kind: ClassVar[str] = "local"
    index_suffix: ClassVar[str] = "descriptors"
    #: support (inliers, discounted where they crowd) from which a
    #: verification says "same picture" (``agreed`` lists the signal)
    threshold: ClassVar[float]

    @abstractmethod
    def extract(self, grey: np.ndarray) -> tuple[features.LocalFeatures,
                                                 features.LocalFeatures, np.ndarray]:
        """An image's features, its mirror image's (what it searches with),
        and the small grey image its candidates are compared with once aligned."""

    @abstractmethod
    def stored(self, found: features.LocalFeatures) -> tuple[int, int, bytes]:
        """What the catalog keeps of an image's features: version, count, blob."""

    @abstractmethod
    def load(self, blob: bytes) -> features.LocalFeatures:
        """Stored features back from the catalog's blob."""


class ORB(LocalSignalType):
    """OpenCV's ORB: 256-bit descriptors, at most :data:`features.MAX_FEATURES`
    per image, taken at :data:`features.SIDE` pixels."""

    name: ClassVar[str] = features.NAME
    version: ClassVar[int] = features.VERSION
    min_side: ClassVar[int] = features.SIDE
    threshold: ClassVar[float] = evidence.AGREED_SUPPORT

    def prepare(self) -> None:
        try:
            import cv2  # noqa: F401
        except ImportError as exc:  # a broken install: say so before any image is read
            raise SignalError(f"local features ({self.name}) need OpenCV, which cannot be "
                              f"imported ({exc}); reinstall imgmatch, or ingest with "
                              f"--fast for the hash tier") from None

    def extract(self, grey: np.ndarray) -> tuple[features.LocalFeatures,
                                                 features.LocalFeatures, np.ndarray]:
        prepared = features.prepare(grey)
        plain, mirrored = features.extract_both(prepared)
        if len(plain):
            plain = replace(plain, centre=centre_hash(prepared))
        return plain, mirrored, features.align_grey(prepared)

    def stored(self, found: features.LocalFeatures) -> tuple[int, int, bytes]:
        found = features.kept(found)
        return self.version, len(found), found.to_bytes()

    def load(self, blob: bytes) -> features.LocalFeatures:
        return features.LocalFeatures.from_bytes(blob)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": self.version, "threshold": self.threshold,
                "descriptor_bits": features.DESCRIPTOR_BYTES * 8,
                "max_features": features.MAX_FEATURES, "side": features.SIDE}


def centre_hash(prepared: np.ndarray) -> bytes | None:
    """PDQ of an image's centre (:func:`imgmatch.features.centre_box`), or None
    where the centre is too plain for its hash to tell pictures apart (under
    PDQ's own quality gate): a flat centre agrees with any other."""
    h, w = prepared.shape
    x0, y0, x1, y1 = features.centre_box(w, h)
    coeffs, q = dct_and_quality(prepared[y0:y1, x0:x1])
    if coeffs is None or q < PDQ_MIN_QUALITY:
        return None
    return bits_from_dct(coeffs)[0]
