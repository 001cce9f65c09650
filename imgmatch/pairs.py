"""All-pairs near-duplicate search: every pair of codes within a radius, exactly.

Clustering a whole collection (or linking a partner's hash list) needs every
pair of codes within the match threshold. Asking the multi-index tables once
per code pays the probe overhead N times; this module applies the same
pigeonhole argument to whole buckets instead. If two codes of ``m``
substrings differ in at most ``r`` bits, some substring differs in at most
its flip budget (``r // m``, or the sharper budgets of
:func:`imgmatch.mih.budgets`). So for each substring the codes are sorted by
it, and every code is joined with the runs of codes whose key is within the
budget of its own: one candidate pair per table that can find it, drawn from
contiguous runs. Candidates are screened on two other 64-bit words (two random words
differ in about 64 bits, so few survive), then measured in full.

The cut is chosen per call by a cost model (probes grow with the flips,
candidates with ``N^2 / 2^width``). Tables are independent, so they are
shared out among worker processes, or among a cluster's machines (a
``runner``: :class:`imgmatch.dask_pool.DaskTables`). The result is exact:
tests compare it with a brute-force scan.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from math import comb

import numpy as np

from .mih import Window, as_words, budgets, concat_ranges, cut, flip_masks, word_popcount
from .orphans import exit_with_parent

#: Candidate pairs generated per vectorised step (about 60 bytes each in flight).
CHUNK = 1 << 22
#: Substrings per 64-bit word that the planner considers (widths 22 down to 8 bits).
CUTS = (3, 4, 5, 6, 8)
#: Cost of one code's lookup of one partner run, in candidate verifications:
#: each lookup is several numpy passes over N codes. Set so that at 1e6 codes
#: the planner keeps 16-bit tables with one flip, which ran faster there than
#: 22-bit tables with the sharper budgets.
PROBE_COST = 2.5


#: Runs a join's tables somewhere else (another machine's processes):
#: ``runner(a, b, tables, radius)`` gives :func:`join_table` of each
#: ``(window, flips)`` of ``tables``, in order; ``b`` None for a self-join.
TableRunner = Callable[[np.ndarray, np.ndarray | None, list[tuple[Window, int]], int],
                       list[tuple[np.ndarray, np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class Pairs:
    """Pairs of positions ``(i, j)`` and their Hamming distances.

    For a self-join ``i < j`` are both positions in the one array; for a
    cross join ``i`` is a position in the first array and ``j`` in the second.
    """

    i: np.ndarray
    j: np.ndarray
    distances: np.ndarray

    def __len__(self) -> int:
        return len(self.i)


def plan(bits: int, radius: int, n_a: int, n_b: int) -> tuple[tuple[Window, ...], tuple[int, ...]]:
    """The cut into substrings, and each one's flip budget (-1: not joined on;
    see :func:`imgmatch.mih.budgets`), with the least expected work."""
    best: tuple[float, tuple[Window, ...], tuple[int, ...]] | None = None
    for per_word in CUTS:
        windows = cut(bits, per_word)
        weights = [PROBE_COST * n_a + n_a * n_b / 2.0 ** w.width for w in windows]
        taus = budgets([w.width for w in windows], radius, weights)
        cost = sum(_masks(w.width, t) * weight for w, t, weight in zip(windows, taus, weights))
        if best is None or cost < best[0]:
            best = (cost, windows, taus)
    assert best is not None
    return best[1], best[2]


def _masks(width: int, flips: int) -> int:
    return sum(comb(width, k) for k in range(flips + 1))


def near_pairs(codes: np.ndarray, radius: int, *, workers: int = 1,
               runner: TableRunner | None = None) -> Pairs:
    """Every pair ``i < j`` of rows of ``codes`` (N x bytes uint8) within ``radius``
    bits. ``runner``: where the tables run (default: ``workers`` local processes)."""
    words = _words(codes)
    windows, taus = plan(words.shape[1] * 64, radius, len(words), len(words))
    return _run(words, None, windows, taus, radius, workers, runner)


def cross_pairs(a: np.ndarray, b: np.ndarray, radius: int, *, workers: int = 1,
                runner: TableRunner | None = None) -> Pairs:
    """Every pair (row of ``a``, row of ``b``) within ``radius`` bits."""
    a_words, b_words = _words(a), _words(b)
    if a_words.shape[1] != b_words.shape[1]:
        raise ValueError("both sides must hold codes of the same size")
    windows, taus = plan(a_words.shape[1] * 64, radius, len(a_words), len(b_words))
    return _run(a_words, b_words, windows, taus, radius, workers, runner)


def _words(codes: np.ndarray) -> np.ndarray:
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim != 2 or codes.shape[1] % 8:
        raise ValueError("codes must be an N x bytes array of whole 64-bit words")
    return as_words(codes)


# The arrays a pool's workers join, set before the pool forks (never pickled).
_SHARED: tuple[np.ndarray, np.ndarray | None, int] | None = None


def _run(a: np.ndarray, b: np.ndarray | None, windows: tuple[Window, ...], taus: tuple[int, ...],
         radius: int, workers: int, runner: TableRunner | None = None) -> Pairs:
    global _SHARED
    empty = Pairs(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int32))
    if not len(a) or (b is not None and not len(b)):
        return empty
    jobs = [(w, t) for w, t in zip(windows, taus) if t >= 0]
    workers = max(1, min(workers, len(jobs)))
    if workers > 1 and "fork" not in multiprocessing.get_all_start_methods():
        workers = 1  # the workers share the codes by forking; elsewhere, one process
    if runner is not None:
        parts = runner(a, b, jobs, radius)
    elif workers == 1:
        parts = [_table(a, b, w, t, radius) for w, t in jobs]
    else:
        _SHARED = (a, b, radius)
        try:
            with _fork_pool(workers) as pool:
                parts = list(pool.map(_shared_table, jobs))
        finally:
            _SHARED = None
    i = np.concatenate([p[0] for p in parts])
    j = np.concatenate([p[1] for p in parts])
    d = np.concatenate([p[2] for p in parts])
    if not len(i):
        return empty
    # a pair within the radius is found by every table it is close in: keep one
    width = int(max(len(a), len(b) if b is not None else 0))
    _, first = np.unique(i * width + j, return_index=True)
    return Pairs(i[first], j[first], d[first].astype(np.int32))


def _fork_pool(workers: int) -> ProcessPoolExecutor:
    """Forked workers that leave when this process is killed (they hold the
    collection's codes; see :mod:`imgmatch.orphans`)."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=exit_with_parent, initargs=(os.getpid(),))


def _shared_table(job: tuple[Window, int]):
    assert _SHARED is not None
    a, b, radius = _SHARED
    return _table(a, b, job[0], job[1], radius)


def join_table(a: np.ndarray, b: np.ndarray | None, window: Window, flips: int,
               radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The verified pairs one substring table finds: (i, j, distance) positions
    in ``a`` (N x words uint64) and ``b`` (None: a self-join, ``i < j``). The
    unit of work a :data:`TableRunner` runs elsewhere; the caller merges them."""
    return _table(a, b, window, flips, radius)


def _keys(words: np.ndarray, w: Window) -> np.ndarray:
    return ((words[:, w.word] >> np.uint64(w.shift)) & np.uint64((1 << w.width) - 1)
            ).astype(np.int64)


def _table(a: np.ndarray, b: np.ndarray | None, w: Window, flips: int,
           radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Verified pairs found through one substring: (i, j, distance) positions;
    ``b`` None: pairs within ``a`` (a self-join)."""
    same = b is None
    other = a if b is None else b
    keys_b = _keys(other, w)
    order = np.argsort(keys_b, kind="stable")
    counts = np.bincount(keys_b, minlength=1 << w.width)
    starts = np.cumsum(counts) - counts
    sorted_b = other[order]
    if same:
        sorted_a, keys_a = sorted_b, keys_b[order]
    else:
        sorted_a, keys_a = a, _keys(a, w)
    # two other words, as contiguous columns, screen the candidates cheaply
    screen = [(np.ascontiguousarray(sorted_a[:, k]), np.ascontiguousarray(sorted_b[:, k]))
              for k in range(a.shape[1]) if k != w.word][:2]
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    positions = np.arange(len(sorted_a), dtype=np.int64)
    for mask in flip_masks(w.width, flips).astype(np.int64):
        partner = keys_a ^ mask
        if same and mask == 0:       # later codes of the same run
            rows = positions
            lo = positions + 1
            hi = starts[keys_a] + counts[keys_a]
        elif same:                   # each pair of runs once, from the lower key
            rows = np.flatnonzero(keys_a < partner)
            lo = starts[partner[rows]]
            hi = lo + counts[partner[rows]]
        else:
            rows = positions
            lo = starts[partner]
            hi = lo + counts[partner]
        n = hi - lo
        keep = n > 0
        rows, lo, hi, n = rows[keep], lo[keep], hi[keep], n[keep]
        if not len(rows):
            continue
        ends = np.cumsum(n)
        begin = 0
        while begin < len(rows):
            base = ends[begin - 1] if begin else 0
            end = int(np.searchsorted(ends, base + CHUNK, side="right"))
            end = max(end, begin + 1)
            found.append(_verify(sorted_a, sorted_b, rows[begin:end], n[begin:end],
                                 lo[begin:end], hi[begin:end], screen, radius))
            begin = end
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    ia = np.concatenate([f[0] for f in found])
    jb = np.concatenate([f[1] for f in found])
    d = np.concatenate([f[2] for f in found])
    if same:
        i, j = order[ia], order[jb]
        return np.minimum(i, j), np.maximum(i, j), d
    return ia, order[jb], d


def _verify(a: np.ndarray, b: np.ndarray, rows: np.ndarray, n: np.ndarray, lo: np.ndarray,
            hi: np.ndarray, screen: list[tuple[np.ndarray, np.ndarray]], radius: int):
    """Row ``rows[k]`` of ``a`` against rows ``lo[k]:hi[k]`` of ``b``: the pairs within
    ``radius``, screened on two words first, then measured in full."""
    jb = concat_ranges(lo, hi)
    if screen:
        # a's side is a run of repeats: no gather needed
        bits = [np.bitwise_count(np.repeat(col_a[rows], n) ^ np.take(col_b, jb))
                for col_a, col_b in screen]
        close = np.flatnonzero(sum(bits[1:], bits[0]) <= radius)
    else:
        close = np.arange(len(jb))
    ia = rows[np.searchsorted(np.cumsum(n), close, side="right")]
    jb = jb[close]
    d = word_popcount(a[ia] ^ b[jb])
    hit = d <= radius
    return ia[hit], jb[hit], d[hit]


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity, which a container
    or ``taskset`` narrows; ``os.cpu_count`` counts the machine's)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else (os.cpu_count() or 1))


