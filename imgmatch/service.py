"""The HTTP service: the library over FastAPI, for crawlers that send images.

One writer, parallel readers. Decoding and hashing run in the request's
worker thread, outside any lock; only writing a new image (with its links)
and searching the in-memory indexes hold the service's lock, so many clients
can send at once without a write lost or a "database is locked". Reads of
the catalog (images, sightings, clusters) use per-thread read-only
connections, which SQLite's WAL mode lets run beside the writer.

Every endpoint but ``/healthz`` needs ``Authorization: Bearer KEY`` (401
without a valid key, 403 without the scope). Uploads larger than the limit
are refused with 413 before their body is read when they declare their
length, and as soon as they pass it when they do not.
"""

from __future__ import annotations

import functools
import json
import threading
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from . import __version__
from . import signals as registry
from .analysis import analyse_source
from .catalog import Catalog, SightingRow
from .cluster import build_clusters
from .collection import Collection
from .decode import decode
from .errors import ImgmatchError, InputError, SignalError, error_for
from .keys import allows, key_hash
from .match import MATCH_SCORE
from .report.jsonfmt import report_dict
from .sources import Item, sighting_from_mapping

#: Seconds between saves of changed indexes (they are caches: a crash only
#: means the next start appends what the catalog has beyond them).
SAVE_EVERY = 30.0


class ServiceState:
    """The writer collection, its lock, and per-thread readers."""

    def __init__(self, db: Path, signals: tuple[str, ...]) -> None:
        self.db = Path(db)
        self.writer = Collection.open(self.db)
        if self.writer.robust and registry.FEATURES not in signals:
            signals = (*signals, registry.FEATURES)  # uploads get what ingest would add
        self.signals = signals
        self.lock = threading.Lock()
        self.run_id = self.writer.catalog.start_run("serve", {"signals": list(signals)})
        with self.lock:
            self.writer.indexes  # load or build now, not on the first request
        self._local = threading.local()
        self._stop = threading.Event()
        self._saver = threading.Thread(target=self._save_loop, daemon=True)
        self._saver.start()

    def reader(self) -> Catalog:
        catalog = getattr(self._local, "catalog", None)
        if catalog is None:
            catalog = Catalog.open(self.db, readonly=True)
            self._local.catalog = catalog
        return catalog

    def _save_loop(self) -> None:
        while not self._stop.wait(SAVE_EVERY):
            with self.lock:
                self.writer.save_indexes()

    def close(self) -> None:
        self._stop.set()
        with self.lock:
            self.writer.catalog.finish_run(self.run_id, "ok", {})
            self.writer.close()

    # ---------------------------------------------------------------- actions
    def add(self, data: bytes, sighting: SightingRow, top_k: int) -> dict:
        source = sighting.source or "<upload>"
        analysis = analyse_source(None, data, self.signals, source, self.reader().has_image)
        if analysis.image is None and not analysis.known:
            raise error_for(analysis.reason, analysis.detail, source)
        with self.lock:
            summary = self.writer.ingest(
                [Item(source, sighting, data=data, analysis=analysis)],
                signals=self.signals, run_id=self.run_id)
            decoded = functools.cache(lambda: decode(data, source=source))
            matches = self.writer.query_decoded(
                decoded, top_k=top_k + 1, min_score=MATCH_SCORE,
                variants=analysis.variants, local=analysis.features)
        return {"sha256": analysis.sha256, "new_image": summary.images_added == 1,
                "new_sighting": summary.sightings_added == 1,
                "matches": [m.to_json() for m in matches if m.sha256 != analysis.sha256][:top_k]}

    def query_image(self, data: bytes, top_k: int, min_score: float) -> list[dict]:
        decoded = decode(data, source="<upload>")
        with self.lock:
            matches = self.writer.query_decoded(decoded, top_k=top_k, min_score=min_score)
        return [m.to_json() for m in matches]

    def query_pdq(self, hex_value: str, top_k: int, min_score: float) -> list[dict]:
        value = registry.get("pdq").from_hex(hex_value)
        with self.lock:
            matches = self.writer.query_hash(value, top_k=top_k, min_score=min_score)
        return [m.to_json() for m in matches]

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
               signals: tuple[str, ...] = registry.DEFAULT_SIGNALS) -> FastAPI:
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
            scopes = state().reader().api_key_scopes(key_hash(authorization[7:].strip()))
            if scopes is None:
                raise HTTPException(401, "unknown or revoked API key",
                                    headers={"WWW-Authenticate": "Bearer"})
            if not allows(scopes, scope):
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

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        reason = {401: "unauthorized", 403: "forbidden", 404: "not-found"}.get(
            exc.status_code, "error")
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
        sighting = sighting_from_mapping(fields)
        if not sighting.source:
            sighting = replace(sighting, source=f"upload:{upload.filename or 'image'}")
        return await run_in_threadpool(state().add, data, sighting, _top_k(top_k))

    @app.post("/v1/query", dependencies=[require("read")])
    async def post_query(request: Request, top_k: int = 10,
                         min_score: float = MATCH_SCORE) -> dict:
        """Matches for an image (multipart field ``image``) or a PDQ hash (field ``pdq``).

        Stores nothing.
        """
        form = await request.form()
        upload, pdq = form.get("image"), form.get("pdq")
        if not 0 <= min_score <= 1:
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
            return Collection(state().reader()).image(sha256.lower()).to_json()
        except ImgmatchError:
            raise HTTPException(404, f"no image with sha256 {sha256}") from None

    @app.get("/v1/clusters", dependencies=[require("read")])
    def get_clusters(min_sightings: int = 2, platform: list[str] | None = None,
                     cross_platform: bool = False) -> dict:
        """Clusters of reused pictures, cross-platform first (the JSON report)."""
        clusters = build_clusters(state().reader(), min_sightings=max(1, min_sightings),
                                  platforms=platform, cross_platform_only=cross_platform)
        return report_dict(clusters)

    return app


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
