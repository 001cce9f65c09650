"""Index folders on disk: plain .npy arrays and one manifest type for every index.

Every index (a signal's hash tables, the local-descriptor votes) is a cache of
the catalog, saved as a folder of .npy arrays (loaded without pickle) and a
JSON :class:`Manifest` saying what built it: the collection, the signal and
code size, the structure and its settings, how many images and codes it
holds, the largest image id and the catalog's deletion counter, and the
SHA-256 of the arrays. Loading checks all of that and refuses anything this
collection did not write (:class:`~imgmatch.errors.IndexFileError`). A new
folder is written beside the old one, fsynced and moved into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import IndexFileError

#: Version 2: one manifest for every index (version 1 manifests are rebuilt).
MANIFEST_VERSION = 2
#: A saved file is read back for its digest this many bytes at a time.
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Manifest:
    """What built an index folder; stored beside the arrays as manifest.json."""

    collection_id: str
    #: the signal indexed: a hash signal's name, or ``orb`` (local descriptors)
    signal: str
    #: bits per code
    bits: int
    #: the structure (``MIH+BinaryFlat``, ``ORB-votes+BinaryFlat``)
    factory: str
    #: images indexed: what the catalog's count of the signal, up to
    #: ``max_image_id``, must equal for the index to be current
    count: int
    #: codes stored (a hash index: one per image; local descriptors: several)
    rows: int
    max_image_id: int
    #: the catalog's deletion counter when the index was saved
    deletions: int
    #: the .npy files, in the order the digest covers them
    arrays: tuple[str, ...] = ()
    #: SHA-256 over the arrays' names and files
    sha256: str = ""
    #: settings the structure was built with, which a loader must share
    params: dict[str, int] = field(default_factory=dict)
    manifest_version: int = MANIFEST_VERSION
    #: arrays memory-mapped when loaded, outside the digest (see :func:`load_folder`)
    lazy: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "arrays", tuple(self.arrays))  # a JSON list when read
        object.__setattr__(self, "lazy", tuple(self.lazy))


def save_folder(path: Path, arrays: Mapping[str, np.ndarray | Sequence[np.ndarray]],
                manifest: Manifest, lazy: tuple[str, ...] = ()) -> Manifest:
    """Save arrays as .npy files with ``manifest`` (its digest and array names
    filled in) in a new folder, fsynced and moved into place; returns it.
    ``lazy``: arrays left out of the digest, to be memory-mapped when loaded.
    An array may be given as a list of parts (same dtype and row shape),
    written one after another as one array: a large array kept in pieces,
    some memory-mapped, is saved without gathering it in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # the owner's only
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent))
    try:
        digest = hashlib.sha256()
        for name, array in arrays.items():
            if isinstance(array, np.ndarray):
                np.save(tmp / f"{name}.npy", array, allow_pickle=False)
            else:
                _save_parts(tmp / f"{name}.npy", array)
            if name in lazy:
                continue
            digest.update(name.encode())
            with open(tmp / f"{name}.npy", "rb") as fh:  # in pieces: no second copy
                while chunk := fh.read(HASH_CHUNK):
                    digest.update(chunk)
        manifest = replace(manifest, arrays=tuple(arrays), sha256=digest.hexdigest(),
                           lazy=tuple(lazy))
        manifest_path(tmp).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True))
        for f in tmp.iterdir():
            _fsync(f)
        with _saving(path):
            _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _save_parts(file: Path, parts: Sequence[np.ndarray]) -> None:
    """One .npy file holding these arrays stacked, written a chunk at a time."""
    if not parts:
        raise ValueError("an array saved in parts needs at least one part")
    dtype, tail = parts[0].dtype, parts[0].shape[1:]
    if any(p.dtype != dtype or p.shape[1:] != tail for p in parts):
        raise ValueError("the parts of an array differ in dtype or row shape")
    shape = (sum(len(p) for p in parts), *tail)
    rows = max(1, HASH_CHUNK // max(1, dtype.itemsize * int(np.prod(tail, dtype=np.int64))))
    with open(file, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                 "shape": shape})
        for part in parts:
            for at in range(0, len(part), rows):
                fh.write(np.ascontiguousarray(part[at:at + rows]).tobytes())


def load_folder(path: Path, *, collection_id: str, signal: str, bits: int, factory: str,
                arrays: tuple[str, ...], params: dict[str, int] | None = None,
                lazy: tuple[str, ...] = ()) -> tuple[Manifest, dict[str, np.ndarray]]:
    """The manifest and arrays of a folder this collection wrote with these
    settings, the arrays checked against the manifest's digest;
    IndexFileError for anything else.

    ``lazy`` arrays are memory-mapped read-only instead: their header and
    size are checked, not their bytes, so that opening an index does not
    read gigabytes it may never touch. Only arrays whose damage cannot
    change a result belong there (the descriptor index's full codes: they
    only place rows in its inverted file again)."""
    path = Path(path)
    manifest = read_manifest(path)
    if manifest.collection_id != collection_id:
        raise IndexFileError(f"{path} was written by another collection")
    built = (manifest.signal, manifest.bits, manifest.factory)
    if built != (signal, bits, factory) or manifest.params != (params or {}) \
            or manifest.arrays != arrays or manifest.lazy != lazy:
        raise IndexFileError(f"{path} holds {manifest.signal}/{manifest.bits} bits "
                             f"({manifest.factory}, {manifest.params}), not "
                             f"{signal}/{bits} ({factory}, {params or {}})")
    loaded = read_arrays(path, tuple(a for a in arrays if a not in lazy), manifest.sha256)
    for name in lazy:
        try:
            loaded[name] = map_npy(path / f"{name}.npy")
        except (OSError, ValueError) as exc:
            raise IndexFileError(f"{path} cannot be read: {exc}") from None
    return manifest, {name: loaded[name] for name in arrays}


def read_manifest(path: Path) -> Manifest:
    """The manifest of an index folder; IndexFileError if missing or unreadable."""
    try:
        raw = json.loads(manifest_path(path).read_text())
    except FileNotFoundError:
        raise IndexFileError(f"no index manifest in {path}") from None
    except (ValueError, NotADirectoryError) as exc:
        raise IndexFileError(f"unreadable index manifest for {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise IndexFileError(f"unreadable index manifest for {path}")
    try:
        manifest = Manifest(**raw)
    except TypeError as exc:
        raise IndexFileError(f"unreadable index manifest for {path}: {exc}") from None
    if manifest.manifest_version != MANIFEST_VERSION:
        raise IndexFileError(f"{path} has manifest version {manifest.manifest_version}, "
                             f"not {MANIFEST_VERSION}")
    return manifest


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


def _read_npy(path: Path, digest: Any) -> np.ndarray:
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
        view = array.reshape(-1).view(np.uint8).data
        if fh.readinto(view) != array.nbytes or fh.read(1):
            raise ValueError(f"{path.name} does not hold the array its header describes")
        digest.update(view)
    return array


def map_npy(path: Path) -> np.ndarray:
    """One .npy file of plain numbers in C order, memory-mapped read-only."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.dtype.hasobject or not array.flags.c_contiguous:
        raise ValueError("index arrays hold plain numbers in C order")
    return array


def manifest_path(path: Path) -> Path:
    """Where the manifest of the index folder ``path`` is."""
    return Path(path) / "manifest.json"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _saving(path: Path) -> Iterator[None]:
    """Lock the folder that holds the index while swapping it: two processes
    saving one index (the service and a CLI command) take turns instead of
    renaming each other's folders away. Where ``fcntl`` is missing the swap
    goes unguarded."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))  # the folder itself
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _replace_dir(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target``: the old one is moved aside first, then removed.

    A crash in between leaves no index at ``target`` (it is then rebuilt from
    the catalog), never a mixture of two.
    """
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=target.name + ".old-", dir=target.parent))
        os.replace(target, old)  # over the empty folder just made: a name no one else has
    os.replace(new, target)
    _fsync(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
