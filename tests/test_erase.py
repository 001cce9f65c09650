"""Erasing an image removes every trace of it, without rebuilding the indexes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import imgmatch
from imgmatch.index_cache import IndexCache
from imgmatch.sources import iter_manifest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
QUERY = FIXTURES / "queries" / "astronaut_mirror_crop10.jpg"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_erase_removes_rows_links_and_index_entries(catalog_address, tmp_path, monkeypatch):
    db = catalog_address
    original = sha(FIXTURES / "originals" / "astronaut.jpg")
    with imgmatch.Collection.open(db) as c:
        c.ingest(iter_manifest(FIXTURES / "manifest.csv"), thumbnails=True)
        before = {m.sha256 for m in c.query(QUERY)}
        assert original in before
        assert c.erase([original]) == 1
        with pytest.raises(imgmatch.ImgmatchError):
            c.image(original)
        assert original not in {m.sha256 for m in c.query(QUERY)}
        counts = c.catalog.counts()
        assert counts["images"] == 19 and counts["sightings"] == 20
        leftovers = c.catalog.conn.execute(
            "SELECT (SELECT count(*) FROM signals s LEFT JOIN images i ON i.id = s.image_id "
            "WHERE i.id IS NULL) + (SELECT count(*) FROM thumbnails t LEFT JOIN images i "
            "ON i.id = t.image_id WHERE i.id IS NULL)").fetchone()[0]
        assert leftovers == 0
        assert all(original not in {img["sha256"] for img in cl.images} for cl in c.clusters())

    # reopening trusts the saved indexes (no rebuild) and gives the same answers
    def no_rebuild(self, name):
        raise AssertionError(f"the {name} index was rebuilt")

    monkeypatch.setattr(IndexCache, "_build_hashes", no_rebuild)
    with imgmatch.Collection.open(db, readonly=True) as c:
        after = [(m.sha256, m.score) for m in c.query(QUERY)]
    monkeypatch.undo()
    with imgmatch.Collection.open(db) as c:
        c.reindex()
        rebuilt = [(m.sha256, m.score) for m in c.query(QUERY)]
    assert after == rebuilt and original not in {s for s, _ in after}


def test_an_index_saved_before_an_erase_is_not_trusted(catalog_address, tmp_path):
    db = catalog_address
    photo = FIXTURES / "originals" / "cat.jpg"
    with imgmatch.Collection.open(db) as c:
        c.add(photo)
    # erase through a second handle whose indexes are not written back
    with imgmatch.Collection.open(db) as c:
        c.catalog.erase([c.catalog.image_id(sha(photo))])
        c._cache.forget()  # as if the process died before saving its indexes
    with imgmatch.Collection.open(db, readonly=True) as c:
        assert c.query(photo) == []


def test_erasing_an_unknown_image_is_an_error(catalog_address, tmp_path):
    with imgmatch.Collection.open(catalog_address) as c:
        with pytest.raises(imgmatch.ImgmatchError, match="no image"):
            c.erase(["0" * 64])
