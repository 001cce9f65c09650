"""Hash lists into the catalog: each hash an image known only by its signal value.

A partner's list (:mod:`imgmatch.hashlists`) has no pictures: each of its
hashes becomes an image identified by ``signal:hex`` (so importing a list
twice adds nothing twice), seen where the line's name says (else the list's
file and line number). Lines are written in large transactions under a
bigger page cache (:meth:`~imgmatch.catalog.Catalog.bulk_cache`); unreadable
lines are recorded as failures with their number, never fatal. Indexing and
linking the new images is the caller's next step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from . import signals as registry
from .catalog import Catalog
from .hashlists import read_hash_list
from .records import Sighting

#: Lines written per transaction.
BATCH = 50_000


@dataclass
class HashImport:
    """What importing one list did."""

    lines: int = 0
    images_added: int = 0
    sightings_added: int = 0
    #: (source, reason, detail) of each unreadable line
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    #: the smallest id of the images added (0: none), from which indexes catch up
    first_id: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"lines": self.lines, "images_added": self.images_added,
                "sightings_added": self.sightings_added, "failed": len(self.failures),
                "failures": [{"source": s, "reason": r, "detail": d}
                             for s, r, d in self.failures]}


def import_hash_list(catalog: Catalog, path: str | Path, *, signal: str = "pdq",
                     platform: str | None = None, batch: int = BATCH,
                     run_id: int | None = None,
                     provenance: dict[str, str] | None = None) -> HashImport:
    """Catalogue every hash of a list of ``signal`` hashes, with a sighting each.

    ``provenance`` (who shared the list, under what terms) goes into every
    sighting's extra fields, so that wherever the hash shows its sightings
    (``show``, query results, reports) it shows where it came from."""
    bits = registry.get(signal).bits
    extra = {k: v for k, v in (provenance or {}).items() if v}
    done = HashImport()
    lines = read_hash_list(path, signal=signal, digits=bits // 4)
    with catalog.bulk_cache():
        while chunk := list(islice(lines, batch)):
            rows = []
            for line in chunk:
                done.lines += 1
                if line.value is None:
                    done.failures.append((f"{path}:{line.line_no}", "bad-hash",
                                          line.error or ""))
                    continue
                rows.append((line.signal, line.value, line.quality, Sighting(
                    platform=platform, source=line.name or f"{Path(path).name}:{line.line_no}",
                    extra=dict(extra))))
            added, sightings, first = catalog.import_hashes(rows, run_id)
            done.images_added += added
            done.sightings_added += sightings
            if added and not done.first_id:
                done.first_id = first
    if done.failures:
        catalog.write_batch([], [], done.failures, run_id)
    return done
