"""The ingest pipeline: a stream of items -> workers -> one writer, in batches.

Worker processes (:mod:`imgmatch.workers`) read each file, take its SHA-256
and, unless the catalog already holds those bytes (then only the new
sighting is recorded), decode once and compute every signal. Results are
released in input order and written as they come, a batch per SQLite
transaction (images, their sightings, their near-duplicate links and the
batch's failures together), so a kill at any moment leaves the catalog
consistent and the next run picks up exactly what is missing. Nothing holds
the whole file list: memory stays flat however large the crawl.

With worker processes, a batch is written (and its links found) by a
writer thread while the main thread goes on feeding the workers and taking
their results: in the robust tier, finding links costs more than analysing
an image, and with the two in turn the workers waited for every batch. One
batch is written at a time, in order; the main thread asks a read-only
connection of its own whether bytes are catalogued, and remembers the
batch being written (not yet visible there).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np

from . import signals as signal_registry
from .analysis import Analysis, Options, analyse, tiling_grey
from .catalog import BatchResult, Catalog, KnownImages
from .records import HashValue, ImageRow, LinkRow, Sighting
from .sources import Item
from .watchlists import Watchlists
from .workers import (DEFAULT_MAX_MEMORY, DEFAULT_TIMEOUT, InlinePool, Job, Pool, ProcessPool,
                      single_threaded)

if TYPE_CHECKING:
    from distributed import Client

#: Images per write transaction, and the longest a result waits to be written.
DEFAULT_BATCH = 256
FLUSH_SECONDS = 2.0
#: How long the writer sleeps when every worker's queue is full.
FULL_PAUSE = 0.005
#: With the writer in a thread of its own, a batch of at least this many new
#: images is handed over as soon as the writer is idle, not only when full
#: or FLUSH_SECONDS old: the writer (which links) never waits for the next
#: batch to fill while the workers run, and the last batch left to write
#: once the workers are done is small.
HANDOFF_IMAGES = 8

__all__ = ["Analysis", "analyse", "ingest", "IngestSummary", "BatchLinker", "DEFAULT_BATCH"]


class BatchLinker(Protocol):
    """Links new images to near-duplicates as they are written (see match.py)."""

    def links(self, new_images: list[tuple[int, str]],
              variants: Mapping[str, Mapping[str, Sequence[HashValue]]],
              local: Mapping[str, tuple] = ...,
              greys: Mapping[str, np.ndarray] = ...,
              pixels: Callable[[str], np.ndarray | None] | None = ...,
              framed: Mapping[str, Sequence[tuple]] | None = ...,
              described: Mapping[str, tuple] | None = ...) -> list[LinkRow]: ...

    def committed(self, new_images: list[tuple[int, str]],
                  variants: Mapping[str, Mapping[str, Sequence[HashValue]]],
                  local: Mapping[str, tuple] = ...) -> None: ...

    def catch_up(self) -> None: ...

    #: catalogued images read again from their sources to verify a new image
    #: within the part of them where it lies (:func:`imgmatch.match.framing`)
    images_reread: int


@dataclass
class IngestSummary:
    """What one ingest did; ``failures`` lists (source, reason, detail)."""

    files_seen: int = 0
    images_added: int = 0
    #: files whose bytes were already catalogued, or seen earlier in this run
    images_known: int = 0
    links_added: int = 0
    sightings_added: int = 0
    sightings_known: int = 0
    #: sightings added from WARC revisit records
    revisits: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    #: records passed over on purpose (not images, HTTP errors), by why
    skipped: dict[str, int] = field(default_factory=dict)
    workers_replaced: int = 0
    #: watchlist alerts raised by this ingest's new sightings
    alerts_added: int = 0
    #: new images whose tiles were searched for links: their whole image
    #: matched a part of another (a collage's photo, a screenshot's), or
    #: they frame pictures (:func:`imgmatch.match.worth_tiling`)
    images_tiled: int = 0
    #: catalogued images read again from their sources, to verify a new image
    #: within the part of them where it lies: a screenshot or a collage
    #: catalogued before the photo it shows (:func:`imgmatch.match.framing`)
    images_reread: int = 0
    seconds: float = 0.0
    #: signals of this ingest that images of the collection lack, with how
    #: many lack each (images catalogued before with fewer signals):
    #: ``imgmatch upgrade`` adds them
    lacking: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def absorb(self, result: BatchResult) -> None:
        self.images_added += result.images_added
        self.images_known += result.images_known  # written meanwhile by another process
        self.links_added += result.links_added
        self.sightings_added += result.sightings_added
        self.sightings_known += result.sightings_known
        self.alerts_added += result.alerts_added

    def to_json(self) -> dict:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["failed"] = len(self.failures)
        out["failures"] = [{"source": s, "reason": r, "detail": d} for s, r, d in self.failures]
        reasons: dict[str, int] = {}
        for _, reason, _ in self.failures:
            reasons[reason] = reasons.get(reason, 0) + 1
        out["failure_reasons"] = reasons
        return out


class _Writer:
    """Writes batches, one at a time and in order: in a thread of its own
    (``overlap``), or at once in the caller's. ``wait`` re-raises a failed
    write. Shared counts and the callbacks go under ``lock``."""

    def __init__(self, write: Callable[[_Batch], None], overlap: bool) -> None:
        self._write = write
        self.overlap = overlap
        self.lock = threading.RLock()
        self.writing: _Batch | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, batch: _Batch) -> None:
        self.wait()
        if not self.overlap:
            self._write(batch)
            return
        self.writing = batch
        self._thread = threading.Thread(target=self._run, args=(batch,),
                                        name="imgmatch-writer", daemon=True)
        self._thread.start()

    def _run(self, batch: _Batch) -> None:
        try:
            # OpenMP's thread count is per thread: without this, the linker's
            # FAISS searches in this new thread run a team of threads that
            # spin on the cores the workers analyse on (one worker on two
            # cores: the parent took 12.4 ms of CPU per image, 7.1 with it and
            # verification's scan held to one thread; scripts/bench linking)
            with single_threaded():
                self._write(batch)
        except BaseException as exc:  # re-raised in the caller's thread by wait()
            self._error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.writing = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    @property
    def idle(self) -> bool:
        """Whether no batch is being written."""
        return self._thread is None or not self._thread.is_alive()

    def in_flight(self, digest: str) -> bool:
        """Whether the batch being written holds these bytes."""
        writing = self.writing
        return writing is not None and digest in writing.digests


class _Batch:
    """What the next transaction will write."""

    def __init__(self) -> None:
        self.images: list[ImageRow] = []
        self.variants: dict[str, dict[str, list[HashValue]]] = {}
        #: local features (the image's and its mirror's) of new images, robust tier
        self.local: dict[str, tuple] = {}
        self.greys: dict[str, np.ndarray] = {}
        #: new images that frame pictures (:attr:`Analysis.framed`), with
        #: the large ones (:attr:`Analysis.framed_boxes`)
        self.framed: dict[str, tuple] = {}
        #: the tiles workers described (:attr:`Analysis.tiles`)
        self.described: dict[str, tuple] = {}
        self.sightings: list[tuple[str, Sighting]] = []
        self.failures: list[tuple[str, str, str]] = []
        self.payload_digests: list[tuple[str, str]] = []
        self.digests: set[str] = set()
        #: (item, sha256 or None, "added" | "known" | "failed", failure detail)
        self.records: list[tuple[Item, str | None, str, str | None]] = []
        self.opened = time.monotonic()
        #: new images whose pixels the linker had again, to search their tiles
        self.tiled = 0

    def pixels(self, digest: str) -> np.ndarray | None:
        """A new image's grey pixels, as its caller decoded them, or decoded
        again from its file or bytes (:func:`imgmatch.analysis.tiling_grey`),
        or None (a frame of an animated file, a file gone or changed since).
        Asked for only by the few images whose tiles the linker searches. The
        bytes decoded once already, within the worker's limits, so they
        decode the same here."""
        grey = self._pixels(digest)
        self.tiled += grey is not None
        return grey

    def _pixels(self, digest: str) -> np.ndarray | None:
        item = next((item for item, d, state, _ in self.records
                     if d == digest and state == "added"), None)
        if item is None or "frame" in item.sighting.extra:
            return None
        if item.pixels is not None:  # decoded by the caller (the service's sandbox)
            return item.pixels()
        data = item.data
        if data is None and item.path is not None:  # read again: may have changed since
            try:
                data = item.path.read_bytes()
            except OSError:
                return None
            if hashlib.sha256(data).hexdigest() != digest:
                return None
        return None if data is None else tiling_grey(data, item.source)

    def __len__(self) -> int:
        return len(self.images) + len(self.sightings) + len(self.failures)


def ingest(catalog: Catalog, items: Iterable[Item], *,
           signal_names: Sequence[str] = signal_registry.DEFAULT_SIGNALS,
           workers: int = 0, batch_size: int = DEFAULT_BATCH, run_id: int | None = None,
           linker: BatchLinker | None = None, watchlists: Watchlists | None = None,
           timeout: float = DEFAULT_TIMEOUT,
           on_progress: Callable[[IngestSummary], None] | None = None,
           on_written: Callable[[list], None] | None = None,
           thumbnails: bool = False, all_frames: bool = False,
           max_memory: int | None = DEFAULT_MAX_MEMORY,
           client: Client | None = None) -> IngestSummary:
    """Analyse and catalogue every item; bad items are recorded, never fatal.

    ``workers`` = 0 analyses in this process (no isolation); N >= 1 uses N
    supervised worker processes with a per-file ``timeout``, each allowed
    ``max_memory`` bytes beyond its size at start (None: no cap). ``client``
    (a ``dask.distributed.Client``): the analysis runs on its cluster instead,
    with the same limits (:mod:`imgmatch.dask_pool`); ``workers`` is unused,
    and this process still releases, links and writes. ``on_written``
    receives, after each committed batch, its records: (item, sha256 or None,
    "added" | "known" | "failed", failure detail). With ``all_frames``, each
    further frame of an animated file new to the catalog is an image of its
    own (see :func:`imgmatch.analysis.frame_digest`), seen in the same place:
    its sighting is the file's, with ``frame`` added to its extra fields.
    """
    names = signal_registry.parse_list(",".join(signal_names))
    for name in names:
        signal_registry.signal(name).prepare()  # set-up fails here, not once per file
    started = time.monotonic()
    summary = IngestSummary()
    options = Options(thumbnails=thumbnails, all_frames=all_frames)
    pool: Pool
    if client is not None:
        from .dask_pool import DaskPool  # dask is imported only when a cluster is asked for

        pool = DaskPool(client, names, timeout, options=options, max_memory=max_memory,
                        catalog_path=catalog.address)
    elif workers >= 1:
        pool = ProcessPool(names, workers, timeout, catalog_path=catalog.address,
                           options=options, max_memory=max_memory)
    else:
        pool = InlinePool(names, is_known=catalog.has_image, options=options)
    limits = single_threaded()  # this process's FAISS and BLAS work is small and per batch
    # overlap writing with analysis when workers analyse; then the main thread
    # reads through a connection of its own (the writer's is the writer's)
    overlap = workers >= 1 or client is not None
    known = KnownImages(catalog.address) if overlap else catalog.has_image
    jobs: dict[int, Item] = {}             # submitted, by sequence number
    finished: dict[int, Analysis] = {}     # results waiting for earlier ones
    next_release = 0
    submitted = 0
    pending_revisits: list[Item] = []      # resolved once everything else is written
    batch = _Batch()

    def write(done: _Batch) -> None:
        result = _write(catalog, done, run_id, linker, watchlists)
        with writer.lock:
            summary.absorb(result)
            summary.images_tiled += done.tiled
            if linker is not None:
                summary.images_reread = linker.images_reread
            summary.failures.extend(done.failures)
            if on_written is not None:
                on_written(done.records)
            if on_progress is not None:
                on_progress(summary)

    writer = _Writer(write, overlap)

    def flush() -> None:
        nonlocal batch
        if len(batch):
            writer.submit(batch)
        batch = _Batch()

    def due() -> bool:
        """Whether the batch should go to the writer now."""
        return (len(batch) >= batch_size or time.monotonic() - batch.opened > FLUSH_SECONDS
                or (overlap and len(batch.images) >= HANDOFF_IMAGES and writer.idle))

    def release(item: Item, analysis: Analysis) -> None:
        with writer.lock:
            summary.files_seen += 1
        add(item, analysis)
        for frame, part in analysis.frames:
            add(replace(item, source=f"{item.source}#frame={frame}", data=None,
                        payload_digest=None,  # revisits name the file, not a frame
                        sighting=replace(item.sighting,
                                         extra={**item.sighting.extra, "frame": frame})),
                part)

    def add(item: Item, analysis: Analysis) -> None:
        digest, image = analysis.sha256, analysis.image
        if image is None and not analysis.known:
            batch.failures.append((item.source, analysis.reason or "error",
                                   analysis.detail or ""))
            batch.records.append((item, digest or None, "failed", analysis.detail))
            return
        if analysis.known or image is None or digest in batch.digests \
                or writer.in_flight(digest) or known(digest):
            with writer.lock:
                summary.images_known += 1
            batch.records.append((item, digest, "known", None))
        else:
            batch.images.append(image)
            batch.variants[digest] = analysis.variants
            if analysis.features is not None:
                batch.local[digest] = analysis.features
                if analysis.grey is not None:
                    batch.greys[digest] = analysis.grey
                if analysis.framed:
                    batch.framed[digest] = analysis.framed_boxes
                if analysis.tiles is not None:
                    batch.described[digest] = analysis.tiles
            batch.digests.add(digest)
            batch.records.append((item, digest, "added", None))
        batch.sightings.append((digest, item.sighting))
        if item.payload_digest:
            batch.payload_digests.append((item.payload_digest, digest))

    def collect(timeout: float) -> None:
        # Results are released in the order the files came, whatever order the
        # workers finish in: image ids, and so which side of a pair is "newer"
        # when links are found, do not depend on timing.
        nonlocal next_release
        for key, analysis in pool.results(timeout):
            finished[key] = analysis
        while next_release in finished:
            release(jobs.pop(next_release), finished.pop(next_release))
            next_release += 1
            if len(batch) >= batch_size:
                flush()

    try:
        for item in items:
            if item.skipped:
                with writer.lock:
                    summary.skip(item.skipped)
                continue
            if item.revisit_of:
                pending_revisits.append(item)
                continue
            if item.error is not None or item.analysis is not None:
                # known already (a failure found while reading the input, or an
                # analysis the caller made): released in turn like any result,
                # so records keep the input's order
                jobs[submitted] = item
                finished[submitted] = item.analysis if item.error is None else Analysis(
                    "", reason=item.error.reason, detail=item.error.detail)
                submitted += 1
            else:
                job = Job(submitted, item.source,
                          path=None if item.path is None else str(item.path), data=item.data)
                while not pool.can_take(job):
                    # the workers have their queues full: let them run, then
                    # take every result that is ready at once (waking for each
                    # one costs the workers a context switch per file)
                    time.sleep(FULL_PAUSE)
                    collect(0.0)
                jobs[submitted] = item
                pool.submit(job)
                submitted += 1
            collect(0.0)
            if due():
                flush()
            elif on_progress is not None:
                with writer.lock:
                    on_progress(summary)
        while next_release < submitted:
            collect(0.1)
            if due():
                flush()
        flush()
        writer.wait()  # revisits name images the last batches may have written
        for item in pending_revisits:
            digest = catalog.sha256_for_payload_digest(item.revisit_of or "")
            if digest is None:
                summary.skip("revisit-of-unknown-record")
                continue
            batch.sightings.append((digest, item.sighting))
            batch.records.append((item, digest, "known", None))
            summary.revisits += 1
            if len(batch) >= batch_size:
                flush()
        flush()
        writer.wait()
    finally:
        try:
            writer.wait()  # a batch under way is committed or rolled back whole
        except BaseException:
            pass  # already raised above, or the run is being interrupted anyway
        if isinstance(known, KnownImages):
            known.close()
        summary.workers_replaced = getattr(pool, "replaced", 0)
        pool.close()
        limits.restore_original_limits()
        summary.seconds = time.monotonic() - started
    return summary


def _write(catalog: Catalog, batch: _Batch, run_id: int | None,
           linker: BatchLinker | None, watchlists: Watchlists | None = None) -> BatchResult:
    variants = batch.variants
    link_fn = None if linker is None else (
        lambda new: linker.links(new, variants, batch.local, batch.greys, batch.pixels,
                                 batch.framed, batch.described))
    watch = None if watchlists is None else watchlists.batch(variants)
    result = catalog.write_batch(batch.images, batch.sightings, batch.failures, run_id, link_fn,
                                 batch.payload_digests, watch,
                                 locked=None if linker is None else linker.catch_up)
    if linker is not None:
        linker.committed(result.new_images, variants, batch.local)
    return result
