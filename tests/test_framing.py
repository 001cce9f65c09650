"""A photo catalogued after the screenshot that shows it, or searched for.

The screenshot spent its keypoints on all of its screen, so few lie on the
photo: the photo's whole matches a part of it, weakly. Read again and cut
where the photo lies, that part matches the photo as a whole
(:func:`imgmatch.match.framing`, :func:`imgmatch.match.verify_within`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import imgmatch
from imgmatch import features, match
from imgmatch.evidence import PRECISE
from test_regions import FIXTURES, in_an_app, png


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def screen_then_photo(tmp_path) -> tuple[Path, Path]:
    """The rocket photo, and a phone screen showing it, as files."""
    photo = tmp_path / "rocket.jpg"
    photo.write_bytes((FIXTURES / "originals" / "rocket.jpg").read_bytes())
    screen = tmp_path / "screen.png"
    screen.write_bytes(png(in_an_app(Image.open(photo).convert("RGB"))[0]))
    return screen, photo


@pytest.mark.parametrize("framing", [2, 0])
def test_a_photo_catalogued_after_its_screenshot_links_to_it(
        tmp_path, monkeypatch, screen_then_photo, framing) -> None:
    """Without the cut (nor the parts the screen kept, which
    ``tests/test_parts.py`` tries), the photo's whole matches too little of
    the screen for a link; with it, the link is found, and stays weak (a
    part of the screen), as a screenshot catalogued after its photo is
    linked."""
    monkeypatch.setattr(match, "FRAMING_CANDIDATES", framing)
    monkeypatch.setattr(match, "KEEP_PARTS", False)
    screen, photo = screen_then_photo
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.add(screen)
        summary = collection.add_many([(photo, None)])
        record = collection.image(sha(photo))
    assert summary.images_reread == (1 if framing else 0)
    assert [link.sha256 for link in record.links] == ([sha(screen)] if framing else [])
    assert all(match.MATCH_SCORE <= link.score < PRECISE for link in record.links)


@pytest.mark.parametrize("aligned", [True, False])
def test_the_part_a_photo_lies_in_is_compared_with_it_aligned(
        tmp_path, monkeypatch, screen_then_photo, aligned) -> None:
    """Cut where the photo lies, the screen's part is compared with the
    photo moved onto it (PDQ), as a screenshot catalogued after its photo
    is: the pictures agree, not only their keypoints, and the link says so."""
    monkeypatch.setattr(match, "ALIGN_WITHIN", aligned)
    screen, photo = screen_then_photo
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.add(screen)
        collection.add_many([(photo, None)])
        (link,) = collection.image(sha(photo)).links
        explained = collection.explain(sha(photo), sha(screen))
    verification = explained.verification or {}
    assert verification.get("in_tile")
    if aligned:
        assert verification.get("aligned") is not None and verification["aligned"] <= 32
        assert link.score == pytest.approx(match.PARTIAL_LINK_CAP)
    else:
        assert verification.get("aligned") is None
        assert match.MATCH_SCORE <= link.score < match.PARTIAL_LINK_CAP


def test_a_photo_in_the_same_batch_as_its_screenshot_links_to_it(tmp_path,
                                                                 screen_then_photo) -> None:
    """The screenshot is read again from the source its sighting names,
    written before the batch's links are."""
    screen, photo = screen_then_photo
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        summary = collection.add_many([(screen, None), (photo, None)], workers=0)
        record = collection.image(sha(photo))
    assert summary.images_reread == 1
    assert [link.sha256 for link in record.links] == [sha(screen)]


@pytest.mark.parametrize("framing", [2, 0])
def test_a_query_finds_the_screenshot_that_shows_its_photo(
        tmp_path, monkeypatch, screen_then_photo, framing) -> None:
    """An investigator's photo, searched for: the screen is found through
    the cut where the photo lies, and not without it (nor the parts the
    screen kept, which find it too: tests/test_parts.py)."""
    monkeypatch.setattr(match, "FRAMING_CANDIDATES", framing)
    monkeypatch.setattr(match, "QUERY_PARTS", False)
    screen, photo = screen_then_photo
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.add(screen)
        found = collection.query(photo)
    assert [m.sha256 for m in found] == ([sha(screen)] if framing else [])
    assert all(m.evidence["verification"]["in_tile"] for m in found)


@pytest.mark.parametrize("parts", [False, True])
def test_a_screenshot_whose_file_is_gone_is_left_as_it_was(tmp_path, monkeypatch,
                                                          screen_then_photo, parts) -> None:
    """Its source no longer holds its bytes: the photo is catalogued all the
    same, without the link the cut would have found, unless the screen kept
    its parts when it was catalogued (:data:`imgmatch.match.KEEP_PARTS`):
    then the photo matches the part that shows it, from the catalog alone."""
    monkeypatch.setattr(match, "KEEP_PARTS", parts)
    screen, photo = screen_then_photo
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.add(screen)
        digest = sha(screen)
        screen.write_bytes(b"overwritten")
        summary = collection.add_many([(photo, None)])
        record = collection.image(sha(photo))
    assert summary.images_added == 1
    assert summary.images_reread == 0
    assert [link.sha256 for link in record.links] == ([digest] if parts else [])
    assert all(match.MATCH_SCORE <= link.score < PRECISE for link in record.links)


@settings(max_examples=60, deadline=None)
@given(x=st.integers(0, 300), y=st.integers(0, 300), side=st.integers(80, 400),
       angle=st.floats(-30, 30), zoom=st.sampled_from([1, 2, 4]))
def test_the_cut_holds_where_the_query_lies(x: int, y: int, side: int, angle: float,
                                            zoom: int) -> None:
    """Whatever the similarity that put the query in the stored image, and at
    whatever size the stored image is read again, the cut is the box the
    query's corners land in, widened by the margin and clipped to the image."""
    query = features.empty(200, 150)
    stored = features.empty(700, 700)
    scale = side / 200
    a, b = scale * np.cos(np.radians(angle)), scale * np.sin(np.radians(angle))
    found = features.Verification(50, 60, matrix=(a, -b, float(x), b, a, float(y)))
    corners = np.array([[0, 0], [200, 0], [200, 150], [0, 150]]) @ np.array([[a, b], [-b, a]]) \
        + [x, y]
    box = features.where_within(found, query, stored, (700 * zoom, 700 * zoom), 0.1)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    margin = 0.1 * (hi - lo)
    want = np.concatenate([np.maximum(0, (lo - margin) * zoom),
                           np.minimum(700 * zoom, (hi + margin) * zoom)])
    shortest = min(want[2] - want[0], want[3] - want[1])
    if shortest < features.MIN_SIDE - 1:
        assert box is None
    elif shortest > features.MIN_SIDE + 1:
        assert box is not None
        assert np.allclose(box, want, atol=1.0)


def test_two_screens_of_one_app_match_on_its_interface_alone(tmp_path) -> None:
    """Many inliers, every one on the interface: none on the photo the query
    frames, and the explanation says so."""
    cat, rocket = (tmp_path / f"{name}.png" for name in ("cat", "rocket"))
    for path in (cat, rocket):
        photo = Image.open(FIXTURES / "originals" / f"{path.stem}.jpg").convert("RGB")
        path.write_bytes(png(in_an_app(photo)[0]))
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.add(rocket)
        found = collection.query(cat, min_score=0)
        collection.add(cat)
        why = collection.explain(sha(cat), sha(rocket))
    verification = found[0].evidence["verification"]
    assert verification["inliers"] >= 50 and verification["framed_share"] == 0.0
    assert why.verification["framed_share"] == 0.0
    assert found[0].score < match.MATCH_SCORE
