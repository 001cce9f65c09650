"""The ingest pipeline: items -> bytes -> known? -> analyse -> one batched write.

``analyse`` is a pure function of bytes (decode once, every signal from that
decode), so it can run in worker processes; only the caller's process writes
to SQLite, a whole batch per transaction. Re-running an ingest does no work
twice: an image whose SHA-256 is already catalogued is not decoded again, and
a sighting already recorded is not added again. Every input that cannot be
used becomes a failure row with its reason; the batch goes on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Protocol

from . import signals as signal_registry
from .catalog import BatchResult, Catalog, ImageRow, LinkRow, SightingRow, SignalRow
from .decode import decode
from .errors import InputError
from .signals import HashValue
from .sources import Item

DEFAULT_BATCH = 64


@dataclass(frozen=True)
class Analysis:
    """The outcome of analysing one file's bytes: an image row, or why not."""

    sha256: str
    image: ImageRow | None = None
    reason: str | None = None
    detail: str | None = None
    #: per signal, the values of the image's rotations and mirrors where they
    #: are cheap (identity first), else the value alone; used for linking
    variants: dict[str, list[HashValue]] = field(default_factory=dict)


def analyse(data: bytes, signal_names: Sequence[str], source: str | None = None,
            sha256: str | None = None) -> Analysis:
    """Decode once and compute every signal; never raises for bad input."""
    digest = sha256 or hashlib.sha256(data).hexdigest()
    try:
        decoded = decode(data, source=source)
        variants = {}
        for name in signal_names:
            sig = signal_registry.get(name)
            variants[name] = sig.dihedral(decoded) if sig.cheap_dihedral \
                else [sig.compute(decoded)]
    except InputError as exc:
        return Analysis(digest, reason=exc.reason, detail=exc.detail)
    except MemoryError:
        return Analysis(digest, reason="decode-error", detail="ran out of memory decoding")
    rows = tuple(SignalRow(name, signal_registry.get(name).version, vs[0].data, vs[0].quality)
                 for name, vs in variants.items())
    return Analysis(digest, image=ImageRow(
        sha256=digest, size_bytes=len(data), width=decoded.width, height=decoded.height,
        format=decoded.format, mode=decoded.mode, frames=decoded.frames, signals=rows),
        variants=variants)


def _analyse_job(job: tuple[bytes, tuple[str, ...], str, str]) -> Analysis:
    data, names, source, digest = job
    return analyse(data, names, source, digest)


class BatchLinker(Protocol):
    """Links new images to near-duplicates as they are written (see match.py)."""

    def links(self, new_images: list[tuple[int, str]],
              variants: dict[str, dict[str, list[HashValue]]]) -> list[LinkRow]: ...

    def committed(self, new_images: list[tuple[int, str]],
                  variants: dict[str, dict[str, list[HashValue]]]) -> None: ...


@dataclass
class IngestSummary:
    """What one ingest did; ``failures`` lists (source, reason, detail)."""

    files_seen: int = 0
    images_added: int = 0
    images_known: int = 0
    links_added: int = 0
    sightings_added: int = 0
    sightings_known: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    new_image_ids: list[int] = field(default_factory=list)

    def absorb(self, result: BatchResult) -> None:
        self.images_added += result.images_added
        self.images_known += result.images_known
        self.links_added += result.links_added
        self.sightings_added += result.sightings_added
        self.sightings_known += result.sightings_known
        self.new_image_ids.extend(result.new_image_ids)

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("new_image_ids")
        out["failed"] = len(self.failures)
        out["failures"] = [{"source": s, "reason": r, "detail": d} for s, r, d in self.failures]
        reasons: dict[str, int] = {}
        for _, reason, _ in self.failures:
            reasons[reason] = reasons.get(reason, 0) + 1
        out["failure_reasons"] = reasons
        return out


def ingest(catalog: Catalog, items: Iterable[Item], *,
           signal_names: Sequence[str] = signal_registry.DEFAULT_SIGNALS,
           workers: int = 1, batch_size: int = DEFAULT_BATCH, run_id: int | None = None,
           linker: BatchLinker | None = None,
           on_progress: Callable[[IngestSummary], None] | None = None) -> IngestSummary:
    """Analyse and catalogue every item; bad items are recorded, never fatal."""
    names = tuple(signal_names)
    for name in names:
        signal_registry.get(name)
    summary = IngestSummary()
    executor: Executor | None = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for batch in _batches(items, batch_size):
            _ingest_batch(catalog, batch, names, executor, run_id, summary, linker)
            if on_progress is not None:
                on_progress(summary)
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    return summary


def _ingest_batch(catalog: Catalog, batch: list[Item], names: tuple[str, ...],
                  executor: Executor | None, run_id: int | None,
                  summary: IngestSummary, linker: BatchLinker | None) -> None:
    failures: list[tuple[str, str, str]] = []
    pending: list[tuple[Item, bytes, str]] = []
    for item in batch:
        summary.files_seen += 1
        try:
            data = item.read()
        except InputError as exc:
            failures.append((item.source, exc.reason, exc.detail))
            continue
        pending.append((item, data, hashlib.sha256(data).hexdigest()))
    known = catalog.known_sha256([digest for _, _, digest in pending])
    summary.images_known += len(known)
    jobs: dict[str, tuple[bytes, tuple[str, ...], str, str]] = {}
    for item, data, digest in pending:
        if digest not in known and digest not in jobs:
            jobs[digest] = (data, names, item.source, digest)
    if executor is None:
        analyses = [_analyse_job(job) for job in jobs.values()]
    else:
        analyses = list(executor.map(_analyse_job, jobs.values()))
    by_digest = {a.sha256: a for a in analyses}
    sightings: list[tuple[str, SightingRow]] = []
    for item, _, digest in pending:
        analysis = by_digest.get(digest)
        if analysis is not None and analysis.image is None:
            failures.append((item.source, analysis.reason or "error", analysis.detail or ""))
            continue
        sightings.append((digest, item.sighting))
    images = [a.image for a in analyses if a.image is not None]
    variants = {a.sha256: a.variants for a in analyses if a.image is not None}
    link_fn = None if linker is None else (lambda new: linker.links(new, variants))
    result = catalog.write_batch(images, sightings, failures, run_id, link_fn)
    if linker is not None:
        linker.committed(result.new_images, variants)
    summary.absorb(result)
    summary.failures.extend(failures)


def _batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
