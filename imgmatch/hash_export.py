"""Hashes out, never pictures: a collection's hashes in the formats partners read.

A partner who finds the same photos on their own platform needs the hashes,
not the photos, and not the crawled text around them (a platform name, a
caption or a file name can be made to say anything). So each format carries
hex hashes, their quality and imgmatch's own name for the image (its
SHA-256, or ``signal:hex`` for one known only by a hash); nothing crawled
goes into a line a partner's tool parses. Every format writes one hash per
line, in catalog order:

``pytx``
    python-threatexchange's local-file collaboration (``threatexchange
    config collab edit local_file --filename FILE``): ``pdq <hex>`` per line,
    nothing else. Its reader takes everything after the first space as the
    hash, so a name on the line would make the hash unreadable, and a
    comment line would be read as a signal of type ``#``. What the line
    cannot say travels in a sidecar (``FILE.meta.jsonl``, the ``jsonl``
    records below, each with the ``line`` it describes).
``hma-csv``
    HMA (Meta's Hasher-Matcher-Actioner, OpenMediaMatch) has no file import
    for banks: bank content arrives by its curation API, one
    ``POST /c/bank/<BANK>/signal`` with a JSON body ``{"<signal_type>":
    "<signal_str>"}`` per item, or from an exchange it fetches. This CSV is
    that call in rows, named as HMA and python-threatexchange name the
    fields: ``signal_type,signal_str,quality,content_id`` with a header
    (``content_id`` as HMA's bank-content metadata calls an item's id).
``meta-csv``
    what Meta's ``pdq-photo-hasher`` prints: ``hash,quality,filename``, no
    header; the filename column holds imgmatch's name for the image, and the
    quality column is empty for an imported hash that came without one.
``jsonl``
    a header line (``{"imgmatch_hash_export": 1, ...}``: the signal, the
    filters, the time and the collection's provenance, as reports state it),
    then one object per hash: ``sha256`` (null for a hash-only image),
    ``hash_key`` (``signal:hex`` for one, else null), ``signal``, ``hex``,
    ``quality``, ``low_quality``, ``sightings`` (``count``, ``platforms``,
    ``first_seen``, ``last_seen``) and ``cluster`` (when asked by cluster,
    else null). Text is ASCII (JSON escapes), so no character in a
    platform's name can end a line for any reader.

Hashes below their signal's quality gate (PDQ: 50) are written with their
quality and counted (``low_quality``), never dropped unless the caller asks
for a ``min_quality``, and then counted as skipped. Images ignored as stock
photos or logos (``imgmatch ignore``) are left out and counted.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from . import signals as registry
from .catalog import Catalog
from .errors import ExportError
from .records import Sighting
from .text import utcnow

#: The version of the jsonl header and records (and the pytx sidecar's).
EXPORT_VERSION = 1
#: Each format, and the signals it can carry (None: every hash signal).
#: pytx, hma-csv and meta-csv are read by tools that know PDQ, not imgmatch's
#: other hashes: a ``phash`` line would be passed over there without a word.
FORMATS: dict[str, frozenset[str] | None] = {
    "pytx": frozenset({"pdq"}),
    "hma-csv": frozenset({"pdq"}),
    "meta-csv": frozenset({"pdq"}),
    "jsonl": None,
}
#: The names of the formats, for a choice of them.
HASH_EXPORT_FORMATS: tuple[str, ...] = tuple(FORMATS)
#: The header row of hma-csv.
HMA_COLUMNS = ("signal_type", "signal_str", "quality", "content_id")
#: Images read from the catalog at a time (their sightings are summarised).
CHUNK = 5_000
#: python-threatexchange 1.2.17 finds nothing in a local file of exactly
#: one hash (its issue #1318); a summary says so rather than let a partner
#: believe there was no match.
ONE_HASH_NOTE = ("python-threatexchange matches nothing against a local file of exactly "
                 "one hash (its issue #1318): add a second hash to the file before "
                 "'threatexchange fetch'")


@dataclass(frozen=True)
class ExportedHash:
    """One hash as exported: the image it names, its value and quality, and
    a summary of where and when the image was seen (counts and dates, never
    the sightings' addresses or metadata)."""

    sha256: str | None
    hash_key: str | None
    signal: str
    hex: str
    quality: int | None
    low_quality: bool
    sightings: int
    platforms: tuple[str, ...]
    first_seen: str | None
    last_seen: str | None
    cluster: int | None = None

    @property
    def name(self) -> str:
        """imgmatch's name for the image: its SHA-256, else ``signal:hex``."""
        return self.sha256 or self.hash_key or f"{self.signal}:{self.hex}"

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "hash_key": self.hash_key, "signal": self.signal,
                "hex": self.hex, "quality": self.quality, "low_quality": self.low_quality,
                "sightings": {"count": self.sightings, "platforms": list(self.platforms),
                              "first_seen": self.first_seen, "last_seen": self.last_seen},
                "cluster": self.cluster}


@dataclass
class ExportSummary:
    """What an export wrote: the counts a partner and the audit log are told."""

    format: str
    signal: str
    lines: int = 0
    low_quality: int = 0
    skipped_low_quality: int = 0
    ignored: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "signal": self.signal, "lines": self.lines,
                "low_quality": self.low_quality,
                "skipped_low_quality": self.skipped_low_quality, "ignored": self.ignored,
                "notes": [ONE_HASH_NOTE] if self.format == "pytx" and self.lines == 1 else []}


def check_format(format: str, signal: str) -> None:
    """ExportError unless ``format`` is known and can carry ``signal`` hashes;
    SignalError (naming the known ones) for a signal that is not a hash signal."""
    if format not in FORMATS:
        raise ExportError(f"no hash export format {format!r}; one of "
                          f"{', '.join(HASH_EXPORT_FORMATS)}")
    registry.get(signal)
    carried = FORMATS[format]
    if carried is not None and signal not in carried:
        raise ExportError(f"--format {format} carries {', '.join(sorted(carried))} hashes "
                          f"only (the tools that read it know no {signal!r}); use "
                          f"--format jsonl for {signal}")


def export_hashes(catalog: Catalog, out: TextIO, format: str = "pytx", *,
                  signal: str = "pdq", cluster_of: Mapping[int, int] | None = None,
                  platforms: Sequence[str] = (), since: str | None = None,
                  until: str | None = None, ignored: Collection[int] = frozenset(),
                  min_quality: int | None = None, made_with: dict[str, Any] | None = None,
                  sidecar: TextIO | None = None) -> ExportSummary:
    """Write the hashes of ``signal`` to ``out`` in ``format``.

    ``cluster_of``: only these images, each with its cluster id (None: every
    image); ``platforms``: only images seen on one of them; ``since`` and
    ``until`` (dates or UTC times, as :func:`imgmatch.text.date_bound` gives
    them): only images seen at least once in that period. ``ignored``: image
    ids left out (counted). ``min_quality``: leave out values below it
    (counted); by default every value is written. ``sidecar``: the jsonl
    records of a ``pytx`` export, one per line written, numbered.
    """
    check_format(format, signal)
    gate = registry.get(signal).min_quality
    summary = ExportSummary(format, signal)
    header = {"imgmatch_hash_export": EXPORT_VERSION, "signal": signal,
              "exported_at": utcnow(),
              "filters": {"clusters": sorted(set(cluster_of.values())) if cluster_of else None,
                          "platforms": list(platforms), "since": since, "until": until,
                          "min_quality": min_quality},
              "quality_gate": gate, "made_with": made_with or {}}
    writer = _WRITERS[format](out, header)
    if sidecar is not None:
        _write_json(sidecar, header)
    for record in _records(catalog, signal, cluster_of, platforms, since, until, ignored,
                           gate, summary):
        if min_quality is not None and record.quality is not None \
                and record.quality < min_quality:
            summary.skipped_low_quality += 1
            continue
        writer(record)
        summary.lines += 1
        summary.low_quality += record.low_quality
        if sidecar is not None:
            _write_json(sidecar, {"line": summary.lines, **record.to_json()})
    return summary


# ------------------------------------------------------------------ reading
def _records(catalog: Catalog, signal: str, cluster_of: Mapping[int, int] | None,
             platforms: Sequence[str], since: str | None, until: str | None,
             ignored: Collection[int], gate: int | None,
             summary: ExportSummary) -> Iterator[ExportedHash]:
    """The selected images' values of ``signal``, in catalog order."""
    wanted = set(platforms)
    for rows in _value_rows(catalog, signal, cluster_of):
        ids = [row[0] for row in rows]
        images = catalog.images(ids)
        sightings = catalog.sightings_of(ids)
        for image_id, value, quality in rows:
            seen = sightings.get(image_id, [])
            if wanted and not any(s.platform in wanted for s in seen):
                continue
            if (since or until) and not any(_within(s, since, until) for s in seen):
                continue
            if image_id in ignored:  # counted among those the filters chose
                summary.ignored += 1
                continue
            image = images.get(image_id, {})
            dates = sorted(d for d in (s.seen_at for s in seen) if d)
            yield ExportedHash(
                sha256=image.get("sha256"),
                hash_key=None if image.get("sha256") else
                (image.get("hash_key") or f"{signal}:{bytes(value).hex()}"),
                signal=signal, hex=bytes(value).hex(), quality=quality,
                low_quality=gate is not None and quality is not None and quality < gate,
                sightings=len(seen),
                platforms=tuple(sorted({s.platform for s in seen if s.platform})),
                first_seen=dates[0] if dates else None,
                last_seen=dates[-1] if dates else None,
                cluster=None if cluster_of is None else cluster_of.get(image_id))


def _value_rows(catalog: Catalog, signal: str, only: Mapping[int, int] | None
                ) -> Iterable[list[tuple[int, bytes, int | None]]]:
    """(image id, value, quality) in chunks: every image's, or those of ``only``."""
    if only is None:
        yield from catalog.iter_signal(signal, chunk=CHUNK)
        return
    ids = sorted(only)
    for start in range(0, len(ids), CHUNK):
        part = ids[start:start + CHUNK]
        values = catalog.signals_of(part)
        yield [(i, *values[i][signal]) for i in part if signal in values.get(i, {})]


def _within(sighting: Sighting, since: str | None, until: str | None) -> bool:
    """Whether a sighting falls in the period, as a report's clusters are kept
    (``until`` a date takes the whole day)."""
    seen = sighting.seen_at or ""
    return (not since or seen >= since) and (not until or seen <= until + "\uffff")


# ------------------------------------------------------------------ writing
def _write_json(out: TextIO, obj: Mapping[str, Any]) -> None:
    """One JSON line, all ASCII: a U+2028 in a platform's name is escaped, so
    no reader that splits on Unicode line breaks sees a line end in it."""
    out.write(json.dumps(obj, ensure_ascii=True, allow_nan=False) + "\n")


#: Writes one hash; made by a format's writer for one output stream.
Row = Callable[[ExportedHash], object]
Writer = Callable[[TextIO, dict[str, Any]], Row]


def _pytx(out: TextIO, header: dict[str, Any]) -> Row:
    """``pdq <hex>``: nothing after the hash (see the module's docstring)."""
    return lambda r: out.write(f"{r.signal} {r.hex}\n")


def _csv(columns: Sequence[str] | None,
         cells: Callable[[ExportedHash], Sequence[str]]) -> Writer:
    """A CSV writer (RFC 4180 quoting, LF line ends), with a header row if named."""
    def make(out: TextIO, header: dict[str, Any]) -> Row:
        writer = csv.writer(out, lineterminator="\n")
        if columns:
            writer.writerow(columns)
        return lambda r: writer.writerow(cells(r))
    return make


def _jsonl(out: TextIO, header: dict[str, Any]) -> Row:
    _write_json(out, header)
    return lambda r: _write_json(out, r.to_json())


def _quality(r: ExportedHash) -> str:
    return "" if r.quality is None else str(r.quality)


_WRITERS: dict[str, Writer] = {
    "pytx": _pytx,
    "hma-csv": _csv(HMA_COLUMNS, lambda r: (r.signal, r.hex, _quality(r), r.name)),
    "meta-csv": _csv(None, lambda r: (r.hex, _quality(r), r.name)),
    "jsonl": _jsonl,
}
