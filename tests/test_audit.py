"""The audit log: hash-chained, append-only, written by the shells, checked by
``imgmatch audit verify``, and never naming a picture."""

from __future__ import annotations

import getpass
import hashlib
import json
import re
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

import imgmatch
from imgmatch.audit import GENESIS
from imgmatch.cli import cli, main
from imgmatch.sources import iter_manifest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
ASTRONAUT = FIXTURES / "originals" / "astronaut.jpg"
REPOST = FIXTURES / "reposts" / "astronaut_citylist_2023.jpg"
QUERY = FIXTURES / "queries" / "astronaut_mirror_crop10.jpg"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_digest(prev: str, entry: imgmatch.AuditEntry) -> str:
    """The documented formula, written out again: SHA-256 of the previous
    digest and the entry's canonical JSON."""
    body = json.dumps({"seq": entry.seq, "at": entry.at, "actor": entry.actor,
                       "action": entry.action, "details": entry.details},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev + body).encode()).hexdigest()


def logged(db: Path, n: int = 4) -> None:
    with imgmatch.Collection.open(db) as collection:
        for k in range(n):
            collection.audit("query", "alice", {"images": 1, "matches": k, "min_score": 0.5})


def tamper(db: Path, sql: str, *args: object) -> None:
    """What someone with the file and sqlite3 can do: the append-only triggers
    go first."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("DROP TRIGGER audit_append_only_update")
        conn.execute("DROP TRIGGER audit_append_only_delete")
        conn.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


def verify(db: Path) -> tuple[int, str, str]:
    runner = CliRunner()
    done = runner.invoke(cli, ["--db", str(db), "audit", "verify"])
    code = main(["--db", str(db), "audit", "verify"])
    return code, done.output, str(done.exception or "")


# -------------------------------------------------------------------- the chain
def test_entries_are_chained_by_the_documented_digest(tmp_path):
    db = tmp_path / "c.db"
    logged(db, 3)
    with imgmatch.Collection.open(db, readonly=True) as collection:
        entries = collection.audit_entries()
        check = collection.verify_audit()
        last_two = collection.audit_entries(2)
    assert [e.seq for e in entries] == [1, 2, 3]
    assert [e.details["matches"] for e in entries] == [0, 1, 2]
    prev = GENESIS
    for entry in entries:
        assert entry.prev == prev and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry.at)
        assert entry.digest == expected_digest(prev, entry)
        prev = entry.digest
    assert check == {"ok": True, "entries": 3, "head": entries[-1].digest,
                     "first_bad": None, "problem": None}
    assert last_two == entries[1:]
    assert entries[0].to_json()["digest"] == entries[0].digest


def test_the_log_refuses_updates_and_deletes(tmp_path):
    db = tmp_path / "c.db"
    logged(db, 2)
    conn = sqlite3.connect(db)
    try:
        for sql in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit WHERE seq = 1"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(sql)
    finally:
        conn.close()


def test_a_changed_entry_is_named(tmp_path):
    db = tmp_path / "c.db"
    logged(db)
    assert verify(db)[0] == 0
    tamper(db, "UPDATE audit SET details = ? WHERE seq = 2",
           '{"images":1,"matches":0,"min_score":0.5}')
    code, _, error = verify(db)
    assert code == 3 and "entry 2" in error and "changed" in error
    with imgmatch.Collection.open(db, readonly=True) as collection:
        check = collection.verify_audit()
    assert check["ok"] is False and check["first_bad"] == 2
    assert check["head"] == collection_digest(db, 1)


def collection_digest(db: Path, seq: int) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT digest FROM audit WHERE seq = ?", (seq,)).fetchone()[0]


def test_a_removed_entry_is_named(tmp_path):
    db = tmp_path / "c.db"
    logged(db)
    tamper(db, "DELETE FROM audit WHERE seq = 2")
    code, _, error = verify(db)
    assert code == 3 and "entry 3" in error and "entry 2 is missing" in error


def test_an_entry_rewritten_with_a_fresh_digest_breaks_the_next_link(tmp_path):
    """Recomputing the changed entry's digest does not help: the next entry
    names the old one."""
    db = tmp_path / "c.db"
    logged(db)
    with imgmatch.Collection.open(db, readonly=True) as collection:
        second = collection.audit_entries()[1]
    forged = imgmatch.AuditEntry(second.seq, second.at, "someone-else", second.action,
                                 second.details, second.prev, "")
    tamper(db, "UPDATE audit SET actor = ?, digest = ? WHERE seq = 2", forged.actor,
           expected_digest(second.prev, forged))
    with imgmatch.Collection.open(db, readonly=True) as collection:
        check = collection.verify_audit()
    assert check["first_bad"] == 3 and "does not match" in check["problem"]


def test_unreadable_details_are_reported_not_fatal(tmp_path):
    db = tmp_path / "c.db"
    logged(db, 2)
    tamper(db, "UPDATE audit SET details = 'not json' WHERE seq = 1")
    with imgmatch.Collection.open(db, readonly=True) as collection:
        assert collection.verify_audit()["first_bad"] == 1


# ---------------------------------------------------------------- what it holds
@pytest.mark.parametrize("details", [
    {"image": "945df306f127a6012259cb6b4694cd1f07c49d63e21136ff595cdd99f3516028"},
    {"prefix": "945df306"},
    {"filters": {"near": ["x", "pdq:2d6b1af3a956c529"]}},
    {"source": "https://citylist.example/ads/10424/photo1.jpg"},
    {"score": float("nan")},
    {"blob": b"bytes"},
    {"note": "x" * 201},
])
def test_details_that_could_name_a_picture_are_refused(tmp_path, details):
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        with pytest.raises(imgmatch.AuditError):
            collection.audit("query", "alice", details)
        assert collection.audit_entries() == []


def test_actions_actors_and_operator_names(tmp_path):
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        for action, actor in (("Query!", "alice"), ("query", ""), ("query", "a\nb")):
            with pytest.raises(imgmatch.AuditError):
                collection.audit(action, actor, {})
        # an API key's name is the operator's choice, kept whatever it looks like
        entry = collection.audit("keys-add", "alice", {"key": "team-deadbeef12",
                                                       "scopes": ("read",)})
        assert entry.details == {"key": "team-deadbeef12", "scopes": ["read"]}
        with pytest.raises(imgmatch.ImgmatchError, match="limit"):
            collection.audit_entries(-1)


def test_a_read_only_collection_still_appends(tmp_path):
    db = tmp_path / "c.db"
    logged(db, 1)
    with imgmatch.Collection.open(db, readonly=True) as collection:
        entry = collection.audit("explain", "bob", {"verdict": "same"})
        with pytest.raises(sqlite3.OperationalError):  # the catalog itself stays read-only
            collection.catalog.conn.execute("DELETE FROM meta")
    assert entry.seq == 2
    with imgmatch.Collection.open(db, readonly=True) as collection:
        assert collection.verify_audit()["ok"]


def test_an_unwritable_catalog_says_so(tmp_path):
    db = tmp_path / "c.db"
    logged(db, 1)
    with imgmatch.Collection.open(db, readonly=True) as collection:
        collection.catalog.address = str(tmp_path / "elsewhere.db")  # a file it cannot open
        with pytest.raises(imgmatch.CatalogError, match="audit log.*writable"):
            collection.audit("query", "bob", {})


# ------------------------------------------------------------------ the shells
def test_the_cli_records_what_it_does_and_never_which_picture(tmp_path):
    db = tmp_path / "c.db"
    assert main(["--db", str(db), "ingest", "--quiet", "--thumbnails", "--manifest",
                 str(FIXTURES / "manifest.csv")]) == 0
    with imgmatch.Collection.open(db, readonly=True) as collection:
        assert collection.audit_entries() == []  # the library writes none by itself
        pdq = collection.image(sha(ASTRONAUT)).signals["pdq"].hex
    with sqlite3.connect(db) as conn:
        values = [bytes(v).hex() for (v,) in conn.execute("SELECT value FROM signals")]
    runner = CliRunner()
    steps = [
        ["query", str(QUERY), "--pdq", pdq, "--top-k", "5"],
        ["explain", sha(ASTRONAUT)[:9], sha(REPOST)],
        ["report", "--format", "html", "--thumbnails", "-o", str(tmp_path / "r.html"),
         "--since", "2023-01-01", "--platform", "citylist"],
        ["show", sha(REPOST)[:10]],
        ["keys", "add", "crawler-1", "--scope", "read"],
        ["keys", "revoke", "crawler-1"],
        ["erase", sha(REPOST)[:12]],
    ]
    for args in steps:
        done = runner.invoke(cli, ["--db", str(db), *args])
        assert done.exit_code == 0, (args, done.output, done.exception)
    listing = runner.invoke(cli, ["--db", str(db), "audit", "--json"])
    entries = [json.loads(line) for line in listing.output.splitlines()]
    assert [e["action"] for e in entries] == [
        "query", "explain", "report", "show", "keys-add", "keys-revoke", "erase"]
    assert {e["actor"] for e in entries} == {getpass.getuser()}
    query, explain, report, show, added, revoked, erase = (e["details"] for e in entries)
    assert query == {"images": 1, "hashes": 1, "failed": 0, "matches": query["matches"],
                     "top_k": 5, "min_score": 0.5} and query["matches"] >= 2
    assert explain == {"verdict": "same", "score": explain["score"], "linked": True}
    assert report["format"] == "html" and report["thumbnails"] > 0  # a reveal of pictures
    assert report["platforms"] == ["citylist"] and report["since"] == "2023-01-01"
    assert report["to_file"] is True and "r.html" not in json.dumps(report)
    assert show == {"what": "image"}
    assert added == {"key": "crawler-1", "scopes": ["read"]}
    assert revoked == {"revoked": 1, "key": "crawler-1"}
    assert erase == {"images": 1}
    last = runner.invoke(cli, ["--db", str(db), "audit", "--limit", "1"])
    assert last.output.count("\n") == 1 and " erase " in last.output
    ok = runner.invoke(cli, ["--db", str(db), "audit", "verify"])
    assert ok.exit_code == 0 and ok.output.startswith("audit log intact: 7 entries")

    # nothing in the log names a picture: no SHA-256 or prefix, hash, URL, file name
    with sqlite3.connect(db) as conn:
        stored = " ".join(" ".join(map(str, row)) for row in conn.execute(
            "SELECT at, actor, action, details FROM audit"))
    pictures = [sha(p) for p in FIXTURES.rglob("*.jpg")]
    needles = [s[:8] for s in pictures] + [v[:8] for v in values] + [pdq[:8]]
    assert not [n for n in needles if n in stored]
    assert "://" not in stored and ".jpg" not in stored and "astronaut" not in stored


def test_a_failed_verify_is_exit_code_3_naming_the_entry(tmp_path):
    db = tmp_path / "c.db"
    logged(db, 3)
    tamper(db, "UPDATE audit SET at = '2020-01-01T00:00:00Z' WHERE seq = 3")
    done = CliRunner().invoke(cli, ["--db", str(db), "audit", "verify", "--json"])
    assert json.loads(done.output.splitlines()[0])["first_bad"] == 3
    assert isinstance(done.exception, imgmatch.AuditError)
    assert main(["--db", str(db), "audit", "verify"]) == 3


def test_the_service_records_each_key_use_and_what_was_asked(tmp_path):
    pytest.importorskip("fastapi")
    from test_service import Client, serving

    db = tmp_path / "c.db"
    with imgmatch.Collection.open(db) as collection:
        collection.ingest(iter_manifest(FIXTURES / "manifest.csv"))
        reader = collection.add_key("reader", ["read"])
        crawler = collection.add_key("crawler", ["ingest"])
    a, b = sha(ASTRONAUT), sha(REPOST)
    with serving(db, tmp_path) as port:
        client = Client(port, reader)
        status, body = client.request("GET", f"/v1/explain?a={a[:10]}&b={b}")
        assert status == 200 and body["verdict"] == "same" and body["a"] == a
        assert body["signals"] and body["calibration"]["precision"] >= 0.99
        cli_json = CliRunner().invoke(cli, ["--db", str(db), "explain", a[:10], b, "--json"])
        assert json.loads(cli_json.output) == body
        assert client.request("GET", "/v1/explain?a=xyz&b=" + b)[0] == 400
        assert client.request("GET", f"/v1/explain?a={'0' * 64}&b={b}")[0] == 404
        assert client.post_form("/v1/query", {}, {"image": ("q.jpg", QUERY.read_bytes())})[0] \
            == 200
        assert client.request("GET", "/v1/clusters?since=2023-01-01")[0] == 200
        assert client.request("GET", f"/v1/images/{a}")[0] == 200
        assert Client(port, crawler).request("GET", "/v1/clusters")[0] == 403
        assert Client(port, "imk_unknown").request("GET", "/v1/clusters")[0] == 401
    with imgmatch.Collection.open(db, readonly=True) as collection:
        entries = collection.audit_entries()
        assert collection.verify_audit()["ok"]
    service = [e for e in entries if e.actor.startswith("key:")]
    uses = [e.details for e in service if e.action == "key-use"]
    assert [(u["method"], u["endpoint"], u["allowed"]) for u in uses] == [
        ("GET", "/v1/explain", True), ("GET", "/v1/explain", True),
        ("GET", "/v1/explain", True), ("POST", "/v1/query", True),
        ("GET", "/v1/clusters", True), ("GET", "/v1/images/{sha256}", True),
        ("GET", "/v1/clusters", False)]
    assert {e.actor for e in service} == {"key:reader", "key:crawler"}
    asked = [(e.action, e.details) for e in service if e.action != "key-use"]
    assert [action for action, _ in asked] == ["explain", "query", "report"]
    assert asked[0][1]["verdict"] == "same" and asked[1][1]["images"] == 1
    assert asked[2][1]["since"] == "2023-01-01" and asked[2][1]["format"] == "json"
    text = json.dumps([e.to_json() for e in entries])
    assert a[:8] not in text and b[:8] not in text and "://" not in text
