"""Watchlists: partners' hashes checked against every new image, and the alerts.

A partner shares a list of hashes ("tell us when these turn up"); imgmatch
keeps it as a watchlist with its provenance (:mod:`imgmatch.watch_store`)
and holds its entries in memory in a multi-index hash table per signal, so
that checking a new image against a million entries costs about a
millisecond (``scripts/bench watch``). Each image is checked with its eight
dihedral variants, so a mirrored repost of a watched photo is found too.

What decides:

- an entry *hits* an image within its list's threshold (by default the
  signal's own: PDQ 31 bits, Meta's published one);
- a hit *alerts* unless the pair is too plain to be evidence (a near-black
  or flat image, the evidence model's ``low-information`` rule): those hits
  are recorded but raise nothing, since they are what floods an analyst;
- a *negative* list (stock photos, logos, site banners) never alerts, and
  an image it hits raises no alert from any list and takes no part in links
  or clusters;
- *flood control*: an entry that hits more than its list's ``flood`` limit
  of different pictures (images not within the threshold of each other)
  within :data:`FLOOD_WINDOW` is quarantined: it raises one ``quarantine``
  alert saying so, and no more match alerts until released.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from . import signals as registry
from .catalog import Catalog
from .index import BinaryIndex
from .match import TRANSFORM_NAMES, gather_evidence
from .records import HashValue
from .watch_store import EntryRow, HitRow, WatchlistRow, WatchStore

#: Different pictures one entry may hit within :data:`FLOOD_WINDOW` before it
#: is quarantined. A real photo's reposts hit it as one picture (they are
#: within the threshold of each other); a hash that hits eleven different
#: pictures in a day is matching something generic (a logo, a flat frame).
DEFAULT_FLOOD = 10
FLOOD_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class WatchMatch:
    """A watchlist entry within its list's threshold of a hash."""

    watchlist: str
    #: the entry's stable id (HMA's ``bank_content_id``)
    entry_id: int
    #: the entry's name in the partner's list
    name: str | None
    signal: str
    hex: str
    distance: int
    #: which dihedral variant of the looked-up hash matched
    transform: str
    negative: bool
    quarantined: bool
    source: str | None
    licence: str | None
    added_at: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class WatchIndex:
    """One signal's watchlist entries in memory, keyed by entry id."""

    def __init__(self, signal: str, entries: Iterable[EntryRow],
                 lists: Mapping[int, WatchlistRow]) -> None:
        self.signal = signal
        sig = registry.get(signal)
        self.bits = sig.bits
        self.index = BinaryIndex(sig.bits)
        self.threshold: dict[int, int] = {}
        self.list_of: dict[int, int] = {}
        ids: list[int] = []
        codes: list[bytes] = []
        for e in entries:
            ids.append(e.id)
            codes.append(e.value)
            self.list_of[e.id] = e.watchlist_id
        by_list = {i: sig.threshold if w.threshold is None else w.threshold
                   for i, w in lists.items()}
        self.threshold = {e: by_list[w] for e, w in self.list_of.items()}
        self.radius = max(by_list.values(), default=0)
        if ids:
            width = sig.bits // 8
            self.index.add(np.asarray(ids, dtype=np.int64),
                           np.frombuffer(b"".join(codes), np.uint8).reshape(-1, width),
                           merge=False)
            self.index.compact()

    def __len__(self) -> int:
        return len(self.index)

    def search(self, variants: Sequence[HashValue]) -> dict[int, tuple[int, int]]:
        """Entries within their list's threshold of any variant: entry id ->
        (distance, index of the closest variant)."""
        if not len(self.index) or not variants:
            return {}
        width = self.bits // 8
        codes = np.frombuffer(b"".join(v.data for v in variants), np.uint8).reshape(-1, width)
        best: dict[int, tuple[int, int]] = {}
        for w, (ids, dist) in enumerate(self.index.range_search(codes, self.radius)):
            for entry, d in zip(ids.tolist(), dist.tolist()):
                if d <= self.threshold[entry] and (entry not in best or d < best[entry][0]):
                    best[entry] = (int(d), w)
        return best


class Watchlists:
    """A collection's watchlists: their in-memory indexes (reloaded when any
    process changes a list), the check of new images, and the alerts."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.store: WatchStore = catalog.watch
        self._version = -1
        self._lists: dict[int, WatchlistRow] = {}
        self._indexes: dict[str, WatchIndex] = {}
        #: each entry's list, over every signal's index
        self._list_of: dict[int, int] = {}

    # -------------------------------------------------------------- indexes
    def indexes(self) -> dict[str, WatchIndex]:
        """Each signal's entries, rebuilt when the lists changed since."""
        version = self.store.version()
        if version != self._version:
            self._lists = {w.id: w for w in self.store.lists()}
            signals = sorted({w.signal for w in self._lists.values()})
            self._indexes = {s: WatchIndex(s, self.store.entries(s),
                                           {i: w for i, w in self._lists.items()
                                            if w.signal == s})
                             for s in signals}
            self._list_of = {e: w for ix in self._indexes.values()
                             for e, w in ix.list_of.items()}
            self._version = version
        return self._indexes

    def batch(self, variants: Mapping[str, Mapping[str, Sequence[HashValue]]]
              ) -> BatchCheck:
        """The check of one batch's images, given their variants by SHA-256,
        for the catalog to run inside the batch's transaction."""
        return BatchCheck(self, variants)

    def active(self) -> bool:
        """Whether any list has entries (else checks cost nothing)."""
        return any(len(ix) for ix in self.indexes().values())

    # ---------------------------------------------------------------- check
    def hits(self, images: Sequence[tuple[int, Mapping[str, Sequence[HashValue]]]]
             ) -> list[HitRow]:
        """The entries that hit each image, given its variants per signal
        (the value as stored first)."""
        out: list[HitRow] = []
        for signal, index in self.indexes().items():
            for image_id, variants in images:
                found = index.search(variants.get(signal, ()))
                if not found:
                    continue
                stored = {e: {signal: (v, q)}
                          for e, (v, q) in self.store.values_of(sorted(found)).items()}
                evidence = gather_evidence({signal: list(variants[signal])}, stored)
                for entry, (d, w) in sorted(found.items()):
                    score, rules = evidence[entry].scored()
                    out.append(HitRow(entry, image_id, d, _transform(w), round(score, 4),
                                      "low-information" not in rules))
        return out

    def check_in(self, images: Sequence[tuple[int, Mapping[str, Sequence[HashValue]]]]
                 ) -> set[int]:
        """Record what hits these images (inside the caller's transaction),
        quarantine flooding entries; returns the images a negative list hits."""
        if not images or not self.active():
            return set()
        hits = self.hits(self._with_values(images))
        self.record_in(hits)
        negative = {w.id for w in self._lists.values() if w.negative}
        return {h.image_id for h in hits
                if self._list_of.get(h.entry_id) in negative}

    def _with_values(self, images: Sequence[tuple[int, Mapping[str, Sequence[HashValue]]]]
                     ) -> list[tuple[int, Mapping[str, Sequence[HashValue]]]]:
        """Images with a variant of every watched signal: where the caller
        had none (a value catalogued earlier), the stored value's variants."""
        watched = set(self._indexes)
        lacking = [i for i, v in images if not watched <= set(v)]
        stored = self.catalog.signals_of(lacking) if lacking else {}
        out: list[tuple[int, Mapping[str, Sequence[HashValue]]]] = []
        for image_id, variants in images:
            have = dict(variants)
            for signal, (value, quality) in stored.get(image_id, {}).items():
                if signal in watched and signal not in have:
                    have[signal] = registry.get(signal).dihedral_of_value(
                        HashValue(signal, value, quality))
            out.append((image_id, have))
        return out

    def record_in(self, hits: Sequence[HitRow]) -> None:
        """Write hits, each in its flood group, and quarantine entries that flood."""
        since = (datetime.now(timezone.utc) - FLOOD_WINDOW).strftime("%Y-%m-%dT%H:%M:%SZ")
        for h in hits:
            list_id = self._list_of.get(h.entry_id)
            w = self._lists.get(list_id) if list_id is not None else None
            if w is None:
                continue
            groups = self.store.recent_groups(h.entry_id, since) if h.alerting else []
            group = self._group(h, w, groups)
            self.store.record_hits_in([(h, group)])
            if not h.alerting or w.negative:
                continue
            distinct = {g for g, _ in groups} | {group}
            limit = DEFAULT_FLOOD if w.flood is None else w.flood
            if len(distinct) > limit and self.store.quarantine_in(h.entry_id):
                self._raise_quarantine_in(h.entry_id, w, sorted(distinct), limit)

    def _group(self, hit: HitRow, w: WatchlistRow, groups: list[tuple[int, bytes]]) -> int:
        """The earlier hit picture this image repeats (within the signal's own
        threshold of it, whatever the list's), else the image itself: a new
        picture."""
        if not groups:
            return hit.image_id
        own = self.catalog.signals_of([hit.image_id]).get(hit.image_id, {}).get(w.signal)
        if own is None:
            return hit.image_id
        sig = registry.get(w.signal)
        mine = sig.dihedral_of_value(HashValue(w.signal, own[0]))  # a mirrored repost repeats
        for group, value in groups:
            theirs = HashValue(w.signal, value)
            if min(v - theirs for v in mine) <= sig.threshold:
                return group
        return hit.image_id

    def _raise_quarantine_in(self, entry_id: int, w: WatchlistRow, groups: list[int],
                             limit: int) -> None:
        # no image is named: a notice outlives an erasure of the images it counts
        entry = self.store.entries_by_id([entry_id])[entry_id]
        body = {
            "watchlist": _list_json(w), "entry": _entry_json(entry),
            "distinct_pictures": len(groups), "limit": limit,
            "window_hours": FLOOD_WINDOW.total_seconds() / 3600,
            "message": (f"entry {entry_id} of watchlist {w.name!r} hit {len(groups)} different "
                        f"pictures within {FLOOD_WINDOW}; it raises no more alerts until "
                        f"released ('imgmatch watchlist release {w.name} {entry['hex']}')")}
        self.store.add_alerts_in([("quarantine", entry_id, None, None, body)])

    # --------------------------------------------------------------- alerts
    def alert_in(self, sighting_ids: Sequence[int]) -> int:
        """Raise an alert for each new sighting of an image an entry hits
        (inside the caller's transaction); the alerts added."""
        if not sighting_ids or not self.active():
            return 0
        rows = self.store.alertable_in(sighting_ids)
        if not rows:
            return 0
        entries = self.store.entries_by_id(sorted({e for e, _, _ in rows}))
        images = self.catalog.images(sorted({i for _, i, _ in rows}))
        sightings = self.store.sightings_by_id(sorted({s for _, _, s in rows}))
        hits = {(h["entry_id"], image_id): h
                for image_id, hs in self.store.hits_of(sorted({i for _, i, _ in rows})).items()
                for h in hs}
        lists = {w.name: w for w in self._lists.values()}
        alerts = []
        for entry_id, image_id, sighting_id in rows:
            entry, hit, image = entries[entry_id], hits[(entry_id, image_id)], images[image_id]
            w = lists.get(entry["watchlist"])
            alerts.append(("match", entry_id, image_id, sighting_id, {
                "image": {"sha256": image.get("sha256"), "hash_key": image.get("hash_key"),
                          "width": image.get("width"), "height": image.get("height"),
                          "format": image.get("format")},
                "sighting": sightings.get(sighting_id, {}),
                "watchlist": _list_json(w) if w is not None else {"name": entry["watchlist"]},
                "entry": _entry_json(entry),
                "evidence": {"signal": entry["signal"], "distance": hit["distance"],
                             "threshold": _threshold(entry["signal"], entry["threshold"]),
                             "transform": hit["transform"]},
                "score": hit["score"]}))
        return self.store.add_alerts_in(alerts)

    # ------------------------------------------------------------- backfill
    def backfill(self, entry_ids: Sequence[int], index: BinaryIndex | None,
                 signal: str) -> tuple[int, int]:
        """Check a list's new entries against the images catalogued before it
        came, through the collection's index of ``signal``; (hits, alerts)."""
        if index is None or not entry_ids or not len(index):
            return 0, 0
        self.indexes()
        sig = registry.get(signal)
        entries = self.store.entries_by_id(entry_ids)
        per_image: dict[int, list[tuple[int, int, int]]] = {}
        for entry_id, e in entries.items():
            variants = sig.dihedral_of_value(HashValue(signal, bytes.fromhex(e["hex"])))
            codes = np.frombuffer(b"".join(v.data for v in variants), np.uint8).reshape(
                len(variants), -1)
            threshold = _threshold(signal, e["threshold"])
            for w, (ids, dist) in enumerate(index.range_search(codes, threshold)):
                for image_id, d in zip(ids.tolist(), dist.tolist()):
                    per_image.setdefault(int(image_id), []).append((entry_id, int(d), w))
        if not per_image:
            return 0, 0
        stored = self.catalog.signals_of(sorted(per_image))
        hits: list[HitRow] = []
        for image_id, found in per_image.items():
            if signal not in stored.get(image_id, {}):
                continue
            value, quality = stored[image_id][signal]
            own = sig.dihedral_of_value(HashValue(signal, value, quality))
            best: dict[int, tuple[int, int]] = {}
            for entry_id, d, w in found:
                if entry_id not in best or d < best[entry_id][0]:
                    best[entry_id] = (d, w)
            evidence = gather_evidence({signal: own}, {
                e: {signal: (bytes.fromhex(entries[e]["hex"]), entries[e]["quality"])}
                for e in best})
            for entry_id, (d, w) in sorted(best.items()):
                score, rules = evidence[entry_id].scored()
                hits.append(HitRow(entry_id, image_id, d, _transform(w), round(score, 4),
                                   "low-information" not in rules))
        with self.catalog.transaction():
            self.record_in(hits)
            alerts = self.alert_in(self.store.sightings_of_images(
                sorted({h.image_id for h in hits})))
        return len(hits), alerts

    # --------------------------------------------------------------- lookup
    def lookup(self, value: HashValue, *, watchlists: Sequence[str] | None = None,
               dihedral: bool = False) -> list[WatchMatch]:
        """Entries within their list's threshold of a hash, closest first."""
        index = self.indexes().get(value.signal)
        if index is None:
            return []
        sig = registry.get(value.signal)
        variants = sig.dihedral_of_value(value) if dihedral else [value]
        found = index.search(variants)
        entries = self.store.entries_by_id(sorted(found))
        wanted = None if watchlists is None else set(watchlists)
        out = [WatchMatch(e["watchlist"], e["entry_id"], e["name"], e["signal"], e["hex"],
                          found[i][0], _transform(found[i][1]), e["negative"], e["quarantined"],
                          e["source"], e["licence"], e["added_at"])
               for i, e in entries.items() if wanted is None or e["watchlist"] in wanted]
        return sorted(out, key=lambda m: (m.distance, m.watchlist, m.entry_id))


class BatchCheck:
    """A batch's check against the watchlists (the catalog's ``BatchWatcher``)."""

    def __init__(self, watchlists: Watchlists,
                 variants: Mapping[str, Mapping[str, Sequence[HashValue]]]) -> None:
        self.watchlists = watchlists
        self.variants = variants

    def check(self, new_images: list[tuple[int, str]]) -> set[int]:
        return self.watchlists.check_in([(i, self.variants.get(sha, {}))
                                         for i, sha in new_images])

    def alert(self, sighting_ids: list[int]) -> int:
        return self.watchlists.alert_in(sighting_ids)


def _transform(w: int) -> str:
    return TRANSFORM_NAMES[w] if w < len(TRANSFORM_NAMES) else "identity"


def _threshold(signal: str, threshold: int | None) -> int:
    return registry.get(signal).threshold if threshold is None else int(threshold)


def _list_json(w: WatchlistRow) -> dict[str, Any]:
    return {"name": w.name, "source": w.source, "licence": w.licence,
            "threshold": _threshold(w.signal, w.threshold), "negative": w.negative}


def _entry_json(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in ("entry_id", "signal", "hex", "name", "quality", "line",
                                  "added_at")}
