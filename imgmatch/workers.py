"""Worker processes that read and analyse images; one bad file costs only itself.

Native decoders can crash (a segfault in a codec) or hang on hostile input.
Each worker is a separate process with its own pipe; the parent knows which
job each worker is on, so when a worker dies or overruns the per-file time
limit, that one job is recorded as failed with the reason, the worker is
replaced, and the jobs queued behind it are sent elsewhere. Each worker's
memory is capped too, so a decoder that runs away fails on its own file
instead of taking the machine's memory. A standard
process pool cannot do this: one dead worker breaks the whole pool and does
not say which file killed it.

``InlinePool`` runs jobs in the calling process (no isolation, no start-up
cost) for the library's single-image calls and for tests.

Workers read the files and take their SHA-256 themselves, and ask the
catalog (read-only) whether it holds those bytes already: the parent then
does almost nothing per file, and bytes are not copied between processes.
Only the parent writes.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from .analysis import Analysis, Options, analyse, analyse_source
from .catalog import KnownImages
from .orphans import exit_with_parent

if TYPE_CHECKING:
    from multiprocessing.context import ForkContext, SpawnContext

#: Default per-file time limit, in seconds (decode and every signal).
DEFAULT_TIMEOUT = 60.0
#: Default memory a worker may take beyond what it holds when it starts, in
#: bytes: room for the largest image the pixel limit lets through (150
#: megapixels of 16-bit grey, converted), and a cap on a decoder run away.
DEFAULT_MAX_MEMORY = 4 << 30
#: Jobs queued per worker, so a worker never waits for its next file, even
#: while the parent links and writes a batch.
QUEUE_DEPTH = 32
#: A job that carries its bytes (stdin, WARC records) goes only to a worker
#: with fewer than this many jobs queued, and only while less than
#: QUEUE_BYTES of such bytes wait for it. Sending a large job blocks the
#: parent until the worker reads it; the worker first sends the results of
#: the jobs ahead of it, which must then fit in the pipe, unread.
DATA_QUEUE_DEPTH = 2
QUEUE_BYTES = 64 << 20
#: How much lower than the parent's a worker's scheduling priority is. The
#: parent links and writes every image, one at a time: the one serial stage
#: of an ingest. Sharing the cores equally with the workers, it got about
#: 80% of a core and bounded two workers on two cores; given the priority,
#: the workers take what it leaves. With :data:`imgmatch.ingest.HANDOFF_IMAGES`,
#: the robust tier's 2 workers went from 65 to 75 images/s (``scripts/bench
#: ingest``, its "writer as before" modes); this alone, 58.6 to 63.7 in a
#: one-off run (niceness 10 measured as 5).
WORKER_NICENESS = 5


def single_threaded():
    """Limit BLAS and OpenMP to one thread in this process.

    Workers already use every core; a second BLAS thread per worker only
    spins (measured: a 64x512 by 512x384 product took 2.1 ms on two threads
    against 0.6 ms on one, and far worse with the other core busy).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


@dataclass(frozen=True)
class Job:
    """One file to analyse: a path for the worker to read, or the bytes themselves."""

    key: int
    source: str
    path: str | None = None
    data: bytes | None = None

    def wire(self) -> tuple:
        return (self.key, self.source, self.path, self.data)


class Pool(Protocol):
    """What runs jobs for an ingest or an upgrade: in this process, or in workers."""

    def can_take(self, job: Job) -> bool: ...

    @property
    def busy(self) -> bool: ...

    def submit(self, job: Job) -> None: ...

    def results(self, timeout: float = 0.0) -> Iterator[tuple[int, Analysis]]: ...

    def close(self) -> None: ...


class InlinePool:
    """Runs each job at once in this process."""

    def __init__(self, signal_names: Sequence[str],
                 is_known: Callable[[str], bool] | None = None,
                 options: Options = Options()) -> None:
        self.signal_names = tuple(signal_names)
        self.is_known = is_known
        self.options = options
        self._done: deque[tuple[int, Analysis]] = deque()

    def can_take(self, job: Job) -> bool:
        return True

    @property
    def busy(self) -> bool:
        return bool(self._done)

    def submit(self, job: Job) -> None:
        self._done.append((job.key, analyse_source(job.path, job.data, self.signal_names,
                                                   job.source, self.is_known, self.options)))

    def results(self, timeout: float = 0.0) -> Iterator[tuple[int, Analysis]]:
        while self._done:
            yield self._done.popleft()

    def close(self) -> None:
        self._done.clear()


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: Connection
    queue: deque = field(default_factory=deque)   # jobs sent, oldest first
    queued_bytes: int = 0                          # of the jobs that carry their bytes
    started: float = 0.0                           # when the oldest job began


def cap_memory(extra: int) -> bool:
    """Cap this process's address space at its current size plus ``extra`` bytes.

    A decoder that runs away then fails to allocate (a MemoryError, recorded
    as the file's ``out-of-memory``; or a crash, which costs the worker) before
    it can take the machine's memory from the parent and the other workers.
    Linux only (elsewhere the cap is not enforced, and False is returned).
    """
    try:
        import resource

        with open("/proc/self/statm") as fh:
            size = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        want = size + extra
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        resource.setrlimit(resource.RLIMIT_AS, (want, hard))
    except (ImportError, OSError, ValueError, AttributeError):
        return False
    return True


def _worker_main(conn: Connection, parent: int, inherited: Sequence[Connection],
                 signal_names: tuple[str, ...], catalog_path: str | None,
                 options: Options, max_memory: int | None) -> None:
    """Serve jobs until told to stop or the parent (pid ``parent``) is gone.

    A forked worker closes the parent's pipe ends it inherited (its own and
    the earlier workers'), so a killed parent reads as end-of-file at once;
    the parent is watched as well (:mod:`imgmatch.orphans`), since anything
    else the parent forks may hold those ends too.
    """
    for end in inherited:
        end.close()
    os.nice(WORKER_NICENESS)
    known = KnownImages(catalog_path) if catalog_path else None

    def handle(job: tuple) -> tuple:
        key, source, path, data = job
        return key, analyse_source(path, data, signal_names, source, known, options)

    def warm() -> None:
        analyse(warm_up_picture(), signal_names, "warm-up", options=options)

    serve_jobs(conn, parent, max_memory, handle, warm=warm)


def warm_up_picture() -> bytes:
    """A small PNG with edges and gradients, for a worker to analyse before
    its memory cap (:func:`serve_jobs`): every signal's code path runs, so
    every library it needs is loaded."""
    ramp = np.add.outer(np.arange(256), np.arange(256))
    pixels = np.where((ramp // 32) % 2 == 0, ramp % 256, 255 - ramp % 256).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def serve_jobs(conn: Connection, parent: int, max_memory: int | None,
               handle: Callable[[Any], Any],
               warm: Callable[[], object] | None = None) -> None:
    """A worker's life: leave with the parent, ignore Ctrl-C (the parent
    decides when to stop), one BLAS thread, ``warm()``, the memory cap; then
    answer each job with ``handle(job)`` until told to stop (None) or the
    pipe breaks. ``warm`` loads what the jobs need before the cap is measured:
    a spawned worker starts without the libraries its parent loaded, and
    OpenCV alone maps some 300 MB, so loaded under the cap it would take a
    small cap's whole room and crash the worker on its first image."""
    exit_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    single_threaded()
    if warm is not None:
        try:
            warm()
        except Exception:  # the first job meets the same error, and reports it
            pass
    if max_memory:
        cap_memory(max_memory)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        answer = handle(job)
        try:
            conn.send(answer)
        except OSError:  # a broken pipe: nobody reads any more
            return


class ProcessPool:
    """``workers`` supervised processes with a per-file time limit and a memory
    cap each (``max_memory`` bytes beyond their size at start; None: no cap)."""

    def __init__(self, signal_names: Sequence[str], workers: int,
                 timeout: float = DEFAULT_TIMEOUT, catalog_path: str | None = None,
                 options: Options = Options(),
                 max_memory: int | None = DEFAULT_MAX_MEMORY) -> None:
        self.signal_names = tuple(signal_names)
        self.timeout = timeout
        self.max_memory = max_memory
        self.catalog_path = catalog_path
        self.options = options
        methods = mp.get_all_start_methods()
        self._ctx: ForkContext | SpawnContext = \
            mp.get_context("fork") if "fork" in methods else mp.get_context("spawn")
        self._workers: list[_Worker] = []
        for _ in range(workers):
            self._workers.append(self._spawn())
        self.replaced = 0

    def _spawn(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        # only a forked child inherits the parent's ends (and cannot pickle them)
        inherited = ([parent_conn] + [w.conn for w in self._workers]
                     if self._ctx.get_start_method() == "fork" else [])
        process = self._ctx.Process(target=_worker_main, daemon=True,
                                    args=(child_conn, os.getpid(), inherited,
                                          self.signal_names, self.catalog_path, self.options,
                                          self.max_memory))
        process.start()
        child_conn.close()
        return _Worker(process, parent_conn)

    @staticmethod
    def _has_room(worker: _Worker, job: Job) -> bool:
        if job.data:
            return len(worker.queue) < DATA_QUEUE_DEPTH and worker.queued_bytes < QUEUE_BYTES
        return len(worker.queue) < QUEUE_DEPTH

    def can_take(self, job: Job) -> bool:
        """Whether some worker has room for ``job`` now."""
        return any(self._has_room(w, job) for w in self._workers)

    @property
    def busy(self) -> bool:
        return any(w.queue for w in self._workers)

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids, in worker order (a replaced worker's
        successor in its place)."""
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def alive(self) -> bool:
        """Whether every worker still runs: one that died while idle (the
        system's out-of-memory killer) would be blamed on its next file."""
        return all(w.process.is_alive() for w in self._workers)

    def submit(self, job: Job) -> None:
        worker = min([w for w in self._workers if self._has_room(w, job)] or self._workers,
                     key=lambda w: len(w.queue))
        self._send(worker, job)

    def _send(self, worker: _Worker, job: Job) -> None:
        if not worker.queue:
            worker.started = time.monotonic()
        worker.queue.append(job)
        worker.queued_bytes += len(job.data or b"")
        try:
            worker.conn.send(job.wire())
        except (BrokenPipeError, OSError):
            pass  # the worker died; results() notices its sentinel and recovers

    def results(self, timeout: float = 0.0) -> Iterator[tuple[int, Analysis]]:
        """Results ready within ``timeout`` seconds (0: only those ready now)."""
        busy = [w for w in self._workers if w.queue]
        if not busy:
            return
        if timeout <= 0:
            # asked after every submit: a poll per pipe costs a fraction of
            # building a selector over every pipe and process sentinel (a dead
            # or overrunning worker is still noticed below)
            ready: list[object] = [w.conn for w in busy if w.conn.poll()]
        else:
            wait_for = min(timeout, max(0.0, min(w.started + self.timeout for w in busy)
                                        - time.monotonic()))
            ready = list(wait([w.conn for w in busy] + [w.process.sentinel for w in busy],
                              wait_for))
        for worker in list(busy):
            if worker.conn in ready:
                while worker.queue and worker.conn.poll():
                    try:
                        key, analysis = worker.conn.recv()
                    except (EOFError, OSError):
                        break
                    done = worker.queue.popleft()
                    worker.queued_bytes -= len(done.data or b"")
                    worker.started = time.monotonic()
                    yield key, analysis
            if worker.queue and not worker.process.is_alive():
                code = worker.process.exitcode
                why = (f"signal {-code} ({_signal_name(-code)})" if code and code < 0
                       else f"exit code {code}")
                yield from self._replace(worker, f"the decoder crashed ({why}) on this file")
            elif worker.queue and time.monotonic() - worker.started > self.timeout:
                yield from self._replace(
                    worker, f"decoding took longer than the {self.timeout:g} s limit")

    def _replace(self, worker: _Worker, detail: str) -> Iterator[tuple[int, Analysis]]:
        """Record the worker's current job as failed, restart it, resend the rest."""
        culprit = worker.queue.popleft()
        rest = list(worker.queue)
        worker.queue.clear()
        _kill(worker)
        self.replaced += 1
        fresh = self._spawn()
        self._workers[self._workers.index(worker)] = fresh
        reason = "decoder-crash" if "crashed" in detail else "timeout"
        yield culprit.key, Analysis("", reason=reason, detail=detail)
        for job in rest:
            self._send(fresh, job)

    def close(self) -> None:
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 2.0
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                _kill(worker)
            worker.conn.close()


def _kill(worker: _Worker) -> None:
    if worker.process.is_alive() and worker.process.pid is not None:
        try:
            os.kill(worker.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    worker.process.join(5)
    worker.conn.close()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"
