"""Binary indexes on disk: ids and packed codes in, ids and distances out.

An index is a cache of one signal's values in the catalog: multi-index hash
tables for exact range search, and FAISS's flat binary index for k-nearest
scans. It is saved as a folder of plain .npy arrays (loaded without pickle)
and a JSON manifest that records what built it (collection id, signal, code
size, structure, number of codes, largest image id, the catalog's deletion
counter) and the SHA-256 of the arrays. Loading checks all of that and
refuses anything this collection did not write. A new folder is written
beside the old one, fsynced and moved into place.

Indexes know integer ids only; SQLite holds everything else. Thresholds here
are inclusive ("distance <= t"); FAISS, whose range search excludes its
radius, is not used for ranges.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import IndexFileError
from .mih import MultiIndexHash

FACTORY = "MIH+BinaryFlat"
MANIFEST_VERSION = 1
#: A saved file is read back for its digest this many bytes at a time.
HASH_CHUNK = 1 << 20


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
    #: kept so manifests of either age load; the tables are numpy arrays of
    #: imgmatch's own, so nothing of FAISS's is recorded (it cost a package
    #: metadata lookup on every save)
    faiss_version: str
    manifest_version: int = MANIFEST_VERSION


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
        self._flat = None  # a FAISS flat index for k-nearest scans, built on first use

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
        def manifest_for(digest: str) -> dict:
            return asdict(Manifest(
                collection_id=collection_id, signal=signal, bits=self.bits, factory=FACTORY,
                count=len(self), max_image_id=self.max_id, deletions=deletions,
                sha256=digest, faiss_version=""))
        return Manifest(**write_folder(path, self.mih.arrays(), manifest_for))

    @classmethod
    def load(cls, path: Path, *, collection_id: str, signal: str,
             bits: int) -> tuple[BinaryIndex, Manifest]:
        """Load an index this collection wrote; IndexFileError otherwise."""
        path = Path(path)
        raw = read_manifest(path)
        try:
            manifest = Manifest(**raw)
        except TypeError as exc:
            raise IndexFileError(f"unreadable index manifest for {path}: {exc}") from None
        if manifest.collection_id != collection_id:
            raise IndexFileError(f"{path} was written by another collection")
        if (manifest.signal, manifest.bits, manifest.factory) != (signal, bits, FACTORY):
            raise IndexFileError(f"{path} holds {manifest.signal}/{manifest.bits} bits "
                                 f"({manifest.factory}), not {signal}/{bits}")
        arrays = read_arrays(path, MultiIndexHash.ARRAYS, manifest.sha256)
        try:
            mih = MultiIndexHash.from_arrays(bits, arrays)
        except (KeyError, ValueError) as exc:
            raise IndexFileError(f"{path} is not a complete index: {exc}") from None
        if len(mih) != manifest.count:
            raise IndexFileError(f"{path} holds {len(mih)} codes, its manifest says "
                                 f"{manifest.count}")
        out = cls(bits, mih)
        out.max_id = manifest.max_image_id
        return out, manifest


def write_folder(path: Path, arrays: dict[str, np.ndarray], manifest_for) -> dict:
    """Save arrays as .npy files and a manifest (``manifest_for(sha256)``) in a
    new folder, fsynced and moved into place; returns the manifest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent))
    try:
        digest = hashlib.sha256()
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array, allow_pickle=False)
            digest.update(name.encode())
            with open(tmp / f"{name}.npy", "rb") as fh:  # in pieces: no second copy
                while chunk := fh.read(HASH_CHUNK):
                    digest.update(chunk)
        manifest = manifest_for(digest.hexdigest())
        manifest_path(tmp).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        for f in tmp.iterdir():
            _fsync(f)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def read_manifest(path: Path) -> dict:
    """The manifest of an index folder; IndexFileError if missing or unreadable."""
    try:
        raw = json.loads(manifest_path(path).read_text())
    except FileNotFoundError:
        raise IndexFileError(f"no index manifest in {path}") from None
    except (ValueError, NotADirectoryError) as exc:
        raise IndexFileError(f"unreadable index manifest for {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise IndexFileError(f"unreadable index manifest for {path}")
    return raw


def read_arrays(path: Path, names: tuple[str, ...], sha256: str) -> dict[str, np.ndarray]:
    """The folder's arrays, checked against the manifest's digest (no pickle).

    Each array is read straight into memory numpy allocates (so large ones
    get transparent huge pages, which random probes need) and hashed there:
    no second copy of a gigabyte at ten million codes.
    """
    digest = hashlib.sha256()
    arrays = {}
    try:
        for name in names:
            digest.update(name.encode())
            arrays[name] = _read_npy(path / f"{name}.npy", digest)
    except (OSError, ValueError) as exc:
        raise IndexFileError(f"{path} cannot be read: {exc}") from None
    if digest.hexdigest() != sha256:
        raise IndexFileError(f"{path} does not match its manifest (changed or damaged)")
    return arrays


def _read_npy(path: Path, digest) -> np.ndarray:
    """One .npy file of plain numbers in C order, its bytes fed to ``digest``."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version not in readers:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran, dtype = readers[version](fh)
        if dtype.hasobject or fortran:
            raise ValueError("index arrays hold plain numbers in C order")
        header = fh.tell()
        fh.seek(0)
        digest.update(fh.read(header))
        array = np.empty(shape, dtype)
        view = memoryview(array.reshape(-1).view(np.uint8))
        if fh.readinto(view) != array.nbytes or fh.read(1):
            raise ValueError(f"{path.name} does not hold the array its header describes")
        digest.update(view)
    return array


def manifest_path(path: Path) -> Path:
    """Where the manifest of the index folder ``path`` is."""
    return Path(path) / "manifest.json"


def _as_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    return codes.reshape(-1, bits // 8)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_dir(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target``: the old one is moved aside first, then removed.

    A crash in between leaves no index at ``target`` (it is then rebuilt from
    the catalog), never a mixture of two.
    """
    old = None
    if target.exists():
        old = target.with_name(target.name + f".old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    _fsync(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
