"""FAISS binary indexes on disk: ids and packed codes in, ids and distances out.

An index is a cache of one signal's values in the catalog. It is saved with a
JSON manifest beside it that records what built it (collection id, signal,
code size, FAISS factory and version, number of codes, largest image id, the
catalog's deletion counter) and the SHA-256 of the index file. Loading checks
all of that and refuses a file this collection did not write, since a FAISS
file is a serialised C++ object and must not come from anyone else. Files are
written to a temporary name, fsynced and renamed, so a crash leaves the old
file or the new one, never half of one.

FAISS knows integer ids only; SQLite holds everything else. FAISS range
search excludes its radius, so "distance <= t" is a radius of t + 1; this
module takes inclusive thresholds and does the conversion in one place.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from .errors import IndexFileError

FACTORY = "BinaryFlat+IDMap2"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    collection_id: str
    signal: str
    bits: int
    factory: str
    count: int
    max_image_id: int
    deletions: int
    sha256: str
    faiss_version: str
    manifest_version: int = MANIFEST_VERSION


class BinaryIndex:
    """Exact Hamming search over fixed-size binary codes with int64 ids."""

    def __init__(self, bits: int, index: faiss.IndexBinary | None = None) -> None:
        if bits % 8:
            raise ValueError("binary codes must be a whole number of bytes")
        self.bits = bits
        self.index = index if index is not None else faiss.IndexBinaryIDMap2(
            faiss.IndexBinaryFlat(bits))
        self.max_id = 0

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(len(ids), self.bits // 8)
        if len(ids):
            self.index.add_with_ids(codes, ids)
            self.max_id = max(self.max_id, int(ids.max()))

    def remove(self, ids: np.ndarray) -> int:
        return int(self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))

    def search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest per query: (distances, ids), ids -1 where fewer exist."""
        codes = _as_codes(codes, self.bits)
        if not len(self):
            n = len(codes)
            return np.full((n, 1), self.bits + 1, np.int32), np.full((n, 1), -1, np.int64)
        return self.index.search(codes, max(1, min(k, len(self))))

    def range_search(self, codes: np.ndarray, threshold: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """All ids within ``threshold`` bits (inclusive) of each query: [(ids, dists)]."""
        codes = _as_codes(codes, self.bits)
        if not len(self):
            return [(np.empty(0, np.int64), np.empty(0, np.int32)) for _ in codes]
        lims, dist, ids = self.index.range_search(codes, threshold + 1)
        return [(ids[lims[i]:lims[i + 1]], dist[lims[i]:lims[i + 1]]) for i in range(len(codes))]

    # ---------------------------------------------------------------- storage
    def save(self, path: Path, *, collection_id: str, signal: str, deletions: int) -> Manifest:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = faiss.serialize_index_binary(self.index).tobytes()
        manifest = Manifest(
            collection_id=collection_id, signal=signal, bits=self.bits, factory=FACTORY,
            count=len(self), max_image_id=self.max_id, deletions=deletions,
            sha256=hashlib.sha256(blob).hexdigest(), faiss_version=faiss.__version__)
        _atomic_write(path, blob)
        _atomic_write(manifest_path(path),
                      json.dumps(asdict(manifest), indent=2, sort_keys=True).encode())
        return manifest

    @classmethod
    def load(cls, path: Path, *, collection_id: str, signal: str,
             bits: int) -> tuple[BinaryIndex, Manifest]:
        """Load an index this collection wrote; IndexFileError otherwise."""
        path = Path(path)
        try:
            raw = json.loads(manifest_path(path).read_text())
            manifest = Manifest(**raw)
        except FileNotFoundError:
            raise IndexFileError(f"no index manifest beside {path}") from None
        except (ValueError, TypeError) as exc:
            raise IndexFileError(f"unreadable index manifest for {path}: {exc}") from None
        if manifest.collection_id != collection_id:
            raise IndexFileError(f"{path} was written by another collection")
        if (manifest.signal, manifest.bits, manifest.factory) != (signal, bits, FACTORY):
            raise IndexFileError(f"{path} holds {manifest.signal}/{manifest.bits} bits "
                                 f"({manifest.factory}), not {signal}/{bits}")
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise IndexFileError(f"index file {path} is missing") from None
        if hashlib.sha256(blob).hexdigest() != manifest.sha256:
            raise IndexFileError(f"{path} does not match its manifest (changed or damaged)")
        try:
            index = faiss.deserialize_index_binary(np.frombuffer(blob, dtype=np.uint8))
        except RuntimeError as exc:
            raise IndexFileError(f"{path} cannot be read: {exc}") from None
        if int(index.ntotal) != manifest.count:
            raise IndexFileError(f"{path} holds {index.ntotal} codes, its manifest says "
                                 f"{manifest.count}")
        out = cls(bits, index)
        out.max_id = manifest.max_image_id
        return out, manifest


def manifest_path(path: Path) -> Path:
    return Path(str(path) + ".json")


def _as_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    return codes.reshape(-1, bits // 8)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
