"""The catalog: the collection's single source of truth, in SQLite or PostgreSQL.

Images are keyed by the SHA-256 of their bytes; sightings say where and when
an image was seen; signals hold packed hash bytes; failures record every input
that could not be used, with its reason; runs record each ingest; the audit
log records who queried, exported and erased (hash-chained, append-only, see
:mod:`imgmatch.audit`). Indexes are caches rebuilt from here, never the other
way round.

One writer at a time: writes are batched transactions (``write_batch``) that
take the catalog's write lock, so a crash leaves either a whole batch or none
of it, and ids go by commit order. On SQLite the writer is the process that
owns a :class:`Catalog` in write mode (the audit log excepted: a read-only
catalog appends to it through a connection of its own); on PostgreSQL any
number of processes on any nodes write, each transaction in turn. The schema
is versioned by recorded migrations.
This module knows SQL and nothing of FAISS; rows go in and come out as the
plain records of :mod:`imgmatch.records`. Its SQL runs on both engines; what
PostgreSQL needs said differently is :mod:`imgmatch.pg`'s to translate.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import pg
from .audit import GENESIS, digest_of
from .errors import CatalogError
from .model import AuditEntry
from .records import SIGHTING_FIELDS, Box, ImageRow, LinkRow, Sighting
from .text import utcnow
from .watch_store import WatchStore

#: The id of the next image: above every id the catalog holds or has held.
#: An erased image's id is never given again, so no index or process that
#: still remembers it can mistake a new image for it.
NEXT_IMAGE_ID = ("(SELECT CASE WHEN m > f THEN m ELSE f END + 1 FROM (SELECT "
                 "coalesce((SELECT max(id) FROM images), 0) AS m, "
                 "coalesce((SELECT CAST(value AS BIGINT) FROM meta "
                 "WHERE key = 'image_id_floor'), 0) AS f) AS next_id)")


#: Where a catalog is: an SQLite file's path, or a PostgreSQL URL (a string,
#: since a Path would fold its "//").
Address = str | Path


def catalog_address(value: str | Path) -> Address:
    """A catalog address as given on a command line or in the environment: a
    ``postgresql://`` URL stays a string, anything else is a file path."""
    return str(value) if pg.is_url(str(value)) else Path(value)


def _alive(pid: int) -> bool:
    """Whether a process of this host has this id (a reused id reads as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # not ours to signal (PermissionError): alive
        return True
    return True


def create_private(path: Path) -> None:
    """Create the catalog file (and its folder) readable by its owner only,
    unless it exists: SQLite gives its WAL and shared-memory files the
    database file's permissions, so they are private too. Victims' data must
    not be readable by every local user under the usual umask 022."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def _regions_text(regions: tuple[Box | None, Box | None] | None) -> str | None:
    if regions is None:
        return None
    return json.dumps([None if box is None else [round(v, 3) for v in box]
                       for box in regions])


def _regions(text: str | None) -> tuple[Box | None, Box | None] | None:
    """A link's stored regions; None where it has none, or none this version
    wrote (as if unknown)."""
    if text is None:
        return None
    try:
        boxes = json.loads(text)
        return (_box(boxes[0]), _box(boxes[1]))
    except (ValueError, TypeError, IndexError):
        return None


def _box(value: list[float] | None) -> Box | None:
    if value is None:
        return None
    x0, y0, x1, y1 = (float(v) for v in value)
    return (x0, y0, x1, y1)


MIGRATIONS: list[tuple[str, str]] = [
    ("initial schema", """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        command TEXT NOT NULL,
        args TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL DEFAULT 'running',
        stats TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE images (
        id INTEGER PRIMARY KEY,
        sha256 TEXT UNIQUE,
        size_bytes INTEGER,
        width INTEGER,
        height INTEGER,
        format TEXT,
        mode TEXT,
        frames INTEGER,
        created_at TEXT NOT NULL,
        run_id INTEGER REFERENCES runs(id)
    );
    CREATE TABLE signals (
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        signal TEXT NOT NULL,
        version INTEGER NOT NULL,
        value BLOB NOT NULL,
        quality INTEGER,
        PRIMARY KEY (signal, image_id)
    ) WITHOUT ROWID;
    CREATE INDEX signals_by_image ON signals(image_id);
    CREATE TABLE sightings (
        id INTEGER PRIMARY KEY,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        platform TEXT,
        url TEXT,
        page_url TEXT,
        ad_id TEXT,
        posted_at TEXT,
        collected_at TEXT,
        source TEXT,
        extra TEXT NOT NULL DEFAULT '{}',
        run_id INTEGER REFERENCES runs(id),
        key TEXT NOT NULL UNIQUE
    );
    CREATE INDEX sightings_by_image ON sightings(image_id);
    CREATE INDEX sightings_by_platform ON sightings(platform, posted_at);
    CREATE INDEX sightings_by_posted ON sightings(posted_at);
    CREATE TABLE links (
        a INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        b INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        score REAL NOT NULL,
        distances TEXT NOT NULL,
        agreed TEXT NOT NULL,
        transform TEXT NOT NULL,
        PRIMARY KEY (a, b),
        CHECK (a < b)
    ) WITHOUT ROWID;
    CREATE INDEX links_by_b ON links(b);
    CREATE TABLE failures (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL UNIQUE,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        run_id INTEGER REFERENCES runs(id),
        created_at TEXT NOT NULL
    );
    """),
    ("crawler payload digests, for WARC revisit records", """
    CREATE TABLE payload_digests (
        digest TEXT PRIMARY KEY,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE
    ) WITHOUT ROWID;
    """),
    ("API keys of the HTTP service, stored as hashes", """
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        scopes TEXT NOT NULL,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    """),
    ("ignored images and hashes; opt-in thumbnails", """
    CREATE TABLE ignored (
        id INTEGER PRIMARY KEY,
        image_id INTEGER REFERENCES images(id) ON DELETE CASCADE,
        signal TEXT,
        value BLOB,
        reason TEXT NOT NULL,
        created_at TEXT NOT NULL,
        CHECK ((image_id IS NULL) != (value IS NULL))
    );
    CREATE UNIQUE INDEX ignored_image ON ignored(image_id) WHERE image_id IS NOT NULL;
    CREATE TABLE thumbnails (
        image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
        jpeg BLOB NOT NULL
    );
    """),
    ("images known only by a hash (partners' lists)", """
    ALTER TABLE images ADD COLUMN hash_key TEXT;
    CREATE UNIQUE INDEX images_by_hash_key ON images(hash_key) WHERE hash_key IS NOT NULL;
    """),
    ("local features (the robust tier)", """
    CREATE TABLE features (
        image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        count INTEGER NOT NULL,
        data BLOB NOT NULL
    );
    """),
    ("tallies kept by triggers, so that stats need not count millions of rows", """
    CREATE TABLE tallies (key TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO tallies SELECT 'images', count(*) FROM images;
    INSERT INTO tallies SELECT 'sightings', count(*) FROM sightings;
    INSERT INTO tallies SELECT 'links', count(*) FROM links;
    INSERT INTO tallies SELECT 'failures', count(*) FROM failures;
    INSERT INTO tallies SELECT 'features', count(*) FROM features;
    INSERT INTO tallies SELECT 'signal:' || signal, count(*) FROM signals GROUP BY signal;
    INSERT INTO tallies SELECT 'platform' || coalesce(':' || platform, ''), count(*)
        FROM sightings GROUP BY platform;
    CREATE TRIGGER tally_images_in AFTER INSERT ON images BEGIN INSERT INTO tallies (key, n) VALUES ('images', 1) ON CONFLICT(key) DO UPDATE SET n = tallies.n + 1; END;
    CREATE TRIGGER tally_images_out AFTER DELETE ON images BEGIN UPDATE tallies SET n = n - 1 WHERE key = 'images'; END;
    CREATE TRIGGER tally_links_in AFTER INSERT ON links BEGIN INSERT INTO tallies (key, n) VALUES ('links', 1) ON CONFLICT(key) DO UPDATE SET n = tallies.n + 1; END;
    CREATE TRIGGER tally_links_out AFTER DELETE ON links BEGIN UPDATE tallies SET n = n - 1 WHERE key = 'links'; END;
    CREATE TRIGGER tally_failures_in AFTER INSERT ON failures BEGIN INSERT INTO tallies (key, n) VALUES ('failures', 1) ON CONFLICT(key) DO UPDATE SET n = tallies.n + 1; END;
    CREATE TRIGGER tally_features_in AFTER INSERT ON features BEGIN
        INSERT INTO tallies (key, n) VALUES ('features', 1)
            ON CONFLICT(key) DO UPDATE SET n = tallies.n + 1; END;
    CREATE TRIGGER tally_features_out AFTER DELETE ON features BEGIN
        UPDATE tallies SET n = n - 1 WHERE key = 'features'; END;
    CREATE TRIGGER tally_failures_out AFTER DELETE ON failures BEGIN UPDATE tallies SET n = n - 1 WHERE key = 'failures'; END;
    CREATE TRIGGER tally_signals_in AFTER INSERT ON signals BEGIN
        INSERT INTO tallies (key, n) VALUES ('signal:' || NEW.signal, 1) ON CONFLICT(key) DO UPDATE SET n = tallies.n + 1; END;
    CREATE TRIGGER tally_signals_out AFTER DELETE ON signals BEGIN
        UPDATE tallies SET n = n - 1 WHERE key = 'signal:' || OLD.signal; END;
    CREATE TRIGGER tally_sightings_in AFTER INSERT ON sightings BEGIN
        INSERT INTO tallies (key, n) VALUES ('sightings', 1) ON CONFLICT(key) DO UPDATE SET n = tallies.n + 1;
        INSERT INTO tallies (key, n) VALUES ('platform' || coalesce(':' || NEW.platform, ''), 1) ON CONFLICT(key) DO UPDATE SET n = tallies.n + 1; END;
    CREATE TRIGGER tally_sightings_out AFTER DELETE ON sightings BEGIN
        UPDATE tallies SET n = n - 1 WHERE key = 'sightings';
        UPDATE tallies SET n = n - 1 WHERE key = 'platform' || coalesce(':' || OLD.platform, ''); END;
    """),
    ("when the camera took each image (EXIF), where its file says", """
    ALTER TABLE images ADD COLUMN captured_at TEXT;
    """),
    ("an audit log: who queried, explained, exported, erased and used a key, hash-chained", """
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        details TEXT NOT NULL,
        prev TEXT NOT NULL,
        digest TEXT NOT NULL
    );
    CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit BEGIN
        SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit BEGIN
        SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    """),
    ("which process runs each run, so a killed one is seen as ended", """
    ALTER TABLE runs ADD COLUMN pid INTEGER;
    ALTER TABLE runs ADD COLUMN host TEXT;
    """),
    ("watchlists: partners' hashes with provenance, their hits, and alerts", """
    CREATE TABLE watchlists (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        signal TEXT NOT NULL,
        source TEXT,
        licence TEXT,
        threshold INTEGER,
        negative INTEGER NOT NULL DEFAULT 0,
        flood INTEGER,
        created_at TEXT NOT NULL
    );
    CREATE TABLE watch_entries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        watchlist_id INTEGER NOT NULL REFERENCES watchlists(id) ON DELETE CASCADE,
        value BLOB NOT NULL,
        quality INTEGER,
        name TEXT,
        line INTEGER,
        added_at TEXT NOT NULL,
        quarantined_at TEXT,
        UNIQUE (watchlist_id, value)
    );
    CREATE TABLE watch_hits (
        entry_id INTEGER NOT NULL REFERENCES watch_entries(id) ON DELETE CASCADE,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        distance INTEGER NOT NULL,
        transform TEXT NOT NULL,
        score REAL NOT NULL,
        alerting INTEGER NOT NULL,
        grp INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (entry_id, image_id)
    ) WITHOUT ROWID;
    CREATE INDEX watch_hits_by_image ON watch_hits(image_id);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        entry_id INTEGER REFERENCES watch_entries(id) ON DELETE CASCADE,
        image_id INTEGER REFERENCES images(id) ON DELETE CASCADE,
        sighting_id INTEGER REFERENCES sightings(id) ON DELETE CASCADE,
        created_at TEXT NOT NULL,
        body TEXT NOT NULL,
        UNIQUE (entry_id, sighting_id)
    );
    CREATE TABLE alert_deliveries (
        target TEXT PRIMARY KEY,
        delivered_to INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        updated_at TEXT NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('watch_version', '0');
    """),
    ("where each link's evidence lies in its two images", """
    ALTER TABLE links ADD COLUMN regions TEXT;
    """),
]

SCHEMA_VERSION = len(MIGRATIONS)
#: Page cache of a bulk load (hash lists), in MiB; SQLite's default is 2.
BULK_CACHE_MB = 256


#: Called inside a batch's transaction with the new (image_id, sha256) pairs;
#: returns the links those images make, so images and links commit together.
Linker = Callable[[list[tuple[int, str]]], list[LinkRow]]


@dataclass
class BatchResult:
    images_added: int = 0
    images_known: int = 0
    sightings_added: int = 0
    sightings_known: int = 0
    failures: int = 0
    links_added: int = 0
    alerts_added: int = 0
    new_images: list[tuple[int, str]] = field(default_factory=list)


class BatchWatcher(Protocol):
    """Checks a batch's new images against the watchlists and raises alerts
    for its new sightings, inside the batch's transaction (see watchlists.py)."""

    def check(self, new_images: list[tuple[int, str]]) -> set[int]: ...

    def alert(self, sighting_ids: list[int]) -> int: ...


class Catalog:
    """A connection to one catalog: an SQLite file, or a PostgreSQL database
    several processes and nodes share (see :mod:`imgmatch.pg`). Open with
    :meth:`open`."""

    def __init__(self, conn: Any, address: str | Path, readonly: bool) -> None:
        self.conn = conn
        #: what :meth:`open` was given: a file path, or a postgresql:// URL
        self.address = str(address)
        #: whether the catalog is a PostgreSQL database that other nodes may write
        self.shared = pg.is_url(self.address)
        #: the address as messages show it (a URL without its password)
        self.location = pg.redact(self.address) if self.shared else self.address
        self.readonly = readonly
        #: a read-only catalog's one writable connection, for its audit entries
        self._audit_conn: Any = None

    @property
    def path(self) -> Path:
        """The catalog file (an SQLite catalog's; a PostgreSQL one has none)."""
        if self.shared:
            raise CatalogError(f"the catalog at {self.location} is a PostgreSQL database, "
                               "not a file")
        return Path(self.address)

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(cls, address: str | Path, *, readonly: bool = False) -> Catalog:
        """The catalog at ``address``: an SQLite file (created unless
        ``readonly``), or a ``postgresql://USER@HOST/DB`` URL whose database
        exists (the schema is created in it)."""
        if pg.is_url(address):
            server = pg.connect(str(address))
            if readonly:  # writes fail, as on a read-only SQLite file
                server.raw.execute("SET default_transaction_read_only = on")
            catalog = cls(server, address, readonly)
            try:
                catalog._migrate()
            except BaseException:
                catalog.close()
                raise
            return catalog
        path = Path(address)
        if readonly:
            if not path.exists():
                raise CatalogError(f"no collection at {path}; create one with 'imgmatch ingest'")
            uri = f"{path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            create_private(path)
            conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 30000")
            if not readonly:
                # deleted rows are overwritten with zeros, not left in free pages:
                # an erased image's hashes and URLs must not stay in the file
                conn.execute("PRAGMA secure_delete = ON")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise CatalogError(f"{path} is not an imgmatch catalog: {exc}") from None
        catalog = cls(conn, path, readonly)
        catalog._migrate()
        return catalog

    def close(self) -> None:
        if self._audit_conn is not None:
            self._audit_conn.close()
        self.conn.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _schema_version(self) -> int:
        """The last migration applied (SQLite keeps it in the file's header)."""
        try:
            if not self.shared:
                return int(self.conn.execute("PRAGMA user_version").fetchone()[0])
            # a scan of the system table, not to_regclass: that reads a cache
            # which may not yet know of a table another migrating process made
            if not self.conn.execute(
                    "SELECT count(*) FROM pg_catalog.pg_tables WHERE tablename = 'migrations' "
                    "AND schemaname = current_schema()").fetchone()[0]:
                return 0
            return int(self.conn.execute(
                "SELECT coalesce(max(version), 0) FROM migrations").fetchone()[0])
        except pg.errors(sqlite3.DatabaseError) as exc:
            raise CatalogError(f"{self.location} is not an imgmatch catalog: {exc}") from None

    def _migrate(self) -> None:
        version = self._schema_version()
        if version == 0 and self._has_foreign_tables():
            # another process's first migration may have committed between the
            # two reads (its tables and its migrations table commit together)
            version = self._schema_version()
            if version == 0:
                kind = "a PostgreSQL database" if self.shared else "an SQLite file"
                raise CatalogError(f"{self.location} is {kind}, but not an imgmatch catalog")
        if version > SCHEMA_VERSION:
            raise CatalogError(
                f"{self.location} has schema version {version}, newer than this imgmatch "
                f"understands ({SCHEMA_VERSION}); upgrade imgmatch")
        if version == SCHEMA_VERSION:
            return
        if self.readonly:
            raise CatalogError(
                f"{self.location} needs a schema upgrade; open it once for writing "
                "(for example 'imgmatch stats') first")
        for number, (name, sql) in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._transaction():
                if self._schema_version() >= number:
                    continue  # another process applied it while this one waited
                for statement in _split_sql(sql):
                    self.conn.execute(statement)
                if number == 1:
                    self.conn.execute(
                        "CREATE TABLE migrations (version INTEGER PRIMARY KEY, "
                        "name TEXT NOT NULL, applied_at TEXT NOT NULL)")
                    self.conn.execute("INSERT INTO meta VALUES ('collection_id', ?)",
                                      (uuid.uuid4().hex,))
                    self.conn.execute("INSERT INTO meta VALUES ('deletions', '0')")
                self.conn.execute("INSERT INTO migrations VALUES (?, ?, ?)",
                                  (number, name, utcnow()))
                self.conn.execute(f"PRAGMA user_version = {number}")

    def _has_foreign_tables(self) -> bool:
        sql = ("SELECT count(*) FROM information_schema.tables "
               "WHERE table_schema = current_schema()" if self.shared else
               "SELECT count(*) FROM sqlite_master WHERE type = 'table'")
        return self.conn.execute(sql).fetchone()[0] > 0

    # -------------------------------------------------------------------- meta
    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @property
    def collection_id(self) -> str:
        value = self.meta("collection_id")
        if value is None:
            raise CatalogError(f"{self.location} has no collection id; it is damaged")
        return value

    @property
    def deletions(self) -> int:
        return int(self.meta("deletions") or 0)

    # -------------------------------------------------------------------- runs
    def start_run(self, command: str, args: dict) -> int:
        """A new run, owned by this process; runs still 'running' whose process
        is gone (killed, or its machine restarted) are marked 'killed' first."""
        self.close_dead_runs()
        cur = self.conn.execute(
            "INSERT INTO runs (started_at, command, args, pid, host) VALUES (?, ?, ?, ?, ?)",
            (utcnow(), command, json.dumps(args, default=str), os.getpid(),
             socket.gethostname()))
        return _inserted_id(cur)

    def close_dead_runs(self) -> int:
        """Mark 'killed' the runs left 'running' by a process of this host that
        no longer exists (a run of another host cannot be checked from here)."""
        host = socket.gethostname()
        dead = [run_id for run_id, pid in self.conn.execute(
                    "SELECT id, pid FROM runs WHERE status = 'running' AND host = ?", (host,))
                if pid is not None and not _alive(int(pid))]
        for run_id in dead:
            self.conn.execute(
                "UPDATE runs SET status = 'killed', finished_at = ? WHERE id = ? "
                "AND status = 'running'", (utcnow(), run_id))
        return len(dead)

    def finish_run(self, run_id: int, status: str, stats: dict) -> None:
        self.conn.execute(
            "UPDATE runs SET finished_at = ?, status = ?, stats = ? WHERE id = ?",
            (utcnow(), status, json.dumps(stats, default=str), run_id))

    # ------------------------------------------------------------------ writes
    def sha256_for_payload_digest(self, digest: str) -> str | None:
        row = self.conn.execute(
            "SELECT images.sha256 FROM payload_digests JOIN images ON images.id = image_id "
            "WHERE digest = ?", (digest,)).fetchone()
        return None if row is None else row[0]

    @contextmanager
    def _transaction(self, conn: Any = None) -> Iterator[None]:
        """One write transaction (on ``conn``, by default the catalog's own):
        committed whole, or rolled back and re-raised. It waits for the write
        lock first (SQLite's; on PostgreSQL, an advisory lock all nodes share)."""
        conn = conn or self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def transaction(self) -> AbstractContextManager[None]:
        """One write transaction on the catalog's connection (see :meth:`_transaction`)."""
        return self._transaction()

    @property
    def watch(self) -> WatchStore:
        """The watchlist tables: lists, entries, hits, alerts and deliveries."""
        return WatchStore(self.conn, self._transaction)

    @contextmanager
    def bulk_cache(self, mebibytes: int = BULK_CACHE_MB) -> Iterator[None]:
        """A larger page cache for a bulk load: millions of keyed inserts land
        all over their unique indexes, and with SQLite's 2 MB default most of
        them re-read pages (adding a million hashes: 203 s before, 146 s with
        it; docs/benchmarks.md). It is given back afterwards, so an ingest's
        memory stays flat."""
        if self.shared:  # the server's cache is the server's to size
            yield
            return
        before = self.conn.execute("PRAGMA cache_size").fetchone()[0]
        self.conn.execute(f"PRAGMA cache_size = {-1024 * int(mebibytes)}")
        try:
            yield
        finally:
            self.conn.execute(f"PRAGMA cache_size = {int(before)}")
            self.conn.execute("PRAGMA shrink_memory")

    def import_hashes(self, rows: Iterable[tuple[str, bytes, int | None, Sighting]],
                      run_id: int | None) -> tuple[int, int, int]:
        """Hash-only images, one transaction: (signal, value, quality, sighting) rows.

        Such an image has no SHA-256 (there were no bytes); it is identified by
        ``signal:hex`` so importing a list twice adds nothing twice. Returns
        (images added, sightings added, first new image id or 0).
        """
        rows = [(signal, value, quality, s.normalised()) for signal, value, quality, s in rows]
        now = utcnow()
        conn = self.conn
        keys = [f"{signal}:{value.hex()}" for signal, value, _, _ in rows]
        with self._transaction():
            # new rows get ids above the largest one now: the caller indexes from there
            first = int(conn.execute(f"SELECT {NEXT_IMAGE_ID}").fetchone()[0])
            # rowcount, not total_changes: the tally triggers' changes count in the latter
            added = conn.executemany(
                f"INSERT INTO images (id, hash_key, created_at, run_id) "
                f"VALUES ({NEXT_IMAGE_ID},?,?,?) "
                "ON CONFLICT(hash_key) WHERE hash_key IS NOT NULL DO NOTHING",
                [(k, now, run_id) for k in dict.fromkeys(keys)]).rowcount
            ids: dict[str, int] = {}
            for chunk in _chunks(list(dict.fromkeys(keys)), 500):
                marks = ",".join("?" * len(chunk))
                ids.update((k, i) for i, k in conn.execute(
                    f"SELECT id, hash_key FROM images WHERE hash_key IN ({marks})", chunk))
            conn.executemany(
                "INSERT INTO signals (image_id, signal, version, value, quality) "
                "VALUES (?,?,1,?,?) ON CONFLICT DO NOTHING",
                [(ids[k], signal, value, quality)
                 for k, (signal, value, quality, _) in zip(keys, rows)])
            sightings = conn.executemany(
                "INSERT INTO sightings (image_id, platform, url, page_url, ad_id, posted_at, "
                "collected_at, source, extra, run_id, key) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(key) DO NOTHING",
                [(ids[k], s.platform, s.url, s.page_url, s.ad_id, s.posted_at, s.collected_at,
                  s.source, json.dumps(s.extra, ensure_ascii=False, sort_keys=True), run_id,
                  s.key(k)) for k, (_, _, _, s) in zip(keys, rows)]).rowcount
        return added, sightings, first if added else 0

    def add_links(self, links: Iterable[LinkRow], meta: dict[str, str] | None = None) -> int:
        """Insert links (pairs already linked keep their evidence) and set ``meta``
        keys in the same transaction; returns the pairs added."""
        conn = self.conn
        with self._transaction():
            added = self._insert_links(links)
            for key, value in (meta or {}).items():
                conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))
        return added

    def low_quality_ids(self, signal: str, min_quality: int) -> list[int]:
        """Images whose value of ``signal`` is below ``min_quality`` (unknown quality is trusted)."""
        return [r[0] for r in self.conn.execute(
            "SELECT image_id FROM signals WHERE signal = ? AND quality < ?", (signal, min_quality))]

    def erase(self, image_ids: Sequence[int]) -> int:
        """Delete images with everything about them (signals, sightings, links,
        thumbnails) in one transaction, and count the deletion so that indexes
        saved before it are known to be behind."""
        conn = self.conn
        image_ids = [int(i) for i in image_ids]
        with self._transaction():
            traces: set[str] = set()
            erased = 0
            for chunk in _chunks(image_ids, 500):
                marks = ",".join("?" * len(chunk))
                for row in conn.execute(
                        f"SELECT source, url, page_url, ad_id FROM sightings "
                        f"WHERE image_id IN ({marks}) UNION ALL SELECT sha256, NULL, NULL, "
                        f"NULL FROM images WHERE id IN ({marks})", chunk + chunk):
                    traces.update(v for v in row if isinstance(v, str) and len(v) >= 4)
                erased += conn.execute(f"DELETE FROM images WHERE id IN ({marks})",
                                       chunk).rowcount
            self._scrub_runs(traces)
            if image_ids:  # their ids are never given again (an index may still mask them)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('image_id_floor', ?) ON CONFLICT(key)"
                    " DO UPDATE SET value = CASE WHEN CAST(meta.value AS BIGINT) > "
                    "CAST(excluded.value AS BIGINT) THEN meta.value ELSE excluded.value END",
                    (max(image_ids),))
            conn.execute("UPDATE meta SET value = CAST(value AS BIGINT) + 1 "
                         "WHERE key = 'deletions'")
        # the deleted rows' old pages live on in the write-ahead log until it is
        # checkpointed: copy it back (secure_delete has zeroed them) and empty it
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return erased

    def _scrub_runs(self, traces: set[str]) -> None:
        """Take an erased image's file names, addresses and SHA-256 out of the
        run records (a run's arguments name the files it was given)."""
        if not traces:
            return
        forms = {form for t in traces for form in (t, json.dumps(t)[1:-1])}
        for run_id, args, stats in self.conn.execute(
                "SELECT id, args, stats FROM runs").fetchall():
            new_args, new_stats = args, stats
            for form in forms:
                if form in new_args or form in new_stats:
                    new_args = new_args.replace(form, "[erased]")
                    new_stats = new_stats.replace(form, "[erased]")
            if (new_args, new_stats) != (args, stats):
                self.conn.execute("UPDATE runs SET args = ?, stats = ? WHERE id = ?",
                                  (new_args, new_stats, run_id))

    def has_image(self, sha256: str) -> bool:
        return self.conn.execute("SELECT 1 FROM images WHERE sha256 = ?",
                                 (sha256,)).fetchone() is not None

    def write_batch(self, images: Iterable[ImageRow],
                    sightings: Iterable[tuple[str, Sighting]],
                    failures: Iterable[tuple[str, str, str]],
                    run_id: int | None, linker: Linker | None = None,
                    payload_digests: Iterable[tuple[str, str]] = (),
                    watcher: BatchWatcher | None = None,
                    locked: Callable[[], object] | None = None) -> BatchResult:
        """Write analysed images, their sightings and failures in one transaction.

        ``sightings`` pairs an image's sha256 with where it was seen; the image
        must be in the catalog already or in ``images``. ``failures`` are
        ``(source, reason, detail)``. Idempotent: known images and sightings
        are counted, not duplicated. ``linker`` computes the new images'
        near-duplicate links within the same transaction. ``payload_digests``
        pairs a crawler's digest with the sha256 of the image it names.
        ``watcher`` checks the new images against the watchlists and raises
        the new sightings' alerts, in the same transaction: an alert is
        committed with the image that raised it, or neither is. Images a
        negative watchlist hits get no links. ``locked`` is called first
        inside the transaction, once the write lock is held (the linker
        takes in what other writers committed before it).
        """
        result = BatchResult()
        now = utcnow()
        conn = self.conn
        images = list(images)
        sightings = [(sha256, s.normalised()) for sha256, s in sightings]
        with self._transaction():
            if locked is not None:
                locked()
            self._add_images(images, now, run_id, result)
            # before the links: the linker may read an image of this batch
            # again from its source (imgmatch.match.framing)
            new_sightings = self._add_sightings(sightings, run_id, result)
            suppressed = watcher.check(result.new_images) \
                if watcher is not None and result.new_images else set()
            if linker is not None and result.new_images:
                result.links_added = self._insert_links(
                    k for k in linker(result.new_images)
                    if k.a not in suppressed and k.b not in suppressed)
            conn.executemany(
                "INSERT INTO payload_digests (digest, image_id) "
                "SELECT ?, id FROM images WHERE sha256 = ? ON CONFLICT DO NOTHING",
                list(payload_digests))
            failures = list(failures)
            result.failures = len(failures)
            conn.executemany(
                "INSERT INTO failures (source, reason, detail, run_id, created_at) "
                "VALUES (?,?,?,?,?) ON CONFLICT(source) DO UPDATE SET "
                "reason = excluded.reason, detail = excluded.detail, "
                "run_id = excluded.run_id, created_at = excluded.created_at",
                [(source, reason, detail, run_id, now) for source, reason, detail in failures])
            if watcher is not None and new_sightings:
                result.alerts_added = watcher.alert(new_sightings)
        return result

    def _add_images(self, images: list[ImageRow], now: str, run_id: int | None,
                    result: BatchResult) -> None:
        """Insert a batch's images with their signals, thumbnails and features
        (inside the caller's transaction), a few statements for the whole
        batch: each statement is a round trip to a PostgreSQL server, and the
        write lock is held meanwhile. Ids are given in batch order from the
        next free one; an image already catalogued (or earlier in the batch)
        is skipped by the conflict and leaves its id unused."""
        if not images:
            return
        conn = self.conn
        first = int(conn.execute(f"SELECT {NEXT_IMAGE_ID}").fetchone()[0])
        conn.executemany(
            "INSERT INTO images (id, sha256, size_bytes, width, height, format, mode, frames, "
            "created_at, run_id, captured_at) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(sha256) DO NOTHING",
            [(first + k, row.sha256, row.size_bytes, row.width, row.height, row.format,
              row.mode, row.frames, now, run_id, row.captured_at)
             for k, row in enumerate(images)])
        # the write lock is held: every image at or above ``first`` is this batch's
        added = dict(conn.execute("SELECT id, sha256 FROM images WHERE id >= ?", (first,)))
        new = [(first + k, row) for k, row in enumerate(images) if (first + k) in added]
        result.images_added = len(new)
        result.images_known = len(images) - len(new)
        result.new_images = [(image_id, row.sha256) for image_id, row in new]
        conn.executemany(
            "INSERT INTO signals (image_id, signal, version, value, quality) VALUES (?,?,?,?,?)",
            [(image_id, s.signal, s.version, s.value, s.quality)
             for image_id, row in new for s in row.signals])
        conn.executemany("INSERT INTO thumbnails (image_id, jpeg) VALUES (?, ?)",
                         [(image_id, row.thumbnail) for image_id, row in new if row.thumbnail])
        conn.executemany("INSERT INTO features (image_id, version, count, data) "
                         "VALUES (?, ?, ?, ?)",
                         [(image_id, *row.features) for image_id, row in new
                          if row.features is not None])

    def _add_sightings(self, sightings: list[tuple[str, Sighting]], run_id: int | None,
                       result: BatchResult) -> list[int]:
        """Insert a batch's sightings (normalised; inside the caller's
        transaction) and clear the failures of their sources; the ids of the
        new ones, in order. A sighting already recorded is counted, not added."""
        if not sightings:
            return []
        conn = self.conn
        ids = {sha256: image_id for image_id, sha256 in result.new_images}
        wanted = sorted({sha256 for sha256, _ in sightings} - set(ids))
        for chunk in _chunks(wanted, 500):
            ids.update((sha256, image_id) for image_id, sha256 in conn.execute(
                f"SELECT id, sha256 FROM images WHERE sha256 IN ({','.join('?' * len(chunk))})",
                chunk))
        missing = [sha256 for sha256, _ in sightings if sha256 not in ids]
        if missing:
            raise CatalogError(f"sighting for unknown image {missing[0]}")
        before = int(conn.execute("SELECT coalesce(max(id), 0) FROM sightings").fetchone()[0])
        added = conn.executemany(
            "INSERT INTO sightings (image_id, platform, url, page_url, ad_id, posted_at, "
            "collected_at, source, extra, run_id, key) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(key) DO NOTHING",
            [(ids[sha256], s.platform, s.url, s.page_url, s.ad_id, s.posted_at,
              s.collected_at, s.source,
              json.dumps(s.extra, ensure_ascii=False, sort_keys=True, default=str),
              run_id, s.key(sha256)) for sha256, s in sightings]).rowcount
        result.sightings_added = added
        result.sightings_known = len(sightings) - added
        # a failure is cleared when its source is seen again; with none on
        # record (the usual first run) there is nothing to look up
        if conn.execute("SELECT EXISTS (SELECT 1 FROM failures)").fetchone()[0]:
            conn.executemany("DELETE FROM failures WHERE source = ?",
                             [(source,) for source in
                              sorted({s.source for _, s in sightings if s.source})])
        if not added:
            return []
        # the write lock is held: every sighting above ``before`` is this batch's
        return [r[0] for r in conn.execute(
            "SELECT id FROM sightings WHERE id > ? ORDER BY id", (before,))]

    def add_signals(self, rows: Sequence[tuple[int, ImageRow]],
                    linker: Linker | None = None,
                    watcher: BatchWatcher | None = None) -> int:
        """Give catalogued images signals they lacked (or held from another
        version), in one transaction; returns the links added.

        ``rows`` pairs an image id with the analysis holding the new values.
        With ``linker``, those images' links are dropped and found again with
        every signal they now have, in the same transaction: a kill leaves
        each image either as it was or upgraded with its links. With
        ``watcher``, the images are checked against the watchlists with
        their new values (and their sightings' alerts raised) in it too.
        """
        conn = self.conn
        links_added = 0
        with self._transaction():
            for image_id, row in rows:
                conn.executemany(
                    "INSERT INTO signals (image_id, signal, version, value, quality) "
                    "VALUES (?,?,?,?,?) ON CONFLICT(signal, image_id) DO UPDATE SET "
                    "version = excluded.version, value = excluded.value, "
                    "quality = excluded.quality",
                    [(image_id, s.signal, s.version, s.value, s.quality) for s in row.signals])
                if row.features is not None:
                    conn.execute(
                        "INSERT INTO features (image_id, version, count, data) VALUES (?,?,?,?) "
                        "ON CONFLICT(image_id) DO UPDATE SET version = excluded.version, "
                        "count = excluded.count, data = excluded.data",
                        (image_id, *row.features))
            images = [(image_id, row.sha256) for image_id, row in rows]
            suppressed = watcher.check(images) if watcher is not None and rows else set()
            if watcher is not None and rows:
                watcher.alert(self.watch.sightings_of_images([i for i, _ in images]))
            if linker is not None and rows:
                ids = [image_id for image_id, _ in rows]
                for chunk in _chunks(ids, 400):
                    marks = ",".join("?" * len(chunk))
                    conn.execute(f"DELETE FROM links WHERE a IN ({marks}) OR b IN ({marks})",
                                 chunk + chunk)
                links_added = self._insert_links(
                    k for k in linker(images) if k.a not in suppressed and k.b not in suppressed)
        return links_added

    def _insert_links(self, links: Iterable[LinkRow]) -> int:
        """Insert links, one per pair (the best-scored); returns the new pairs."""
        best: dict[tuple[int, int], LinkRow] = {}
        for k in links:
            pair = (min(k.a, k.b), max(k.a, k.b))
            if k.a != k.b and (pair not in best or k.score > best[pair].score):
                best[pair] = k
        return max(self.conn.executemany(
            "INSERT INTO links (a, b, score, distances, agreed, transform, regions) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT(a, b) DO NOTHING",
            [(a, b, k.score, json.dumps(k.distances, sort_keys=True), ",".join(k.agreed),
              k.transform, _regions_text(k.regions if k.a == a else
                                         k.regions and (k.regions[1], k.regions[0])))
             for (a, b), k in best.items()]).rowcount, 0)

    # ------------------------------------------------------------------- reads
    def links(self) -> Iterator[tuple[int, int, float, dict, tuple[str, ...], str]]:
        for a, b, score, distances, agreed, transform in self.conn.execute(
                "SELECT a, b, score, distances, agreed, transform FROM links ORDER BY a, b"):
            yield a, b, score, json.loads(distances), tuple(x for x in agreed.split(",") if x), \
                transform

    def links_with_regions(self) -> Iterator[tuple[int, int, float, dict, tuple[str, ...], str,
                                                    tuple[Box | None, Box | None] | None]]:
        """:meth:`links`, each with where its evidence lies in its two images
        (:attr:`imgmatch.records.LinkRow.regions`; None where not known), in
        one pass over the table."""
        for a, b, score, distances, agreed, transform, regions in self.conn.execute(
                "SELECT a, b, score, distances, agreed, transform, regions FROM links "
                "ORDER BY a, b"):
            yield a, b, score, json.loads(distances), tuple(x for x in agreed.split(",") if x), \
                transform, _regions(regions)

    def link_regions(self) -> dict[tuple[int, int], tuple[Box | None, Box | None]]:
        """Where each link's evidence lies in its two images, for the links
        that know it."""
        out = {}
        for a, b, text in self.conn.execute(
                "SELECT a, b, regions FROM links WHERE regions IS NOT NULL"):
            regions = _regions(text)
            if regions is not None:
                out[(a, b)] = regions
        return out

    def multi_sighting_image_ids(self, min_sightings: int) -> list[int]:
        return [r[0] for r in self.conn.execute(
            "SELECT image_id FROM sightings GROUP BY image_id HAVING count(*) >= ?",
            (min_sightings,))]

    def _tallies(self) -> dict[str, int]:
        """Counts kept by triggers (migration 7): stats read a few rows, not millions."""
        return dict(self.conn.execute(f"SELECT key, n FROM {self._tally_table} WHERE n > 0"))

    @property
    def _tally_table(self) -> str:
        """Where the counters are read from (on PostgreSQL, with what is pending)."""
        return pg.TALLIES if self.shared else "tallies"

    def counts(self) -> dict[str, int]:
        t = self._tallies()
        return {
            "images": t.get("images", 0),
            "sightings": t.get("sightings", 0),
            "platforms": sum(1 for k in t if k.startswith("platform:")),
            "failures": t.get("failures", 0),
            "links": t.get("links", 0),
            "runs": self.conn.execute("SELECT max(id) FROM runs").fetchone()[0] or 0,
            "features": t.get("features", 0),
        }

    def recount(self) -> dict[str, int]:
        """The counts of :meth:`counts`, counted row by row (slow; for checks)."""
        q = self.conn.execute
        return {
            "images": q("SELECT count(*) FROM images").fetchone()[0],
            "sightings": q("SELECT count(*) FROM sightings").fetchone()[0],
            "platforms": q("SELECT count(DISTINCT platform) FROM sightings").fetchone()[0],
            "failures": q("SELECT count(*) FROM failures").fetchone()[0],
            "links": q("SELECT count(*) FROM links").fetchone()[0],
            "runs": q("SELECT count(*) FROM runs").fetchone()[0],
            "features": q("SELECT count(*) FROM features").fetchone()[0],
        }

    def hash_only_counts(self) -> tuple[int, dict[str, int]]:
        """Images known only by a hash (partners' lists), and how many of them
        hold each signal: they have no bytes, so no other signal to gain."""
        total = int(self.conn.execute(
            "SELECT count(*) FROM images WHERE hash_key IS NOT NULL").fetchone()[0])
        held = dict(self.conn.execute(
            "SELECT s.signal, count(*) FROM images i JOIN signals s ON s.image_id = i.id "
            "WHERE i.hash_key IS NOT NULL GROUP BY s.signal").fetchall()) if total else {}
        return total, held

    def signal_counts(self) -> dict[str, int]:
        return {k.split(":", 1)[1]: n for k, n in sorted(self._tallies().items())
                if k.startswith("signal:")}

    def count_signal_upto(self, signal: str, max_image_id: int) -> int:
        """Values of ``signal`` up to an image id (for index checks): the tally less
        the rows above it, so an index that is up to date costs a seek, not a count."""
        return self.signal_counts().get(signal, 0) - self.count_signal_above(signal, max_image_id)

    def count_signal_above(self, signal: str, image_id: int) -> int:
        """Values of ``signal`` of images after ``image_id`` (a range of the key)."""
        return int(self.conn.execute(
            "SELECT count(*) FROM signals WHERE signal = ? AND image_id > ?",
            (signal, image_id)).fetchone()[0])

    def iter_signal(self, signal: str, after_image_id: int = 0,
                    chunk: int = 50_000) -> Iterator[list[tuple[int, bytes, int | None]]]:
        """Stream (image_id, value, quality) of one signal in id order, in chunks."""
        last = after_image_id
        while True:
            rows = self.conn.execute(
                "SELECT image_id, value, quality FROM signals WHERE signal = ? "
                "AND image_id > ? ORDER BY image_id LIMIT ?", (signal, last, chunk)).fetchall()
            if not rows:
                return
            yield rows
            last = rows[-1][0]

    def signals_of(self, image_ids: Sequence[int]) -> dict[int, dict[str, tuple[bytes, int | None]]]:
        """Each image's signal values. Named by (signal, image id), the table's own
        key, so each value is one B-tree descent, not an index's and then the
        table's: on a catalog larger than the page cache each descent can be a
        disk read."""
        out: dict[int, dict[str, tuple[bytes, int | None]]] = {}
        signals = list(self.signal_counts())
        if not signals:
            return out
        kinds = ",".join("?" * len(signals))
        for chunk in _chunks(list(image_ids), 500):
            marks = ",".join("?" * len(chunk))
            for image_id, signal, value, quality in self.conn.execute(
                    f"SELECT image_id, signal, value, quality FROM signals "
                    f"WHERE signal IN ({kinds}) AND image_id IN ({marks})", signals + chunk):
                out.setdefault(image_id, {})[signal] = (bytes(value), quality)
        return out

    def features_of(self, image_ids: Sequence[int]) -> dict[int, bytes]:
        """Stored local-feature blobs by image id (images without any are absent)."""
        out: dict[int, bytes] = {}
        for chunk in _chunks(list(image_ids), 500):
            marks = ",".join("?" * len(chunk))
            out.update((i, bytes(d)) for i, d in self.conn.execute(
                f"SELECT image_id, data FROM features WHERE image_id IN ({marks})", chunk))
        return out

    def replace_features(self, image_id: int, blob: bytes) -> None:
        """Store an image's features again, inside the caller's transaction
        (the linker adds the parts it described while linking the image:
        :attr:`imgmatch.features.LocalFeatures.parts`); the count of its own
        keypoints is unchanged."""
        self.conn.execute("UPDATE features SET data = ? WHERE image_id = ?", (blob, image_id))

    def with_features(self, image_ids: Iterable[int], at_least: int = 1) -> set[int]:
        """Which of these images have at least ``at_least`` keypoints of local
        features (their blobs are not read)."""
        out: set[int] = set()
        for chunk in _chunks(list(image_ids), 500):
            marks = ",".join("?" * len(chunk))
            out.update(i for (i,) in self.conn.execute(
                f"SELECT image_id FROM features WHERE image_id IN ({marks}) AND count >= ?",
                [*chunk, at_least]))
        return out

    def signal_versions(self, image_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """The algorithm version each image's values were computed with, by signal."""
        out: dict[int, dict[str, int]] = {}
        for chunk in _chunks(list(image_ids), 500):
            marks = ",".join("?" * len(chunk))
            for image_id, signal, version in self.conn.execute(
                    f"SELECT image_id, signal, version FROM signals "
                    f"WHERE image_id IN ({marks})", chunk):
                out.setdefault(image_id, {})[signal] = int(version)
        return out

    def feature_versions(self, image_ids: Sequence[int]) -> dict[int, int]:
        """The extraction version of each image's local features (those without none)."""
        out: dict[int, int] = {}
        for chunk in _chunks(list(image_ids), 500):
            marks = ",".join("?" * len(chunk))
            out.update((i, int(v)) for i, v in self.conn.execute(
                f"SELECT image_id, version FROM features WHERE image_id IN ({marks})", chunk))
        return out

    def feature_count(self) -> int:
        """Images with local features (a tally: no counting)."""
        row = self.conn.execute(
            f"SELECT n FROM {self._tally_table} WHERE key = 'features'").fetchone()
        return int(row[0]) if row else 0

    def count_features_upto(self, max_image_id: int) -> int:
        """Images with local features up to an image id (for index checks; see
        :meth:`count_signal_upto`)."""
        above = self.conn.execute(
            "SELECT count(*) FROM features WHERE image_id > ?", (max_image_id,)).fetchone()[0]
        return self.feature_count() - int(above)

    def iter_features(self, after_image_id: int = 0,
                      chunk: int = 5_000) -> Iterator[list[tuple[int, bytes]]]:
        """Stream (image_id, blob) of local features in id order, in chunks."""
        last = after_image_id
        while True:
            rows = self.conn.execute(
                "SELECT image_id, data FROM features WHERE image_id > ? "
                "ORDER BY image_id LIMIT ?", (last, chunk)).fetchall()
            if not rows:
                return
            yield [(i, bytes(d)) for i, d in rows]
            last = rows[-1][0]

    def images(self, image_ids: Sequence[int]) -> dict[int, dict]:
        out: dict[int, dict] = {}
        for chunk in _chunks(list(image_ids), 500):
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(
                    f"SELECT id, sha256, size_bytes, width, height, format, frames, created_at, "
                    f"hash_key, captured_at FROM images WHERE id IN ({marks})", chunk):
                out[row[0]] = dict(zip(
                    ("id", "sha256", "size_bytes", "width", "height", "format", "frames",
                     "created_at"), row[:-2]))
                if row[-2]:
                    out[row[0]]["hash_key"] = row[-2]
                if row[-1]:
                    out[row[0]]["captured_at"] = row[-1]
        return out

    def image_id(self, sha256: str) -> int | None:
        row = self.conn.execute("SELECT id FROM images WHERE sha256 = ?",
                                (sha256.lower(),)).fetchone()
        return None if row is None else int(row[0])

    def sha256s_with_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        """Up to ``limit`` SHA-256s that start with ``prefix`` (hex), in order.

        A range scan of the unique index (every such hash lies in [prefix,
        prefix + 'g'), 'g' sorting after every hex digit), so it costs the same
        at any size; ``limit`` 2 is enough to tell unique from ambiguous.
        """
        prefix = prefix.lower()
        return [r[0] for r in self.conn.execute(
            "SELECT sha256 FROM images WHERE sha256 >= ? AND sha256 < ? ORDER BY sha256 "
            "LIMIT ?", (prefix, prefix + "g", limit))]

    def sightings_of(self, image_ids: Sequence[int]) -> dict[int, list[Sighting]]:
        """Each image's sightings, oldest first (by posted_at, else collected_at)."""
        out: dict[int, list[Sighting]] = {i: [] for i in image_ids}
        cols = ", ".join(f"s.{f}" for f in SIGHTING_FIELDS)
        for chunk in _chunks(list(image_ids), 500):
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(
                    f"SELECT s.image_id, i.sha256, {cols}, s.extra FROM sightings s "
                    f"JOIN images i ON i.id = s.image_id WHERE s.image_id IN ({marks}) "
                    f"ORDER BY coalesce(s.posted_at, s.collected_at), s.id", chunk):
                fields = dict(zip(SIGHTING_FIELDS, row[2:-1]))
                extra = json.loads(row[-1]) if row[-1] else {}
                out[row[0]].append(Sighting(**fields, extra=extra, sha256=row[1]))
        return out

    def links_of(self, image_id: int) -> list[tuple[int, float, dict, tuple[str, ...], str]]:
        """(other image id, score, distances, agreed, transform) for one image's links."""
        rows = self.conn.execute(
            "SELECT b, score, distances, agreed, transform FROM links WHERE a = ? "
            "UNION ALL SELECT a, score, distances, agreed, transform FROM links WHERE b = ? "
            "ORDER BY 2 DESC", (image_id, image_id)).fetchall()
        return [(other, score, json.loads(d), tuple(x for x in agreed.split(",") if x), t)
                for other, score, d, agreed, t in rows]

    def failures(self, limit: int | None = None) -> list[dict]:
        sql = "SELECT source, reason, detail, run_id, created_at FROM failures ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [dict(zip(("source", "reason", "detail", "run_id", "created_at"), r))
                for r in self.conn.execute(sql)]

    def failure_reasons(self) -> dict[str, int]:
        return dict(self.conn.execute(
            "SELECT reason, count(*) FROM failures GROUP BY reason ORDER BY count(*) DESC"))

    def platform_counts(self) -> dict[str | None, int]:
        counts = [(k.split(":", 1)[1] if ":" in k else None, n)
                  for k, n in self._tallies().items() if k.startswith("platform")]
        return dict(sorted(counts, key=lambda kv: (-kv[1], kv[0] or "")))

    def last_runs(self, n: int = 5) -> list[dict]:
        cols = ("id", "started_at", "finished_at", "command", "status", "stats")
        rows = self.conn.execute(
            f"SELECT {', '.join(cols)} FROM runs ORDER BY id DESC LIMIT ?", (n,)).fetchall()
        out = []
        for r in rows:
            d = dict(zip(cols, r))
            d["stats"] = json.loads(d["stats"] or "{}")
            out.append(d)
        return out

    # ------------------------------------------------------------------ ignore
    def ignore_image(self, image_id: int, reason: str) -> bool:
        cur = self.conn.execute(
            "INSERT INTO ignored (image_id, reason, created_at) VALUES (?,?,?) "
            "ON CONFLICT DO NOTHING", (image_id, reason, utcnow()))
        return cur.rowcount == 1

    def ignore_hash(self, signal: str, value: bytes, reason: str) -> bool:
        exists = self.conn.execute("SELECT 1 FROM ignored WHERE signal = ? AND value = ?",
                                   (signal, value)).fetchone()
        if exists:
            return False
        self.conn.execute("INSERT INTO ignored (signal, value, reason, created_at) "
                          "VALUES (?,?,?,?)", (signal, value, reason, utcnow()))
        return True

    def ignored(self) -> list[dict]:
        rows = self.conn.execute(
            "SELECT ignored.id, images.sha256, ignored.signal, ignored.value, ignored.reason, "
            "ignored.created_at FROM ignored LEFT JOIN images ON images.id = ignored.image_id "
            "ORDER BY ignored.id").fetchall()
        return [{"id": r[0], "sha256": r[1], "signal": r[2],
                 "hex": bytes(r[3]).hex() if r[3] is not None else None,
                 "reason": r[4], "created_at": r[5]} for r in rows]

    def unignore(self, entry_id: int) -> bool:
        return self.conn.execute("DELETE FROM ignored WHERE id = ?", (entry_id,)).rowcount == 1

    def ignored_image_ids(self) -> set[int]:
        return {r[0] for r in self.conn.execute(
            "SELECT image_id FROM ignored WHERE image_id IS NOT NULL")}

    def ignored_hashes(self) -> list[tuple[str, bytes]]:
        return [(r[0], bytes(r[1])) for r in self.conn.execute(
            "SELECT signal, value FROM ignored WHERE value IS NOT NULL")]

    def thumbnails_of(self, image_ids: Sequence[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for chunk in _chunks(list(image_ids), 500):
            marks = ",".join("?" * len(chunk))
            out.update((r[0], bytes(r[1])) for r in self.conn.execute(
                f"SELECT image_id, jpeg FROM thumbnails WHERE image_id IN ({marks})", chunk))
        return out

    # ---------------------------------------------------------------- API keys
    def add_api_key(self, name: str, key_hash: str, scopes: Sequence[str]) -> int:
        cur = self.conn.execute(
            "INSERT INTO api_keys (name, key_hash, scopes, created_at) VALUES (?,?,?,?)",
            (name, key_hash, ",".join(scopes), utcnow()))
        return _inserted_id(cur)

    def api_keys(self) -> list[dict]:
        cols = ("id", "name", "scopes", "created_at", "revoked_at")
        return [dict(zip(cols, r)) for r in self.conn.execute(
            f"SELECT {', '.join(cols)} FROM api_keys ORDER BY id")]

    def revoke_api_keys(self, name_or_id: str) -> int:
        cur = self.conn.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE revoked_at IS NULL AND "
            "(name = ? OR CAST(id AS TEXT) = ?)", (utcnow(), name_or_id, name_or_id))
        return cur.rowcount

    def api_key_scopes(self, key_hash: str) -> tuple[str, ...] | None:
        """The scopes of an active key, or None for an unknown or revoked one."""
        row = self.conn.execute(
            "SELECT scopes FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
            (key_hash,)).fetchone()
        return None if row is None else tuple(x for x in row[0].split(",") if x)

    def api_key_name(self, key_hash: str) -> str | None:
        """The name of an active key, or None for an unknown or revoked one."""
        row = self.conn.execute(
            "SELECT name FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
            (key_hash,)).fetchone()
        return None if row is None else str(row[0])

    # ------------------------------------------------------------------- audit
    def append_audit(self, actor: str, action: str, details: dict) -> AuditEntry:
        """Append one entry to the audit log, chained to the last one, in a
        transaction of its own: the last entry is read inside it, so two
        writers never chain to the same entry.

        A catalog opened read-only writes its audit entries through a second
        connection that writes nothing else (``imgmatch query`` reads
        read-only, and still leaves its trace). CatalogError says when the
        file cannot be written at all.
        """
        try:
            conn = self._audit_writer()
            with self._transaction(conn):
                last = conn.execute(
                    "SELECT seq, digest FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (int(last[0]) + 1, str(last[1])) if last else (1, GENESIS)
                at = utcnow()
                digest = digest_of(prev, seq, at, actor, action, details)
                conn.execute(
                    "INSERT INTO audit (seq, at, actor, action, details, prev, digest) "
                    "VALUES (?,?,?,?,?,?,?)",
                    (seq, at, actor, action, json.dumps(details, sort_keys=True,
                                                        separators=(",", ":"),
                                                        ensure_ascii=False), prev, digest))
        except pg.errors(sqlite3.Error) as exc:
            raise CatalogError(f"cannot append to the audit log of {self.location}: {exc}; "
                               "every query, export and erasure is recorded, so the "
                               "catalog (and its folder) must be writable") from None
        return AuditEntry(seq, at, actor, action, details, prev, digest)

    def _audit_writer(self) -> Any:
        """The connection audit entries are written through: the catalog's own,
        or, for a read-only catalog, one opened for them (never creating a file)."""
        if not self.readonly:
            return self.conn
        if self._audit_conn is None and self.shared:
            self._audit_conn = pg.connect(self.address)
        if self._audit_conn is None:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=rw", uri=True,
                                   check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 30000")
            self._audit_conn = conn
        return self._audit_conn

    def audit_entries(self, limit: int | None = None) -> list[AuditEntry]:
        """The last ``limit`` entries of the audit log (all by default), oldest first."""
        if limit is None:
            return list(self.iter_audit())
        rows = self.conn.execute(
            f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY seq DESC LIMIT ?",
            (int(limit),)).fetchall()
        return [_audit_entry(row) for row in reversed(rows)]

    def iter_audit(self, chunk: int = 10_000) -> Iterator[AuditEntry]:
        """Every entry of the audit log in order, read in chunks."""
        last: int | None = None  # from the first row, whatever its seq (it may be tampered)
        while True:
            after = "" if last is None else f"WHERE seq > {int(last)} "
            rows = self.conn.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit {after}ORDER BY seq LIMIT ?",
                (chunk,)).fetchall()
            if not rows:
                return
            yield from (_audit_entry(row) for row in rows)
            last = rows[-1][0]


_AUDIT_COLUMNS = "seq, at, actor, action, details, prev, digest"


def _audit_entry(row: Sequence) -> AuditEntry:
    """An audit row as an entry. Details that are not JSON any more (the row
    was edited) are kept as text, so that the chain's check reports the entry
    rather than failing on it."""
    try:
        details = json.loads(row[4])
    except (TypeError, ValueError):
        details = {"unreadable": str(row[4])}
    if not isinstance(details, dict):
        details = {"unreadable": str(row[4])}
    return AuditEntry(int(row[0]), str(row[1]), str(row[2]), str(row[3]), details,
                      str(row[5]), str(row[6]))


class KnownImages:
    """'Is this SHA-256 catalogued?' over a read-only connection of its own.

    For worker processes: reading while the parent writes is what WAL allows
    (and what PostgreSQL always allows); a catalog not yet created knows
    nothing.
    """

    def __init__(self, address: str | Path) -> None:
        self.address = str(address)
        self._conn: Any = None

    def __call__(self, sha256: str) -> bool:
        if self._conn is None:
            if pg.is_url(self.address):
                self._conn = pg.connect(self.address)
            else:
                path = Path(self.address)
                if not path.exists():
                    return False
                self._conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
                self._conn.execute("PRAGMA busy_timeout = 30000")
        try:
            return self._conn.execute("SELECT 1 FROM images WHERE sha256 = ?",
                                      (sha256,)).fetchone() is not None
        except pg.errors(sqlite3.OperationalError):  # no images table yet
            return False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _inserted_id(cursor: Any) -> int:
    """The id of the row an INSERT just added (SQLite gives None only when none was)."""
    if cursor.lastrowid is None:
        raise CatalogError("the catalog added no row where one was expected")
    return int(cursor.lastrowid)


def _split_sql(script: str) -> list[str]:
    """Statements of a script, one each (a trigger's body keeps its own semicolons)."""
    out, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                out.append(pending.strip())
            pending = ""
    if pending.strip(" \n;"):
        out.append(pending.strip())
    return out


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
