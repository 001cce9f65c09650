"""Victims' data: private files, pictures only on request, erasure that erases.

The erasure test greps the raw bytes of every file of the collection (the
catalog, its write-ahead log and shared memory, every index file) for
anything of the erased image: its SHA-256 (hex and raw), its hash values,
its local features, its thumbnail, its addresses, ad id, phone and file name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import imgmatch
from imgmatch.cli import main

from conftest import FIXTURES

GONE = FIXTURES / "reposts" / "astronaut_citylist_2023.jpg"
GONE_URL = "https://img.erasable.example/ads/777001/photo-zq81.jpg"
GONE_PAGE = "https://erasable.example/ads/777001"
GONE_AD = "ad-777001-zq81"
GONE_PHONE = "555-9931-77"


def _case(root: Path) -> Path:
    """Three pictures with sightings; the repost of the astronaut is the one to erase."""
    case = root / "case"
    case.mkdir()
    for name, src in (("astro.jpg", FIXTURES / "originals" / "astronaut.jpg"),
                      ("gone-zq81.jpg", GONE),
                      ("cat.jpg", FIXTURES / "originals" / "cat.jpg")):
        shutil.copy(src, case / name)
    (case / "m.csv").write_text(
        "path,platform,url,page_url,ad_id,phone\n"
        "astro.jpg,citylist,https://a.example/1.jpg,https://a.example/1,a1,555-0100\n"
        f"gone-zq81.jpg,nightads,{GONE_URL},{GONE_PAGE},{GONE_AD},{GONE_PHONE}\n"
        "cat.jpg,citylist,https://a.example/2.jpg,https://a.example/2,a2,555-0101\n")
    return case / "m.csv"


def _run(*args: str | Path, umask: int | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "imgmatch.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)
    assert done.returncode in (0, 1), done.stderr
    return done


def _needles(db: Path, sha256: str) -> dict[str, bytes]:
    """Every byte string of the image that must not survive its erasure."""
    with sqlite3.connect(db) as conn:
        image_id = conn.execute("SELECT id FROM images WHERE sha256 = ?", (sha256,)).fetchone()[0]
        values = conn.execute("SELECT signal, value FROM signals WHERE image_id = ?",
                              (image_id,)).fetchall()
        # a near-duplicate kept in the collection may share a 64-bit hash exactly
        others = {bytes(v) for (v,) in conn.execute(
            "SELECT value FROM signals WHERE image_id != ?", (image_id,))}
        (thumb,) = conn.execute("SELECT jpeg FROM thumbnails WHERE image_id = ?",
                                (image_id,)).fetchone()
        (blob,) = conn.execute("SELECT data FROM features WHERE image_id = ?",
                               (image_id,)).fetchone() or (b"",)
    needles = {"sha256 hex": sha256.encode(), "sha256 raw": bytes.fromhex(sha256),
               "url": GONE_URL.encode(), "page": GONE_PAGE.encode(), "ad id": GONE_AD.encode(),
               "phone": GONE_PHONE.encode(), "file name": b"gone-zq81",
               "thumbnail": bytes(thumb)[-200:-136]}  # its own pixels, not shared tables
    needles.update({f"{signal} value": bytes(value) for signal, value in values
                    if bytes(value) not in others})
    if blob:
        needles["local features"] = bytes(blob)[100:164]
    return needles


def _found(folder: Path, needles: dict[str, bytes]) -> list[str]:
    hits = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{what} in {path.name}" for what, needle in needles.items()
                     if needle in data]
    return hits


def test_erase_leaves_no_byte_of_the_image_in_any_file(tmp_path):
    manifest = _case(tmp_path)
    db = tmp_path / "store" / "c.db"
    db.parent.mkdir()
    _run("--db", db, "ingest", "--robust", "--thumbnails", "--quiet", "--manifest", manifest)
    sha = hashlib.sha256(GONE.read_bytes()).hexdigest()
    needles = _needles(db, sha)
    assert len(needles) >= 10  # pdq and local features at least beside the text
    assert _found(db.parent, needles), "the test must see the image before it is erased"
    _run("--db", db, "erase", sha)
    left = _found(db.parent, needles)
    assert left == [], "\n".join(left)
    # what was erased is gone from queries and its id is never given again
    with imgmatch.Collection.open(db) as collection:
        assert sha not in {m.sha256 for m in collection.query(GONE, min_score=0.0)}
        erased_id_floor = collection.catalog.meta("image_id_floor")
        added = collection.add(FIXTURES / "originals" / "rocket.jpg")
        assert collection.catalog.image_id(added.sha256) > int(erased_id_floor)
        assert sha not in {m.sha256 for m in collection.query(GONE, min_score=0.0)}


def test_erase_beside_a_running_service(tmp_path):
    """The service stops returning the image at once, and neither its index
    saves nor its shutdown write the image back."""
    from test_service import Client, serving

    manifest = _case(tmp_path)
    db = tmp_path / "store" / "c.db"
    db.parent.mkdir()
    _run("--db", db, "ingest", "--thumbnails", "--quiet", "--manifest", manifest)
    key = _run("--db", db, "keys", "add", "k", "--scope", "admin").stdout.strip().splitlines()[-1]
    sha = hashlib.sha256(GONE.read_bytes()).hexdigest()
    needles = _needles(db, sha)
    with serving(db, tmp_path) as port:
        client = Client(port, key)

        def found() -> set[str]:
            status, body = client.post_form(
                "/v1/query", {}, {"image": ("q.jpg", (FIXTURES / "originals" /
                                                      "astronaut.jpg").read_bytes())})
            assert status == 200, body
            return {m["sha256"] for m in body["matches"]}

        assert sha in found()
        _run("--db", db, "erase", sha)
        assert sha not in found()  # at once: the next request follows the catalog
        # the service's own uploads after the erasure
        status, _ = client.post_form("/v1/images", {"platform": "x"}, {
            "image": ("r.jpg", (FIXTURES / "originals" / "rocket.jpg").read_bytes())})
        assert status == 200
    assert _found(db.parent, needles) == []
    # the HTTP door erases too
    other = hashlib.sha256((FIXTURES / "originals" / "cat.jpg").read_bytes()).hexdigest()
    with serving(db, tmp_path) as port:
        assert Client(port, key).request("DELETE", f"/v1/images/{other}")[0] == 200
        assert Client(port, key).request("DELETE", f"/v1/images/{other}")[0] == 404
    with imgmatch.Collection.open(db, readonly=True) as collection:
        assert collection.catalog.image_id(other) is None


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_collections_and_reports_are_readable_by_their_owner_only(tmp_path):
    """Under the usual umask 022, every file the CLI makes is 0600, every folder 0700."""
    manifest = _case(tmp_path)
    db = tmp_path / "new" / "c.db"
    db.parent.mkdir()  # the user's folder (the CLI makes none)
    _run("--db", db, "ingest", "--quiet", "--manifest", manifest, umask=0o022)
    _run("--db", db, "report", "--format", "html", "-o", tmp_path / "r.html", umask=0o022)
    made = [p for p in db.parent.rglob("*")]
    assert {p.name for p in made} >= {"c.db", "c.db.indexes"}
    for path in made:
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path
    assert _mode(tmp_path / "r.html") == 0o600


def test_a_library_caller_gets_a_private_catalog_too(tmp_path):
    old = os.umask(0o022)
    try:
        with imgmatch.Collection.open(tmp_path / "lib" / "c.db") as collection:
            collection.add(FIXTURES / "originals" / "cat.jpg")
            files = [p for p in (tmp_path / "lib").rglob("*")]
    finally:
        os.umask(old)
    assert _mode(tmp_path / "lib") == 0o700
    assert {p.name for p in files} >= {"c.db", "c.db-wal", "c.db-shm"}
    for path in files:
        if path.name.startswith("c.db") and path.is_file():
            assert _mode(path) == 0o600, path
        elif path.is_dir():
            assert _mode(path) == 0o700, path


@pytest.mark.parametrize("asked", [False, True])
def test_an_html_report_holds_pictures_only_when_asked_and_says_so(tmp_path, asked):
    manifest = _case(tmp_path)
    db = tmp_path / "c.db"
    assert main(["--db", str(db), "ingest", "--thumbnails", "--quiet", "--manifest",
                 str(manifest)]) == 0
    out = tmp_path / "r.html"
    assert main(["--db", str(db), "report", "--format", "html", "--min-sightings", "1",
                 "-o", str(out), *(["--thumbnails"] if asked else [])]) == 0
    page = out.read_text(encoding="utf-8")
    first_screen = page[:page.index("<main>")]
    if asked:
        shown = re.search(r"This file contains (\d+) pictures?</strong>", first_screen)
        thumbs = re.search(r'id="report-thumbs">(.*?)</script>', page, re.S)
        assert shown and thumbs
        assert int(shown.group(1)) == len(json.loads(thumbs.group(1))) >= 2
    else:
        assert "This file contains no pictures" in first_screen
        assert 'id="report-thumbs"' not in page and "/9j/" not in page
