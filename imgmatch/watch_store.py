"""Watchlists in the catalog: partners' hashes, what they hit, and the alerts.

A watchlist (a "bank" in HMA's words) is a named list of one signal's hashes
with who shared it, under what terms, and how close a match must be. Its
entries are kept apart from the images: a partner's hash is a question
("tell me when this turns up"), not a sighting. What an entry hits is
recorded once per image (``watch_hits``); an alert is raised per new
sighting of a hit image, in the same transaction as that sighting, so an
alert is never lost to a crash and never raised twice for one sighting
(``UNIQUE (entry_id, sighting_id)``).

Alerts are numbered in the order they are raised; that number is the cursor
of every feed (``GET /v1/alerts?after=N``, ``imgmatch alerts``), and each
delivery target (a file, a webhook) keeps how far it has been delivered, so
a killed delivery resumes from there: at least once, in order.

Erasing an image takes its hits and alerts with it; removing an entry (a
StopNCII deletion) takes its hits and alerts too.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from .errors import WatchlistError
from .records import SIGHTING_FIELDS
from .text import utcnow

#: A watchlist's name: what commands, feeds and HMA's ``banks`` call it by.
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
MAX_NAME = 64


@dataclass(frozen=True)
class WatchlistRow:
    """A watchlist as stored, with its entry counts."""

    id: int
    name: str
    signal: str
    source: str | None
    licence: str | None
    threshold: int | None     # None: the signal's own threshold
    negative: bool
    flood: int | None         # None: the default flood limit
    created_at: str
    entries: int = 0
    quarantined: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "signal": self.signal, "source": self.source,
                "licence": self.licence, "threshold": self.threshold,
                "negative": self.negative, "flood": self.flood,
                "created_at": self.created_at, "entries": self.entries,
                "quarantined": self.quarantined}


@dataclass(frozen=True)
class EntryRow:
    """One entry with what matching it needs: its list's threshold and kind."""

    id: int
    watchlist_id: int
    value: bytes
    quality: int | None
    name: str | None
    quarantined: bool


@dataclass(frozen=True)
class HitRow:
    """An entry within its list's threshold of an image."""

    entry_id: int
    image_id: int
    distance: int
    transform: str
    score: float
    #: False where the pair is too plain to be evidence (recorded, not alerted)
    alerting: bool


def check_name(name: str) -> str:
    """A watchlist name as given, or WatchlistError saying what may be in one."""
    if not name or len(name) > MAX_NAME or not set(name) <= NAME_CHARS:
        raise WatchlistError(
            f"watchlist name {name[:80]!r}: use 1-{MAX_NAME} letters, digits, '_', '-' or '.'")
    return name


class WatchStore:
    """The watchlist tables of one catalog connection.

    ``transaction`` is the catalog's own (BEGIN IMMEDIATE ... COMMIT); methods
    whose name says ``_in`` run inside a transaction the caller holds.
    """

    def __init__(self, conn: sqlite3.Connection,
                 transaction: Callable[[], AbstractContextManager[None]]) -> None:
        self.conn = conn
        self._transaction = transaction

    # ------------------------------------------------------------ lists
    def version(self) -> int:
        """Bumped by every change to lists or entries: in-memory indexes of the
        entries reload when it moves (another process may have changed them)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'watch_version'").fetchone()
        return int(row[0]) if row else 0

    def _bump_in(self) -> None:
        self.conn.execute("UPDATE meta SET value = CAST(value AS BIGINT) + 1 "
                          "WHERE key = 'watch_version'")

    def add_list(self, name: str, signal: str, *, source: str | None, licence: str | None,
                 threshold: int | None, negative: bool, flood: int | None) -> int:
        check_name(name)
        with self._transaction():
            if self.conn.execute("SELECT 1 FROM watchlists WHERE name = ?", (name,)).fetchone():
                raise WatchlistError(
                    f"a watchlist named {name!r} exists; add to it with 'watchlist add "
                    f"{name} FILE --append', or remove it first")
            cur = self.conn.execute(
                "INSERT INTO watchlists (name, signal, source, licence, threshold, negative, "
                "flood, created_at) VALUES (?,?,?,?,?,?,?,?)",
                (name, signal, source, licence, threshold, int(negative), flood, utcnow()))
            self._bump_in()
        return int(cur.lastrowid or 0)

    def add_entries(self, watchlist_id: int,
                    rows: Iterable[tuple[bytes, int | None, str | None, int]]) -> list[int]:
        """(value, quality, name, line) rows, one transaction; ids of the new
        entries (a value already on the list is kept as it was)."""
        now = utcnow()
        with self._transaction():
            before = self.conn.execute("SELECT coalesce(max(id), 0) FROM watch_entries"
                                       ).fetchone()[0]
            self.conn.executemany(
                "INSERT INTO watch_entries (watchlist_id, value, quality, name, line, added_at) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT(watchlist_id, value) DO NOTHING",
                [(watchlist_id, v, q, n, line, now) for v, q, n, line in rows])
            self._bump_in()
            return [r[0] for r in self.conn.execute(
                "SELECT id FROM watch_entries WHERE watchlist_id = ? AND id > ? ORDER BY id",
                (watchlist_id, before))]

    def lists(self) -> list[WatchlistRow]:
        rows = self.conn.execute(
            "SELECT w.id, w.name, w.signal, w.source, w.licence, w.threshold, w.negative, "
            "w.flood, w.created_at, count(e.id), count(e.quarantined_at) FROM watchlists w "
            "LEFT JOIN watch_entries e ON e.watchlist_id = w.id GROUP BY w.id ORDER BY w.name")
        return [WatchlistRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7], r[8],
                             r[9], r[10]) for r in rows]

    def get_list(self, name: str) -> WatchlistRow:
        for row in self.lists():
            if row.name == name:
                return row
        known = ", ".join(r.name for r in self.lists()) or "none yet"
        raise WatchlistError(f"no watchlist named {name[:80]!r} (watchlists: {known})")

    def remove_list(self, name: str) -> int:
        """Remove a list with its entries, hits and alerts; the entries removed."""
        row = self.get_list(name)
        with self._transaction():
            self.conn.execute("DELETE FROM watchlists WHERE id = ?", (row.id,))
            self._bump_in()
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return row.entries

    def remove_values(self, name: str, values: Sequence[bytes]) -> int:
        """Take single hashes off a list (a partner's deletion), with their
        hits and alerts; the entries removed."""
        row = self.get_list(name)
        removed = 0
        with self._transaction():
            for value in values:
                removed += self.conn.execute(
                    "DELETE FROM watch_entries WHERE watchlist_id = ? AND value = ?",
                    (row.id, value)).rowcount
            self._bump_in()
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed

    def release(self, name: str, values: Sequence[bytes] | None = None) -> int:
        """Lift the quarantine of a list's entries (all, or those with these values)."""
        row = self.get_list(name)
        with self._transaction():
            if values is None:
                n = self.conn.execute(
                    "UPDATE watch_entries SET quarantined_at = NULL WHERE watchlist_id = ? "
                    "AND quarantined_at IS NOT NULL", (row.id,)).rowcount
            else:
                n = sum(self.conn.execute(
                    "UPDATE watch_entries SET quarantined_at = NULL WHERE watchlist_id = ? "
                    "AND value = ? AND quarantined_at IS NOT NULL", (row.id, v)).rowcount
                    for v in values)
            self._bump_in()
        return n

    def entries(self, signal: str) -> Iterator[EntryRow]:
        """Every entry of the lists of ``signal``, for an in-memory index."""
        for r in self.conn.execute(
                "SELECT e.id, e.watchlist_id, e.value, e.quality, e.name, e.quarantined_at "
                "FROM watch_entries e JOIN watchlists w ON w.id = e.watchlist_id "
                "WHERE w.signal = ? ORDER BY e.id", (signal,)):
            yield EntryRow(r[0], r[1], bytes(r[2]), r[3], r[4], r[5] is not None)

    def values_of(self, ids: Sequence[int]) -> dict[int, tuple[bytes, int | None]]:
        """Entries' values and qualities, by entry id."""
        out: dict[int, tuple[bytes, int | None]] = {}
        for chunk in _chunks(list(ids), 500):
            out.update((r[0], (bytes(r[1]), r[2])) for r in self.conn.execute(
                f"SELECT id, value, quality FROM watch_entries WHERE id IN "
                f"({','.join('?' * len(chunk))})", chunk))
        return out

    def sightings_by_id(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Sightings' fields an alert carries (those given), by sighting id."""
        out: dict[int, dict[str, Any]] = {}
        for chunk in _chunks(list(ids), 500):
            for row in self.conn.execute(
                    f"SELECT id, {', '.join(SIGHTING_FIELDS)} FROM sightings "
                    f"WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                out[row[0]] = {k: v for k, v in zip(SIGHTING_FIELDS, row[1:])
                               if v is not None}
        return out

    def entries_by_id(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Entries with their list's provenance, as alerts and lookups show them."""
        out: dict[int, dict[str, Any]] = {}
        for chunk in _chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            for r in self.conn.execute(
                    "SELECT e.id, w.name, w.signal, e.value, e.quality, e.name, e.line, "
                    "e.added_at, e.quarantined_at, w.source, w.licence, w.threshold, "
                    f"w.negative FROM watch_entries e JOIN watchlists w ON w.id = e.watchlist_id "
                    f"WHERE e.id IN ({marks})", chunk):
                out[r[0]] = {"entry_id": r[0], "watchlist": r[1], "signal": r[2],
                             "hex": bytes(r[3]).hex(), "quality": r[4], "name": r[5],
                             "line": r[6], "added_at": r[7], "quarantined": r[8] is not None,
                             "source": r[9], "licence": r[10], "threshold": r[11],
                             "negative": bool(r[12])}
        return out

    # ------------------------------------------------------------- hits
    def record_hits_in(self, hits: Sequence[tuple[HitRow, int]]) -> None:
        """Write hits (inside the caller's transaction), each with its group:
        the earlier hit image it repeats, or its own id (flood control)."""
        now = utcnow()
        for h, group in hits:
            self.conn.execute(
                "INSERT INTO watch_hits (entry_id, image_id, distance, transform, score, "
                "alerting, grp, created_at) VALUES (?,?,?,?,?,?,?,?) "
                "ON CONFLICT(entry_id, image_id) DO NOTHING",
                (h.entry_id, h.image_id, h.distance, h.transform, h.score, int(h.alerting),
                 group, now))

    def recent_groups(self, entry_id: int, since: str) -> list[tuple[int, bytes]]:
        """The groups an entry's hits since ``since`` fall in: (group's image
        id, that image's value of the entry's signal)."""
        return [(r[0], bytes(r[1])) for r in self.conn.execute(
            "SELECT DISTINCT h.grp, s.value FROM watch_hits h "
            "JOIN watch_entries e ON e.id = h.entry_id JOIN watchlists w ON w.id = e.watchlist_id "
            "JOIN signals s ON s.image_id = h.grp AND s.signal = w.signal "
            "WHERE h.entry_id = ? AND h.created_at >= ?", (entry_id, since))]

    def quarantine_in(self, entry_id: int) -> bool:
        return self.conn.execute(
            "UPDATE watch_entries SET quarantined_at = ? WHERE id = ? AND quarantined_at IS NULL",
            (utcnow(), entry_id)).rowcount == 1

    def negative_image_ids(self) -> set[int]:
        """Images a negative list's entry hits: never alerted on, never linked."""
        return {r[0] for r in self.conn.execute(
            "SELECT DISTINCT h.image_id FROM watch_hits h JOIN watch_entries e "
            "ON e.id = h.entry_id JOIN watchlists w ON w.id = e.watchlist_id "
            "WHERE w.negative = 1")}

    def hits_of(self, image_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        """Each image's hits with the entry's provenance, closest first."""
        out: dict[int, list[dict[str, Any]]] = {}
        rows: list[tuple] = []
        for chunk in _chunks(list(image_ids), 500):
            marks = ",".join("?" * len(chunk))
            rows += self.conn.execute(
                "SELECT image_id, entry_id, distance, transform, score, alerting FROM watch_hits "
                f"WHERE image_id IN ({marks}) ORDER BY distance", chunk).fetchall()
        entries = self.entries_by_id(sorted({r[1] for r in rows}))
        for image_id, entry_id, distance, transform, score, alerting in rows:
            out.setdefault(image_id, []).append(
                entries[entry_id] | {"distance": distance, "transform": transform,
                                     "score": score, "alerting": bool(alerting)})
        return out

    def any_entries(self) -> bool:
        return self.conn.execute("SELECT EXISTS (SELECT 1 FROM watch_entries)").fetchone()[0] == 1

    # ----------------------------------------------------------- alerts
    def alertable_in(self, sighting_ids: Sequence[int]) -> list[tuple[int, int, int]]:
        """(entry, image, sighting) for new sightings whose image an alerting
        entry hits: not quarantined, on a positive list, the image hit by no
        negative list."""
        out: list[tuple[int, int, int]] = []
        for chunk in _chunks(list(sighting_ids), 500):
            marks = ",".join("?" * len(chunk))
            out += self.conn.execute(
                "SELECT h.entry_id, s.image_id, s.id FROM sightings s "
                "JOIN watch_hits h ON h.image_id = s.image_id AND h.alerting = 1 "
                "JOIN watch_entries e ON e.id = h.entry_id AND e.quarantined_at IS NULL "
                "JOIN watchlists w ON w.id = e.watchlist_id AND w.negative = 0 "
                f"WHERE s.id IN ({marks}) AND NOT EXISTS (SELECT 1 FROM watch_hits n "
                "JOIN watch_entries ne ON ne.id = n.entry_id JOIN watchlists nw "
                "ON nw.id = ne.watchlist_id AND nw.negative = 1 WHERE n.image_id = s.image_id) "
                "ORDER BY s.id, h.distance", chunk).fetchall()
        return out

    def sightings_of_images(self, image_ids: Sequence[int]) -> list[int]:
        out: list[int] = []
        for chunk in _chunks(list(image_ids), 500):
            marks = ",".join("?" * len(chunk))
            out += [r[0] for r in self.conn.execute(
                f"SELECT id FROM sightings WHERE image_id IN ({marks}) ORDER BY id", chunk)]
        return out

    def add_alerts_in(self, rows: Sequence[tuple[str, int | None, int | None, int | None,
                                                 dict[str, Any]]]) -> int:
        """(kind, entry, image, sighting, body) rows; the alerts added (one per
        entry and sighting: raising it again adds nothing)."""
        now = utcnow()
        added = 0
        for kind, entry_id, image_id, sighting_id, body in rows:
            cur = self.conn.execute(
                "INSERT INTO alerts (kind, entry_id, image_id, sighting_id, created_at, body) "
                "VALUES (?,?,?,?,?,'{}') ON CONFLICT(entry_id, sighting_id) DO NOTHING",
                (kind, entry_id, image_id, sighting_id, now))
            if cur.rowcount:
                alert_id = int(cur.lastrowid or 0)
                full = {"id": alert_id, "kind": kind, "raised_at": now} | body
                self.conn.execute("UPDATE alerts SET body = ? WHERE id = ?",
                                  (json.dumps(full, ensure_ascii=False, sort_keys=True),
                                   alert_id))
                added += 1
        return added

    def alerts_after(self, cursor: int, limit: int) -> list[dict[str, Any]]:
        """Alerts numbered above ``cursor``, oldest first, at most ``limit``."""
        return [json.loads(r[0]) for r in self.conn.execute(
            "SELECT body FROM alerts WHERE id > ? ORDER BY id LIMIT ?", (cursor, limit))]

    def last_alert_id(self) -> int:
        return int(self.conn.execute("SELECT coalesce(max(id), 0) FROM alerts").fetchone()[0])

    def delivered_to(self, target: str) -> int:
        row = self.conn.execute("SELECT delivered_to FROM alert_deliveries WHERE target = ?",
                                (target,)).fetchone()
        return int(row[0]) if row else 0

    def mark_delivered(self, target: str, upto: int, error: str | None = None) -> None:
        """Record how far ``target`` has been delivered (and its last error)."""
        with self._transaction():
            self.conn.execute(
                "INSERT INTO alert_deliveries (target, delivered_to, attempts, last_error, "
                "updated_at) VALUES (?,?,?,?,?) ON CONFLICT(target) DO UPDATE SET "
                "delivered_to = CASE WHEN alert_deliveries.delivered_to > excluded.delivered_to "
                "THEN alert_deliveries.delivered_to ELSE excluded.delivered_to END, "
                "attempts = CASE WHEN excluded.last_error IS NULL THEN 0 "
                "ELSE alert_deliveries.attempts + 1 END, last_error = excluded.last_error, "
                "updated_at = excluded.updated_at",
                (target, upto, 0 if error is None else 1, error, utcnow()))

    def summary(self) -> dict[str, Any]:
        """Lists, entries, quarantined entries and alerts, and each delivery
        target's progress with the alerts still waiting for it."""
        lists, entries, quarantined = self.conn.execute(
            "SELECT (SELECT count(*) FROM watchlists), count(*), count(quarantined_at) "
            "FROM watch_entries").fetchone()
        last = self.last_alert_id()
        return {"watchlists": lists, "entries": entries, "quarantined": quarantined,
                "alerts": self.conn.execute("SELECT count(*) FROM alerts").fetchone()[0],
                "deliveries": [d | {"waiting": self.conn.execute(
                    "SELECT count(*) FROM alerts WHERE id > ?", (d["delivered_to"],)
                ).fetchone()[0]} for d in self.deliveries()] if last else []}

    def deliveries(self) -> list[dict[str, Any]]:
        return [{"target": r[0], "delivered_to": r[1], "attempts": r[2], "last_error": r[3],
                 "updated_at": r[4]} for r in self.conn.execute(
            "SELECT target, delivered_to, attempts, last_error, updated_at "
            "FROM alert_deliveries ORDER BY target")]


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
