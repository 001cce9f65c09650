"""Every match can be explained: ``Collection.explain`` and ``imgmatch explain``
lay out the evidence a query weighs, and agree with the query on every pair."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import imgmatch
from imgmatch import features
from imgmatch.cli import cli
from imgmatch.evidence import (
    CALIBRATION,
    LOW_INFORMATION_CAP,
    RULES,
    Evidence,
    Verified,
    calibration_at,
)
from imgmatch.sources import iter_manifest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
ASTRONAUT = FIXTURES / "originals" / "astronaut.jpg"
REPOST = FIXTURES / "reposts" / "astronaut_citylist_2023.jpg"
MIRRORED = FIXTURES / "reposts" / "astronaut_jobboard_2024.jpg"
CAT = FIXTURES / "reposts" / "cat_citylist_2023.jpg"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    """The fixtures ingested with the defaults: the robust tier."""
    db = tmp_path_factory.mktemp("explain") / "case.db"
    with imgmatch.Collection.open(db) as collection:
        collection.ingest(iter_manifest(FIXTURES / "manifest.csv"))
    return db


@pytest.fixture(scope="module")
def hash_case(tmp_path_factory) -> Path:
    """The same, in the hash tier (``--fast``)."""
    db = tmp_path_factory.mktemp("explain-hashes") / "case.db"
    with imgmatch.Collection.open(db) as collection:
        collection.ingest(iter_manifest(FIXTURES / "manifest.csv"),
                          signals=imgmatch.HASH_SIGNALS)
    return db


def test_a_repost_is_the_same_picture_with_its_evidence_and_link(hash_case):
    with imgmatch.Collection.open(hash_case, readonly=True) as collection:
        e = collection.explain(sha(ASTRONAUT)[:10], sha(REPOST))
    assert (e.a, e.b) == (sha(ASTRONAUT), sha(REPOST))
    assert e.verdict == "same" and e.score >= 0.98
    assert e.summary.startswith(f"same picture (score {e.score:.4f}, precision ")
    assert {s.signal for s in e.signals} == {"pdq", "phash", "dhash"}
    for s in e.signals:
        assert s.verdict == "agreed" and s.informative
        assert s.distance <= s.threshold and s.versions == (1, 1) and s.version == 1
        assert len(s.a) == len(s.b) == s.bits // 4
        # the distance is the one between the two values shown
        assert bin(int(s.a, 16) ^ int(s.b, 16)).count("1") == s.distance
    assert e.calibration["at_least"] <= e.score and e.calibration["precision"] >= 0.99
    assert e.thresholds == {"match": 0.5, "link": 0.5, "cluster": 0.98}
    assert e.link is not None and e.link.score >= 0.98 and set(e.link.agreed) == {
        "pdq", "phash", "dhash"}
    # ranked by PDQ first: PDQ's model, the 64-bit hashes breaking its ties
    assert e.rules == {} and e.terms["pdq_near"] > 0 < e.terms["tie_break"]
    assert "phash_near" not in e.terms
    assert (e.tier, e.weighed_by) == ("hashes", "pdq") and e.to_json()["weighed_by"] == "pdq"
    assert e.verification is None and e.tier == "hashes"


def test_in_the_default_tier_the_verification_joins_the_evidence(case):
    with imgmatch.Collection.open(case, readonly=True) as collection:
        e = collection.explain(sha(ASTRONAUT), sha(REPOST))
    assert e.verdict == "same" and e.score >= 0.98 and e.tier == "robust"
    assert e.verification is not None and e.verification["agreed"]
    assert e.verification["inliers"] >= 40 and e.verification["strong"]
    assert e.link is not None and set(e.link.agreed) == {"pdq", "phash", "dhash", "orb"}


def test_different_pictures_say_which_signals_disagree(case):
    with imgmatch.Collection.open(case, readonly=True) as collection:
        e = collection.explain(sha(ASTRONAUT), sha(CAT))
    assert e.verdict == "different" and e.score < 0.5
    assert e.summary.startswith("different pictures (score")
    assert {s.signal: s.verdict for s in e.signals} == {
        "pdq": "disagreed", "phash": "disagreed", "dhash": "disagreed"}
    assert e.link is None
    assert all(v < 0 for k, v in e.terms.items() if k.endswith("_far"))
    as_json = json.loads(json.dumps(e.to_json()))
    assert as_json["verdict"] == "different" and as_json["link"] is None
    assert [s["signal"] for s in as_json["signals"]] == ["dhash", "pdq", "phash"]


def test_explain_scores_every_pair_as_the_query_does(hash_case, monkeypatch):
    """The query of a catalogued picture and the explanation of each of its
    candidates weigh the same evidence: the same score, distances and verdicts."""
    monkeypatch.chdir(ROOT)  # where the manifest's files were read from
    with imgmatch.Collection.open(hash_case, readonly=True) as collection:
        matches = collection.query(MIRRORED, min_score=0.0, top_k=20)
        assert len(matches) >= 5
        for m in matches:
            e = collection.explain(sha(MIRRORED), m.sha256)
            assert e.score == pytest.approx(m.score, abs=1e-9), m.sha256
            assert {s.signal: s.distance for s in e.signals} == m.distances
            assert {s.signal for s in e.signals if s.verdict == "agreed"} == set(m.agreed)
            assert e.transform == m.transform
            assert e.notes[0].startswith("A was read again")


def test_explain_agrees_with_the_robust_query_on_its_matches(case, monkeypatch):
    """In the robust tier too, every match the query reports is explained with
    its score and evidence. (A candidate the query scored on its hashes alone,
    unverified because no vote brought it, is verified by the explanation, so
    its low score may differ: the verdict, "different", does not.)"""
    monkeypatch.chdir(ROOT)
    with imgmatch.Collection.open(case, readonly=True) as collection:
        candidates = collection.query(MIRRORED, min_score=0.0, top_k=20)
        matches = [m for m in candidates if m.score >= imgmatch.MATCH_SCORE]
        assert len(matches) >= 2 and all(m.inliers for m in matches)
        for m in candidates:
            e = collection.explain(sha(MIRRORED), m.sha256)
            assert {s.signal: s.distance for s in e.signals} == m.distances
            assert (e.verdict != "different") == (m.score >= imgmatch.MATCH_SCORE), m.sha256
            if m in matches:
                assert e.score == pytest.approx(m.score, abs=1e-9), m.sha256
                assert e.verification is not None and e.verification["agreed"]
                assert e.verification["inliers"] == m.inliers
                assert {s.signal for s in e.signals if s.verdict == "agreed"} | {"orb"} \
                    == set(m.agreed)
                assert e.transform == m.transform
            if m.inliers is None:  # scored on its hashes: the explanation says why it differs
                assert any("does not put B forward" in note for note in e.notes), m.sha256


TEMPLE = FIXTURES / "originals" / "temple.jpg"


def _catalogued_with_the_temple(collection: imgmatch.Collection, page: Image.Image):
    """``page`` saved as page.png and catalogued in the robust tier with the
    temple photo and an unrelated one: the page's query's match of the temple."""
    page.save("page.png")
    collection.add_many([(TEMPLE, None), (Path("page.png"), None),
                         (FIXTURES / "originals" / "cat.jpg", None)],
                        signals=imgmatch.ROBUST_SIGNALS)
    (match,) = [m for m in collection.query("page.png") if m.sha256 == sha(TEMPLE)]
    return match


#: Pages (width, height as fractions of the photo's) with the photo pasted on
#: them: the query searches their tiles too, and finds the photo in one view
#: or another; each failed this test when the explanation verified the photo
#: in every tile whether or not the query's tiles voted for it.
PAGES = ((3, 2, 3, 2), (3, 2, 2, 1), (4, 3, 2, 1), (2, 1, 2, 1))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: f"{p[0]}/{p[1]}x{p[2]}/{p[3]}")
def test_a_photo_on_a_page_is_explained_with_the_score_its_query_gave(tmp_path, monkeypatch,
                                                                     page):
    """The explanation searches A's picture as the query does (the same views,
    the tiles only where the query takes them, the same votes), so it shows
    the score the query gave, whichever view found the photo."""
    monkeypatch.chdir(tmp_path)
    photo = Image.open(TEMPLE)
    wide, wide_by, tall, tall_by = page
    sheet = Image.new("RGB", (photo.width * wide // wide_by, photo.height * tall // tall_by),
                      "white")
    sheet.paste(photo, (photo.width // 8, photo.height // 4))
    with imgmatch.Collection.open(tmp_path / "p.db") as collection:
        match = _catalogued_with_the_temple(collection, sheet)
        e = collection.explain(sha(Path("page.png")), sha(TEMPLE))
    assert e.score == pytest.approx(match.score, abs=1e-9)
    assert e.verification is not None and e.verification["inliers"] == match.inliers
    assert not any("does not put B forward" in note for note in e.notes)


def test_a_mirror_is_compared_as_a_mirror(case, monkeypatch):
    monkeypatch.chdir(ROOT)
    with imgmatch.Collection.open(case, readonly=True) as collection:
        e = collection.explain(sha(ASTRONAUT), sha(MIRRORED))
    assert e.verdict == "same" and e.transform == "mirror"
    assert {s.transform for s in e.signals} == {"mirror"}
    assert e.link is not None and e.link.transform == "mirror"


def test_without_the_picture_stored_values_stand_in_and_the_notes_say_so(tmp_path):
    """A's file is gone: its stored values are compared (PDQ turned from its
    bits), and the explanation says what that cannot show."""
    original = tmp_path / "a.jpg"
    shutil.copy(ASTRONAUT, original)
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.add_many([(original, None), (MIRRORED, None)])
    original.unlink()
    with imgmatch.Collection.open(tmp_path / "c.db", readonly=True) as collection:
        e = collection.explain(sha(ASTRONAUT), sha(MIRRORED))
        pixels = collection.explain(sha(MIRRORED), sha(ASTRONAUT))  # B's file is there
    assert e.notes[0] == ("A could not be read again (missing-file): its stored values "
                          "stand in for its picture")
    assert str(original) not in json.dumps(e.to_json())
    pdq = next(s for s in e.signals if s.signal == "pdq")
    assert pdq.transform == "mirror" and pdq.verdict == "agreed"
    assert e.link is not None
    assert any("stored link" in note for note in e.notes) == (abs(e.link.score - e.score) > 0.1)
    assert pixels.verdict == "same" and pixels.notes[0].startswith("A was read again")


def test_the_robust_tier_shows_its_verification(tmp_path, monkeypatch):
    """A photo inside a screenshot: the hashes disagree, the local features
    agree, and the explanation shows the inliers and their spread."""
    monkeypatch.chdir(tmp_path)
    photo = Image.open(TEMPLE)
    part = photo.crop((0, 0, photo.width * 2 // 3, photo.height))
    page = Image.new("RGB", (photo.width * 2, photo.height * 2), "white")
    page.paste(part, (photo.width // 2, photo.height // 3))
    with imgmatch.Collection.open(tmp_path / "r.db") as collection:
        match = _catalogued_with_the_temple(collection, page)
        e = collection.explain(sha(Path("page.png")), sha(TEMPLE))
        other = collection.explain(sha(TEMPLE), sha(FIXTURES / "originals" / "cat.jpg"))
    assert e.tier == "robust" and e.score == pytest.approx(match.score, abs=1e-9)
    v = e.verification
    assert v is not None and v["agreed"] and v["inliers"] >= 20 and v["strong"]
    assert v["matches"] >= v["inliers"] and 0 < v["spread"] <= 1 and v["aligned"] is not None
    assert v["versions"] == [features.VERSION] * 2
    # the temple's left two thirds, pasted at (1/4, 1/6) of a page twice its size
    a, b = v["regions"]["a"], v["regions"]["b"]
    assert 0.2 <= a[0] < a[2] <= 0.62 and 0.12 <= a[1] < a[3] <= 0.7
    assert 0.0 <= b[0] < b[2] <= 0.72
    assert e.verdict in ("same", "lead")
    assert other.verdict == "different" and not other.verification["agreed"]


def test_nothing_in_common_is_an_error_that_says_what_to_do(tmp_path):
    gone = tmp_path / "a.jpg"  # A cannot be read again: only its stored PDQ speaks
    shutil.copy(ASTRONAUT, gone)
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.add_many([(gone, None)], signals=("pdq",))
        collection.add_many([(CAT, None)], signals=("phash",))
        gone.unlink()
        with pytest.raises(imgmatch.ImgmatchError, match="no signal in common.*upgrade"):
            collection.explain(sha(ASTRONAUT), sha(CAT))
        with pytest.raises(imgmatch.ImgmatchError, match="no image"):
            collection.explain(sha(ASTRONAUT), "0" * 64)


# ------------------------------------------------------------------- the model
def test_the_rules_that_cap_a_score_are_named():
    """Two good PDQ hashes far apart keep the pair under the match score
    whatever the 64-bit hashes say, and the explanation names that rule."""
    ev = Evidence({"pdq": (110, True), "phash": (0, True), "dhash": (0, True)},
                  qualities={"phash": 100, "pdq": 100})
    score, rules = ev.scored()
    assert rules == ("pdq-apart",) and score == LOW_INFORMATION_CAP == ev.score()
    assert ev.model_score() > score
    assert Evidence({"phash": (0, True)}).scored()[1] == ("hashes-64-only",)
    plain = Evidence({"pdq": (0, True)}, weak_values=True)
    assert plain.scored()[1] == ("low-information",)
    strong = Evidence({"pdq": (110, True)}, Verified(200, 90.0, 0.9, 0.9, 0.5))
    assert strong.scored()[1] == () and set(RULES) == {
        "low-information", "hashes-64-only", "pdq-apart", "frame-only", "under-pdq"}
    # the hash tier: PDQ compared, past its band, the 64-bit hashes close
    series = Evidence({"pdq": (80, True), "phash": (2, True), "dhash": (2, True)},
                      qualities={"phash": 100, "pdq": 100})
    assert series.scored()[1] == ("under-pdq",) and "under-pdq" in RULES
    # a screen matched on its interface, none of it on the photo it frames
    chrome = Evidence({"pdq": (40, True)}, Verified(200, 200.0, 1.0, 1.0, 0.5,
                                                    framed_share=0.0, query_share=1.0),
                      robust=True)
    assert chrome.scored() == (LOW_INFORMATION_CAP, ("frame-only",))
    assert chrome.model_score() > 0.9
    for framed, share in ((0.5, 1.0), (0.0, 0.5)):  # inside the picture; a part matched
        other = Evidence({"pdq": (40, True)}, Verified(200, 200.0, 1.0, 1.0, 0.5,
                                                       framed_share=framed, query_share=share),
                         robust=True)
        assert other.scored()[1] == ()
    # the terms are the model's log-odds: they add up to its score
    terms = sum(ev.terms().values())
    assert 1 / (1 + 2.718281828459045 ** -terms) == pytest.approx(ev.model_score())


def test_calibration_rows_are_found_at_their_bounds():
    assert calibration_at("hashes", 0.98)[0] == 0.98
    assert calibration_at("hashes", 0.9799)[0] == 0.95
    assert calibration_at("robust", 1.0)[0] == 0.99
    assert calibration_at("pdq", 0.2999) is None
    assert calibration_at("unknown", 0.9) is None


def test_the_calibration_table_is_the_one_benchmarks_md_reports():
    """The held-out table of docs/benchmarks.md and the one explanations cite agree."""
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    section = text[text.index("**Score to precision on held-out data**"):]
    header = re.search(r"^\| score ≥ \|(.*)\|$", section, flags=re.M).group(1)
    columns = [c.strip() for c in header.split("|")]
    rows = re.findall(r"^\| (0\.\d\d) \|(.*)\|$",
                      section[:section.index("(precision, and recall")], flags=re.M)
    assert len(rows) == 9
    for tier, table in CALIBRATION.items():
        k = columns.index(f"check: {tier}")
        documented = []
        for bound, cells in rows:
            precision, recall = re.fullmatch(r"\s*([\d.]+) \(([\d.]+)\)\s*",
                                             cells.split("|")[k]).groups()
            documented.append((float(bound), float(precision), float(recall)))
        assert tuple(documented) == table, tier


# ------------------------------------------------------------------------ CLI
def test_cli_explains_in_text_and_json(case, hash_case):
    runner = CliRunner()
    a, b = sha(ASTRONAUT)[:12], sha(REPOST)[:12]
    text = runner.invoke(cli, ["--db", str(case), "explain", a, b])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert re.fullmatch(r"same picture \(score (0\.99\d\d|1\.0000), precision (0\.\d{4}|1\.0000) "
                        r"at scores >= 0\.99 on held-out data\)", lines[0]), lines[0]
    for name in ("pdq", "phash", "dhash"):
        assert any(re.match(rf"  {name} +agreed +\d+ of \d+ bits \(threshold \d+", line)
                   for line in lines), name
    assert any(line.startswith("calibration: precision ") for line in lines)
    assert any(line.startswith("link: stored, score ") for line in lines)
    js = runner.invoke(cli, ["--db", str(case), "explain", a, b, "--json"])
    assert js.exit_code == 0, js.output
    body = json.loads(js.output)
    with imgmatch.Collection.open(case, readonly=True) as collection:
        assert body == json.loads(json.dumps(collection.explain(a, b).to_json()))
    assert body["summary"] == lines[0]
    v = body["verification"]  # with the share of inliers repeating one pattern, in both forms
    assert v is not None and 0.0 <= v["repeated"] <= 1.0
    assert any(line.startswith("verification: ")
               and f"repeats of one pattern {v['repeated']}:" in line for line in lines)
    assert any(line.startswith("score: ") and "(the robust model: " in line for line in lines)
    a_box = v["regions"]["a"]  # where the inliers lie, in both forms
    assert any(line.startswith(f"  the inliers lie in A at x {a_box[0]:.2f}-{a_box[2]:.2f}, ")
               for line in lines)
    # in the hash tier, the model that weighed the pair is named: PDQ's
    fast = runner.invoke(cli, ["--db", str(hash_case), "explain", a, b]).output.splitlines()
    assert any(line.startswith("score: ")
               and "(the pdq model, the hashes tier ranking by PDQ first: " in line
               for line in fast)


def test_cli_says_when_the_centres_were_compared(tmp_path):
    """A wide photo cut square in a collage's cell is compared on its centre:
    the explanation says so, in JSON and in text."""
    from PIL import ImageOps

    originals = FIXTURES / "originals"
    page = Image.new("RGB", (600, 600), "white")
    for n, name in enumerate(("coffee", "astronaut", "rocket", "flower")):
        cell = ImageOps.fit(Image.open(originals / f"{name}.jpg").convert("RGB"), (292, 292))
        page.paste(cell, ((n % 2) * 300 + 4, (n // 2) * 300 + 4))
    collage = tmp_path / "collage.jpg"
    page.save(collage, quality=90)
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.add_many([(originals / "coffee.jpg", None), (collage, None)])
    a, b = sha(collage)[:12], sha(originals / "coffee.jpg")[:12]
    runner = CliRunner()
    js = runner.invoke(cli, ["--db", str(tmp_path / "c.db"), "explain", a, b, "--json"])
    assert js.exit_code == 0, js.output
    v = json.loads(js.output)["verification"]
    assert v["aligned_on"] == "centre" and v["aligned"] <= 32
    text = runner.invoke(cli, ["--db", str(tmp_path / "c.db"), "explain", a, b])
    assert f"aligned PDQ {v['aligned']} bits on B's centre" in text.output


def test_cli_refuses_what_is_not_a_sha256(case):
    done = CliRunner().invoke(cli, ["--db", str(case), "explain", "xyz", sha(REPOST)])
    assert done.exit_code == 2 and "not a SHA-256" in done.output


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs named pipes")
def test_a_source_that_is_no_file_is_never_read(tmp_path):
    """An upload may name any source; reading A again must not hang on a
    FIFO or read a device forever: such a source is passed over."""
    import os
    import threading

    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.add(ASTRONAUT.read_bytes(), imgmatch.Sighting(source=str(fifo)))
        collection.add(ASTRONAUT.read_bytes(), imgmatch.Sighting(source="/dev/zero"))
        collection.add(REPOST)
        done: list[imgmatch.Explanation] = []
        worker = threading.Thread(
            target=lambda: done.append(collection.explain(sha(ASTRONAUT), sha(REPOST))),
            daemon=True)
        worker.start()
        worker.join(60)
    assert done, "explain hung on a source that is not a file"
    assert done[0].notes[0].startswith("A could not be read again (source-changed)")
    assert done[0].verdict == "same"
