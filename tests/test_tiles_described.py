"""Tiles described by the worker: a collage's or a screenshot's tiles are
described where it is analysed (:data:`imgmatch.analysis.DESCRIBE_TILES`),
so the linker, an ingest's one serial stage, only searches them; the links
are the ones it made describing them itself."""

from __future__ import annotations

import pytest
import imgmatch
from imgmatch import analysis, features
from imgmatch.signals import ROBUST_SIGNALS

from conftest import ORIGINALS
from test_features import jpeg, rgb
from test_regions import PHOTOS, tiled


def _links(tmp_path, name: str) -> set[tuple[str, str, float]]:
    """A collage of six photos edge to edge (its seams make its tiles worth
    searching), catalogued after one of them; its links."""
    rocket = ORIGINALS / "rocket.jpg"
    others = [p for p in PHOTOS if p != rocket][:5]
    collage = tmp_path / f"{name}.jpg"
    tiled(others[:2] + [rocket] + others[2:], 3, 300, 0).save(collage, "JPEG", quality=85)
    with imgmatch.Collection.open(tmp_path / f"{name}.db") as c:
        c.add(rocket)
        assert c.add_many([(collage, None)], workers=0).images_tiled == 1
        rows = c.catalog.conn.execute(
            "SELECT a.sha256, b.sha256, l.score FROM links l JOIN images a ON a.id = l.a "
            "JOIN images b ON b.id = l.b").fetchall()
    return {(a, b, round(score, 6)) for a, b, score in rows}


def test_the_linker_searches_the_tiles_the_worker_described(tmp_path, monkeypatch) -> None:
    described_by: list[str] = []
    describe = features.described_views

    def counted(*args, **kwargs):
        import inspect

        described_by.append(inspect.stack()[1].function)
        return describe(*args, **kwargs)

    monkeypatch.setattr(features, "described_views", counted)
    ready = _links(tmp_path, "ready")
    assert "_measure" in described_by and "_search_tiles" not in described_by
    described_by.clear()
    monkeypatch.setattr(analysis, "DESCRIBE_TILES", False)
    itself = _links(tmp_path, "itself")
    assert described_by and set(described_by) == {"_search_tiles"}
    assert len(ready) == 1  # the collage to the rocket
    assert ready == itself


@pytest.mark.parametrize("name", ["astronaut", "temple"])
def test_a_photo_is_not_described_as_tiles(name) -> None:
    found = analysis.analyse(jpeg(rgb(name)), ROBUST_SIGNALS)
    assert found.tiles is None
