"""Multi-index hashing: exact Hamming range search far below the cost of a scan.

Norouzi, Punjani and Fleet's method, vectorised with numpy. Each code is cut
into ``m`` substrings; if two codes differ in at most ``r`` bits, then by the
pigeonhole principle some substring differs in at most ``r // m`` bits. So a
query looks up, in one table per substring, every key within ``r // m`` bit
flips of its own substring, and checks the few codes found with XOR and a
popcount. The result is exact: every code within ``r`` is found.

The general form of the bound (Qin et al., "GPH", 2018) is sharper: with a
flip budget ``t_i`` per table and ``sum(t_i) >= r - m + 1``, some substring
differs in at most its ``t_i`` (else the distance would be at least
``sum(t_i + 1) > r``). A budget of -1 skips a table. :func:`budgets` spends
the ``r + 1`` increments where they cost least: for PDQ's 31 bits on 12
tables that is 2 flips on 8 tables and 1 on 4, not 2 on all 12, about 30%
fewer probes and candidates for the same exact answer.

Substrings are about log2(N) bits wide (so a table bucket holds about one
code), cut inside 64-bit words. A table is the code positions sorted by
their key (``order``) and, for each key, where its run starts (``offsets``),
so a lookup is two array reads. Tables are rebuilt from the codes when the
collection has grown enough to want wider substrings; until then new codes
wait in a small pending area that queries scan directly (an LSM-style
merge), and removed ids are masked until the next rebuild.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

import numpy as np

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

#: Queries answered per vectorised pass: the candidate arrays of a pass grow
#: with it (about 40 bytes per candidate), so it bounds the transient memory.
QUERY_CHUNK = 128
#: Pending codes are scanned in blocks of at most this many bytes of XORs.
SCAN_BYTES = 16 << 20
#: Narrowest and widest substring, in bits.
MIN_WIDTH, MAX_WIDTH = 8, 22
#: Pending codes are merged into the tables past this share of the indexed ones
#: (a scan of 1% costs a query about what the tables do; a rebuild is amortised
#: over the 1% of new codes that trigger it).
MERGE_SHARE = 0.01
MIN_MERGE = 4096


def popcount_rows(x: np.ndarray) -> np.ndarray:
    """Set bits per row of a uint8 or uint64 matrix (uint8 rows of whole 64-bit
    words count word-wise)."""
    if x.dtype == np.uint64:
        return word_popcount(x)
    if x.ndim == 2 and x.shape[1] % 8 == 0:
        return word_popcount(np.ascontiguousarray(x).view(np.uint64))
    return _POPCOUNT[x].sum(axis=1, dtype=np.int32)


def word_popcount(words: np.ndarray) -> np.ndarray:
    """Set bits per row of a uint64 matrix, as int32. Columns are added one by
    one: numpy's sum along a row of four is several times slower."""
    counts = np.bitwise_count(words).astype(np.int32)
    out = counts[:, 0].copy()
    for k in range(1, counts.shape[1]):
        out += counts[:, k]
    return out


@dataclass(frozen=True)
class Window:
    word: int    # which 64-bit word of the code
    shift: int   # right shift of the substring within the word
    width: int   # bits


def windows_for(bits: int, n: int) -> tuple[Window, ...]:
    """Substrings for ``n`` codes of ``bits``: about log2(n) bits each, within words."""
    target = max(MIN_WIDTH, min(MAX_WIDTH, round(math.log2(max(n, 2)))))
    return cut(bits, math.ceil(64 / target))


def cut(bits: int, per_word: int) -> tuple[Window, ...]:
    """Codes of ``bits`` cut into ``per_word`` substrings of each 64-bit word."""
    widths = [64 // per_word + (1 if i < 64 % per_word else 0) for i in range(per_word)]
    out = []
    for word in range(bits // 64):
        shift = 64
        for width in widths:
            shift -= width
            out.append(Window(word, shift, width))
    return tuple(out)


@lru_cache(maxsize=64)
def flip_masks(width: int, radius: int) -> np.ndarray:
    """Every mask of ``width`` bits with at most ``radius`` bits set."""
    masks = [0]
    for r in range(1, radius + 1):
        masks += [sum(1 << b for b in bits) for bits in combinations(range(width), r)]
    return np.array(masks, dtype=np.uint32)


def budgets(widths: Sequence[int], radius: int,
            weights: Sequence[float]) -> tuple[int, ...]:
    """Flip budgets per table (-1: skip it) with ``sum >= radius - m + 1``, cheapest
    first: raising table i from t to t+1 costs its new probes times ``weights[i]``
    (what a probe of that table costs: its lookup and the candidates it draws)."""
    taus = [-1] * len(widths)
    if radius < 0:
        return tuple(taus)
    for _ in range(radius + 1):
        def step(i: int) -> float:
            if taus[i] >= widths[i]:
                return math.inf
            return math.comb(widths[i], taus[i] + 1) * weights[i]
        best = min(range(len(widths)), key=step)
        taus[best] += 1
    return tuple(taus)


def as_words(codes: np.ndarray) -> np.ndarray:
    """(N, bytes) uint8 codes as (N, bytes/8) big-endian uint64 words."""
    return codes.view(">u8").astype(np.uint64)


def _tables(codes: np.ndarray, windows: tuple[Window, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Every table's code positions sorted by key, and its run starts per key,
    one table after another (see :class:`MultiIndexHash`)."""
    n = len(codes)
    orders = np.empty(len(windows) * n, np.int32 if n < 2**31 else np.int64)
    offsets = np.empty(sum((1 << w.width) + 1 for w in windows),
                       np.uint32 if n < 2**32 else np.int64)
    words = codes.view(">u8")  # big-endian words, read in place
    at = 0
    for j, w in enumerate(windows):
        keys = words[:, w.word] >> np.uint64(w.shift)
        keys &= np.uint64((1 << w.width) - 1)
        keys = keys.astype(np.uint32)
        orders[j * n:(j + 1) * n] = np.argsort(keys, kind="stable")
        size = (1 << w.width) + 1
        offsets[at] = 0
        offsets[at + 1:at + size] = np.cumsum(np.bincount(keys, minlength=size - 1))
        at += size
    return orders, offsets


class MultiIndexHash:
    """Exact range search over binary codes with integer ids (see the module doc).

    Ids come and go as int64; the tables keep them as int32 when they fit.
    """

    def __init__(self, bits: int) -> None:
        if bits % 64:
            raise ValueError("multi-index hashing here takes codes of whole 64-bit words")
        self.bits = bits
        self.nbytes = bits // 8
        self.codes = np.empty((0, self.nbytes), np.uint8)
        self.ids = np.empty(0, np.int64)
        self.windows: tuple[Window, ...] = ()
        #: every table's code positions sorted by key, one table after another
        self.orders = np.empty(0, np.int32)
        #: every table's run starts per key (2**width + 1 each), one after another
        self.offsets = np.empty(0, np.uint32)
        self._pending_codes = np.empty((0, self.nbytes), np.uint8)
        self._pending_ids = np.empty(0, np.int64)
        self._pending_parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.removed: set[int] = set()
        self._order_base = np.empty(0, np.int64)
        self._offset_base = np.empty(0, np.int64)
        self._probe_cache: tuple[object, tuple[np.ndarray, ...]] = (None, ())

    # ------------------------------------------------------------------ build
    @property
    def pending_codes(self) -> np.ndarray:
        self._collapse()
        return self._pending_codes

    @pending_codes.setter
    def pending_codes(self, value: np.ndarray) -> None:
        self._pending_parts = []
        self._pending_codes = value

    @property
    def pending_ids(self) -> np.ndarray:
        self._collapse()
        return self._pending_ids

    @pending_ids.setter
    def pending_ids(self, value: np.ndarray) -> None:
        self._pending_parts = []
        self._pending_ids = value

    def _collapse(self) -> None:
        """Join the parts added since the last look (one copy, not one per add)."""
        if self._pending_parts:
            parts, self._pending_parts = self._pending_parts, []
            self._pending_ids = np.concatenate([self._pending_ids] + [i for i, _ in parts])
            self._pending_codes = np.concatenate([self._pending_codes] + [c for _, c in parts])

    def _pending_count(self) -> int:
        return len(self._pending_ids) + sum(len(i) for i, _ in self._pending_parts)

    def __len__(self) -> int:
        return len(self.ids) + self._pending_count() - len(self.removed)

    def add(self, ids: np.ndarray, codes: np.ndarray, *, merge: bool = True) -> None:
        """Add codes (pending until merged). ``merge=False`` defers the merge, for
        bulk loads that call ``rebuild`` once at the end."""
        ids = np.asarray(ids, dtype=np.int64)
        codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(len(ids), self.nbytes)
        if not len(ids):
            return
        self.removed.difference_update(ids.tolist())
        self._pending_parts.append((ids, codes))
        if merge and self._pending_count() > max(MIN_MERGE, MERGE_SHARE * len(self.ids)):
            self.rebuild()

    def remove(self, ids: np.ndarray) -> int:
        present = set(np.asarray(ids, dtype=np.int64).tolist()) & (
            set(self.ids.tolist()) | set(self.pending_ids.tolist()))
        self.removed |= present
        return len(present)

    def rebuild(self) -> None:
        """Merge pending codes and drop removed ones; recut the tables.

        The old tables are let go first and every code counts as pending while
        the new ones are built: the index stays whole if building fails (no
        memory), and the peak is the new tables plus one table's temporaries,
        not old and new together.
        """
        codes = np.concatenate([self.codes, self.pending_codes])
        ids = np.concatenate([self.ids, self.pending_ids])
        if self.removed:
            keep = ~np.isin(ids, np.fromiter(self.removed, np.int64))
            codes, ids = codes[keep], ids[keep]
        self.codes, self.ids = np.empty((0, self.nbytes), np.uint8), np.empty(0, np.int64)
        self.windows, self.orders, self.offsets = (), np.empty(0, np.int32), np.empty(0, np.uint32)
        self.pending_codes, self.pending_ids, self.removed = codes, ids, set()
        self._plan()
        windows = windows_for(self.bits, len(ids))
        orders, offsets = _tables(codes, windows)
        # ids fit 32 bits in any collection one machine holds: 4 bytes per code saved
        narrow = len(ids) and ids.min() >= 0 and ids.max() < 2**31
        self.codes, self.ids = codes, ids.astype(np.int32) if narrow else ids
        self.windows, self.orders, self.offsets = windows, orders, offsets
        self.pending_codes = np.empty((0, self.nbytes), np.uint8)
        self.pending_ids = np.empty(0, np.int64)
        self._plan()

    def _plan(self) -> None:
        """Where each table starts in the flat arrays, and the probe masks."""
        n = len(self.ids)
        self._order_base = np.arange(len(self.windows), dtype=np.int64) * n
        sizes = [(1 << w.width) + 1 for w in self.windows]
        self._offset_base = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    # ----------------------------------------------------------------- search
    def range_search(self, queries: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """All ids within ``radius`` bits (inclusive) of each query: [(ids, distances)].

        Many queries are answered in one vectorised pass (links at ingest send a
        whole batch's rotations at once), so the per-call overhead is paid once.
        """
        queries = np.ascontiguousarray(queries, dtype=np.uint8).reshape(-1, self.nbytes)
        nq = len(queries)
        q, found, d = self.range_pairs(queries, radius)
        bounds = np.searchsorted(q, np.arange(nq + 1))
        return [(found[bounds[i]:bounds[i + 1]], d[bounds[i]:bounds[i + 1]]) for i in range(nq)]

    def range_pairs(self, queries: np.ndarray, radius: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (query index, id, distance) within ``radius``, by query index:
        :meth:`range_search` without splitting the answer per query (a batch's
        thousands of queries are then one array, not thousands)."""
        queries = np.ascontiguousarray(queries, dtype=np.uint8).reshape(-1, self.nbytes)
        nq = len(queries)
        qs, ids, dists = [], [], []
        for start in range(0, nq, QUERY_CHUNK):
            chunk = queries[start:start + QUERY_CHUNK]
            if len(self.ids) and self.windows:
                q, pos = self._candidates(chunk, radius)
                if len(pos):
                    # np.take of whole 64-bit words: a row gather by fancy indexing
                    # of the uint8 matrix costs several times more per candidate
                    x = np.take(self.codes.view(np.uint64), pos, axis=0)
                    x ^= chunk.view(np.uint64)[q]
                    d = word_popcount(x)
                    hit = np.flatnonzero(d <= radius)
                    pair, first = np.unique(q[hit] * len(self.ids) + pos[hit], return_index=True)
                    qs.append(pair // len(self.ids) + start)
                    ids.append(self.ids[pair % len(self.ids)].astype(np.int64))
                    dists.append(d[hit[first]])
            if len(self.pending_ids):
                q, d, at = self._scan_pending(chunk, radius)
                qs.append(q + start)
                ids.append(self.pending_ids[at])
                dists.append(d)
        if not qs:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int32)
        q, found, d = np.concatenate(qs), np.concatenate(ids), np.concatenate(dists)
        if self.removed:
            keep = ~np.isin(found, np.fromiter(self.removed, np.int64))
            q, found, d = q[keep], found[keep], d[keep]
        order = np.argsort(q, kind="stable")
        return q[order], found[order], d[order]

    def _scan_pending(self, queries: np.ndarray, radius: int):
        """(query index, distance, pending position) of pending codes within radius."""
        pending = self.pending_codes
        step = max(1, SCAN_BYTES // max(1, len(pending) * self.nbytes))
        if self.nbytes % 8 == 0:  # XOR whole 64-bit words: an eighth of the operations
            pending = np.ascontiguousarray(pending).view(np.uint64)
            queries = np.ascontiguousarray(queries).view(np.uint64)
        qs, ds, ats = [], [], []
        for start in range(0, len(queries), step):
            block = queries[start:start + step]
            xor = (block[:, None, :] ^ pending[None, :, :]).reshape(len(block) * len(pending), -1)
            d = popcount_rows(xor).reshape(len(block), len(pending))
            q, at = np.nonzero(d <= radius)
            qs.append(q + start)
            ds.append(d[q, at])
            ats.append(at)
        return np.concatenate(qs), np.concatenate(ds), np.concatenate(ats)

    def _probes(self, radius: int) -> tuple[np.ndarray, ...]:
        """Every probe of a query at this radius, flattened over the tables: the
        word, shift and key mask of its table, its flip mask, and where its
        table starts in ``offsets`` and ``orders``. Flip budgets per table come
        from :func:`budgets` (a probe costs its lookup plus the ``N / 2^width``
        codes it draws). Cached: a query then costs a few vectorised steps."""
        key = (radius, len(self.ids), self.windows)
        if self._probe_cache[0] != key:
            n = len(self.ids)
            taus = budgets([w.width for w in self.windows], radius,
                           [1.0 + n / 2.0 ** w.width for w in self.windows])
            parts = []
            for j, (w, tau) in enumerate(zip(self.windows, taus)):
                if tau < 0:
                    continue
                flips = flip_masks(w.width, tau).astype(np.int64)
                parts.append(np.stack(np.broadcast_arrays(
                    w.word, w.shift, (1 << w.width) - 1, flips,
                    self._offset_base[j], self._order_base[j])))
            table = np.concatenate(parts, axis=1) if parts else np.empty((6, 0), np.int64)
            word, shift, keymask, flips, offset_base, order_base = table
            self._probe_cache = (key, (word, shift.astype(np.uint64), keymask.astype(np.uint64),
                                       flips, offset_base, order_base))
        return self._probe_cache[1]

    def _candidates(self, queries: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """(query index, code position) of every indexed code sharing a substring
        within its table's flip budget of the query's (see :func:`budgets`); a
        pair found through several substrings comes several times (cheaper to
        verify twice than to sort)."""
        word, shift, keymask, flips, offset_base, order_base = self._probes(radius)
        qwords = as_words(queries)
        keys = ((qwords[:, word] >> shift) & keymask).astype(np.int64)      # (Q, probes)
        at = ((keys ^ flips) + offset_base).ravel()
        starts = self.offsets[at].astype(np.int64)
        ends = self.offsets[at + 1].astype(np.int64)
        keep = np.flatnonzero(ends > starts)
        if not len(keep):
            return np.empty(0, np.int64), np.empty(0, np.int64)
        base = order_base[keep % len(word)]
        starts, ends = starts[keep] + base, ends[keep] + base
        positions = self.orders[concat_ranges(starts, ends)].astype(np.int64)
        return np.repeat(keep // len(word), ends - starts), positions

    def live(self) -> tuple[np.ndarray, np.ndarray]:
        """(codes, ids) of every code not removed, indexed or pending."""
        codes = np.concatenate([self.codes, self.pending_codes])
        ids = np.concatenate([self.ids, self.pending_ids])
        if self.removed:
            keep = ~np.isin(ids, np.fromiter(self.removed, np.int64))
            codes, ids = codes[keep], ids[keep]
        return np.ascontiguousarray(codes), ids

    # ---------------------------------------------------------------- storage
    def arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to reopen the index, pending codes and removals included."""
        out: dict[str, np.ndarray] = {"codes": self.codes, "ids": self.ids,
            "pending_codes": self.pending_codes, "pending_ids": self.pending_ids,
            "removed": np.array(sorted(self.removed), dtype=np.int64),
            "windows": np.array([(w.word, w.shift, w.width) for w in self.windows],
                                dtype=np.int64).reshape(-1, 3)}
        out["orders"] = self.orders
        out["offsets"] = self.offsets
        return out

    ARRAYS = ("codes", "ids", "pending_codes", "pending_ids", "removed", "windows",
              "orders", "offsets")

    @classmethod
    def from_arrays(cls, bits: int, arrays: dict[str, np.ndarray]) -> MultiIndexHash:
        out = cls(bits)
        out.codes = arrays["codes"].reshape(-1, bits // 8)
        out.ids = arrays["ids"]
        out.pending_codes = arrays["pending_codes"].reshape(-1, bits // 8)
        out.pending_ids = arrays["pending_ids"]
        out.removed = set(arrays["removed"].tolist())
        if len(out.codes) != len(out.ids):
            raise ValueError("codes and ids differ in length")
        out.windows = tuple(Window(int(a), int(b), int(c)) for a, b, c in arrays["windows"])
        out.orders, out.offsets = arrays["orders"], arrays["offsets"]
        if len(out.orders) != len(out.windows) * len(out.ids) or len(out.offsets) != sum(
                (1 << w.width) + 1 for w in out.windows):
            raise ValueError("the tables do not fit their codes")
        if len(out.orders) and (out.orders.min() < 0 or out.orders.max() >= len(out.ids)):
            raise ValueError("a table points outside its codes")
        out._plan()
        return out

    def memory_bytes(self) -> int:
        arrays: list[np.ndarray] = [self.codes, self.ids, self.pending_codes,
                                    self.pending_ids, self.orders, self.offsets]
        return int(sum(a.nbytes for a in arrays))


def concat_ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, e) for each pair (each non-empty), without a Python loop."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, np.int64)
    out = np.ones(total, dtype=np.int64)
    cum = np.cumsum(lengths)
    out[0] = starts[0]
    out[cum[:-1]] = starts[1:] - ends[:-1] + 1
    return np.cumsum(out)
