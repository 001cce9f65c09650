"""The facade: one collection = a SQLite catalog + FAISS indexes beside it.

The CLI and the HTTP service call only this. The catalog is the truth; an
index is loaded only if its manifest says this collection wrote it from the
catalog's current state (or an earlier state that new rows extend, which is
then appended rather than rebuilt). Anything else is rebuilt.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np

from . import descriptors as descriptor_files
from . import features
from . import signals as registry
from .catalog import Catalog, SightingRow
from .cluster import build_clusters
from .decode import decode
from .analysis import analyse_source
from .descriptors import DescriptorIndex
from .errors import ImgmatchError, IndexFileError, MissingFile, error_for
from .index import BinaryIndex
from .ingest import DEFAULT_BATCH, IngestSummary, analyse, ingest
from .keys import key_hash
from .match import MATCH_SCORE, IndexLinker, find_matches, score_pairs
from .model import Added, Cluster, ImageRecord, Link, Match
from .signals import FEATURES, HashValue
from .sources import Item
from .text import parse_when
from .upgrade import UpgradeSummary
from .upgrade import batches as upgrade_batches
from .workers import DEFAULT_MAX_MEMORY

DEFAULT_DB = "imgmatch.db"
ENV_DB = "IMGMATCH_DB"


def default_db_path() -> Path:
    return Path(os.environ.get(ENV_DB) or DEFAULT_DB)


class Collection:
    """A collection of catalogued images. Open with :meth:`open`."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._indexes: dict[str, BinaryIndex] | None = None
        self._descriptors: DescriptorIndex | None = None
        self._dirty: set[str] = set()

    @classmethod
    def open(cls, path: str | Path | None = None, *, readonly: bool = False) -> Collection:
        return cls(Catalog.open(path or default_db_path(), readonly=readonly))

    @property
    def path(self) -> Path:
        return self.catalog.path

    @property
    def index_dir(self) -> Path:
        return Path(str(self.catalog.path) + ".indexes")

    def close(self) -> None:
        self.save_indexes()
        self.catalog.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- indexes
    def index_path(self, signal: str) -> Path:
        if signal == FEATURES:
            return self.index_dir / f"{signal}.descriptors"
        return self.index_dir / f"{signal}.mih"

    @property
    def indexes(self) -> dict[str, BinaryIndex]:
        if self._indexes is None:
            self._indexes = {name: self._load_or_build(name)
                             for name in self.catalog.signal_counts()}
        return self._indexes

    def _load_or_build(self, name: str) -> BinaryIndex:
        sig = registry.get(name)
        try:
            index, manifest = BinaryIndex.load(
                self.index_path(name), collection_id=self.catalog.collection_id,
                signal=name, bits=sig.bits)
        except IndexFileError:
            return self._build(name)
        if manifest.deletions != self.catalog.deletions or \
                self.catalog.count_signal_upto(name, manifest.max_image_id) != manifest.count:
            return self._build(name)
        if self._append_from_catalog(name, index, manifest.max_image_id):
            self._dirty.add(name)
        return index

    def _build(self, name: str) -> BinaryIndex:
        index = BinaryIndex(registry.get(name).bits)
        self._append_from_catalog(name, index, 0, merge=False)
        index.compact()
        self._dirty.add(name)
        return index

    def _append_from_catalog(self, name: str, index: BinaryIndex, after_id: int,
                             merge: bool = True) -> int:
        added = 0
        for rows in self.catalog.iter_signal(name, after_image_id=after_id):
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            codes = np.frombuffer(b"".join(bytes(r[1]) for r in rows), dtype=np.uint8)
            index.add(ids, codes, merge=merge)
            added += len(rows)
        return added

    @property
    def descriptors(self) -> DescriptorIndex | None:
        """The local-descriptor index, if any image has local features."""
        if self._descriptors is None and self.catalog.feature_count():
            self._descriptors = self._load_or_build_descriptors()
        return self._descriptors

    def _load_or_build_descriptors(self) -> DescriptorIndex:
        try:
            index, manifest = descriptor_files.load(self.index_path(FEATURES),
                                                    collection_id=self.catalog.collection_id)
            fresh = (manifest["deletions"] == self.catalog.deletions and manifest["images"]
                     == self.catalog.count_features_upto(manifest["max_image_id"]))
        except (IndexFileError, KeyError):
            fresh = False
        if not fresh:  # rebuilt from the catalog
            index, manifest = DescriptorIndex(), {"max_image_id": 0}
        if self._append_descriptors(index, int(manifest["max_image_id"])) or not fresh:
            self._dirty.add(FEATURES)
        return index

    def _append_descriptors(self, index: DescriptorIndex, after_id: int) -> int:
        added = 0
        for rows in self.catalog.iter_features(after_image_id=after_id):
            for image_id, blob in rows:
                index.add(image_id, features.LocalFeatures.from_bytes(blob))
            added += len(rows)
        return added

    def save_indexes(self) -> None:
        """Write every changed index to disk (atomically), if writable."""
        if self.catalog.readonly or self._indexes is None:
            return
        for name in sorted(self._dirty):
            if name == FEATURES:
                if self._descriptors is not None:
                    descriptor_files.save(
                        self._descriptors, self.index_path(name),
                        collection_id=self.catalog.collection_id,
                        deletions=self.catalog.deletions,
                        images=self.catalog.count_features_upto(self._descriptors.max_id))
                continue
            self._indexes[name].save(self.index_path(name),
                                     collection_id=self.catalog.collection_id,
                                     signal=name, deletions=self.catalog.deletions)
        self._dirty.clear()

    def erase(self, sha256s: Iterable[str]) -> int:
        """Remove images for good: catalog rows (signals, sightings, links,
        thumbnails) and index entries, without rebuilding the indexes."""
        ids = []
        for sha in sha256s:
            image_id = self.catalog.image_id(sha)
            if image_id is None:
                raise ImgmatchError(f"no image with sha256 {sha} in {self.path}")
            ids.append(image_id)
        indexes = self.indexes  # loaded against the catalog as it was before the deletion
        descriptors = self.descriptors
        erased = self.catalog.erase(ids)
        for name, index in indexes.items():
            index.remove(np.array(ids, dtype=np.int64))
            self._dirty.add(name)
        if descriptors is not None:
            descriptors.remove(np.array(ids, dtype=np.int64))
            self._dirty.add(FEATURES)
        self.save_indexes()
        return erased

    def reindex(self) -> dict[str, int]:
        """Rebuild every index from the catalog and save it."""
        self._indexes = {name: self._build(name) for name in self.catalog.signal_counts()}
        counts = {name: len(index) for name, index in self._indexes.items()}
        if self.catalog.feature_count():
            self._descriptors = DescriptorIndex()
            counts[FEATURES] = self._append_descriptors(self._descriptors, 0)
            self._dirty.add(FEATURES)
        self.save_indexes()
        return counts

    # ----------------------------------------------------------------- ingest
    def ingest(self, items: Iterable[Item], *,
               signals: Sequence[str] = registry.DEFAULT_SIGNALS, workers: int = 0,
               command: str = "ingest", args: dict | None = None, timeout: float = 60.0,
               batch_size: int = DEFAULT_BATCH, run_id: int | None = None,
               on_progress=None, on_written=None, thumbnails: bool = False,
               all_frames: bool = False, link: bool = True,
               max_memory: int | None = DEFAULT_MAX_MEMORY) -> IngestSummary:
        """Catalogue items, link new images to their near-duplicates, save indexes.

        ``all_frames``: every frame of an animated file (up to 100) is an image
        of its own; otherwise the first frame stands for the file.

        ``max_memory``: bytes each worker may take beyond its size at start
        (a file that needs more is recorded as ``out-of-memory``; None: no cap).

        ``link=False`` writes images and sightings only, in memory that does not
        grow with the collection (linking holds the hash indexes in memory);
        :meth:`link_pairs` links them afterwards, comparing values as stored,
        so mirrored and rotated copies are linked only by an ingest that links.

        Each call is recorded as a run, unless ``run_id`` names one already
        open (a long-lived caller such as the HTTP service keeps one). A
        collection that holds local features keeps adding them (the robust
        tier cannot find images that lack them).
        """
        signals = self._tier(signals)
        linker = self._linker(signals) if link else None
        own_run = run_id is None
        if own_run:
            run_id = self.catalog.start_run(command, args or {})
        status = "interrupted"
        summary = IngestSummary()
        try:
            summary = ingest(self.catalog, items, signal_names=signals, workers=workers,
                             run_id=run_id, linker=linker,
                             timeout=timeout, batch_size=batch_size,
                             on_progress=on_progress, on_written=on_written,
                             thumbnails=thumbnails, all_frames=all_frames,
                             max_memory=max_memory)
            status = "partial" if summary.failures else "ok"
            summary.lacking = self.missing_signals(signals)
        finally:
            if summary.images_added and linker is not None:
                self._dirty.update(signals)
            elif summary.images_added:
                # indexes held from before are behind the catalog now: the next
                # use loads them again and appends the new rows (marking them
                # changed), so nothing unsaved is lost with them
                self._indexes = self._descriptors = None
                self._dirty.clear()
            if own_run:
                self.save_indexes()
                self.catalog.finish_run(run_id, status, summary.to_json() | {"failures": None})
        return summary

    def upgrade(self, signals: Sequence[str] | None = None, *, workers: int = 0,
                timeout: float = 60.0, max_memory: int | None = DEFAULT_MAX_MEMORY,
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
            if name != FEATURES:
                registry.get(name).prepare()
        summary = UpgradeSummary(wanted)
        run_id = self.catalog.start_run("upgrade", {"signals": list(wanted)})
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
                summary.links_added += self.catalog.add_signals(
                    rows, lambda images: linker.links(images, variants, local, greys))
                # the indexes take the values they lacked (the others are there)
                linker.committed(
                    new, {a.sha256: {s.signal: a.variants[s.signal] for s in row.signals
                                     if s.signal in a.variants} for _, a, row in batch},
                    {a.sha256: a.features for _, a, row in batch
                     if row.features is not None and a.features is not None})
                replaced.update(s.signal for _, row in rows for s in row.signals)
                if any(row.features is not None for _, row in rows):
                    replaced.add(FEATURES)
                summary.images_upgraded += len(batch)
                if on_progress is not None:
                    on_progress(summary)
            status = "partial" if summary.unreachable else "ok"
        finally:
            # indexes appended to while linking may hold a value replaced since
            # (another version): rebuilt from the catalog, which is the truth
            for name in replaced:
                if name == FEATURES:
                    self._descriptors = DescriptorIndex()
                    self._append_descriptors(self._descriptors, 0)
                else:
                    self.indexes[name] = self._build(name)
            self._dirty.update(replaced)
            self.save_indexes()
            summary.seconds = time.monotonic() - started
            self.catalog.finish_run(run_id, status, summary.to_json()
                                    | {"unreachable_images": None})
        return summary

    def coverage(self) -> dict[str, int]:
        """Per signal (local features as ``orb``), how many images hold it."""
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
        indexes = self.indexes
        for name in signals:
            if name not in indexes and name != FEATURES:
                indexes[name] = BinaryIndex(registry.get(name).bits)
        descriptors = self.descriptors
        if FEATURES in signals and descriptors is None:
            descriptors = self._descriptors = DescriptorIndex()
        return IndexLinker(self.catalog, indexes, descriptors=descriptors,
                           older_only=older_only)

    def add(self, image: bytes | str | Path, sighting: SightingRow | None = None, *,
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

    def add_and_match(self, image: bytes | str | Path, sighting: SightingRow | None = None,
                      *, signals: Sequence[str] = registry.DEFAULT_SIGNALS, top_k: int = 10,
                      run_id: int | None = None,
                      lock: AbstractContextManager | None = None) -> tuple[Added, list[Match]]:
        """:meth:`add`, answered with the image's matches among the others (best
        first, at most ``top_k``): what a crawler sending one image at a time wants.

        ``lock``: for a caller that adds from many threads into one collection
        (the HTTP service). It is held while the catalog is read or written and
        the indexes searched, never while the image is decoded and hashed, so
        uploads are analysed in parallel. ``run_id``: as for :meth:`ingest`.
        """
        guard = lock if lock is not None else nullcontext()
        data, source = _read(image)
        with guard:
            signals = self._tier(signals)

        def known(sha256: str) -> bool:  # known bytes are not decoded again
            with guard:
                return self.catalog.has_image(sha256)

        item = _analysed(data, source, sighting, signals, known)
        analysis = item.analysis
        pixels = functools.cache(lambda: decode(data, source=item.source))  # if known
        with guard:
            summary = self.ingest([item], signals=signals, run_id=run_id)
            matches = self.query_decoded(pixels, top_k=top_k + 1, min_score=MATCH_SCORE,
                                         variants=analysis.variants, local=analysis.features)
        return _added(item, summary), \
            [m for m in matches if m.sha256 != analysis.sha256][:top_k]

    def add_many(self, pairs: Iterable[tuple[bytes | str | Path, SightingRow | None]],
                 **kwargs) -> IngestSummary:
        """Catalogue many images; failures are returned in the summary, not raised."""
        def items():
            for n, (image, sighting) in enumerate(pairs):
                if isinstance(image, (bytes, bytearray)):
                    s = sighting or SightingRow()
                    yield Item(s.source or f"<bytes #{n}>", s, data=bytes(image))
                else:
                    path = Path(image)
                    s = sighting or SightingRow(source=str(path))
                    yield Item(s.source or str(path), s, path=path)
        return self.ingest(items(), **kwargs)

    def import_hashes(self, path: str | Path, *, platform: str | None = None,
                      batch: int = 50_000, link: bool = True, workers: int = 0) -> dict:
        """Load a hash list (see :mod:`imgmatch.hashlists`): each hash becomes an
        image known only by its signal, its line's name the sighting's source.
        With ``link``, the new hashes are then linked to their near-duplicates
        (:meth:`link_pairs`), so they join clusters like ingested images."""
        from itertools import islice

        from .hashlists import read_hash_list

        run_id = self.catalog.start_run("import-hashes", {"file": str(path)})
        indexes = self.indexes
        if "pdq" not in indexes:
            indexes["pdq"] = BinaryIndex(registry.get("pdq").bits)
        totals = {"lines": 0, "images_added": 0, "sightings_added": 0, "failed": 0}
        failures: list[tuple[str, str, str]] = []
        lines = read_hash_list(path)
        with self.catalog.bulk_cache():
            while chunk := list(islice(lines, batch)):
                rows = []
                for line in chunk:
                    totals["lines"] += 1
                    if line.value is None:
                        failures.append((f"{path}:{line.line_no}", "bad-hash", line.error or ""))
                        continue
                    rows.append((line.signal, line.value, line.quality, SightingRow(
                        platform=platform,
                        source=line.name or f"{Path(path).name}:{line.line_no}")))
                added, sightings, first = self.catalog.import_hashes(rows, run_id)
                totals["images_added"] += added
                totals["sightings_added"] += sightings
                if added:  # tables are cut once, at the end, not as the list grows
                    self._append_from_catalog("pdq", indexes["pdq"], first - 1, merge=False)
                    self._dirty.add("pdq")
        indexes["pdq"].compact()
        if failures:
            self.catalog.write_batch([], [], failures, run_id)
        totals["failed"] = len(failures)
        totals["failures"] = [{"source": s, "reason": r, "detail": d} for s, r, d in failures]
        self.save_indexes()
        if link:
            totals["links_added"] = self.link_pairs(["pdq"], workers=workers)["pdq"]["links_added"]
        self.catalog.finish_run(run_id, "partial" if failures else "ok",
                                totals | {"failures": None})
        return totals

    def link_pairs(self, signals: Sequence[str] | None = None, *, workers: int = 0) -> dict:
        """Link every pair of images within a signal's threshold (all-pairs search).

        Ingest links each new image as it arrives; hash lists arrive without
        pictures and in bulk, so they are linked here, by a self-join of the
        index (:mod:`imgmatch.pairs`). Only images added since the last pass
        are searched: against each other and against the older ones. Pairs are
        compared as stored (no rotations: those are for queries and ingest).
        Values below their signal's quality gate take no part.
        Returns per signal the images searched and the links added.
        """
        from .pairs import default_workers

        workers = workers or default_workers()
        names = [n for n in (signals or self.catalog.signal_counts()) if n != FEATURES]
        out: dict[str, dict[str, int]] = {}
        for name in names:
            if name not in self.indexes:
                raise ImgmatchError(f"{self.path} holds no {name} values to link")
            out[name] = self._link_signal(name, workers)
        return out

    def _link_signal(self, name: str, workers: int) -> dict[str, int]:
        from . import pairs

        index, sig = self.indexes[name], registry.get(name)
        key = f"pairs_upto:{name}"
        upto = int(self.catalog.meta(key) or 0)
        fresh = self.catalog.count_signal_above(name, upto)
        old = self.catalog.signal_counts().get(name, 0) - fresh
        if upto and fresh * FEW_NEW < old:
            # a few new codes (a partner's list against a crawl): read them from
            # the catalog and ask the tables for their old neighbours, rather than
            # copying every code, scanning every quality and sorting per table
            new_ids, new_codes = self._usable_values(name, upto)
            i, j, _ = self._old_neighbours(index, sig, new_ids, new_codes, upto)
        else:
            codes, ids = index.mih.live()
            if sig.min_quality is not None:
                low = self.catalog.low_quality_ids(name, sig.min_quality)
                if low:
                    keep = ~np.isin(ids, np.array(low, dtype=np.int64))
                    codes, ids = codes[keep], ids[keep]
            new = ids > upto
            new_codes, new_ids = codes[new], ids[new]
            cross = pairs.cross_pairs(new_codes, codes[~new], sig.threshold, workers=workers)
            i, j = new_ids[cross.i], ids[~new][cross.j]
        found = pairs.near_pairs(new_codes, sig.threshold, workers=workers)
        a = np.concatenate([new_ids[found.i], i])
        b = np.concatenate([new_ids[found.j], j])
        # each pair is scored on every signal the two images have, not this one alone
        rows = score_pairs(self.catalog, a, b)
        added = self.catalog.add_links(rows, {key: str(int(max(upto, index.max_id)))})
        return {"searched": int(len(new_ids)), "pairs": int(len(a)), "links_added": added}

    def _usable_values(self, name: str, after_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, codes) of the values of ``name`` above an image id that pass its
        quality gate (an unknown quality is trusted, as in scoring)."""
        sig = registry.get(name)
        rows = [(i, bytes(v)) for chunk in self.catalog.iter_signal(name, after_image_id=after_id)
                for i, v, q in chunk if sig.trusts(q)]
        ids = np.array([i for i, _ in rows], dtype=np.int64)
        codes = np.frombuffer(b"".join(v for _, v in rows), dtype=np.uint8)
        return ids, codes.reshape(len(rows), sig.bits // 8)

    def _old_neighbours(self, index: BinaryIndex, sig, new_ids: np.ndarray,
                        new_codes: np.ndarray, upto: int) -> tuple[np.ndarray, ...]:
        """(new id, old id, distance) for each usable old code (id <= ``upto``)
        within the threshold of a new one, asked of the index."""
        q, old, dist = index.range_pairs(new_codes, sig.threshold)
        keep = old <= upto
        q, old, dist = q[keep], old[keep], dist[keep]
        if sig.min_quality is not None and len(old):
            stored = self.catalog.signals_of(np.unique(old).tolist())
            keep = np.array([sig.trusts(stored[o][sig.name][1]) for o in old.tolist()])
            q, old, dist = q[keep], old[keep], dist[keep]
        return new_ids[q], old, dist.astype(np.int64)

    # ------------------------------------------------------------------ query
    def query(self, image: bytes | str | Path, *, top_k: int = 10,
              min_score: float = MATCH_SCORE,
              lock: AbstractContextManager | None = None) -> list[Match]:
        """Where else has this image appeared? Best matches first.

        ``lock``: as for :meth:`add_and_match`, held while searching, not while decoding.
        """
        data, source = _read(image)
        decoded = decode(data, source=source)
        with lock if lock is not None else nullcontext():
            return self.query_decoded(decoded, top_k=top_k, min_score=min_score)

    def query_decoded(self, decoded, *, top_k: int = 10, min_score: float = MATCH_SCORE,
                      variants: dict | None = None, local=None) -> list[Match]:
        """Matches for decoded pixels. ``variants`` (hash values per signal) and
        ``local`` (local features and their mirror's) reuse what an analysis
        already computed; anything missing is computed from ``decoded``, which
        may be a callable that decodes on demand."""
        pixels = decoded if callable(decoded) else (lambda: decoded)
        variants = variants or {}
        query = {name: variants.get(name) or registry.get(name).dihedral(pixels())
                 for name in self.indexes}
        descriptors = self.descriptors
        views = grey = None
        if descriptors is not None:
            grey = np.asarray(pixels().grey)
            views = [local or features.extract_both(grey)]
            views += [features.extract_both(tile) for tile in features.tiles(grey)]
        return find_matches(self.catalog, self.indexes, query, top_k=top_k, min_score=min_score,
                            local=views, descriptors=descriptors, grey=grey)

    def _tier(self, signals: Sequence[str]) -> tuple[str, ...]:
        """The signals to compute: as asked, plus local features in a robust collection."""
        signals = tuple(signals)
        return (*signals, FEATURES) if FEATURES not in signals and self.robust else signals

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
            value = registry.get("pdq").from_hex(value)
        sig = registry.get(value.signal)
        query = {value.signal: sig.dihedral_of_value(value)}
        return find_matches(self.catalog, self.indexes, query, top_k=top_k, min_score=min_score)

    # ---------------------------------------------------------------- reports
    def clusters(self, *, since: str | None = None, until: str | None = None,
                 ignored: set[int] | None = None, **kwargs) -> list[Cluster]:
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

    def report_json(self, **filters) -> dict:
        """The JSON report (what ``imgmatch report --format json`` prints) of the
        :meth:`clusters` these filters give: the one shape for every program."""
        from .report.jsonfmt import report_dict

        return report_dict(self.clusters(**filters))

    # ----------------------------------------------------------------- ignore
    def ignore(self, *, sha256: str | None = None, value: HashValue | None = None,
               reason: str = "ignored") -> bool:
        """Mark an image, or every image matching a hash, as a known stock photo,
        logo or template: its links stop shaping clusters. False if already so."""
        if sha256 is not None:
            image_id = self.catalog.image_id(sha256)
            if image_id is None:
                raise ImgmatchError(f"no image with sha256 {sha256} in {self.path}")
            return self.catalog.ignore_image(image_id, reason)
        if value is None:
            raise ImgmatchError("name an image (sha256) or a hash to ignore")
        return self.catalog.ignore_hash(value.signal, value.data, reason)

    def ignored_image_ids(self) -> set[int]:
        """Images ignored by name, and those within threshold of an ignored hash."""
        ids = self.catalog.ignored_image_ids()
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

    def key_scopes(self, key: str) -> tuple[str, ...] | None:
        """The scopes of an HTTP service API key (see :mod:`imgmatch.keys`), None
        if it is unknown or revoked; the catalog holds only the key's hash."""
        return self.catalog.api_key_scopes(key_hash(key))

    def thumbnails(self, sha256s: Iterable[str]) -> dict[str, bytes]:
        """Stored thumbnails (only if ingested with thumbnails=True), by sha256."""
        ids = {self.catalog.image_id(s): s for s in sha256s}
        ids.pop(None, None)
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
            raise ImgmatchError(f"no image with sha256 {what} in {self.path}")
        if len(found) > 1:
            shown = ", ".join(found[:AMBIGUOUS_SHOWN]) + (
                ", ..." if len(found) > AMBIGUOUS_SHOWN else "")
            raise ImgmatchError(f"sha256 prefix {text} is ambiguous, it fits {shown}; "
                                f"give more digits")
        return found[0]

    def image(self, sha256: str) -> ImageRecord:
        """One image: its facts, signals, sightings and links; ImgmatchError if unknown."""
        image_id = self.catalog.image_id(sha256)
        if image_id is None:
            raise ImgmatchError(f"no image with sha256 {sha256} in {self.path}")
        info = self.catalog.images([image_id])[image_id]
        values = self.catalog.signals_of([image_id]).get(image_id, {})
        linked = self.catalog.links_of(image_id)
        shas = self.catalog.images([other for other, *_ in linked])
        return ImageRecord(
            sha256=info["sha256"], size_bytes=info["size_bytes"], width=info["width"],
            height=info["height"], format=info["format"], frames=info["frames"],
            created_at=info["created_at"],
            signals={name: registry.get(name).from_bytes(v, q)
                     for name, (v, q) in values.items()},
            sightings=tuple(self.catalog.sightings_of([image_id])[image_id]),
            links=tuple(Link(shas[o]["sha256"], score, d, agreed, t)
                        for o, score, d, agreed, t in linked))

    def stats(self) -> dict:
        counts = self.catalog.counts()
        local_features = counts.pop("features")
        return {
            "path": str(self.path),
            **counts,
            "signals": self.catalog.signal_counts(),
            "local_features": local_features,
            "platforms_by_sightings": self.catalog.platform_counts(),
            "failure_reasons": self.catalog.failure_reasons(),
            "last_runs": self.catalog.last_runs(3),
        }


#: The fewest hex digits of a SHA-256 that name an image (:meth:`Collection.resolve`);
#: in a million images, one shares its first 8 digits with another about once
#: in 4,300 (10**6 / 16**8), and then the error says so.
MIN_SHA256_PREFIX = 8
#: How many images an ambiguous prefix's error names.
AMBIGUOUS_SHOWN = 5
_HEX = re.compile(r"[0-9a-f]+")

#: A link pass whose new codes are fewer than 1/FEW_NEW of the old ones queries
#: the index with them (1 to 2 ms each at 1e7) instead of joining,
#: which sorts every old code once per table.
FEW_NEW = 100


def hash_bytes(data: bytes, signals: Sequence[str] = registry.DEFAULT_SIGNALS,
               source: str | None = None) -> dict:
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


def _analysed(data: bytes, source: str, sighting: SightingRow | None,
              signals: Sequence[str], known: Callable[[str], bool]) -> Item:
    """One image to add, analysed (unless ``known`` holds its bytes), with its
    sighting; the InputError that says why when it cannot be used."""
    if sighting is None:  # a path names where the bytes came from; bare bytes do not
        sighting = SightingRow(source=None if source == "<bytes>" else source)
    name = sighting.source or source
    analysis = analyse_source(None, data, signals, name, known)
    if analysis.image is None and not analysis.known:
        raise error_for(analysis.reason, analysis.detail, name)
    return Item(name, sighting, data=data, analysis=analysis)


def _added(item: Item, summary: IngestSummary) -> Added:
    return Added(item.analysis.sha256, new_image=summary.images_added == 1,
                 new_sighting=summary.sightings_added == 1)


def _date_bound(value: str | None, name: str) -> str | None:
    """A clusters ``since``/``until`` as ``imgmatch report`` reads it: a bare date
    stays a date (so ``until`` takes the whole day), longer text is a UTC time."""
    if not value:
        return None
    parsed = parse_when(value)
    if parsed is None:
        raise ImgmatchError(f"{name}: {value!r} is not a date (YYYY-MM-DD)")
    return parsed[:10] if len(value.strip()) <= 10 else parsed


def _read(image: bytes | str | Path) -> tuple[bytes, str]:
    """(bytes, a name for messages) of an image given as bytes or a path."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image), "<bytes>"
    path = Path(image)
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise MissingFile(f"cannot read: {exc.strerror or exc}", source=str(path)) from None
