"""A signal's binary index: ids and packed codes in, ids and distances out.

An index is a cache of one signal's values in the catalog: multi-index hash
tables for exact range search, and FAISS's flat binary index for k-nearest
scans. It is saved as a folder of plain .npy arrays with a manifest that
says what built it (:mod:`imgmatch.index_files`, shared with the descriptor
index); loading refuses anything this collection did not write.

Indexes know integer ids only; SQLite holds everything else. Thresholds here
are inclusive ("distance <= t"); FAISS, whose range search excludes its
radius, is not used for ranges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import IndexFileError
from .index_files import Manifest, load_folder, save_folder
from .mih import MultiIndexHash

FACTORY = "MIH+BinaryFlat"


class BinaryIndex:
    """Exact Hamming search over fixed-size binary codes with int64 ids.

    Range search (the hot path: queries, links, clustering) runs on
    multi-index hash tables (:mod:`imgmatch.mih`), exact and far below the
    cost of a scan; k-nearest search (full rankings for evaluation) scans
    with FAISS's binary flat index, built on first use.
    """

    def __init__(self, bits: int, mih: MultiIndexHash | None = None) -> None:
        if bits % 64:
            raise ValueError("binary codes must be a whole number of 64-bit words")
        self.bits = bits
        self.mih = mih if mih is not None else MultiIndexHash(bits)
        self.max_id = int(max(self.mih.ids.max(initial=0), self.mih.pending_ids.max(initial=0)))
        self._flat: Any = None  # a FAISS flat index for k-nearest scans, built on first use

    def __len__(self) -> int:
        return len(self.mih)

    def add(self, ids: np.ndarray, codes: np.ndarray, *, merge: bool = True) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids):
            self.mih.add(ids, codes, merge=merge)
            self.max_id = max(self.max_id, int(ids.max()))
            self._flat = None

    def remove(self, ids: np.ndarray) -> int:
        self._flat = None
        return self.mih.remove(np.ascontiguousarray(ids, dtype=np.int64))

    def compact(self) -> None:
        """Fold pending codes into the tables (done automatically as they grow)."""
        self.mih.rebuild()

    def search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest per query: (distances, ids), ids -1 where fewer exist."""
        codes = _as_codes(codes, self.bits)
        if not len(self):
            n = len(codes)
            return np.full((n, 1), self.bits + 1, np.int32), np.full((n, 1), -1, np.int64)
        if self._flat is None:
            import faiss  # only full rankings need it: keep start-up lean

            flat = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(self.bits))
            live_codes, live_ids = self.mih.live()
            flat.add_with_ids(live_codes, live_ids)
            self._flat = flat
        return self._flat.search(codes, max(1, min(k, len(self))))

    def range_search(self, codes: np.ndarray, threshold: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """All ids within ``threshold`` bits (inclusive) of each query: [(ids, dists)]."""
        return self.mih.range_search(_as_codes(codes, self.bits), threshold)

    def range_pairs(self, codes: np.ndarray, threshold: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query index, id, distance) of every id within ``threshold`` bits of
        a query, in query order: one set of arrays for a whole batch."""
        return self.mih.range_pairs(_as_codes(codes, self.bits), threshold)

    def memory_bytes(self) -> int:
        return self.mih.memory_bytes()

    # ---------------------------------------------------------------- storage
    def save(self, path: Path, *, collection_id: str, signal: str, deletions: int) -> Manifest:
        """Write the tables as .npy files in a folder, replaced atomically."""
        return save_folder(path, self.mih.arrays(), Manifest(
            collection_id=collection_id, signal=signal, bits=self.bits, factory=FACTORY,
            count=len(self), rows=len(self), max_image_id=self.max_id, deletions=deletions))

    @classmethod
    def load(cls, path: Path, *, collection_id: str, signal: str,
             bits: int) -> tuple[BinaryIndex, Manifest]:
        """Load an index this collection wrote; IndexFileError otherwise."""
        manifest, arrays = load_folder(path, collection_id=collection_id, signal=signal,
                                       bits=bits, factory=FACTORY,
                                       arrays=MultiIndexHash.ARRAYS)
        try:
            mih = MultiIndexHash.from_arrays(bits, arrays)
        except (KeyError, ValueError) as exc:
            raise IndexFileError(f"{path} is not a complete index: {exc}") from None
        if not len(mih) == manifest.count == manifest.rows:
            raise IndexFileError(f"{path} holds {len(mih)} codes, its manifest says "
                                 f"{manifest.count}")
        out = cls(bits, mih)
        out.max_id = manifest.max_image_id
        return out, manifest


def _as_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    return codes.reshape(-1, bits // 8)
