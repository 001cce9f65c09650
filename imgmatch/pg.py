"""PostgreSQL under the catalog: the catalog's SQL, spoken to a shared server.

The catalog (:mod:`imgmatch.catalog`) is written once, in SQL that SQLite and
PostgreSQL both run, with SQLite's ``?`` placeholders and its migrations in
SQLite's DDL. This module is the difference between the two, kept in one
place: :class:`PgConnection` gives psycopg's connection the few sqlite3 calls
the catalog makes (``execute``, ``executemany``, cursors with ``fetchone``,
``fetchall``, iteration, ``rowcount`` and ``lastrowid``) and translates as it
goes:

- placeholders ``?`` to psycopg's ``%s``;
- DDL: ``INTEGER`` to ``BIGINT``, ``REAL`` to ``DOUBLE PRECISION``, ``BLOB``
  to ``BYTEA``, an ``id INTEGER PRIMARY KEY`` to an identity column, SQLite
  triggers to PL/pgSQL functions and triggers;
- an insert into a table with an ``id`` gets ``RETURNING id``, so the new
  row's id reads as SQLite's ``lastrowid``;
- ``PRAGMA`` statements (SQLite's file settings) do nothing: the server owns
  its files;
- ``BEGIN IMMEDIATE`` (SQLite's "take the write lock now") becomes ``BEGIN``
  and a transaction-level advisory lock held until commit.

Counters are the other difference. SQLite's tally triggers add to one row
per counter; in PostgreSQL, every update of a row inside one transaction
leaves a version the next update must step over, so a transaction adding a
million hashes would take quadratic time. Here the triggers append +1 and -1
rows to ``tally_pending``, each write transaction folds them into
``tallies`` before it commits (:data:`FOLD_TALLIES`), and reads add what is
still pending (:data:`TALLIES`), so a count is right even between the two.

The write lock is the design's one choice: writes to a catalog are serialised
across every process and node, as SQLite serialises them on one machine.
Decoding and hashing, where an ingest spends its time, run anywhere in
parallel; only each batch's short write transaction waits its turn. So image
ids still go by commit order, which lets every node's indexes follow the
catalog by id, and an image added by two nodes at once is written once.

Text parameters cannot hold NUL characters in PostgreSQL; hostile metadata
that does gets U+FFFD in their place rather than failing its batch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import CatalogError

#: URL schemes that name a PostgreSQL catalog (``--db`` / ``IMGMATCH_DB``).
SCHEMES = ("postgresql://", "postgres://")

#: The advisory lock key every catalog writer takes (any constant would do:
#: one database holds one catalog). "imgmatch" in ASCII, as a bigint.
WRITE_LOCK = 0x696D676D61746368

#: Rows a transaction must add or delete (in tallied tables) to count as a
#: bulk load, after which the catalog's statistics are refreshed at once.
BULK_ROWS = 10_000

#: Tables whose rows have an ``id`` that inserts return (SQLite's lastrowid).
ID_TABLES = frozenset({"runs", "images", "sightings", "failures", "api_keys", "ignored",
                       "watchlists", "watch_entries", "alerts"})


def is_url(address: object) -> bool:
    """Whether a catalog address names a PostgreSQL database, not a file."""
    return isinstance(address, str) and address.lower().startswith(SCHEMES)


def redact(url: str) -> str:
    """The URL with its password replaced, for messages and reports."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def connect(url: str) -> PgConnection:
    """A connection to the catalog database at ``url`` (CatalogError if none)."""
    try:
        import psycopg
    except ImportError:
        raise CatalogError("a PostgreSQL catalog needs psycopg: pip install "
                           "'imgmatch[postgres]'") from None
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10,
                               application_name="imgmatch")
    except psycopg.Error as exc:
        raise CatalogError(f"cannot connect to the catalog at {redact(url)}: "
                           f"{str(exc).strip()}") from None
    return PgConnection(conn)


def errors(*sqlite_errors: type[Exception]) -> tuple[type[Exception], ...]:
    """The given sqlite3 error classes with psycopg's base class, for callers
    that catch the database errors of either engine."""
    try:
        import psycopg
    except ImportError:
        return sqlite_errors
    return (*sqlite_errors, psycopg.Error)


class PgCursor:
    """The result of one statement, read as a sqlite3 cursor is."""

    def __init__(self, rows: list[tuple] | None, rowcount: int,
                 lastrowid: int | None = None) -> None:
        self._rows = rows or []
        self._at = 0
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def fetchone(self) -> tuple | None:
        if self._at >= len(self._rows):
            return None
        self._at += 1
        return self._rows[self._at - 1]

    def fetchall(self) -> list[tuple]:
        rows, self._at = self._rows[self._at:], len(self._rows)
        return rows

    def __iter__(self) -> Iterator[tuple]:
        while (row := self.fetchone()) is not None:
            yield row


class PgConnection:
    """psycopg's connection with the sqlite3 calls the catalog makes."""

    def __init__(self, conn: Any) -> None:
        self.raw = conn
        self._pending = False  # whether the catalog has tally_pending yet

    def execute(self, sql: str, params: Sequence[Any] = ()) -> PgCursor:
        head = sql.lstrip()[:16].upper()
        if head.startswith("PRAGMA"):
            return PgCursor(None, -1)
        if head.startswith("COMMIT"):
            moved = self.raw.execute(FOLD_TALLIES).fetchone()[0] \
                if self._pending or self._has_pending() else 0
            self.raw.execute("COMMIT")
            if moved >= BULK_ROWS:
                self._after_bulk()
            return PgCursor(None, -1)
        if head.startswith("BEGIN"):
            self.raw.execute("BEGIN")
            self.raw.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            return PgCursor(None, -1)
        if head.startswith(("CREATE", "ALTER")):
            for statement in translate_ddl(sql):
                self.raw.execute(statement)
            return PgCursor(None, -1)
        query, returning = translate(sql)
        cur = self.raw.execute(query, _params(params), prepare=False)
        rows = cur.fetchall() if cur.description is not None else None
        lastrowid = int(rows[-1][0]) if returning and rows else None
        return PgCursor(None if returning else rows, cur.rowcount, lastrowid)

    def _after_bulk(self) -> None:
        """After a transaction that wrote many rows (a partner's list of a
        million hashes): vacuum the counters' dead rows, which every count
        would otherwise step over, and refresh the planner's statistics, so
        the next query finds the new rows through their indexes rather than
        scanning tables it still believes small. Both would come from
        autovacuum within a minute or so; a query may come sooner."""
        import psycopg

        try:
            self.raw.execute("VACUUM tally_pending")
            self.raw.execute("ANALYZE")
        except psycopg.Error:  # not the tables' owner: autovacuum will do it
            pass

    def _has_pending(self) -> bool:
        self._pending = bool(self.raw.execute(
            "SELECT count(*) FROM pg_catalog.pg_tables WHERE tablename = 'tally_pending' "
            "AND schemaname = current_schema()").fetchone()[0])
        return self._pending

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> PgCursor:
        query, _ = translate(sql, returning=False)
        with self.raw.cursor() as cur:
            cur.executemany(query, [_params(p) for p in seq])
            return PgCursor(None, max(cur.rowcount, 0))

    def close(self) -> None:
        self.raw.close()


def _params(params: Sequence[Any]) -> tuple:
    """sqlite3's parameter habits in PostgreSQL's terms: booleans as the
    integers the schema stores, and no NUL characters in text."""
    return tuple(int(p) if isinstance(p, bool)
                 else p.replace("\x00", "\ufffd") if isinstance(p, str) and "\x00" in p
                 else p for p in params)


_INSERT_INTO = re.compile(r"^\s*INSERT\s+INTO\s+(\w+)", re.IGNORECASE)
_CACHE: dict[tuple[str, bool], tuple[str, bool]] = {}


def translate(sql: str, *, returning: bool = True) -> tuple[str, bool]:
    """A statement in PostgreSQL's terms, and whether ``RETURNING id`` was
    added to it. Placeholders outside quoted text become ``%s`` (and a ``%``
    becomes ``%%``, psycopg's escape)."""
    key = (sql, returning)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    out: list[str] = []
    quoted = False
    for ch in sql:
        if ch == "'":
            quoted = not quoted
        if ch == "?" and not quoted:
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    query = "".join(out)
    table = _INSERT_INTO.match(query)
    add = bool(returning and table and table.group(1).lower() in ID_TABLES
               and "RETURNING" not in query.upper())
    if add:
        query = query.rstrip().rstrip(";") + " RETURNING id"
    if len(_CACHE) < 4096:
        _CACHE[key] = (query, add)
    return query, add


#: The counters as the catalog reads them: folded, plus any still pending.
TALLIES = ("(SELECT key, CAST(sum(n) AS BIGINT) AS n FROM (SELECT key, n FROM tallies UNION ALL "
           "SELECT key, n FROM tally_pending) AS counted GROUP BY key) AS tallies")

#: Moves the pending +1 and -1 rows into the counters, in one statement (what
#: is deleted is what is added, whatever another connection appends meanwhile),
#: and says how many it moved.
FOLD_TALLIES = ("WITH moved AS (DELETE FROM tally_pending RETURNING key, n), "
                "folded AS (INSERT INTO tallies (key, n) SELECT key, sum(n) FROM moved "
                "GROUP BY key ON CONFLICT (key) DO UPDATE SET n = tallies.n + excluded.n) "
                "SELECT count(*) FROM moved")

_TALLY_UP = re.compile(r"INSERT\s+INTO\s+tallies\s*\(key,\s*n\)\s*VALUES\s*\((.+?),\s*1\)"
                       r"\s*ON\s+CONFLICT\s*\(key\)\s*DO\s+UPDATE\s+SET\s+n\s*=\s*tallies\.n"
                       r"\s*\+\s*1", re.IGNORECASE | re.DOTALL)
_TALLY_DOWN = re.compile(r"UPDATE\s+tallies\s+SET\s+n\s*=\s*n\s*-\s*1\s+WHERE\s+key\s*=\s*"
                         r"(.+?)\s*(;|$)", re.IGNORECASE | re.DOTALL)
_TALLIES_TABLE = re.compile(r"^\s*CREATE\s+TABLE\s+tallies\b", re.IGNORECASE)

_TRIGGER = re.compile(
    r"CREATE\s+TRIGGER\s+(\w+)\s+(AFTER|BEFORE)\s+(INSERT|UPDATE|DELETE)\s+ON\s+(\w+)\s+"
    r"BEGIN\s+(.*)\s+END\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_RAISE = re.compile(r"SELECT\s+RAISE\s*\(\s*ABORT\s*,\s*('(?:[^']|'')*')\s*\)", re.IGNORECASE)
_TYPES = [
    (re.compile(r"\bid\s+INTEGER\s+PRIMARY\s+KEY(\s+AUTOINCREMENT)?", re.IGNORECASE),
     "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b", re.IGNORECASE), "BIGINT"),
    (re.compile(r"\bREAL\b", re.IGNORECASE), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b", re.IGNORECASE), "BYTEA"),
    (re.compile(r"\)\s*WITHOUT\s+ROWID", re.IGNORECASE), ")"),
]


def translate_ddl(statement: str) -> list[str]:
    """One SQLite DDL statement as the PostgreSQL statements that do the same."""
    trigger = _TRIGGER.match(statement.strip())
    if trigger is not None:
        name, when, event, table, body = trigger.groups()
        body = _RAISE.sub(lambda m: f"RAISE EXCEPTION {m.group(1)}", body.strip())
        body = _TALLY_UP.sub(
            lambda m: f"INSERT INTO tally_pending (key, n) VALUES ({m.group(1)}, 1)", body)
        body = _TALLY_DOWN.sub(
            lambda m: f"INSERT INTO tally_pending (key, n) VALUES ({m.group(1)}, -1){m.group(2)}",
            body)
        body = body.rstrip().rstrip(";") + ";"
        function = (f"CREATE FUNCTION {name}_fn() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    f"BEGIN {body} RETURN NULL; END $$")
        trigger_sql = (f"CREATE TRIGGER {name} {when} {event} ON {table} FOR EACH ROW "
                       f"EXECUTE FUNCTION {name}_fn()")
        return [function, trigger_sql]
    extra = (["CREATE TABLE tally_pending (key TEXT NOT NULL, n BIGINT NOT NULL)"]
             if _TALLIES_TABLE.match(statement) else [])
    for pattern, replacement in _TYPES:
        statement = pattern.sub(replacement, statement)
    return [statement.rstrip().rstrip(";"), *extra]
