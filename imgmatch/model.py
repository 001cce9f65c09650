"""The public value types: sightings, matches and clusters (frozen dataclasses).

These are what the library returns and what the CLI and every report format
serialise; ``to_json`` gives the stable JSON shape documented in docs/cli.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .catalog import SightingRow

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
    sightings: tuple[dict, ...] = ()
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
            "sightings": [_sighting_json(s) for s in self.sightings],
        }


@dataclass(frozen=True)
class Cluster:
    """Images that are the same picture after edits, with all their sightings."""

    id: int
    image_ids: tuple[int, ...]
    images: tuple[dict, ...]
    sightings: tuple[dict, ...]
    links: tuple[dict, ...]

    @property
    def platforms(self) -> tuple[str, ...]:
        return tuple(sorted({s["platform"] for s in self.sightings if s.get("platform")}))

    @property
    def dates(self) -> list[str]:
        return sorted(d for d in (seen_at(s) for s in self.sightings) if d)

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
            if s.get("ad_id"):
                keys.add(("ad", s.get("platform"), s["ad_id"]))
            elif s.get("page_url"):
                keys.add(("page", s["page_url"]))
            elif s.get("url"):
                keys.add(("url", s["url"]))
        return len(keys)

    @property
    def platform_order(self) -> list[tuple[str, str]]:
        """Platforms in the order they first saw the picture: [(platform, date)]."""
        first: dict[str, str] = {}
        for s in self.sightings:
            when, platform = seen_at(s), s.get("platform")
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
            "sightings": [_sighting_json(s) for s in self.sightings],
            "n_images": len(self.images),
            "n_sightings": len(self.sightings),
            "n_ads": self.ads,
            "links": list(self.links),
        }


def seen_at(sighting: dict) -> str | None:
    """When a sighting happened: posted_at, else collected_at."""
    return sighting.get("posted_at") or sighting.get("collected_at")


def _days_between(a: str, b: str) -> float:
    from datetime import datetime

    fmt = "%Y-%m-%dT%H:%M:%SZ"
    try:
        return (datetime.strptime(b, fmt) - datetime.strptime(a, fmt)).total_seconds() / 86400
    except ValueError:
        return 0.0


def _sighting_json(s: dict) -> dict:
    return {k: v for k, v in s.items() if k not in ("id",)}
