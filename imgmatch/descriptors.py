"""Which stored images share local descriptors with a query: candidates for verification.

Geometric verification (:func:`imgmatch.features.verify`) is exact but costs
about a millisecond a pair, so it runs on a short list. Global hashes supply
part of that list; this index supplies the rest, which no hash finds: the
crops, collages and screenshots. It holds the strongest descriptors of every
image (:data:`PER_IMAGE`), each labelled with its image id; a query's
descriptors (and its mirror's) each look up their nearest stored
descriptors, and every image collects one vote per query descriptor that
lands on it within :data:`VOTE_DISTANCE` bits. The images with the most
votes are the candidates.

Small collections are searched with FAISS's binary flat scan (exact). A scan
grows with the collection, so past :data:`IVF_ROWS` descriptors the search
moves to an inverted file (``IndexBinaryIVF``) whose cells are centred on
descriptors sampled from the index itself rather than trained by k-means:
no training pass (k-means over millions of 256-dimensional points is a
long job of its own), and a descriptor's near neighbours still fall in the cells nearest
to it, of which :data:`NPROBE` are searched. Votes need only some of a
repost's descriptors to find theirs, so an approximate search loses little
(measured in docs/benchmarks.md). Like every index here it is a cache of
the catalog: plain .npy arrays with a verified manifest, rebuilt from the
``features`` table when stale; the FAISS structure is rebuilt on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import IndexFileError
from .features import DESCRIPTOR_BYTES, NAME, VERSION, LocalFeatures, faiss_threads
from .index_files import Manifest, load_folder, save_folder

#: Descriptors indexed per image (the strongest): the memory budget of the tier.
PER_IMAGE = 128
#: A stored descriptor within this many bits of a query's casts a vote.
VOTE_DISTANCE = 48
#: Neighbours looked up per query descriptor.
NEIGHBOURS = 8
#: Stored descriptors from which an inverted file replaces the flat scan.
#: Chosen on the fit half's simulated crawl: from 20,000 down to 4,096 the
#: ingest's links lost nothing (B-cubed 0.9912 / 0.8375 -> 0.9912 / 0.8380)
#: and the crawl's robust ingest took 57 s instead of 73 (a batch's own
#: descriptors, a few thousand, were scanned in full for every new image).
IVF_ROWS = 4096
#: Cells of the inverted file per stored descriptor (the square root rule,
#: times four), and cells searched per query descriptor.
NPROBE = 16
#: The inverted file is rebuilt (cells re-sampled) when it has grown this much.
REBUILD_GROWTH = 4
#: Query descriptors that vote (the strongest, per feature set): the search
#: costs in proportion, and a repost's strongest corners are mostly its
#: original's strongest too.
VOTERS = 250


class DescriptorIndex:
    """Local descriptors of many images, searched by voting."""

    ARRAYS = ("codes", "owners", "centres", "cells", "built_at")

    def __init__(self, codes: np.ndarray | None = None, owners: np.ndarray | None = None,
                 centres: np.ndarray | None = None, cells: np.ndarray | None = None,
                 built_at: int = 0) -> None:
        self.codes = (np.zeros((0, DESCRIPTOR_BYTES), np.uint8) if codes is None
                      else np.ascontiguousarray(codes, np.uint8).reshape(-1, DESCRIPTOR_BYTES))
        self.owners = (np.zeros(0, np.int64) if owners is None
                       else np.ascontiguousarray(owners, np.int64))
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._faiss: Any = None  # FAISS's flat or inverted-file index, built on first use
        self._faiss_rows = 0
        # the inverted file: its cell centres, each row's cell (saved, so that
        # opening a large collection does not assign every row again), and
        # the row count when the centres were sampled
        self.centres = (np.zeros((0, DESCRIPTOR_BYTES), np.uint8) if centres is None
                        else np.ascontiguousarray(centres, np.uint8))
        self.cells = np.zeros(0, np.int64) if cells is None else np.asarray(cells, np.int64)
        self._built_at = built_at if len(self.centres) else 0

    def __len__(self) -> int:
        self._fold()
        return len(np.unique(self.owners))

    @property
    def max_id(self) -> int:
        self._fold()
        return int(self.owners.max(initial=0))

    def add(self, image_id: int, features: LocalFeatures) -> None:
        """Index the strongest descriptors of one image (features are stored strongest first)."""
        codes = features.descriptors[:PER_IMAGE]
        if len(codes):
            self._pending.append((np.ascontiguousarray(codes, np.uint8),
                                  np.full(len(codes), image_id, np.int64)))

    def remove(self, image_ids: np.ndarray) -> int:
        self._fold()
        keep = ~np.isin(self.owners, np.asarray(image_ids, np.int64))
        removed = int((~keep).sum())
        if removed:
            if len(self.cells) == len(self.codes):
                self.cells = self.cells[keep]
            self.codes, self.owners = self.codes[keep], self.owners[keep]
            self._faiss, self._faiss_rows = None, 0
        return removed

    def _fold(self) -> None:
        if self._pending:
            self.codes = np.concatenate([self.codes] + [c for c, _ in self._pending])
            self.owners = np.concatenate([self.owners] + [o for _, o in self._pending])
            self._pending = []

    def _index(self) -> Any:
        """The FAISS index (flat or inverted file), extended with rows added since."""
        self._fold()
        rows = len(self.codes)
        want_ivf = rows >= IVF_ROWS
        is_ivf = self._built_at > 0
        stale = (self._faiss is None or want_ivf != is_ivf
                 or (want_ivf and rows >= REBUILD_GROWTH * self._built_at))
        if stale:
            if not want_ivf:
                self.centres, self.cells, self._built_at = self.centres[:0], self.cells[:0], 0
            elif not len(self.centres) or rows >= REBUILD_GROWTH * self._built_at:
                self.centres, self.cells = _sample_centres(self.codes), self.cells[:0]
                self._built_at = rows
            self._faiss = _inverted_file(self.centres) if want_ivf else _flat()
            self._faiss_rows = 0
        if self._faiss_rows < rows:
            new = self.codes[self._faiss_rows:]
            with faiss_threads(len(new) >= PARALLEL_ROWS):
                if self._built_at:
                    if len(self.cells) < rows:  # rows whose cell is not known yet
                        _, found = self._faiss.quantizer.search(
                            self.codes[len(self.cells):], 1)
                        self.cells = np.concatenate([self.cells, found.ravel()])
                    cells = np.ascontiguousarray(self.cells[self._faiss_rows:rows], np.int64)
                    self._faiss.add_core(len(new), _ptr(new), None, _ptr(cells))
                else:
                    self._faiss.add(new)
            self._faiss_rows = rows
        return self._faiss

    def candidates(self, queries: list[LocalFeatures], limit: int,
                   exclude_from: int | None = None,
                   voters: int = VOTERS) -> list[tuple[int, int]]:
        """The ``limit`` images with the most votes: [(image_id, votes)], most first.

        ``queries`` are the query's feature sets (the image and its mirror);
        each query descriptor votes once per image. ``exclude_from`` drops
        images with ids at or above it (linking: newer images query older).
        ``voters``: how many of each set's strongest descriptors vote.
        """
        return [(i, sum(v)) for i, v in self.votes_by_set(queries, limit, exclude_from, voters)]

    def votes_by_set(self, queries: list[LocalFeatures], limit: int,
                     exclude_from: int | None = None,
                     voters: int = VOTERS) -> list[tuple[int, tuple[int, ...]]]:
        """:meth:`candidates` with each image's votes split by the query set
        that cast them: [(image_id, (votes of set 0, of set 1, ...))]. A
        mirrored repost draws its votes from the mirror's set; verifying the
        other orientation then costs a matching that cannot succeed."""
        sets = [q.descriptors[:voters] for q in queries]
        parts = [d for d in sets if len(d)]
        if not parts:
            return []
        index = self._index()
        if not index.ntotal:
            return []
        codes = np.ascontiguousarray(np.concatenate(parts), np.uint8)
        distances, rows = _search(index, codes, min(NEIGHBOURS, index.ntotal))
        hit = (rows >= 0) & (distances <= VOTE_DISTANCE)
        voter = np.broadcast_to(np.arange(len(codes))[:, None], rows.shape)[hit]
        owner = self.owners[rows[hit]]
        if exclude_from is not None:
            keep = owner < exclude_from
            voter, owner = voter[keep], owner[keep]
        if not len(owner):
            return []
        # one vote per (query descriptor, image)
        pairs = np.unique(np.stack([owner, voter], axis=1), axis=0)
        ids, first, votes = np.unique(pairs[:, 0], return_index=True, return_counts=True)
        order = np.lexsort((ids, -votes))[:limit]
        # which set each vote came from: sets are stacked in order, skipping empty ones
        ends = np.cumsum([len(d) for d in sets])
        which = np.searchsorted(ends, pairs[:, 1], side="right")
        out = []
        for i in order:
            rows = which[first[i]:first[i] + votes[i]]
            out.append((int(ids[i]), tuple(int(n) for n in np.bincount(rows, minlength=len(sets)))))
        return out

    def memory_bytes(self) -> int:
        self._fold()
        # FAISS keeps its own copy of the codes (and, in an inverted file, their ids)
        per_row = DESCRIPTOR_BYTES + (8 if self._built_at else 0)
        return self.codes.nbytes + self.owners.nbytes + self._faiss_rows * per_row

    def arrays(self) -> dict[str, np.ndarray]:
        self._fold()
        cells = self.cells if len(self.cells) == len(self.codes) else self.cells[:0]
        return {"codes": self.codes, "owners": self.owners, "centres": self.centres,
                "cells": cells, "built_at": np.array([self._built_at], np.int64)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> DescriptorIndex:
        codes, owners = arrays["codes"], arrays["owners"]
        centres, cells = arrays["centres"], arrays["cells"]
        if codes.ndim != 2 or codes.shape[1] != DESCRIPTOR_BYTES or len(codes) != len(owners):
            raise ValueError("descriptor arrays do not fit together")
        if centres.ndim != 2 or centres.shape[1] != DESCRIPTOR_BYTES \
                or len(cells) not in (0, len(codes)) \
                or (len(cells) and not 0 <= int(cells.min()) <= int(cells.max()) < len(centres)):
            raise ValueError("the inverted file's arrays do not fit the codes")
        return cls(codes, owners, centres, cells, int(arrays["built_at"][0]))


def _flat() -> Any:
    import faiss

    return faiss.IndexBinaryFlat(DESCRIPTOR_BYTES * 8)


def _sample_centres(codes: np.ndarray) -> np.ndarray:
    """Cell centres: 4 x sqrt(rows) descriptors sampled (seeded) from the index."""
    nlist = int(min(65_536, max(64, 4 * np.sqrt(len(codes)))))
    return np.ascontiguousarray(
        codes[np.random.default_rng(0).choice(len(codes), nlist, replace=False)])


def _ptr(array: np.ndarray) -> Any:
    import faiss

    return faiss.swig_ptr(array)


def _inverted_file(centres: np.ndarray) -> Any:
    """An IndexBinaryIVF with these cell centres (no training pass)."""
    import faiss

    quantizer = faiss.IndexBinaryFlat(DESCRIPTOR_BYTES * 8)
    quantizer.add(centres)
    index = faiss.IndexBinaryIVF(quantizer, DESCRIPTOR_BYTES * 8, len(centres))
    index.is_trained = True
    index.nprobe = NPROBE
    index.own_fields = True
    # the IVF owns and frees it (SWIG's handle, which faiss's stubs do not declare)
    quantizer.this.disown()  # type: ignore[attr-defined]
    return index


def _search(index: Any, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    with faiss_threads(index.ntotal >= PARALLEL_ROWS):
        return index.search(codes, k)


#: Stored descriptors from which a scan is worth spreading over every core.
PARALLEL_ROWS = 4_000_000

FACTORY = "ORB-votes+BinaryFlat"


def _params() -> dict[str, int]:
    """The settings an index's rows depend on: a change means a rebuild."""
    return {"features_version": VERSION, "per_image": PER_IMAGE}


def save(index: DescriptorIndex, path: Path, *, collection_id: str, deletions: int,
         images: int) -> Manifest:
    """Write the index folder with its manifest (:mod:`imgmatch.index_files`);
    ``images``: how many images it holds, as the catalog counts them."""
    return save_folder(path, index.arrays(), Manifest(
        collection_id=collection_id, signal=NAME, bits=DESCRIPTOR_BYTES * 8,
        factory=FACTORY, count=images, rows=len(index.owners), max_image_id=index.max_id,
        deletions=deletions, params=_params()))


def load(path: Path, *, collection_id: str) -> tuple[DescriptorIndex, Manifest]:
    """Load an index this collection wrote with today's settings; IndexFileError otherwise."""
    manifest, arrays = load_folder(path, collection_id=collection_id, signal=NAME,
                                   bits=DESCRIPTOR_BYTES * 8, factory=FACTORY,
                                   arrays=DescriptorIndex.ARRAYS, params=_params())
    try:
        index = DescriptorIndex.from_arrays(arrays)
    except (KeyError, ValueError) as exc:
        raise IndexFileError(f"{path} is not a complete index: {exc}") from None
    if len(index.owners) != manifest.rows:
        raise IndexFileError(f"{path} does not hold the rows its manifest says")
    return index, manifest
