"""The facade: one collection = a SQLite catalog + FAISS indexes beside it.

The CLI, the HTTP service and the Scrapy pipeline call only this (through
the public names of :mod:`imgmatch`). Its methods are thin: each says what
a caller may ask, and hands the work to the module that does it (ingest,
upgrade, matching, clustering, the link pass, hash lists, the index cache).
The catalog is the truth; the indexes are caches of it
(:mod:`imgmatch.index_cache`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from . import signals as registry
from .analysis import Analysis, analyse_source, decode_target
from .audit import checked_details, checked_entry, verify_chain
from .catalog import Address, Catalog, catalog_address
from .cluster import build_clusters
from .decode import DEFAULT_TARGET, Decoded, decode
from .descriptors import DescriptorIndex
from .errors import ImgmatchError, MissingFile, WatchlistError, error_for
from .evidence import Evidence
from .explain import decode_here, explain_pair
from .hash_import import BATCH as HASH_BATCH
from .hash_import import import_hash_list
from .hashlists import read_hash_list
from .index import BinaryIndex
from .index_cache import IndexCache
from .ingest import DEFAULT_BATCH, IngestSummary, analyse, ingest
from .keys import create_key, key_hash
from .match import (FRAMING_SIDE, MATCH_SCORE, IndexLinker, LocalQuery, find_matches,
                    pixel_query, weigh)
from .model import Added, AuditEntry, Cluster, Explanation, ImageRecord, Link, Match
from .records import HashValue, Sighting
from .sandbox import DecodeSandbox
from .signals import FEATURES
from .sources import Item
from .text import date_bound
from .upgrade import UpgradeSummary, tiling_grey_again
from .upgrade import batches as upgrade_batches
from .watchlists import DEFAULT_FLOOD, WatchMatch, Watchlists
from .workers import DEFAULT_MAX_MEMORY, DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from distributed import Client

DEFAULT_DB = "imgmatch.db"
ENV_DB = "IMGMATCH_DB"
#: Where a PostgreSQL catalog's indexes go on this node (each node keeps its
#: own, made from the catalog): a folder per collection under this one.
ENV_INDEX_DIR = "IMGMATCH_INDEX_DIR"


def default_db_path() -> Address:
    """The collection a caller names none of: $IMGMATCH_DB, else ./imgmatch.db."""
    return catalog_address(os.environ.get(ENV_DB) or DEFAULT_DB)


def default_index_dir(catalog: Catalog) -> Path:
    """Where a collection's indexes live by default. An SQLite catalog's lie
    beside its file (``DB.indexes``). A PostgreSQL catalog's are this node's
    cache, made from the catalog and followed: under $IMGMATCH_INDEX_DIR,
    else the user's cache folder, in a folder named for the collection's id."""
    if not catalog.shared:
        return Path(str(catalog.path) + ".indexes")
    root = os.environ.get(ENV_INDEX_DIR) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "imgmatch")
    return Path(root) / catalog.collection_id


class Collection:
    """A collection of catalogued images. Open with :meth:`open`."""

    def __init__(self, catalog: Catalog, index_dir: str | Path | None = None) -> None:
        #: the catalog (for tests and benchmarks; programs use the methods)
        self.catalog = catalog
        folder = Path(index_dir) if index_dir is not None else default_index_dir(catalog)
        if catalog.shared and not folder.parent.exists():
            folder.parent.mkdir(parents=True, mode=0o700)
        self._cache = IndexCache(catalog, folder)
        self._watch = Watchlists(catalog)

    @classmethod
    def open(cls, path: str | Path | None = None, *, readonly: bool = False,
             index_dir: str | Path | None = None) -> Collection:
        """The collection whose catalog is at ``path``: an SQLite file, or a
        ``postgresql://USER@HOST/DB`` URL that several nodes share (default:
        :func:`default_db_path`). ``index_dir``: where its indexes live (see
        :func:`default_index_dir`)."""
        address = catalog_address(path) if path is not None else default_db_path()
        return cls(Catalog.open(address, readonly=readonly), index_dir)

    @property
    def path(self) -> Path:
        """The catalog file (CatalogError for a PostgreSQL catalog: see :attr:`location`)."""
        return self.catalog.path

    @property
    def location(self) -> str:
        """Where the catalog is, as messages say it: its file, or its URL
        without the password."""
        return self.catalog.location

    @property
    def index_dir(self) -> Path:
        return self._cache.folder

    def close(self) -> None:
        self.save_indexes()
        self.catalog.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- indexes
    def index_path(self, signal: str) -> Path:
        return self._cache.path(signal)

    @property
    def indexes(self) -> dict[str, BinaryIndex]:
        """Each hash signal's index (loaded, caught up or rebuilt on first use)."""
        return self._cache.hashes

    @property
    def descriptors(self) -> DescriptorIndex | None:
        """The local-descriptor index, if any image has local features."""
        return self._cache.descriptors

    def load_indexes(self, *, local_features: bool = True) -> None:
        """Load the indexes now (catching them up with the catalog, or
        rebuilding them), so that the first query does not wait for it.
        ``local_features=False``: the hash indexes only (what hash queries use;
        the descriptor index then loads with the first image query)."""
        self._cache.load(local_features=local_features)

    def save_indexes(self) -> None:
        """Write every changed index to disk (atomically), if writable."""
        self._cache.save()

    def refresh(self) -> bool:
        """Catch the loaded indexes up with what other processes wrote to the
        catalog (a CLI ingest or erase beside a running service): new images
        become findable, erased ones stop being found. Cheap when nothing
        changed; whether anything did."""
        return self._cache.follow()

    def erase(self, sha256s: Iterable[str]) -> int:
        """Remove images for good: catalog rows (signals, sightings, links,
        thumbnails, and their names in run records), overwritten rather than
        left in free pages, and index entries, rebuilt without them.

        The write-ahead log is emptied after the deletion; an erased image's
        id is never reused. A running service follows (:meth:`refresh`).
        On a PostgreSQL catalog the rows are deleted and this node's indexes
        rebuilt; the server's files, and other nodes' saved indexes until
        they next follow, are beyond this process (docs/scale-out.md)."""
        ids = [self._image_id(sha) for sha in sha256s]
        self._cache.load()  # against the catalog as it was before the deletion
        self._cache.follow()
        erased = self.catalog.erase(ids)
        self._cache.remove(ids)
        self.save_indexes()
        return erased

    def reindex(self) -> dict[str, int]:
        """Rebuild every index from the catalog and save it."""
        counts = self._cache.rebuild_all()
        self.save_indexes()
        return counts

    # ----------------------------------------------------------------- ingest
    def ingest(self, items: Iterable[Item], *,
               signals: Sequence[str] = registry.DEFAULT_SIGNALS, workers: int = 0,
               command: str = "ingest", args: dict[str, Any] | None = None,
               timeout: float = DEFAULT_TIMEOUT, batch_size: int = DEFAULT_BATCH,
               run_id: int | None = None,
               on_progress: Callable[[IngestSummary], None] | None = None,
               on_written: Callable[[list[Any]], None] | None = None,
               thumbnails: bool = False, all_frames: bool = False, link: bool = True,
               max_memory: int | None = DEFAULT_MAX_MEMORY,
               client: Client | None = None) -> IngestSummary:
        """Catalogue items, link new images to their near-duplicates, save indexes.

        ``all_frames``: every frame of an animated file (up to 100) is an image
        of its own; otherwise the first frame stands for the file.

        ``max_memory``: bytes each worker may take beyond its size at start
        (a file that needs more is recorded as ``out-of-memory``; None: no cap).

        ``client`` (a ``dask.distributed.Client``, see :func:`imgmatch.connect_dask`):
        decode and hash on its Dask cluster instead of ``workers`` local
        processes, with the same ``timeout`` and ``max_memory`` per file; paths
        are read by the Dask workers (shared storage), bytes are sent to them,
        and this process still links and writes (see docs/scale-out.md).

        ``link=False`` writes images and sightings only, in memory that does not
        grow with the collection (linking holds the hash indexes in memory);
        :meth:`link_pairs` links them afterwards, comparing values as stored,
        so mirrored and rotated copies are linked only by an ingest that links.

        Each call is recorded as a run, unless ``run_id`` names one already
        open (a long-lived caller such as the HTTP service keeps one, see
        :meth:`start_run`). A collection that holds local features keeps adding
        them (the robust tier cannot find images that lack them).
        """
        signals = self._tier(signals)
        linker = self._linker(signals) if link else None
        own_run = run_id is None
        run = self.start_run(command, args or {}) if run_id is None else run_id
        status = "interrupted"
        summary = IngestSummary()
        try:
            summary = ingest(self.catalog, items, signal_names=signals, workers=workers,
                             run_id=run, linker=linker, watchlists=self._watch,
                             timeout=timeout, batch_size=batch_size,
                             on_progress=on_progress, on_written=on_written,
                             thumbnails=thumbnails, all_frames=all_frames,
                             max_memory=max_memory, client=client)
            status = "partial" if summary.failures else "ok"
            summary.lacking = self.missing_signals(signals)
        finally:
            if summary.images_added and linker is not None:
                self._cache.changed.update(signals)
            elif summary.images_added:
                # indexes held from before are behind the catalog now
                self._cache.forget()
            if own_run:
                self.save_indexes()
                self.finish_run(run, status, summary.to_json() | {"failures": None})
        return summary

    def upgrade(self, signals: Sequence[str] | None = None, *, workers: int = 0,
                timeout: float = DEFAULT_TIMEOUT, max_memory: int | None = DEFAULT_MAX_MEMORY,
                on_progress: Callable[[UpgradeSummary], None] | None = None
                ) -> UpgradeSummary:
        """Give every catalogued image the signals it lacks, read again from
        where it was seen (see :mod:`imgmatch.upgrade`), and link it anew.

        ``signals``: the signals every image should have (default: the
        collection's own, :meth:`coverage`, plus the defaults). ``workers``,
        ``timeout`` and ``max_memory`` as for :meth:`ingest`: the files are
        decoded again, so they get the same isolation. Images no source can
        give again are listed in the summary with the reason.
        """
        started = time.monotonic()
        wanted = tuple(dict.fromkeys(signals or (*registry.DEFAULT_SIGNALS,
                                                 *self.coverage())))
        for name in wanted:
            registry.signal(name).prepare()
        summary = UpgradeSummary(wanted)
        run_id = self.start_run("upgrade", {"signals": list(wanted)})
        status = "interrupted"
        replaced: set[str] = set()
        try:
            linker = self._linker(wanted, older_only=False)
            for batch in upgrade_batches(self.catalog, wanted, summary, workers=workers,
                                         timeout=timeout, max_memory=max_memory):
                variants = {a.sha256: a.variants for _, a, _ in batch}
                local = {a.sha256: a.features for _, a, _ in batch if a.features is not None}
                rows = [(image_id, row) for image_id, _, row in batch]
                new = [(image_id, a.sha256) for image_id, a, _ in batch]
                greys = {a.sha256: a.grey for _, a, _ in batch if a.grey is not None}
                ids = {a.sha256: image_id for image_id, a, _ in batch}
                framed = {a.sha256: a.framed_boxes for _, a, _ in batch if a.framed}
                described = {a.sha256: a.tiles for _, a, _ in batch if a.tiles is not None}

                def pixels(sha256: str) -> np.ndarray | None:
                    return tiling_grey_again(self.catalog, ids[sha256])

                summary.links_added += self.catalog.add_signals(
                    rows, lambda images: linker.links(images, variants, local, greys, pixels,
                                                 framed, described),
                    self._watch.batch(variants))
                # the indexes take the values they lacked (the others are there)
                linker.committed(
                    new, {a.sha256: {s.signal: a.variants[s.signal] for s in row.signals
                                     if s.signal in a.variants} for _, a, row in batch},
                    {a.sha256: a.features for _, a, row in batch
                     if row.features is not None and a.features is not None})
                replaced.update(s.signal for _, row in rows for s in row.signals)
                if any(row.features is not None for _, row in rows) or linker.images_parted:
                    replaced.add(FEATURES)
                summary.images_upgraded += len(batch)
                if on_progress is not None:
                    on_progress(summary)
            status = "partial" if summary.unreachable else "ok"
        finally:
            # indexes appended to while linking may hold a value replaced since
            # (another version): rebuilt from the catalog, which is the truth
            self._cache.rebuild(sorted(replaced))
            self.save_indexes()
            summary.seconds = time.monotonic() - started
            self.finish_run(run_id, status, summary.to_json() | {"unreachable_images": None})
        return summary

    def coverage(self) -> dict[str, int]:
        """Per signal (local features by their signal's name), how many images hold it."""
        out = dict(self.catalog.signal_counts())
        if self.catalog.feature_count():
            out[FEATURES] = self.catalog.feature_count()
        return {name: n for name, n in out.items() if n}

    def missing_signals(self, signals: Sequence[str]) -> dict[str, int]:
        """Of ``signals``, those some images lack, with how many lack each:
        what a query on them cannot see until ``imgmatch upgrade`` adds them."""
        images = self.catalog.counts()["images"]
        have = self.coverage()
        short = [name for name in signals if have.get(name, 0) < images]
        if not short:  # the usual case, from the tallies alone
            return {}
        # images known only by a partner's hash have no bytes to take more from
        hash_only, held = self.catalog.hash_only_counts()
        lacking = {name: (images - hash_only) - (have.get(name, 0) - held.get(name, 0))
                   for name in short}
        return {name: n for name, n in lacking.items() if n > 0}

    def _linker(self, signals: Sequence[str], *, older_only: bool = True) -> IndexLinker:
        """Links an ingest's new images through the indexes (loaded, or made)."""
        indexes, descriptors = self._cache.ensure(signals)

        def caught_up() -> tuple[dict[str, BinaryIndex], DescriptorIndex | None]:
            self._cache.follow()
            return self._cache.ensure(signals)

        # other nodes write a shared catalog between this process's batches
        return IndexLinker(self.catalog, indexes, descriptors=descriptors,
                           older_only=older_only,
                           follow=caught_up if self.catalog.shared else None,
                           reread=self._framing_grey)

    def add(self, image: bytes | str | Path, sighting: Sighting | None = None, *,
            signals: Sequence[str] = registry.DEFAULT_SIGNALS) -> Added:
        """Catalogue one image (bytes or a path) with an optional sighting.

        Raises the :class:`~imgmatch.errors.InputError` subclass that says why
        an image cannot be used (nothing is recorded then).
        """
        data, source = _read(image)
        signals = self._tier(signals)
        item = _analysed(data, source, sighting, signals, self.catalog.has_image)
        summary = self.ingest([item], signals=signals)
        return _added(item, summary)

    def add_and_match(self, image: bytes | str | Path, sighting: Sighting | None = None,
                      *, signals: Sequence[str] = registry.DEFAULT_SIGNALS, top_k: int = 10,
                      run_id: int | None = None,
                      lock: AbstractContextManager[Any] | None = None,
                      sandbox: DecodeSandbox | None = None
                      ) -> tuple[Added, list[Match]]:
        """:meth:`add`, answered with the image's matches among the others (best
        first, at most ``top_k``): what a crawler sending one image at a time wants.

        ``lock``: for a caller that adds from many threads into one collection
        (the HTTP service). It is held while the catalog is read or written and
        the indexes searched, never while the image is decoded and hashed, so
        uploads are analysed in parallel. ``run_id``: as for :meth:`ingest`.
        ``sandbox``: decode and hash in its capped worker processes, never in
        this one (a long-lived process such as the HTTP service).
        """
        guard: AbstractContextManager[Any] = lock if lock is not None else nullcontext()
        data, source = _read(image)
        with guard:
            signals = self._tier(signals)
        if sandbox is not None:
            return self._add_prepared(data, source, sighting, signals, top_k, run_id, guard,
                                      sandbox)

        def known(sha256: str) -> bool:  # known bytes are not decoded again
            with guard:
                return self.catalog.has_image(sha256)

        # the query's pixels, decoded once for the analysis too when it needs
        # the same decode (the default and robust tiers)
        pixels = functools.cache(lambda: decode(data, source=source))
        shared = decode_target(signals) == DEFAULT_TARGET
        item = replace(_analysed(data, source, sighting, signals, known,
                                 decoded_by=pixels if shared else None),
                       pixels=lambda: np.asarray(pixels().grey))
        analysis: Analysis = item.analysis
        if analysis.known:  # its signals were not computed: decode now, not under the lock
            pixels()
        with guard:
            summary = self.ingest([item], signals=signals, run_id=run_id)
            matches = self.query_decoded(pixels, top_k=top_k + 1, min_score=MATCH_SCORE,
                                         variants=analysis.variants, local=analysis.features)
        return _added(item, summary), \
            [m for m in matches if m.sha256 != analysis.sha256][:top_k]

    def _add_prepared(self, data: bytes, source: str, sighting: Sighting | None,
                      signals: tuple[str, ...], top_k: int, run_id: int | None,
                      guard: AbstractContextManager[Any],
                      sandbox: DecodeSandbox) -> tuple[Added, list[Match]]:
        """:meth:`add_and_match` with the pixels handled in ``sandbox`` only."""
        digest = hashlib.sha256(data).hexdigest()
        with guard:
            known = self.catalog.has_image(digest)
            names, local_features = self._query_shape()
        if sighting is None:
            sighting = Sighting(source=None if source == "<bytes>" else source)
        name = sighting.source or source
        prepared = sandbox.prepare(data, source=name, signals=signals, query_signals=names,
                                   local_features=local_features, known=known)
        analysis = prepared.analysis
        if analysis.reason is not None:
            raise error_for(analysis.reason, analysis.detail, name)
        item = Item(name, sighting, data=data, analysis=analysis,
                    pixels=lambda: prepared.grey)  # never decoded out of the sandbox
        with guard:
            summary = self.ingest([item], signals=signals, run_id=run_id)
            matches = self._search(prepared.query, prepared.views, prepared.grey, top_k + 1,
                                   MATCH_SCORE)
        return _added(item, summary), [m for m in matches if m.sha256 != digest][:top_k]

    def _query_shape(self) -> tuple[list[str], bool]:
        """What a query of this collection searches with: its hash signals, and
        whether local features (call with the indexes' lock held)."""
        return list(self.indexes), self.descriptors is not None

    def _search_with(self, query: dict[str, list[HashValue]], views: list[LocalQuery] | None,
                     grey: np.ndarray | None) -> dict[str, Any]:
        """What the indexes are searched with, from what
        :func:`imgmatch.match.pixel_query` made (lock held). Signals indexed
        since it was made elsewhere (another process added them) are left
        out; so are views without a descriptor index."""
        descriptors = self.descriptors if views is not None else None
        return {"query": {name: query[name] for name in self.indexes if name in query},
                "local": views if descriptors is not None else None,
                "descriptors": descriptors,
                "grey": grey if descriptors is not None else None,
                "reread": self._framing_grey if descriptors is not None else None}

    def _framing_grey(self, image_id: int) -> np.ndarray | None:
        """A catalogued image's pixels read again from its sources, to verify
        a new image or a query within the part of it where it lies
        (:func:`imgmatch.match.framing`)."""
        return tiling_grey_again(self.catalog, image_id, FRAMING_SIDE)

    def _search(self, query: dict[str, list[HashValue]], views: list[LocalQuery] | None,
                grey: np.ndarray | None, top_k: int, min_score: float) -> list[Match]:
        """Search the indexes (lock held): the best matches, ranked."""
        return find_matches(self.catalog, self.indexes, top_k=top_k, min_score=min_score,
                            **self._search_with(query, views, grey))

    def _weigh(self, query: dict[str, list[HashValue]], views: list[LocalQuery] | None,
               grey: np.ndarray | None) -> dict[int, Evidence]:
        """What the same search weighs for each candidate, unranked (lock held):
        what ``explain`` shows."""
        return weigh(self.catalog, self.indexes, **self._search_with(query, views, grey))[0]

    def add_many(self, pairs: Iterable[tuple[bytes | str | Path, Sighting | None]],
                 **kwargs: Any) -> IngestSummary:
        """Catalogue many images; failures are returned in the summary, not raised."""
        def items() -> Iterable[Item]:
            for n, (image, sighting) in enumerate(pairs):
                if isinstance(image, (bytes, bytearray)):
                    s = sighting or Sighting()
                    yield Item(s.source or f"<bytes #{n}>", s, data=bytes(image))
                else:
                    path = Path(image)
                    s = sighting or Sighting(source=str(path))
                    yield Item(s.source or str(path), s, path=path)
        return self.ingest(items(), **kwargs)

    def import_hashes(self, path: str | Path, *, platform: str | None = None,
                      batch: int = HASH_BATCH, link: bool = True, workers: int = 0,
                      signal: str = "pdq", shared_by: str | None = None,
                      licence: str | None = None) -> dict[str, Any]:
        """Load a list of ``signal`` hashes (see :mod:`imgmatch.hashlists`): each
        hash becomes an image known only by its value, its line's name the
        sighting's source. With ``link``, the new hashes are then linked to
        their near-duplicates (:meth:`link_pairs`), so they join clusters like
        ingested images. ``shared_by`` and ``licence`` (who shared the list,
        under what terms) are kept in each hash's sighting, with the list's
        file name, so the hash shows its provenance wherever it shows up."""
        run_id = self.start_run("import-hashes", {"file": str(path)})
        self._cache.ensure([signal])
        done = import_hash_list(self.catalog, path, signal=signal, platform=platform,
                                batch=batch, run_id=run_id, provenance={
                                    "shared_by": shared_by or "", "licence": licence or "",
                                    "hash_list": Path(path).name if shared_by or licence
                                    else ""})
        totals = done.to_json()
        if done.first_id:  # tables are cut once, at the end, not as the list grows
            self._cache.append(signal, done.first_id - 1, merge=False)
            totals["alerts_added"] = self._watch_new_images(done.first_id)
        self.indexes[signal].compact()
        self.save_indexes()
        if link:
            totals["links_added"] = \
                self.link_pairs([signal], workers=workers)[signal]["links_added"]
        self.finish_run(run_id, "partial" if done.failures else "ok",
                        totals | {"failures": None})
        return totals

    def link_pairs(self, signals: Sequence[str] | None = None, *,
                   workers: int = 0, client: Client | None = None) -> dict[str, dict[str, int]]:
        """Link every pair of images within a signal's threshold (all-pairs search;
        see :mod:`imgmatch.link_pass`) among those added since the last pass.

        Ingest links each new image as it arrives; hash lists arrive without
        pictures and in bulk, so they are linked here. Pairs are compared as
        stored (no rotations: those are for queries and ingest); values below
        their signal's quality gate take no part. Returns per signal the
        images searched, the pairs found and the links added.

        ``client`` (a ``dask.distributed.Client``): the join's substring tables
        run on its Dask cluster instead of ``workers`` local processes; the
        pairs are the same, and this process scores and writes them.
        """
        from .link_pass import link_pairs  # the join's process pool: only when linking

        tables = None
        if client is not None:
            from .dask_pool import DaskTables  # dask only when a cluster is asked for

            tables = DaskTables(client)
        return link_pairs(self.catalog, self.indexes, signals, workers=workers, tables=tables)

    # ------------------------------------------------------------- watchlists
    def watchlist_add(self, name: str, path: str | Path, *, source: str | None = None,
                      licence: str | None = None, threshold: int | None = None,
                      negative: bool = False, flood: int | None = None,
                      signal: str = "pdq", append: bool = False) -> dict[str, Any]:
        """Watch a partner's list of ``signal`` hashes (see :mod:`imgmatch.hashlists`)
        as watchlist ``name``, with who shared it (``source``) and under what
        terms (``licence``). ``threshold``: the largest distance that matches
        (default: the signal's own); ``negative``: never alert on these, and
        keep what they hit out of links and clusters; ``flood``: how many
        different pictures an entry may hit in a day before it is quarantined.

        Every new image is checked against it from now on; the images already
        catalogued are checked now, and raise their alerts. ``append`` adds
        the file's hashes to an existing list. Returns what it did.
        """
        sig = registry.get(signal)
        if threshold is not None and not 0 <= threshold < sig.bits:
            raise WatchlistError(f"threshold {threshold}: a {signal} distance is 0 to "
                                 f"{sig.bits - 1}")
        if flood is not None and flood < 1:
            raise WatchlistError(f"flood {flood}: at least 1 picture (default {DEFAULT_FLOOD})")
        store = self.catalog.watch
        lines = list(read_hash_list(path, signal=signal, digits=sig.bits // 4))
        if append:
            row = store.get_list(name)
            if row.signal != signal:
                raise WatchlistError(f"watchlist {name!r} holds {row.signal} hashes, not {signal}")
            list_id = row.id
        else:
            list_id = store.add_list(name, signal, source=source, licence=licence,
                                     threshold=threshold, negative=negative, flood=flood)
        rows = [(line.value, line.quality, line.name, line.line_no)
                for line in lines if line.value is not None]
        new_entries = store.add_entries(list_id, rows)
        low = sum(1 for _, q, _, _ in rows if q is not None and not sig.trusts(q))
        hits, alerts = self._watch.backfill(new_entries, self.indexes.get(signal), signal)
        return {"watchlist": name, "lines": len(lines), "entries_added": len(new_entries),
                "already_listed": len(rows) - len(new_entries), "low_quality": low,
                "hits": hits, "alerts_added": alerts,
                "failures": [{"line": line.line_no, "detail": line.error}
                             for line in lines if line.value is None]}

    def watchlists(self) -> list[dict[str, Any]]:
        """Each watchlist with its provenance, threshold, kind and entry counts."""
        return [w.to_json() for w in self.catalog.watch.lists()]

    def watchlist_remove(self, name: str) -> int:
        """Remove a watchlist with its entries, hits and alerts; the entries removed."""
        return self.catalog.watch.remove_list(name)

    def watchlist_remove_hashes(self, name: str, hexes: Iterable[str]) -> int:
        """Take single hashes off a watchlist (a partner's deletion, such as
        StopNCII's), with their hits and alerts; the entries removed."""
        row = self.catalog.watch.get_list(name)
        values = [registry.parse_hash(h, row.signal).data for h in hexes]
        return self.catalog.watch.remove_values(name, values)

    def watchlist_release(self, name: str, hexes: Iterable[str] | None = None) -> int:
        """Lift the flood quarantine of a list's entries (all, or these); how many."""
        row = self.catalog.watch.get_list(name)
        values = None if hexes is None else [registry.parse_hash(h, row.signal).data
                                             for h in hexes]
        return self.catalog.watch.release(name, values)

    def watch_lookup(self, value: HashValue | str, *, watchlists: Sequence[str] | None = None,
                     dihedral: bool = False) -> list[WatchMatch]:
        """Watchlist entries within their list's threshold of a hash (a string
        is read as PDQ hex), closest first; ``dihedral``: of its mirrors and
        rotations too."""
        if isinstance(value, str):
            value = registry.parse_hash(value)
        return self._watch.lookup(value, watchlists=watchlists, dihedral=dihedral)

    def alerts(self, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Alerts numbered above ``after`` (the cursor), oldest first: each
        one JSON object as delivered (see :mod:`imgmatch.watchlists`)."""
        return self.catalog.watch.alerts_after(max(0, int(after)), max(1, int(limit)))

    def _watch_new_images(self, first_id: int) -> int:
        """Check images from ``first_id`` on (hash-only ones an import added)
        against the watchlists, and raise their sightings' alerts."""
        if not self._watch.active():
            return 0
        ids = [r[0] for r in self.catalog.conn.execute(
            "SELECT id FROM images WHERE id >= ? ORDER BY id", (first_id,))]
        alerts = 0
        for start in range(0, len(ids), HASH_BATCH):
            chunk = ids[start:start + HASH_BATCH]
            with self.catalog.transaction():
                self._watch.check_in([(i, {}) for i in chunk])
                alerts += self._watch.alert_in(self.catalog.watch.sightings_of_images(chunk))
        return alerts

    # ------------------------------------------------------------------ query
    def query(self, image: bytes | str | Path, *, top_k: int = 10,
              min_score: float = MATCH_SCORE,
              lock: AbstractContextManager[Any] | None = None,
              sandbox: DecodeSandbox | None = None) -> list[Match]:
        """Where else has this image appeared? Best matches first.

        ``lock``: as for :meth:`add_and_match`, held while searching, not while
        decoding. ``sandbox``: decode in its capped workers, not here.
        """
        data, source = _read(image)
        guard: AbstractContextManager[Any] = lock if lock is not None else nullcontext()
        if sandbox is not None:
            with guard:
                names, local_features = self._query_shape()
            query, views, grey = sandbox.query_input(data, source, names, local_features)
            with guard:
                return self._search(query, views, grey, top_k, min_score)
        decoded = decode(data, source=source)
        with guard:
            return self.query_decoded(decoded, top_k=top_k, min_score=min_score)

    def query_decoded(self, decoded: Decoded | Callable[[], Decoded], *, top_k: int = 10,
                      min_score: float = MATCH_SCORE,
                      variants: dict[str, list[HashValue]] | None = None,
                      local: LocalQuery | None = None) -> list[Match]:
        """Matches for decoded pixels. ``variants`` (hash values per signal) and
        ``local`` (local features and their mirror's) reuse what an analysis
        already computed; anything missing is computed from ``decoded``, which
        may be a callable that decodes on demand."""
        pixels: Callable[[], Decoded] = decoded if callable(decoded) else (lambda: decoded)
        names, local_features = self._query_shape()
        # the tiles' features are taken when they are searched (match.EXPLAINED_SHARE)
        query, views, grey = pixel_query(pixels, names, local_features=local_features,
                                         variants=variants, local=local, tiles=False)
        return self._search(query, views, grey, top_k, min_score)

    def _tier(self, signals: Sequence[str]) -> tuple[str, ...]:
        """The signals to compute: as asked, plus local features in a robust collection."""
        chosen = tuple(signals)
        return (*chosen, FEATURES) if FEATURES not in chosen and self.robust else chosen

    @property
    def robust(self) -> bool:
        """Whether the collection keeps local features (then new images should too)."""
        return self.catalog.feature_count() > 0

    def query_hash(self, value: HashValue | str, *, top_k: int = 10,
                   min_score: float = MATCH_SCORE) -> list[Match]:
        """Matches for a bare hash (for example a partner's PDQ), no pixels needed.

        A string is read as PDQ in hex (64 digits), the form partners exchange;
        SignalError says what is wrong with one that is not.
        """
        if isinstance(value, str):
            value = registry.parse_hash(value)
        sig = registry.get(value.signal)
        query = {value.signal: sig.dihedral_of_value(value)}
        return find_matches(self.catalog, self.indexes, query, top_k=top_k, min_score=min_score)

    # ---------------------------------------------------------------- reports
    def clusters(self, *, since: str | None = None, until: str | None = None,
                 ignored: set[int] | None = None, **kwargs: Any) -> list[Cluster]:
        """Clusters of the same picture (see :func:`imgmatch.cluster.build_clusters`),
        without ignored images: those ignored by name or matching an ignored hash.

        ``since``/``until``: as ``imgmatch report`` reads them, a date (the whole
        day) or an ISO 8601 time; ImgmatchError names one that is neither.
        ``ignored``: :meth:`ignored_image_ids` as another collection on the same
        catalog gave it, for a reader that does not hold the indexes (the
        writer of the HTTP service does); by default this one asks its own.
        """
        since, until = _date_bound(since, "since"), _date_bound(until, "until")
        if ignored is None:
            ignored = self.ignored_image_ids()
        return build_clusters(self.catalog, ignored=ignored, since=since, until=until,
                              **kwargs)

    def report_json(self, **filters: Any) -> dict[str, Any]:
        """The JSON report (what ``imgmatch report --format json`` prints) of the
        :meth:`clusters` these filters give: the one shape for every program."""
        from .report.jsonfmt import report_dict  # the writers: only when reporting

        return report_dict(self.clusters(**filters), made_with=self.made_with())

    def export_hashes(self, out: TextIO, format: str = "pytx", *, signal: str = "pdq",
                      clusters: Iterable[int] = (), platforms: Sequence[str] = (),
                      since: str | None = None, until: str | None = None,
                      min_quality: int | None = None,
                      sidecar: TextIO | None = None) -> dict[str, Any]:
        """Write the ``signal`` hashes to ``out`` in one of ``HASH_EXPORT_FORMATS``,
        for partners' tools (:mod:`imgmatch.hash_export`): hashes, qualities and
        imgmatch's names for the images, never a picture or crawled text.

        ``clusters`` (ids as :meth:`clusters` numbers them), ``platforms`` and
        ``since``/``until`` (as :meth:`clusters` reads them) narrow it; ignored
        images are left out. ``sidecar``: where a ``pytx`` export's metadata
        goes. Returns the counts (``lines``, ``low_quality``...); the caller
        audits the export, as for reports.
        """
        from .errors import ExportError
        from .hash_export import check_format, export_hashes  # only when exporting

        check_format(format, signal)
        since, until = _date_bound(since, "since"), _date_bound(until, "until")
        ignored = self.ignored_image_ids()
        asked = sorted(set(clusters))
        cluster_of: dict[int, int] | None = None
        if asked:
            found = [c for c in self.clusters(min_sightings=1, ignored=ignored)
                     if c.id in asked]
            missing = sorted(set(asked) - {c.id for c in found})
            if missing:
                raise ExportError(f"no cluster {', '.join(map(str, missing))} in {self.location} "
                                  "(cluster ids are in 'imgmatch report')")
            cluster_of = {i: c.id for c in found for i in c.image_ids}
        return export_hashes(self.catalog, out, format, signal=signal, cluster_of=cluster_of,
                             platforms=platforms, since=since, until=until, ignored=ignored,
                             min_quality=min_quality, made_with=self.made_with(),
                             sidecar=sidecar).to_json()

    def made_with(self) -> dict[str, Any]:
        """What this collection's matches are made with, for reports and
        exports to state: imgmatch's version, each signal's version and
        threshold, the evidence model's digest, the scores that decide."""
        from .report.provenance import made_with

        held = list(self.catalog.signal_counts()) + ([FEATURES] if self.robust else [])
        return made_with(held, _version())

    # ----------------------------------------------------------------- ignore
    def ignore(self, *, sha256: str | None = None, value: HashValue | None = None,
               reason: str = "ignored") -> bool:
        """Mark an image, or every image matching a hash, as a known stock photo,
        logo or template: its links stop shaping clusters. False if already so."""
        if sha256 is not None:
            return self.catalog.ignore_image(self._image_id(sha256), reason)
        if value is None:
            raise ImgmatchError("name an image (sha256) or a hash to ignore")
        return self.catalog.ignore_hash(value.signal, value.data, reason)

    def ignored(self) -> list[dict[str, Any]]:
        """What is ignored, oldest first: each entry's ``id`` (for :meth:`unignore`),
        ``sha256`` (an image) or ``signal`` and ``hex`` (a hash), ``reason`` and
        ``created_at``."""
        return self.catalog.ignored()

    def unignore(self, entry_id: int) -> bool:
        """Stop ignoring entry ``entry_id`` of :meth:`ignored`; False if there is none."""
        return self.catalog.unignore(entry_id)

    def ignored_image_ids(self) -> set[int]:
        """Images ignored by name, those within threshold of an ignored hash,
        and those a negative watchlist hits."""
        ids = self.catalog.ignored_image_ids() | self.catalog.watch.negative_image_ids()
        for signal, data in self.catalog.ignored_hashes():
            index = self.indexes.get(signal)
            if index is None:
                continue
            sig = registry.get(signal)
            variants = sig.dihedral_of_value(HashValue(signal, data))
            codes = np.frombuffer(b"".join(v.data for v in variants), dtype=np.uint8)
            for found, _ in index.range_search(codes, sig.threshold):
                ids.update(int(i) for i in found)
        return ids

    # ------------------------------------------------------------ runs, keys
    def start_run(self, command: str, args: dict[str, Any] | None = None) -> int:
        """Record the start of a run (``stats`` shows the last ones); its id, for
        :meth:`finish_run` and for the ``run_id`` of :meth:`ingest`."""
        return self.catalog.start_run(command, args or {})

    def finish_run(self, run_id: int, status: str = "ok",
                   stats: dict[str, Any] | None = None) -> None:
        """Record how a run ended: ``ok``, ``partial`` or ``interrupted``, and its counts."""
        self.catalog.finish_run(run_id, status, stats or {})

    def add_key(self, name: str, scopes: Sequence[str]) -> str:
        """A new HTTP service API key with these scopes (see :mod:`imgmatch.keys`);
        it is returned once, and the catalog keeps only its hash."""
        return create_key(self.catalog, name, scopes)

    def keys(self) -> list[dict[str, Any]]:
        """The API keys by ``id``, ``name``, ``scopes``, ``created_at`` and
        ``revoked_at`` (never the keys themselves)."""
        return self.catalog.api_keys()

    def revoke_key(self, name_or_id: str) -> int:
        """Revoke the active keys with this name (or this id); how many."""
        return self.catalog.revoke_api_keys(name_or_id)

    def key_scopes(self, key: str) -> tuple[str, ...] | None:
        """The scopes of an HTTP service API key (see :mod:`imgmatch.keys`), None
        if it is unknown or revoked; the catalog holds only the key's hash."""
        return self.catalog.api_key_scopes(key_hash(key))

    def key_name(self, key: str) -> str | None:
        """The name an HTTP service API key was given (``keys add NAME``), None
        if it is unknown or revoked: who used it, for the audit log."""
        return self.catalog.api_key_name(key_hash(key))

    # ------------------------------------------------------------------ audit
    def audit(self, action: str, actor: str,
              details: dict[str, Any] | None = None) -> AuditEntry:
        """Append an entry to the collection's audit log: ``actor`` (who: an
        operating system user, ``key:<name>`` for an API key) did ``action``
        (a short word: ``query``, ``explain``, ``report``, ``erase``,
        ``key-use``...) with these ``details``.

        Details are counts, options, filters, formats, match counts and
        scores, never what would name a picture: AuditError refuses text that
        looks like a SHA-256 (or a prefix), a hash value or a URL, so that
        erasing an image leaves nothing of it in the log. The library's other
        methods write no entries; the CLI and the HTTP service record what
        their users do (a program calling :meth:`query` in a loop is not
        logged once per query). Works on a collection opened read-only too.
        """
        action, actor = checked_entry(action, actor)
        return self.catalog.append_audit(actor, action, checked_details(details or {}))

    def audit_entries(self, limit: int | None = None) -> list[AuditEntry]:
        """The audit log's last ``limit`` entries (all by default), oldest first."""
        if limit is not None and limit < 0:
            raise ImgmatchError(f"limit is a number of entries, 0 or more; got {limit}")
        return self.catalog.audit_entries(limit)

    def verify_audit(self) -> dict[str, Any]:
        """Check the audit log's hash chain from its first entry: ``ok``,
        ``entries`` (read), ``head`` (the last good digest: note it elsewhere to
        notice entries cut off the end later), and for a broken chain
        ``first_bad`` (the number of the first entry that fails) and ``problem``."""
        return verify_chain(self.catalog.iter_audit())

    # ----------------------------------------------------------------- images
    def thumbnails(self, sha256s: Iterable[str]) -> dict[str, bytes]:
        """Stored thumbnails (only if ingested with thumbnails=True), by sha256."""
        ids: dict[int, str] = {}
        for sha in sha256s:
            image_id = self.catalog.image_id(sha)
            if image_id is not None:
                ids[image_id] = sha
        return {ids[i]: jpeg for i, jpeg in self.catalog.thumbnails_of(list(ids)).items()}

    def resolve(self, prefix: str) -> str:
        """The full SHA-256 of the one image whose SHA-256 starts with ``prefix``.

        Tables print SHA-256s shortened; any unique prefix of at least
        :data:`MIN_SHA256_PREFIX` hex digits names an image (a whole SHA-256
        names itself). ImgmatchError says when none or several fit.
        """
        text = prefix.strip().lower()
        if not (MIN_SHA256_PREFIX <= len(text) <= 64 and _HEX.fullmatch(text)):
            raise ImgmatchError(f"{prefix!r} is not a SHA-256 or a prefix of one: give "
                                f"{MIN_SHA256_PREFIX} to 64 hex digits")
        found = self.catalog.sha256s_with_prefix(text, limit=AMBIGUOUS_SHOWN + 1)
        if not found:
            what = text if len(text) == 64 else f"starting {text}"
            raise ImgmatchError(f"no image with sha256 {what} in {self.location}")
        if len(found) > 1:
            shown = ", ".join(found[:AMBIGUOUS_SHOWN]) + (
                ", ..." if len(found) > AMBIGUOUS_SHOWN else "")
            raise ImgmatchError(f"sha256 prefix {text} is ambiguous, it fits {shown}; "
                                f"give more digits")
        return found[0]

    def explain(self, a: str, b: str, *, sandbox: DecodeSandbox | None = None,
                searcher: Collection | None = None,
                lock: AbstractContextManager[Any] | None = None) -> Explanation:
        """Why two catalogued images match or not (see :mod:`imgmatch.explain`):
        each signal's values, distance, threshold, version and verdict, the
        geometric verification, the score, the rules that capped it and the
        precision measured at it, and their stored link if any. ``a`` and
        ``b`` are SHA-256s or unique prefixes (:meth:`resolve`); ``a`` plays
        the query, read again from where it was seen when it can be.
        ``sandbox``: decode it in the sandbox's capped workers, not here.
        ``searcher``: the collection whose indexes a query searches (a
        service's writer: its read-only collections keep none), with the
        ``lock`` it is searched under; by default this one."""
        first, second = self.resolve(a), self.resolve(b)
        searcher = searcher or self
        guard: AbstractContextManager[Any] = lock if lock is not None else nullcontext()
        with guard:
            indexed = list(searcher.indexes)

        def search(query: dict[str, list[HashValue]], views: list[LocalQuery] | None,
                   grey: np.ndarray | None) -> dict[int, Evidence]:
            with guard:
                return searcher._weigh(query, views, grey)

        return explain_pair(self.catalog, (self._image_id(first), first),
                            (self._image_id(second), second),
                            decode_here if sandbox is None else sandbox.query_input,
                            search, indexed)

    def image(self, sha256: str) -> ImageRecord:
        """One image: its facts, signals, sightings and links; ImgmatchError if unknown."""
        image_id = self._image_id(sha256)
        info = self.catalog.images([image_id])[image_id]
        values = self.catalog.signals_of([image_id]).get(image_id, {})
        linked = self.catalog.links_of(image_id)
        others = self.catalog.images([other for other, *_ in linked])
        return ImageRecord(
            sha256=info["sha256"], size_bytes=info["size_bytes"], width=info["width"],
            height=info["height"], format=info["format"], frames=info["frames"],
            created_at=info["created_at"], captured_at=info.get("captured_at"),
            signals={name: registry.get(name).from_bytes(v, q)
                     for name, (v, q) in values.items()},
            watched=tuple(self.catalog.watch.hits_of([image_id]).get(image_id, [])),
            sightings=tuple(self.catalog.sightings_of([image_id])[image_id]),
            links=tuple(Link(others[o]["sha256"], score, d, agreed, t,
                             hash_key=others[o].get("hash_key"))
                        for o, score, d, agreed, t in linked))

    def _image_id(self, sha256: str) -> int:
        """The catalog id of an image; ImgmatchError if there is none."""
        image_id = self.catalog.image_id(sha256)
        if image_id is None:
            raise ImgmatchError(f"no image with sha256 {sha256} in {self.location}")
        return image_id

    def stats(self) -> dict[str, Any]:
        counts = self.catalog.counts()
        local_features = counts.pop("features")
        return {
            "path": self.location,
            **counts,
            "signals": self.catalog.signal_counts(),
            "local_features": local_features,
            "platforms_by_sightings": self.catalog.platform_counts(),
            "failure_reasons": self.catalog.failure_reasons(),
            "watch": self.catalog.watch.summary(),
            "last_runs": self.catalog.last_runs(3),
        }


#: The fewest hex digits of a SHA-256 that name an image (:meth:`Collection.resolve`);
#: in a million images, one shares its first 8 digits with another about once
#: in 4,300 (10**6 / 16**8), and then the error says so.
MIN_SHA256_PREFIX = 8
#: How many images an ambiguous prefix's error names.
AMBIGUOUS_SHOWN = 5
_HEX = re.compile(r"[0-9a-f]+")


def hash_bytes(data: bytes, signals: Sequence[str] = registry.HASH_SIGNALS,
               source: str | None = None) -> dict[str, Any]:
    """The signals of one image, storing nothing (``imgmatch hash``)."""
    analysis = analyse(data, signals, source)
    if analysis.image is None:
        return {"sha256": analysis.sha256, "error": {"reason": analysis.reason,
                                                     "message": analysis.detail}}
    img = analysis.image
    return {
        "sha256": img.sha256, "width": img.width, "height": img.height, "format": img.format,
        "signals": {s.signal: {"hex": s.value.hex(), **({"quality": s.quality}
                                                        if s.quality is not None else {})}
                    for s in img.signals},
        **({"local_features": {"keypoints": img.features[1]}} if img.features else {}),
    }


def _analysed(data: bytes, source: str, sighting: Sighting | None,
              signals: Sequence[str], known: Callable[[str], bool],
              decoded_by: Callable[[], Decoded] | None = None) -> Item:
    """One image to add, analysed (unless ``known`` holds its bytes), with its
    sighting; the InputError that says why when it cannot be used.
    ``decoded_by``: a decode the caller shares (see :func:`analyse`)."""
    if sighting is None:  # a path names where the bytes came from; bare bytes do not
        sighting = Sighting(source=None if source == "<bytes>" else source)
    name = sighting.source or source
    analysis = analyse_source(None, data, signals, name, known, decoded_by=decoded_by)
    if analysis.image is None and not analysis.known:
        raise error_for(analysis.reason, analysis.detail, name)
    return Item(name, sighting, data=data, analysis=analysis)


def _version() -> str:
    """This imgmatch's version, as installed."""
    try:
        return importlib.metadata.version("imgmatch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _added(item: Item, summary: IngestSummary) -> Added:
    return Added(item.analysis.sha256, new_image=summary.images_added == 1,
                 new_sighting=summary.sightings_added == 1)


def _date_bound(value: str | None, name: str) -> str | None:
    """A clusters ``since``/``until`` as ``imgmatch report`` reads it (see
    :func:`imgmatch.text.date_bound`); ImgmatchError when it is not a date."""
    if not value:
        return None
    bound = date_bound(value)
    if bound is None:
        raise ImgmatchError(f"{name}: {value!r} is not a date (YYYY-MM-DD)")
    return bound


def _read(image: bytes | str | Path) -> tuple[bytes, str]:
    """(bytes, a name for messages) of an image given as bytes or a path."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image), "<bytes>"
    path = Path(image)
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise MissingFile(f"cannot read: {exc.strerror or exc}", source=str(path)) from None
