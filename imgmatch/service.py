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

import json
import threading
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from . import DEFAULT_SIGNALS, ROBUST_SIGNALS, Collection, Sighting, __version__, scopes_allow
from .errors import ImgmatchError, InputError, SignalError

#: Seconds between saves of changed indexes (they are caches: a crash only
#: means the next start appends what the catalog has beyond them).
SAVE_EVERY = 30.0

#: What the robust tier adds to the hashes: local features.
LOCAL_FEATURES = tuple(name for name in ROBUST_SIGNALS if name not in DEFAULT_SIGNALS)


class ServiceState:
    """The writer collection, its lock, and per-thread readers."""

    def __init__(self, db: Path, signals: tuple[str, ...]) -> None:
        self.db = Path(db)
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
        while not self._stop.wait(SAVE_EVERY):
            with self.lock:
                self.writer.save_indexes()

    def close(self) -> None:
        self._stop.set()
        with self.lock:
            self.writer.finish_run(self.run_id, "ok", {})
            self.writer.close()

    # ---------------------------------------------------------------- actions
    def add(self, data: bytes, sighting: Sighting, top_k: int) -> dict:
        added, matches = self.writer.add_and_match(
            data, sighting, signals=self.signals, top_k=top_k, run_id=self.run_id,
            lock=self.lock)
        return added.to_json() | {"matches": [m.to_json() for m in matches]}

    def query_image(self, data: bytes, top_k: int, min_score: float | None) -> list[dict]:
        matches = self.writer.query(data, top_k=top_k, lock=self.lock,
                                    **_given(min_score=min_score))
        return [m.to_json() for m in matches]

    def query_pdq(self, hex_value: str, top_k: int, min_score: float | None) -> list[dict]:
        with self.lock:
            matches = self.writer.query_hash(hex_value, top_k=top_k,
                                             **_given(min_score=min_score))
        return [m.to_json() for m in matches]

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
def create_app(db: str | Path, *, max_upload_mb: float = 20.0,
               signals: tuple[str, ...] = DEFAULT_SIGNALS) -> FastAPI:
    """The FastAPI application serving the collection at ``db``."""
    holder: dict[str, ServiceState] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        holder["state"] = ServiceState(Path(db), tuple(signals))
        try:
            yield
        finally:
            holder.pop("state").close()

    app = FastAPI(title="imgmatch", version=__version__, lifespan=lifespan,
                  description="Find where the same photos are reused across websites.")
    app.add_middleware(UploadLimit, max_bytes=int(max_upload_mb * 2**20))

    def state() -> ServiceState:
        return holder["state"]

    def require(scope: str):
        def check(authorization: str | None = Header(default=None)) -> None:
            if not authorization or not authorization.startswith("Bearer "):
                raise HTTPException(401, "send an API key: Authorization: Bearer KEY",
                                    headers={"WWW-Authenticate": "Bearer"})
            scopes = state().reader().key_scopes(authorization[7:].strip())
            if scopes is None:
                raise HTTPException(401, "unknown or revoked API key",
                                    headers={"WWW-Authenticate": "Bearer"})
            if not scopes_allow(scopes, scope):
                raise HTTPException(403, f"this key lacks the '{scope}' scope")
        return Depends(check)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError):
        return JSONResponse(status_code=400, content={
            "error": {"reason": exc.reason, "message": exc.detail}})

    @app.exception_handler(SignalError)
    async def signal_error(request: Request, exc: SignalError):
        return JSONResponse(status_code=400, content={
            "error": {"reason": "bad-hash", "message": str(exc)}})

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError):
        """A malformed parameter is the client's mistake: 400 naming it, in the
        service's error shape (not FastAPI's 422)."""
        return JSONResponse(status_code=400, content={
            "error": {"reason": "bad-request", "message": _validation_message(exc)}})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        reason = {400: "bad-request", 401: "unauthorized", 403: "forbidden",
                  404: "not-found"}.get(exc.status_code, "error")
        return JSONResponse(status_code=exc.status_code, headers=exc.headers,
                            content={"error": {"reason": reason, "message": exc.detail}})

    @app.get("/healthz")
    def healthz() -> dict:
        """Liveness: no key needed, no data shown."""
        return {"status": "ok", "version": __version__}

    @app.post("/v1/images", dependencies=[require("ingest")])
    async def post_image(request: Request, top_k: int = 10) -> dict:
        """Ingest one image (multipart field ``image``) with its sighting; returns its matches.

        Other form fields are the sighting's metadata, named as in manifests
        (platform, url, page_url, ad_id, posted_at, collected_at, source, and
        any others, which are kept as extra metadata).
        """
        form = await request.form()
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
        form = await request.form()
        upload, pdq = form.get("image"), form.get("pdq")
        if min_score is not None and not 0 <= min_score <= 1:
            raise HTTPException(400, "min_score is between 0 and 1")
        if upload is not None and not isinstance(upload, str):
            data = await upload.read()
            matches = await run_in_threadpool(state().query_image, data, _top_k(top_k),
                                              min_score)
            return {"query": upload.filename, "matches": matches,
                    **_lacking(await run_in_threadpool(state().lacking))}
        if isinstance(pdq, str):
            matches = await run_in_threadpool(state().query_pdq, pdq, _top_k(top_k), min_score)
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

    @app.get("/v1/clusters", dependencies=[require("read")])
    def get_clusters(
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
            return state().clusters(min_sightings=min_sightings, platforms=platform or (),
                                    cross_platform_only=cross_platform, since=since,
                                    until=until)
        except ImgmatchError as exc:  # a bound that is not a date
            raise HTTPException(400, str(exc)) from None

    return app


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


def serve(db: str | Path, host: str, port: int, max_upload_mb: float) -> None:
    """Run the service with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(db, max_upload_mb=max_upload_mb), host=host, port=port,
                log_level="info", access_log=False)
