"""A collection's indexes, kept as caches of its catalog: loaded, caught up, rebuilt, saved.

Every index, a hash signal's tables (:class:`~imgmatch.index.BinaryIndex`)
or the local-descriptor votes (:class:`~imgmatch.descriptors.DescriptorIndex`),
goes through the same steps. Its folder is loaded only if its manifest
(:mod:`imgmatch.index_files`) names this collection and the settings of
today, and agrees with the catalog: the same deletion counter, and as many
values up to its largest image id as the catalog holds there. An index
behind the catalog (rows past its largest id) is caught up by appending
those rows; anything else is rebuilt from the catalog, which is the truth.
Changed indexes are written back on :meth:`IndexCache.save`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from . import descriptors as descriptor_files
from . import signals as registry
from .catalog import Catalog
from .descriptors import DescriptorIndex
from .errors import IndexFileError
from .index import BinaryIndex
from .index_files import Manifest
from .signals import FEATURES


class IndexCache:
    """The indexes of one catalog, each loaded on first use."""

    def __init__(self, catalog: Catalog, folder: Path) -> None:
        self.catalog = catalog
        self.folder = folder
        self._hashes: dict[str, BinaryIndex] | None = None
        self._descriptors: DescriptorIndex | None = None
        #: the catalog's deletion counter when the indexes were loaded: what
        #: they agree with, and what their saved manifests say
        self._deletions: int | None = None
        #: indexes changed since they were loaded or saved
        self.changed: set[str] = set()

    def path(self, signal: str) -> Path:
        """The folder of a signal's index (``orb.descriptors`` for local features)."""
        return self.folder / f"{signal}.{registry.signal(signal).index_suffix}"

    @property
    def hashes(self) -> dict[str, BinaryIndex]:
        """Every hash signal's index, by signal."""
        if self._hashes is None:
            self._deletions = self.catalog.deletions
            self._hashes = {name: self._load_hashes(name)
                            for name in self.catalog.signal_counts()}
        return self._hashes

    @property
    def descriptors(self) -> DescriptorIndex | None:
        """The local-descriptor index, if any image has local features."""
        if self._descriptors is None and self.catalog.feature_count():
            self._descriptors = self._load_descriptors()
        return self._descriptors

    def load(self, *, local_features: bool = True) -> None:
        """Load (or catch up, or rebuild) the indexes now, not on first use:
        every hash signal's, and with ``local_features`` the descriptor index."""
        self.hashes
        if local_features:
            self.descriptors

    def ensure(self, signals: Iterable[str]) -> tuple[dict[str, BinaryIndex],
                                                       DescriptorIndex | None]:
        """The indexes, with an empty one for each of ``signals`` the
        collection holds no values of yet (their first values are on the way)."""
        hashes = self.hashes
        wanted, local = registry.split(signals)
        for name in wanted:
            if name not in hashes:
                hashes[name] = BinaryIndex(registry.get(name).bits)
        if local and self.descriptors is None:
            self._descriptors = DescriptorIndex()
        return hashes, self._descriptors

    def forget(self) -> None:
        """Drop the loaded indexes: the catalog moved on without them (an ingest
        that did not link). The next use loads them again and appends the new
        rows (marking them changed), so nothing unsaved is lost with them."""
        self._hashes = self._descriptors = None
        self._deletions = None
        self.changed.clear()

    # --------------------------------------------------------------- loading
    def _current(self, signal: str, manifest: Manifest) -> bool:
        """Whether a saved index agrees with the catalog up to its largest id."""
        if manifest.deletions != self.catalog.deletions:
            return False
        upto = manifest.max_image_id
        held = (self.catalog.count_features_upto(upto) if _is_local(signal)
                else self.catalog.count_signal_upto(signal, upto))
        return held == manifest.count

    def _load_hashes(self, name: str) -> BinaryIndex:
        try:
            index, manifest = BinaryIndex.load(
                self.path(name), collection_id=self.catalog.collection_id, signal=name,
                bits=registry.get(name).bits)
        except IndexFileError:
            return self._build_hashes(name)
        if not self._current(name, manifest):
            return self._build_hashes(name)
        if _append_codes(self.catalog, name, index, manifest.max_image_id):
            self.changed.add(name)
        return index

    def _load_descriptors(self) -> DescriptorIndex:
        try:
            index, manifest = descriptor_files.load(
                self.path(FEATURES), collection_id=self.catalog.collection_id)
        except IndexFileError:
            return self._build_descriptors()[0]
        if not self._current(FEATURES, manifest):
            return self._build_descriptors()[0]
        if _append_features(self.catalog, index, manifest.max_image_id):
            self.changed.add(FEATURES)
        return index

    # -------------------------------------------------------------- building
    def _build_hashes(self, name: str) -> BinaryIndex:
        """A signal's index built anew from the catalog (marked changed)."""
        index = BinaryIndex(registry.get(name).bits)
        _append_codes(self.catalog, name, index, 0, merge=False)
        index.compact()
        self.changed.add(name)
        return index

    def _build_descriptors(self) -> tuple[DescriptorIndex, int]:
        """The descriptor index built anew from the catalog (put in place and
        marked changed), and the images it was given."""
        index = DescriptorIndex()
        added = _append_features(self.catalog, index, 0)
        self._descriptors = index
        self.changed.add(FEATURES)
        return index, added

    def rebuild(self, names: Iterable[str]) -> None:
        """Rebuild these indexes (``orb``: the descriptor index) from the catalog."""
        for name in names:
            if _is_local(name):
                self._build_descriptors()
            else:
                hashes = self.hashes
                hashes[name] = self._build_hashes(name)

    def rebuild_all(self) -> dict[str, int]:
        """Every index built anew from the catalog; what each was given (codes,
        or images with local features)."""
        self._deletions = self.catalog.deletions
        self._hashes = {name: self._build_hashes(name) for name in self.catalog.signal_counts()}
        counts = {name: len(index) for name, index in self._hashes.items()}
        if self.catalog.feature_count():
            counts[FEATURES] = self._build_descriptors()[1]
        return counts

    def append(self, name: str, after_id: int, *, merge: bool = True) -> int:
        """Append a hash signal's values above an image id from the catalog to
        its index; returns how many (the index is marked changed if any)."""
        added = _append_codes(self.catalog, name, self.hashes[name], after_id, merge=merge)
        if added:
            self.changed.add(name)
        return added

    def remove(self, image_ids: Sequence[int]) -> None:
        """Take erased images out of every loaded index (their rows are gone
        from the catalog: the indexes must have been loaded before), for good:
        the hash tables are rebuilt without them, so that no saved file keeps
        their codes behind a mask."""
        ids = np.array(image_ids, dtype=np.int64)
        for name, index in (self._hashes or {}).items():
            if index.remove(ids):
                index.compact()
            self.changed.add(name)
        if self._descriptors is not None:
            self._descriptors.remove(ids)
            self.changed.add(FEATURES)
        self._deletions = self.catalog.deletions

    def follow(self) -> bool:
        """Catch up with what other processes wrote to the catalog since the
        indexes were loaded: their new images are appended; after an erasure
        the indexes are loaded again (from the eraser's saved files, or
        rebuilt), so nothing erased stays findable or is saved back.
        Whether anything changed."""
        if self._hashes is None:
            return False
        if self.catalog.deletions != self._deletions:
            descriptors = self._descriptors is not None
            self.forget()
            self.load(local_features=descriptors)
            return True
        changed = False
        held = self.catalog.signal_counts()  # tallies: no counting
        for name, count in held.items():
            if name not in self._hashes:
                self._hashes[name] = self._load_hashes(name)
                changed = True
                continue
            if self.append(name, self._hashes[name].max_id):
                changed = True
            if len(self._hashes[name]) != count:
                # another process committed an image below one this process
                # wrote since (ids go by commit order): appending past the
                # largest id cannot find it, so the index is built again
                self._hashes[name] = self._build_hashes(name)
                changed = True
        if self._descriptors is not None:
            if _append_features(self.catalog, self._descriptors, self._descriptors.max_id):
                self.changed.add(FEATURES)
                changed = True
        elif self.catalog.feature_count():
            changed = self.descriptors is not None or changed
        return changed

    # ---------------------------------------------------------------- saving
    def save(self) -> None:
        """Write every changed index to disk (atomically), if writable."""
        if self.catalog.readonly or self._hashes is None or not self.changed:
            return
        # the deletions these indexes agree with, not the catalog's now: if
        # another process erased meanwhile, the files must read as behind
        collection_id = self.catalog.collection_id
        deletions = self.catalog.deletions if self._deletions is None else self._deletions
        for name in sorted(self.changed):
            if _is_local(name):
                if self._descriptors is not None:
                    descriptor_files.save(
                        self._descriptors, self.path(name), collection_id=collection_id,
                        deletions=deletions,
                        images=self.catalog.count_features_upto(self._descriptors.max_id))
                continue
            self._hashes[name].save(self.path(name), collection_id=collection_id,
                                    signal=name, deletions=deletions)
        self.changed.clear()


def _is_local(name: str) -> bool:
    """Whether a signal is local features (their index is the descriptor index)."""
    return registry.signal(name).kind == "local"


def _append_codes(catalog: Catalog, name: str, index: BinaryIndex, after_id: int,
                  merge: bool = True) -> int:
    """Append a signal's values above an image id to its index; returns how many."""
    added = 0
    for rows in catalog.iter_signal(name, after_image_id=after_id):
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        codes = np.frombuffer(b"".join(bytes(r[1]) for r in rows), dtype=np.uint8)
        index.add(ids, codes, merge=merge)
        added += len(rows)
    return added


def _append_features(catalog: Catalog, index: DescriptorIndex, after_id: int) -> int:
    """Append the local features of images above an id; returns how many images."""
    added, local = 0, registry.local()
    for rows in catalog.iter_features(after_image_id=after_id):
        for image_id, blob in rows:
            index.add(image_id, local.load(blob))
        added += len(rows)
    return added
