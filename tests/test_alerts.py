"""Alert delivery: files, a webhook on 127.0.0.1 that fails, a killed ingest,
and the service's feed. Delivery is at least once and in order: every alert
in the catalog reaches every target, whatever was killed on the way."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import imgmatch
from imgmatch import Collection, DeliveryError, FileSink, WebhookSink

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MANIFEST = FIXTURES / "manifest.csv"
#: Watchlists check hashes: the hash tier is enough, and quicker to ingest.
HASHES = imgmatch.HASH_SIGNALS


class Receiver:
    """A webhook on 127.0.0.1: answers 500 to its first ``fail`` requests,
    takes ``delay`` seconds over each, and keeps the alert ids it took."""

    def __init__(self, fail: int = 0, delay: float = 0.0) -> None:
        self.fail = fail
        self.delay = delay
        self.requests = 0
        self.taken: list[int] = []
        self.first_taken = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(receiver.delay)
                receiver.requests += 1
                if receiver.requests <= receiver.fail:
                    self.send_response(500)
                    self.end_headers()
                    return
                alert = json.loads(body)
                assert self.headers["X-Imgmatch-Alert"] == str(alert["id"])
                receiver.taken.append(alert["id"])
                receiver.first_taken.set()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def pdq_of(path: Path) -> str:
    return imgmatch.hash_bytes(path.read_bytes(), ["pdq"])["signals"]["pdq"]["hex"]


def watched_collection(db: Path, tmp_path: Path) -> None:
    """A collection watching every fixture original."""
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"pdq {pdq_of(p)}\n"
                               for p in sorted((FIXTURES / "originals").glob("*.jpg"))))
    with Collection.open(db) as c:
        c.watchlist_add("ngo", listing)


def cli(db: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgmatch.cli", "--db", str(db), *args],
                          capture_output=True, text=True, timeout=180, **kwargs)


def failures(db: Path) -> list[dict]:
    """The files a catalog recorded as unusable, with why: what a failed run's
    assertion shows."""
    with Collection.open(db, readonly=True) as c:
        return c.catalog.failures()


def alert_ids(db: Path) -> list[int]:
    with Collection.open(db, readonly=True) as c:
        return [a["id"] for a in c.alerts(limit=10_000)]


def test_a_file_gets_each_alert_once_and_a_new_file_gets_them_all(tmp_path):
    db = tmp_path / "c.db"
    watched_collection(db, tmp_path)
    with Collection.open(db) as c:
        c.ingest(imgmatch.sources_for([], manifests=[MANIFEST]), signals=HASHES)
        store = c.catalog.watch
        first = tmp_path / "a.jsonl"
        assert imgmatch.alert_delivery.deliver(store, FileSink(first)) == len(c.alerts())
        assert imgmatch.alert_delivery.deliver(store, FileSink(first)) == 0
        second = tmp_path / "b.jsonl"
        imgmatch.alert_delivery.deliver(store, FileSink(second))
        assert first.read_text() == second.read_text()
        assert oct(first.stat().st_mode & 0o777) == "0o600"  # alerts name victims' ads


def test_a_webhook_that_fails_first_is_retried_until_it_takes_every_alert(catalog_address, tmp_path):
    db = catalog_address
    watched_collection(db, tmp_path)
    cli(db, "ingest", "--fast", "--quiet", "--manifest", str(MANIFEST))
    expected = alert_ids(db)
    assert len(expected) >= 5
    with Receiver(fail=3) as receiver:
        with Collection.open(db) as c:  # one pass alone stops at the first failure
            with pytest.raises(DeliveryError, match="500"):
                imgmatch.alert_delivery.deliver(c.catalog.watch, WebhookSink(receiver.url))
            (state,) = c.catalog.watch.deliveries()
            assert state["delivered_to"] == 0 and "500" in state["last_error"]
        # stats tell an operator what waits where, and why
        (waiting,) = json.loads(cli(db, "stats", "--json").stdout)["watch"]["deliveries"]
        assert waiting["waiting"] == len(expected) and "500" in waiting["last_error"]
        assert f"{len(expected)} waiting" in cli(db, "stats").stdout
        done = cli(db, "alerts", "--webhook", receiver.url)
        assert done.returncode == 0, done.stderr
        assert "retrying" in done.stderr
        (state,) = json.loads(cli(db, "stats", "--json").stdout)["watch"]["deliveries"]
        assert state["waiting"] == 0 and state["last_error"] is None
        assert receiver.taken == expected  # in order, each once
        assert cli(db, "alerts", "--webhook", receiver.url).returncode == 0
        assert receiver.taken == expected


def test_alerts_survive_a_kill_of_the_ingest_and_are_delivered_at_least_once(catalog_address, tmp_path):
    db = catalog_address
    watched_collection(db, tmp_path)
    alerts_file = tmp_path / "alerts.jsonl"
    args = ["ingest", "--fast", "--quiet", "--batch-size", "1", "--manifest", str(MANIFEST),
            "--alerts", str(alerts_file)]
    with Receiver(fail=2, delay=0.3) as receiver:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imgmatch.cli", "--db", str(db), *args,
             "--webhook", receiver.url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert receiver.first_taken.wait(120), "the webhook never got an alert"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        killed_at = len(receiver.taken)
        # the same crawl again finishes the work and delivers what is left
        done = cli(db, *args, "--webhook", receiver.url)
        assert done.returncode == 0, (done.stderr, failures(db))
        expected = alert_ids(db)
        assert set(receiver.taken) == set(expected)
        assert receiver.taken == sorted(receiver.taken)
        assert killed_at < len(expected)  # it was killed with alerts left to send
    in_file = [json.loads(line)["id"] for line in alerts_file.read_text().splitlines()]
    assert set(in_file) == set(expected)
    # the catalog is whole: as many alerts as one uninterrupted run raises
    clean = tmp_path / "clean.db"
    watched_collection(clean, tmp_path)
    cli(clean, "ingest", "--fast", "--quiet", "--manifest", str(MANIFEST))
    assert len(alert_ids(clean)) == len(expected)


@contextlib.contextmanager
def serving(db: Path, tmp_path: Path, *extra: str):
    from test_service import serving_process
    with serving_process(db, tmp_path, *extra) as (port, _, _):
        yield port


def test_the_service_feeds_alerts_by_cursor_and_posts_them_to_its_webhook(tmp_path):
    pytest.importorskip("fastapi")
    from test_service import Client

    db = tmp_path / "c.db"
    watched_collection(db, tmp_path)
    key = cli(db, "keys", "add", "crawler", "--scope", "ingest", "--scope", "read"
              ).stdout.strip().splitlines()[-1]
    with Receiver(fail=1) as receiver, serving(db, tmp_path, "--webhook", receiver.url) as port:
        client = Client(port, key)
        status, body = client.request("GET", "/v1/alerts")
        assert status == 200 and body == {"alerts": [], "next": 0}
        photo = (FIXTURES / "originals" / "astronaut.jpg").read_bytes()
        status, _ = client.post_form("/v1/images", {"platform": "citylist",
                                                    "url": "https://citylist.example/1.jpg"},
                                     {"image": ("a.jpg", photo)})
        assert status == 200
        status, body = client.request("GET", "/v1/alerts")
        (alert,) = body["alerts"]
        assert alert["sighting"]["platform"] == "citylist" and body["next"] == alert["id"]
        assert client.request("GET", f"/v1/alerts?after={body['next']}")[1]["alerts"] == []
        deadline = time.monotonic() + 30
        while receiver.taken != [alert["id"]] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert receiver.taken == [alert["id"]] and receiver.requests == 2
        assert Client(port).request("GET", "/v1/alerts")[0] == 401
