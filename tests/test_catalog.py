"""The catalog: versioned schema, refusing foreign or future files, atomic batches.

Tests that take ``catalog_address`` run on both engines: an SQLite file, and
a PostgreSQL database (see conftest.py)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from imgmatch import pg
from imgmatch.catalog import MIGRATIONS, SCHEMA_VERSION, Catalog
from imgmatch.errors import CatalogError, ImgmatchError
from imgmatch.records import ImageRow, SignalRow, Sighting


def image_row(seed: str) -> ImageRow:
    sha = hashlib.sha256(seed.encode()).hexdigest()
    return ImageRow(sha256=sha, size_bytes=100, width=10, height=10, format="JPEG", mode="RGB",
                    frames=1, signals=(SignalRow("phash", 1, bytes(8), 80),))


def counts(path: Path | str) -> dict[str, int]:
    with Catalog.open(path, readonly=True) as catalog:
        return catalog.counts()


def test_new_catalog_records_its_schema_version(tmp_path):
    path = tmp_path / "c.db"
    Catalog.open(path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        rows = conn.execute("SELECT version, name, applied_at FROM migrations "
                            "ORDER BY version").fetchall()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master "
                                             "WHERE type = 'table'")}
    finally:
        conn.close()
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 1
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    assert [r[1] for r in rows] == [name for name, _ in MIGRATIONS]
    assert all(r[2].endswith("Z") for r in rows)
    assert {"images", "signals", "sightings", "links", "failures", "runs", "meta",
            "migrations"} <= tables


def test_reopening_keeps_the_collection_id_and_migrations(catalog_address, tmp_path):
    path = catalog_address
    with Catalog.open(path) as catalog:
        cid = catalog.collection_id
    with Catalog.open(path) as catalog:
        assert catalog.collection_id == cid
        n = catalog.conn.execute("SELECT count(*) FROM migrations").fetchone()[0]
    assert n == SCHEMA_VERSION
    with Catalog.open(tmp_path / "other.db") as other:
        assert other.collection_id != cid
    assert len(cid) == 32


def test_foreign_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "foreign.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE foo (x INTEGER)")
    conn.execute("INSERT INTO foo VALUES (1)")
    conn.commit()
    conn.close()
    with pytest.raises(CatalogError, match="not an imgmatch catalog"):
        Catalog.open(path)
    # and nothing was added to it
    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master "
                                             "WHERE type = 'table'")}
        assert tables == {"foo"}
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    finally:
        conn.close()
    with pytest.raises(CatalogError):
        Catalog.open(path, readonly=True)


def test_a_catalog_another_process_just_created_is_not_taken_for_foreign(tmp_path,
                                                                        monkeypatch):
    """Two processes open one new PostgreSQL catalog at once: the first
    commits its first migration between the second's read of the schema
    version (none yet) and its look for tables (the first's). That is an
    imgmatch catalog, not a foreign database. Here the second's first read
    is made to come before the first's commit."""
    path = tmp_path / "c.db"
    Catalog.open(path).close()  # the other process, done
    version = Catalog._schema_version
    reads: list[int] = []

    def too_early(self: Catalog) -> int:
        reads.append(0)
        return 0 if len(reads) == 1 else version(self)

    monkeypatch.setattr(Catalog, "_schema_version", too_early)
    with Catalog.open(path) as c:
        assert c.collection_id and c.meta("deletions") == "0"
    assert len(reads) >= 2


def test_foreign_sqlite_file_read_only_says_what_it_is(tmp_path):
    path = tmp_path / "foreign.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE foo (x INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(CatalogError, match="not an imgmatch catalog"):
        Catalog.open(path, readonly=True)


@pytest.mark.parametrize("readonly", [False, True])
def test_garbage_file_is_refused(tmp_path, readonly):
    path = tmp_path / "garbage.db"
    junk = bytes(range(256)) * 64
    path.write_bytes(junk)
    with pytest.raises(CatalogError, match="not an imgmatch catalog"):
        Catalog.open(path, readonly=readonly)
    assert path.read_bytes() == junk


@pytest.mark.parametrize("readonly", [False, True])
def test_catalog_from_a_newer_imgmatch_is_refused(tmp_path, readonly):
    path = tmp_path / "c.db"
    Catalog.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(CatalogError, match="upgrade") as info:
        Catalog.open(path, readonly=readonly)
    assert str(SCHEMA_VERSION + 1) in str(info.value)


def test_readonly_open_of_a_missing_file(tmp_path):
    path = tmp_path / "nothing.db"
    with pytest.raises(CatalogError, match="no collection"):
        Catalog.open(path, readonly=True)
    assert not path.exists()


def test_catalog_error_is_an_imgmatch_error():
    assert issubclass(CatalogError, ImgmatchError)


def test_readonly_catalog_cannot_write(catalog_address):
    path = catalog_address
    Catalog.open(path).close()
    with Catalog.open(path, readonly=True) as catalog:
        with pytest.raises(pg.errors(sqlite3.OperationalError)):
            catalog.write_batch([image_row("a")], [], [], None)
    assert counts(path)["images"] == 0


def test_write_batch_counts_and_is_idempotent(catalog_address):
    path = catalog_address
    row = image_row("a")
    sighting = Sighting(platform="citylist", url="https://x.example/1", source="a.jpg")
    with Catalog.open(path) as catalog:
        first = catalog.write_batch([row], [(row.sha256, sighting)],
                                    [("bad.jpg", "decode-error", "broken")], None)
        assert (first.images_added, first.sightings_added, first.failures) == (1, 1, 1)
        again = catalog.write_batch([row], [(row.sha256, sighting)],
                                    [("bad.jpg", "decode-error", "still broken")], None)
        assert (again.images_added, again.images_known) == (0, 1)
        assert (again.sightings_added, again.sightings_known) == (0, 1)
        assert catalog.counts()["failures"] == 1
        assert catalog.failures()[0]["detail"] == "still broken"
        image_id = catalog.image_id(row.sha256)
        assert catalog.image_id(row.sha256.upper()) == image_id
        assert catalog.signals_of([image_id]) == {image_id: {"phash": (bytes(8), 80)}}


def test_write_batch_is_atomic(catalog_address):
    path = catalog_address
    good = image_row("good")
    unknown = hashlib.sha256(b"never catalogued").hexdigest()
    with Catalog.open(path) as catalog:
        with pytest.raises(CatalogError, match=unknown):
            catalog.write_batch(
                [good],
                [(good.sha256, Sighting(platform="citylist")),
                 (unknown, Sighting(platform="nightads"))],
                [("bad.jpg", "decode-error", "broken")], None)
        assert catalog.counts() | {"runs": 0} == {
            "images": 0, "sightings": 0, "platforms": 0, "failures": 0, "links": 0,
            "runs": 0, "features": 0}
        assert catalog.signal_counts() == {}
        assert not catalog.has_image(good.sha256)
        # the connection is usable afterwards, and a good batch commits
        result = catalog.write_batch([good], [(good.sha256, Sighting(platform="x"))], [],
                                     None)
        assert (result.images_added, result.sightings_added) == (1, 1)
    assert counts(path)["images"] == 1


def test_write_batch_rolls_back_when_the_linker_fails(catalog_address):
    path = catalog_address

    def broken_linker(new_images):
        raise RuntimeError("linker failed")

    with Catalog.open(path) as catalog:
        with pytest.raises(RuntimeError):
            catalog.write_batch([image_row("a"), image_row("b")], [], [], None, broken_linker)
    assert counts(path)["images"] == 0


def test_sighting_clears_the_failure_of_its_source(catalog_address):
    row = image_row("a")
    with Catalog.open(catalog_address) as catalog:
        catalog.write_batch([], [], [("crawl/a.jpg", "decode-error", "broken"),
                                     ("crawl/b.jpg", "empty-file", "empty")], None)
        catalog.write_batch([row], [(row.sha256, Sighting(source="crawl/a.jpg"))], [], None)
        assert [f["source"] for f in catalog.failures()] == ["crawl/b.jpg"]


def test_sighting_key_depends_on_metadata():
    sha = "0" * 64
    a = Sighting(platform="citylist", url="u", extra={"phone": "1"})
    assert a.key(sha) == Sighting(platform="citylist", url="u", extra={"phone": "1"}).key(sha)
    assert a.key(sha) != Sighting(platform="citylist", url="u", extra={"phone": "2"}).key(sha)
    assert a.key(sha) != Sighting(platform="nightads", url="u", extra={"phone": "1"}).key(sha)
    assert a.key(sha) != a.key("1" * 64)


def test_runs_are_recorded(catalog_address):
    with Catalog.open(catalog_address) as catalog:
        run_id = catalog.start_run("ingest", {"paths": ["x"]})
        catalog.finish_run(run_id, "ok", {"files_seen": 3})
        (run,) = catalog.last_runs()
    assert (run["id"], run["command"], run["status"]) == (run_id, "ingest", "ok")
    assert run["stats"] == {"files_seen": 3}
    assert run["finished_at"] >= run["started_at"]


# ------------------------------------------------------------------ tallies
def _grouped(catalog, sql: str) -> dict:
    return dict(catalog.conn.execute(sql))


def assert_tallies_match(catalog) -> None:
    """The trigger-kept tallies equal a row-by-row count."""
    assert catalog.counts() == catalog.recount()
    assert catalog.signal_counts() == _grouped(
        catalog, "SELECT signal, count(*) FROM signals GROUP BY signal")
    assert catalog.platform_counts() == _grouped(
        catalog, "SELECT platform, count(*) FROM sightings GROUP BY platform")


def test_tallies_follow_every_write(catalog_address, tmp_path):
    import imgmatch
    from imgmatch.sources import iter_manifest

    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a picture")
    listing = tmp_path / "list.txt"
    listing.write_text("pdq " + "ab" * 32 + " partner-1\n" + "pdq " + "cd" * 32 + "\n")
    db = catalog_address
    with imgmatch.Collection.open(db) as c:
        c.ingest(iter_manifest(fixtures / "manifest.csv"), signals=imgmatch.ROBUST_SIGNALS)
        assert c.catalog.counts()["features"] == 20
        c.add_many([(bad, None)])                      # a failure
        assert_tallies_match(c.catalog)
        c.ingest(iter_manifest(fixtures / "manifest.csv"))  # all known: nothing changes
        c.import_hashes(listing, platform="partner")
        assert_tallies_match(c.catalog)
        bad.write_bytes((fixtures / "originals" / "cat.jpg").read_bytes())
        c.add_many([(bad, None)])                      # the failure is cleared
        assert c.catalog.counts()["failures"] == 0
        assert_tallies_match(c.catalog)
        victims = [row[0] for row in c.catalog.conn.execute(
            "SELECT sha256 FROM images WHERE sha256 IS NOT NULL LIMIT 3")]
        c.erase(victims)                               # cascades: signals, sightings, links
        assert_tallies_match(c.catalog)
        counted = c.catalog.counts()
    if not isinstance(db, Path):
        return  # the rest takes an SQLite file back to before the tallies
    # a catalog from before the tallies gets them from its rows
    conn = sqlite3.connect(db)
    triggers = [name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'tally_%'")]
    assert len(triggers) == 12
    conn.executescript("".join(f"DROP TRIGGER {t};" for t in triggers)
                       + "DROP TABLE tallies; ALTER TABLE images DROP COLUMN captured_at;"
                       + "DROP TRIGGER audit_append_only_update;"
                       + "DROP TRIGGER audit_append_only_delete; DROP TABLE audit;"
                       + "ALTER TABLE runs DROP COLUMN pid; ALTER TABLE runs DROP COLUMN host;"
                       + "DROP TABLE alert_deliveries; DROP TABLE alerts; DROP TABLE watch_hits;"
                       + "DROP TABLE watch_entries; DROP TABLE watchlists;"
                       + "DELETE FROM meta WHERE key = 'watch_version';"
                       + "ALTER TABLE links DROP COLUMN regions;"
                       + "DELETE FROM migrations WHERE version >= 7;"
                       + "PRAGMA user_version = 6;")
    conn.close()
    with imgmatch.Collection.open(db) as c:
        assert c.catalog.counts() == counted
        assert_tallies_match(c.catalog)


# --------------------------------------------------------------- PostgreSQL
def test_a_foreign_postgresql_database_is_refused_and_left_alone(postgres_url):
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE foo (x integer)")
    with pytest.raises(CatalogError, match="a PostgreSQL database, but not an imgmatch"):
        Catalog.open(postgres_url)
    with psycopg.connect(postgres_url) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema()")}
    assert tables == {"foo"}


def test_a_postgresql_catalog_from_a_newer_imgmatch_is_refused(postgres_url):
    Catalog.open(postgres_url).close()
    with Catalog.open(postgres_url) as catalog:
        catalog.conn.execute("INSERT INTO migrations VALUES (?, 'from the future', 'x')",
                             (SCHEMA_VERSION + 1,))
    with pytest.raises(CatalogError, match="upgrade imgmatch"):
        Catalog.open(postgres_url, readonly=True)


def test_an_unreachable_server_is_named_without_its_password(tmp_path):
    pytest.importorskip("psycopg")
    with pytest.raises(CatalogError, match="cannot connect") as info:
        Catalog.open("postgresql://analyst:s3cret-pw@127.0.0.1:9/case")
    assert "s3cret-pw" not in str(info.value)
    assert "postgresql://analyst:***@127.0.0.1:9/case" in str(info.value)


def test_processes_opening_a_new_postgresql_catalog_at_once_migrate_it_once(postgres_url):
    from concurrent.futures import ThreadPoolExecutor

    def open_it(_: int) -> str:
        with Catalog.open(postgres_url) as catalog:
            return catalog.collection_id

    with ThreadPoolExecutor(4) as pool:
        ids = set(pool.map(open_it, range(4)))
    assert len(ids) == 1
    with Catalog.open(postgres_url, readonly=True) as catalog:
        versions = [r[0] for r in catalog.conn.execute(
            "SELECT version FROM migrations ORDER BY version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))


def test_the_postgresql_audit_log_is_append_only(postgres_url):
    import psycopg

    with Catalog.open(postgres_url) as catalog:
        catalog.append_audit("analyst", "query", {"n": 1})
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for sql in ("UPDATE audit SET actor = 'someone else'", "DELETE FROM audit"):
            with pytest.raises(psycopg.Error, match="append-only"):
                conn.execute(sql)
    with Catalog.open(postgres_url, readonly=True) as catalog:
        # a read-only catalog still leaves its trace, through a connection of its own
        catalog.append_audit("analyst", "query", {"n": 2})
        assert [e.details["n"] for e in catalog.audit_entries()] == [1, 2]
