"""BinaryIndex against a brute-force numpy oracle, and its on-disk safety checks."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgmatch.errors import IndexFileError
from imgmatch.index import FACTORY, BinaryIndex
from imgmatch.index_files import Manifest, manifest_path, map_npy, save_folder
from imgmatch.mih import MultiIndexHash, budgets, popcount_rows

#: (bits, inclusive threshold) as used for PDQ and for the 64-bit hashes
CASES = [(256, 31), (64, 10)]
#: where the codes sit: all in multi-index tables, all pending (scanned), or both
LAYOUTS = ["tables", "pending", "mixed"]
N_BASE = 2000
N_QUERIES = 12


def hamming_matrix(queries: np.ndarray, base: np.ndarray) -> np.ndarray:
    """The oracle: Hamming distance of every query to every base code."""
    xor = queries[:, None, :] ^ base[None, :, :]
    return np.unpackbits(xor, axis=-1).sum(axis=-1).astype(np.int64)


def flip_bits(code: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``code`` with exactly ``n`` distinct bits flipped."""
    bits = np.unpackbits(code).copy()
    where = rng.choice(bits.size, size=n, replace=False)
    bits[where] ^= 1
    return np.packbits(bits)


class Dataset:
    """Random codes with non-contiguous ids, plus codes planted at the threshold."""

    def __init__(self, bits: int, threshold: int, seed: int, layout: str = "tables") -> None:
        rng = np.random.default_rng(seed)
        self.layout = layout
        nbytes = bits // 8
        self.bits, self.threshold = bits, threshold
        self.queries = rng.integers(0, 256, size=(N_QUERIES, nbytes), dtype=np.uint8)
        codes = [rng.integers(0, 256, size=(N_BASE, nbytes), dtype=np.uint8)]
        # plant, around the first 8 queries, codes at t-1, t, t+1 (and 0: a duplicate)
        self.planted: dict[int, list[tuple[int, int]]] = {}  # query -> [(row, distance)]
        row = N_BASE
        for qi in range(8):
            for distance in (threshold - 1, threshold, threshold + 1, 0):
                codes.append(flip_bits(self.queries[qi], distance, rng)[None, :])
                self.planted.setdefault(qi, []).append((row, distance))
                row += 1
        self.codes = np.concatenate(codes)
        # ids as the catalog has them: unique, large, not in row order
        self.ids = rng.choice(np.arange(1, 10 * len(self.codes), dtype=np.int64),
                              size=len(self.codes), replace=False)
        self.distances = hamming_matrix(self.queries, self.codes)

    def index(self) -> BinaryIndex:
        index = BinaryIndex(self.bits)
        half = len(self.ids) // 2  # two batches, as an incremental ingest adds them
        index.add(self.ids[:half], self.codes[:half])
        if self.layout == "mixed":
            index.compact()
        index.add(self.ids[half:], self.codes[half:])
        if self.layout == "tables":
            index.compact()
        return index

    def expected(self, qi: int, threshold: int, excluded=frozenset()) -> dict[int, int]:
        rows = np.flatnonzero(self.distances[qi] <= threshold)
        return {int(self.ids[r]): int(self.distances[qi, r])
                for r in rows if int(self.ids[r]) not in excluded}


@pytest.fixture(scope="module", params=[(c, lay) for c in CASES for lay in LAYOUTS],
                ids=[f"{b}bit-{lay}" for b, _ in CASES for lay in LAYOUTS])
def data(request) -> Dataset:
    (bits, threshold), layout = request.param
    return Dataset(bits, threshold, seed=bits, layout=layout)


def assert_range_matches(results, data: Dataset, threshold: int, excluded=frozenset()) -> None:
    assert len(results) == len(data.queries)
    for qi, (ids, dists) in enumerate(results):
        got = dict(zip(ids.tolist(), dists.tolist()))
        assert len(got) == len(ids), "an id came back twice"
        assert got == data.expected(qi, threshold, excluded), f"query {qi}"


# ------------------------------------------------------------------ searching
def test_oracle_planted_distances_are_exact(data):
    for qi, planted in data.planted.items():
        for row, distance in planted:
            assert data.distances[qi, row] == distance


def test_range_search_is_inclusive_and_exact(data):
    index = data.index()
    assert len(index) == len(data.ids)
    assert index.max_id == int(data.ids.max())
    results = index.range_search(data.queries, data.threshold)
    assert_range_matches(results, data, data.threshold)
    # the boundary cases, spelled out
    for qi, planted in data.planted.items():
        found = set(results[qi][0].tolist())
        for row, distance in planted:
            assert (int(data.ids[row]) in found) == (distance <= data.threshold), (qi, distance)


@pytest.mark.parametrize("offset", [-3, 0, 5])
def test_range_search_other_thresholds(data, offset):
    threshold = data.threshold + offset
    results = data.index().range_search(data.queries, threshold)
    assert_range_matches(results, data, threshold)


def test_range_search_finds_planted_codes(data):
    """Guards the oracle test against vacuity: queries do have neighbours."""
    results = data.index().range_search(data.queries, data.threshold)
    for qi in data.planted:
        assert len(results[qi][0]) >= 3  # distances 0, t-1 and t


@pytest.mark.parametrize("k", [1, 5, 25])
def test_knn_distances_are_the_k_smallest(data, k):
    index = data.index()
    dists, ids = index.search(data.queries, k)
    assert dists.shape == ids.shape == (len(data.queries), k)
    id_to_row = {int(i): r for r, i in enumerate(data.ids)}
    for qi in range(len(data.queries)):
        expected = np.sort(data.distances[qi])[:k]
        assert dists[qi].tolist() == expected.tolist()
        # each returned id really is at the reported distance
        for d, i in zip(dists[qi], ids[qi]):
            assert data.distances[qi, id_to_row[int(i)]] == d
        assert len(set(ids[qi].tolist())) == k


def test_knn_with_k_larger_than_the_index():
    bits = 64
    codes = np.random.default_rng(7).integers(0, 256, size=(3, 8), dtype=np.uint8)
    index = BinaryIndex(bits)
    index.add(np.array([10, 20, 30]), codes)
    dists, ids = index.search(codes[:1], 50)
    assert sorted(ids[0].tolist()) == [10, 20, 30]
    assert dists[0, 0] == 0 and ids[0, 0] == 10


def test_single_query_as_a_flat_code(data):
    index = data.index()
    (ids, dists), = index.range_search(data.queries[0], data.threshold)  # shape (nbytes,)
    assert dict(zip(ids.tolist(), dists.tolist())) == data.expected(0, data.threshold)


# ------------------------------------------------------------------- removal
def test_removed_ids_are_not_found(data):
    index = data.index()
    gone = set()
    for qi, planted in data.planted.items():
        row, _ = planted[0]          # the one at distance t-1
        gone.add(int(data.ids[row]))
    gone.update(int(i) for i in data.ids[:50])
    removed = index.remove(np.array(sorted(gone)))
    assert removed == len(gone)
    assert len(index) == len(data.ids) - len(gone)
    results = index.range_search(data.queries, data.threshold)
    assert_range_matches(results, data, data.threshold, excluded=gone)
    for ids, _ in results:
        assert not gone & set(ids.tolist())
    _, knn_ids = index.search(data.queries, 10)
    assert not gone & set(knn_ids.ravel().tolist())


def test_removing_unknown_ids_removes_nothing(data):
    index = data.index()
    assert index.remove(np.array([-5, 10 * len(data.ids) + 1])) == 0
    assert len(index) == len(data.ids)


# ---------------------------------------------------------------- empty index
@pytest.mark.parametrize("bits", [256, 64])
def test_empty_index_returns_nothing(bits):
    index = BinaryIndex(bits)
    queries = np.zeros((3, bits // 8), np.uint8)
    assert len(index) == 0
    results = index.range_search(queries, 31)
    assert len(results) == 3
    assert all(len(ids) == 0 and len(d) == 0 for ids, d in results)
    dists, ids = index.search(queries, 5)
    assert (ids == -1).all()
    assert (dists > bits).all()


def test_a_rebuild_that_fails_leaves_every_code_findable(data, monkeypatch):
    """Out of memory while the tables are rebuilt: the index is still exact
    (every code waits, scanned, as pending), and the next rebuild completes it."""
    from imgmatch import mih

    index = data.index()
    excluded = {int(data.ids[0])}
    index.remove(data.ids[:1])

    def no_memory(*args):
        raise MemoryError

    with monkeypatch.context() as patch:
        patch.setattr(mih, "_tables", no_memory)
        with pytest.raises(MemoryError):
            index.compact()
    assert len(index.mih.ids) == 0 and len(index) == len(data.ids) - 1
    assert_range_matches(index.range_search(data.queries, data.threshold), data,
                         data.threshold, excluded)
    index.compact()
    assert len(index.mih.pending_ids) == 0 and len(index.mih.ids) == len(data.ids) - 1
    assert_range_matches(index.range_search(data.queries, data.threshold), data,
                         data.threshold, excluded)


def test_index_emptied_by_removal_returns_nothing():
    index = BinaryIndex(64)
    codes = np.zeros((2, 8), np.uint8)
    index.add(np.array([1, 2]), codes)
    index.remove(np.array([1, 2]))
    (ids, _), = index.range_search(codes[:1], 10)
    assert len(ids) == 0
    _, knn = index.search(codes[:1], 3)
    assert (knn == -1).all()


def test_adding_nothing_is_a_no_op():
    index = BinaryIndex(64)
    index.add(np.empty(0, np.int64), np.empty((0, 8), np.uint8))
    assert len(index) == 0 and index.max_id == 0


def test_bits_must_be_whole_bytes():
    with pytest.raises(ValueError):
        BinaryIndex(60)


# ----------------------------------------------------------------- on disk
SIGNAL = {256: "pdq", 64: "phash"}


@pytest.fixture
def saved(data, tmp_path):
    index = data.index()
    path = tmp_path / "indexes" / f"{SIGNAL[data.bits]}.mih"
    manifest = index.save(path, collection_id="c1", signal=SIGNAL[data.bits], deletions=4)
    return index, path, manifest


def load(data, path, **overrides):
    kwargs = dict(collection_id="c1", signal=SIGNAL[data.bits], bits=data.bits)
    kwargs.update(overrides)
    return BinaryIndex.load(path, **kwargs)


def test_save_writes_manifest(data, saved):
    _, path, manifest = saved
    assert path.is_dir() and manifest_path(path).is_file()
    on_disk = json.loads(manifest_path(path).read_text())
    assert Manifest(**on_disk) == manifest
    assert manifest.collection_id == "c1"
    assert manifest.signal == SIGNAL[data.bits]
    assert manifest.bits == data.bits
    assert manifest.count == len(data.ids)
    assert manifest.max_image_id == int(data.ids.max())
    assert manifest.deletions == 4
    assert manifest.factory == FACTORY
    # no temporary files left behind
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_load_gives_identical_results(data, saved):
    index, path, manifest = saved
    loaded, loaded_manifest = load(data, path)
    assert loaded_manifest == manifest
    assert len(loaded) == len(index)
    assert loaded.max_id == index.max_id
    before = index.range_search(data.queries, data.threshold)
    after = loaded.range_search(data.queries, data.threshold)
    for (ids_a, d_a), (ids_b, d_b) in zip(before, after):
        assert dict(zip(ids_a.tolist(), d_a.tolist())) == dict(zip(ids_b.tolist(), d_b.tolist()))
    assert_range_matches(after, data, data.threshold)


def test_save_load_after_removal(data, tmp_path):
    index = data.index()
    gone = {int(i) for i in data.ids[::7]}
    index.remove(np.array(sorted(gone)))
    path = tmp_path / "x.mih"
    index.save(path, collection_id="c1", signal=SIGNAL[data.bits], deletions=len(gone))
    loaded, manifest = load(data, path)
    assert manifest.deletions == len(gone)
    assert manifest.count == len(data.ids) - len(gone)
    assert_range_matches(loaded.range_search(data.queries, data.threshold), data,
                         data.threshold, excluded=gone)


def test_save_overwrites_previous_index(data, tmp_path):
    path = tmp_path / "x.mih"
    first = BinaryIndex(data.bits)
    first.add(data.ids[:10], data.codes[:10])
    first.save(path, collection_id="c1", signal=SIGNAL[data.bits], deletions=0)
    data.index().save(path, collection_id="c1", signal=SIGNAL[data.bits], deletions=0)
    loaded, manifest = load(data, path)
    assert len(loaded) == manifest.count == len(data.ids)


@pytest.mark.parametrize("override", [
    {"collection_id": "c2"},
    {"signal": "dhash"},
])
def test_load_refuses_a_foreign_index(data, saved, override):
    _, path, _ = saved
    with pytest.raises(IndexFileError):
        load(data, path, **override)


def test_load_refuses_other_code_size(data, saved):
    _, path, _ = saved
    with pytest.raises(IndexFileError):
        load(data, path, bits=128)


@pytest.mark.parametrize("where", [0.5, 0.0, -1])
@pytest.mark.parametrize("name", ["codes.npy", "ids.npy", "pending_codes.npy", "orders.npy",
                                  "offsets.npy"])
def test_tampered_index_file_is_refused(data, saved, where, name):
    _, path, _ = saved
    path = path / name
    if not path.exists():
        pytest.skip(f"the {data.layout} layout has no {name}")
    blob = bytearray(path.read_bytes())
    pos = int(len(blob) * where) if where >= 0 else len(blob) - 1
    blob[pos] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(IndexFileError):
        load(data, path)


def test_truncated_index_file_is_refused(data, saved):
    _, path, _ = saved
    path = path / "codes.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IndexFileError):
        load(data, path)


def test_missing_manifest_is_refused(data, saved):
    _, path, _ = saved
    manifest_path(path).unlink()
    with pytest.raises(IndexFileError):
        load(data, path)


def test_missing_index_file_is_refused(data, saved):
    _, path, _ = saved
    (path / "codes.npy").unlink()
    with pytest.raises(IndexFileError):
        load(data, path)


@pytest.mark.parametrize("text", [
    "not json at all",
    "[1, 2, 3]",
    '{"collection_id": "c1"}',
])
def test_unreadable_manifest_is_refused(data, saved, text):
    _, path, _ = saved
    manifest_path(path).write_text(text)
    with pytest.raises(IndexFileError):
        load(data, path)


def test_manifest_with_unknown_field_is_refused(data, saved):
    _, path, _ = saved
    raw = json.loads(manifest_path(path).read_text())
    raw["surprise"] = True
    manifest_path(path).write_text(json.dumps(raw))
    with pytest.raises(IndexFileError):
        load(data, path)


def test_manifest_count_mismatch_is_refused(data, saved):
    """The file is intact (hash matches) but the manifest lies about its size."""
    _, path, _ = saved
    raw = json.loads(manifest_path(path).read_text())
    raw["count"] += 1
    manifest_path(path).write_text(json.dumps(raw))
    with pytest.raises(IndexFileError):
        load(data, path)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3000),
       radius=st.integers(0, 40), words=st.sampled_from([1, 2, 4]))
def test_multi_index_hashing_equals_a_scan_at_any_size(seed, n, radius, words):
    """Every table width and flip budget the planner picks stays exact."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, words * 8), dtype=np.uint8)
    queries = codes[rng.integers(0, n, 20)].copy()
    for q in queries:  # near copies, up to a little past the radius
        for bit in rng.choice(words * 64, int(rng.integers(0, radius + 3)), replace=False):
            q[bit // 8] ^= np.uint8(1 << (bit % 8))
    index = MultiIndexHash(words * 64)
    index.add(np.arange(n) + 7, codes, merge=False)
    index.rebuild()
    for q, (found, dists) in zip(queries, index.range_search(queries, radius)):
        d = popcount_rows(codes ^ q)
        expected = np.flatnonzero(d <= radius)
        assert sorted(found.tolist()) == (expected + 7).tolist()
        assert dict(zip(found.tolist(), dists.tolist())) == {
            int(i) + 7: int(d[i]) for i in expected}


@pytest.mark.parametrize("widths, radius", [([22, 21, 21] * 4, 31), ([16] * 16, 31),
                                            ([16] * 4, 8), ([21, 22, 21], 4), ([8] * 8, 0)])
def test_flip_budgets_keep_the_pigeonhole_bound(widths, radius):
    taus = budgets(widths, radius, [1.0] * len(widths))
    assert sum(taus) >= radius - len(widths) + 1
    assert sum(t + 1 for t in taus) == radius + 1  # no flip more than the bound needs


def _save_many(path: str, rounds: int) -> None:
    rng = np.random.default_rng(os.getpid())
    for _ in range(rounds):
        index = BinaryIndex(64)
        index.add(np.arange(1, 51), rng.integers(0, 256, (50, 8), dtype=np.uint8))
        index.save(Path(path), collection_id="c1", signal="phash", deletions=0)


def test_two_processes_saving_one_index_take_turns(tmp_path):
    """Each save swaps a whole folder in; two at once used to rename each
    other's folders away (FileNotFoundError, 1 run in 80)."""
    path = tmp_path / "indexes" / "phash.mih"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_save_many, args=(str(path), 40)) for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    loaded, manifest = BinaryIndex.load(path, collection_id="c1", signal="phash", bits=64)
    assert len(loaded) == manifest.count == 50
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@given(st.lists(st.integers(0, 40), min_size=1, max_size=5), st.integers(1, 4),
       st.sampled_from(["u1", "<u4", "<i8"]))
@settings(max_examples=40, deadline=None)
def test_an_array_saved_in_parts_is_the_array_they_make(tmp_path_factory, lengths, width,
                                                        dtype) -> None:
    """Parts written one after another give the .npy file of their stack,
    memory-mapped part included: what np.load and the index's mapping read."""
    rng = np.random.default_rng(len(lengths) * 10 + width)
    parts = [rng.integers(0, 100, (n, width)).astype(dtype) for n in lengths]
    folder = tmp_path_factory.mktemp("parts")
    np.save(folder / "first.npy", parts[0])
    parts[0] = map_npy(folder / "first.npy")
    manifest = Manifest(collection_id="c", signal="s", bits=8, factory="f", count=0, rows=0,
                        max_image_id=0, deletions=0)
    save_folder(folder / "saved", {"stack": parts, "plain": np.arange(3)}, manifest,
                lazy=("stack",))
    expected = np.concatenate([np.asarray(p) for p in parts])
    assert np.array_equal(np.load(folder / "saved" / "stack.npy"), expected)
    assert np.load(folder / "saved" / "stack.npy").dtype == np.dtype(dtype)
    assert np.array_equal(map_npy(folder / "saved" / "stack.npy"), expected)


def test_parts_that_do_not_stack_are_refused(tmp_path) -> None:
    manifest = Manifest(collection_id="c", signal="s", bits=8, factory="f", count=0, rows=0,
                        max_image_id=0, deletions=0)
    with pytest.raises(ValueError, match="differ"):
        save_folder(tmp_path / "x", {"stack": [np.zeros((2, 3), np.uint8),
                                               np.zeros((2, 4), np.uint8)]}, manifest)
    assert not (tmp_path / "x").exists()
