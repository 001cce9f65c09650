"""Ingest's analysis and the link pass's join on a Dask cluster (dask.distributed).

What runs where:

- The client (the process that calls :func:`imgmatch.ingest.ingest` with a
  ``client``: the CLI, a program) reads the inputs, releases results in
  input order, links and writes every batch, exactly as with local workers.
  It is still the only process that writes the catalog, so a killed job run
  again writes only what is missing.
- Each thread of a Dask worker keeps one supervised process of its own
  (:class:`imgmatch.workers.ProcessPool` with one worker, the local
  machinery, not a copy of it). A task is a chunk of files, analysed there
  one at a time under the per-file time limit and memory cap: a file that
  crashes or hangs its decoder, or needs more memory, costs only itself,
  is answered with its reason (``decoder-crash``, ``timeout``,
  ``out-of-memory``), and the process is replaced.
- Paths are read where the task runs (shared storage); bytes only the client
  can read (standard input, WARC records) travel with the task.
- The link pass: every Dask worker is given the codes, and each substring
  table of the self-join (:func:`imgmatch.pairs.join_table`) is one task; the
  client merges the pairs, scores them and writes the links.

A Dask worker cannot see a SQLite catalog on another machine, so it does not
ask whether a file is catalogued: every file is analysed, and the client
drops the results it already holds (bytes it ships are checked before they
are sent). dask is imported on first use: imgmatch works without it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import multiprocessing
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from .analysis import Analysis, Options
from .catalog import KnownImages
from .errors import DaskError
from .mih import Window
from .pairs import join_table
from .workers import DEFAULT_MAX_MEMORY, DEFAULT_TIMEOUT, Job, ProcessPool

if TYPE_CHECKING:
    from distributed import Client, Future

#: Seconds to reach a scheduler, and to wait for its first worker.
CONNECT_TIMEOUT = 10.0
#: Files per task, at most: enough to amortise a task's round trip through
#: the scheduler (a few milliseconds) over small, fast files.
CHUNK_JOBS = 32
#: Seconds of work a task is sized for, from the seconds per file measured
#: so far: long enough to amortise its round trip, short enough that the
#: last tasks of an ingest end together and results come back in time for
#: in-order release.
TASK_SECONDS = 0.25
#: Bytes shipped per task, at most (a single larger file goes alone). Task
#: arguments travel through the scheduler; Dask warns from 10 MB.
CHUNK_BYTES = 4 << 20
#: Tasks in flight per Dask worker thread: one running, the next waiting, so
#: no worker waits for the client.
TASKS_PER_THREAD = 2
#: Bytes shipped and not yet answered, at most: memory stays flat on the
#: client and the scheduler however fast the inputs come.
FLIGHT_BYTES = 64 << 20
#: A chunk that is not full is sent after this long (or at once while a
#: worker thread has nothing to do).
CHUNK_WAIT = 0.2
#: How often the client asks the scheduler how many worker threads it has.
THREADS_EVERY = 5.0
#: Failure reason of a file whose Dask worker was lost on every try.
WORKER_LOST = "worker-lost"

INSTALL_HINT = "pip install 'imgmatch[dask]'"


def _distributed() -> ModuleType:
    """dask.distributed, or a DaskError that says how to install it."""
    try:
        import distributed
    except ImportError:
        raise DaskError(f"Dask is not installed here: {INSTALL_HINT} (on the workers "
                        "too)") from None
    return distributed


def connect_dask(address: str, *, timeout: float = CONNECT_TIMEOUT) -> Client:
    """A client of the Dask scheduler at ``address`` (``tcp://HOST:8786``, as
    ``dask scheduler`` prints it). DaskError says why not: Dask missing, a
    malformed address, nothing listening, no answer within ``timeout`` s."""
    distributed = _distributed()
    _probe(address, timeout)
    try:
        return distributed.Client(address, timeout=timeout, set_as_default=False)
    except Exception as exc:  # OSError, TimeoutError, ValueError, or a garbled reply
        raise DaskError(f"cannot connect to the Dask scheduler at {address}: {exc}; start "
                        "one with 'dask scheduler' and give the address it prints") from None


def _probe(address: str, timeout: float) -> None:
    """Fail at once where nothing listens (Dask would retry until its timeout)."""
    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp"):
        return  # tls://, ucx://, inproc://: left to Dask
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise DaskError(f"{address!r} is not a Dask scheduler address: give "
                        "tcp://HOST:PORT (port 8786 unless the scheduler says otherwise)")
    try:
        socket.create_connection((host, int(port)), timeout=min(timeout, 5.0)).close()
    except OSError as exc:
        raise DaskError(f"cannot connect to the Dask scheduler at {address}: "
                        f"{exc.strerror or exc}; is 'dask scheduler' running there?") from None


def require_workers(client: Client, names: Sequence[str] = (),
                    timeout: float = CONNECT_TIMEOUT) -> int:
    """Check the cluster before any work: at least one worker (waiting up to
    ``timeout`` s), each running this imgmatch with the same signal versions.
    Returns the worker threads. (Workers that join later are not checked.)"""
    try:
        client.wait_for_workers(1, timeout=timeout)
    except Exception:  # TimeoutError (asyncio's on Python 3.10)
        where = getattr(client.scheduler, "address", None) or "the scheduler"
        raise DaskError(f"no Dask worker joined {where} within {timeout:g} s: start some "
                        "with 'dask worker ADDRESS --nworkers N --nthreads 1'") from None
    want = worker_facts(tuple(names))
    try:
        facts = client.run(worker_facts, tuple(names))
    except Exception as exc:  # the workers could not import or run imgmatch
        raise DaskError(f"a Dask worker cannot run imgmatch ({type(exc).__name__}: {exc}); "
                        "install the same imgmatch on every worker") from None
    for worker, got in facts.items():
        if got != want:
            raise DaskError(f"the Dask worker {worker} runs imgmatch {got[0]} with signal "
                            f"versions {got[1]}, this process {want[0]} with {want[1]}: "
                            "install the same imgmatch (and models) everywhere")
    return max(1, sum(client.nthreads().values()))


def worker_facts(names: tuple[str, ...]) -> tuple[str, dict[str, int]]:
    """(imgmatch's version, each signal's version) here: what a worker must
    agree on with the client, so that values of one collection are comparable.
    A signal that cannot be used here (an ONNX model missing) raises."""
    from . import signals as registry

    try:
        version = importlib.metadata.version("imgmatch")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    versions = {}
    for name in names:
        registry.signal(name).prepare()
        versions[name] = registry.signal(name).version
    return version, versions


# ------------------------------------------------------------ on a Dask worker
@dataclass(frozen=True)
class _Settings:
    """What every task of one ingest analyses with (the key of a worker's pool)."""

    signal_names: tuple[str, ...]
    timeout: float = DEFAULT_TIMEOUT
    options: Options = Options()
    max_memory: int | None = DEFAULT_MAX_MEMORY


@dataclass
class _Held:
    pool: ProcessPool
    lock: threading.Lock


#: Each worker thread's supervised process, by (thread, settings).
_POOLS: dict[tuple[int, _Settings], _Held] = {}
_POOLS_LOCK = threading.Lock()


def _take_pool(settings: _Settings) -> _Held:
    """This thread's pool for ``settings``, locked (the caller releases it):
    made on first use, and made again if its process died while idle (else
    the next file would be blamed). Locked under the registry's lock, so that
    :func:`release_pools` never ends a pool a task is about to use."""
    key = (threading.get_ident(), settings)
    with _POOLS_LOCK:
        for other in [k for k in _POOLS if k[0] == key[0] and k != key]:
            _POOLS.pop(other).pool.close()  # one process per thread: the latest settings
        held = _POOLS.get(key)
        if held is not None and not held.pool.alive():
            held.pool.close()
            held = None
        if held is None:
            # Dask's nanny starts workers as daemonic processes, which
            # multiprocessing forbids to start children. Ours leave with the
            # worker all the same: they are daemonic themselves and watch
            # their parent (imgmatch.orphans).
            if multiprocessing.current_process().daemon:
                multiprocessing.current_process().daemon = False
            held = _Held(ProcessPool(settings.signal_names, 1, settings.timeout,
                                     options=settings.options, max_memory=settings.max_memory),
                         threading.Lock())
            _POOLS[key] = held
        held.lock.acquire()
    return held


def analyse_chunk(jobs: list[Job], settings: _Settings
                  ) -> tuple[list[tuple[int, Analysis]], int, float]:
    """A task: analyse ``jobs`` in this thread's capped process, one at a time.
    Returns each job's analysis (a crash, hang or runaway as a failure with its
    reason), how many times the process was replaced, and the seconds taken."""
    started = time.monotonic()
    held = _take_pool(settings)
    try:
        pool = held.pool
        before = pool.replaced
        waiting = deque(jobs)
        out: list[tuple[int, Analysis]] = []
        while waiting or pool.busy:
            while waiting and pool.can_take(waiting[0]):
                pool.submit(waiting.popleft())
            out.extend(pool.results(1.0))
        return out, pool.replaced - before, time.monotonic() - started
    finally:
        held.lock.release()


def release_pools(settings: _Settings) -> int:
    """End this worker's idle processes of one ingest (run by the client when
    it is done, so they do not hold memory); how many."""
    ended = 0
    with _POOLS_LOCK:
        for key in [k for k in _POOLS if k[1] == settings]:
            held = _POOLS[key]
            if held.lock.acquire(blocking=False):  # not in a task right now
                try:
                    held.pool.close()
                finally:
                    held.lock.release()
                del _POOLS[key]
                ended += 1
    return ended


# ------------------------------------------------------------- on the client
class DaskPool:
    """A :class:`imgmatch.workers.Pool` whose workers are a Dask cluster's.

    Jobs are gathered into chunks (about :data:`TASK_SECONDS` of work, up to
    :data:`CHUNK_JOBS` files or :data:`CHUNK_BYTES` shipped bytes), at most
    :data:`TASKS_PER_THREAD`
    chunks per worker thread in flight and :data:`FLIGHT_BYTES` of bytes, so
    every worker stays busy and memory stays flat. A chunk whose worker died
    on every retry Dask allows is tried again file by file; a file that still
    kills its worker is recorded as ``worker-lost``.
    """

    def __init__(self, client: Client, signal_names: Sequence[str],
                 timeout: float = DEFAULT_TIMEOUT, *, options: Options = Options(),
                 max_memory: int | None = DEFAULT_MAX_MEMORY,
                 catalog_path: str | None = None) -> None:
        self._distributed = _distributed()
        self.client = client
        self.settings = _Settings(tuple(signal_names), timeout, options, max_memory)
        self._threads = require_workers(client, self.settings.signal_names)
        self._threads_at = time.monotonic()
        self._known = KnownImages(catalog_path) if catalog_path else None
        self.replaced = 0
        self._open: list[Job] = []
        self._open_bytes = 0
        self._opened = 0.0
        self._flight: dict[Future, tuple[list[Job], int]] = {}   # oldest first
        self._flight_bytes = 0
        self._answered: deque[tuple[int, Analysis]] = deque()    # known bytes, not sent
        self._ready = threading.Event()
        self._per_file: float | None = None   # seconds, measured on the workers

    # -- the Pool protocol
    def can_take(self, job: Job) -> bool:
        self._pump(force=not self._fits(job))
        return self._fits(job)

    @property
    def busy(self) -> bool:
        return bool(self._open or self._flight or self._answered)

    def submit(self, job: Job) -> None:
        if job.data is not None and self._known is not None:
            digest = hashlib.sha256(job.data).hexdigest()
            if self._known(digest):  # catalogued: no need to ship or analyse it
                self._answered.append((job.key, Analysis(digest, known=True)))
                return
        if not self._fits(job):
            self._pump(force=True)
        if not self._open:
            self._opened = time.monotonic()
        self._open.append(job)
        self._open_bytes += len(job.data or b"")
        self._pump()

    def results(self, timeout: float = 0.0) -> Iterator[tuple[int, Analysis]]:
        """Results ready within ``timeout`` seconds (0: only those ready now);
        a wait (timeout > 0) sends the chunk being gathered at once."""
        while self._answered:
            yield self._answered.popleft()
        self._pump(force=timeout > 0)
        self._ready.clear()
        done = [f for f in self._flight if f.done()]
        if not done and timeout > 0 and self._flight:
            self._ready.wait(timeout)
            done = [f for f in self._flight if f.done()]
        for future in done:
            jobs, shipped = self._flight.pop(future)
            self._flight_bytes -= shipped
            yield from self._outcome(future, jobs)
        self._pump()

    def close(self) -> None:
        """Cancel what is still in flight and end the workers' idle processes
        (the client itself is the caller's)."""
        if self._flight:
            try:
                self.client.cancel(list(self._flight))
            except Exception:
                pass  # the scheduler is gone: nothing runs for us any more
            self._flight.clear()
        self._open.clear()
        if self._known is not None:
            self._known.close()
        try:
            self.client.run(release_pools, self.settings)
        except Exception:
            pass  # a worker gone, or the scheduler: their processes leave with them

    # -- chunks
    def _chunk_jobs(self) -> int:
        """Files per task: :data:`TASK_SECONDS` of them, as measured."""
        if self._per_file is None:
            return CHUNK_JOBS
        return max(1, min(CHUNK_JOBS, round(TASK_SECONDS / max(self._per_file, 1e-4))))

    def _fits(self, job: Job) -> bool:
        size = len(job.data or b"")
        return not self._open or (len(self._open) < self._chunk_jobs()
                                  and self._open_bytes + size <= CHUNK_BYTES)

    def _threads_now(self) -> int:
        if time.monotonic() - self._threads_at > THREADS_EVERY:  # workers come and go
            self._threads_at = time.monotonic()
            try:
                self._threads = max(1, sum(self.client.nthreads().values()))
            except Exception:
                pass  # asked again later; a lost scheduler shows in the futures
        return self._threads

    def _pump(self, force: bool = False) -> None:
        """Send the chunk being gathered when it is due and there is room."""
        if not self._open:
            return
        threads = self._threads_now()
        if len(self._flight) >= TASKS_PER_THREAD * threads or (
                self._flight and self._flight_bytes + self._open_bytes > FLIGHT_BYTES):
            return
        due = (force or len(self._open) >= self._chunk_jobs() or self._open_bytes >= CHUNK_BYTES
               or len(self._flight) < threads
               or time.monotonic() - self._opened > CHUNK_WAIT)
        if due:
            jobs, shipped = self._open, self._open_bytes
            self._open, self._open_bytes = [], 0
            self._send(jobs, shipped)

    def _send(self, jobs: list[Job], shipped: int) -> None:
        payload: Any = jobs
        try:
            if shipped > CHUNK_BYTES:  # one large file: to a worker directly, not via the scheduler
                payload = self.client.scatter([jobs], hash=False)[0]
            future = self.client.submit(analyse_chunk, payload, self.settings, pure=False)
        except Exception as exc:  # the scheduler is gone, or the client closed
            raise DaskError(_task_failure(exc, "not sent")) from None
        future.add_done_callback(lambda _: self._ready.set())
        self._flight[future] = (jobs, shipped)
        self._flight_bytes += shipped

    def _outcome(self, future: Future, jobs: list[Job]) -> Iterator[tuple[int, Analysis]]:
        if future.status == "finished":
            answers, replaced, seconds = future.result()
            self.replaced += replaced
            if jobs:
                each = seconds / len(jobs)
                self._per_file = each if self._per_file is None else \
                    0.7 * self._per_file + 0.3 * each
            yield from answers
            return
        error = future.exception() if future.status == "error" else None
        if not isinstance(error, self._distributed.KilledWorker):
            raise DaskError(_task_failure(error, str(future.status))) from None
        if len(jobs) > 1:  # which file? each is tried again on its own
            for job in jobs:
                self._send([job], len(job.data or b""))
            return
        yield jobs[0].key, Analysis(
            "", reason=WORKER_LOST,
            detail=f"every Dask worker that analysed this file died ({error.allowed_failures + 1} "
                   "tries); the file was not analysed")


def _task_failure(error: BaseException | None, status: str) -> str:
    """What to tell a user whose ingest stopped on a task that neither ran
    nor crashed its files' processes."""
    again = "run the same command again: what was written is kept, the rest is done"
    if status == "not sent":
        return (f"could not send work to the Dask scheduler ({type(error).__name__}: {error}); "
                f"{again}")
    if error is None:
        return f"a Dask task was {status} (the connection to the scheduler was lost?); {again}"
    return (f"a Dask task failed ({type(error).__name__}: {error}); check that every worker "
            f"runs the same imgmatch, then {again}")


# ------------------------------------------------------------- the link pass
class DaskTables:
    """Runs the substring tables of an all-pairs join (:mod:`imgmatch.pairs`)
    on a Dask cluster: a :data:`imgmatch.pairs.TableRunner`.

    The codes go to every worker once per join (N x 32 bytes for PDQ); each
    table is a task, which sorts the codes by its substring and verifies its
    candidates there, so a worker needs a few times the codes' size."""

    def __init__(self, client: Client) -> None:
        self._distributed = _distributed()
        self.client = client
        require_workers(client)

    def __call__(self, a: np.ndarray, b: np.ndarray | None, tables: list[tuple[Window, int]],
                 radius: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if not tables:
            return []
        try:
            shared_a = self.client.scatter(a, broadcast=True, hash=False)
            shared_b = None if b is None else self.client.scatter(b, broadcast=True, hash=False)
            futures = [self.client.submit(join_table, shared_a, shared_b, window, flips,
                                          radius, pure=False) for window, flips in tables]
            parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = self.client.gather(futures)
        except Exception as exc:
            raise DaskError(f"the all-pairs join failed on the Dask cluster "
                            f"({type(exc).__name__}: {exc}); nothing was written: run the "
                            "link pass again, or without --dask") from None
        return parts
