"""The public value types: sightings, matches, clusters, images (frozen dataclasses).

These are what the library returns and what the CLI and every report format
serialise; ``to_json`` gives the stable JSON shape documented in docs/cli.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .catalog import SightingRow
from .signals import HashValue

#: A sighting as given by a caller (where and when an image was seen).
Sighting = SightingRow


@dataclass(frozen=True)
class Match:
    """A catalogued image found for a query.

    ``score`` is in [0, 1], higher is surer; 0.5 means "at the match threshold
    of the strongest usable signal". ``distances`` are Hamming bits per signal
    (the smallest over the query's rotations and mirrors); ``agreed`` names
    the signals within their thresholds; ``low_information`` says that the
    query or the image was too plain for its hashes to count as evidence.
    """

    sha256: str | None
    image_id: int
    score: float
    distances: dict[str, int]
    agreed: tuple[str, ...]
    signals: dict[str, str]
    sightings: tuple[Sighting, ...] = ()
    image: dict = field(default_factory=dict)
    low_information: bool = False
    transform: str = "identity"

    def to_json(self) -> dict:
        return {
            "sha256": self.sha256,
            "score": round(self.score, 4),
            "distances": self.distances,
            "agreed": list(self.agreed),
            "transform": self.transform,
            "low_information": self.low_information,
            "signals": self.signals,
            "image": {k: v for k, v in self.image.items() if k not in ("id", "sha256")},
            "sightings": [s.to_json() for s in self.sightings],
        }


@dataclass(frozen=True)
class Cluster:
    """Images that are the same picture after edits, with all their sightings."""

    id: int
    image_ids: tuple[int, ...]
    images: tuple[dict, ...]
    sightings: tuple[Sighting, ...]
    links: tuple[dict, ...]

    @property
    def platforms(self) -> tuple[str, ...]:
        return tuple(sorted({s.platform for s in self.sightings if s.platform}))

    @property
    def dates(self) -> list[str]:
        return sorted(d for d in (s.seen_at for s in self.sightings) if d)

    @property
    def first_seen(self) -> str | None:
        dates = self.dates
        return dates[0] if dates else None

    @property
    def last_seen(self) -> str | None:
        dates = self.dates
        return dates[-1] if dates else None

    @property
    def ads(self) -> int:
        """Distinct ads: (platform, ad id), else the page URL, else the image URL."""
        keys = set()
        for s in self.sightings:
            if s.ad_id:
                keys.add(("ad", s.platform, s.ad_id))
            elif s.page_url:
                keys.add(("page", s.page_url))
            elif s.url:
                keys.add(("url", s.url))
        return len(keys)

    @property
    def platform_order(self) -> list[tuple[str, str]]:
        """Platforms in the order they first saw the picture: [(platform, date)]."""
        first: dict[str, str] = {}
        for s in self.sightings:
            when, platform = s.seen_at, s.platform
            if platform and when and (platform not in first or when < first[platform]):
                first[platform] = when
        return sorted(first.items(), key=lambda kv: kv[1])

    def rank_key(self) -> tuple:
        span = 0.0
        if self.first_seen and self.last_seen:
            span = _days_between(self.first_seen, self.last_seen)
        return (-len(self.platforms), -span, -len(self.sightings), self.id)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "platforms": list(self.platforms),
            "platform_order": [{"platform": p, "first_seen": d} for p, d in self.platform_order],
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "images": [{k: v for k, v in img.items() if k != "id"} for img in self.images],
            "sightings": [s.to_json() for s in self.sightings],
            "n_images": len(self.images),
            "n_sightings": len(self.sightings),
            "n_ads": self.ads,
            "links": list(self.links),
        }


def _days_between(a: str, b: str) -> float:
    from datetime import datetime

    fmt = "%Y-%m-%dT%H:%M:%SZ"
    try:
        return (datetime.strptime(b, fmt) - datetime.strptime(a, fmt)).total_seconds() / 86400
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class Link:
    """A near-duplicate link from one image to another, with its evidence."""

    sha256: str
    score: float
    distances: dict[str, int]
    agreed: tuple[str, ...]
    transform: str

    def to_json(self) -> dict:
        return {"sha256": self.sha256, "score": round(self.score, 4),
                "distances": self.distances, "agreed": list(self.agreed),
                "transform": self.transform}


@dataclass(frozen=True)
class ImageRecord:
    """One catalogued image: its facts, signal values, sightings and links."""

    sha256: str | None
    size_bytes: int | None
    width: int | None
    height: int | None
    format: str | None
    frames: int | None
    created_at: str
    signals: dict[str, HashValue]
    sightings: tuple[Sighting, ...]
    links: tuple[Link, ...]

    def to_json(self) -> dict:
        return {
            "sha256": self.sha256, "size_bytes": self.size_bytes, "width": self.width,
            "height": self.height, "format": self.format, "frames": self.frames,
            "created_at": self.created_at,
            "signals": {k: v.to_json() for k, v in sorted(self.signals.items())},
            "sightings": [s.to_json() for s in self.sightings],
            "links": [k.to_json() for k in self.links],
        }


@dataclass(frozen=True)
class Added:
    """What adding one image did."""

    sha256: str
    new_image: bool
    new_sighting: bool

    def to_json(self) -> dict:
        return {"sha256": self.sha256, "new_image": self.new_image,
                "new_sighting": self.new_sighting}
