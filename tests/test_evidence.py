"""Scores from all the evidence: disagreement counts, plain pictures match only on
strong evidence, and distinct pictures make no clusters.

The hard cases are real pictures made harder: the fixture photos darkened to
near-black, star fields, flat clip art and text banners on plain backgrounds,
and phone screenshots that share their interface but not their photo.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageOps

import imgmatch
from imgmatch import evidence
from imgmatch.decode import decode
from imgmatch.evidence import (FEATURE_NAMES, HASH64_CAP, LOW_INFORMATION_CAP, MODELS,
                               Evidence, Verified)
from imgmatch.match import MATCH_SCORE
from imgmatch.signals import HASH_SIGNALS, ROBUST_SIGNALS, get
from imgmatch.signals.base import degenerate

from conftest import FIXTURES, ORIGINALS
from test_features import collage, jpeg, rgb
from test_features import screenshot as phone

PHOTOS = ("astronaut", "cat", "coffee", "flower", "rocket", "temple")


def dark(name: str) -> Image.Image:
    """A fixture photo as a night shot: near-black, its detail crushed."""
    a = np.asarray(rgb(name), np.float32) / 255
    return Image.fromarray((255 * 0.3 * a ** 3).astype(np.uint8))


def stars(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A night sky: black, with a few dozen bright points."""
    rng = np.random.default_rng(seed)
    sky = Image.new("RGB", size, (4, 4, 10))
    draw = ImageDraw.Draw(sky)
    for x, y, r in zip(rng.integers(0, size[0], 40), rng.integers(0, size[1], 40),
                       rng.integers(1, 4, 40)):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 255, 230))
    return sky


def clipart(seed: int) -> Image.Image:
    """A flat drawing on white: a few filled shapes with outlines."""
    rng = np.random.default_rng(seed)
    art = Image.new("RGB", (500, 500), "white")
    draw = ImageDraw.Draw(art)
    for _ in range(3):
        x, y = (int(v) for v in rng.integers(60, 300, 2))
        w, h = (int(v) for v in rng.integers(60, 180, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + w, y + h), fill=colour, outline="black", width=4)
    return art


def banner(text: str, background=(20, 40, 160)) -> Image.Image:
    out = Image.new("RGB", (800, 200), background)
    ImageDraw.Draw(out).text((40, 80), text, fill="white")
    return out


PLAIN = {
    "dark cat": lambda: dark("cat"), "dark temple": lambda: dark("temple"),
    "dark coffee": lambda: dark("coffee"), "stars 1": lambda: stars(1),
    "stars 2": lambda: stars(2), "clip art 1": lambda: clipart(1),
    "clip art 2": lambda: clipart(2), "banner 1": lambda: banner("CALL NOW 555 0142"),
    "banner 2": lambda: banner("MASSAGE OPEN 24/7 VISIT US", (160, 30, 30)),
}


# ------------------------------------------------------------------ the model
def test_a_clear_pdq_disagreement_outweighs_a_64_bit_agreement() -> None:
    # the night-sky pair: pHash identical, PDQ as far apart as unrelated photos
    pair = Evidence(hashes={"pdq": (100, True), "phash": (0, True), "dhash": (3, True)})
    assert pair.score() < MATCH_SCORE
    assert "pdq" in pair.disagreed and "phash" in pair.agreed


def test_64_bit_hashes_alone_never_reach_the_top() -> None:
    both = Evidence(hashes={"phash": (0, True), "dhash": (0, True)})
    assert both.score() <= HASH64_CAP < 0.99
    assert Evidence(hashes={"phash": (0, True)}).score() <= HASH64_CAP


def test_every_signal_agreeing_is_near_certain_in_both_tiers() -> None:
    same = {"pdq": (2, True), "phash": (0, True), "dhash": (1, True)}
    assert Evidence(hashes=dict(same)).score() > 0.99
    verified = Verified(inliers=150, support=120.0, spread=0.9, shared_area=0.95)
    assert Evidence(hashes=dict(same), verified=verified, robust=True).score() > 0.99


@pytest.mark.parametrize("plain", [{"weak_values": True}, {"degenerate": True},
                                   {"qualities": {"phash": 3}}])
def test_low_information_pairs_need_strong_geometry(plain: dict) -> None:
    hashes = {"pdq": (0, True), "phash": (0, True), "dhash": (0, True)}
    # in the hash tier, where PDQ itself is too weak or degenerate to rank by
    # (a good PDQ judges a pair whose pHash bits are degenerate: see below)
    own = {**hashes, "pdq": (0, not plain.get("weak_values"))}
    assert Evidence(hashes=own, pdq_degenerate=bool(plain.get("degenerate")),
                    **plain).score() <= LOW_INFORMATION_CAP
    weak = Verified(inliers=25, support=12.0, spread=0.2, shared_area=1.0)
    assert Evidence(hashes=dict(hashes), verified=weak, robust=True,
                    **plain).score() <= LOW_INFORMATION_CAP
    strong = Verified(inliers=200, support=150.0, spread=0.9, shared_area=1.0, overlap=0.6)
    found = Evidence(hashes=dict(hashes), verified=strong, robust=True, **plain)
    assert found.settle() > LOW_INFORMATION_CAP and found.low_information


def test_one_close_hash_does_not_lift_a_plain_pair() -> None:
    # two flat pictures: dHash within a bit (both nearly blank rows), PDQ and
    # pHash at half their bits, as unrelated pictures lie; seen at the cap
    # before the mean ranked plain pairs
    lone = Evidence(hashes={"pdq": (116, False), "phash": (24, False), "dhash": (0, False)},
                    qualities={"phash": 0}, robust=True)
    agreeing = Evidence(hashes={"pdq": (16, False), "phash": (0, False), "dhash": (1, False)},
                        qualities={"phash": 0}, robust=True)
    assert lone.settle() == 0.0 and lone.low_information
    assert LOW_INFORMATION_CAP * 0.8 < agreeing.settle() <= LOW_INFORMATION_CAP
    # an informative value is heard over the values under their gates
    dark = Evidence(hashes={"pdq": (118, False), "phash": (16, True), "dhash": (0, True)},
                    qualities={"phash": 5}, robust=True)
    assert dark.settle() == pytest.approx(LOW_INFORMATION_CAP * 0.5)


@given(st.dictionaries(st.sampled_from(["pdq", "phash", "dhash"]),
                       st.tuples(st.integers(0, 64), st.booleans()), min_size=1),
       st.sampled_from(["pdq", "phash", "dhash"]))
def test_a_plain_pair_scores_lower_as_any_hash_moves_away(hashes: dict, moved: str) -> None:
    if moved not in hashes:
        return
    near = Evidence(hashes=dict(hashes), degenerate=True, pdq_degenerate=True)
    d, ok = hashes[moved]
    far = Evidence(hashes={**hashes, moved: (d + 8, ok)}, degenerate=True,
                   pdq_degenerate=True)
    assert 0.0 <= far.score() <= near.score() <= LOW_INFORMATION_CAP


def test_the_aligned_comparison_outweighs_the_whole_images_pdq() -> None:
    # a photo bordered and cropped into a collage's cell: the whole images'
    # PDQ hashes lie far apart, the verification is not strong on its own,
    # but the query moved onto the stored image's frame hashes close to it
    hashes = {"pdq": (110, True), "phash": (24, True), "dhash": (20, True)}

    def pair(aligned: int | None) -> Evidence:
        return Evidence(hashes=dict(hashes), robust=True, qualities={"phash": 80},
                        verified=Verified(inliers=27, support=27.0, spread=1.0,
                                          shared_area=0.99, overlap=0.39, aligned=aligned))

    for far in (None, 70):
        assert pair(far).scored() == (LOW_INFORMATION_CAP, ("pdq-apart",))
    score, rules = pair(14).scored()
    assert score > MATCH_SCORE and rules == ()


def test_plainer_pictures_need_closer_hashes() -> None:
    # the same distances count for less between plain pictures (dark photos,
    # icons of one series) than between pictures with information to spare,
    # where PDQ does not rank the pair on its own
    hashes = {"pdq": (70, True), "phash": (4, True), "dhash": (4, True)}
    rich = Evidence(hashes=dict(hashes), qualities={"phash": 100})
    plain = Evidence(hashes=dict(hashes), qualities={"phash": 20})
    assert plain.score() < rich.score()


def test_the_hash_tier_ranks_by_pdq_first() -> None:
    # icons of one series: pHash and dHash a few bits apart, PDQ past its
    # band; a right pair that PDQ puts within it ranks above, whatever the
    # 64-bit hashes say (the issue: the tier no worse than its best signal)
    series = Evidence(hashes={"pdq": (evidence.PDQ_BAND + 6, True), "phash": (2, True),
                              "dhash": (2, True)})
    copy = Evidence(hashes={"pdq": (evidence.PDQ_BAND - 4, True), "phash": (18, True),
                            "dhash": (20, True)})
    score, rules = series.scored()
    assert MATCH_SCORE < score <= evidence.BELOW_PDQ and rules == ("under-pdq",)
    assert copy.score() > score and copy.scored()[1] == ()
    # within the band, PDQ's own model: the 64-bit hashes only break its ties
    for d in (0, 20, 40, evidence.PDQ_BAND):
        alone = Evidence(hashes={"pdq": (d, True)}).score()
        close = Evidence(hashes={"pdq": (d, True), "phash": (0, True), "dhash": (0, True)})
        apart = Evidence(hashes={"pdq": (d, True), "phash": (40, True), "dhash": (40, True)})
        assert apart.score() < alone < close.score()
        if d:
            nearer = Evidence(hashes={"pdq": (d - 1, True), "phash": (40, True),
                                      "dhash": (40, True)})
            assert nearer.score() > close.score()
        assert "tie_break" in close.terms() and close.model() is MODELS["pdq"]


def test_a_degenerate_phash_leaves_the_pair_to_a_good_pdq() -> None:
    # a pHash of periodic bits is no evidence, but a good PDQ still is; a
    # picture too plain by what it is (pHash's information under the gate)
    # still needs strong geometry, and a degenerate PDQ ranks nothing
    hashes = {"pdq": (2, True), "phash": (0, True), "dhash": (1, True)}
    periodic = Evidence(hashes=dict(hashes), degenerate=True, qualities={"phash": 45})
    assert periodic.settle() > 0.99 and not periodic.low_information
    plain = Evidence(hashes=dict(hashes), qualities={"phash": MODELS["hashes"].gate - 1})
    assert plain.settle() <= LOW_INFORMATION_CAP and plain.low_information
    pdq_periodic = Evidence(hashes=dict(hashes), degenerate=True, pdq_degenerate=True)
    assert pdq_periodic.settle() <= LOW_INFORMATION_CAP


def test_pdq_degeneracy_is_kept_through_the_json() -> None:
    for flags in ({"degenerate": True}, {"degenerate": True, "pdq_degenerate": True}):
        ev = Evidence(hashes={"pdq": (2, True), "phash": (0, True)}, **flags)
        again = Evidence.from_json(ev.to_json())
        assert (again.degenerate, again.pdq_degenerate) == (ev.degenerate, ev.pdq_degenerate)
        assert again.score() == ev.score()


def test_pdq_far_apart_outweighs_every_64_bit_hash() -> None:
    pair = Evidence(hashes={"pdq": (evidence.PDQ_APART, True), "phash": (0, True),
                            "dhash": (0, True)})
    assert pair.score() < MATCH_SCORE
    verified = Verified(inliers=300, support=250.0, spread=0.97, shared_area=0.9, overlap=0.7)
    assert Evidence(hashes=dict(pair.hashes), verified=verified, robust=True).score() > 0.9


def test_inliers_on_one_band_are_weaker_than_the_same_inliers_spread() -> None:
    band = Verified(inliers=40, support=30.0, spread=0.15, shared_area=1.0)
    spread = Verified(inliers=40, support=30.0, spread=0.8, shared_area=1.0)
    assert Evidence(verified=band, robust=True).score() < \
        Evidence(verified=spread, robust=True).score()


def test_the_shipped_weights_point_the_right_way() -> None:
    # agreement never lowers a score, disagreement never raises it
    for model in MODELS.values():
        for name, weight, sign in zip(FEATURE_NAMES, model.weights, evidence.SIGNS):
            assert sign * weight >= 0, name


distances = st.tuples(st.integers(0, 256), st.integers(0, 64), st.integers(0, 64))


@given(distances, st.sampled_from(["pdq", "phash", "dhash"]), st.integers(1, 64),
       st.booleans())
def test_scores_never_rise_as_a_distance_grows(d, which, more, robust) -> None:
    names = ("pdq", "phash", "dhash")
    base = dict(zip(names, ((x, True) for x in d)))
    farther = dict(base)
    farther[which] = (base[which][0] + more, True)
    verified = Verified(30, 20.0, 0.5, 1.0) if robust else None
    assert Evidence(hashes=farther, verified=verified, robust=robust).score() <= \
        Evidence(hashes=base, verified=verified, robust=robust).score() + 1e-12


@given(st.floats(0, 300), st.floats(0, 300), st.floats(0, 1))
def test_scores_never_fall_as_support_grows(a, b, spread) -> None:
    low, high = sorted((a, b))
    def score(support):
        return Evidence(verified=Verified(int(support), support, spread, 1.0),
                        robust=True).score()
    assert score(high) >= score(low) - 1e-12


def test_fit_recovers_a_separable_rule_and_respects_signs() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((4000, len(FEATURE_NAMES)))
    z = 6 * x[:, 0] - 4 * x[:, 1] - 1
    y = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(float)
    model = evidence.fit(x, y, signs=evidence.SIGNS)
    assert model.weights[0] > 3 and model.weights[1] < -2
    assert all(abs(w) < 1 for w in model.weights[2:])
    # a feature whose best weight has the forbidden sign is left out, not flipped
    flipped = evidence.fit(x, 1 - y, signs=evidence.SIGNS)
    assert flipped.weights[0] == 0 and flipped.weights[1] == 0


# ------------------------------------------------------------------ low information
def test_degenerate_hashes_are_recognised_by_their_bits() -> None:
    assert degenerate(bytes.fromhex("cc663399cc663399"))  # the night-sky pHash
    assert degenerate(bytes.fromhex("ff00ff00ff00ff00"))
    assert degenerate(bytes(8)) and degenerate(bytes(32))
    for name in PHOTOS:
        decoded = decode((ORIGINALS / f"{name}.jpg").read_bytes())
        assert not degenerate(get("phash").compute(decoded).data)
        assert not degenerate(get("pdq").compute(decoded).data)


#: The plainest of them: each tier's gate must catch these (the rest are kept
#: apart by their evidence: PDQ's disagreement, their plainness, few inliers).
GATED = ("banner 1", "banner 2", "stars 1", "stars 2")


@pytest.mark.parametrize("name", GATED)
def test_plain_pictures_have_little_information(name: str) -> None:
    quality = get("phash").compute(decode(jpeg(PLAIN[name]()))).quality
    assert quality is not None
    assert all(quality < model.gate for tier, model in MODELS.items() if tier != "pdq")


@pytest.mark.parametrize("name", ["dark cat", "dark coffee", "clip art 1", "clip art 2"])
def test_plain_pictures_are_measured_plainer_than_photos(name: str) -> None:
    quality = get("phash").compute(decode(jpeg(PLAIN[name]()))).quality
    photos = [get("phash").compute(decode((ORIGINALS / f"{n}.jpg").read_bytes())).quality
              for n in PHOTOS]
    assert quality is not None and quality < min(q for q in photos if q is not None)


@pytest.mark.parametrize("name", PHOTOS)
def test_photos_have_enough_information(name: str) -> None:
    quality = get("phash").compute(decode((ORIGINALS / f"{name}.jpg").read_bytes())).quality
    assert quality is not None and quality >= max(m.gate for t, m in MODELS.items() if t != "pdq")


@pytest.fixture(scope="module", params=["hashes", "robust"])
def plain_collection(request, tmp_path_factory):
    signals = HASH_SIGNALS if request.param == "hashes" else ROBUST_SIGNALS
    db = tmp_path_factory.mktemp(f"plain-{request.param}") / "c.db"
    with imgmatch.Collection.open(db) as c:
        summary = c.add_many(((jpeg(make()), imgmatch.Sighting(source=name))
                              for name, make in sorted(PLAIN.items())),
                             signals=signals, workers=0)
        assert summary.images_added == len(PLAIN)
    return db


def test_distinct_plain_pictures_make_no_links_and_no_clusters(plain_collection) -> None:
    with imgmatch.Collection.open(plain_collection, readonly=True) as c:
        assert c.stats()["links"] == 0
        assert c.clusters(min_sightings=1) == [] or all(
            len(cluster.image_ids) == 1 for cluster in c.clusters(min_sightings=1))


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_a_plain_query_finds_nothing_unrelated(plain_collection, name: str) -> None:
    query = jpeg(PLAIN[name](), quality=70)  # a re-encoded copy: other bytes
    with imgmatch.Collection.open(plain_collection, readonly=True) as c:
        scored = c.query(query, min_score=0.0, top_k=len(PLAIN))
    wrong = [m for m in scored if m.sightings[0].source != name]
    assert all(m.score < MATCH_SCORE for m in wrong)
    same = [m for m in scored if m.sightings[0].source == name]
    assert same
    if name in GATED:  # found only through strong geometry, and flagged either way
        assert same[0].low_information
        assert same[0].score <= LOW_INFORMATION_CAP or same[0].inliers


def test_distinct_photos_make_no_clusters(tmp_path) -> None:
    paths = [ORIGINALS / f"{n}.jpg" for n in PHOTOS] + sorted(
        (FIXTURES / "distractors").glob("*.jpg")) + [FIXTURES / "queries" / "unrelated.jpg"]
    for signals in (HASH_SIGNALS, ROBUST_SIGNALS):
        with imgmatch.Collection.open(tmp_path / f"{len(signals)}.db") as c:
            c.add_many(((p, None) for p in paths), signals=signals, workers=0)
            assert c.stats()["links"] == 0, signals


# ------------------------------------------------------------------ chrome and collages
@pytest.fixture(scope="module")
def screens(tmp_path_factory):
    db = tmp_path_factory.mktemp("screens") / "c.db"
    with imgmatch.Collection.open(db) as c:
        c.add_many(((jpeg(phone(rgb(n))), imgmatch.Sighting(source=n))
                    for n in ("cat", "temple", "coffee")), signals=ROBUST_SIGNALS, workers=0)
    return db


def test_a_shared_interface_is_not_a_shared_photo(screens) -> None:
    query = jpeg(phone(rgb("flower")))
    with imgmatch.Collection.open(screens, readonly=True) as c:
        scored = c.query(query, min_score=0.0)
        links = c.stats()["links"]
    assert links == 0
    assert all(m.score < MATCH_SCORE for m in scored)


def test_a_screenshot_of_the_same_photo_still_matches(screens) -> None:
    query = jpeg(phone(ImageOps.mirror(rgb("temple"))), quality=70)
    with imgmatch.Collection.open(screens, readonly=True) as c:
        found = c.query(query)
    assert found and found[0].sightings[0].source == "temple"


def test_a_collage_does_not_join_its_photos_clusters(tmp_path) -> None:
    items = [(ORIGINALS / "astronaut.jpg", None), (ORIGINALS / "rocket.jpg", None),
             (jpeg(ImageOps.mirror(rgb("astronaut")), 70), None),
             (jpeg(ImageOps.mirror(rgb("rocket")), 70), None),
             (jpeg(collage([rgb("astronaut"), rgb("rocket"), rgb("flower"), rgb("cat")])),
              None)]
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.add_many(items, signals=ROBUST_SIGNALS, workers=0)
        clusters = [set(cl.image_ids) for cl in c.clusters(min_sightings=1)
                    if len(cl.image_ids) > 1]
    assert len(clusters) == 2 and not clusters[0] & clusters[1]
    assert all(len(cl) <= 3 for cl in clusters)


def test_a_candidate_verified_in_two_views_keeps_the_chosen_one(monkeypatch) -> None:
    """By default the verification with more support stands (a tile's partial
    match over the whole image's); ``KEEP_BEST_BY = "score"`` keeps the one
    that scores higher."""
    from imgmatch import match

    ev = Evidence(hashes={"pdq": (40, True), "phash": (10, True), "dhash": (10, True)},
                  robust=True,
                  verified=Verified(inliers=60, support=60.0, spread=0.8, shared_area=0.95,
                                    overlap=0.5))
    partial = Verified(inliers=120, support=120.0, spread=0.8, shared_area=0.2, overlap=0.5)
    assert dataclasses.replace(ev, verified=partial).score() < ev.score()
    assert match._better(ev, partial)
    monkeypatch.setattr(match, "KEEP_BEST_BY", "score")
    assert not match._better(ev, partial)


def test_a_reported_evidence_scores_again_in_its_own_tier() -> None:
    # a robust query weighs a candidate too smooth to verify by the hash
    # tier's model; the report names it, so scoring the report again agrees
    verified = Verified(inliers=0, support=0.0, spread=0.0, shared_area=0.0)
    for robust in (True, False):
        found = Evidence(hashes={"pdq": (24, True), "phash": (2, True), "dhash": (1, True)},
                         verified=verified, robust=robust, qualities={"phash": 85})
        again = Evidence.from_json(found.to_json(), robust=True)
        assert again.tier == found.tier and again.settle() == pytest.approx(found.settle())
