"""A PostgreSQL catalog shared by several processes: the CLI, concurrent
ingests, a running service, erasure and the SQL translation.

Each test gets a database of its own on the test server (conftest.py:
``postgres_url``); the engine-neutral catalog tests run on it too
(test_catalog.py, ``catalog_address``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageOps

import imgmatch
from imgmatch import pg

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ORIGINALS = sorted((FIXTURES / "originals").glob("*.jpg"))


def cli(db: str | Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "imgmatch.cli", "--db", str(db), *args],
                          capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def _variants(folder: Path) -> list[Path]:
    """The fixtures' photos with reposts of them made here (mirrored,
    cropped, re-encoded): near-duplicates for the linker to find."""
    folder.mkdir()
    out = []
    for path in ORIGINALS:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            for name, made in (("mirror", ImageOps.mirror(im)),
                               ("crop", im.crop((w // 20, h // 20, w - w // 20, h - h // 20))),
                               ("small", im.resize((w * 2 // 3, h * 2 // 3)))):
                target = folder / f"{path.stem}_{name}.jpg"
                made.save(target, quality=80)
                out.append(target)
    return out


def _timeless(value: object) -> object:
    """A report without what differs between two runs: when each was made."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items()
                if k not in ("created_at", "made_with", "generated_at")}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def _state(db: str | Path) -> dict:
    """What a collection holds, by content rather than by id: images, the
    sightings (image, source, platform), the linked pairs, and the tallies."""
    with imgmatch.Collection.open(db, readonly=True) as c:
        conn = c.catalog.conn
        sha = dict(conn.execute("SELECT id, coalesce(sha256, hash_key) FROM images"))
        sightings = sorted((sha[i], s, p) for i, s, p in conn.execute(
            "SELECT image_id, source, platform FROM sightings"))
        links = sorted(tuple(sorted((sha[a], sha[b]))) for a, b in conn.execute(
            "SELECT a, b FROM links"))
        counts = c.catalog.counts()
        assert counts == c.catalog.recount()
        return {"images": sorted(sha.values()), "sightings": sightings, "links": links,
                "counts": {k: counts[k] for k in ("images", "sightings", "links", "failures")}}


def test_the_cli_works_on_a_postgresql_catalog(postgres_url, tmp_path):
    db = postgres_url
    out = json.loads(cli(db, "ingest", "--json", "--manifest",
                         str(FIXTURES / "manifest.csv")).stdout)
    assert (out["images_added"], out["sightings_added"]) == (20, 22)
    # the same on SQLite: the report and a query must read alike
    sqlite_db = tmp_path / "c.db"
    cli(sqlite_db, "ingest", "--quiet", "--manifest", str(FIXTURES / "manifest.csv"))
    for args in (("report", "--format", "json"),
                 ("query", "--json", str(FIXTURES / "queries" / "cat_mirror_crop10.jpg"))):
        ours, theirs = (_timeless(json.loads(cli(d, *args).stdout)) for d in (db, sqlite_db))
        assert ours == theirs, args
    stats = json.loads(cli(db, "stats", "--json").stdout)
    assert stats["images"] == 20 and stats["path"] == pg.redact(db)
    # this node's indexes live under IMGMATCH_INDEX_DIR, in a folder named for the collection
    with imgmatch.Collection.open(db, readonly=True) as c:
        folder = Path(os.environ["IMGMATCH_INDEX_DIR"]) / c.catalog.collection_id
        assert c.index_dir == folder
    assert (folder / "pdq.mih").exists()
    # erase: gone from the catalog and from this node's indexes
    victim = json.loads(cli(db, "query", "--json", str(ORIGINALS[1])).stdout
                        )["matches"][0]["sha256"]
    cli(db, "erase", victim)
    after = cli(db, "query", "--json", str(ORIGINALS[1])).stdout
    assert victim not in after
    assert _state(db)["counts"]["images"] == 19


def test_two_ingests_at_once_into_one_postgresql_catalog_lose_nothing(postgres_url, tmp_path):
    """Two processes ingest overlapping halves of a folder at the same time,
    one batch of two images per transaction: the catalog holds each image
    and sighting once, and the same links as one process ingesting it all
    (each process takes in the other's images before linking its own)."""
    files = ORIGINALS + _variants(tmp_path / "v")
    half = len(files) // 2
    first, second = files[:half + 3], files[half - 3:]  # six files in both
    runs = [subprocess.Popen(
        [sys.executable, "-m", "imgmatch.cli", "--db", postgres_url, "ingest", "--quiet",
         "--platform", "crawl", "--batch-size", "2", "--workers", "0", *map(str, part)],
        stderr=subprocess.PIPE, text=True) for part in (first, second)]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    alone = tmp_path / "alone.db"
    cli(alone, "ingest", "--quiet", "--platform", "crawl", *map(str, files))
    shared, single = _state(postgres_url), _state(alone)
    assert shared == single
    assert shared["counts"]["images"] == len(files) and shared["links"]


def test_a_service_follows_what_other_nodes_add_and_erase(postgres_url, tmp_path):
    """The service on one node, ingests and erasures on another (here another
    process with indexes of its own): found within seconds, gone at once."""
    pytest.importorskip("fastapi")
    from test_service import Client, serving

    db = postgres_url
    cli(db, "ingest", "--quiet", str(ORIGINALS[0]))
    key = cli(db, "keys", "add", "k", "--scope", "admin").stdout.strip().splitlines()[-1]
    other_node = {**os.environ, "IMGMATCH_INDEX_DIR": str(tmp_path / "other-node")}
    probe = ORIGINALS[1].read_bytes()
    with serving(db, tmp_path) as port:
        client = Client(port, key)

        def found() -> list[dict]:
            status, body = client.post_form("/v1/query", {}, {"image": ("q.jpg", probe)})
            assert status == 200, body
            return body["matches"]

        assert found() == []
        subprocess.run([sys.executable, "-m", "imgmatch.cli", "--db", db, "ingest", "--quiet",
                        str(ORIGINALS[1])], env=other_node, check=True, timeout=120)
        started = time.monotonic()
        while not found():
            assert time.monotonic() - started < 5, "not found within 5 s"
            time.sleep(0.1)
        sha = found()[0]["sha256"]
        subprocess.run([sys.executable, "-m", "imgmatch.cli", "--db", db, "erase", sha],
                       env=other_node, check=True, timeout=120)
        assert found() == []  # the next request, not the next follow


def test_a_read_only_postgresql_collection_cannot_write(postgres_url):
    cli(postgres_url, "ingest", "--quiet", str(ORIGINALS[0]))
    with imgmatch.Collection.open(postgres_url, readonly=True) as c:
        with pytest.raises(pg.errors()):
            c.catalog.conn.execute("DELETE FROM images")
        assert c.catalog.counts()["images"] == 1


def test_hostile_text_is_stored_without_failing_its_batch(postgres_url, tmp_path):
    """PostgreSQL's text holds no NUL character: a crawled URL with one is
    kept (with U+FFFD in its place), not a failed batch."""
    manifest = tmp_path / "m.jsonl"
    (tmp_path / "a.jpg").write_bytes(ORIGINALS[0].read_bytes())
    manifest.write_text(json.dumps({"path": "a.jpg", "platform": "x",
                                    "url": "https://x.example/a\u0000b",
                                    "phone": "555\u0000"}) + "\n")
    out = json.loads(cli(postgres_url, "ingest", "--json", "--manifest", str(manifest)).stdout)
    assert out["images_added"] == 1 and not out["failures"]
    with imgmatch.Collection.open(postgres_url, readonly=True) as c:
        (row,) = c.catalog.conn.execute("SELECT url, extra FROM sightings").fetchall()
    assert row[0] == "https://x.example/a\ufffdb"


# ------------------------------------------------------------ the translation
def test_placeholders_become_psycopg_s_and_quoted_text_is_left_alone():
    query, returning = pg.translate(
        "INSERT INTO images (id, sha256) VALUES (?, ?) ON CONFLICT DO NOTHING")
    assert query.endswith("VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING id") and returning
    query, returning = pg.translate("SELECT '?', '%', x FROM meta WHERE key = ? LIMIT ?")
    assert query == "SELECT '?', '%%', x FROM meta WHERE key = %s LIMIT %s" and not returning
    assert pg.translate("INSERT INTO links (a, b) VALUES (?, ?)")[1] is False


@given(st.lists(st.sampled_from(["?", "%", "x", " ", "'a'", "'?'"]), max_size=30))
def test_every_unquoted_placeholder_is_translated(parts):
    sql = "SELECT " + "".join(parts)
    query, _ = pg.translate(sql, returning=False)
    unquoted = "".join(p for p in parts if not p.startswith("'"))
    assert query.count("%s") == unquoted.count("?")
    assert query.replace("%s", "").replace("%%", "").count("%") == 0


def test_sqlite_triggers_become_plpgsql():
    out = pg.translate_ddl(
        "CREATE TRIGGER no_edit BEFORE UPDATE ON audit BEGIN\n"
        "    SELECT RAISE(ABORT, 'the audit log is append-only'); END;")
    assert out[0].startswith("CREATE FUNCTION no_edit_fn() RETURNS trigger")
    assert "RAISE EXCEPTION 'the audit log is append-only';" in out[0]
    assert out[1] == ("CREATE TRIGGER no_edit BEFORE UPDATE ON audit FOR EACH ROW "
                      "EXECUTE FUNCTION no_edit_fn()")
    # counters append +1 and -1 rows, folded at commit (no row updated a million times)
    out = pg.translate_ddl(
        "CREATE TRIGGER up AFTER INSERT ON signals BEGIN INSERT INTO tallies (key, n) VALUES "
        "('signal:' || NEW.signal, 1) ON CONFLICT(key) DO UPDATE SET n = tallies.n + 1; END;")
    assert "INSERT INTO tally_pending (key, n) VALUES ('signal:' || NEW.signal, 1);" in out[0]
    out = pg.translate_ddl(
        "CREATE TRIGGER down AFTER DELETE ON sightings BEGIN\n"
        "    UPDATE tallies SET n = n - 1 WHERE key = 'sightings';\n"
        "    UPDATE tallies SET n = n - 1 WHERE key = 'platform' || coalesce(':' || "
        "OLD.platform, ''); END;")
    assert ("INSERT INTO tally_pending (key, n) VALUES ('sightings', -1);\n    INSERT INTO "
            "tally_pending (key, n) VALUES ('platform' || coalesce(':' || OLD.platform, ''), "
            "-1);") in out[0]
    assert pg.translate_ddl("CREATE TABLE tallies (key TEXT PRIMARY KEY, n INTEGER NOT NULL)")[1] \
        == "CREATE TABLE tally_pending (key TEXT NOT NULL, n BIGINT NOT NULL)"
    (table,) = pg.translate_ddl("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB, s REAL, "
                                "PRIMARY KEY (v)) WITHOUT ROWID;")
    assert table == ("CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
                     "v BYTEA, s DOUBLE PRECISION, PRIMARY KEY (v))")


def test_a_url_s_password_is_never_shown():
    assert pg.redact("postgresql://u:pw@db.example:5433/case") == \
        "postgresql://u:***@db.example:5433/case"
    assert pg.redact("postgresql://u@db.example/case") == "postgresql://u@db.example/case"
    assert imgmatch.catalog_address("postgresql://u@h/db") == "postgresql://u@h/db"
    assert imgmatch.catalog_address("case.db") == Path("case.db")
