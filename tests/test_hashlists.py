"""Hash lists in (partners' PDQ, Meta's hasher CSV), many hash queries at once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import imgmatch
from imgmatch.cli import main
from imgmatch.hashlists import parse_line, read_hash_list
from imgmatch.sources import iter_manifest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
H1 = "3049d96239e24d4dca2c55512b8b9b77425f4dbcf575a0a95555aaab5554aaaa"


@pytest.mark.parametrize("line, value, quality, name", [
    (f"pdq {H1}", H1, None, None),
    (f"pdq {H1} partner item 7", H1, None, "partner item 7"),
    (f"{H1},87,/data/a.jpg", H1, 87, "/data/a.jpg"),
    (f"{H1.upper()},100,a, with comma.jpg", H1, 100, "a, with comma.jpg"),
    (H1, H1, None, None),
])
def test_line_formats(line, value, quality, name):
    parsed = parse_line(line, 3)
    assert (parsed.value.hex(), parsed.quality, parsed.name, parsed.error) == (
        value, quality, name, None)


@pytest.mark.parametrize("line", ["pdq 1234", "hello", f"{H1},high,a.jpg", f"md5 {H1}",
                                  H1[:-1] + "g"])
def test_bad_lines_say_which_line(line):
    parsed = parse_line(line, 12)
    assert parsed.value is None and "line 12" in parsed.error


def test_import_then_query_a_partner_list(tmp_path, capsys):
    db = tmp_path / "c.db"
    with imgmatch.Collection.open(db) as c:
        c.ingest(iter_manifest(FIXTURES / "manifest.csv"))
        cat = c.image(hashlib.sha256(
            (FIXTURES / "reposts" / "cat_citylist_2023.jpg").read_bytes()).hexdigest())
    listing = tmp_path / "partner.txt"
    listing.write_text(f"# shared by a partner\npdq {H1} case-17/item-1\n"
                       f"{cat.signals['pdq'].hex},100,case-17/item-2.jpg\nnot a hash\n")
    assert main(["--db", str(db), "import-hashes", str(listing), "--platform", "partner",
                 "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert (summary["lines"], summary["images_added"], summary["sightings_added"],
            summary["failed"]) == (3, 2, 2, 1)
    assert main(["--db", str(db), "import-hashes", str(listing), "--platform", "partner",
                 "--json"]) == 1
    again = json.loads(capsys.readouterr().out)
    assert (again["images_added"], again["sightings_added"]) == (0, 0)
    # the list's hashes answer queries like any image, by their own name
    assert main(["--db", str(db), "query", "--pdq-file", str(listing)]) == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["query"] for x in lines] == ["case-17/item-1", "case-17/item-2.jpg",
                                           "partner.txt:4"]
    assert all(x["elapsed_ms"] >= 0 for x in lines[:2]) and "error" in lines[2]
    first = lines[0]["matches"][0]
    assert first["sha256"] is None and first["signals"]["pdq"] == H1
    assert first["sightings"][0]["source"] == "case-17/item-1"
    second = {m["sha256"] for m in lines[1]["matches"]}
    assert cat.sha256 in second and None in second  # the repost and the imported hash


def test_new_crawl_images_link_to_imported_hashes(tmp_path):
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        record = imgmatch.hash_bytes((FIXTURES / "originals" / "temple.jpg").read_bytes())
        listing = tmp_path / "l.txt"
        listing.write_text(f"pdq {record['signals']['pdq']['hex']} alert-42\n")
        c.import_hashes(listing, platform="partner")
        c.ingest(iter_manifest(FIXTURES / "manifest.csv"))
        temple = c.image(hashlib.sha256(
            (FIXTURES / "reposts" / "temple_backpage-clone_2023.jpg").read_bytes()).hexdigest())
        clusters = c.clusters()
    linked = [link for link in temple.links if link.sha256 is None]
    assert linked and linked[0].agreed == ("pdq",)
    assert any("partner" in cl.platforms for cl in clusters)


def test_imported_hashes_carry_who_shared_them_wherever_they_show(tmp_path, capsys):
    db = tmp_path / "c.db"
    temple = imgmatch.hash_bytes((FIXTURES / "originals" / "temple.jpg").read_bytes())
    listing = tmp_path / "hotline-2026-11.txt"
    listing.write_text(f"pdq {temple['signals']['pdq']['hex']} alert-42\n")
    assert main(["--db", str(db), "import-hashes", str(listing), "--platform", "hotline",
                 "--shared-by", "NGO X hotline", "--licence", "no onward sharing"]) == 0
    assert main(["--db", str(db), "ingest", "--quiet", "--manifest",
                 str(FIXTURES / "manifest.csv")]) == 0
    capsys.readouterr()
    assert main(["--db", str(db), "query", "--json",
                 str(FIXTURES / "originals" / "temple.jpg")]) == 0
    matches = json.loads(capsys.readouterr().out.splitlines()[0])["matches"]
    imported = [m for m in matches if m["sha256"] is None]
    assert imported and imported[0]["sightings"][0]["extra"] == {
        "shared_by": "NGO X hotline", "licence": "no onward sharing",
        "hash_list": "hotline-2026-11.txt"}
    with imgmatch.Collection.open(db) as c:
        report = c.report_json(min_sightings=1)
    extras = [s.get("extra") for cl in report["clusters"] for s in cl["sightings"]
              if s.get("platform") == "hotline"]
    assert extras == [{"shared_by": "NGO X hotline", "licence": "no onward sharing",
                       "hash_list": "hotline-2026-11.txt"}]


@pytest.mark.parametrize("header", [
    "hash,quality,filename",
    "Hash, Quality, Filename",
    "\ufeffhash,quality,filename",   # written by a spreadsheet, with a byte-order mark
    "pdq_hash,quality,filename",
])
def test_a_csv_header_row_is_skipped(tmp_path, header):
    listing = tmp_path / "hashes.csv"
    listing.write_text(f"{header}\n{H1},100,a.jpg\n", encoding="utf-8")
    lines = list(read_hash_list(listing))
    assert [(x.line_no, x.value.hex(), x.name, x.error) for x in lines] == [
        (2, H1, "a.jpg", None)]


def test_a_header_like_line_after_the_first_is_still_reported(tmp_path):
    listing = tmp_path / "hashes.csv"
    listing.write_text(f"{H1},100,a.jpg\nhash,quality,filename\n", encoding="utf-8")
    lines = list(read_hash_list(listing))
    assert lines[1].value is None and "line 2" in lines[1].error


def test_import_of_meta_csv_with_a_header_has_no_bad_line(catalog_address, tmp_path, capsys):
    listing = tmp_path / "hashes.csv"
    listing.write_text(f"hash,quality,filename\n{H1},100,a.jpg\n", encoding="utf-8")
    code = main(["--db", str(catalog_address), "import-hashes", str(listing), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (summary["lines"], summary["images_added"], summary["failed"]) == (1, 1, 0)


def test_a_first_line_holding_a_hash_is_never_taken_for_a_header(tmp_path):
    listing = tmp_path / "hashes.csv"
    listing.write_text(f"pdq,{H1}\n", encoding="utf-8")
    (line,) = read_hash_list(listing)
    assert line.line_no == 1 and line.error  # reported, not passed over


def test_a_list_of_another_signal_is_imported_as_that_signal(tmp_path):
    """import_hashes takes the list's signal: pHash lines are 16 hex digits."""
    record = imgmatch.hash_bytes((FIXTURES / "originals" / "temple.jpg").read_bytes())
    phash = record["signals"]["phash"]["hex"]
    listing = tmp_path / "phash.txt"
    listing.write_text(f"phash {phash} alert-1\n{phash[:-1]},50,x.jpg\npdq {H1}\n")
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        summary = c.import_hashes(listing, signal="phash", platform="partner")
        assert (summary["lines"], summary["images_added"], summary["failed"]) == (3, 1, 2)
        assert summary["links_added"] == 0 and c.coverage() == {"phash": 1}
        (match,) = c.query_hash(imgmatch.parse_hash(phash, "phash"))
    assert match.sha256 is None and match.signals == {"phash": phash}
    assert [s.source for s in match.sightings] == ["alert-1"]


def test_a_partners_hash_scores_alike_in_either_tier(tmp_path):
    """A partner's PDQ has no local features: in a robust collection (the
    default) it is weighed by the PDQ model, as in the hash tier, not marked
    down for a verification it could never have."""
    temple = imgmatch.hash_bytes((FIXTURES / "originals" / "temple.jpg").read_bytes())
    listing = tmp_path / "list.txt"
    listing.write_text(f"pdq {temple['signals']['pdq']['hex']} alert-42\n")
    scores = {}
    for tier, signals in (("robust", imgmatch.DEFAULT_SIGNALS),
                          ("hashes", imgmatch.HASH_SIGNALS)):
        with imgmatch.Collection.open(tmp_path / f"{tier}.db") as c:
            c.import_hashes(listing, platform="partner")
            c.ingest(iter_manifest(FIXTURES / "manifest.csv"), signals=signals)
            assert c.robust == (tier == "robust")
            found = [m for m in c.query(FIXTURES / "originals" / "temple.jpg")
                     if m.sha256 is None]
        assert len(found) == 1 and found[0].agreed == ("pdq",), tier
        scores[tier] = found[0].score
    assert scores["robust"] == pytest.approx(scores["hashes"]) and scores["robust"] >= 0.98
