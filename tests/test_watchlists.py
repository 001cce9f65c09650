"""Watchlists: partners' hashes checked against every new image, with alerts.

Real fixtures through a real catalog: the list holds the PDQ of fixture
photos, the crawl is the fixtures' manifest, and what is checked is what an
analyst reads: the alerts' rows, the images' hits, the clusters.
"""

from __future__ import annotations

import functools
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps

import imgmatch
from imgmatch import Collection, Sighting, WatchlistError
from imgmatch.sources import iter_manifest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MANIFEST = FIXTURES / "manifest.csv"
#: Watchlists check hashes: the hash tier is enough, and quicker to ingest.
HASHES = imgmatch.HASH_SIGNALS


def pdq_of(path: Path) -> str:
    return imgmatch.hash_bytes(path.read_bytes(), ["pdq"])["signals"]["pdq"]["hex"]


def manifest_rows() -> list[dict[str, str]]:
    import csv
    with MANIFEST.open() as fh:
        return list(csv.DictReader(fh))


def _pdq(image: Image.Image) -> imgmatch.HashValue:
    out = io.BytesIO()
    image.save(out, "BMP")  # lossless, and quick to write
    return imgmatch.parse_hash(
        imgmatch.hash_bytes(out.getvalue(), ["pdq"])["signals"]["pdq"]["hex"])


@functools.cache
def sightings_of(picture: str) -> int:
    """How many manifest rows show this fixture picture within PDQ's threshold
    of its original, as it is or mirrored or rotated (each re-hashed from the
    transformed pixels, not as the engine derives variants): the reposts a
    partner's PDQ can find. Heavier edits are beyond any PDQ list."""
    original = _pdq(Image.open(FIXTURES / "originals" / f"{picture}.jpg"))
    n = 0
    for r in manifest_rows():
        if not Path(r["path"]).name.startswith(picture):
            continue
        image = Image.open(FIXTURES / r["path"]).convert("RGB")
        views = [image] + [image.transpose(t) for t in Image.Transpose]
        n += min(_pdq(v) - original for v in views) <= 31
    return n


@pytest.fixture()
def hash_list(tmp_path: Path) -> Path:
    path = tmp_path / "partner.txt"
    path.write_text(f"# a partner's list\npdq {pdq_of(FIXTURES / 'originals' / 'astronaut.jpg')}\n"
                    f"{pdq_of(FIXTURES / 'originals' / 'coffee.jpg')},100,case-17/coffee\n")
    return path


def test_every_new_sighting_of_a_watched_picture_raises_one_alert(catalog_address, tmp_path, hash_list):
    with Collection.open(catalog_address) as c:
        done = c.watchlist_add("ngo", hash_list, source="NGO X", licence="no onward sharing")
        assert done["entries_added"] == 2 and done["hits"] == 0
        summary = c.ingest(iter_manifest(MANIFEST), signals=HASHES)
        alerts = c.alerts()
        assert summary.alerts_added == len(alerts) > 0
        by_entry: dict[str | None, list[dict]] = {}
        for a in alerts:
            assert a["kind"] == "match"
            assert a["watchlist"] == {"name": "ngo", "source": "NGO X",
                                      "licence": "no onward sharing", "threshold": 31,
                                      "negative": False}
            assert a["evidence"]["distance"] <= 31 and a["score"] > 0.9
            assert a["sighting"]["platform"] and a["sighting"]["url"].startswith("https://")
            by_entry.setdefault(a["entry"]["name"], []).append(a)
        # every sighting of the two pictures, and nothing else
        assert len(by_entry[None]) == sightings_of("astronaut")
        assert len(by_entry["case-17/coffee"]) == sightings_of("coffee")
        assert [a["id"] for a in alerts] == sorted(a["id"] for a in alerts)
        # the same crawl again: nothing new was seen, nothing is raised
        assert c.ingest(iter_manifest(MANIFEST), signals=HASHES).alerts_added == 0
        assert len(c.alerts()) == len(alerts)
        # the cursor pages through them
        assert c.alerts(after=alerts[2]["id"], limit=2) == alerts[3:5]


def test_a_list_added_later_finds_what_is_already_catalogued(catalog_address, tmp_path, hash_list):
    with Collection.open(catalog_address) as c:
        c.ingest(iter_manifest(MANIFEST), signals=HASHES)
        done = c.watchlist_add("ngo", hash_list)
        expected = sightings_of("astronaut") + sightings_of("coffee")
        assert done["alerts_added"] == expected == len(c.alerts())
        astronaut = c.alerts()[0]["image"]["sha256"]
        record = c.image(astronaut)
        assert record.watched and record.watched[0]["watchlist"] == "ngo"
        assert record.to_json()["watched"][0]["distance"] <= 31


def test_a_mirrored_repost_is_caught_and_says_so(catalog_address, tmp_path, hash_list):
    mirrored = tmp_path / "mirrored.png"
    ImageOps.mirror(Image.open(FIXTURES / "originals" / "astronaut.jpg")).save(mirrored)
    with Collection.open(catalog_address) as c:
        c.watchlist_add("ngo", hash_list)
        c.add(mirrored, Sighting(platform="nightads", url="https://nightads.example/p/1.png"))
        (alert,) = c.alerts()
        assert alert["evidence"]["transform"] == "mirror"
        assert alert["evidence"]["distance"] <= 31


def test_a_negative_list_silences_alerts_links_and_clusters(catalog_address, tmp_path, hash_list):
    stock = tmp_path / "stock.txt"
    stock.write_text(f"pdq {pdq_of(FIXTURES / 'originals' / 'astronaut.jpg')}\n")
    with Collection.open(catalog_address) as c:
        c.watchlist_add("ngo", hash_list)
        c.watchlist_add("stock-photos", stock, negative=True)
        c.ingest(iter_manifest(MANIFEST), signals=HASHES)
        alerts = c.alerts()
        assert alerts and all(a["entry"]["name"] == "case-17/coffee" for a in alerts)
        astronauts = {r[0] for r in c.catalog.conn.execute(
            "SELECT DISTINCT image_id FROM watch_hits h JOIN watch_entries e ON e.id = h.entry_id "
            "JOIN watchlists w ON w.id = e.watchlist_id WHERE w.name = 'stock-photos'")}
        assert astronauts
        linked = {r[0] for r in c.catalog.conn.execute(
            "SELECT a FROM links UNION SELECT b FROM links")}
        assert not astronauts & linked
        clustered = {img.get("sha256") for cl in c.clusters(min_sightings=1) for img in cl.images}
        names = {i["sha256"] for i in c.catalog.images(sorted(astronauts)).values()}
        assert not names & clustered


def test_an_entry_that_floods_is_quarantined_and_reported_once(tmp_path):
    generic = tmp_path / "generic.txt"
    generic.write_text(f"pdq {pdq_of(FIXTURES / 'originals' / 'cat.jpg')}\n")
    originals = sorted((FIXTURES / "originals").glob("*.jpg"))
    with Collection.open(tmp_path / "c.db") as c:
        # a list loosened so far that its entry hits every picture
        c.watchlist_add("loose", generic, threshold=200, flood=2)
        for n, path in enumerate(originals):
            c.add(path, Sighting(platform="citylist", url=f"https://citylist.example/{n}.jpg"))
        alerts = c.alerts()
        kinds = [a["kind"] for a in alerts]
        assert kinds == ["match", "match", "quarantine"]
        notice = alerts[-1]
        assert notice["distinct_pictures"] == 3 and notice["limit"] == 2
        assert "release" in notice["message"]
        assert c.watchlists()[0]["quarantined"] == 1
        assert c.watch_lookup(pdq_of(originals[0]), watchlists=["loose"])[0].quarantined
        # released, it alerts again on the next new sighting
        assert c.watchlist_release("loose") == 1
        c.add(originals[0], Sighting(platform="nightads", url="https://nightads.example/x.jpg"))
        assert c.alerts()[-1]["kind"] == "match"


def test_reposts_of_one_picture_are_not_a_flood(catalog_address, tmp_path, hash_list):
    with Collection.open(catalog_address) as c:
        c.watchlist_add("ngo", hash_list, flood=1)
        c.ingest(iter_manifest(MANIFEST), batch_size=1, signals=HASHES)
        assert {a["kind"] for a in c.alerts()} == {"match"}
        assert c.watchlists()[0]["quarantined"] == 0


def test_taking_one_hash_off_a_list_takes_its_hits_and_alerts(tmp_path, hash_list):
    coffee = pdq_of(FIXTURES / "originals" / "coffee.jpg")
    with Collection.open(tmp_path / "c.db") as c:
        c.watchlist_add("ngo", hash_list)
        c.ingest(iter_manifest(MANIFEST), signals=HASHES)
        before = len(c.alerts())
        assert c.watchlist_remove_hashes("ngo", [coffee]) == 1
        assert len(c.alerts()) == before - sightings_of("coffee")
        assert all(a["entry"]["hex"] != coffee for a in c.alerts())
        assert not c.watch_lookup(coffee)
        assert c.watchlist_remove("ngo") == 1
        assert c.alerts() == [] and c.watchlists() == []
    # the removed entry, its name and the alerts that quoted it are nowhere in
    # the catalog's files (the picture's own PDQ stays: the image is catalogued)
    for f in tmp_path.glob("c.db*"):
        if f.is_file():
            data = f.read_bytes()
            assert coffee.encode() not in data and b"case-17/coffee" not in data, f.name


def test_erasing_an_image_erases_its_alerts(tmp_path, hash_list):
    with Collection.open(tmp_path / "c.db") as c:
        c.watchlist_add("ngo", hash_list)
        c.ingest(iter_manifest(MANIFEST), signals=HASHES)
        first = c.alerts()[0]
        sha = first["image"]["sha256"]
        urls = [a["sighting"]["url"] for a in c.alerts() if a["image"]["sha256"] == sha]
        c.erase([sha])
        assert all(a["image"]["sha256"] != sha for a in c.alerts())
        assert c.alerts()  # the other images' alerts stay
    for f in tmp_path.glob("c.db*"):
        if f.is_file():
            data = f.read_bytes()
            assert sha.encode() not in data, f.name
            assert not [u for u in urls if u.encode() in data], f.name


def test_imported_hashes_are_checked_too(catalog_address, tmp_path, hash_list):
    partner = tmp_path / "other-partner.csv"
    partner.write_text(f"{pdq_of(FIXTURES / 'originals' / 'astronaut.jpg')},100,their-id-9\n")
    with Collection.open(catalog_address) as c:
        c.watchlist_add("ngo", hash_list)
        done = c.import_hashes(partner, platform="hotline")
        assert done["alerts_added"] == 1
        (alert,) = c.alerts()
        assert alert["image"]["hash_key"].startswith("pdq:")
        assert alert["sighting"] == {"platform": "hotline", "source": "their-id-9"}


def test_lookup_honours_each_lists_threshold(catalog_address, tmp_path):
    astronaut = pdq_of(FIXTURES / "originals" / "astronaut.jpg")
    flipped = "".join(f"{int(c, 16) ^ 0x1:x}" for c in astronaut[:20]) + astronaut[20:]
    assert imgmatch.parse_hash(flipped) - imgmatch.parse_hash(astronaut) == 20
    strict, loose = tmp_path / "strict.txt", tmp_path / "loose.txt"
    strict.write_text(f"pdq {astronaut}\n")
    loose.write_text(f"pdq {astronaut}\n")
    with Collection.open(catalog_address) as c:
        c.watchlist_add("strict", strict, threshold=10)
        c.watchlist_add("loose", loose)
        found = c.watch_lookup(flipped)
        assert [(m.watchlist, m.distance) for m in found] == [("loose", 20)]
        assert [m.watchlist for m in c.watch_lookup(astronaut)] == ["loose", "strict"]
        assert c.watch_lookup(astronaut, watchlists=["strict"])[0].entry_id == \
            c.watch_lookup(astronaut, watchlists=["strict"])[0].entry_id


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "semi;colon", "new\nline"])
def test_bad_watchlist_names_are_refused(catalog_address, tmp_path, hash_list, name):
    with Collection.open(catalog_address) as c, pytest.raises(WatchlistError):
        c.watchlist_add(name, hash_list)


def test_adding_a_list_twice_says_how_to_append(catalog_address, tmp_path, hash_list):
    with Collection.open(catalog_address) as c:
        c.watchlist_add("ngo", hash_list)
        with pytest.raises(WatchlistError, match="--append"):
            c.watchlist_add("ngo", hash_list)
        assert c.watchlist_add("ngo", hash_list, append=True)["already_listed"] == 2


def test_watchlist_commands(catalog_address, tmp_path, hash_list):
    db = catalog_address

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "imgmatch.cli", "--db", str(db), *args],
                              capture_output=True, text=True, timeout=120)

    done = run("watchlist", "add", "ngo", str(hash_list), "--source", "NGO X", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["entries_added"] == 2
    listed = json.loads(run("watchlist", "list", "--json").stdout)
    assert listed[0]["name"] == "ngo" and listed[0]["entries"] == 2
    alerts_file = tmp_path / "alerts.jsonl"
    done = run("ingest", "--fast", "--quiet", "--manifest", str(MANIFEST),
               "--alerts", str(alerts_file))
    assert done.returncode == 0, done.stderr
    delivered = [json.loads(line) for line in alerts_file.read_text().splitlines()]
    printed = [json.loads(line) for line in run("alerts").stdout.splitlines()]
    assert delivered == printed and len(printed) == \
        sightings_of("astronaut") + sightings_of("coffee")
    # nothing new: the file gets nothing twice
    run("ingest", "--fast", "--quiet", "--manifest", str(MANIFEST), "--alerts", str(alerts_file))
    assert len(alerts_file.read_text().splitlines()) == len(printed)
    done = run("watchlist", "remove", "ngo")
    assert done.returncode == 0 and "removed 2 entries" in done.stdout
    bad = run("watchlist", "remove", "nope")
    assert bad.returncode == 3 and "no watchlist named 'nope'" in bad.stderr


def test_the_watchlist_and_alert_docs_commands_run(tmp_path):
    import re

    from test_hash_export import bash_blocks, run_blocks

    text = (Path(__file__).resolve().parents[1] / "docs" / "exchange.md").read_text()
    blocks = []
    for section in ("Watchlists", "Alerts"):
        found = re.search(rf"^## {section}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
        assert found, f"docs/exchange.md has no '## {section}' section"
        blocks += bash_blocks(found.group(1))
    runs = run_blocks(blocks, tmp_path)
    assert "2 hashes added" in runs[0].stdout and "NGO X hotline" in runs[0].stdout
    assert "removed 1 entry" in runs[1].stdout
    first = json.loads(runs[2].stdout.splitlines()[0])
    assert first["kind"] == "match" and first["watchlist"]["name"] == "ngo-x"
    assert all(json.loads(line)["id"] > 1 for line in runs[2].stdout.splitlines()[1:])


def test_images_that_gain_pdq_in_an_upgrade_are_checked_then(catalog_address, tmp_path, hash_list):
    with Collection.open(catalog_address) as c:
        c.ingest(iter_manifest(MANIFEST), signals=["phash", "dhash"])
        assert c.watchlist_add("ngo", hash_list)["hits"] == 0  # no PDQ to compare yet
        summary = c.upgrade(["pdq", "phash", "dhash"])
        assert summary.images_upgraded > 0
        assert len(c.alerts()) == sightings_of("astronaut") + sightings_of("coffee")


def test_alerts_on_standard_output_need_it_to_themselves(catalog_address, tmp_path, hash_list):
    db = catalog_address

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "imgmatch.cli", "--db", str(db), *args],
                              capture_output=True, text=True, timeout=120)

    assert run("watchlist", "add", "ngo", str(hash_list)).returncode == 0
    for extra in ([], ["--quiet", "--json"], ["--quiet", "--emit-matches"]):
        refused = run("ingest", "--fast", "--manifest", str(MANIFEST), "--alerts", "-", *extra)
        assert refused.returncode == 2 and "standard output" in refused.stderr
    done = run("ingest", "--fast", "--quiet", "--manifest", str(MANIFEST), "--alerts", "-")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines and all(a["kind"] == "match" for a in lines)
