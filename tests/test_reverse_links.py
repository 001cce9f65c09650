"""Links that do not depend on which image was catalogued first.

At ingest the newer image is the query and the older one the stored image.
The evidence model, fitted on edited copies querying their originals, is
not symmetric: a rotated copy catalogued after its original can score
under the match score while the original, catalogued after the copy,
scores a link. A candidate verified but not linked is verified the other
way round too (:func:`imgmatch.match.verify_reversed`); a query does the
same, so it finds what its ingest would link.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import imgmatch
from imgmatch import features, match
from imgmatch.evidence import Evidence, Verified

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "originals"


def jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def rotated(photo: Image.Image) -> Image.Image:
    """Turned 12 degrees on a white ground and squeezed back to its size."""
    return photo.rotate(12, expand=True, fillcolor=(255, 255, 255)).resize(photo.size)


@pytest.mark.parametrize("name", ["coffee", "rocket"])
@pytest.mark.parametrize("copy_first", [False, True])
def test_a_rotated_copy_is_linked_to_its_original_whichever_came_first(
        tmp_path: Path, name: str, copy_first: bool) -> None:
    # without verifying the other way round, these copies catalogued after
    # their original were not linked to it (their original, after them, was)
    photo = Image.open(FIXTURES / f"{name}.jpg").convert("RGB")
    images = [jpeg(photo), jpeg(rotated(photo))]
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        for data in images[::-1] if copy_first else images:
            collection.add_many([(data, None)])
        links = list(collection.catalog.links())
    assert len(links) == 1
    assert links[0][2] >= match.MATCH_SCORE


def _catalogued(tmp_path: Path, photo: Image.Image) -> tuple[imgmatch.Collection, int]:
    collection = imgmatch.Collection.open(tmp_path / "c.db")
    collection.add_many([(jpeg(photo), None)])
    (image_id,) = [i for i, in collection.catalog.conn.execute("SELECT id FROM images")]
    return collection, image_id


def _view(photo: Image.Image) -> match.LocalQuery:
    return features.extract_both(np.asarray(photo.convert("L")))


def test_a_weak_forward_verification_is_replaced_by_a_better_reverse_one(tmp_path) -> None:
    photo = Image.open(FIXTURES / "temple.jpg").convert("RGB")
    collection, image_id = _catalogued(tmp_path, photo)
    with collection:
        weak = Verified(inliers=25, support=1.0, spread=0.1, shared_area=0.2, aligned=77)
        found = {image_id: Evidence(verified=weak, robust=True)}
        before = match.link_score(found[image_id])
        assert before < match.MATCH_SCORE
        assert match.verify_reversed(collection.catalog, _view(rotated(photo)), found,
                                     match.MATCH_SCORE) == 1
        turned = found[image_id].verified
        assert turned is not None and turned.inliers > weak.inliers
        assert match.link_score(found[image_id]) > before
        # the aligned comparison of the pictures is kept, whichever way verified
        assert turned.aligned == 77


def test_linked_candidates_and_ones_without_geometry_are_not_verified_again(
        tmp_path) -> None:
    photo = Image.open(FIXTURES / "temple.jpg").convert("RGB")
    collection, image_id = _catalogued(tmp_path, photo)
    strong = Verified(inliers=300, support=300.0, spread=1.0, shared_area=1.0, overlap=0.6,
                      aligned=2)
    few = Verified(inliers=match.REVERSE_MIN_INLIERS - 1, support=1.0, spread=0.1,
                   shared_area=0.2)
    with collection:
        for verified in (strong, few):
            found = {image_id: Evidence(verified=verified, robust=True)}
            assert match.verify_reversed(collection.catalog, _view(rotated(photo)), found,
                                         match.MATCH_SCORE) == 0
            assert found[image_id].verified is verified


def test_a_query_finds_what_its_ingest_would_link(tmp_path: Path) -> None:
    # the copy queries its original: the direction that scored under the match
    # score (0.495) before candidates were verified the other way round
    photo = Image.open(FIXTURES / "coffee.jpg").convert("RGB")
    original, copy = jpeg(photo), jpeg(rotated(photo))
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.add_many([(original, None)])
        found = collection.query(copy, top_k=5)
        collection.add_many([(copy, None)])
        (link,) = collection.catalog.links()
    assert [m.image_id for m in found] == [link[0]]
    assert found[0].score >= link[2] >= match.MATCH_SCORE


def test_a_pair_verified_the_other_way_round_says_so(tmp_path: Path) -> None:
    photo = Image.open(FIXTURES / "coffee.jpg").convert("RGB")
    original, copy = tmp_path / "original.jpg", tmp_path / "copy.jpg"
    original.write_bytes(jpeg(photo))
    copy.write_bytes(jpeg(rotated(photo)))
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.add_many([(original, imgmatch.Sighting(source=str(original)))])
        (found,) = collection.query(copy, top_k=1)
        assert found.evidence["verification"]["reversed"] is True
        again = Evidence.from_json(found.evidence)
        assert again.verified is not None and again.verified.reversed
        assert again.settle() == pytest.approx(found.score, abs=1e-3)  # JSON rounds
        # an explanation weighs the pair as the query found it (the copy read again)
        collection.add_many([(copy, imgmatch.Sighting(source=str(copy)))])
        told = collection.explain(_sha(copy), _sha(original))
        assert told.verification is not None and told.verification["reversed"] is True
        assert told.score == pytest.approx(found.score)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_reverse_verification_aligns_where_the_forward_one_could_not(tmp_path) -> None:
    """The forward verification, too weak to align the pictures, left the pair
    without an aligned comparison; the reverse one moves the new image onto
    the older one's frame by its own similarity, inverted."""
    photo = Image.open(FIXTURES / "temple.jpg").convert("RGB")
    collection, image_id = _catalogued(tmp_path, photo)
    w, h = photo.size
    copy = photo.crop((w // 20, h // 20, w - w // 20, h - h // 10))
    with collection:
        weak = Verified(inliers=25, support=1.0, spread=0.1, shared_area=0.2)
        found = {image_id: Evidence(verified=weak, robust=True)}
        assert match.verify_reversed(collection.catalog, _view(copy), found, match.MATCH_SCORE,
                                     grey=np.asarray(copy.convert("L"))) == 1
        turned = found[image_id].verified
        assert turned is not None and turned.reversed
        assert turned.aligned is not None and turned.aligned <= match.CENTRE_AGREES
        assert match.link_score(found[image_id]) >= match.MATCH_SCORE


def test_a_reverse_alignment_keeps_two_pictures_in_one_frame_apart(tmp_path) -> None:
    def framed(name: str) -> Image.Image:
        photo = Image.open(FIXTURES / f"{name}.jpg").convert("RGB")
        out = ImageOps.expand(ImageOps.fit(photo, (240, 240)), border=140, fill="white")
        out.paste(ImageOps.fit(Image.open(FIXTURES / "coffee.jpg").convert("RGB"), (520, 130)),
                  (0, 0))
        out.paste(ImageOps.fit(Image.open(FIXTURES / "flower.jpg").convert("RGB"), (520, 130)),
                  (0, 390))
        return out

    collection, image_id = _catalogued(tmp_path, framed("astronaut"))
    other = framed("cat")
    with collection:
        weak = Verified(inliers=25, support=1.0, spread=0.1, shared_area=0.2)
        found = {image_id: Evidence(verified=weak, robust=True)}
        match.verify_reversed(collection.catalog, _view(other), found, match.MATCH_SCORE,
                              grey=np.asarray(other.convert("L")))
        turned = found[image_id].verified
        # the frame matched the other way round, enough to align: its pictures differ
        assert turned is not None and turned.reversed and turned.support >= match.ALIGN_SUPPORT
        assert turned.aligned is not None and turned.aligned > match.CENTRE_AGREES
        assert match.link_score(found[image_id]) < match.MATCH_SCORE


def test_a_verification_turned_round_inverts_its_similarity() -> None:
    photo = Image.open(FIXTURES / "temple.jpg").convert("L")
    query = features.extract(np.asarray(photo))
    stored = features.extract(np.asarray(photo.rotate(12, expand=True).resize((400, 300))))
    found = features.verify(query, stored)
    back = features.turned(found, query, stored)
    assert back is not None and back.support == found.support
    assert (back.query_share, back.stored_share) == (found.stored_share, found.query_share)
    forward = np.vstack([np.reshape(found.matrix, (2, 3)), [0, 0, 1]])
    backward = np.vstack([np.reshape(back.matrix, (2, 3)), [0, 0, 1]])
    assert np.allclose(backward @ forward, np.eye(3), atol=1e-9)
    again = features.turned(back, stored, query)
    assert again is not None and np.allclose(again.matrix, found.matrix)
    assert again.query_box == pytest.approx(found.query_box)
    assert features.turned(features.NO_MATCH, query, stored) is None
