"""Plain records: a sighting, a hash value, an analysed image, a link.

Frozen dataclasses that know nothing of storage, so every layer can hold
them: decoding and hashing make them, the catalog stores them (and makes
them again from its rows), the library returns them. This module imports
only the exception tree and the text helpers (which import nothing), so
importing it loads neither SQLite nor FAISS.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import SignalError
from .text import clean_field, parse_when, safe_text

#: The fields of a sighting, in the order the catalog stores them.
SIGHTING_FIELDS: tuple[str, ...] = (
    "platform", "url", "page_url", "ad_id", "posted_at", "collected_at", "source")
#: Fields of a manifest row, JSON line or form that name the file, not the sighting.
PATH_KEYS: tuple[str, ...] = ("path", "file", "filename")
_DATE_FIELDS = ("posted_at", "collected_at")


@dataclass(frozen=True)
class Sighting:
    """Where and when an image was seen. ``extra`` is free JSON-able metadata.

    Given by callers without ``sha256``; read back from the catalog, it names
    the image it is a sighting of.
    """

    platform: str | None = None
    url: str | None = None
    page_url: str | None = None
    ad_id: str | None = None
    posted_at: str | None = None
    collected_at: str | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None

    @classmethod
    def from_fields(cls, row: Mapping[str, Any], *,
                    default_platform: str | None = None) -> Sighting:
        """A sighting from the fields of a manifest row, a JSON line or a form:
        known fields by name, dates made ISO 8601 UTC (an unreadable one is kept
        in ``extra`` as ``<field>_raw``), every other field in ``extra``; the
        fields naming a file (:data:`PATH_KEYS`) are left out."""
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        given_extra = row.get("extra")
        if isinstance(given_extra, dict):
            extra.update({str(k)[:200]: clean_field(v) for k, v in given_extra.items()})
        for key, value in row.items():
            if key in PATH_KEYS or key == "extra" or value in (None, ""):
                continue
            if key in SIGHTING_FIELDS:
                values[key] = clean_field(value if isinstance(value, str) else json.dumps(value))
            else:
                extra[str(key)[:200]] = clean_field(value)
        for key in _DATE_FIELDS:
            given = values.get(key)
            if given:
                parsed = parse_when(given)
                if parsed is None:
                    extra[f"{key}_raw"] = given
                values[key] = parsed
        if values.get("platform") is None:
            values["platform"] = default_platform
        return cls(extra=extra, **values)

    @property
    def seen_at(self) -> str | None:
        """When it happened: posted_at, else collected_at (ISO 8601 UTC)."""
        return self.posted_at or self.collected_at

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {f: getattr(self, f) for f in SIGHTING_FIELDS}
        out["extra"] = dict(self.extra)
        if self.sha256 is not None:
            out = {"sha256": self.sha256, **out}
        return out

    def normalised(self) -> Sighting:
        """Dates as ISO 8601 UTC (an unreadable one moves to extra as
        ``<field>_raw``), and text that encodes as UTF-8: what the catalog stores."""
        def text(v: Any) -> Any:
            return safe_text(v) if isinstance(v, str) else v

        values = {f: text(getattr(self, f)) for f in SIGHTING_FIELDS}
        extra = {text(str(k)): (text(v) if isinstance(v, str) else v)
                 for k, v in self.extra.items()}
        for f in _DATE_FIELDS:
            raw = values[f]
            if raw is not None:
                parsed = parse_when(str(raw))
                if parsed is None:
                    extra[f"{f}_raw"] = raw
                values[f] = parsed
        return Sighting(**values, extra=extra, sha256=self.sha256)

    def key(self, sha256: str) -> str:
        """Identity of a sighting: the same image seen with the same metadata.

        Where a sighting says where on the web it was (url, page or ad), the
        local file it was read from is not part of its identity, so the same
        crawl ingested from another folder adds nothing twice.
        """
        located = bool(self.url or self.page_url or self.ad_id)
        fields = [f for f in SIGHTING_FIELDS if not (located and f == "source")]
        payload = [sha256] + [getattr(self, f) for f in fields] + [self.extra]
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=True, default=str)
        return hashlib.sha256(blob.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class HashValue:
    """A binary hash of one signal type; ``a - b`` is their Hamming distance.

    It always knows which signal it belongs to, so a pHash is never compared
    with a PDQ hash by mistake. Storage uses the packed bytes; hex is for
    display and exchange.
    """

    signal: str
    data: bytes
    quality: int | None = field(default=None, compare=False)

    def __sub__(self, other: HashValue) -> int:
        if not isinstance(other, HashValue):
            return NotImplemented
        if other.signal != self.signal or len(other.data) != len(self.data):
            raise SignalError(f"cannot compare a {self.signal} hash with a {other.signal} hash")
        return hamming(self.data, other.data)

    @property
    def hex(self) -> str:
        return self.data.hex()

    @property
    def bits(self) -> int:
        return len(self.data) * 8

    def __str__(self) -> str:
        return self.hex

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"signal": self.signal, "hex": self.hex}
        if self.quality is not None:
            out["quality"] = self.quality
        return out


def hamming(a: bytes, b: bytes) -> int:
    """Number of differing bits between two equal-length byte strings."""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


@dataclass(frozen=True)
class SignalRow:
    """One stored signal value of an image, as the catalog keeps it."""

    signal: str
    version: int
    value: bytes
    quality: int | None


@dataclass(frozen=True)
class ImageRow:
    """One analysed image, ready to be written."""

    sha256: str
    size_bytes: int | None
    width: int | None
    height: int | None
    format: str | None
    mode: str | None
    frames: int | None
    signals: tuple[SignalRow, ...]
    #: a small JPEG, only when the user asked for thumbnails
    thumbnail: bytes | None = None
    #: local features (:mod:`imgmatch.features`), only in the robust tier:
    #: (version, keypoint count, blob)
    features: tuple[int, int, bytes] | None = None
    #: when the camera took it (EXIF DateTimeOriginal), where the file says so
    captured_at: str | None = None


#: A box (x0, y0, x1, y1) as shares of an image's width and height.
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class LinkRow:
    """A near-duplicate edge between two images (a < b) and its evidence."""

    a: int
    b: int
    score: float
    distances: dict[str, int]
    agreed: tuple[str, ...]
    transform: str
    #: where the verified inliers lie in a and in b: (x0, y0, x1, y1) boxes as
    #: shares of each image's sides, None where not known
    regions: tuple[Box | None, Box | None] | None = None
