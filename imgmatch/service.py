"""The HTTP service: the library over FastAPI, for crawlers that send images.

A shell over :class:`imgmatch.Collection`, as the CLI is: it parses requests,
calls the library (the public names of :mod:`imgmatch` alone) and turns its
values and errors into JSON and status codes, so both answer alike (the same
clusters for the same filters, the same matches for the same image).

One writer, parallel readers. Decoding and hashing run in the request's
worker thread, outside any lock; only writing a new image (with its links)
and searching the in-memory indexes hold the service's lock (the library
takes it for those steps alone: ``Collection.add_and_match(lock=...)``), so
many clients can send at once without a write lost or a "database is
locked". Reads of the catalog (images, sightings, clusters) use per-thread
read-only collections, which SQLite's WAL mode lets run beside the writer.

Every endpoint but ``/healthz`` needs ``Authorization: Bearer KEY`` (401
without a valid key, 403 without the scope). Uploads larger than the limit
are refused with 413 before their body is read when they declare their
length, and as soon as they pass it when they do not.
"""

from __future__ import annotations

import asyncio
import html
import json
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import (
    AlertDeliverer,
    DEFAULT_MAX_MEMORY,
    DEFAULT_SIGNALS,
    DEFAULT_TIMEOUT,
    HASH_SIGNALS,
    ROBUST_SIGNALS,
    Collection,
    DecodeSandbox,
    Explanation,
    HashValue,
    Sighting,
    WatchMatch,
    WebhookSink,
    __version__,
    catalog_address,
    date_bound,
    scopes_allow,
)
from .errors import AuditError, Busy, ImgmatchError, InputError, SignalError
from .service_hma import hma_router

#: Seconds between saves of changed indexes (they are caches: a crash only
#: means the next start appends what the catalog has beyond them).
SAVE_EVERY = 30.0

#: Seconds between looks at the catalog for what other processes wrote.
FOLLOW_EVERY = 1.0

#: What the robust tier adds to the hashes: local features.
LOCAL_FEATURES = tuple(name for name in ROBUST_SIGNALS if name not in HASH_SIGNALS)


class ServiceState:
    """The writer collection, its lock, and per-thread readers."""

    def __init__(self, db: str | Path, signals: tuple[str, ...],
                 decoding: DecodeLimits | None = None) -> None:
        self.db = catalog_address(db)
        decoding = decoding or DecodeLimits()
        # uploads are decoded in capped worker processes, never in this one
        self.sandbox = DecodeSandbox(decoding.workers, timeout=decoding.timeout,
                                     max_memory=decoding.max_memory, wait=decoding.wait)
        self.writer = Collection.open(self.db)
        if self.writer.robust:  # uploads get what ingest would add
            signals = tuple(dict.fromkeys((*signals, *LOCAL_FEATURES)))
        self.signals = signals
        self.lock = threading.Lock()
        self.run_id = self.writer.start_run("serve", {"signals": list(signals)})
        with self.lock:
            # the hash indexes now, not on the first request
            self.writer.load_indexes(local_features=False)
        self._local = threading.local()
        #: delivers watchlist alerts to a webhook, when the service has one
        self.deliverer: AlertDeliverer | None = None
        self._stop = threading.Event()
        self._saver = threading.Thread(target=self._save_loop, daemon=True)
        self._saver.start()

    def reader(self) -> Collection:
        """This thread's read-only collection (it never loads the indexes: only
        the writer keeps them, current, in memory)."""
        collection = getattr(self._local, "collection", None)
        if collection is None:
            collection = Collection.open(self.db, readonly=True)
            self._local.collection = collection
        return collection

    def _save_loop(self) -> None:
        """Follow the catalog every :data:`FOLLOW_EVERY` seconds (images another
        process added or erased), and save changed indexes now and then."""
        last_save = time.monotonic()
        while not self._stop.wait(FOLLOW_EVERY):
            with self.lock:
                self.writer.refresh()
                if time.monotonic() - last_save >= SAVE_EVERY:
                    self.writer.save_indexes()
                    last_save = time.monotonic()

    def current(self) -> Collection:
        """The writer, caught up with the catalog (call with the lock held):
        an erasure made elsewhere stops being found at the next request, not
        at the next follow."""
        self.writer.refresh()
        return self.writer

    def close(self) -> None:
        self._stop.set()
        with self.lock:
            self.writer.finish_run(self.run_id, "ok", {})
            self.writer.close()
        self.sandbox.close()

    def audit(self, action: str, actor: str, details: dict) -> None:
        """Append to the audit log through the writer (the readers are read-only)."""
        with self.lock:
            self.writer.audit(action, actor, details)

    # ---------------------------------------------------------------- actions
    def add(self, data: bytes, sighting: Sighting, top_k: int) -> dict:
        with self.lock:
            self.current()
        added, matches = self.writer.add_and_match(
            data, sighting, signals=self.signals, top_k=top_k, run_id=self.run_id,
            lock=self.lock, sandbox=self.sandbox)
        if self.deliverer is not None:  # an alert it raised goes out now
            self.deliverer.poke()
        return added.to_json() | {"matches": [m.to_json() for m in matches]}

    def query_image(self, data: bytes, top_k: int, min_score: float | None) -> list[dict]:
        with self.lock:
            self.current()
        matches = self.writer.query(data, top_k=top_k, lock=self.lock, sandbox=self.sandbox,
                                    **_given(min_score=min_score))
        return [m.to_json() for m in matches]

    def explain(self, a: str, b: str) -> Explanation:
        """``imgmatch explain`` of two catalogued images, A searched as this
        service's queries search (the writer's indexes, under the lock)."""
        with self.lock:
            self.current()
        return self.reader().explain(a, b, sandbox=self.sandbox, searcher=self.writer,
                                     lock=self.lock)

    def query_pdq(self, hex_value: str, top_k: int, min_score: float | None) -> list[dict]:
        with self.lock:
            matches = self.current().query_hash(hex_value, top_k=top_k,
                                                **_given(min_score=min_score))
        return [m.to_json() for m in matches]

    def erase(self, sha256: str) -> int:
        with self.lock:
            return self.current().erase([sha256])

    def watch_lookup(self, value: HashValue) -> list[WatchMatch]:
        """The watchlist entries within their list's threshold of a hash or of
        its rotations and mirrors, closest first: the writer holds the entries'
        index in memory (one copy, not one per reader thread)."""
        with self.lock:
            return self.writer.watch_lookup(value, dihedral=True)

    def watchlists(self) -> list[dict]:
        """Each watchlist with its signal, threshold, kind and entry counts."""
        return self.reader().watchlists()

    def clusters(self, **filters) -> dict:
        """The JSON report, built by this thread's reader; which images an ignored
        hash covers is the writer's to say (it holds the indexes)."""
        with self.lock:
            ignored = self.writer.ignored_image_ids()
        return self.reader().report_json(ignored=ignored, **filters)

    def lacking(self, signals: tuple[str, ...] | None = None) -> dict[str, int]:
        """Signals of a query that images of the collection lack (a query
        cannot find them through those): said beside the matches."""
        with self.lock:
            return self.writer.missing_signals(signals or tuple(self.writer.coverage()))


# ----------------------------------------------------------------- upload limit
class _TooLarge(Exception):
    pass


class UploadLimit:
    """ASGI middleware: 413 for bodies over ``max_bytes``, checked before reading."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                return await _reply(send, 400, "bad-request", "Content-Length is not a number")
            if too_big:
                return await _reply(send, 413, "too-large", self._message())
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _reply(send, 413, "too-large", self._message())

    def _message(self) -> str:
        return (f"the upload is larger than the service's limit of "
                f"{self.max_bytes / 2**20:g} MB (imgmatch serve --max-upload-mb)")


async def _reply(send, status: int, reason: str, message: str) -> None:
    body = json.dumps({"error": {"reason": reason, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------- the app
@dataclass(frozen=True)
class DecodeLimits:
    """How uploads are decoded: in ``workers`` processes (so at most that many
    at once), each capped at ``max_memory`` bytes beyond its size at start and
    ``timeout`` seconds per image; a request waits ``wait`` seconds at most
    for a free worker, then gets 503."""

    workers: int = 2
    timeout: float = DEFAULT_TIMEOUT
    max_memory: int | None = DEFAULT_MAX_MEMORY
    wait: float = 30.0


def create_app(db: str | Path, *, max_upload_mb: float = 20.0,
               signals: tuple[str, ...] = DEFAULT_SIGNALS,
               decoding: DecodeLimits | None = None,
               webhook: WebhookSink | None = None) -> FastAPI:
    """The FastAPI application serving the collection at ``db``; with
    ``webhook``, every watchlist alert is POSTed there as it is raised."""
    holder: dict[str, ServiceState] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        holder["state"] = ServiceState(db, tuple(signals), decoding)
        deliverer = AlertDeliverer(db, webhook).start() if webhook is not None else None
        holder["state"].deliverer = deliverer
        try:
            yield
        finally:
            if deliverer is not None:
                deliverer.close(drain=5.0)
            holder.pop("state").close()

    app = FastAPI(title="imgmatch", version=__version__, lifespan=lifespan,
                  description="Find where the same photos are reused across websites.",
                  docs_url=None, redoc_url=None)  # Swagger UI loads from a CDN: /docs is ours
    app.add_middleware(UploadLimit, max_bytes=int(max_upload_mb * 2**20))

    def state() -> ServiceState:
        return holder["state"]

    def require(scope: str):
        def check(request: Request, authorization: str | None = Header(default=None)) -> None:
            scheme, _, key = (authorization or "").strip().partition(" ")
            if scheme.lower() != "bearer" or not key.strip():  # schemes ignore case
                raise HTTPException(401, "send an API key: Authorization: Bearer KEY",
                                    headers={"WWW-Authenticate": "Bearer"})
            scopes = state().reader().key_scopes(key.strip())
            if scopes is None:
                raise HTTPException(401, "unknown or revoked API key",
                                    headers={"WWW-Authenticate": "Bearer"})
            allowed = scopes_allow(scopes, scope)
            # every use of a known key is recorded, allowed or not: its name and the
            # route (never the path itself, which may hold a SHA-256)
            request.state.actor = f"key:{state().reader().key_name(key.strip())}"
            route = getattr(request.scope.get("route"), "path", "unknown")
            state().audit("key-use", request.state.actor, {
                "method": request.method, "endpoint": route, "scope": scope,
                "allowed": allowed})
            if not allowed:
                raise HTTPException(403, f"this key lacks the '{scope}' scope")
        return Depends(check)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError):
        return JSONResponse(status_code=400, content={
            "error": {"reason": exc.reason, "message": exc.detail}})

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy):
        return JSONResponse(status_code=503, headers={"Retry-After": "5"}, content={
            "error": {"reason": "busy", "message": str(exc)}})

    @app.exception_handler(SignalError)
    async def signal_error(request: Request, exc: SignalError):
        return JSONResponse(status_code=400, content={
            "error": {"reason": "bad-hash", "message": str(exc)}})

    @app.exception_handler(AuditError)
    async def audit_refused(request: Request, exc: AuditError):
        """A request whose record the audit log refuses (a filter shaped like a
        SHA-256 or a URL) is not answered."""
        return JSONResponse(status_code=400, content={
            "error": {"reason": "audit-refused", "message": str(exc)}})

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError):
        """A malformed parameter is the client's mistake: 400 naming it, in the
        service's error shape (not FastAPI's 422)."""
        return JSONResponse(status_code=400, content={
            "error": {"reason": "bad-request", "message": _validation_message(exc)}})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        """Every HTTP error in the one documented shape, the framework's own
        included (unknown routes, wrong methods, malformed forms)."""
        reason = {400: "bad-request", 401: "unauthorized", 403: "forbidden",
                  404: "not-found", 405: "method-not-allowed", 413: "too-large",
                  503: "busy"}.get(exc.status_code, "error")
        return JSONResponse(status_code=exc.status_code, headers=exc.headers,
                            content={"error": {"reason": reason, "message": exc.detail}})

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """The API as a plain page made here from the OpenAPI document: it loads
        nothing from anywhere (the service must work offline)."""
        return HTMLResponse(docs_page(app.openapi()), headers={
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})

    @app.get("/healthz")
    async def healthz() -> dict:
        """Liveness: no key needed, no data shown. Answered on the event loop,
        not by a worker thread: it answers while every thread waits on a decode."""
        return {"status": "ok", "version": __version__}

    @app.post("/v1/images", dependencies=[require("ingest")])
    async def post_image(request: Request, top_k: int = 10) -> dict:
        """Ingest one image (multipart field ``image``) with its sighting; returns its matches.

        Other form fields are the sighting's metadata, named as in manifests
        (platform, url, page_url, ad_id, posted_at, collected_at, source, and
        any others, which are kept as extra metadata).
        """
        form = await _form(request)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise HTTPException(400, "send the image in the multipart field 'image'")
        data = await upload.read()
        fields = {k: v for k, v in form.multi_items() if k != "image" and isinstance(v, str)}
        sighting = Sighting.from_fields(fields)
        if not sighting.source:
            sighting = replace(sighting, source=f"upload:{upload.filename or 'image'}")
        return await run_in_threadpool(state().add, data, sighting, _top_k(top_k))

    @app.post("/v1/query", dependencies=[require("read")])
    async def post_query(
        request: Request, top_k: int = 10,
        min_score: Annotated[float | None, Query(description=(
            "Lowest score reported, 0 to 1 (default: the library's, as for "
            "imgmatch query)."))] = None,
    ) -> dict:
        """Matches for an image (multipart field ``image``) or a PDQ hash (field ``pdq``).

        Stores nothing.
        """
        form = await _form(request)
        upload, pdq = form.get("image"), form.get("pdq")
        if min_score is not None and not 0 <= min_score <= 1:
            raise HTTPException(400, "min_score is between 0 and 1")
        if upload is not None and not isinstance(upload, str):
            data = await upload.read()
            matches = await run_in_threadpool(state().query_image, data, _top_k(top_k),
                                              min_score)
            await run_in_threadpool(state().audit, "query", request.state.actor, {
                "images": 1, "matches": len(matches), "top_k": top_k, "min_score": min_score})
            return {"query": upload.filename, "matches": matches,
                    **_lacking(await run_in_threadpool(state().lacking))}
        if isinstance(pdq, str):
            matches = await run_in_threadpool(state().query_pdq, pdq, _top_k(top_k), min_score)
            await run_in_threadpool(state().audit, "query", request.state.actor, {
                "hashes": 1, "matches": len(matches), "top_k": top_k, "min_score": min_score})
            return {"query": pdq, "matches": matches,
                    **_lacking(await run_in_threadpool(state().lacking, ("pdq",)))}
        raise HTTPException(400, "send an image in the field 'image' or a hash in 'pdq'")

    @app.get("/v1/images/{sha256}", dependencies=[require("read")])
    def get_image(sha256: str) -> dict:
        """One image: its signals, sightings, and links to near-duplicates."""
        try:
            return state().reader().image(sha256.lower()).to_json()
        except ImgmatchError:
            raise HTTPException(404, f"no image with sha256 {sha256}") from None

    @app.delete("/v1/images/{sha256}", dependencies=[require("admin")])
    def delete_image(request: Request, sha256: str) -> dict:
        """Erase one image for good, as ``imgmatch erase`` does: its rows, its
        index entries, and its names in run records; it is not found again."""
        sha256 = sha256.lower()
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise HTTPException(400, "give the image's whole SHA-256 (64 hex digits)")
        try:
            erased = state().erase(sha256)
        except ImgmatchError:
            raise HTTPException(404, f"no image with sha256 {sha256}") from None
        state().audit("erase", request.state.actor, {"images": erased})  # never which
        return {"erased": erased}

    @app.get("/v1/explain", dependencies=[require("read")])
    def get_explain(
        request: Request,
        a: Annotated[str, Query(description=(
            "An image's SHA-256, or a unique prefix of 8+ hex digits: the query side."))],
        b: Annotated[str, Query(description=(
            "The other image's SHA-256, or a unique prefix of 8+ hex digits."))],
    ) -> dict:
        """Why two catalogued images match or not: the JSON of ``imgmatch explain
        --json`` (each signal's distance, threshold and verdict, the verification,
        the score and the precision measured at it)."""
        for name, value in (("a", a), ("b", b)):
            if not 8 <= len(value) <= 64 or any(c not in "0123456789abcdefABCDEF"
                                                for c in value):
                raise HTTPException(400, f"{name}: give a SHA-256 or a prefix of 8 to 64 "
                                         "hex digits")
        try:
            # the picture, read again, is decoded in the sandbox as uploads are
            explanation = state().explain(a, b)
        except Busy:
            raise
        except ImgmatchError as exc:  # no such image, an ambiguous prefix, nothing to compare
            raise HTTPException(404, str(exc)) from None
        state().audit("explain", request.state.actor, {
            "verdict": explanation.verdict, "score": round(explanation.score, 4),
            "linked": explanation.link is not None})
        return explanation.to_json()

    @app.get("/v1/alerts", dependencies=[require("read")])
    def get_alerts(
        request: Request,
        after: Annotated[int, Query(ge=0, description=(
            "Only alerts numbered above this: the 'next' of the previous page."))] = 0,
        limit: Annotated[int, Query(ge=1, le=1000, description="At most this many.")] = 100,
    ) -> dict:
        """Watchlist alerts, oldest first, from a cursor: each one an image, the
        sighting that raised it, the watchlist entry with its provenance, the
        evidence and the score (or a ``quarantine`` notice of an entry that
        flooded). Poll with ``after`` set to the last ``next``."""
        rows = state().reader().alerts(after=after, limit=limit)
        state().audit("alerts", request.state.actor, {"after": after, "alerts": len(rows)})
        return {"alerts": rows, "next": rows[-1]["id"] if rows else after}

    @app.get("/v1/clusters", dependencies=[require("read")])
    def get_clusters(
        request: Request,
        min_sightings: Annotated[int, Query(ge=1, description=(
            "Only pictures seen at least this many times."))] = 2,
        platform: Annotated[list[str] | None, Query(description=(
            "Only clusters seen on this platform. Repeatable."))] = None,
        cross_platform: Annotated[bool, Query(description=(
            "Only clusters seen on 2+ platforms."))] = False,
        since: Annotated[str | None, Query(description=(
            "Only clusters seen on or after this date (YYYY-MM-DD) or ISO 8601 time."))] = None,
        until: Annotated[str | None, Query(description=(
            "Only clusters seen on or before this date (YYYY-MM-DD) or ISO 8601 time."))] = None,
    ) -> dict:
        """Clusters of reused pictures, cross-platform first: the JSON report, with
        the filters of ``imgmatch report`` (the same clusters for the same filters)."""
        try:
            report = state().clusters(min_sightings=min_sightings, platforms=platform or (),
                                      cross_platform_only=cross_platform, since=since,
                                      until=until)
        except ImgmatchError as exc:  # a bound that is not a date
            raise HTTPException(400, str(exc)) from None
        state().audit("report", request.state.actor, {
            "format": "json", "clusters": report.get("n_clusters"),
            "min_sightings": min_sightings, "platforms": platform or [],
            "cross_platform": cross_platform, "since": date_bound(since) if since else None,
            "until": date_bound(until) if until else None, "thumbnails": 0})
        return report

    # the lookups of Meta's HMA, answered from the watchlists (see service_hma)
    app.include_router(hma_router(state, require, _form))
    return app


async def _form(request: Request):
    """The request's multipart form; malformed headers the form parser does not
    expect (a NUL in a charset raises ValueError) are the client's 400, not a 500."""
    try:
        return await request.form()
    except (ValueError, LookupError) as exc:
        raise HTTPException(400, f"the form cannot be read: {exc}") from None


def docs_page(spec: dict) -> str:
    """Each endpoint of the OpenAPI document: method, path, summary, what it
    does, and its parameters; every string escaped."""
    esc = html.escape
    parts = [f"<!doctype html><meta charset=utf-8><title>{esc(spec['info']['title'])} API"
             "</title><style>body{font:15px/1.45 system-ui,sans-serif;max-width:60em;"
             "margin:2em auto;padding:0 1em}code{background:#f3f3f3;padding:0 .2em}"
             "td,th{text-align:left;padding:.1em .6em .1em 0;vertical-align:top}</style>",
             f"<h1>{esc(spec['info']['title'])} {esc(str(spec['info'].get('version', '')))}"
             f"</h1><p>{esc(spec['info'].get('description', ''))} Every endpoint but "
             "<code>/healthz</code> needs <code>Authorization: Bearer KEY</code>. The "
             "machine-readable document is <a href=\"/openapi.json\">/openapi.json</a>.</p>"]
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            parts.append(f"<h2><code>{esc(method.upper())} {esc(path)}</code></h2>"
                         f"<p><b>{esc(op.get('summary', ''))}</b></p>")
            parts.append("".join(f"<p>{esc(para)}</p>" for para in
                                 op.get("description", "").split("\n\n") if para.strip()))
            params = op.get("parameters", [])
            if params:
                parts.append("<table><tr><th>parameter</th><th>in</th><th>meaning</th></tr>")
                parts.extend(f"<tr><td><code>{esc(q['name'])}</code></td><td>{esc(q['in'])}"
                             f"</td><td>{esc(q.get('description', ''))}</td></tr>"
                             for q in params)
                parts.append("</table>")
    return "\n".join(parts)


def _validation_message(exc: RequestValidationError) -> str:
    """'min_sightings: Input should be ... (got '0')': each bad parameter named."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())[1:]) or "request"
        got = f" (got {error['input']!r})" if isinstance(error.get("input"), str) else ""
        parts.append(f"{where}: {error.get('msg', 'not valid')}{got}")
    return "; ".join(parts)


def _given(**options) -> dict:
    """The options a request gave; the library's defaults stand for the others."""
    return {name: value for name, value in options.items() if value is not None}


def _lacking(lacking: dict[str, int]) -> dict:
    """The ``lacking`` member of a query's reply, when some images lack a signal."""
    return {"lacking": lacking, "hint": "imgmatch upgrade adds the signals images lack"} \
        if lacking else {}


def _top_k(value: int) -> int:
    if not 1 <= value <= 1000:
        raise HTTPException(400, "top_k is between 1 and 1000")
    return value


#: Seconds a client has to send a request's head (its line and headers) once
#: it connects or its previous request is answered; then it is disconnected.
HEADER_TIMEOUT = 10.0
#: Open connections at most; more are closed as soon as they are accepted.
MAX_CONNECTIONS = 1000


def guarded_protocol(header_timeout: float, max_connections: int) -> type:
    """uvicorn's HTTP/1.1 protocol with what it lacks against slow clients: a
    time limit on each request's head, and a cap on open connections, where a
    new one displaces the one that has waited longest for its head (20,000
    clients sending headers a byte at a time otherwise hold a socket each until
    the process runs out of file handles, and ``/healthz`` with it)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _waiting_since = float("inf")

        def connection_made(self, transport) -> None:
            if len(self.connections) >= max_connections and not self._evict():
                transport.abort()  # every connection is busy with a request
                return
            super().connection_made(transport)
            self._await_head()

        def _evict(self) -> bool:
            """Make room by cutting the connection that has waited longest for
            its request's head: slow clients cannot lock others (and
            ``/healthz``) out, they only shorten each other's time."""
            idle = [c for c in self.connections if isinstance(c, GuardedH11)
                    and c._head_timer is not None]
            if not idle:
                return False
            oldest = min(idle, key=lambda c: c._waiting_since)
            oldest._stop_waiting()
            oldest.transport.abort()
            self.connections.discard(oldest)
            return True

        def _await_head(self) -> None:
            self._stop_waiting()
            self._waiting_since = time.monotonic()
            self._head_timer = self.loop.call_later(header_timeout, self._too_slow)

        def _stop_waiting(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _too_slow(self) -> None:
            if self.cycle is None or self.cycle.response_complete:  # no request under way
                self.transport.abort()

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a whole head arrived: the request runs
                self._stop_waiting()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            if self in self.connections or self.cycle is not None:
                super().connection_lost(exc)

    return GuardedH11


def _raise_file_limit() -> int:
    """Let this process open as many files as its hard limit allows; the soft limit."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            soft = 1 << 16 if hard == resource.RLIM_INFINITY else hard
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        return soft
    except (ImportError, OSError, ValueError):
        return 1024


def serve(db: str | Path, host: str, port: int, max_upload_mb: float, *,
          header_timeout: float = HEADER_TIMEOUT,
          max_connections: int = MAX_CONNECTIONS,
          decoding: DecodeLimits | None = None, webhook: WebhookSink | None = None,
          signals: tuple[str, ...] = DEFAULT_SIGNALS) -> None:
    """Run the service with uvicorn until interrupted; uploads get ``signals``."""
    import uvicorn

    files = _raise_file_limit()
    # room beside the sockets for the catalog, the indexes and the workers' pipes
    max_connections = max(1, min(max_connections, files - 64))
    uvicorn.run(create_app(db, max_upload_mb=max_upload_mb, decoding=decoding,
                           webhook=webhook, signals=signals),
                host=host, port=port,
                log_level="info", access_log=False,
                http=guarded_protocol(header_timeout, max_connections),
                timeout_keep_alive=5)
