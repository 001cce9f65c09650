"""Local features and geometric verification: the robust tier's evidence."""

from __future__ import annotations

import dataclasses
import hashlib
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFilter, ImageOps

import imgmatch
from imgmatch import descriptors, features, match
from imgmatch.descriptors import DescriptorIndex
from imgmatch.errors import IndexFileError, SignalError
from imgmatch.evidence import PRECISE, STRONG_SUPPORT
from imgmatch.signals import ROBUST_SIGNALS

from conftest import FIXTURES, ORIGINALS

#: what a verification must reach for local features to count as agreeing
INLIERS_AT_THRESHOLD = STRONG_SUPPORT / 2

PHOTOS = ("astronaut", "cat", "coffee", "flower", "rocket", "temple")


def rgb(name: str) -> Image.Image:
    return Image.open(ORIGINALS / f"{name}.jpg").convert("RGB")


def grey(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"))


def jpeg(image: Image.Image, quality: int = 80) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def support(query: Image.Image, stored: Image.Image) -> float:
    plain, mirrored = features.extract_both(grey(query))
    result, _ = features.best_of(plain, mirrored, features.extract(grey(stored)))
    return result.support


def crop(image: Image.Image, share: float, dx: float = 0.3, dy: float = 0.2) -> Image.Image:
    """Keep ``share`` of the area, off-centre."""
    w, h = image.size
    cw, ch = int(w * share ** 0.5), int(h * share ** 0.5)
    x, y = int((w - cw) * dx), int((h - ch) * dy)
    return image.crop((x, y, x + cw, y + ch))


def collage(images: list[Image.Image], cell: int = 300) -> Image.Image:
    out = Image.new("RGB", (2 * cell, 2 * cell), "white")
    for n, image in enumerate(images[:4]):
        out.paste(ImageOps.fit(image, (cell - 8, cell - 8)), ((n % 2) * cell + 4,
                                                               (n // 2) * cell + 4))
    return out


def screenshot(image: Image.Image) -> Image.Image:
    """The photo inside a phone's interface: bars, text, a button, a caption."""
    phone = Image.new("RGB", (540, 1100), (245, 245, 245))
    draw = ImageDraw.Draw(phone)
    draw.rectangle((0, 0, 540, 70), fill=(30, 30, 30))
    draw.text((20, 25), "12:41   LTE   87%", fill="white")
    photo = ImageOps.contain(image, (520, 700))
    phone.paste(photo, (10, 120))
    draw.rectangle((20, 860, 520, 930), fill=(0, 120, 255))
    draw.text((40, 885), "Call now 555-0142  available tonight", fill="white")
    draw.text((20, 960), "Posted 2 hours ago  *  Houston", fill=(90, 90, 90))
    return phone


EDITS = {
    "crop 40%": lambda im: crop(im, 0.6),
    "mirror and crop": lambda im: ImageOps.mirror(crop(im, 0.7, 0.6, 0.5)),
    "tilt 8 degrees": lambda im: im.rotate(8, resample=Image.Resampling.BICUBIC, expand=False)
    .crop((40, 40, im.width - 40, im.height - 40)),
    "letterbox 9:16": lambda im: ImageOps.pad(im, (im.width, int(im.width * 16 / 9)),
                                              color=(0, 0, 0)),
    "blurred pillarbox": lambda im: _blur_frame(im),
    "phone number banner": lambda im: _banner(im),
    "emoji over the face": lambda im: _sticker(im),
    "screenshot": screenshot,
    "quarter of a collage": lambda im: collage([im, rgb("coffee"),
                                                rgb("flower"), rgb("rocket")]),
    "half size, jpeg 40": lambda im: Image.open(io.BytesIO(jpeg(
        im.resize((im.width // 2, im.height // 2)), 40))),
}


def _blur_frame(im: Image.Image) -> Image.Image:
    back = im.resize((im.width * 2, im.height)).filter(ImageFilter.GaussianBlur(20))
    back.paste(im, (im.width // 2, 0))
    return back


def _banner(im: Image.Image) -> Image.Image:
    out = im.copy()
    draw = ImageDraw.Draw(out)
    h = out.height // 8
    draw.rectangle((0, out.height - h, out.width, out.height), fill=(200, 0, 60))
    draw.text((10, out.height - h + 5), "CALL 555-0142 www.example-ads.test", fill="white")
    return out


def _sticker(im: Image.Image) -> Image.Image:
    out = im.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    draw.ellipse((w * 0.35, h * 0.1, w * 0.65, h * 0.4), fill=(255, 205, 0))
    return out


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_edited_reposts_are_verified(edit: str) -> None:
    original = rgb("astronaut")
    assert support(EDITS[edit](original), original) >= INLIERS_AT_THRESHOLD


@pytest.mark.parametrize("query,stored", [("astronaut", "cat"), ("coffee", "temple"),
                                          ("rocket", "flower"), ("temple", "astronaut")])
def test_different_photos_are_not_verified(query: str, stored: str) -> None:
    assert support(rgb(query), rgb(stored)) < INLIERS_AT_THRESHOLD / 2


def test_a_shared_watermark_is_not_a_shared_photo() -> None:
    """Two different photos stamped with the same site logo share only the logo."""
    def stamp(im: Image.Image) -> Image.Image:
        out = ImageOps.fit(im, (600, 600))
        draw = ImageDraw.Draw(out)
        draw.rectangle((380, 520, 590, 590), fill=(20, 20, 20))
        for n, text in enumerate(("NIGHT ADS", "555-0199", "nightads.test")):
            draw.text((390, 525 + 20 * n), text, fill=(255, 255, 255))
        draw.polygon([(395, 580), (420, 540), (445, 580)], outline="white")
        return out
    assert support(stamp(rgb("coffee")), stamp(rgb("temple"))) < INLIERS_AT_THRESHOLD



def _sign(glyph: str, size: int = 600) -> Image.Image:
    """A round road sign: a white-rimmed blue disc, and a white glyph in it."""
    out = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(out)
    c, r = size // 2, int(size * 0.42)
    draw.ellipse((c - r, c - r, c + r, c + r), fill=(30, 90, 200), outline=(255, 255, 255))
    draw.ellipse((c - r - 6, c - r - 6, c + r + 6, c + r + 6), outline=(200, 200, 200), width=3)
    if glyph == "bar":
        draw.rectangle((c - r * 0.7, c - r * 0.18, c + r * 0.7, c + r * 0.18), fill="white")
    else:
        for sign in (1, -1):
            draw.line((c - r * 0.5, c - sign * r * 0.5, c + r * 0.5, c + sign * r * 0.5),
                      fill="white", width=int(r * 0.2))
    return out


def test_one_ring_repeated_is_not_a_shared_picture() -> None:
    """Two different signs in the same ring: ORB finds the ring's one patch all
    round it, and RANSAC aligns hundreds of them. They are repeats of one
    pattern, not evidence, so the support stays under agreement; a photo's
    copy keeps its support whole."""
    bar, cross = (features.extract(grey(_sign(g))) for g in ("bar", "cross"))
    ring = features.verify(bar, cross)
    assert ring.inliers >= 100 and ring.repeated > 0.9
    assert ring.support < INLIERS_AT_THRESHOLD / 2
    photo = rgb("astronaut")
    copy = features.verify(features.extract(grey(EDITS["crop 40%"](photo))),
                           features.extract(grey(photo)))
    assert copy.repeated < 1 - features.FULL_DISTINCT
    undiscounted = dataclasses.replace(copy, repeated=0.0)
    assert copy.support == undiscounted.support >= INLIERS_AT_THRESHOLD


@given(st.integers(4, 60), st.integers(0, 2 ** 32 - 1), st.integers(0, 40))
@settings(max_examples=60, deadline=None)
def test_a_twin_is_another_descriptor_within_twin_bits(n, seed, flips) -> None:
    """Against counting the bits of every pair; with planted near-copies and
    exact duplicates."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, features.DESCRIPTOR_BYTES), dtype=np.uint8)
    for row in rng.choice(n, n // 3, replace=False):
        codes[row] = codes[rng.integers(n)]
        for bit in rng.choice(256, rng.integers(0, flips + 1), replace=False):
            codes[row, bit // 8] ^= np.uint8(1 << (bit % 8))
    rows = rng.choice(n, rng.integers(1, n + 1), replace=False)
    bits = np.unpackbits(codes[rows][:, None, :] ^ codes[None, :, :], axis=2).sum(axis=2)
    bits[np.arange(len(rows)), rows] = 1 << 20  # a descriptor is not its own twin
    expected = bits.min(axis=1) <= features.TWIN_BITS
    assert np.array_equal(features._twinned(codes, rows), expected)

@pytest.mark.parametrize("mode", ["1", "P", "RGBA", "CMYK", "I;16", "F"])
def test_every_mode_gives_at_most_the_budget(mode: str) -> None:
    """Bilevel images tie many corner responses; the budget still holds."""
    from imgmatch.analysis import analyse

    image = rgb("cat").convert("L").convert("I;16") if mode == "I;16" else rgb("cat").convert(mode)
    out = io.BytesIO()
    image.save(out, "TIFF")
    analysis = analyse(out.getvalue(), ROBUST_SIGNALS)
    assert analysis.image is not None
    assert 0 < analysis.image.features[1] <= features.MAX_FEATURES


def test_plain_images_give_no_features() -> None:
    flat = np.full((300, 400), 128, np.uint8)
    assert len(features.extract(flat)) == 0
    assert features.verify(features.extract(flat), features.extract(flat)).inliers == 0
    assert len(features.extract(np.zeros((10, 10), np.uint8))) == 0


def test_features_are_scaled_and_strongest_first() -> None:
    big = rgb("astronaut").resize((1600, 1600))
    found = features.extract(grey(big))
    assert max(found.width, found.height) == features.SIDE
    assert 100 < len(found) <= features.MAX_FEATURES
    assert found.points.max() < features.SIDE


def test_blob_round_trip_keeps_what_verification_needs() -> None:
    found = features.extract(grey(rgb("cat")))
    back = features.LocalFeatures.from_bytes(found.to_bytes())
    assert np.array_equal(back.descriptors, found.descriptors)
    assert np.abs(back.points - found.points).max() <= 0.125
    assert features.verify(back, found).inliers >= 0.9 * len(found)


@given(st.integers(0, 160), st.integers(1, 2000), st.integers(1, 2000),
       st.sampled_from(features.STORED_WIDTHS), st.booleans(), st.data())
@settings(max_examples=40, deadline=None)
def test_blob_round_trip_property(n: int, width: int, height: int, keep: int, centre: bool,
                                  data) -> None:
    xs = data.draw(st.lists(st.floats(0, width - 1, allow_nan=False), min_size=n, max_size=n))
    ys = data.draw(st.lists(st.floats(0, height - 1, allow_nan=False), min_size=n, max_size=n))
    desc = np.frombuffer(data.draw(st.binary(min_size=32 * n, max_size=32 * n)), np.uint8)
    found = features.LocalFeatures(np.array([xs, ys], np.float32).T.reshape(-1, 2),
                                   desc.reshape(n, 32), width, height,
                                   bytes(range(32)) if centre else None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(features, "STORED_BYTES", keep)
        back = features.LocalFeatures.from_bytes(found.to_bytes())
        again = features.LocalFeatures.from_bytes(back.to_bytes())  # stored again alike
    assert (back.width, back.height, len(back), back.centre) == \
        (width, height, n, found.centre)
    assert np.array_equal(back.descriptors, found.descriptors[:, :keep])
    assert np.all(np.abs(back.points - found.points) <= 0.125)
    # the rows the vote index takes are whole, read back as the ingest had them
    rows = features.balanced(back, features.INDEXED_ROWS)
    assert np.array_equal(back.whole_descriptors(rows), found.descriptors[rows])
    assert np.array_equal(again.descriptors, back.descriptors)
    assert np.array_equal(again.whole_descriptors(rows), found.descriptors[rows])


@pytest.mark.parametrize("kept", [16, 8])
def test_descriptors_stored_in_part_are_compared_on_what_both_sides_have(monkeypatch, kept):
    """A blob may keep the first bytes of each descriptor (issue 15's disk
    target, measured) and the rows the vote index takes whole: it reads back
    at that width, a full query still verifies against it on the bytes both
    have, and the vote index is built again from it as the ingest built it."""
    found = features.extract(grey(rgb("cat")))
    monkeypatch.setattr(features, "STORED_BYTES", kept)
    back = features.LocalFeatures.from_bytes(found.to_bytes())
    assert back.descriptors.shape == (len(found), kept)
    assert np.array_equal(back.descriptors, found.descriptors[:, :kept])
    copy = features.extract(grey(rgb("cat").resize((400, 300))))
    assert features.verify(copy, back).inliers >= 0.5 * features.verify(copy, found).inliers > 50
    dist, _ = features.nearest_two(found.descriptors, back.descriptors)
    assert np.all(dist[:, 0] == 0)  # each finds its own row, on 256 bits' scale
    # the vote index built again from the blob holds what the ingest put in it
    built, again = DescriptorIndex(), DescriptorIndex()
    built.add(1, found)
    again.add(1, back)
    assert np.array_equal(built.codes, again.codes) and len(again.codes) == descriptors.PER_IMAGE
    narrow = dataclasses.replace(back, whole_rows=back.whole_rows[:10], whole=back.whole[:10])
    with pytest.raises(SignalError, match="keep PER_IMAGE at most INDEXED_ROWS"):
        DescriptorIndex().add(1, narrow)  # rows it lacks whole: said, not half rows indexed


def _brute_nearest_two(q: np.ndarray, s: np.ndarray, q_whole, s_whole, keep: int
                       ) -> np.ndarray:
    """The two smallest distances of each query row by brute force: on 256
    bits where both rows are whole, else on ``keep`` bytes scaled to 256."""
    bits = np.unpackbits(q[:, None, :] ^ s[None, :, :], axis=2)
    full = bits.sum(axis=2)
    part = bits[:, :, :8 * keep].sum(axis=2) * (32 // keep)
    both = np.zeros(full.shape, bool)
    both[np.ix_(q_whole, s_whole)] = True
    return np.sort(np.where(both, full, part), axis=1)[:, :2]


@given(st.integers(4, 40), st.integers(4, 40), st.sampled_from((8, 16)), st.data())
@settings(max_examples=40, deadline=None)
def test_rows_kept_whole_on_both_sides_are_compared_on_all_their_bits(m, n, keep, data) -> None:
    q = np.frombuffer(data.draw(st.binary(min_size=32 * m, max_size=32 * m)), np.uint8)
    s = np.frombuffer(data.draw(st.binary(min_size=32 * n, max_size=32 * n)), np.uint8)
    q, s = q.reshape(m, 32), s.reshape(n, 32)
    s_whole = np.array(sorted(data.draw(st.sets(st.integers(0, n - 1)))), np.int64)
    stored = features.LocalFeatures(np.zeros((n, 2), np.float32), s[:, :keep].copy(), 64, 64,
                                    whole_rows=s_whole, whole=s[s_whole])
    query = features.LocalFeatures(np.zeros((m, 2), np.float32), q, 64, 64)
    dist, rows = features.nearest_features(query, stored)
    expected = _brute_nearest_two(q, s, np.arange(m), s_whole, keep)
    assert np.array_equal(np.sort(dist, axis=1), expected)
    # and the rows named are at those distances
    for i in range(m):
        for d, r in zip(dist[i], rows[i]):
            whole = r in set(s_whole.tolist())
            bits = np.unpackbits(q[i] ^ s[r]) if whole else \
                np.unpackbits(q[i, :keep] ^ s[r, :keep])
            assert d == bits.sum() * (1 if whole else 32 // keep)
    # a query read from a blob (in part, some rows whole) against a whole image
    swapped = features.nearest_features(
        dataclasses.replace(stored, points=np.zeros((n, 2), np.float32)),
        dataclasses.replace(query, points=np.zeros((m, 2), np.float32)))[0]
    assert np.array_equal(np.sort(swapped, axis=1),
                          _brute_nearest_two(s, q, s_whole, np.arange(m), keep))


@pytest.mark.parametrize("blob", [b"", b"ORB1", b"XXXX\x01\x00\x10\x00\x10\x00" + b"\0" * 36,
                                  b"ORB1\x02\x00\x10\x00\x10\x00" + b"\0" * 36])
def test_bad_blobs_are_refused(blob: bytes) -> None:
    with pytest.raises(SignalError):
        features.LocalFeatures.from_bytes(blob)


# ------------------------------------------------------------ descriptor index
def test_descriptor_votes_rank_the_source_first() -> None:
    index = DescriptorIndex()
    for n, name in enumerate(PHOTOS, start=1):
        index.add(n, features.extract(grey(rgb(name))))
    query = features.extract_both(grey(EDITS["screenshot"](rgb("temple"))))
    found = index.candidates(list(query), 3)
    assert found[0][0] == PHOTOS.index("temple") + 1
    assert found[0][1] > 2 * (found[1][1] if len(found) > 1 else 0)
    assert index.candidates(list(query), 3, exclude_from=PHOTOS.index("temple") + 1)[0][0] \
        != PHOTOS.index("temple") + 1
    assert index.remove(np.array([PHOTOS.index("temple") + 1])) > 0
    assert all(i != PHOTOS.index("temple") + 1 for i, _ in index.candidates(list(query), 6))


def test_a_mirrored_copy_votes_through_the_mirror_and_only_that_is_verified() -> None:
    from imgmatch.match import LINK_ORIENTATION_VOTES, _worth_verifying

    index = DescriptorIndex()
    for n, name in enumerate(PHOTOS, start=1):
        index.add(n, features.extract(grey(rgb(name))))
    temple = PHOTOS.index("temple") + 1
    for edit, side in (("mirror and crop", 1), ("screenshot", 0)):
        query = list(features.extract_both(grey(EDITS[edit](rgb("temple")))))
        split = index.votes_by_set(query, 3)
        assert [(i, sum(v)) for i, v in split] == index.candidates(query, 3)
        votes = dict(split)[temple]
        # the right orientation casts most of the votes (voting with rows
        # spread over a symmetric temple, the other casts a third of them)
        assert votes[side] > 2 * votes[1 - side]
        assert _worth_verifying(votes)[side]
        # a weak candidate's votes come from one side: the other is not verified
        weak = [v for i, v in split if i != temple and sum(v)]
        assert weak and all(_worth_verifying(v) != (True, True) for v in weak)
    assert _worth_verifying((30, LINK_ORIENTATION_VOTES)) == (True, True)
    assert _worth_verifying((8, 4)) == (True, False)
    assert _worth_verifying((0, 6)) == (False, True)
    assert _worth_verifying((5, 5)) == (True, False)  # a tie: the image as it is
    # a query without a mirror votes with one set
    plain = features.extract(grey(rgb("temple")))
    assert dict(index.votes_by_set([plain], 1))[temple][0] > 0


def test_descriptor_index_files_are_verified(tmp_path) -> None:
    from imgmatch import descriptors

    index = DescriptorIndex()
    index.add(7, features.extract(grey(rgb("cat"))))
    path = tmp_path / "orb.descriptors"
    descriptors.save(index, path, collection_id="c1", deletions=0, images=1)
    back, manifest = descriptors.load(path, collection_id="c1")
    assert manifest.count == 1 and np.array_equal(back.owners, index.owners)
    with pytest.raises(IndexFileError):
        descriptors.load(path, collection_id="another")
    damaged = path / "meta.npy"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x07")
    with pytest.raises(IndexFileError):
        descriptors.load(path, collection_id="c1")
    # the codes are memory-mapped, not digested: a truncated file is still refused
    descriptors.save(index, path, collection_id="c1", deletions=0, images=1)
    codes = path / "codes.npy"
    codes.write_bytes(codes.read_bytes()[:-32])
    with pytest.raises(IndexFileError):
        descriptors.load(path, collection_id="c1")


# ------------------------------------------------------------------ collection
@pytest.fixture(scope="module")
def robust(tmp_path_factory):
    db = tmp_path_factory.mktemp("robust") / "c.db"
    with imgmatch.Collection.open(db) as c:
        summary = c.add_many(((ORIGINALS / f"{n}.jpg", None) for n in PHOTOS),
                             signals=ROBUST_SIGNALS, workers=0)
        assert summary.images_added == len(PHOTOS)
    return db


def sha_of(name: str) -> str:
    import hashlib

    return hashlib.sha256((ORIGINALS / f"{name}.jpg").read_bytes()).hexdigest()


@pytest.mark.parametrize("edit", ["screenshot", "quarter of a collage", "crop 40%",
                                  "blurred pillarbox"])
def test_collection_finds_what_hashes_miss(robust, edit: str) -> None:
    query = jpeg(EDITS[edit](rgb("astronaut")))
    with imgmatch.Collection.open(robust, readonly=True) as c:
        matches = {m.sha256: m for m in c.query(query)}
    found = matches[sha_of("astronaut")]
    assert "orb" in found.agreed and found.inliers >= INLIERS_AT_THRESHOLD
    assert found.to_json()["inliers"] == found.inliers
    pictured = {"astronaut", "coffee", "flower", "rocket"} if "collage" in edit else {"astronaut"}
    assert set(matches) == {sha_of(name) for name in pictured}


@pytest.mark.parametrize("edit, tiled", [
    ("crop 40%", False), ("mirror and crop", False), ("emoji over the face", False),
    ("half size, jpeg 40", False),
    # half the frame is blur the match does not account for: searched, to be safe
    ("blurred pillarbox", True), ("quarter of a collage", True), ("screenshot", True)])
def test_tiles_can_be_skipped_when_the_whole_image_explains_the_query(
        robust, monkeypatch, edit: str, tiled: bool) -> None:
    """With ``match.EXPLAINED_SHARE`` set (the default), a repost is the
    picture it matches: its tiles (each a vote search as costly as the whole
    image's) are not searched. A collage or a screenshot holds more than its
    best match, so its tiles are. Unset, every query's are."""
    cut = []
    monkeypatch.setattr(features, "view_boxes",
                        lambda grey, *args: cut.append(1) or real_view_boxes(grey, *args))
    query = jpeg(EDITS[edit](rgb("astronaut")))
    # a collage's best match is any of the four pictures it shows
    pictured = {sha_of(n) for n in ("astronaut", "coffee", "flower", "rocket")} \
        if "collage" in edit else {sha_of("astronaut")}
    assert match.EXPLAINED_SHARE == 0.8
    with imgmatch.Collection.open(robust, readonly=True) as c:
        best = c.query(query)[0]
        assert best.sha256 in pictured and (len(cut) == 1) == tiled
        monkeypatch.setattr(match, "EXPLAINED_SHARE", None)
        assert c.query(query)[0].sha256 in pictured
    assert len(cut) == 1 + tiled
    assert best.score >= PRECISE or tiled


real_view_boxes = features.view_boxes


def test_collection_rejects_unrelated(robust) -> None:
    with imgmatch.Collection.open(robust, readonly=True) as c:
        assert c.query(FIXTURES / "queries" / "unrelated.jpg") == []
        scored = c.query(FIXTURES / "queries" / "unrelated.jpg", min_score=0.0)
    assert scored and all(m.score < 0.5 for m in scored)


def test_ingest_links_a_collage_to_its_photos(tmp_path) -> None:
    collage_bytes = jpeg(collage([rgb("astronaut"), rgb("rocket"), rgb("flower"),
                                  rgb("temple")]))
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.add_many([(ORIGINALS / "astronaut.jpg", None), (ORIGINALS / "coffee.jpg", None),
                    (collage_bytes, None)], signals=ROBUST_SIGNALS, workers=0)
        record = c.image(imgmatch.collection.hash_bytes(collage_bytes)["sha256"])
    linked = {link.sha256: link for link in record.links}
    assert sha_of("astronaut") in linked and sha_of("coffee") not in linked
    assert "orb" in linked[sha_of("astronaut")].agreed


def test_ingest_links_a_small_collage_to_each_photo_through_its_tiles(tmp_path, monkeypatch) -> None:
    """Each photo of a 320-pixel collage is a tenth of the size it was
    catalogued at: the whole image's features link it to none of the four.
    Its whole matched parts of them, so its tiles are searched, as a query's
    are, and it is linked to all four, weakly (a part of it each, so the
    collage joins no clusters). A repost its whole image matches as the
    same picture is not tiled: the tiles cost what the whole image does."""
    from imgmatch import ingest

    names = ("astronaut", "rocket", "flower", "temple")
    small = jpeg(collage([rgb(n) for n in names], cell=160))
    tiled: list[str] = []
    pixels = ingest._Batch.pixels

    def counted(self, digest):
        tiled.append(digest)
        return pixels(self, digest)

    monkeypatch.setattr(ingest._Batch, "pixels", counted)
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.add_many([(ORIGINALS / f"{n}.jpg", None) for n in names], workers=0)
        c.add_many([(jpeg(rgb("astronaut"), 70), None)], workers=0)
        assert not tiled
        assert c.add_many([(small, None)], workers=0).images_tiled == 1
        record = c.image(imgmatch.collection.hash_bytes(small)["sha256"])
    assert tiled == [record.sha256]
    repost = imgmatch.collection.hash_bytes(jpeg(rgb("astronaut"), 70))["sha256"]
    assert {link.sha256 for link in record.links} == {sha_of(n) for n in names} | {repost}
    assert all(link.score <= match.PARTIAL_LINK_CAP < PRECISE for link in record.links)


def test_an_upgrade_links_a_small_collage_to_each_photo_as_an_ingest_does(tmp_path) -> None:
    """A hash-tier collection given local features in place reads the
    collage again from its file to search its tiles."""
    from imgmatch.signals import HASH_SIGNALS

    names = ("astronaut", "rocket", "flower", "temple")
    path = tmp_path / "collage.jpg"
    path.write_bytes(jpeg(collage([rgb(n) for n in names], cell=160)))
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.add_many([(ORIGINALS / f"{n}.jpg", None) for n in names] + [(path, None)],
                   signals=HASH_SIGNALS, workers=0)
        c.upgrade(workers=0)
        record = c.image(imgmatch.collection.hash_bytes(path.read_bytes())["sha256"])
    assert {link.sha256 for link in record.links} == {sha_of(n) for n in names}


def test_the_service_links_a_collage_through_its_tiles_without_decoding_it(tmp_path,
                                                                           monkeypatch) -> None:
    """An upload is decoded in the service's sandbox only: the linker
    searches its tiles in the pixels the sandbox sent back, and this process
    never decodes it."""
    from imgmatch import ingest
    from imgmatch.sandbox import DecodeSandbox

    def refused(data, source=None):
        raise AssertionError("an upload was decoded outside the sandbox")

    monkeypatch.setattr(ingest, "tiling_grey", refused)
    names = ("astronaut", "rocket", "flower", "temple")
    small = jpeg(collage([rgb(n) for n in names], cell=160))
    with imgmatch.Collection.open(tmp_path / "c.db") as c, DecodeSandbox(1) as sandbox:
        c.add_many([(ORIGINALS / f"{n}.jpg", None) for n in names], workers=0)
        added, _ = c.add_and_match(small, sandbox=sandbox)
        record = c.image(added.sha256)
    assert {link.sha256 for link in record.links} == {sha_of(n) for n in names}


def test_an_image_whose_bytes_are_gone_is_linked_by_its_whole(tmp_path) -> None:
    """The tiles need the pixels again; a file changed since it was read is
    linked as the analysis saw it, by its whole image, and nothing fails."""
    from imgmatch import ingest
    from imgmatch.records import Sighting
    from imgmatch.sources import Item

    path = tmp_path / "collage.jpg"
    path.write_bytes(jpeg(collage([rgb("astronaut"), rgb("rocket")], cell=160)))
    batch = ingest._Batch()
    digest = imgmatch.collection.hash_bytes(path.read_bytes())["sha256"]
    batch.records.append((Item(str(path), Sighting(), path=path), digest, "added", None))
    assert batch.pixels(digest).shape == (320, 320)
    path.write_bytes(jpeg(rgb("cat")))
    assert batch.pixels(digest) is None
    path.unlink()
    assert batch.pixels(digest) is None


def test_ingest_verifies_a_copy_its_hashes_find_and_its_votes_miss(tmp_path, monkeypatch) -> None:
    """A small downscale has few keypoints, so its descriptor votes can go to
    other images while its hashes find the original. The robust model counts
    an unverified candidate as weak evidence (such a pair scored 0.04), so
    ingest verifies the best candidates by hashes too, as a query does."""
    small = rgb("astronaut")
    small = jpeg(small.resize((small.width // 4, small.height // 4), Image.BICUBIC))
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.add_many([(ORIGINALS / "astronaut.jpg", None), (ORIGINALS / "coffee.jpg", None)],
                   signals=ROBUST_SIGNALS, workers=0)
        coffee = c.catalog.conn.execute("SELECT id FROM images WHERE sha256 = ?",
                                        (sha_of("coffee"),)).fetchone()[0]

        def votes_elsewhere(self, new_images, local, batch, photos, whole_votes):
            return {image_id: [coffee] for image_id, _ in new_images}, {}

        monkeypatch.setattr(match.IndexLinker, "_voted", votes_elsewhere)
        c.add_many([(small, None)], signals=ROBUST_SIGNALS, workers=0)
        record = c.image(imgmatch.collection.hash_bytes(small)["sha256"])
    linked = {link.sha256: link for link in record.links}
    assert set(linked) == {sha_of("astronaut")}
    assert linked[sha_of("astronaut")].score >= PRECISE
    assert "pdq" in linked[sha_of("astronaut")].agreed


def smooth(size: tuple[int, int], seed: int = 7) -> Image.Image:
    """Smooth colour blobs: a picture without a corner for ORB to find."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(cells, "RGB").resize(size, Image.Resampling.BICUBIC)


def test_a_picture_too_smooth_to_verify_is_weighed_by_its_hashes(tmp_path) -> None:
    """Too few keypoints to verify (:data:`imgmatch.match.VERIFIABLE`): a
    failed verification says nothing, so the hashes decide, at ingest and in a
    query alike (the robust model weighed it as a verification that failed: an
    exact downscale scored 0.04 and was neither linked nor reported)."""
    original, small = jpeg(smooth((640, 480)), 90), jpeg(smooth((320, 240)), 60)
    assert len(features.extract(grey(Image.open(io.BytesIO(original))))) < match.VERIFIABLE
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.add_many([(ORIGINALS / "astronaut.jpg", None), (original, None), (small, None)],
                   signals=ROBUST_SIGNALS, workers=0)
        assert c.robust
        sha, itself = (imgmatch.collection.hash_bytes(b)["sha256"] for b in (original, small))
        links = c.image(itself).links
        matches = [m for m in c.query(small) if m.sha256 != itself]
        why = c.explain(itself, sha)
    # ranked by PDQ first (the hash tier's rule): PDQ 36 bits apart on this
    # smooth picture, so pHash's agreement only breaks ties, under the
    # cluster score but over the documented "precision 0.99" one
    assert [link.sha256 for link in links] == [sha] and links[0].score >= 0.95
    assert why.score == matches[0].score and any("too few to verify" in n for n in why.notes)
    assert matches[0].sha256 == sha and matches[0].score >= 0.95


def test_descriptor_index_survives_reopen_erase_and_reindex(tmp_path) -> None:
    db = tmp_path / "c.db"
    query = jpeg(EDITS["screenshot"](rgb("temple")))
    with imgmatch.Collection.open(db) as c:
        c.add_many(((ORIGINALS / f"{n}.jpg", None) for n in PHOTOS),
                   signals=ROBUST_SIGNALS, workers=0)
        before = [(m.sha256, m.inliers) for m in c.query(query)]
    assert (c.index_path("orb")).exists()
    with imgmatch.Collection.open(db) as c:
        assert [(m.sha256, m.inliers) for m in c.query(query)] == before
        assert c.reindex()["orb"] == len(PHOTOS)
        assert [(m.sha256, m.inliers) for m in c.query(query)] == before
        c.erase([sha_of("temple")])
        assert all(m.sha256 != sha_of("temple") for m in c.query(query, min_score=0.0))
        assert sha_of("temple") not in {m.sha256 for m in c.query(query)}
    with imgmatch.Collection.open(db) as c:  # the saved index knows of the erasure
        assert len(c.descriptors) == len(PHOTOS) - 1


@pytest.mark.parametrize("structure", ["cells", "words"])
def test_inverted_files_vote_like_the_scan(monkeypatch, structure) -> None:
    """Past IVF_ROWS the search is approximate (sampled cells), and past
    COMPACT_ROWS more so (visual words and signatures); the source still wins."""
    from imgmatch import descriptors

    stored = {n: features.extract(grey(rgb(name))) for n, name in enumerate(PHOTOS, start=1)}
    query = list(features.extract_both(grey(EDITS["crop 40%"](rgb("coffee")))))
    results = {}
    approximate = (100, 10 ** 9 if structure == "cells" else 100)
    for ivf_rows, compact_rows in ((10 ** 9, 10 ** 9), approximate):
        monkeypatch.setattr(descriptors, "IVF_ROWS", ivf_rows)
        monkeypatch.setattr(descriptors, "COMPACT_ROWS", compact_rows)
        index = DescriptorIndex()
        for n, found in stored.items():
            index.add(n, found)
        results[ivf_rows] = index.candidates(query, 3)
        assert (index._built_at > 0) == (compact_rows == 100)
        assert (index._cells_at > 0) == (structure == "cells" and ivf_rows == 100)
    source = PHOTOS.index("coffee") + 1
    assert results[100][0][0] == results[10 ** 9][0][0] == source
    assert results[100][0][1] >= 0.5 * results[10 ** 9][0][1]


def test_inverted_file_cells_are_saved(tmp_path, monkeypatch) -> None:
    """A saved inverted file over full codes reopens with its cells: no row
    is assigned again."""
    from imgmatch import descriptors

    monkeypatch.setattr(descriptors, "IVF_ROWS", 100)
    index = _photo_index(PHOTOS)
    query = list(features.extract_both(grey(EDITS["screenshot"](rgb("rocket")))))
    before = index.candidates(query, 3)
    path = tmp_path / "orb.descriptors"
    descriptors.save(index, path, collection_id="c", deletions=0, images=len(PHOTOS))
    back, _ = descriptors.load(path, collection_id="c")
    assert len(back.cells) == back.rows and len(back.centres) == len(index.centres)
    assert back.candidates(query, 3) == before
    assert before[0][0] == PHOTOS.index("rocket") + 1
    back.remove(np.array([PHOTOS.index("rocket") + 1]))
    assert len(back.cells) == back.rows
    assert all(i != PHOTOS.index("rocket") + 1 for i, _ in back.candidates(query, 6))


@pytest.mark.parametrize("structure", ["cells", "words"])
def test_an_index_searched_as_it_grows_answers_like_one_built_at_once(tmp_path, monkeypatch,
                                                                     structure) -> None:
    """The cells' centres and the words are sampled at points set by the rows
    alone, so the service's index (searched after every upload) and the
    CLI's (a saved index caught up, or rebuilt from the catalog) give the
    same votes."""
    from imgmatch import descriptors

    monkeypatch.setattr(descriptors, "IVF_ROWS" if structure == "cells" else "COMPACT_ROWS", 100)
    monkeypatch.setattr(descriptors, "TAIL_ROWS", 300)
    queries = [list(features.extract_both(grey(EDITS[edit](rgb(name)))))
               for edit, name in (("crop 40%", "coffee"), ("screenshot", "rocket"))]
    grown = DescriptorIndex()
    for n, name in enumerate(PHOTOS, start=1):
        grown.add(n, features.extract(grey(rgb(name))))
        for query in queries:
            grown.candidates(query, 8)
        if n == len(PHOTOS) // 2:
            descriptors.save(grown, tmp_path / "half", collection_id="c", deletions=0, images=n)
    assert grown.rows >= descriptors.REBUILD_GROWTH * 100  # sampled again on the way
    caught_up, _ = descriptors.load(tmp_path / "half", collection_id="c")
    for n, name in enumerate(PHOTOS[len(PHOTOS) // 2:], start=len(PHOTOS) // 2 + 1):
        caught_up.add(n, features.extract(grey(rgb(name))))
    at_once = _photo_index(PHOTOS)
    for query in queries:
        assert grown.candidates(query, 20) == caught_up.candidates(query, 20) \
            == at_once.candidates(query, 20)
    assert np.array_equal(grown.centres, at_once.centres)
    assert np.array_equal(grown.words, at_once.words)
    assert (len(grown.words) > 0) == (structure == "words")


def _photo_index(names: list[str], first: int = 1) -> DescriptorIndex:
    index = DescriptorIndex()
    for n, name in enumerate(names, start=first):
        index.add(n, features.extract(grey(rgb(name))))
    return index


def test_inverted_file_is_saved_and_reopens_alike(tmp_path, monkeypatch) -> None:
    """A saved compact file reopens with its words and posting lists (no row
    placed again) and its codes memory-mapped; rows added later wait in the
    second posting list, and an erased image is gone from all of them."""
    from imgmatch import descriptors

    half = len(PHOTOS) // 2
    index = _photo_index(PHOTOS[:half])
    monkeypatch.setattr(descriptors, "COMPACT_ROWS", index.rows)  # sampled once, at half
    rocket = PHOTOS.index("rocket") + 1
    query = list(features.extract_both(grey(EDITS["half size, jpeg 40"](rgb("rocket")))))
    index.candidates(query, 3)  # samples the vocabulary from the first half
    built, placed = index._built_at, index.rows
    for n, name in enumerate(PHOTOS[half:], start=half + 1):
        index.add(n, features.extract(grey(rgb(name))))
    before = index.candidates(query, 3)
    assert index._built_at == built and len(index._tail[0]) == index.rows - placed
    assert before[0][0] == rocket
    path = tmp_path / "orb.descriptors"
    descriptors.save(index, path, collection_id="c", deletions=0, images=len(PHOTOS))
    assert isinstance(index._codes[0], np.memmap) and not len(index._tail[0])
    assert index.candidates(query, 3) == before  # the tail merged: same votes
    back, _ = descriptors.load(path, collection_id="c")
    assert isinstance(back._codes[0], np.memmap)
    assert (len(back), back.max_id, back.rows) == (len(PHOTOS), len(PHOTOS), index.rows)
    assert np.array_equal(back.words, index.words)
    assert back.candidates(query, 3) == before
    back.remove(np.array([rocket]))
    assert len(back) == len(PHOTOS) - 1 and rocket not in back.owners
    assert len(back.post_owner) == back.rows == int(back.word_start[-1])
    assert all(i != rocket for i, _ in back.candidates(query, 6))


def test_inverted_file_grows_by_sampling_its_words_again(monkeypatch) -> None:
    """Grown REBUILD_GROWTH times, the vocabulary is sampled anew and every
    row placed again; a large second posting list is merged in between."""
    from imgmatch import descriptors

    monkeypatch.setattr(descriptors, "COMPACT_ROWS", 100)
    monkeypatch.setattr(descriptors, "TAIL_ROWS", 1)
    index = _photo_index(PHOTOS[:1])
    query = list(features.extract_both(grey(EDITS["crop 40%"](rgb("coffee")))))
    index.candidates(query, 1)
    first = index._built_at
    coffee = PHOTOS.index("coffee") + 1
    for n, name in enumerate(PHOTOS[1:], start=2):
        index.add(n, features.extract(grey(rgb(name))))
        found = index.candidates(query, 1)
        assert not len(index._tail[0])  # merged at once (TAIL_ROWS 1)
        assert int(index.word_start[-1]) == len(index.post_owner) == index.rows
        if n >= coffee:
            assert found[0][0] == coffee
    assert index._built_at > first and index.rows < descriptors.REBUILD_GROWTH * index._built_at


@pytest.mark.parametrize("margin", [0, 2, 5])
def test_a_query_row_probes_only_the_words_within_the_margin(monkeypatch, margin) -> None:
    """Each query row searches its nearest words (of its nearest root) that
    lie within PROBE_MARGIN bits of its nearest, checked against the bit
    distances counted here; fewer posting lists scanned, and the edited
    photo still voted first."""
    from imgmatch import descriptors

    monkeypatch.setattr(descriptors, "COMPACT_ROWS", 100)
    monkeypatch.setattr(descriptors, "PROBE_ROOTS", 1)
    index = _photo_index(list(PHOTOS))
    query = list(features.extract_both(grey(EDITS["crop 40%"](rgb("coffee")))))
    monkeypatch.setattr(descriptors, "PROBE_MARGIN", None)
    every = index.scanned(query)
    codes = np.ascontiguousarray(np.concatenate([q.descriptors[:descriptors.VOTERS]
                                                 for q in query]))
    all_voters, all_words = index._probes(codes)
    monkeypatch.setattr(descriptors, "PROBE_MARGIN", margin)
    voter, words = index._probes(codes)
    bits = np.unpackbits(codes[voter] ^ index.words[words], axis=1).sum(axis=1)
    all_bits = np.unpackbits(codes[all_voters] ^ index.words[all_words], axis=1).sum(axis=1)
    nearest = np.full(len(codes), 1 << 30)
    np.minimum.at(nearest, all_voters, all_bits)
    keep = all_bits <= nearest[all_voters] + margin
    assert 0 < keep.sum() < len(keep)  # the margin leaves some words out, not all
    assert sorted(zip(voter, words)) == sorted(zip(all_voters[keep], all_words[keep]))
    assert np.all(bits <= nearest[voter] + margin)
    assert 0 < index.scanned(query) <= every
    assert (index.scanned(query) < every) == (len(words) < len(all_words))
    assert index.candidates(query, 1)[0][0] == PHOTOS.index("coffee") + 1


@pytest.mark.parametrize("structure", ["cells", "words"])
def test_erasing_before_new_rows_are_placed_places_each_row_once(monkeypatch, structure) -> None:
    """An erasure between adding rows and searching them: every remaining
    row is placed exactly once (posting lists, or cells), and the erased
    image is gone."""
    from imgmatch import descriptors

    monkeypatch.setattr(descriptors, "IVF_ROWS", 100)
    monkeypatch.setattr(descriptors, "COMPACT_ROWS", 100 if structure == "words" else 10 ** 9)
    half = len(PHOTOS) // 2
    index = _photo_index(PHOTOS[:half])
    query = list(features.extract_both(grey(EDITS["half size, jpeg 40"](rgb("rocket")))))
    index.candidates(query, 1)  # places the first half
    for n, name in enumerate(PHOTOS[half:], start=half + 1):
        index.add(n, features.extract(grey(rgb(name))))
    cat, flower = PHOTOS.index("cat") + 1, PHOTOS.index("flower") + 1  # placed, and not yet
    index.remove(np.array([cat, flower]))
    found = index.candidates(query, 3)
    assert found[0][0] == PHOTOS.index("rocket") + 1 and not {cat, flower} & set(dict(found))
    if structure == "words":
        assert int(index.word_start[-1]) + len(index._tail[0]) == index.rows
        assert not {cat, flower} & (set(index.post_owner) | set(index._tail[1]))
    else:
        assert len(index.cells) == index.rows == index._scan.ntotal
        _, nearest = index._scan.quantizer.search(np.ascontiguousarray(index.codes), 1)
        assert np.array_equal(index.cells, nearest.ravel())  # each row in its own cell


@given(st.integers(0, 40).flatmap(lambda rows: st.lists(
    st.tuples(st.integers(0, rows), st.integers(0, 8), st.integers(0, 2 ** 32 - 1)),
    max_size=300)))
@settings(max_examples=80, deadline=None)
def test_each_query_row_votes_through_its_nearest_entries(entries) -> None:
    """The packed sort keeps, per query row, the NEIGHBOURS entries of least
    distance (ties to the lower image id), like a sort on the three keys;
    also when rows hold many entries (a clump), where each row's cut-off
    distance drops most of them before the sort."""
    from imgmatch import descriptors

    voter = np.array([e[0] for e in entries], np.uint64)
    distance = np.array([e[1] for e in entries], np.uint64)
    owner = np.array([e[2] for e in entries], np.uint64)
    packed = (voter << np.uint64(40)) | (distance << np.uint64(32)) | owner
    voters, owners = descriptors._nearest_entries(packed)
    expected = sorted(entries)
    kept: dict[int, int] = {}
    want = []
    for v, _, o in expected:
        kept[v] = kept.get(v, 0) + 1
        if kept[v] <= descriptors.NEIGHBOURS:
            want.append((v, o))
    assert list(zip(voters.tolist(), owners.tolist())) == want
    pairs, ids, first, votes = descriptors._tally(voters, owners)
    assert [tuple(p) for p in pairs.tolist()] == sorted({(o, v) for v, o in want})
    assert dict(zip(ids.tolist(), votes.tolist())) == \
        {i: len({v for v, o in want if o == i}) for i in {o for _, o in want}}


def test_saving_again_streams_the_mapped_codes(tmp_path) -> None:
    """A saved index that grew is saved again from its mapped file and its
    new rows, a chunk at a time: never every code gathered in memory (at a
    million images that was 4 GB)."""
    import tracemalloc

    from imgmatch import descriptors

    rng = np.random.default_rng(3)
    images, per = 2000, descriptors.PER_IMAGE
    index = DescriptorIndex(rng.integers(0, 256, (images * per, 32), dtype=np.uint8),
                            np.repeat(np.arange(1, images + 1), per))
    path = tmp_path / "orb.descriptors"
    descriptors.save(index, path, collection_id="c", deletions=0, images=images)
    index.add(images + 1, features.extract(grey(rgb("cat"))))
    codes_bytes = index.rows * 32
    tracemalloc.start()
    try:
        descriptors.save(index, path, collection_id="c", deletions=0, images=images + 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < codes_bytes / 4, (peak, codes_bytes)
    back, _ = descriptors.load(path, collection_id="c")
    assert np.array_equal(back.codes, index.codes) and back.rows == images * per + \
        min(per, len(features.extract(grey(rgb("cat")))))


def test_descriptor_ids_must_fit_31_bits() -> None:
    """Ids from 2**31 on mark the candidates found through an image's parts."""
    index = DescriptorIndex()
    for image_id in (2 ** 31, 2 ** 32):
        with pytest.raises(ValueError, match="2\\*\\*31"):
            index.add(image_id, features.extract(grey(rgb("cat"))))


def test_spread_counts_the_region_holding_inliers() -> None:
    # keypoints everywhere on a 6x6 grid; inliers only on the top row of cells
    xs, ys = np.meshgrid(np.arange(6) * 100 + 50, np.arange(6) * 100 + 50)
    region = np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float32)
    band = region[region[:, 1] < 100]
    assert features._spread(region, band) == pytest.approx(1 / 6)
    assert features._spread(region, region) == 1.0
    assert features._spread(region, region[:0]) == 0.0


def test_a_photo_in_a_collage_shares_a_part_of_it() -> None:
    tile = features.extract_both(grey(collage([rgb("astronaut"), rgb("coffee"),
                                               rgb("flower"), rgb("rocket")])))
    found, _ = features.best_of(*tile, features.extract(grey(rgb("astronaut"))))
    assert found.inliers >= INLIERS_AT_THRESHOLD and found.shared_area < 0.5
    whole, _ = features.best_of(*features.extract_both(grey(crop(rgb("astronaut"), 0.8))),
                                features.extract(grey(rgb("astronaut"))))
    assert whole.shared_area > 0.7 and whole.spread > 0.5


def _aligned_distance(query: Image.Image, stored: Image.Image) -> int | None:
    """PDQ bits between ``stored`` and ``query`` moved onto its frame."""
    from imgmatch.signals.pdq import hash_luma

    q = grey(query)
    found, flipped = features.best_of(*features.extract_both(q),
                                      features.extract(grey(stored)))
    view = features.extract(q)
    moved = features.aligned(q, (0, 0, q.shape[1], q.shape[0]), view.width, found, flipped,
                             features.extract(grey(stored)))
    if moved is None:
        return None
    a = np.unpackbits(np.frombuffer(hash_luma(moved), np.uint8))
    b = np.unpackbits(np.frombuffer(hash_luma(grey(stored).astype(np.float32)), np.uint8))
    return int((a != b).sum())


@pytest.mark.parametrize("edit, photo", [
    ("screenshot", "astronaut"), ("screenshot", "temple"), ("letterbox 9:16", "temple"),
    ("blurred pillarbox", "cat"),
    # a square photo: the collage's square cell holds all of it
    ("quarter of a collage", "astronaut")])
def test_the_query_moved_onto_the_stored_frame_hashes_like_it(edit: str, photo: str) -> None:
    """The whole-image PDQ of a photo inside a screenshot, a letterbox or a
    collage is as far from the photo's as another picture's; aligned, close.
    (Where the query shows other content over a part of the stored frame, a
    collage's neighbouring cell, aligned hashes differ too: only closeness
    is evidence.)"""
    from imgmatch.signals.pdq import hash_luma

    query = EDITS[edit](rgb(photo))
    whole = np.unpackbits(np.frombuffer(hash_luma(grey(query).astype(np.float32)), np.uint8))
    own = np.unpackbits(np.frombuffer(hash_luma(grey(rgb(photo)).astype(np.float32)),
                                      np.uint8))
    assert (whole != own).sum() >= 80
    assert _aligned_distance(query, rgb(photo)) <= 16


def test_two_photos_in_one_frame_do_not_align_into_the_same_picture() -> None:
    """A shared frame (a template, an app's interface) gives inliers, but the
    picture inside it, moved onto the other's frame, is another picture."""
    def framed(photo: Image.Image) -> Image.Image:
        out = ImageOps.expand(ImageOps.fit(photo, (300, 300)), border=110, fill="white")
        out.paste(ImageOps.fit(rgb("coffee"), (520, 100)), (0, 0))
        out.paste(ImageOps.fit(rgb("flower"), (520, 100)), (0, 420))
        return out

    one, other = framed(rgb("astronaut")), framed(rgb("cat"))
    found, _ = features.best_of(*features.extract_both(grey(one)),
                                features.extract(grey(other)))
    assert found.inliers >= INLIERS_AT_THRESHOLD  # the frame matches
    assert _aligned_distance(one, other) >= 80


def test_a_query_covering_little_of_the_stored_frame_is_not_aligned() -> None:
    # a crop of 30%: the rest of the stored image would be made up
    assert _aligned_distance(crop(rgb("temple"), 0.3), rgb("temple")) is None


def _aligned_bits(query: np.ndarray, small: np.ndarray, photo: np.ndarray) -> int:
    """PDQ bits between ``photo`` and the ``query`` (analysed pixels) moved
    onto it from ``small``, the query's pixels an ingest keeps."""
    from imgmatch.signals.pdq import hash_luma

    stored = features.extract(photo)
    found, flipped = features.best_of(*features.extract_both(query), stored)
    moved = features.aligned(small, (0, 0, small.shape[1], small.shape[0]), query.shape[1],
                             found, flipped, stored)
    assert moved is not None
    a = np.unpackbits(np.frombuffer(hash_luma(moved), np.uint8))
    b = np.unpackbits(np.frombuffer(hash_luma(photo.astype(np.float32)), np.uint8))
    return int((a != b).sum())


def test_an_ingest_aligns_from_its_small_grey_as_a_query_does_from_the_whole() -> None:
    """An ingest keeps only a small grey of each new image (it crosses a
    worker's pipe); aligned from it, a photo in a screenshot still hashes
    like the photo, and an unrelated picture still does not."""
    def distance(query: Image.Image, photo: Image.Image) -> int:
        q = features.prepare(grey(query))
        small = features.align_grey(q)
        assert max(small.shape) < max(q.shape)
        return _aligned_bits(q, small, grey(photo))

    assert distance(screenshot(rgb("temple")), rgb("temple")) <= 24
    assert distance(ImageOps.mirror(rgb("astronaut")), rgb("astronaut")) <= 24


@pytest.mark.parametrize("size", [(810, 246), (1200, 300), (300, 1000)])
def test_an_ingest_keeps_enough_of_a_banner_to_align_it_as_a_query_does(
        size: tuple[int, int]) -> None:
    """A banner or a strip kept at 192 pixels along its length leaves too few
    across it: a mirrored crop of it, aligned from that, hashed up to 26 bits
    farther than from the query's pixels. The ingest keeps its shorter side
    at :data:`imgmatch.features.ALIGN_SHORT`, and comes within a few bits."""
    w, h = size
    for name in ("astronaut", "cat", "coffee", "flower", "temple"):
        banner = ImageOps.fit(rgb(name), size)
        repost = ImageOps.mirror(banner.crop((int(0.06 * w), int(0.09 * h),
                                              int(0.94 * w), int(0.97 * h))))
        query, photo = features.prepare(grey(banner)), features.prepare(grey(repost))
        kept = features.align_grey(query)
        assert min(kept.shape) >= min(features.ALIGN_SHORT, min(query.shape))
        assert abs(_aligned_bits(query, kept, photo) - _aligned_bits(query, query, photo)) <= 6, \
            name


def test_the_ingests_grey_is_small_where_the_image_is_not_long() -> None:
    square = np.zeros((1000, 750), np.uint8)
    assert max(features.align_grey(square).shape) == features.ALIGN_SIDE
    thin = np.zeros((20, 400), np.uint8)  # never enlarged
    assert features.align_grey(thin).shape == (20, 400)


def _centre_distance(query: Image.Image, stored_image: Image.Image,
                     box: tuple[int, int, int, int] | None = None) -> int | None:
    """PDQ bits between the stored image's centre and the query (or its ``box``,
    a tile) moved onto it; None where the query does not cover the centre."""
    from imgmatch.signals.local import ORB
    from imgmatch.signals.pdq import hash_luma

    q = grey(query)
    x0, y0, x1, y1 = box or (0, 0, q.shape[1], q.shape[0])
    view = features.extract_both(np.ascontiguousarray(q[y0:y1, x0:x1]))
    stored = ORB().load(ORB().stored(ORB().extract(grey(stored_image))[0])[2])
    assert stored.centre is not None
    found, flipped = features.best_of(*view, stored)
    moved = features.aligned_centre(q, (x0, y0, x1, y1), view[0].width, found, flipped, stored)
    if moved is None:
        return None
    a = np.unpackbits(np.frombuffer(hash_luma(moved), np.uint8))
    return int((a != np.unpackbits(np.frombuffer(stored.centre, np.uint8))).sum())


@pytest.mark.parametrize("photo", ["temple", "coffee", "cat"])
def test_a_collage_cell_cut_square_is_compared_on_the_stored_centre(photo: str) -> None:
    """A wide photo cut square for a collage's cell covers too little of it
    for the whole aligned comparison; its centre, moved onto the stored
    frame, hashes like the stored image's centre."""
    page = collage([rgb(photo), rgb("astronaut"), rgb("rocket"), rgb("flower")])
    cell = (0, 0, page.width // 2, page.height // 2)
    view = features.extract_both(grey(page.crop(cell)))
    found, _ = features.best_of(*view, features.extract(grey(rgb(photo))))
    assert found.stored_share < features.ALIGN_SHARE  # no whole aligned comparison
    assert _centre_distance(page, rgb(photo), cell) <= 24


@pytest.mark.parametrize("photo", ["temple", "flower"])
def test_a_cell_a_tile_cuts_in_two_is_compared_whole(photo: str) -> None:
    """In a collage of three columns, the query's quarter tiles cut the middle
    column's cells in two. The tile's verification places the photo; the
    query as a whole still shows all of its cell, and so the centre."""
    others = [rgb(n) for n in ("astronaut", "cat", "coffee", "rocket")]
    cell, gap = 280, 6
    page = Image.new("RGB", (3 * cell + 4 * gap, 2 * cell + 3 * gap), "white")
    for n, image in enumerate([others[0], rgb(photo)] + others[1:]):
        page.paste(ImageOps.fit(image, (cell, cell)),
                   (gap + (n % 3) * (cell + gap), gap + (n // 3) * (cell + gap)))
    tile = (0, 0, page.width // 2, page.height // 2)  # half of the photo's cell
    assert tile[2] < 2 * (cell + gap)
    assert _centre_distance(page, rgb(photo), tile) <= match.CENTRE_AGREES


def test_a_collage_query_says_its_cells_were_compared_on_the_centre(robust) -> None:
    """Through the library: the wide photos a collage cut square are compared
    on their centres (the astronaut, square, whole), and say so; the flag
    survives the evidence's JSON, so the pair scores the same again."""
    from imgmatch.evidence import Evidence

    query = jpeg(EDITS["quarter of a collage"](rgb("astronaut")))
    with imgmatch.Collection.open(robust, readonly=True) as c:
        matches = {m.sha256: m.to_json() for m in c.query(query)}
    for name in ("coffee", "flower"):
        v = matches[sha_of(name)]["evidence"]["verification"]
        assert v["aligned_centre"] is True and v["aligned"] <= match.CENTRE_AGREES
        again = Evidence.from_json(matches[sha_of(name)]["evidence"])
        assert again.verified.aligned_centre and again.aligned_agrees
    assert "aligned_centre" not in matches[sha_of("astronaut")]["evidence"]["verification"]


def _ad_bars(image: Image.Image) -> Image.Image:
    """An ad's banners over the top fifth and bottom fifth of a photo."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    draw.rectangle((0, 0, w, int(h * 0.22)), fill=(250, 20, 120))
    draw.rectangle((0, int(h * 0.80), w, h), fill=(10, 10, 10))
    draw.text((20, int(h * 0.85)), "CALL 555 0134 NOW", fill="white")
    return out


@pytest.mark.parametrize("photo", ["coffee", "rocket", "cat"])
def test_agreeing_centres_stand_for_a_frame_covered_by_banners(robust, monkeypatch,
                                                              photo: str) -> None:
    """Banners over two fifths of a photo move its whole aligned hash past
    agreement; the centre they leave still agrees, the match says so, and it
    scores higher than on the whole frame's disagreement."""
    query = jpeg(_ad_bars(rgb(photo)))
    # the whole image's comparison alone: the banners' edges are seams, and
    # the cell between them would be verified as a tile of its own
    monkeypatch.setattr(features, "GRID_CELLS", False)
    monkeypatch.setattr(match, "QUERY_PARTS", False)
    assert _aligned_distance(_ad_bars(rgb(photo)), rgb(photo)) > match.CENTRE_AGREES
    assert _centre_distance(_ad_bars(rgb(photo)), rgb(photo)) <= match.CENTRE_AGREES

    def found() -> dict:
        with imgmatch.Collection.open(robust, readonly=True) as c:
            return {m.sha256: m.to_json() for m in c.query(query, min_score=0)}[sha_of(photo)]

    now = found()
    v = now["evidence"]["verification"]
    assert v["aligned_centre"] is True and v["aligned"] <= match.CENTRE_AGREES
    monkeypatch.setattr(match, "CENTRE_OVER_WHOLE", False)
    before = found()
    assert before["evidence"]["verification"]["aligned"] > match.CENTRE_AGREES
    assert now["score"] > before["score"]


def test_two_photos_in_one_frame_differ_at_the_centre_too() -> None:
    def framed(photo: Image.Image) -> Image.Image:
        out = ImageOps.expand(ImageOps.fit(photo, (300, 300)), border=110, fill="white")
        out.paste(ImageOps.fit(rgb("coffee"), (520, 100)), (0, 0))
        out.paste(ImageOps.fit(rgb("flower"), (520, 100)), (0, 420))
        return out

    distance = _centre_distance(framed(rgb("astronaut")), framed(rgb("cat")))
    assert distance is None or distance >= 80


def test_a_plain_centre_has_no_hash_to_compare() -> None:
    """A flat centre (a banner's empty middle, a logo's background) agrees with
    any other flat one: it is not stored, and nothing is compared on it."""
    from imgmatch.signals.local import ORB

    page = Image.new("RGB", (640, 420), "white")
    for x, y in ((0, 0), (480, 0), (0, 300), (480, 300)):
        page.paste(ImageOps.fit(rgb("cat"), (160, 120)), (x, y))
    plain = ORB().extract(grey(page))[0]
    assert len(plain) > 100 and plain.centre is None
    assert ORB().load(ORB().stored(plain)[2]).centre is None
    assert ORB().extract(grey(rgb("temple")))[0].centre is not None


def test_blobs_keep_the_centre_and_read_those_without_one() -> None:
    from imgmatch.signals.local import ORB

    found = ORB().extract(grey(rgb("coffee")))[0]
    back = ORB().load(ORB().stored(found)[2])
    assert back.centre == found.centre and len(back.centre) == features.CENTRE_BYTES
    old, whole = dataclasses.replace(found, centre=None).to_bytes(), found.to_bytes()
    assert old[:4] == b"ORB1" and features.LocalFeatures.from_bytes(old).centre is None
    assert whole[:4] == b"ORB2" and features.LocalFeatures.from_bytes(whole).centre == found.centre
    with pytest.MonkeyPatch.context() as patch:  # descriptors kept in part
        patch.setattr(features, "STORED_BYTES", 16)
        part, in_part = dataclasses.replace(found, centre=None).to_bytes(), found.to_bytes()
    assert part[:4] == b"ORB3" and features.LocalFeatures.from_bytes(part).centre is None
    assert in_part[:4] == b"ORB4" \
        and features.LocalFeatures.from_bytes(in_part).centre == found.centre
    for blob in (whole, in_part):
        with pytest.raises(SignalError):  # a centre cut short
            features.LocalFeatures.from_bytes(blob[:-1])


@pytest.mark.parametrize("path", sorted(ORIGINALS.glob("*.jpg")), ids=lambda p: p.name)
def test_the_mirror_s_features_are_those_a_detection_on_the_mirror_finds(path) -> None:
    """extract_both describes the mirror at the image's keypoints, mirrored,
    instead of detecting again: the same keypoints (within a pixel) and the
    same descriptors, bit for bit, for nearly all of them."""
    grey = np.asarray(Image.open(path).convert("L"))
    _, mirrored = features.extract_both(grey)
    detected = features.extract(np.ascontiguousarray(features.prepare(grey)[:, ::-1]))
    assert len(mirrored) > 100 and abs(len(mirrored) - len(detected)) <= len(detected) // 50
    gaps = np.hypot(*(mirrored.points[:, None, :] - detected.points[None, :, :]).transpose(2, 0, 1))
    nearest = gaps.argmin(axis=1)
    close = gaps[np.arange(len(mirrored)), nearest] < 1.0
    same = (mirrored.descriptors == detected.descriptors[nearest]).all(axis=1)
    assert (close & same).mean() >= 0.95


@given(st.integers(1, 2 ** 31), st.integers(1, 12), st.integers(2, 30))
@settings(max_examples=40, deadline=None)
def test_a_search_over_two_posting_lists_keeps_each_rows_nearest(seed, rows, entries) -> None:
    """The compact file's scan drops entries past each row's cut-off in each
    posting list (the main one and the tail) before the two are merged: the
    votes are still each row's NEIGHBOURS nearest entries over both lists,
    as a brute-force pass over every entry of the probed words finds them."""
    from imgmatch import descriptors

    rng = np.random.default_rng(seed)
    n_words = 6

    def lists():
        word = rng.integers(0, n_words, entries * n_words)
        order = np.argsort(word, kind="stable")
        # few signature values: many ties and many entries within the distance
        sig = rng.choice(np.array([0, 1, 3, 7, 0xFF, 0xFFFF], np.uint32), len(word))[order]
        owner = rng.integers(0, 50, len(word)).astype(np.uint32)[order]
        start = np.searchsorted(word[order], np.arange(n_words + 1)).astype(np.int64)
        return owner, sig, start

    main, tail = lists(), lists()
    probes = [(r, w) for r in range(rows) for w in rng.choice(n_words, 3, replace=False)]
    voter = np.array([r for r, _ in probes], np.int64)
    words = np.array([w for _, w in probes], np.int64)
    signatures = rng.choice(np.array([0, 1, 0xF0F0], np.uint32), rows)
    voters, owners = descriptors._nearest_entries(np.concatenate(
        [descriptors._scan(*part, words, voter, signatures) for part in (main, tail)]))
    want = []
    for r in range(rows):
        found = sorted((int(np.bitwise_count(sig[i] ^ signatures[r])), int(owner[i]))
                       for owner, sig, start in (main, tail)
                       for w in words[voter == r] for i in range(start[w], start[w + 1])
                       if np.bitwise_count(sig[i] ^ signatures[r])
                       <= descriptors.SIGNATURE_DISTANCE)
        want += [(r, o) for _, o in found[:descriptors.NEIGHBOURS]]
    assert list(zip(voters.tolist(), owners.tolist())) == want


# ------------------------------------------------------------ rows spread over the image
@given(st.lists(st.tuples(st.floats(0, 99.9), st.floats(0, 99.9)), max_size=300),
       st.integers(0, 200), st.integers(1, 6))
def test_balanced_rows_take_each_cell_in_turn_strongest_first(points, count, grid) -> None:
    found = features.LocalFeatures(np.array(points, np.float32).reshape(-1, 2),
                                   np.zeros((len(points), 32), np.uint8), 100, 100)
    rows = features.balanced(found, count, grid)
    assert len(rows) == min(len(points), count) and len(set(rows.tolist())) == len(rows)
    assert (np.diff(rows) > 0).all()  # in their stored order, strongest first
    # the cells of the points as stored: whole quarter pixels (49.875 is 50)
    stored = [(round(4 * float(np.float32(x))), round(4 * float(np.float32(y))))
              for x, y in points]
    cell = [min(y * grid // 400, grid - 1) * grid + min(x * grid // 400, grid - 1)
            for x, y in stored]
    if len(points) <= count:
        return
    chosen = np.bincount([cell[r] for r in rows], minlength=grid * grid)
    held = np.bincount(cell, minlength=grid * grid)
    for c in range(grid * grid):
        # each cell gives its strongest rows, and gives fewer than another
        # cell (by two or more) only when it has no more to give
        mine = [r for r in range(len(points)) if cell[r] == c]
        assert sorted(set(rows.tolist()) & set(mine)) == mine[:chosen[c]]
        if chosen[c] < held[c]:
            assert chosen.max() - chosen[c] <= 1


@pytest.mark.parametrize("path", sorted((FIXTURES / "reposts").glob("*.jpg"))
                         + sorted(ORIGINALS.glob("*.jpg")), ids=lambda p: p.stem)
def test_an_image_is_indexed_by_the_same_rows_as_ingested_and_as_stored(path) -> None:
    """Ingest indexes the features it just took; a rebuild, the catalog's
    blob of them, whose points are rounded to quarter pixels. A point that
    rounding moves across a cell's edge must not change the rows (it did
    for 7 of these 20 files), or the service's index and one rebuilt from
    the catalog would answer differently."""
    for found in features.extract_both(grey(Image.open(path).convert("RGB"))):
        stored = features.LocalFeatures.from_bytes(found.to_bytes())
        for count in (128, 150, 250):  # indexed; votes at ingest; votes of a query
            assert np.array_equal(features.balanced(found, count),
                                  features.balanced(stored, count))


@pytest.mark.parametrize("stored_count", [128, 200, 300])
def test_fewer_stored_keypoints_keep_the_rows_an_image_is_indexed_and_votes_by(
        monkeypatch, stored_count) -> None:
    """A collection that stores fewer keypoints an image (``STORED_FEATURES``,
    measured in docs/benchmarks.md) keeps those spread over it, so an image
    indexed as it is ingested (all its features) and one indexed again from
    the catalog (what was stored) get the same rows."""
    monkeypatch.setattr(features, "STORED_FEATURES", stored_count)
    for path in sorted((FIXTURES / "reposts").glob("*.jpg"))[:8]:
        found = features.extract(grey(Image.open(path).convert("RGB")))
        kept = features.LocalFeatures.from_bytes(features.kept(found).to_bytes())
        assert len(kept) == min(len(found), stored_count)
        for count in (64, 128):
            assert np.array_equal(found.descriptors[features.balanced(found, count)],
                                  kept.whole_descriptors(features.balanced(kept, count)))


def test_all_keypoints_are_stored_by_default() -> None:
    found = features.extract(grey(rgb("temple")))
    assert features.STORED_FEATURES == features.MAX_FEATURES
    assert features.kept(found) is found


def test_a_soft_photo_in_a_collage_gets_its_share_of_the_indexed_rows() -> None:
    """Taken by strength alone, the rows a collage is indexed and votes by all
    lay on its sharpest photos: a soft one beside them held none, and no
    repost of it could find the collage through its votes."""
    soft = rgb("coffee").filter(ImageFilter.GaussianBlur(2))
    found = features.extract(np.asarray(
        collage([soft, rgb("astronaut"), rgb("rocket"), rgb("temple")]).convert("L")))
    x, y = found.points[:, 0], found.points[:, 1]
    on_soft = (x < found.width / 2) & (y < found.height / 2)
    assert on_soft[:128].sum() == 0
    assert on_soft[features.balanced(found, 128)].sum() >= min(10, on_soft.sum())
    assert on_soft.sum() >= 10


@pytest.mark.parametrize("name", ["astronaut", "cat", "coffee", "temple"])
def test_a_thumbnail_is_verified_against_its_original(name) -> None:
    """ORB's pyramid spans 1.2^7 (3.6 times) of scale, so a 96-pixel thumbnail
    analysed as it is found nothing of its original analysed at 512 pixels
    (0 to 3 inliers). Enlarged to :data:`features.UPSCALE_TO` first, the two
    meet inside the pyramid."""
    original = rgb(name)
    thumbnail = original.copy()
    thumbnail.thumbnail((96, 96), Image.Resampling.LANCZOS)
    found = features.verify(features.extract(grey(thumbnail)), features.extract(grey(original)))
    assert found.inliers >= 40 and found.support >= 40


def test_only_images_large_enough_to_describe_are_enlarged() -> None:
    """A sliver under 32 pixels is not stretched into features of noise."""
    assert features.prepare(np.zeros((20, 200), np.uint8)).shape == (20, 200)
    assert features.prepare(np.zeros((64, 128), np.uint8)).shape == \
        (features.UPSCALE_TO // 2, features.UPSCALE_TO)
    assert features.prepare(np.zeros((1000, 800), np.uint8)).shape == (512, 410)


def _in_the_app(image: Image.Image) -> Image.Image:
    """A photo in one classifieds app's screen: a status bar and a dozen lines
    of listing text, the same on every screen of the app."""
    phone = Image.new("RGB", (540, 1100), (245, 245, 245))
    draw = ImageDraw.Draw(phone)
    draw.rectangle((0, 0, 540, 70), fill=(30, 30, 30))
    draw.text((20, 25), "12:41   LTE   87%", fill="white")
    for k in range(12):
        draw.text((20, 560 + 40 * k), f"Listing details line {k}: call 555-01{k:02d} tonight",
                  fill=(40, 40, 40))
    phone.paste(ImageOps.contain(image, (520, 480)), (10, 80))
    return phone


def _screens_of_one_app() -> DescriptorIndex:
    """The temple (image 1) and 11 other photos, each in the app (10 to 20)."""
    index = DescriptorIndex()
    index.add(1, features.extract(grey(rgb("temple"))))
    for n, screen in enumerate(_app_screens()):
        index.add(10 + n, features.extract(grey(screen)))
    return index


def _app_screens() -> list[Image.Image]:
    """Eleven photos other than the temple, each in the app."""
    others = [rgb(n) for n in ("astronaut", "cat", "coffee", "flower", "rocket")] + \
        [Image.open(p).convert("RGB") for p in sorted((FIXTURES / "distractors").glob("*.jpg"))[:6]]
    return [_in_the_app(other) for other in others]


def test_a_screenshot_finds_its_photo_among_screens_of_the_same_app() -> None:
    """Each of the app's other screens collects a vote from every descriptor
    of its text (100 or more); the photo, from its own descriptors only (30).
    Counted whole, the photo ranked 7th of 12, under the 4 an ingest
    verifies; shared among the images each descriptor voted for, 2nd."""
    assert descriptors.SHARED_VOTES
    query = list(features.extract_both(grey(_in_the_app(rgb("temple")))))
    found = [i for i, _ in _screens_of_one_app().candidates(query, match.LINK_VERIFY,
                                                            voters=match.LINK_VOTERS)]
    assert 1 in found


def test_a_screenshot_is_linked_to_its_photo_among_screens_of_its_own_batch(tmp_path) -> None:
    """An ingest ranks the collection's candidates and those earlier in its
    batch as one index. Ranked apart and merged by whole votes, the other
    screens of the batch outvoted the photo through their common interface,
    and the screenshot was never verified against it."""
    photo = tmp_path / "temple.jpg"
    photo.write_bytes(jpeg(rgb("temple"), 90))
    batch = []
    for n, screen in enumerate(_app_screens() + [_in_the_app(rgb("temple"))]):
        path = tmp_path / f"screen-{n:02d}.jpg"
        path.write_bytes(jpeg(screen, 90))
        batch.append(path)
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.add(photo)
        collection.add_many((p, None) for p in batch)  # one batch
        record = collection.image(hashlib.sha256(batch[-1].read_bytes()).hexdigest())
        photo_sha = hashlib.sha256(photo.read_bytes()).hexdigest()
        assert [link.sha256 for link in record.links] == [photo_sha]


@pytest.mark.parametrize("structure", ["scan", "words"])
def test_votes_are_shared_only_where_the_full_codes_are_searched(monkeypatch, structure) -> None:
    """In the compact file every descriptor finds its nearest signatures once
    the lists are long, so how many images it lands on says nothing: there
    candidates are ranked by whole votes (at a million images, sharing
    left the reference among the 8 most voted for 0.893 of queries, against
    0.937)."""
    if structure == "words":
        monkeypatch.setattr(descriptors, "COMPACT_ROWS", 100)
    index = _screens_of_one_app()
    query = list(features.extract_both(grey(_in_the_app(rgb("temple")))))
    found = index.candidates(query, 20)
    monkeypatch.setattr(descriptors, "SHARED_VOTES", False)
    whole = index.candidates(query, 20)
    assert sorted(found) == sorted(whole)  # the same whole votes either way
    if structure == "words":
        assert found == whole
    else:
        assert [i for i, _ in found] != [i for i, _ in whole]


_PAIRS: dict[str, features.LocalFeatures] = {}


def _part_features(name: str) -> features.LocalFeatures:
    """Features of a fixture photo (cached: hypothesis draws the same few)."""
    if name not in _PAIRS:
        _PAIRS[name] = features.extract(grey(rgb(name)))
    return _PAIRS[name]


@given(st.sampled_from(PHOTOS), st.sampled_from(PHOTOS), st.floats(0.15, 1.0),
       st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.booleans(), st.floats(1.0, 40.0))
@settings(max_examples=40, deadline=None)
def test_a_verification_given_up_early_changes_no_result_that_reaches_the_threshold(
        query_name, stored_name, share, dx, dy, mirror, threshold):
    """``min_support`` only drops pairs the caller would drop: a result at or
    over it is the one the full verification gives, and one under it is
    under it either way."""
    query = crop(rgb(query_name), share, dx, dy)
    if mirror:
        query = ImageOps.mirror(query)
    plain, mirrored = features.extract_both(grey(query))
    stored = _part_features(stored_name)
    full, full_flipped = features.best_of(plain, mirrored, stored)
    quick, quick_flipped = features.best_of(plain, mirrored, stored, min_support=threshold)
    assert (quick.support >= threshold) == (full.support >= threshold)
    if full.support >= threshold:
        assert (quick, quick_flipped) == (full, full_flipped)
