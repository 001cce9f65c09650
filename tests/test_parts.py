"""A collage or a screenshot keeps its parts: a photo catalogued after it finds it.

At the whole image's size, a photo that fills a sixth of a collage is left
too few keypoints, too small, for the photo catalogued later to vote for
the collage or to match it. An image whose tiles were searched as it was
catalogued keeps their features (:attr:`imgmatch.features.LocalFeatures.parts`),
the vote index takes some of them, and a later photo is verified against
the part where it lies (:func:`imgmatch.match.verify_parts`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import imgmatch
from imgmatch import descriptors, features, match
from imgmatch.descriptors import DescriptorIndex
from imgmatch.errors import SignalError
from imgmatch.evidence import PRECISE
from test_regions import FIXTURES, PHOTOS, tiled


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _features(data, n: int, width: int, height: int) -> features.LocalFeatures:
    """Random features (points, descriptors, maybe a centre) from a drawn seed:
    drawing each byte would exhaust hypothesis's budget for a few parts."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    points = rng.uniform(0, 1, (n, 2)) * [width - 1, height - 1]
    return features.LocalFeatures(points.astype(np.float32),
                                  rng.integers(0, 256, (n, 32), dtype=np.uint8), width, height,
                                  rng.bytes(32) if data.draw(st.booleans()) else None)


@given(st.integers(0, 160), st.integers(0, 3), st.sampled_from(features.STORED_WIDTHS),
       st.data())
@settings(max_examples=30, deadline=None)
def test_a_blob_keeps_its_parts(n: int, parts: int, keep: int, data) -> None:
    """Parts round-trip with the image, at any stored width, and the vote
    index built from the blob holds what the ingest put in it: the image's
    rows, then each part's."""
    found = _features(data, n, 640, 480)
    kept = tuple(features.part_of(_features(data, data.draw(st.integers(0, 200)), 320, 240),
                                  (float(k), 2.0 * k, 320.0 + k, 240.0),
                                  None, data.draw(st.one_of(st.none(), st.just(b"\x01" * 32))))
                 for k in range(parts))
    found = dataclasses.replace(found, parts=kept)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(features, "STORED_BYTES", keep)
        blob = found.to_bytes()
        back = features.LocalFeatures.from_bytes(blob)
        again = features.LocalFeatures.from_bytes(back.to_bytes())
    assert features.has_parts(blob) == bool(parts)
    assert len(back.parts) == len(again.parts) == parts
    for was, part in zip(kept, back.parts):
        assert part.box == was.box and part.pdq == was.pdq
        assert len(part.features) == len(was.features) <= features.PART_FEATURES
        assert np.array_equal(part.features.descriptors, was.features.descriptors[:, :keep])
    built, rebuilt = DescriptorIndex(), DescriptorIndex()
    built.add(1, found)
    rebuilt.add(1, again)
    assert np.array_equal(built.codes, rebuilt.codes)
    assert len(built.codes) == min(n, descriptors.PER_IMAGE)
    rows = sum(min(len(p.features), descriptors.PER_PART) for p in kept)
    assert (built.kept.rows if built.kept else 0) == rows
    if rows:  # the parts' rows apart, under the image's id
        assert np.array_equal(built.kept.codes, rebuilt.kept.codes)
        assert set(built.kept.owners.tolist()) == {1}


def _with_parts() -> bytes:
    found = features.LocalFeatures(np.zeros((1, 2), np.float32), np.zeros((1, 32), np.uint8),
                                   8, 8)
    part = features.Part((0.0, 0.0, 4.0, 4.0), found)
    return dataclasses.replace(found, parts=(part,)).to_bytes()


@pytest.mark.parametrize("spoil", ["short", "long", "nested", "nan", "count"])
def test_bad_blobs_with_parts_are_refused(spoil: str) -> None:
    blob = _with_parts()
    head = struct.calcsize("<4sI")
    size = struct.unpack_from("<I", blob, 4)[0]
    bad = {"short": blob[:-3], "long": blob + b"\0",
           "nested": blob[:head] + blob[:4] + blob[head + 4:],
           "nan": blob[:head + size + 2] + struct.pack("<f", float("nan"))
           + blob[head + size + 6:],
           "count": blob[:head + size] + struct.pack("<H", 9) + blob[head + size + 2:]}[spoil]
    with pytest.raises(SignalError):
        features.LocalFeatures.from_bytes(bad)


@pytest.fixture()
def collage_then_rocket(tmp_path) -> tuple[Path, Path]:
    """Four photos cut square and set edge to edge, the rocket among them, and
    the rocket photo itself, as files."""
    rocket = tmp_path / "rocket.jpg"
    rocket.write_bytes((FIXTURES / "originals" / "rocket.jpg").read_bytes())
    others = [p for p in PHOTOS if p.name != "rocket.jpg"][:3]
    collage = tmp_path / "collage.jpg"
    tiled(others[:1] + [rocket] + others[1:], 2, 320, 0).save(collage, "JPEG", quality=85)
    return collage, rocket


@pytest.mark.parametrize("keep", [True, False])
def test_a_photo_catalogued_after_a_collage_of_it_links_to_it(
        tmp_path, monkeypatch, collage_then_rocket, keep) -> None:
    """The collage's cell, kept as a part, is what the rocket votes for and
    matches; the collage's file is gone by then, so no part of it can be
    read again. Without parts, the rocket finds nothing."""
    monkeypatch.setattr(match, "KEEP_PARTS", keep)
    collage, rocket = collage_then_rocket
    digest = sha(collage)
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.add_many([(collage, None)])
        collage_id = collection.catalog.conn.execute(
            "SELECT id FROM images WHERE sha256 = ?", (digest,)).fetchone()[0]
        collage.write_bytes(b"gone")
        summary = collection.add_many([(rocket, None)])
        record = collection.image(sha(rocket))
        blob = collection.catalog.features_of([collage_id])[collage_id]
        index = collection.descriptors
        assert index is not None
        ingested = [index.codes[index.owners == collage_id]] + (
            [index.kept.codes[index.kept.owners == collage_id]] if index.kept else [])
    assert summary.images_reread == 0
    stored = features.LocalFeatures.from_bytes(blob)
    assert (len(stored.parts) >= 5) == keep
    assert [link.sha256 for link in record.links] == ([digest] if keep else [])
    assert all(match.MATCH_SCORE <= link.score < PRECISE for link in record.links)
    # the index the ingest grew holds what one built again from the catalog would
    rebuilt = DescriptorIndex()
    rebuilt.add(collage_id, stored)
    assert len(ingested) == (2 if keep else 1)
    assert np.array_equal(ingested[0], rebuilt.codes)
    if keep:
        assert np.array_equal(ingested[1], rebuilt.kept.codes)


def test_a_photo_in_the_same_batch_as_its_collage_links_to_it(tmp_path,
                                                              collage_then_rocket) -> None:
    """The collage's parts are indexed as soon as it is linked, so the rocket
    later in the same batch votes for them, as it would in the next batch."""
    collage, rocket = collage_then_rocket
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.add_many([(collage, None), (rocket, None)], workers=0)
        record = collection.image(sha(rocket))
    assert [link.sha256 for link in record.links] == [sha(collage)]


@pytest.mark.parametrize("query_parts", [True, False])
def test_a_query_with_a_photo_finds_the_collage_that_kept_it(
        tmp_path, monkeypatch, collage_then_rocket, query_parts) -> None:
    """An investigator's photo, searched for among collages: the collage's
    file is gone, and its cell, kept as a part, is what the rocket matches."""
    monkeypatch.setattr(match, "QUERY_PARTS", query_parts)
    collage, rocket = collage_then_rocket
    digest = sha(collage)
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.add_many([(collage, None)])
        collage.write_bytes(b"gone")
        found = {m.sha256: m.score for m in collection.query(str(rocket))}
    if query_parts:
        assert match.MATCH_SCORE <= found[digest]
    else:
        assert digest not in found


def test_parts_are_saved_reopened_erased_and_voted_for_apart(tmp_path) -> None:
    """The parts' rows are an index of their own inside the image index: saved
    and reopened with it, erased with their image, and voted for only when
    asked, as a candidate of their own (the image's id, marked)."""
    photo = features.extract(np.asarray(Image.open(PHOTOS[0]).convert("L")))
    part = features.part_of(photo, (0.0, 0.0, 100.0, 100.0), None, None)
    index = DescriptorIndex()
    index.add(1, features.extract(np.asarray(Image.open(PHOTOS[1]).convert("L"))))
    index.add(2, dataclasses.replace(features.empty(640, 480), parts=(part,)))
    assert (index.rows, index.kept.rows, len(index)) == (descriptors.PER_IMAGE,
                                                         descriptors.PER_PART, 1)
    descriptors.save(index, tmp_path / "i", collection_id="c", deletions=0, images=2)
    again, _ = descriptors.load(tmp_path / "i", collection_id="c")
    assert np.array_equal(again.kept.codes, index.kept.codes)
    query = [photo]
    # the query is the photo the part was cut from: its votes reach the part
    # only when asked, and then as a candidate of its own
    assert all(i == 1 for i, _ in again.candidates(query, 4))
    voted = descriptors.votes_across([(again, None)], query, 4, kept_parts=True)
    assert voted[0][0] == 2 | descriptors.PART_OWNER and sum(voted[0][1]) >= descriptors.PER_PART // 2
    assert again.remove(np.array([2])) == descriptors.PER_PART
    assert again.kept.rows == 0 and again.rows == descriptors.PER_IMAGE
