"""Delivering alerts: to a file of JSON lines, standard output, or a webhook.

Alerts are rows of the catalog, committed with the images that raised them
(:mod:`imgmatch.watchlists`). Delivery reads them in order from the cursor
its target last reached and moves the cursor only after the target took
them: a file once the lines are flushed to disk, a webhook once it answered
2xx. A kill between the two sends an alert again on the next run, never
drops it: delivery is at least once, and every alert carries its ``id`` so
a receiver can drop repeats.

A webhook that fails is retried with exponential backoff (``backoff``,
doubling, at most :data:`MAX_BACKOFF` apart); the alerts wait in the
catalog meanwhile, however long it is down.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from .catalog import Catalog, catalog_address
from .errors import DeliveryError
from .watch_store import WatchStore

#: Alerts read from the catalog at a time.
BATCH = 100
#: The longest wait between two attempts to reach a webhook.
MAX_BACKOFF = 60.0
#: Seconds a webhook has to answer one alert.
WEBHOOK_TIMEOUT = 10.0


class AlertSink(Protocol):
    """Where alerts go; ``target`` names it in the catalog's cursors."""

    target: str

    def send(self, alerts: Sequence[dict[str, Any]]) -> None:
        """Take these alerts or raise (then none of them counts as delivered)."""


class FileSink:
    """JSON lines appended to a file (or standard output, ``-``), flushed to
    disk before they count as delivered."""

    def __init__(self, path: str | Path) -> None:
        self.stdout = str(path) == "-"
        self.path = None if self.stdout else Path(path).resolve()
        self.target = "stdout" if self.stdout else f"file:{self.path}"

    def send(self, alerts: Sequence[dict[str, Any]]) -> None:
        text = "".join(json.dumps(a, ensure_ascii=False, sort_keys=True) + "\n" for a in alerts)
        if self.stdout:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        assert self.path is not None
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise DeliveryError(f"cannot append alerts to {self.path}: "
                                f"{exc.strerror or exc}") from None


class WebhookSink:
    """Each alert POSTed as one JSON object; any 2xx answer takes it."""

    def __init__(self, url: str, *, token: str | None = None,
                 timeout: float = WEBHOOK_TIMEOUT) -> None:
        if not url.startswith(("http://", "https://")):
            raise DeliveryError(f"webhook {url[:80]!r}: give an http:// or https:// address")
        self.url = url
        self.token = token
        self.timeout = timeout
        self.target = f"webhook:{url}"

    def send(self, alerts: Sequence[dict[str, Any]]) -> None:
        for alert in alerts:
            self._post(alert)

    def _post(self, alert: dict[str, Any]) -> None:
        body = json.dumps(alert, ensure_ascii=False, sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "imgmatch-alerts",
                   "X-Imgmatch-Alert": str(alert.get("id", ""))}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            raise DeliveryError(f"webhook answered {exc.code} to alert {alert.get('id')}") \
                from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DeliveryError(f"webhook unreachable for alert {alert.get('id')}: {reason}") \
                from None
        if not 200 <= status < 300:
            raise DeliveryError(f"webhook answered {status} to alert {alert.get('id')}")


def deliver(store: WatchStore, sink: AlertSink, *, limit: int | None = None,
            batch: int = BATCH) -> int:
    """Send what ``sink`` has not taken yet, in order, moving its cursor as
    it goes; the alerts delivered. A failure records its error, keeps the
    cursor where the sink stopped, and raises DeliveryError."""
    delivered = 0
    while limit is None or delivered < limit:
        cursor = store.delivered_to(sink.target)
        alerts = store.alerts_after(cursor, batch if limit is None
                                    else min(batch, limit - delivered))
        if not alerts:
            break
        for alert in alerts:  # one at a time: a webhook may take some before failing
            try:
                sink.send([alert])
            except DeliveryError as exc:
                store.mark_delivered(sink.target, cursor, str(exc))
                raise
            cursor = int(alert["id"])
            store.mark_delivered(sink.target, cursor)
            delivered += 1
    return delivered


class AlertDeliverer:
    """Delivers a collection's alerts in the background, as they are raised.

    It reads the catalog through a connection of its own, wakes when poked
    (after each written batch) or every ``interval`` seconds, and retries a
    failing sink with backoff. :meth:`close` delivers what is left, waiting
    at most ``drain`` seconds; what is still undelivered then stays in the
    catalog for the next run.
    """

    def __init__(self, db: str | Path, sink: AlertSink, *, interval: float = 1.0,
                 backoff: float = 0.5, on_error: Callable[[str], None] | None = None) -> None:
        self.db = catalog_address(db)
        self.sink = sink
        self.interval = interval
        self.backoff = backoff
        self.on_error = on_error
        self.delivered = 0
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-delivery", daemon=True)

    def start(self) -> AlertDeliverer:
        self._thread.start()
        return self

    def poke(self) -> None:
        """New alerts may be waiting: deliver them now."""
        self._idle.clear()
        self._wake.set()

    def _run(self) -> None:
        catalog = Catalog.open(self.db)
        wait = self.interval
        try:
            while True:
                try:
                    self.delivered += deliver(catalog.watch, self.sink)
                    self.last_error = None
                    wait = self.interval
                    self._idle.set()
                except DeliveryError as exc:
                    self.last_error = str(exc)
                    if self.on_error is not None:
                        self.on_error(str(exc))
                    wait = min(MAX_BACKOFF, self.backoff if wait == self.interval else wait * 2)
                if self._stop.is_set() and (self._idle.is_set() or self.last_error):
                    return
                self._wake.wait(wait)
                self._wake.clear()
        finally:
            catalog.close()

    def close(self, drain: float = 30.0) -> int:
        """Deliver what is waiting (at most ``drain`` seconds), then stop;
        the alerts still undelivered (they go with the next delivery)."""
        deadline = time.monotonic() + drain
        self._idle.clear()
        self._wake.set()
        while time.monotonic() < deadline and self._thread.is_alive():
            if self._idle.wait(0.05) and self.last_error is None:
                break
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
        return self.pending()

    def pending(self) -> int:
        """Alerts raised but not yet delivered to this sink."""
        with Catalog.open(self.db, readonly=True) as catalog:
            store = catalog.watch
            cursor = store.delivered_to(self.sink.target)
            return int(catalog.conn.execute(
                "SELECT count(*) FROM alerts WHERE id > ?", (cursor,)).fetchone()[0])
