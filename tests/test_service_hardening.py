"""The HTTP service against slow, malformed and curious clients (issue: hardening).

Started for real on a loopback port, as in test_service.py.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from test_service import FIXTURES, Client, cli  # noqa: E402
from test_service import serving_process as serving  # noqa: E402


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    root = tmp_path_factory.mktemp("guarded")
    db = root / "c.db"
    cli(db, "ingest", "--quiet", "--manifest", str(FIXTURES / "manifest.csv"))
    key = cli(db, "keys", "add", "reader", "--scope", "read").strip().splitlines()[-1]
    with serving(db, root, "--header-timeout", "1.5", "--max-connections", "200") as run:
        port, proc, log_path = run
        yield {"port": port, "key": key, "db": db, "proc": proc, "log": log_path}


def _timed_health(port: int) -> float:
    start = time.monotonic()
    status, _ = Client(port).request("GET", "/healthz")
    assert status == 200
    return time.monotonic() - start


def test_slow_headers_are_cut_off_and_health_still_answers(guarded):
    """Clients that never finish their headers hold a socket for the header
    time limit only; meanwhile /healthz answers at once."""
    port = guarded["port"]
    slow = []
    for _ in range(150):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        slow.append(sock)
    try:
        assert _timed_health(port) < 1.0
        time.sleep(2.5)
        closed = 0
        for sock in slow:
            try:
                closed += sock.recv(1) == b""
            except (ConnectionResetError, TimeoutError):
                closed += 1
        assert closed == len(slow)
    finally:
        for sock in slow:
            sock.close()
    assert _timed_health(port) < 1.0


def test_past_the_connection_cap_the_longest_waiting_client_makes_room(guarded):
    """200 clients that never send a request fill the cap; the next client is
    served, and the one that waited longest is the one cut off."""
    port = guarded["port"]
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(200)]
    try:
        time.sleep(0.2)
        assert _timed_health(port) < 1.0
        held[0].settimeout(2)
        try:
            assert held[0].recv(1) == b""
        except ConnectionResetError:
            pass
    finally:
        for sock in held:
            sock.close()
    log = guarded["log"].read_text()
    assert "Traceback" not in log and len(log) < 20_000


def test_the_bearer_scheme_ignores_case(guarded):
    for scheme in ("Bearer", "bearer", "BEARER"):
        status, _ = Client(guarded["port"]).request(
            "GET", "/v1/clusters", headers={"Authorization": f"{scheme} {guarded['key']}"})
        assert status == 200, scheme
    for header in ("Basic abc", "Bearer", "Bearer  ", "bearerX " + guarded["key"]):
        status, body = Client(guarded["port"]).request(
            "GET", "/v1/clusters", headers={"Authorization": header})
        assert status == 401 and body["error"]["reason"] == "unauthorized", header


@pytest.mark.parametrize(("method", "path", "status", "reason"), [
    ("GET", "/no/such/route", 404, "not-found"),
    ("DELETE", "/v1/clusters", 405, "method-not-allowed"),
    ("GET", "/v1/clusters?min_sightings=zero", 400, "bad-request"),
])
def test_every_error_has_the_documented_shape(guarded, method, path, status, reason):
    got, body = Client(guarded["port"], guarded["key"]).request(method, path)
    assert got == status and set(body) == {"error"}, body
    assert body["error"]["reason"] == reason and body["error"]["message"]


def test_too_many_form_fields_is_a_400_in_the_documented_shape(guarded):
    fields = {f"f{n}": "x" for n in range(1100)}
    status, body = Client(guarded["port"], guarded["key"]).post_form("/v1/query", fields)
    assert status == 400 and set(body) == {"error"}, body


def test_docs_work_offline(guarded):
    """/docs is made by the service itself: nothing loaded from elsewhere."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", guarded["port"], timeout=30)
    conn.request("GET", "/docs")
    resp = conn.getresponse()
    page = resp.read().decode()
    conn.close()
    assert resp.status == 200 and "/v1/query" in page and "/v1/clusters" in page
    assert "default-src 'none'" in resp.getheader("Content-Security-Policy", "")
    assert not re.search(r"<(script|link|img)\b", page)
    assert not re.search(r"(src|href)=\"?(https?:)?//", page)


def test_a_killed_server_s_run_is_marked_killed(tmp_path):
    """kill -9 leaves no chance to record the end: the next run that starts
    on the collection sees the process gone and marks the run 'killed'."""
    import signal
    import sqlite3

    db = tmp_path / "c.db"
    cli(db, "ingest", "--quiet", str(FIXTURES / "originals" / "cat.jpg"))
    with serving(db, tmp_path) as (port, proc, _):
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status FROM runs WHERE command = 'serve'").fetchone() == (
            "running",)
    cli(db, "ingest", "--quiet", str(FIXTURES / "originals" / "rocket.jpg"))
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT command, status, finished_at IS NOT NULL FROM runs "
                            "ORDER BY id").fetchall()
    assert rows == [("ingest", "ok", 1), ("serve", "killed", 1), ("ingest", "ok", 1)]


def test_the_service_follows_images_another_process_adds(tmp_path):
    """A CLI ingest beside the running service: its images are found within
    seconds (the service follows the catalog), and uploads link to them."""
    db = tmp_path / "c.db"
    cli(db, "ingest", "--quiet", str(FIXTURES / "originals" / "cat.jpg"))
    key = cli(db, "keys", "add", "k", "--scope", "admin").strip().splitlines()[-1]
    with serving(db, tmp_path) as (port, _, _):
        client = Client(port, key)
        astronaut = (FIXTURES / "originals" / "astronaut.jpg").read_bytes()

        def found() -> list[dict]:
            status, body = client.post_form("/v1/query", {}, {"image": ("q.jpg", astronaut)})
            assert status == 200, body
            return body["matches"]

        assert found() == []
        cli(db, "ingest", "--quiet", str(FIXTURES / "originals" / "astronaut.jpg"))
        started = time.monotonic()
        while not found():
            assert time.monotonic() - started < 5, "not found within 5 s"
            time.sleep(0.2)
        repost = (FIXTURES / "reposts" / "astronaut_citylist_2023.jpg").read_bytes()
        status, body = client.post_form("/v1/images", {"platform": "x"},
                                        {"image": ("r.jpg", repost)})
        assert status == 200 and body["matches"], body


def test_a_known_image_sent_again_is_decoded_outside_the_write_lock(tmp_path, monkeypatch):
    """Its signals were not computed (the bytes are known), so the query needs
    its pixels: they are decoded before the lock is taken, never while
    other requests wait on it."""
    import threading

    import imgmatch
    import imgmatch.collection as facade

    lock = threading.Lock()
    held_while_decoding: list[bool] = []
    real = facade.decode

    def spy(*args, **kwargs):
        held_while_decoding.append(lock.locked())
        return real(*args, **kwargs)

    monkeypatch.setattr(facade, "decode", spy)
    data = (FIXTURES / "originals" / "astronaut.jpg").read_bytes()
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        for _ in range(2):
            collection.add_and_match(data, lock=lock)
    # once per call (the analysis shares the query's decode), never under the lock
    assert held_while_decoding == [False, False]


def _rgba_png_bomb(side: int) -> bytes:
    """A valid, transparent RGBA PNG of side x side pixels, a few hundred KB on disk."""
    import struct
    import zlib

    from conftest import _png_chunk

    row = bytes(1 + side * 4)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row * 100) for _ in range(side // 100)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body)
            + _png_chunk(b"IEND", b""))


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_uploads_are_decoded_in_capped_workers_not_in_the_service(tmp_path):
    """Four 12,000 x 12,000 RGBA PNGs at once (each under the upload and pixel
    limits): each fails on its own in a capped decoder, the service's own
    memory stays small, and /healthz answers within a second throughout."""
    from concurrent.futures import ThreadPoolExecutor

    db = tmp_path / "c.db"
    cli(db, "ingest", "--quiet", str(FIXTURES / "originals" / "cat.jpg"))
    key = cli(db, "keys", "add", "k", "--scope", "admin").strip().splitlines()[-1]
    bomb = _rgba_png_bomb(12_000)
    assert len(bomb) < 1 << 20
    with serving(db, tmp_path, "--max-memory", "256", "--decode-workers", "2") as (
            port, proc, _):
        client = Client(port, key)
        with ThreadPoolExecutor(4) as pool:
            answers = [pool.submit(client.post_form, path, {}, {"image": ("b.png", bomb)})
                       for path in ("/v1/query", "/v1/query", "/v1/images", "/v1/images")]
            slowest = 0.0
            while not all(a.done() for a in answers):
                slowest = max(slowest, _timed_health(port))
                time.sleep(0.2)
        for answer in answers:
            status, body = answer.result()
            assert status == 400, body
            assert body["error"]["reason"] in ("out-of-memory", "decoder-crash"), body
        assert slowest < 1.0
        assert _peak_rss_mb(proc.pid) < 400  # one decode in process took 2.9 GB
        # and the decoders still work
        status, body = client.post_form("/v1/query", {}, {
            "image": ("c.jpg", (FIXTURES / "originals" / "cat.jpg").read_bytes())})
        assert status == 200 and body["matches"], body


def test_following_the_catalog_catches_an_image_committed_below_its_own(tmp_path):
    """Ids go by commit order: another process may commit an image just before
    this one writes its own, so appending past the largest id it holds would
    miss that image. Following the catalog notices, and finds it."""
    import imgmatch

    db = tmp_path / "c.db"
    originals = FIXTURES / "originals"
    with imgmatch.Collection.open(db) as service_side:
        service_side.add(originals / "cat.jpg")
        service_side.load_indexes()
        with imgmatch.Collection.open(db) as other:  # the CLI, say
            other.add(originals / "astronaut.jpg")
        service_side.add(originals / "rocket.jpg")  # written without a follow in between
        assert service_side.refresh()
        assert not service_side.refresh()  # in step again: nothing rebuilt twice
        found = {m.sha256 for m in service_side.query(originals / "astronaut.jpg")}
        assert imgmatch.hash_bytes((originals / "astronaut.jpg").read_bytes())["sha256"] in found


def test_a_sandbox_worker_decodes_an_upload_once(monkeypatch):
    """The analysis and the query it makes share one decode (robust tier)."""
    import imgmatch
    import imgmatch.analysis as analysis
    import imgmatch.sandbox as sandbox

    calls: list[int] = []
    real = sandbox.decode

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sandbox, "decode", counted)
    monkeypatch.setattr(analysis, "decode", counted)
    data = (FIXTURES / "originals" / "astronaut.jpg").read_bytes()
    made = sandbox.prepare(sandbox.Job(data, "a.jpg", imgmatch.ROBUST_SIGNALS,
                                       ("pdq", "phash", "dhash"), True, False))
    assert made.analysis.image is not None and made.views and made.grey is not None
    assert len(calls) == 1


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_a_small_memory_cap_leaves_room_for_the_decoders_own_libraries():
    """A spawned worker starts without its parent's libraries, and OpenCV
    alone maps some 300 MB: loaded after a 256 MB cap it crashed the worker
    on every upload with local features. The worker loads them first."""
    import imgmatch
    from imgmatch.sandbox import DecodeSandbox

    data = (FIXTURES / "originals" / "cat.jpg").read_bytes()
    with DecodeSandbox(1, max_memory=256 << 20) as sandbox:
        for _ in range(2):
            made = sandbox.prepare(data, source="c.jpg", signals=imgmatch.ROBUST_SIGNALS,
                                   query_signals=("pdq", "phash", "dhash"),
                                   local_features=True)
            assert made.analysis.reason is None, made.analysis.detail
            assert made.analysis.features is not None and made.views
        assert sandbox.replaced == 0
