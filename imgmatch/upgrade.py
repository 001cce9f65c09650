"""Adding signals to a collection in place: each image read again from where it was seen.

A collection made with fewer signals (``--signals phash,dhash``, the hash
tier before local features were asked for) or by an older version of a
signal cannot answer what the missing signal would: a PDQ query finds
nothing, the robust tier cannot find images without local features. The
catalog keeps no pictures, but it keeps where each was seen: a file path, a
WARC record (``archive.warc.gz#offset``) or a file of a Scrapy store. Each
image lacking a signal is read from the first of its sources that still
holds the same bytes (the SHA-256 must agree), analysed again (by
supervised workers, as an ingest does), and its missing values written with
its links found anew, in batches of one transaction each: a kill leaves the
catalog consistent and a second run goes on where the first stopped. Images
no source can give again are listed with the reason.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import features
from . import signals as registry
from .analysis import Analysis, read_regular_file, tiling_grey
from .catalog import Catalog
from .errors import InputError
from .records import ImageRow
from .workers import DEFAULT_MAX_MEMORY, DEFAULT_TIMEOUT, InlinePool, Job, Pool, ProcessPool

#: Images written per transaction.
BATCH = 200
#: A WARC record's source: the archive, then ``#`` and the record's offset.
_WARC_SOURCE = re.compile(r"^(?P<path>.+\.(?:warc|arc)(?:\.gz)?)#(?P<offset>\d+)$", re.I)
#: A frame of an animated file (``--all-frames``): ``file#frame=N``.
_FRAME_SOURCE = re.compile(r"#frame=\d+$")


@dataclass
class UpgradeSummary:
    """What an upgrade did: images given the missing signals, and the ones
    no recorded source could give again, with the reason."""

    signals: tuple[str, ...]
    images_missing: int = 0
    images_upgraded: int = 0
    links_added: int = 0
    #: (sha256 or hash key, reason) of each image left as it was
    unreachable: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        reasons: dict[str, int] = {}
        for _, reason in self.unreachable:
            key = reason.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        return {"signals": list(self.signals), "images_missing": self.images_missing,
                "images_upgraded": self.images_upgraded, "links_added": self.links_added,
                "unreachable": len(self.unreachable), "unreachable_reasons": reasons,
                "unreachable_images": [{"image": k, "reason": r}
                                       for k, r in self.unreachable[:1000]],
                "seconds": round(self.seconds, 3)}


#: Image ids looked at per query for missing signals (memory stays flat).
WINDOW = 10_000


def missing(catalog: Catalog, signals: Sequence[str]) -> Iterator[tuple[int, tuple[str, ...]]]:
    """Each image id with the signals it lacks (or holds from another
    version), in id order, a window of ids at a time. Images known only by a
    partner's hash are left out: they have no bytes."""
    last = int(catalog.conn.execute("SELECT coalesce(max(id), 0) FROM images").fetchone()[0])
    for low in range(0, last, WINDOW):
        high = low + WINDOW
        out: dict[int, list[str]] = {}
        for name in signals:
            sig = registry.signal(name)
            if sig.kind == "local":  # the catalog keeps local features in a table of their own
                rows = catalog.conn.execute(
                    "SELECT i.id FROM images i LEFT JOIN features f ON f.image_id = i.id "
                    "WHERE i.id > ? AND i.id <= ? AND i.sha256 IS NOT NULL "
                    "AND (f.image_id IS NULL OR f.version != ?)", (low, high, sig.version))
            else:
                rows = catalog.conn.execute(
                    "SELECT i.id FROM images i LEFT JOIN signals s "
                    "ON s.image_id = i.id AND s.signal = ? "
                    "WHERE i.id > ? AND i.id <= ? AND i.sha256 IS NOT NULL "
                    "AND (s.image_id IS NULL OR s.version != ?)",
                    (name, low, high, sig.version))
            for (image_id,) in rows:
                out.setdefault(image_id, []).append(name)
        for image_id in sorted(out):
            yield image_id, tuple(out[image_id])


def read_source(source: str) -> bytes:
    """The bytes a sighting's source names: a WARC record or a file.

    Raises :class:`~imgmatch.errors.InputError` saying why they cannot be read.
    """
    if _FRAME_SOURCE.search(source):
        raise InputError("a frame of an animated file: ingest the file again with "
                         "--all-frames", source=source, reason="animated-frame")
    warc = _WARC_SOURCE.match(source)
    if warc:
        return _read_warc_record(Path(warc["path"]), int(warc["offset"]), source)
    try:
        # a regular file only: a source recorded as a FIFO or a device (an upload
        # may name any source) would hold the reader, or never end
        return read_regular_file(source)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", source=source,
                         reason="missing-file") from None


def _read_warc_record(path: Path, offset: int, source: str) -> bytes:
    from warcio.archiveiterator import ArchiveIterator

    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            record = next(iter(ArchiveIterator(fh, arc2warc=True)), None)
            if record is None or record.rec_type not in ("response", "resource"):
                raise InputError(f"no image record at offset {offset}", source=source,
                                 reason="missing-record")
            return record.content_stream().read()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", source=source,
                         reason="missing-file") from None
    except InputError:
        raise
    except Exception as exc:  # warcio's parse errors: the archive changed or broke
        raise InputError(f"unreadable record at offset {offset}: {exc}", source=source,
                         reason="missing-record") from None


def reread(catalog: Catalog, image_id: int) -> tuple[str, bytes] | str:
    """(source, bytes) from the first of the image's sources that still holds
    its bytes, or why none does."""
    row = catalog.conn.execute("SELECT sha256, size_bytes FROM images WHERE id = ?",
                               (image_id,)).fetchone()
    if row is None or row[0] is None:
        return "hash-only: imported from a hash list, there are no bytes to read"
    sources = list(dict.fromkeys(s for (s,) in catalog.conn.execute(
        "SELECT source FROM sightings WHERE image_id = ? AND source IS NOT NULL "
        "ORDER BY id", (image_id,))))
    why = "no-source: no sighting names a file or a record"
    for source in sources:
        if row[1] is not None and not _WARC_SOURCE.match(source) and _size(source) not in (
                None, row[1]):  # cannot be those bytes: not read (it may be huge)
            why = f"source-changed: {source} holds other bytes now"
            continue
        try:
            data = read_source(source)
        except InputError as exc:
            why = f"{exc.reason}: {exc}"
            continue
        if hashlib.sha256(data).hexdigest() != row[0]:
            why = f"source-changed: {source} holds other bytes now"
            continue
        return source, data
    return why


def tiling_grey_again(catalog: Catalog, image_id: int,
                      side: int = features.SIDE) -> np.ndarray | None:
    """An image's grey pixels read again from its sources, for the linker to
    search its tiles (:func:`imgmatch.analysis.tiling_grey`), or None."""
    found = reread(catalog, image_id)
    return None if isinstance(found, str) else tiling_grey(found[1], found[0], side)


def _size(source: str) -> int | None:
    """A file's size, None where it cannot be known without reading."""
    try:
        return Path(source).stat().st_size
    except (OSError, ValueError):
        return None


def batches(catalog: Catalog, signals: Sequence[str], summary: UpgradeSummary, *,
            workers: int = 0, timeout: float = DEFAULT_TIMEOUT,
            max_memory: int | None = DEFAULT_MAX_MEMORY
            ) -> Iterator[list[tuple[int, Analysis, ImageRow]]]:
    """The images lacking any of ``signals``, in batches: (image id, analysis
    for every one of ``signals``, the row of the missing values to write). The
    analysis covers all of them because new links weigh every signal.

    Bytes are read here (their SHA-256 checked) and analysed by ``workers``
    supervised processes, as an ingest does: a file that crashes or hangs a
    decoder costs its worker, not the upgrade (0: in this process). Images
    that cannot be read again or analysed are added to ``summary.unreachable``.
    """
    lacking_of: dict[int, tuple[str, ...]] = {}  # of the images in the workers' hands
    names = tuple(signals)
    pool: Pool = ProcessPool(names, workers, timeout, max_memory=max_memory) if workers >= 1 \
        else InlinePool(names)
    batch: list[tuple[int, Analysis, ImageRow]] = []
    returned = 0

    def take(timeout: float) -> Iterator[list[tuple[int, Analysis, ImageRow]]]:
        """Batches completed by the results the workers have ready."""
        nonlocal batch, returned
        for image_id, analysis in pool.results(timeout):
            returned += 1
            if analysis.image is None:
                lacking_of.pop(image_id, None)
                unreachable(image_id, f"{analysis.reason}: {analysis.detail}")
                continue
            lacking = lacking_of.pop(image_id)
            row = replace(analysis.image,
                          signals=tuple(s for s in analysis.image.signals if s.signal in lacking),
                          features=(analysis.image.features
                                    if registry.split(lacking)[1] else None))
            batch.append((image_id, analysis, row))
            if len(batch) >= BATCH:
                yield batch
                batch = []

    def unreachable(image_id: int, why: str) -> None:
        key = catalog.conn.execute("SELECT coalesce(sha256, hash_key) FROM images "
                                   "WHERE id = ?", (image_id,)).fetchone()[0]
        summary.unreachable.append((key, why))

    submitted = 0
    try:
        for image_id, lacking in missing(catalog, signals):
            summary.images_missing += 1
            found = reread(catalog, image_id)
            if isinstance(found, str):
                unreachable(image_id, found)
                continue
            lacking_of[image_id] = lacking
            job = Job(image_id, found[0], data=found[1])
            while not pool.can_take(job):  # the workers' queues are full: let them run
                time.sleep(0.005)
                yield from take(0.0)
            pool.submit(job)
            submitted += 1
            yield from take(0.0)
        while returned < submitted:
            yield from take(0.1)
    finally:
        pool.close()
    if batch:
        yield batch
