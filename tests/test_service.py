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
from urllib.parse import urlencode

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
def serving(db: Path, root: Path, *extra: str):
    """``imgmatch serve`` on a free loopback port, until the block ends: its port."""
    with serving_process(db, root, *extra) as (port, _, _):
        yield port


@contextlib.contextmanager
def serving_process(db: Path, root: Path, *extra: str):
    """``imgmatch serve`` with extra options: (port, process, log file)."""
    port = free_port()
    log_path = root / f"serve-{port}.log"
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "imgmatch.cli", "--db", str(db), "serve",
                             "--port", str(port), "--max-upload-mb", "1", *extra],
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
                pytest.fail("the service did not start:\n" + log_path.read_text())
            time.sleep(0.1)
        yield port, proc, log_path
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_health_needs_no_key(service):
    status, body = Client(service["port"]).request("GET", "/healthz")
    assert status == 200 and body["status"] == "ok"


@pytest.mark.parametrize("flags, features", [((), 1), (("--fast",), 0)])
def test_uploads_get_local_features_unless_the_service_is_fast(tmp_path, flags, features):
    """The service adds what ingest adds: the robust tier, or with --fast the hashes."""
    db = tmp_path / "c.db"
    key = cli(db, "keys", "add", "crawler", "--scope", "ingest").strip().splitlines()[-1]
    with serving(db, tmp_path, *flags) as port:
        status, body = Client(port, key).post_form(
            "/v1/images", {}, {"image": ("a.jpg", ASTRONAUT.read_bytes())})
        assert status == 200, body
    assert json.loads(cli(db, "stats", "--json"))["local_features"] == features


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


# ------------------------------------------------- the service and the CLI agree
def run_cli(db: Path, *args: str) -> str:
    """The CLI's standard output, run in this process (faster than a subprocess)."""
    from imgmatch.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--db", str(db), *args])
    assert code == 0, err.getvalue()
    return out.getvalue()


def service_clusters(client: Client, params: list[tuple[str, str]]) -> dict:
    status, body = client.request("GET", "/v1/clusters?" + urlencode(params))
    assert status == 200, body
    return body


def cluster_shas(report: dict) -> set[str]:
    return {img["sha256"] for c in report["clusters"] for img in c["images"]}


#: ``imgmatch report`` options and the query string that means the same.
FILTERS = [
    ([], []),
    (["--platform", "nightads"], [("platform", "nightads")]),
    (["--platform", "nightads", "--platform", "jobboard"],
     [("platform", "nightads"), ("platform", "jobboard")]),
    (["--platform", "nosuch"], [("platform", "nosuch")]),
    (["--cross-platform"], [("cross_platform", "true")]),
    (["--min-sightings", "1"], [("min_sightings", "1")]),
    (["--min-sightings", "3"], [("min_sightings", "3")]),
    (["--since", "2025-01-01"], [("since", "2025-01-01")]),
    (["--until", "2023-06-30"], [("until", "2023-06-30")]),
    # a time, not a date: the nightads repost of 2024 was posted at exactly this one
    (["--since", "2024-01-01", "--until", "2024-03-09T21:14:00Z"],
     [("since", "2024-01-01"), ("until", "2024-03-09T21:14:00Z")]),
    (["--platform", "citylist", "--cross-platform", "--since", "2024-05-21"],
     [("platform", "citylist"), ("cross_platform", "1"), ("since", "2024-05-21")]),
]


def _filter_ids(filters: list) -> list[str]:
    return [" ".join(options) or "no filters" for options, _ in filters]


@pytest.mark.parametrize("options, params", FILTERS, ids=_filter_ids(FILTERS))
def test_service_and_cli_report_the_same_clusters(service, options, params):
    client = Client(service["port"], service["keys"]["read"])
    expected = json.loads(run_cli(service["db"], "report", "--format", "json", *options))
    assert service_clusters(client, params) == expected


def test_clusters_take_their_filters_from_the_query_string(service):
    client = Client(service["port"], service["keys"]["read"])
    everything = service_clusters(client, [])["clusters"]
    assert len(everything) >= 3
    assert service_clusters(client, [("platform", "nosuch")])["n_clusters"] == 0

    def ids(found: list[dict]) -> list[int]:
        return [c["id"] for c in found]

    either = {"nightads", "jobboard"}
    found = service_clusters(client, [("platform", "nightads"), ("platform", "jobboard")])
    assert ids(found["clusters"]) == [c["id"] for c in everything
                                      if either & set(c["platforms"])] != ids(everything)
    def seen(cluster: dict) -> list[str]:  # as the library reads a sighting's time
        return [s["posted_at"] or s["collected_at"] or "" for s in cluster["sightings"]]

    found = service_clusters(client, [("since", "2025-04-01")])["clusters"]
    assert ids(found) == [c["id"] for c in everything
                          if any(t >= "2025-04-01" for t in seen(c))]
    assert 0 < len(found) < len(everything)
    found = service_clusters(client, [("until", "2023-03-01")])["clusters"]
    assert ids(found) == [c["id"] for c in everything  # the whole day of a bare date
                          if any(t <= "2023-03-01T23:59:59Z" for t in seen(c))]
    assert 0 < len(found) < len(everything)
    found = service_clusters(client, [("cross_platform", "true"), ("min_sightings", "4")])
    assert ids(found["clusters"]) == [c["id"] for c in everything
                                      if len(c["platforms"]) > 1 and c["n_sightings"] >= 4]


@pytest.mark.parametrize("query, named", [
    ("/v1/clusters?since=last%20tuesday", "since"),
    ("/v1/clusters?until=2024-13-45", "until"),
    ("/v1/clusters?min_sightings=0", "min_sightings"),
    ("/v1/clusters?min_sightings=two", "min_sightings"),
    ("/v1/clusters?cross_platform=perhaps", "cross_platform"),
    ("/v1/query?top_k=ten", "top_k"),
])
def test_malformed_parameters_are_a_400_naming_the_parameter(service, query, named):
    client = Client(service["port"], service["keys"]["read"])
    status, body = client.request("POST" if query.startswith("/v1/query") else "GET", query)
    assert status == 400, body
    assert body["error"]["reason"] == "bad-request" and named in body["error"]["message"]


def _differences(served: list[dict], printed: list[dict]) -> str:
    """Where two answers part, field by field: enough to tell a different
    candidate from the same candidate weighed differently."""
    lines = [f"{len(served)} served, {len(printed)} printed"]
    for n, (a, b) in enumerate(zip(served, printed)):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                lines.append(f"match {n} {key}: served {a.get(key)!r} printed {b.get(key)!r}")
    return "\n".join(lines)


@pytest.mark.parametrize("query", ["astronaut_mirror_crop10.jpg", "cat_mirror_crop10.jpg",
                                   "unrelated.jpg"])
@pytest.mark.parametrize("options, params", [
    ([], ""),
    (["--top-k", "2", "--min-score", "0"], "?top_k=2&min_score=0"),
])
def test_service_and_cli_find_the_same_matches(service, query, options, params):
    path = FIXTURES / "queries" / query
    client = Client(service["port"], service["keys"]["read"])
    status, body = client.post_form("/v1/query" + params, {},
                                    {"image": (query, path.read_bytes())})
    assert status == 200, body
    printed = json.loads(run_cli(service["db"], "query", "--json", *options, str(path)))
    assert body["matches"] == printed["matches"], _differences(body["matches"],
                                                              printed["matches"])
    if query != "unrelated.jpg":
        assert body["matches"]
        status, info = client.request("GET", f"/v1/images/{body['matches'][0]['sha256']}")
        pdq = info["signals"]["pdq"]["hex"]
        status, body = client.post_form("/v1/query" + params, {"pdq": pdq})
        printed = json.loads(run_cli(service["db"], "query", "--json", *options, "--pdq", pdq))
        assert status == 200 and body["matches"] == printed["matches"]


def test_the_service_explains_a_match_with_the_score_its_query_gave(service):
    """GET /v1/explain searches A's picture as the service's queries do (the
    writer's indexes, not a read-only copy), so each match of a catalogued
    repost is explained with the score /v1/query gave it."""
    path = FIXTURES / "reposts" / "astronaut_citylist_2023.jpg"
    client = Client(service["port"], service["keys"]["read"])
    status, body = client.post_form("/v1/query", {}, {"image": (path.name, path.read_bytes())})
    assert status == 200, body
    others = [m for m in body["matches"] if m["sha256"] != sha256_of(path)]
    assert others
    for m in others:
        status, e = client.request("GET", f"/v1/explain?a={sha256_of(path)}&b={m['sha256']}")
        assert status == 200, e
        assert e["score"] == pytest.approx(m["score"], abs=1e-4), m["sha256"]


@pytest.fixture(scope="module")
def ignoring(tmp_path_factory):
    """A collection of its own, served, for tests that add to its ignore list."""
    root = tmp_path_factory.mktemp("ignoring")
    db = root / "c.db"
    cli(db, "ingest", "--quiet", "--manifest", str(FIXTURES / "manifest.csv"))
    key = cli(db, "keys", "add", "reader", "--scope", "read").strip().splitlines()[-1]
    with serving(db, root) as port:
        yield {"db": db, "client": Client(port, key)}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pdq_of(client: Client, path: Path) -> str:
    status, info = client.request("GET", f"/v1/images/{sha256_of(path)}")
    assert status == 200, info
    return info["signals"]["pdq"]["hex"]


def test_an_ignored_hash_leaves_the_clusters(ignoring):
    """``imgmatch ignore --pdq`` takes the picture out of GET /v1/clusters, as out
    of ``imgmatch report``: every image within the threshold, not only one."""
    client, db = ignoring["client"], ignoring["db"]
    astronaut = {sha256_of(FIXTURES / "originals" / "astronaut.jpg"),
                 sha256_of(FIXTURES / "reposts" / "astronaut_citylist_2023.jpg")}
    assert astronaut <= cluster_shas(service_clusters(client, []))
    cli(db, "ignore", "--pdq", _pdq_of(client, ASTRONAUT), "--reason", "stock photo")
    assert not astronaut & cluster_shas(service_clusters(client, []))
    assert not astronaut & cluster_shas(service_clusters(client, [("min_sightings", "1")]))


CAT = FIXTURES / "reposts" / "cat_citylist_2023.jpg"
COFFEE = FIXTURES / "originals" / "coffee.jpg"


@pytest.fixture(scope="module")
def more_ignored(ignoring):
    """The ignoring collection with a hash and an image (by name) ignored too."""
    client, db = ignoring["client"], ignoring["db"]
    run_cli(db, "ignore", "--pdq", _pdq_of(client, CAT), "--reason", "stock photo")
    run_cli(db, "ignore", sha256_of(COFFEE), "--reason", "logo")
    return ignoring


AFTER_IGNORING = FILTERS[:2] + FILTERS[4:6] + FILTERS[7:9]


@pytest.mark.parametrize("options, params", AFTER_IGNORING, ids=_filter_ids(AFTER_IGNORING))
def test_service_and_cli_agree_after_ignoring(more_ignored, options, params):
    expected = json.loads(run_cli(more_ignored["db"], "report", "--format", "json", *options))
    assert not {sha256_of(CAT), sha256_of(COFFEE)} & cluster_shas(expected)
    assert service_clusters(more_ignored["client"], params) == expected


def _resized(path: Path, side: int) -> bytes:
    out = io.BytesIO()
    Image.open(path).convert("RGB").resize((side, side)).save(out, "JPEG", quality=88)
    return out.getvalue()


def test_an_upload_is_answered_with_its_matches_but_not_itself(service):
    client = Client(service["port"], service["keys"]["ingest"])
    data = _resized(ASTRONAUT, 300)
    sha = hashlib.sha256(data).hexdigest()
    fields = {"platform": "uploads", "ad_id": "u-1", "posted_at": "2025-07-01T10:00:00Z"}
    status, body = client.post_form("/v1/images?top_k=3", fields, {"image": ("a.jpg", data)})
    assert status == 200, body
    assert list(body) == ["sha256", "new_image", "new_sighting", "matches"]
    assert body["sha256"] == sha and body["new_image"] and body["new_sighting"]
    found = [m["sha256"] for m in body["matches"]]
    assert sha256_of(ASTRONAUT) in found and sha not in found and len(found) <= 3
    status, again = client.post_form("/v1/images?top_k=3", fields | {"ad_id": "u-2"},
                                     {"image": ("b.jpg", data)})
    assert status == 200 and not again["new_image"] and again["new_sighting"]
    assert [m["sha256"] for m in again["matches"]] == found
    status, info = Client(service["port"], service["keys"]["read"]).request(
        "GET", f"/v1/images/{sha}")
    assert {s["ad_id"] for s in info["sightings"]} == {"u-1", "u-2"}
    assert {s["source"] for s in info["sightings"]} == {"upload:a.jpg", "upload:b.jpg"}


@pytest.mark.parametrize("module", ["service.py", "service_hma.py"])
def test_the_service_uses_only_the_public_library(module):
    """The service speaks to the collection through imgmatch's public names (and
    the API-key policy and the sighting fields of manifests), never its modules;
    its HMA-compatible routes are its own module."""
    import ast

    tree = ast.parse((Path(__file__).resolve().parents[1] / "imgmatch" / module)
                     .read_text(encoding="utf-8"))
    used = {node.module or "" for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1}
    assert used <= {"", "errors", "keys", "sources", "service_hma"}, used
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.Import)
                and any(a.name.startswith("imgmatch") for a in node.names)]
