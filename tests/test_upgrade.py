"""Upgrade in place: images catalogued with fewer signals get the missing ones
from the files and WARC records they were seen in, and say so when they cannot."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import io
import json
import shutil
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from imgmatch import HASH_SIGNALS, Collection, features
from imgmatch import signals as registry
from imgmatch import upgrade as upgrade_module
from imgmatch import workers
from imgmatch.catalog import Catalog
from imgmatch.cli import cli
from imgmatch.collection import hash_bytes
from imgmatch.sources import iter_paths
from imgmatch.warc import iter_warc

from conftest import ORIGINALS


def _copy_originals(folder: Path) -> list[Path]:
    folder.mkdir()
    out = []
    for path in sorted(ORIGINALS.glob("*.jpg")):
        out.append(Path(shutil.copy(path, folder / path.name)))
    return out


def _signal_rows(db: Path) -> dict[str, int]:
    with Catalog.open(db, readonly=True) as catalog:
        counts = dict(catalog.conn.execute(
            "SELECT signal, count(*) FROM signals GROUP BY signal").fetchall())
        counts["orb"] = catalog.conn.execute("SELECT count(*) FROM features").fetchone()[0]
        assert catalog.counts() == catalog.recount()  # the tallies followed
    return counts


def test_a_pdq_query_on_a_collection_without_pdq_says_so_and_upgrade_fixes_it(tmp_path):
    photos = _copy_originals(tmp_path / "photos")
    db = tmp_path / "c.db"
    runner = CliRunner()
    done = runner.invoke(cli, ["--db", str(db), "ingest", "--signals", "phash,dhash", "-q",
                               "--workers", "0", str(tmp_path / "photos")])
    assert done.exit_code == 0, done.output
    pdq = hash_bytes(photos[0].read_bytes(), ("pdq",))["signals"]["pdq"]["hex"]

    before = runner.invoke(cli, ["--db", str(db), "query", "--pdq", pdq])
    assert "0 matches" in before.output
    assert f"{len(photos)} images lack pdq" in before.output
    assert "imgmatch upgrade --signals" in before.output

    done = runner.invoke(cli, ["--db", str(db), "upgrade", "--signals", "pdq,phash,dhash",
                               "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output)
    assert summary["images_missing"] == summary["images_upgraded"] == len(photos)
    assert summary["unreachable"] == 0
    assert _signal_rows(db) == {"pdq": len(photos), "phash": len(photos),
                                "dhash": len(photos), "orb": 0}

    after = runner.invoke(cli, ["--db", str(db), "query", "--pdq", pdq, "--json"])
    assert "lack" not in after.output
    found = json.loads(after.output)["matches"]
    assert found and found[0]["distances"]["pdq"] == 0

    again = runner.invoke(cli, ["--db", str(db), "upgrade", "--signals", "pdq", "--json"])
    assert json.loads(again.output)["images_missing"] == 0  # nothing left to do


def test_robust_ingest_over_known_images_names_what_they_lack(catalog_address, tmp_path):
    _copy_originals(tmp_path / "photos")
    db = catalog_address
    runner = CliRunner()
    runner.invoke(cli, ["--db", str(db), "ingest", "-q", "--fast", "--workers", "0",
                        str(tmp_path / "photos")])
    # the defaults now ask for local features: the hash tier's images lack them
    done = runner.invoke(cli, ["--db", str(db), "ingest", "--workers", "0",
                               str(tmp_path / "photos")])
    assert done.exit_code == 0, done.output
    assert "images added:     0" in done.output
    assert "6 images lack orb" in done.output
    assert "imgmatch upgrade --signals pdq,phash,dhash,orb" in done.output
    with Collection.open(db) as c:
        summary = c.ingest(iter_paths([tmp_path / "photos"]), signals=("pdq", "orb"))
        assert summary.lacking == {"orb": 6}


def _photo_and_crop(folder: Path, width: float, height: float) -> Path:
    """A folder with temple.jpg and crop.jpg, its top-left corner at these shares."""
    folder.mkdir()
    original = Image.open(ORIGINALS / "temple.jpg").convert("RGB")
    original.save(folder / "temple.jpg", quality=92)
    w, h = original.size
    original.crop((0, 0, int(w * width), int(h * height))).save(folder / "crop.jpg", quality=85)
    return folder


def test_upgrade_links_a_crop_that_only_local_features_find(tmp_path):
    """A tight crop is beyond the hashes; once the collection has local
    features, upgrade verifies it against its original and links the two."""
    photos = _photo_and_crop(tmp_path / "photos", 0.55, 0.7)
    db = tmp_path / "c.db"
    with Collection.open(db) as c:
        c.ingest(iter_paths([photos]), signals=HASH_SIGNALS)
        assert c.catalog.counts()["links"] == 0
        summary = c.upgrade(("pdq", "phash", "dhash", "orb"))
        assert summary.images_upgraded == 2 and not summary.unreachable
        assert summary.links_added == 1
        assert c.robust and len(c.descriptors) == 2
        matches = c.query(photos / "crop.jpg")
        assert matches and matches[0].inliers
    with Collection.open(db) as reopened:  # the indexes on disk are current
        assert len(reopened.descriptors) == 2
        assert {m.sha256 for m in reopened.query(photos / "crop.jpg")} >= {
            hashlib.sha256((photos / "temple.jpg").read_bytes()).hexdigest()}


def test_local_features_of_another_version_are_taken_again(tmp_path, monkeypatch):
    """Local features carry their signal's version like a hash: features of an
    older extraction count as lacking, and upgrade replaces them (and only
    them) and links the crop anew with the new ones."""
    photos = _photo_and_crop(tmp_path / "photos", 0.55, 0.7)
    db = tmp_path / "c.db"
    with Collection.open(db) as c:
        c.ingest(iter_paths([photos]))
        assert c.upgrade().images_missing == 0  # nothing to do at the same version
    monkeypatch.setattr(registry.ORB, "version", features.VERSION + 1)
    with Collection.open(db) as c:
        summary = c.upgrade()
        assert summary.images_missing == 2 and summary.images_upgraded == 2
        versions = c.catalog.conn.execute(
            "SELECT DISTINCT version FROM features").fetchall()
        assert versions == [(features.VERSION + 1,)]
        assert c.upgrade().images_missing == 0
        assert c.made_with()["signals"]["orb"] == registry.local().describe()
        assert c.made_with()["signals"]["orb"]["version"] == features.VERSION + 1
        matches = c.query(photos / "crop.jpg")
        assert matches and matches[0].inliers
    assert _signal_rows(db) == {"pdq": 2, "phash": 2, "dhash": 2, "orb": 2}


def test_features_stored_without_their_centre_are_taken_again_with_it(tmp_path):
    """Features of version 2 (before the centre's PDQ was stored beside them)
    still match, but partial matches cannot be compared on their centre:
    upgrade takes them again, with it."""
    photos = _photo_and_crop(tmp_path / "photos", 0.55, 0.7)
    db = tmp_path / "c.db"
    with Collection.open(db) as c:
        c.ingest(iter_paths([photos]))
        rows = c.catalog.conn.execute("SELECT image_id, data FROM features").fetchall()
        with c.catalog.conn:
            for image_id, blob in rows:
                old = dataclasses.replace(features.LocalFeatures.from_bytes(blob), centre=None)
                c.catalog.conn.execute("UPDATE features SET version = 2, data = ? "
                                       "WHERE image_id = ?", (old.to_bytes(), image_id))
    with Collection.open(db) as c:
        assert c.upgrade().images_upgraded == 2
        blobs = [features.LocalFeatures.from_bytes(b) for b, in
                 c.catalog.conn.execute("SELECT data FROM features")]
        assert all(f.centre is not None for f in blobs)
        assert c.catalog.conn.execute("SELECT DISTINCT version FROM features").fetchall() == [
            (features.VERSION,)]


def test_images_whose_files_are_gone_or_changed_are_listed_and_the_rest_upgraded(tmp_path):
    photos = _copy_originals(tmp_path / "photos")
    db = tmp_path / "c.db"
    with Collection.open(db) as c:
        c.ingest(iter_paths([tmp_path / "photos"]), signals=("phash",))
    moved = photos[0].rename(tmp_path / photos[0].name)
    Image.new("RGB", (64, 64), "red").save(photos[1])  # other bytes under the same name
    with Collection.open(db) as c:
        summary = c.upgrade(("phash", "pdq"))
    assert summary.images_missing == 6
    assert summary.images_upgraded == 4
    reasons = sorted(why.split(":")[0] for _, why in summary.unreachable)
    assert reasons == ["missing-file", "source-changed"]
    assert summary.to_json()["unreachable_reasons"] == {"missing-file": 1, "source-changed": 1}
    moved.rename(photos[0])  # back where it was seen: a second run finishes the job
    with Collection.open(db) as c:
        again = c.upgrade(("phash", "pdq"))
    assert again.images_missing == 2 and again.images_upgraded == 1
    assert _signal_rows(db)["pdq"] == 5


def _warc(path: Path) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        with path.open("wb") as fh:
            writer = WARCWriter(fh, gzip=True)
            for n, name in enumerate(("cat.jpg", "rocket.jpg", "coffee.jpg")):
                payload = (ORIGINALS / name).read_bytes()
                headers = StatusAndHeaders("200 OK", [
                    ("Content-Type", "image/jpeg"), ("Content-Length", str(len(payload)))],
                    protocol="HTTP/1.1")
                writer.write_record(writer.create_warc_record(
                    f"https://citylist.example/ads/{n}.jpg", "response",
                    payload=io.BytesIO(payload), http_headers=headers))
        gc.collect()


def test_upgrade_reads_images_back_from_their_warc_records(catalog_address, tmp_path):
    archive = tmp_path / "crawl.warc.gz"
    _warc(archive)
    db = catalog_address
    with Collection.open(db) as c:
        c.ingest(iter_warc(archive), signals=("pdq",))
        summary = c.upgrade(("pdq", "orb"))
    assert summary.images_upgraded == 3 and not summary.unreachable
    assert _signal_rows(db) == {"pdq": 3, "orb": 3}


def test_a_hash_only_image_is_not_counted_as_lacking(catalog_address, tmp_path):
    hashes = tmp_path / "partner.txt"
    hashes.write_text("pdq " + "f" * 32 + "0" * 32 + "\n")
    db = catalog_address
    with Collection.open(db) as c:
        c.import_hashes(hashes)
        assert c.missing_signals(("pdq", "phash")) == {}
        assert c.upgrade(("pdq", "phash")).images_missing == 0


def test_an_upgrade_stopped_midway_keeps_what_it_wrote_and_resumes(catalog_address, tmp_path, monkeypatch):
    _copy_originals(tmp_path / "photos")
    db = catalog_address
    with Collection.open(db) as c:
        c.ingest(iter_paths([tmp_path / "photos"]), signals=("phash",))
    monkeypatch.setattr(upgrade_module, "BATCH", 2)
    monkeypatch.setattr(upgrade_module, "WINDOW", 4)  # ids looked at 4 at a time
    real = workers.analyse_source
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # a kill between two batches' transactions
        return real(*args, **kwargs)

    monkeypatch.setattr(workers, "analyse_source", failing)
    with Collection.open(db) as c, pytest.raises(KeyboardInterrupt):
        c.upgrade(("phash", "pdq"))  # in this process (workers=0), so the patch applies
    assert _signal_rows(db)["pdq"] == 2  # the first batch, whole
    with Catalog.open(db, readonly=True) as catalog:
        run = catalog.last_runs(1)[0]
        assert run["status"] == "interrupted" and run["stats"]["images_upgraded"] == 2
    monkeypatch.setattr(workers, "analyse_source", real)
    with Collection.open(db) as c:
        rest = c.upgrade(("phash", "pdq"))
    assert rest.images_missing == 4 and rest.images_upgraded == 4
    assert _signal_rows(db)["pdq"] == 6


def test_a_file_that_crashes_its_decoder_costs_its_worker_not_the_upgrade(catalog_address, tmp_path,
                                                                          monkeypatch):
    """The files are decoded again, so they get an ingest's isolation: the
    worker analysing a file that kills it is replaced, the file is recorded
    as unreachable with the reason, and the other images are upgraded."""
    photos = _copy_originals(tmp_path / "photos")
    db = catalog_address
    with Collection.open(db) as c:
        c.ingest(iter_paths([tmp_path / "photos"]), signals=("phash",))
    doomed = photos[2].name
    real = workers.analyse_source

    def crashing(path, data, names, source, *args, **kwargs):
        if source.endswith(doomed):
            import faulthandler
            import os
            import signal
            faulthandler.disable()  # no fatal-error dump in a passing run
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(path, data, names, source, *args, **kwargs)

    monkeypatch.setattr(workers, "analyse_source", crashing)  # forked workers inherit it
    with Collection.open(db) as c:
        summary = c.upgrade(("phash", "pdq"), workers=2, timeout=30)
    assert summary.images_upgraded == 5
    assert len(summary.unreachable) == 1 and "crash" in summary.unreachable[0][1]


def test_a_link_verified_geometrically_keeps_its_inliers(tmp_path):
    """A link found by local features says how many keypoints one similarity
    explained, so a report can show the check and not only that it passed."""
    photos = _photo_and_crop(tmp_path / "photos", 0.8, 0.85)
    with Collection.open(tmp_path / "c.db") as c:
        for name in ("temple.jpg", "crop.jpg"):  # the crop, newer, finds its original
            c.ingest(iter_paths([photos / name]), signals=("pdq", "phash", "dhash", "orb"))
        record = c.image(hashlib.sha256((photos / "crop.jpg").read_bytes()).hexdigest())
        (link,) = record.links
        assert "orb" in link.agreed and link.distances["inliers"] >= 20
        (linked,) = c.report_json(min_sightings=1)["clusters"][0]["links"]
    # the reports read it there (the HTML report shows "N inliers")
    assert linked["distances"]["inliers"] == link.distances["inliers"]
