"""A collage's links lie in its cells: where each link's evidence lies, and the
clusters' guard that keeps a collage from joining the pictures of two cells."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

import imgmatch
from imgmatch import cluster
from imgmatch.cluster import STRONG_SCORE, apart, composites, guarded_groups
from imgmatch.match import _in_part, _in_whole
from imgmatch.sources import iter_manifest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
STRONG = STRONG_SCORE + 0.01
LEFT, RIGHT, WHOLE = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0), (0.0, 0.0, 1.0, 1.0)


def _links(*edges):
    return [(a, b, score, ("orb",)) for a, b, score in edges]


# 1-3: copies of one photo; 4-5: copies of another; 6: a collage of the two,
# matched strongly to 1 in its left cell and to 4 in its right one
COLLAGE = _links((1, 2, 1.0), (2, 3, 1.0), (1, 3, 1.0), (4, 5, 1.0), (1, 6, STRONG + 0.005),
                 (4, 6, STRONG))
COLLAGE_REGIONS = {(1, 2): (WHOLE, WHOLE), (2, 3): (WHOLE, WHOLE), (1, 3): (WHOLE, WHOLE),
                   (4, 5): (WHOLE, WHOLE), (1, 6): (WHOLE, LEFT), (4, 6): (WHOLE, RIGHT)}


def test_a_collage_matched_strongly_in_two_cells_joins_one_picture():
    # without where the links lie, the collage joins the two groups: the
    # second is too small for the hub rule (HUB_PART) to see a hub
    assert guarded_groups(range(1, 7), COLLAGE) == [[1, 2, 3, 4, 5, 6]]
    assert composites(COLLAGE, COLLAGE_REGIONS) == {6: LEFT}  # its best link's cell
    assert guarded_groups(range(1, 7), COLLAGE, COLLAGE_REGIONS) == [[1, 2, 3, 6], [4, 5]]


def test_no_lone_image_attaches_through_a_collage():
    # 7, a copy of a third photo, links (weakly) to the collage's other cell
    links = COLLAGE + _links((6, 7, 0.9))
    regions = {**COLLAGE_REGIONS, (6, 7): (RIGHT, WHOLE)}
    assert [7] not in guarded_groups(range(1, 8), links)
    assert [7] in guarded_groups(range(1, 8), links, regions)


def test_the_guard_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(cluster, "COMPOSITE_GUARD", False)
    assert guarded_groups(range(1, 7), COLLAGE, COLLAGE_REGIONS) == [[1, 2, 3, 4, 5, 6]]


def test_crops_of_one_photo_are_not_a_collage():
    # a photo's crops lie over one another, and a logo's few inliers are too small to count
    links = _links((1, 2, 1.0), (1, 3, 1.0), (1, 4, 0.7))
    regions = {(1, 2): ((0.0, 0.0, 0.8, 0.8), WHOLE), (1, 3): ((0.2, 0.2, 1.0, 1.0), WHOLE),
               (1, 4): ((0.9, 0.9, 0.95, 0.95), WHOLE)}
    assert composites(links, regions) == {}
    assert guarded_groups(range(1, 5), links, regions) == [[1, 2, 3, 4]]


def test_apart_is_symmetric_and_judged_on_the_smaller_region():
    assert apart(LEFT, RIGHT) and apart(RIGHT, LEFT)
    assert not apart(WHOLE, LEFT)  # a cell lies within the whole
    assert not apart((0.0, 0.0, 0.5, 1.0), (0.35, 0.0, 0.85, 1.0))  # 30% of either shared


#: boxes over the middle: any two share more than :data:`imgmatch.cluster.APART`
boxes = st.tuples(st.floats(0, 0.3), st.floats(0, 0.3), st.floats(0.7, 1), st.floats(0.7, 1))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9),
                          st.sampled_from([0.6, 0.7, 0.9, STRONG, 1.0])), max_size=25),
       st.data())
def test_links_that_all_cover_the_middle_change_nothing(edges, data) -> None:
    """Regions that all cover the images' middle mark no composite: the
    clusters are those built without regions."""
    links = [(a, b, s, ("orb",)) for a, b, s in edges if a != b]
    regions = {(min(a, b), max(a, b)): (data.draw(boxes), data.draw(boxes))
               for a, b, _, _ in links}
    assert composites(links, regions) == {}
    assert guarded_groups(range(10), links, regions) == guarded_groups(range(10), links)


any_box = st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)).map(
    lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])))


@settings(max_examples=200, deadline=None)
@given(st.lists(any_box, min_size=2, max_size=12), st.integers(1, 5))
def test_an_image_is_a_composite_where_two_of_its_links_lie_apart(found, rows) -> None:
    """The blocked array test agrees with :func:`apart` over every pair."""
    links = [(0, n + 1, 1.0 - n / 100, ("orb",)) for n in range(len(found))]
    regions = {(0, n + 1): (box, WHOLE) for n, box in enumerate(found)}
    kept = [box for box in found if cluster._area(box) >= cluster.MIN_REGION]
    pairs = any(apart(a, b) for i, a in enumerate(kept) for b in kept[i + 1:])
    assert (0 in composites(links, regions)) == (len(kept) >= 2 and pairs)
    assert cluster._any_apart(np.array(kept or [WHOLE]), rows) == pairs


def _jpeg(img: Image.Image, path: Path) -> str:
    img.save(path, quality=90)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_link_records_where_its_evidence_lies_in_each_image(tmp_path):
    """The temple, its copy, its mirror, and a collage of the cat beside it:
    each link knows where its inliers lie in both images, mirrored back where
    one side was, and the collage's in its right-hand cell."""
    cat = Image.open(FIXTURES / "originals" / "cat.jpg").convert("RGB")
    temple = Image.open(FIXTURES / "originals" / "temple.jpg").convert("RGB")
    side = 400
    collage = Image.new("RGB", (2 * side, side))
    collage.paste(ImageOps.fit(cat, (side, side)), (0, 0))
    collage.paste(ImageOps.fit(temple, (side, side)), (side, 0))
    made = {}
    rows = ["path,platform,url"]
    for name, img in (("temple.jpg", temple), ("mirror.jpg", ImageOps.mirror(temple)),
                      ("small.jpg", temple.resize((temple.width * 2 // 3,
                                                   temple.height * 2 // 3))),
                      ("collage.jpg", collage)):
        made[name] = _jpeg(img, tmp_path / name)
        rows.append(f"{name},a,https://a.example/{name}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.ingest(iter_manifest(tmp_path / "m.csv"))
        regions = c.catalog.link_regions()
        ids = dict(c.catalog.conn.execute("SELECT sha256, id FROM images"))
    name = {ids[digest]: n for n, digest in made.items()}
    found = {(name[a], name[b]): boxes for (a, b), boxes in regions.items()}
    # the collage is catalogued last: the temple's box in it is its right cell
    temple_box, in_collage = found[("temple.jpg", "collage.jpg")]
    assert in_collage[0] >= 0.45 and in_collage[2] <= 1.0
    # the temple shows in the collage cut square: its box lies in the middle of the temple
    assert temple_box[0] >= 0.1 and temple_box[2] <= 0.9
    # a mirror's box is the original's, mirrored
    plain, mirrored = found[("temple.jpg", "mirror.jpg")]
    assert mirrored[0] == pytest.approx(1 - plain[2], abs=0.06)
    assert mirrored[2] == pytest.approx(1 - plain[0], abs=0.06)
    # a smaller copy's box is the same share of it
    plain, small = found[("temple.jpg", "small.jpg")]
    assert small == pytest.approx(plain, abs=0.03)
    for boxes in regions.values():
        for box in boxes:
            assert box is None or (0 <= box[0] <= box[2] <= 1 and 0 <= box[1] <= box[3] <= 1)


def test_links_stored_before_regions_were_kept_read_as_unknown(tmp_path):
    """A catalog whose links have no regions (written by an older version)
    clusters as before; a region this version cannot read counts as unknown."""
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.ingest(iter_manifest_of(tmp_path))
        c.catalog.conn.execute("UPDATE links SET regions = NULL")
        before = [cl.image_ids for cl in c.clusters(min_sightings=1)]
        assert c.catalog.link_regions() == {}
    con = sqlite3.connect(tmp_path / "c.db")
    with con:
        con.execute("UPDATE links SET regions = ?", (json.dumps(["left", None]),))
    con.close()
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        assert c.catalog.link_regions() == {}
        assert [cl.image_ids for cl in c.clusters(min_sightings=1)] == before


def iter_manifest_of(folder: Path):
    rows = ["path,platform,url"]
    for n, name in enumerate(("cat.jpg", "temple.jpg")):
        img = Image.open(FIXTURES / "originals" / name).convert("RGB")
        for k, copy in enumerate((img, ImageOps.mirror(img))):
            path = folder / f"{n}_{k}.jpg"
            _jpeg(copy, path)
            rows.append(f"{path.name},a,https://a.example/{path.name}")
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    return iter_manifest(folder / "m.csv")


@pytest.mark.parametrize("flipped", [False, True])
def test_a_tiles_box_is_placed_in_the_whole_image(flipped):
    grey = np.zeros((100, 200), np.uint8)
    # a tile: the right half of the grey, analysed 50 pixels wide (2 grey pixels each)
    box = _in_whole((5.0, 10.0, 25.0, 40.0), flipped, 50, grey, (100, 0, 200, 100))
    x0, x1 = (50 - 25, 50 - 5) if flipped else (5, 25)
    assert box == pytest.approx(((100 + 2 * x0) / 200, 20 / 100, (100 + 2 * x1) / 200, 80 / 100))
    assert _in_whole(None, flipped, 50, grey, (0, 0, 200, 100)) is None
    assert _in_whole((1.0, 1.0, 2.0, 2.0), flipped, 50, None, None) is None


def test_a_parts_box_is_placed_in_the_whole_image():
    from imgmatch.features import LocalFeatures

    whole = LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8), 200, 100)
    box = _in_part((0.0, 0.5, 1.0, 1.0), (100.0, 0.0, 200.0, 50.0), whole)
    assert box == pytest.approx((0.5, 0.25, 1.0, 0.5))
    assert _in_part(None, (0.0, 0.0, 1.0, 1.0), whole) is None
