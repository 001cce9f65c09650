"""All-pairs near-duplicate search, checked against a brute-force scan, and the
link pass that uses it on a collection's hash lists."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import imgmatch
from imgmatch import link_pass, pairs
from imgmatch.cli import main
from imgmatch.evidence import Evidence
from imgmatch.mih import popcount_rows


def planted(rng: np.random.Generator, n: int, nbytes: int, copies: int, max_flips: int):
    """Random codes, then ``copies`` rows overwritten by a code near another row."""
    codes = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    for _ in range(copies):
        src, dst = rng.integers(n, size=2)
        codes[dst] = codes[src]
        for bit in rng.choice(nbytes * 8, int(rng.integers(0, max_flips + 1)), replace=False):
            codes[dst, bit // 8] ^= np.uint8(1 << (bit % 8))
    return codes


def scan(a: np.ndarray, b: np.ndarray | None, radius: int) -> set[tuple[int, int, int]]:
    """The oracle: every pair within ``radius`` by measuring all of them."""
    out = set()
    for i in range(len(a)):
        other = a[i + 1:] if b is None else b
        d = popcount_rows(other ^ a[i])
        for j in np.flatnonzero(d <= radius):
            out.add((i, int(j) + (i + 1 if b is None else 0), int(d[j])))
    return out


def as_set(found: pairs.Pairs) -> set[tuple[int, int, int]]:
    return set(zip(found.i.tolist(), found.j.tolist(), found.distances.tolist()))


@pytest.mark.parametrize("bits, radius", [(256, 31), (64, 8), (64, 4), (128, 0)])
def test_self_join_equals_a_scan(bits, radius):
    codes = planted(np.random.default_rng(bits + radius), 2000, bits // 8, 300, radius + 3)
    found = pairs.near_pairs(codes, radius)
    expected = scan(codes, None, radius)
    assert len(expected) > 50  # the planted copies, not an empty agreement
    assert as_set(found) == expected
    assert len(found) == len(expected)  # each pair once, though several tables find it


def test_cross_join_and_workers_agree_with_a_scan():
    codes = planted(np.random.default_rng(7), 3000, 32, 400, 34)
    a, b = codes[:1200], codes[1200:]
    expected = scan(a, b, 31)
    assert len(expected) > 50
    assert as_set(pairs.cross_pairs(a, b, 31)) == expected
    assert as_set(pairs.cross_pairs(a, b, 31, workers=2)) == expected
    assert as_set(pairs.near_pairs(codes, 31, workers=2)) == scan(codes, None, 31)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300),
       radius=st.integers(0, 40), words=st.sampled_from([1, 2, 4]))
def test_any_collection_any_radius(seed, n, radius, words):
    codes = planted(np.random.default_rng(seed), n, words * 8, n // 2, radius + 2) \
        if n else np.empty((0, words * 8), np.uint8)
    assert as_set(pairs.near_pairs(codes, radius)) == scan(codes, None, radius)


def test_the_plan_follows_the_size():
    small, _ = pairs.plan(256, 31, 1000, 1000)
    large, taus = pairs.plan(256, 31, 10**6, 10**6)
    assert small[0].width < large[0].width  # more codes: wider substrings
    assert sum(taus) >= 31 - len(large) + 1  # the pigeonhole bound that keeps it exact


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        pairs.near_pairs(np.zeros((3, 5), np.uint8), 4)
    with pytest.raises(ValueError):
        pairs.cross_pairs(np.zeros((3, 8), np.uint8), np.zeros((3, 32), np.uint8), 4)


def write_list(path, codes, start=0):
    path.write_text("".join(f"pdq {c.tobytes().hex()} item-{start + k}\n"
                            for k, c in enumerate(codes)))


def links_of(collection):
    return {(a, b): (score, d["pdq"]) for a, b, score, d, _, _ in collection.catalog.links()}


def test_imported_lists_are_linked_new_against_old(tmp_path):
    rng = np.random.default_rng(3)
    codes = planted(rng, 1500, 32, 200, 31)
    codes = np.unique(codes, axis=0)  # an identical hash is one image, not a pair
    rng.shuffle(codes)
    first, second = codes[:900], codes[900:]
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        write_list(tmp_path / "one.txt", first)
        one = c.import_hashes(tmp_path / "one.txt", platform="p1")
        write_list(tmp_path / "two.txt", second, 900)
        two = c.import_hashes(tmp_path / "two.txt", platform="p2")
        links = links_of(c)
        again = c.link_pairs()
        ids = {bytes(v): i for i, v, _ in
               next(c.catalog.iter_signal("pdq", chunk=10_000))}
    expected = {}
    for i, j, d in scan(codes, None, 31):
        a, b = sorted((ids[codes[i].tobytes()], ids[codes[j].tobytes()]))
        expected[(a, b)] = d
    assert len(expected) > 100
    assert {k: v[1] for k, v in links.items()} == expected
    # each link scored as a query would score the pair (PDQ alone: the pdq model)
    assert all(abs(score - Evidence(hashes={"pdq": (d, True)}).score()) < 1e-9
               for score, d in links.values())
    assert one["links_added"] + two["links_added"] == len(expected)
    assert two["links_added"] > 0  # the second list found the first's
    assert again == {"pdq": {"searched": 0, "pairs": 0, "links_added": 0}}


def test_link_command_and_quality_gate(tmp_path, capsys):
    db = tmp_path / "c.db"
    base = np.random.default_rng(5).integers(0, 256, 32, dtype=np.uint8)
    near = base.copy()
    near[0] ^= 0b111
    other = near.copy()
    other[1] ^= 0b11
    listing = tmp_path / "meta.csv"  # Meta's hasher CSV carries a quality
    listing.write_text(f"{base.tobytes().hex()},90,a.jpg\n{near.tobytes().hex()},90,b.jpg\n"
                       f"{other.tobytes().hex()},20,dark.jpg\n")
    assert main(["--db", str(db), "import-hashes", str(listing), "--no-link", "--json"]) == 0
    assert "links_added" not in json.loads(capsys.readouterr().out)
    assert main(["--db", str(db), "link", "--workers", "2"]) == 0
    assert "2 new images searched, 1 pair within the threshold, 1 link added" in \
        capsys.readouterr().out
    assert main(["--db", str(db), "link", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pdq"]["searched"] == 0
    with imgmatch.Collection.open(db) as c:
        (cluster,) = [cl for cl in c.clusters() if len(cl.image_ids) > 1]
    assert sorted(s.source for s in cluster.sightings) == ["a.jpg", "b.jpg"]
    assert main(["--db", str(db), "link", "--signal", "phash"]) != 0
    assert "no phash values" in capsys.readouterr().err


def test_a_few_new_hashes_are_linked_through_the_index(tmp_path, monkeypatch):
    """Below one new code per FEW_NEW old ones the pass queries the tables; the
    links must be those the join would find."""
    rng = np.random.default_rng(11)
    codes = np.unique(planted(rng, 3000, 32, 100, 31), axis=0)
    rng.shuffle(codes)
    old, new = codes[:2980], codes[2980:]
    calls = []
    real = link_pass.old_neighbours
    monkeypatch.setattr(link_pass, "old_neighbours",
                        lambda *args: calls.append(len(args[3])) or real(*args))
    # plant near copies of old codes among the new ones
    new[:10] = old[:10] ^ np.eye(32, dtype=np.uint8)[:10] * 0b1011
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        write_list(tmp_path / "old.txt", old)
        c.import_hashes(tmp_path / "old.txt")
        write_list(tmp_path / "new.txt", new, 5000)
        summary = c.import_hashes(tmp_path / "new.txt")
        links = links_of(c)
        ids = {bytes(v): i for rows in c.catalog.iter_signal("pdq") for i, v, _ in rows}
    expected = {tuple(sorted((ids[codes[i].tobytes()], ids[codes[j].tobytes()]))): d
                for i, j, d in scan(codes, None, 31)}
    assert {k: v[1] for k, v in links.items()} == expected
    assert summary["links_added"] >= 10
    assert calls == [len(new)]  # the second list went through the index


def test_a_few_new_hashes_keep_the_quality_gate(tmp_path, monkeypatch):
    """The index path drops values below the gate on both sides, as the join does."""
    calls = []
    real = link_pass.old_neighbours
    monkeypatch.setattr(link_pass, "old_neighbours",
                        lambda *args: calls.append(len(args[3])) or real(*args))
    rng = np.random.default_rng(12)
    old = rng.integers(0, 256, (400, 32), dtype=np.uint8)
    dark, good = old[0], old[1]
    def near(code, byte):
        out = code.copy()
        out[byte] ^= 0b111
        return out
    def csv(rows):
        return "".join(f"{c.tobytes().hex()},{q},{name}\n" for c, q, name in rows)
    (tmp_path / "old.csv").write_text(csv([(dark, 20, "dark.jpg")] + [
        (c, 90, f"old-{k}.jpg") for k, c in enumerate(old[1:])]))
    (tmp_path / "new.csv").write_text(csv([(near(dark, 3), 90, "near-dark.jpg"),
                                           (near(good, 4), 10, "dark-copy.jpg"),
                                           (near(good, 5), 90, "good-copy.jpg")]))
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        assert c.import_hashes(tmp_path / "old.csv")["links_added"] == 0
        assert c.import_hashes(tmp_path / "new.csv")["links_added"] == 1
        ((a, b, _, distances, _, _),) = list(c.catalog.links())
        seen = c.catalog.sightings_of([a, b])
        sources = {s.source for s in seen[a] + seen[b]}
    assert sources == {"old-0.jpg", "good-copy.jpg"} and distances == {"pdq": 3}
    assert calls == [2]  # through the index; the dark copy never took part


def test_ingest_without_links_then_link_pass(tmp_path, capsys):
    """``ingest --no-link`` holds no index; the link pass then finds the pairs an
    ingest that links finds among the fixtures' reposts (those not mirrored or
    rotated), and queries see the new images. The pass compares hashes, so
    both ingests are of the hash tier (a robust ingest also links crops)."""
    from pathlib import Path

    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    args = ["ingest", "--manifest", str(fixtures / "manifest.csv"), "--workers", "0",
            "--quiet", "--json", "--fast"]
    assert main(["--db", str(tmp_path / "linked.db"), *args]) in (0, 1)
    linked = json.loads(capsys.readouterr().out)
    assert main(["--db", str(tmp_path / "later.db"), *args, "--no-link"]) in (0, 1)
    later = json.loads(capsys.readouterr().out)
    assert later["images_added"] == linked["images_added"] > 0
    assert later["links_added"] == 0 < linked["links_added"]
    assert not (tmp_path / "later.db.indexes").exists() or \
        not any((tmp_path / "later.db.indexes").iterdir())
    with imgmatch.Collection.open(tmp_path / "later.db") as c:
        assert c.catalog.counts()["links"] == 0
        found = c.link_pairs()
        pairs_later = {(a, b) for a, b, *_ in c.catalog.links()}
        hits = c.query(fixtures / "originals" / "astronaut.jpg")
    with imgmatch.Collection.open(tmp_path / "linked.db") as c:
        pairs_linked = {(a, b) for a, b, *_ in c.catalog.links()}
    assert sum(r["links_added"] for r in found.values()) == len(pairs_later) > 0
    # every pair the pass finds, the linking ingest found too; what it misses
    # are mirrored or rotated copies, found at ingest from the pixels
    assert pairs_later <= pairs_linked
    assert len(pairs_later) >= len(pairs_linked) // 2
    assert hits and hits[0].score > 0.99


def test_no_link_cannot_emit_matches(tmp_path, capsys):
    assert main(["--db", str(tmp_path / "c.db"), "ingest", "x.jpg", "--no-link",
                 "--emit-matches"]) == 2
    assert "--no-link" in capsys.readouterr().err


def test_an_open_collection_sees_images_ingested_without_links(tmp_path):
    """Indexes held before an ingest --no-link are behind the catalog after it:
    the next query must load them again and find the new images."""
    from pathlib import Path

    from imgmatch.sources import iter_paths

    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    first, later = sorted((fixtures / "originals").glob("*.jpg"))[:2]
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.ingest(iter_paths([first]), workers=0)
        assert c.query(first)[0].score > 0.99  # the indexes are now held
        summary = c.ingest(iter_paths([later]), workers=0, link=False)
        assert summary.images_added == 1 and summary.links_added == 0
        hits = c.query(later)
    assert hits and hits[0].score > 0.99
