"""Decoding for a long-lived process, in capped worker processes.

The HTTP service decodes whatever a client uploads. Decoded in the
service's own process, a 581 KB PNG of 12,000 x 12,000 pixels took 2.9 GB
and 19.6 s, four at once 9.45 GB, and ``/healthz`` stopped answering. Here
every upload is decoded and hashed in one of a few worker processes, each
with the memory cap and time limit of an ingest worker
(:func:`imgmatch.workers.cap_memory`): a bomb fails on its own
(``out-of-memory``, ``timeout``, ``decoder-crash``), the worker is replaced,
and the service holds only what the worker sends back, which is small (hash
values, local features, a grey image reduced to
:data:`imgmatch.features.SIDE` pixels).

The number of workers bounds the decodes under way; a request that finds
every worker busy for ``wait`` seconds gets :class:`~imgmatch.errors.Busy`.
Workers are started with ``spawn``: the service has threads, and a fork
would copy their locks mid-use.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing as mp
import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from . import signals as registry
from .analysis import Analysis, analyse, decode_target
from .decode import DEFAULT_TARGET, decode, out_of_memory
from .errors import Busy, InputError, error_for
from .match import pixel_query
from .records import HashValue
from .workers import DEFAULT_MAX_MEMORY, DEFAULT_TIMEOUT, serve_jobs, warm_up_picture

#: Seconds a request waits for a free worker before it is told the service is busy.
DEFAULT_WAIT = 30.0


@dataclass(frozen=True)
class Job:
    """One upload to prepare: analyse it (unless its bytes are known) and make
    what a query searches with."""

    data: bytes
    source: str
    signals: tuple[str, ...]
    query_signals: tuple[str, ...]
    local_features: bool
    known: bool


@dataclass(frozen=True)
class Prepared:
    """An upload, ready to be written and searched without touching its pixels.

    ``analysis`` is what ingest writes (``known`` when the bytes are
    catalogued already); ``query``, ``views`` and ``grey`` are what
    :func:`imgmatch.match.pixel_query` makes. When ``analysis.reason`` is
    set, the upload cannot be used and the rest is empty.
    """

    analysis: Analysis
    query: dict[str, Any]
    views: list[Any] | None = None
    grey: np.ndarray | None = None


def prepare(job: Job) -> Prepared:
    """What a worker does with one upload (also usable in process, for tests)."""
    digest = hashlib.sha256(job.data).hexdigest()
    # the pixels a query decodes, shared with the analysis when it needs the
    # same decode (the robust tier's and the default's): decoded once
    pixels = functools.cache(lambda: decode(job.data, source=job.source))
    if job.known:
        analysis = Analysis(digest, known=True)
    else:
        shared = decode_target(job.signals) == DEFAULT_TARGET
        analysis = analyse(job.data, job.signals, job.source, digest,
                           decoded_by=pixels if shared else None)
        if analysis.image is None:
            return Prepared(analysis, {})
    try:
        query, views, grey = pixel_query(
            pixels, job.query_signals, local_features=job.local_features,
            variants=analysis.variants, local=analysis.features)
    except InputError as exc:
        return Prepared(Analysis(digest, reason=exc.reason, detail=exc.detail), {})
    except MemoryError:
        error = out_of_memory(job.source)
        return Prepared(Analysis(digest, reason=error.reason, detail=error.detail), {})
    return Prepared(analysis, query, views, grey)


def _warm_up() -> None:
    """Prepare a small made picture with every default signal, so that the
    worker loads its decoders and OpenCV before its memory cap is set (see
    :func:`imgmatch.workers.serve_jobs`)."""
    prepare(Job(warm_up_picture(), "warm-up", registry.ROBUST_SIGNALS, registry.HASH_SIGNALS,
                True, False))


def _worker_main(conn: Connection, parent: int, max_memory: int | None) -> None:
    serve_jobs(conn, parent, max_memory, prepare, warm=_warm_up)


class _Worker:
    def __init__(self, ctx: Any, max_memory: int | None) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, daemon=True,
                                   args=(child, os.getpid(), max_memory))
        self.process.start()
        child.close()

    def stop(self, *, kill: bool = False) -> None:
        if not kill:
            try:
                self.conn.send(None)
            except OSError:
                kill = True
            self.process.join(2.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)
        self.conn.close()


class DecodeSandbox:
    """``workers`` capped processes that prepare uploads, one request each at
    a time; thread-safe. Close it (or use it as a context manager) to stop them."""

    def __init__(self, workers: int = 2, *, timeout: float = DEFAULT_TIMEOUT,
                 max_memory: int | None = DEFAULT_MAX_MEMORY,
                 wait: float = DEFAULT_WAIT) -> None:
        self.timeout = timeout
        self.max_memory = max_memory
        self.wait = wait
        self.size = max(1, workers)
        self.replaced = 0
        self._ctx = mp.get_context("spawn")
        self._free: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        for _ in range(self.size):
            self._free.put(_Worker(self._ctx, max_memory))

    def prepare(self, data: bytes, *, source: str, signals: Sequence[str],
                query_signals: Sequence[str], local_features: bool,
                known: bool = False) -> Prepared:
        """Analyse ``data`` (unless ``known``) and make its query, in a worker.
        Busy when no worker is free within ``wait`` seconds."""
        job = Job(data, source, tuple(signals), tuple(query_signals), local_features, known)
        try:
            worker = self._free.get(timeout=self.wait)
        except queue.Empty:
            raise Busy(f"all {self.size} decoders are busy; send it again in a moment") \
                from None
        try:
            try:
                worker.conn.send(job)
                if worker.conn.poll(self.timeout):
                    return worker.conn.recv()
                why, reason = f"decoding took longer than the {self.timeout:g} s limit", \
                    "timeout"
            except (EOFError, OSError):
                why, reason = "the decoder crashed on this image", "decoder-crash"
            worker = self._replace(worker)
            return Prepared(Analysis(hashlib.sha256(data).hexdigest(), reason=reason,
                                     detail=why), {})
        finally:
            self._free.put(worker)

    def query_input(self, data: bytes, source: str, names: Sequence[str],
                    local_features: bool) -> tuple[dict[str, Any], list[Any] | None,
                                                   np.ndarray | None]:
        """What a query of ``data`` searches with (``names``' values for its
        rotations and mirrors; with ``local_features`` its views and grey
        pixels), made in a worker; the InputError that says why it cannot be."""
        made = self.prepare(data, source=source, signals=(), query_signals=names,
                            local_features=local_features, known=True)
        if made.analysis.reason is not None:
            raise error_for(made.analysis.reason, made.analysis.detail, source)
        return made.query, made.views, made.grey

    def hash_values(self, data: bytes, *, source: str,
                    signals: Sequence[str]) -> dict[str, HashValue]:
        """Each of ``signals``' value for ``data``, as ingest would store it,
        made in a worker and kept nowhere (hashing an upload for a client);
        the InputError that says why it cannot be."""
        made = self.prepare(data, source=source, signals=signals, query_signals=(),
                            local_features=False)
        if made.analysis.reason is not None:
            raise error_for(made.analysis.reason, made.analysis.detail, source)
        return {name: values[0] for name, values in made.analysis.variants.items()}

    def _replace(self, worker: _Worker) -> _Worker:
        worker.stop(kill=True)
        with self._lock:
            self.replaced += 1
        return _Worker(self._ctx, self.max_memory)

    def close(self) -> None:
        """Stop the workers (those busy are stopped as their requests end)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        while True:
            try:
                self._free.get_nowait().stop()
            except queue.Empty:
                return

    def __enter__(self) -> DecodeSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
