"""The public value types: matches, clusters, images, links (frozen dataclasses).

These are what the library returns and what the CLI and every report format
serialise; ``to_json`` gives the stable JSON shape documented in docs/cli.md.
Like :mod:`imgmatch.records` (sightings and hash values, which they carry),
they know nothing of storage: this module imports only the records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import pairwise

from .records import HashValue, Sighting


@dataclass(frozen=True)
class Match:
    """A catalogued image found for a query.

    ``score`` is in [0, 1], higher is surer: an estimate, calibrated on held-out
    benchmark data, of the probability that both show the same picture (the
    score-to-precision tables are in docs/benchmarks.md). ``distances`` are
    Hamming bits per signal (the smallest over the query's rotations and
    mirrors); ``agreed`` names the signals that say "same" (``orb``: verified
    geometry), ``disagreed`` those that say "different"; ``evidence`` gives
    every signal's distance and whether its values were informative, and
    the verification's inliers, their spread and the shared area;
    ``low_information`` says that the query or the image was too plain for
    its hashes to count as evidence.
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
    #: local-feature matches that one similarity transform explains (robust
    #: tier; None when the pair was not verified geometrically)
    inliers: int | None = None
    disagreed: tuple[str, ...] = ()
    evidence: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "sha256": self.sha256,
            "score": round(self.score, 4),
            "distances": self.distances,
            "agreed": list(self.agreed),
            "disagreed": list(self.disagreed),
            "transform": self.transform,
            "low_information": self.low_information,
            **({"inliers": self.inliers} if self.inliers is not None else {}),
            "signals": self.signals,
            "image": {k: v for k, v in self.image.items() if k not in ("id", "sha256")
                      and v is not None},
            "sightings": [s.to_json() for s in self.sightings],
            **({"evidence": self.evidence} if self.evidence else {}),
        }


@dataclass(frozen=True)
class Cluster:
    """Images that are the same picture after edits, with all their sightings."""

    id: int
    image_ids: tuple[int, ...]
    images: tuple[dict, ...]
    sightings: tuple[Sighting, ...]
    links: tuple[dict, ...]
    #: watchlist entries that hit its images: each with the image's name
    #: (``image``), the list and its provenance, the distance and score
    watched: tuple[dict, ...] = ()

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
        return len({k for k in map(self.ad_key, self.sightings) if k is not None})

    @staticmethod
    def ad_key(sighting: Sighting) -> tuple | None:
        """What makes a sighting's ad one ad: ``("ad", platform, ad_id)``, else
        ``("page", page_url)``, else ``("url", url)``; None when it says none."""
        if sighting.ad_id:
            return ("ad", sighting.platform, sighting.ad_id)
        if sighting.page_url:
            return ("page", sighting.page_url)
        if sighting.url:
            return ("url", sighting.url)
        return None

    @property
    def urls(self) -> int:
        """Distinct image URLs among the sightings."""
        return len({s.url for s in self.sightings if s.url})

    @property
    def extra_fields(self) -> list[str]:
        """The names of the extra metadata fields any sighting carries, sorted."""
        return sorted({str(k) for s in self.sightings for k in (s.extra or {})})

    def field_values(self, names: Iterable[str] | None = None) -> dict[str, list[str]]:
        """Distinct values of extra metadata fields (phone, city...) as sorted text.

        ``names`` defaults to every field present. Empty values are left out;
        a field no sighting carries maps to an empty list. Numbers and other
        JSON values are given as their JSON text.
        """
        wanted = self.extra_fields if names is None else [str(n) for n in names]
        values: dict[str, set[str]] = {name: set() for name in wanted}
        for s in self.sightings:
            for key, value in (s.extra or {}).items():
                key = str(key)
                if key in values and value is not None and value != "":
                    values[key].add(_as_text(value))
        return {name: sorted(found) for name, found in values.items()}

    @property
    def platform_order(self) -> list[tuple[str, str]]:
        """Platforms in the order they first saw the picture: [(platform, date)]."""
        first: dict[str, str] = {}
        for s in self.sightings:
            when, platform = s.seen_at, s.platform
            if platform and when and (platform not in first or when < first[platform]):
                first[platform] = when
        return sorted(first.items(), key=lambda kv: kv[1])

    @property
    def gaps(self) -> list[tuple[str, str, float | None]]:
        """Days between consecutive platforms of ``platform_order``:
        ``[(platform_from, platform_to, days)]``, days to 0.1, None if a date
        cannot be read."""
        order = self.platform_order
        out = []
        for (p_from, d_from), (p_to, d_to) in pairwise(order):
            start, end = parse_utc(d_from), parse_utc(d_to)
            days = None if start is None or end is None else round(
                (end - start).total_seconds() / 86400, 1)
            out.append((p_from, p_to, days))
        return out

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
            "gaps": [{"from": a, "to": b, "days": d} for a, b, d in self.gaps],
            "n_urls": self.urls,
            "watched": [dict(w) for w in self.watched],
        }


def parse_utc(text: str | None) -> datetime | None:
    """A stored UTC time ('YYYY-MM-DDTHH:MM:SSZ', or ISO 8601) as an aware datetime."""
    if not text or not isinstance(text, str) or len(text) > 64:
        return None
    try:
        when = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        try:
            when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError:
            return None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _days_between(a: str, b: str) -> float:
    from datetime import datetime

    fmt = "%Y-%m-%dT%H:%M:%SZ"
    try:
        return (datetime.strptime(b, fmt) - datetime.strptime(a, fmt)).total_seconds() / 86400
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class Link:
    """A near-duplicate link from one image to another, with its evidence:
    ``distances`` in bits per hash, and ``inliers`` among them for a pair
    verified geometrically (links stored before they kept it have none).

    The other image is named by its ``sha256``; one known only by a partner's
    hash has none, and is named by ``hash_key`` (``pdq:<hex>``) instead.
    """

    sha256: str | None
    score: float
    distances: dict[str, int]
    agreed: tuple[str, ...]
    transform: str
    hash_key: str | None = None

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
    #: when the camera took it (EXIF DateTimeOriginal, local time), if known
    captured_at: str | None = None
    #: watchlist entries that hit it, each with its list's provenance
    #: (watchlist, source, licence, added_at), distance and score
    watched: tuple[dict, ...] = ()

    def to_json(self) -> dict:
        return {
            "sha256": self.sha256, "size_bytes": self.size_bytes, "width": self.width,
            "height": self.height, "format": self.format, "frames": self.frames,
            "created_at": self.created_at, "captured_at": self.captured_at,
            "signals": {k: v.to_json() for k, v in sorted(self.signals.items())},
            "sightings": [s.to_json() for s in self.sightings],
            "links": [k.to_json() for k in self.links],
            "watched": [dict(w) for w in self.watched],
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


@dataclass(frozen=True)
class SignalComparison:
    """One hash signal of two images, compared as a query compares it.

    ``distance`` is the Hamming distance in bits (the smallest over the first
    image's rotations and mirrors, where the signal can derive them from a
    value); ``threshold`` is the signal's own (inclusive) match threshold and
    ``scale`` the distance at which the evidence model turns agreement into
    disagreement (None for a signal outside the model). ``verdict`` is
    ``agreed`` (within half the scale), ``disagreed`` (beyond the scale),
    ``inconclusive`` (between) or ``uninformative`` (a value too plain to be
    evidence, or a low-information pair). ``versions`` are the algorithm
    versions the two values were computed with; ``version`` is this
    imgmatch's. ``a`` is the value of the first image's ``transform`` (the
    rotation or mirror closest to ``b``) that the distance is measured from.
    """

    signal: str
    a: str
    b: str
    distance: int
    bits: int
    threshold: int
    scale: float | None
    version: int
    versions: tuple[int, int]
    quality: int | None
    informative: bool
    verdict: str
    transform: str = "identity"

    def to_json(self) -> dict:
        return {"signal": self.signal, "a": self.a, "transform": self.transform, "b": self.b,
                "distance": self.distance,
                "bits": self.bits, "threshold": self.threshold, "scale": self.scale,
                "version": self.version, "versions": list(self.versions),
                "quality": self.quality, "informative": self.informative,
                "verdict": self.verdict}


@dataclass(frozen=True)
class Explanation:
    """Why two catalogued images match or not: the evidence a query weighs,
    the score it makes and what that score is worth.

    ``verdict`` is ``same`` (score at or above ``thresholds["cluster"]``, the
    score clusters are built from), ``lead`` (at or above
    ``thresholds["match"]``, what a query reports by default) or
    ``different``. ``model_score`` is the evidence model's score before the
    ``rules`` that capped it (each rule's name and what it says);
    ``terms`` its log-odds, term by term. ``verification`` holds the local
    features' comparison (robust tier; None when they were not compared);
    ``calibration`` the precision measured on held-out data at this score
    (``at_least``: the row of the table the score reaches; empty under the
    lowest row). ``link`` is the stored near-duplicate link between the two,
    if there is one; ``notes`` say what this comparison could not do.
    """

    a: str
    b: str
    verdict: str
    score: float
    model_score: float
    tier: str
    rules: dict[str, str]
    low_information: bool
    transform: str
    signals: tuple[SignalComparison, ...]
    verification: dict | None
    calibration: dict
    thresholds: dict[str, float]
    terms: dict[str, float]
    link: Link | None = None
    notes: tuple[str, ...] = ()
    #: the model that weighed the evidence: the tier's, or ``pdq`` for a
    #: hash-tier pair ranked by PDQ first (its 64-bit hashes only break ties)
    weighed_by: str = ""

    @property
    def summary(self) -> str:
        """One line: the verdict, the score and the precision measured at it."""
        what = {"same": "same picture", "lead": "possibly the same picture (a lead)",
                "different": "different pictures"}[self.verdict]
        cal = self.calibration
        if cal:
            where = (f"precision {cal['precision']:.4f} at scores >= {cal['at_least']:.2f} "
                     f"on held-out data")
        else:
            where = "below every row of the calibration table"
        return f"{what} (score {self.score:.4f}, {where})"

    def to_json(self) -> dict:
        return {
            "a": self.a, "b": self.b, "verdict": self.verdict, "summary": self.summary,
            "score": round(self.score, 4), "model_score": round(self.model_score, 4),
            "tier": self.tier, "weighed_by": self.weighed_by or self.tier,
            "rules": dict(self.rules),
            "low_information": self.low_information, "transform": self.transform,
            "signals": [s.to_json() for s in self.signals],
            "verification": self.verification, "calibration": self.calibration,
            "thresholds": self.thresholds,
            "terms": {k: round(v, 4) for k, v in self.terms.items()},
            "link": self.link.to_json() if self.link is not None else None,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class AuditEntry:
    """One entry of a collection's audit log: who (``actor``) did what
    (``action``, with ``details``: counts, options, filters, formats; never
    a picture's SHA-256, hashes, URLs or metadata) and when (``at``, UTC).

    Entries are chained: ``digest`` is the SHA-256 of ``prev`` (the previous
    entry's digest) and the entry's canonical JSON
    (:func:`imgmatch.audit.digest_of`), so changing or removing an entry
    breaks every digest after it.
    """

    seq: int
    at: str
    actor: str
    action: str
    details: dict
    prev: str
    digest: str

    def to_json(self) -> dict:
        return {"seq": self.seq, "at": self.at, "actor": self.actor, "action": self.action,
                "details": self.details, "prev": self.prev, "digest": self.digest}
