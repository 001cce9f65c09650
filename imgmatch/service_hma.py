"""HMA-compatible lookup: the matching and hashing routes of Meta's
Hasher-Matcher-Actioner (HMA, "OpenMediaMatch"), answered from imgmatch's
watchlists, so that a platform already wired to HMA can point at imgmatch.

HMA's words map onto imgmatch's: a *bank* is a watchlist, a *bank content
id* is a watchlist entry's id, a *signal type* is a hash signal, named as
python-threatexchange names it (``pdq``). Paths, parameters and shapes are
HMA's (its ``blueprints/matching.py``, ``blueprints/hashing.py`` and
``schemas/matching.py``); distances are strings, as HMA's index gives them:

    GET  /m/raw_lookup?signal_type=pdq&signal=HEX[&include_distance=true][&banks=A,B]
         {"matches": [12, 40]}, or {"matches": [{"bank_content_id": 12, "distance": "3"}]}
    GET  /m/lookup?signal_type=pdq&signal=HEX[&banks=A,B]
         {"PARTNER_A": [{"bank_content_id": 12, "distance": "3"}]}
    POST /m/lookup               multipart, the picture in the field "photo"
         {"pdq": {"PARTNER_A": [{"bank_content_id": 12, "distance": "3"}]}}
    GET  /m/index/status[?signal_type=pdq]
         {"pdq": {"present": true, "built_to": 1718000000, "size": 120}, ...}
    POST /m/compare              {"pdq": [HEX1, HEX2]}
         {"pdq": [true, {"distance": 9}]}
    POST /h/hash                 multipart, the picture in the field "photo"
         {"pdq": HEX}

Where imgmatch answers differently, on purpose:

- It fetches no URL. ``GET /h/hash?url=`` and ``GET /m/lookup?url=`` get 400
  saying to POST the picture: what is crawled is hostile, and a service that
  fetches what a client names can be aimed at the network behind it (SSRF).
- Only matches a client may act on are reported. A *negative* list (known
  benign pictures: stock photos, logos; HMA has no such thing) is never a
  bank match, and a hash that one of them matches gets no matches at all,
  as the picture raises no alert in imgmatch; a *quarantined* entry (one
  that hit too many different pictures, held for review) is left out. Both
  lookups apply this, ``raw_lookup`` too: HMA's raw lookup skips its
  enabled checks because a client can check them afterwards, which
  imgmatch, without HMA's curation API, gives no way to do.
- A hash is looked up with its rotations and mirrors, as imgmatch's own
  queries are, so a mirrored repost is found; the distance is the closest.
- Every list is always enabled (no ``matching_enabled_ratio``):
  ``bypass_coinflip`` and ``seed`` are accepted and change nothing.
- Errors have imgmatch's shape, ``{"error": {"reason", "message"}}``, with
  HMA's status codes; a malformed parameter is 400 (HMA's validation: 422).

Every route needs an API key with the ``read`` scope, hashing included: it
stores nothing, and its upload is decoded in the service's capped worker
processes like a query's. HMA has no authentication of its own; deployments
that add it check ``Authorization: Bearer KEY``, which is imgmatch's header.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from . import DecodeSandbox, HashValue, WatchMatch, hash_signals, parse_hash

#: HMA's content type for pictures: the multipart field an upload comes in.
PHOTO = "photo"
#: What ``/h/hash`` gives unless ``types`` asks for more: the one signal
#: python-threatexchange (and so every HMA client) knows by imgmatch's name.
HMA_SIGNALS: tuple[str, ...] = ("pdq",)
NO_FETCH = ("imgmatch fetches no URL (what is crawled is hostile, and a service that "
            "fetches what it is told can be aimed at its own network): POST the picture "
            f"as the multipart field '{PHOTO}' instead")


class HmaState(Protocol):
    """What the routes need of the service (``imgmatch.service.ServiceState``)."""

    sandbox: DecodeSandbox

    def watch_lookup(self, value: HashValue) -> Sequence[WatchMatch]: ...

    def watchlists(self) -> list[dict[str, Any]]: ...

    def audit(self, action: str, actor: str, details: dict) -> None: ...


def hma_router(state: Callable[[], HmaState], require: Callable[[str], Any],
               form: Callable[[Request], Awaitable[FormData]]) -> APIRouter:
    """The HMA-compatible routes over the service's ``state``; ``require(scope)``
    is its key check, ``form`` its reader of multipart bodies."""
    router = APIRouter(tags=["HMA-compatible"])
    read = [require("read")]

    def audited(request: Request, found: dict[str, list[WatchMatch]], banks: set[str] | None,
                **counts: int) -> None:
        """A lookup in the audit log: counts and signal names, never a hash or a
        bank's name (a name may look like a hash, which the log refuses)."""
        state().audit("hma-lookup", request.state.actor, {
            **counts, "signals": sorted(found),
            "matches": sum(len(hits) for hits in found.values()),
            "banks": None if banks is None else len(banks)})

    @router.get("/m/raw_lookup", dependencies=read)
    def raw_lookup(
        request: Request,
        signal_type: Annotated[str, Query(description="The hash's signal: pdq.")],
        signal: Annotated[str, Query(description="The hash, in hex.")],
        include_distance: Annotated[bool, Query(description=(
            "Give each match as {bank_content_id, distance}, not a bare id."))] = False,
        banks: Annotated[str | None, Query(description=(
            "Only these watchlists, comma-separated."))] = None,
    ) -> dict[str, Any]:
        """HMA's raw lookup: the watchlist entries (bank content ids) a hash matches,
        closest first; no negative list's, no quarantined entry's."""
        wanted = _banks(banks)
        hits = actionable(state().watch_lookup(_hash(signal_type, signal)), wanted)
        audited(request, {signal_type: hits}, wanted, hashes=1)
        if include_distance:
            return {"matches": [_match(h) for h in hits]}
        return {"matches": [h.entry_id for h in hits]}

    @router.get("/m/lookup", dependencies=read)
    def lookup_get(
        request: Request,
        signal_type: Annotated[str | None, Query(description="The hash's signal: pdq.")] = None,
        signal: Annotated[str | None, Query(description="The hash, in hex.")] = None,
        banks: Annotated[str | None, Query(description=(
            "Only these watchlists, comma-separated."))] = None,
        url: Annotated[str | None, Query(description=(
            "Refused: imgmatch fetches no URL; POST the picture instead."))] = None,
        seed: Annotated[str | None, Query(description=(
            "Accepted for HMA's clients; no effect (every list is enabled)."))] = None,
        bypass_coinflip: Annotated[bool, Query(description=(
            "Accepted for HMA's clients; no effect (every list is enabled)."))] = False,
    ) -> dict[str, Any]:
        """HMA's lookup of a hash: its matches by watchlist (bank),
        ``{"BANK": [{"bank_content_id": 12, "distance": "3"}]}``; ``{}`` for none."""
        if url is not None:
            raise HTTPException(400, NO_FETCH)
        if not signal or not signal_type:
            raise HTTPException(400, "give both signal_type and signal (imgmatch takes no "
                                     "url: POST the picture to /m/lookup instead)")
        wanted = _banks(banks)
        hits = actionable(state().watch_lookup(_hash(signal_type, signal)), wanted)
        audited(request, {signal_type: hits}, wanted, hashes=1)
        return by_bank(hits)

    @router.post("/m/lookup", dependencies=read)
    async def lookup_post(
        request: Request,
        banks: Annotated[str | None, Query(description=(
            "Only these watchlists, comma-separated."))] = None,
        types: Annotated[str | None, Query(description=(
            "The signals to hash it with, comma-separated (default: those of the "
            "watchlists, pdq at least)."))] = None,
        seed: Annotated[str | None, Query(description=(
            "Accepted for HMA's clients; no effect (every list is enabled)."))] = None,
        bypass_coinflip: Annotated[bool, Query(description=(
            "Accepted for HMA's clients; no effect (every list is enabled)."))] = False,
    ) -> dict[str, Any]:
        """HMA's lookup of a picture (multipart field ``photo``): hashed in the
        service's sandbox, stored nowhere; its matches by signal, then by
        watchlist (bank): ``{"pdq": {"BANK": [{"bank_content_id": 12, "distance": "3"}]}}``."""
        data = await _photo(request, form)
        wanted = _banks(banks)
        names = _types(types)
        if names is None:
            names = await run_in_threadpool(_watched_signals, state())
        values = await run_in_threadpool(_hashed, state(), data, names)
        found = {name: actionable(await run_in_threadpool(state().watch_lookup, value), wanted)
                 for name, value in values.items()}
        await run_in_threadpool(audited, request, found, wanted, images=1)
        return {name: by_bank(hits) for name, hits in found.items()}

    @router.get("/m/index/status", dependencies=read)
    def index_status(
        signal_type: Annotated[str | None, Query(description=(
            "Only this signal's index."))] = None,
    ) -> dict[str, Any]:
        """HMA's index status: per signal, whether any watchlist entry of it is
        indexed (``present``), how many (``size``), and when the newest of its
        lists was made, in Unix seconds (``built_to``; -1 without one)."""
        known = hash_signals()
        if signal_type is not None and signal_type not in known:
            raise HTTPException(400, _unknown(signal_type, known))
        lists = state().watchlists()
        out: dict[str, Any] = {}
        for name in [signal_type] if signal_type is not None else sorted(known):
            mine = [w for w in lists if w.get("signal") == name]
            size = sum(int(w.get("entries") or 0) for w in mine)
            out[name] = {"present": size > 0, "size": size, "built_to": max(
                (_unix(w.get("created_at")) for w in mine if w.get("entries")), default=-1)}
        return out

    @router.post("/m/compare", dependencies=read)
    async def compare(request: Request) -> dict[str, Any]:
        """HMA's comparison of hash pairs, ``{"pdq": [HEX1, HEX2]}``: per signal,
        ``[within the signal's threshold, {"distance": bits that differ}]``."""
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested to no end
            raise HTTPException(400, "send a JSON object: {\"pdq\": [HEX1, HEX2]}") from None
        if not isinstance(body, dict):
            raise HTTPException(400, "Request input was not a dict: send {\"pdq\": [HEX1, HEX2]}")
        known = hash_signals()
        out: dict[str, Any] = {}
        for name, pair in body.items():
            if not isinstance(pair, list) or len(pair) != 2 \
                    or not all(isinstance(h, str) for h in pair):
                raise HTTPException(400, f"give {_named(name)} a list of exactly 2 hashes "
                                         "(hex strings)")
            if name not in known:
                raise HTTPException(400, _unknown(name, known))
            distance = parse_hash(pair[0], name) - parse_hash(pair[1], name)
            out[name] = [distance <= known[name]["threshold"], {"distance": distance}]
        return out

    @router.get("/h/hash", dependencies=read)
    def hash_url(
        url: Annotated[str | None, Query(description=(
            "Refused: imgmatch fetches no URL; POST the picture instead."))] = None,
    ) -> dict[str, Any]:
        """HMA's hashing of a URL: refused, 400, always (imgmatch fetches no URL)."""
        raise HTTPException(400, NO_FETCH)

    @router.post("/h/hash", dependencies=read)
    async def hash_upload(
        request: Request,
        types: Annotated[str | None, Query(description=(
            "The signals to give, comma-separated (default: pdq)."))] = None,
    ) -> dict[str, Any]:
        """HMA's hashing of a picture (multipart field ``photo``): ``{"pdq": HEX}``,
        hashed in the service's sandbox, stored nowhere."""
        data = await _photo(request, form)
        names = _types(types) or HMA_SIGNALS
        values = await run_in_threadpool(_hashed, state(), data, names)
        return {name: value.hex for name, value in values.items()}

    return router


def actionable(hits: Sequence[WatchMatch], banks: set[str] | None) -> list[WatchMatch]:
    """The matches an HMA client may act on: none when a negative list matches
    (a known benign picture raises no alert), else each non-quarantined entry
    of the lists asked for, once, closest first."""
    if any(h.negative for h in hits):
        return []
    seen: set[int] = set()
    out = []
    for h in sorted(hits, key=lambda h: (h.distance, h.watchlist, h.entry_id)):
        if h.quarantined or h.entry_id in seen or (banks is not None and h.watchlist not in banks):
            continue
        seen.add(h.entry_id)
        out.append(h)
    return out


def by_bank(hits: Sequence[WatchMatch]) -> dict[str, list[dict[str, Any]]]:
    """HMA's matches by bank: ``{"BANK": [{"bank_content_id", "distance"}]}``."""
    out: dict[str, list[dict[str, Any]]] = {}
    for h in hits:
        out.setdefault(h.watchlist, []).append(_match(h))
    return out


def _match(hit: WatchMatch) -> dict[str, Any]:
    # a string, as HMA's index gives it (SignalSimilarityInfo.pretty_str)
    return {"bank_content_id": hit.entry_id, "distance": str(hit.distance)}


def _hash(signal_type: str, text: str) -> HashValue:
    """A hash of a known signal; 400 naming the signals for an unknown one
    (a malformed hash raises SignalError: 400 ``bad-hash``)."""
    known = hash_signals()
    if signal_type not in known:
        raise HTTPException(400, _unknown(signal_type, known))
    return parse_hash(text, signal_type)


def _unknown(name: object, known: dict[str, Any]) -> str:
    return f"no such signal type {_named(name)}; imgmatch's hash signals: {', '.join(known)}"


def _named(text: object) -> str:
    """Client text quoted in a message, and cut short."""
    return repr(str(text)[:40])


def _banks(text: str | None) -> set[str] | None:
    """HMA's ``banks``: watchlist names, comma-separated; None (all) when empty."""
    names = {name.strip() for name in (text or "").split(",") if name.strip()}
    return names or None


def _types(text: str | None) -> tuple[str, ...] | None:
    """HMA's ``types``: signal names, comma-separated, each a hash signal."""
    if text is None:
        return None
    known = hash_signals()
    chosen = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not chosen:
        raise HTTPException(400, "empty signal type selection")
    for name in chosen:
        if name not in known:
            raise HTTPException(400, _unknown(name, known))
    return chosen


def _watched_signals(state: HmaState) -> tuple[str, ...]:
    """What an uploaded picture is hashed with: PDQ, and the signal of every
    watchlist (HMA hashes with every signal it has an index of)."""
    known = hash_signals()
    return tuple(sorted({*HMA_SIGNALS, *(w["signal"] for w in state.watchlists()
                                           if w.get("signal") in known)}))


def _hashed(state: HmaState, data: bytes, names: Sequence[str]) -> dict[str, HashValue]:
    """The upload's values, made in the service's sandbox (never in its process)."""
    values = state.sandbox.hash_values(data, source="upload", signals=names)
    return {name: values[name] for name in names}


async def _photo(request: Request, form: Callable[[Request], Awaitable[FormData]]) -> bytes:
    """The one file of an HMA upload, sent in the field named for its content
    type: ``photo`` (HMA also takes ``video``, which imgmatch does not hash)."""
    files = [(name, value) for name, value in (await form(request)).multi_items()
             if not isinstance(value, str)]
    if not files:
        raise HTTPException(400, f"Missing multipart/form-data file upload: send the picture "
                                 f"as the field '{PHOTO}'")
    if len(files) > 1:
        raise HTTPException(400, "Only one file allowed per request")
    name, upload = files[0]
    if name != PHOTO:
        raise HTTPException(400, f"no such content_type: {_named(name)}; imgmatch hashes "
                                 f"pictures, sent as the field '{PHOTO}'")
    return await upload.read()


def _unix(when: object) -> int:
    """A catalog time ('2024-06-10T08:00:00Z') in Unix seconds; -1 if unreadable."""
    try:
        moment = datetime.fromisoformat(str(when).replace("Z", "+00:00"))
    except ValueError:
        return -1
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())
