"""The HTTP service, started for real on a loopback port and spoken to over HTTP."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ASTRONAUT = FIXTURES / "originals" / "astronaut.jpg"


def cli(db: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "imgmatch.cli", "--db", str(db), *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port: int, key: str | None = None) -> None:
        self.port = port
        self.key = key

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            hdrs = dict(headers or {})
            if self.key:
                hdrs["Authorization"] = f"Bearer {self.key}"
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else {}
        finally:
            conn.close()

    def post_form(self, path: str, fields: dict, files: dict | None = None):
        boundary = uuid.uuid4().hex
        out = io.BytesIO()
        for name, value in fields.items():
            out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\""
                      f"\r\n\r\n{value}\r\n".encode())
        for name, (filename, data) in (files or {}).items():
            out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                      f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream"
                      f"\r\n\r\n".encode())
            out.write(data)
            out.write(b"\r\n")
        out.write(f"--{boundary}--\r\n".encode())
        return self.request("POST", path, out.getvalue(),
                            {"Content-Type": f"multipart/form-data; boundary={boundary}"})


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    db = root / "c.db"
    cli(db, "ingest", "--quiet", "--manifest", str(FIXTURES / "manifest.csv"))
    keys = {scope: cli(db, "keys", "add", f"{scope}-client", "--scope", scope)
            .strip().splitlines()[-1] for scope in ("read", "ingest", "admin")}
    with serving(db, root) as port:
        yield {"port": port, "keys": keys, "db": db}


@contextlib.contextmanager
def serving(db: Path, root: Path):
    """``imgmatch serve`` on a free loopback port, until the block ends."""
    port = free_port()
    log = (root / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "imgmatch.cli", "--db", str(db), "serve",
                             "--port", str(port), "--max-upload-mb", "1"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if Client(port).request("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the service did not start:\n" + (root / "serve.log").read_text())
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_health_needs_no_key(service):
    status, body = Client(service["port"]).request("GET", "/healthz")
    assert status == 200 and body["status"] == "ok"


def test_every_endpoint_needs_a_key_with_the_right_scope(service):
    port, keys = service["port"], service["keys"]
    image = ("a.jpg", ASTRONAUT.read_bytes())
    assert Client(port).request("GET", "/v1/clusters")[0] == 401
    assert Client(port, "imk_not-a-key").request("GET", "/v1/clusters")[0] == 401
    assert Client(port).post_form("/v1/query", {}, {"image": image})[0] == 401
    assert Client(port, keys["ingest"]).request("GET", "/v1/clusters")[0] == 403
    status, body = Client(port, keys["read"]).post_form("/v1/images", {}, {"image": image})
    assert status == 403 and "ingest" in body["error"]["message"]
    assert Client(port, keys["read"]).request("GET", "/v1/clusters")[0] == 200
    assert Client(port, keys["admin"]).request("GET", "/v1/clusters")[0] == 200


def test_a_revoked_key_stops_working(service):
    db = service["db"]
    key = cli(db, "keys", "add", "temporary", "--scope", "read").strip().splitlines()[-1]
    client = Client(service["port"], key)
    assert client.request("GET", "/v1/clusters")[0] == 200
    cli(db, "keys", "revoke", "temporary")
    assert client.request("GET", "/v1/clusters")[0] == 401
    listing = json.loads(cli(db, "keys", "list", "--json"))
    assert all("key_hash" not in row for row in listing)
    assert any(row["name"] == "temporary" and row["revoked_at"] for row in listing)


def test_query_finds_the_original_with_its_sightings(service):
    client = Client(service["port"], service["keys"]["read"])
    query = (FIXTURES / "queries" / "astronaut_mirror_crop10.jpg").read_bytes()
    status, body = client.post_form("/v1/query", {}, {"image": ("q.jpg", query)})
    assert status == 200
    original = hashlib.sha256(ASTRONAUT.read_bytes()).hexdigest()
    match = next(m for m in body["matches"] if m["sha256"] == original)
    assert {s["platform"] for s in match["sightings"]} == {"backpage-clone", "citylist"}
    status, info = client.request("GET", f"/v1/images/{original}")
    assert status == 200 and len(info["sightings"]) == 2 and info["links"]
    pdq = info["signals"]["pdq"]["hex"]
    status, body = client.post_form("/v1/query", {"pdq": pdq})
    assert status == 200 and body["matches"][0]["sha256"] == original
    assert "lacking" not in body  # every image has every signal
    assert client.request("GET", "/v1/images/" + "0" * 64)[0] == 404
    assert client.post_form("/v1/query", {"pdq": "xyz"})[0] == 400


def test_upload_limit_is_enforced_before_reading(service):
    client = Client(service["port"], service["keys"]["ingest"])
    big = os.urandom(1_200_000)
    status, body = client.post_form("/v1/images", {}, {"image": ("big.jpg", big)})
    assert status == 413 and body["error"]["reason"] == "too-large"
    # no Content-Length (chunked): refused once the limit is passed
    conn = http.client.HTTPConnection("127.0.0.1", service["port"], timeout=60)
    conn.putrequest("POST", "/v1/images")
    conn.putheader("Authorization", f"Bearer {service['keys']['ingest']}")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    head = (b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")
    try:
        conn.send(b"%x\r\n%s\r\n" % (len(head), head))
        for _ in range(40):
            chunk = os.urandom(64 * 1024)
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
    except OSError:
        pass  # the server may close the connection once it has answered
    resp = conn.getresponse()
    assert resp.status == 413
    conn.close()


def test_malformed_images_get_400_with_a_reason(service):
    client = Client(service["port"], service["keys"]["ingest"])
    truncated = ASTRONAUT.read_bytes()[:2000]
    status, body = client.post_form("/v1/images", {}, {"image": ("t.jpg", truncated)})
    assert status == 400 and body["error"]["reason"] == "decode-error"
    status, body = client.post_form("/v1/images", {}, {"image": ("x.png", b"<svg/>")})
    assert status == 400 and body["error"]["reason"] == "unsupported-format"
    status, body = client.post_form("/v1/images", {"platform": "x"})
    assert status == 400 and "image" in body["error"]["message"]


def test_openapi_document(service):
    status, doc = Client(service["port"]).request("GET", "/openapi.json")
    assert status == 200
    assert {"/v1/images", "/v1/query", "/v1/images/{sha256}", "/v1/clusters",
            "/healthz"} <= set(doc["paths"])


def _image(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
        (64, 48), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_sixteen_clients_ingesting_at_once_lose_nothing(service):
    port, key = service["port"], service["keys"]["ingest"]
    clients, per_client = 16, 50
    images = {n: _image(1000 + n) for n in range(200)}  # shared pictures: same bytes, many ads

    def work(c: int) -> list[tuple[int, str]]:
        client = Client(port, key)
        results = []
        for i in range(per_client):
            n = (c * per_client + i) % len(images)
            status, body = client.post_form(
                "/v1/images", {"platform": f"site{c % 4}", "ad_id": f"{c}-{i}",
                               "url": f"https://site{c % 4}.example/{c}/{i}.jpg"},
                {"image": (f"{c}-{i}.jpg", images[n])})
            results.append((status, body.get("sha256", body)))
        return results

    with ThreadPoolExecutor(clients) as pool:
        outcomes = [r for rs in pool.map(work, range(clients)) for r in rs]
    assert [s for s, _ in outcomes] == [200] * (clients * per_client), outcomes[:3]
    reader = Client(port, service["keys"]["read"])
    expected: dict[str, int] = {}
    for c in range(clients):
        for i in range(per_client):
            sha = hashlib.sha256(images[(c * per_client + i) % len(images)]).hexdigest()
            expected[sha] = expected.get(sha, 0) + 1
    for sha, count in expected.items():
        status, info = reader.request("GET", f"/v1/images/{sha}")
        assert status == 200
        assert len([s for s in info["sightings"] if s["ad_id"]]) == count


def test_a_query_says_which_signals_the_collection_lacks(tmp_path):
    """A PDQ query on a collection catalogued without PDQ finds nothing, and
    says why and what adds them."""
    db = tmp_path / "c.db"
    cli(db, "ingest", "--quiet", "--signals", "phash,dhash", str(ASTRONAUT))
    key = cli(db, "keys", "add", "reader", "--scope", "read").strip().splitlines()[-1]
    with serving(db, tmp_path) as port:
        client = Client(port, key)
        status, body = client.post_form("/v1/query", {"pdq": "ab" * 32})
        assert status == 200 and body["matches"] == []
        assert body["lacking"] == {"pdq": 1} and "imgmatch upgrade" in body["hint"]
        status, body = client.post_form("/v1/query", {}, {"image": ("a.jpg",
                                                                    ASTRONAUT.read_bytes())})
        assert status == 200 and body["matches"] and "lacking" not in body
