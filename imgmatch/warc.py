"""WARC and ARC files (gzipped or not) as a stream of items, via warcio.

Every image response becomes a sighting with its target URI and WARC date
(platform: the one given, else the URI's host). A revisit record, which a
deduplicating crawler writes instead of repeating the bytes, becomes a
sighting of the image it revisits, found by its payload digest. Responses
that are not images are skipped and counted; a truncated image record (its
payload shorter than declared, or failing its digest) is recorded as failed;
a file that breaks off mid-record ends with one failure naming the offset.

The page an image was seen on (``page_url``) comes from the records around
its response: the Referer of its request record (linked by
WARC-Concurrent-To, or else the request for the same URI), or the page
record its WARC-Concurrent-To names. Crawlers write these within a record
or two of each other, before (wget) or after (Heritrix, warcprox, pywb) the
response, so only :data:`LINK_WINDOW` records are remembered either way.
"""

from __future__ import annotations

import base64
import hashlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from .errors import DecodeError, ImageTooLarge, InputError, ManifestError
from .records import Sighting
from .sources import Item
from .text import clean_field, parse_when

#: How many records apart an image response and the record naming its page
#: may be. Crawlers write a request next to its response; remembering no more
#: bounds memory (a few headers behind, at most this many items held back
#: waiting for a request written after its response).
LINK_WINDOW = 8
#: Largest payload read from one record, after its transfer and content
#: encodings (gzip, deflate, brotli, chunked) are undone. A record that
#: inflates to gigabytes is cut off here, in bounded memory, and recorded as
#: too large: the parent reads archives, outside the workers' memory cap.
MAX_PAYLOAD_BYTES = 64 << 20
#: Content types of a page record, which an image's WARC-Concurrent-To may name.
_PAGE_TYPES = ("text/html", "application/xhtml+xml")

#: Leading bytes of the image formats imgmatch decodes, for records with no
#: or a wrong Content-Type.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00",
          b"MM\x00*")


def looks_like_image(content_type: str | None, payload: bytes) -> bool:
    if content_type and content_type.split(";")[0].strip().lower().startswith("image/"):
        return True
    if payload.startswith(_MAGIC):
        return True
    return (payload[:4] == b"RIFF" and payload[8:12] == b"WEBP") or payload[4:8] == b"ftyp"


def sha1_digest(payload: bytes) -> str:
    """A payload digest in the WARC convention: 'sha1:' + base32."""
    return "sha1:" + base64.b32encode(hashlib.sha1(payload).digest()).decode("ascii")


def iter_warc(path: str | Path, *, platform: str | None = None) -> Iterator[Item]:
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    path = Path(path)
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise ManifestError(f"cannot read WARC file {path}: {exc.strerror or exc}") from None
    with fh:
        iterator = ArchiveIterator(fh, arc2warc=True, check_digests=True)
        offset = 0

        def label() -> str:
            # warcio finishes reading a record to know its offset: call this last
            nonlocal offset
            offset = iterator.get_record_offset()
            return f"{path}#{offset}"

        links = _PageLinks()
        broken: Exception | None = None
        try:
            for record in iterator:
                try:
                    about = _links_of(record)
                    item = _record_item(record, label, platform)
                except Exception as exc:  # one hostile record: warcio raises any type
                    about, item = _Links(0, None, None, frozenset()), _bad_record(path, exc)
                yield from links.add(about, item)
        except (ArchiveLoadFailed, EOFError, OSError, ValueError) as exc:
            broken = exc
        except Exception as exc:  # the same, between records: the archive ends there
            broken = exc
        yield from links.flush()
        if broken is not None:
            where = f"{path}#{offset}"
            yield Item(where, Sighting(source=where), error=DecodeError(
                f"the archive breaks off after offset {offset}: {broken}", source=where))


def _bad_record(path: Path, exc: Exception) -> Item:
    """The failure of one record whose headers or payload could not be read."""
    where = f"{path}#record"
    return Item(where, Sighting(source=where), error=DecodeError(
        f"unreadable record ({type(exc).__name__}: {exc})", source=where))


@dataclass
class _Links:
    """What one record tells the records near it about pages."""

    index: int
    record_id: str | None
    uri: str | None
    #: the WARC-Record-IDs it names in WARC-Concurrent-To
    concurrent: frozenset[str]
    #: the page it names: a request's Referer, or a page record's own URI
    page: str | None = None
    is_request: bool = False
    #: a request already given to a response (one request, one response)
    used: bool = False

    def links_to(self, other: _Links) -> bool:
        """Linked by WARC-Concurrent-To, in either direction."""
        return (self.record_id is not None and self.record_id in other.concurrent) or \
            (other.record_id is not None and other.record_id in self.concurrent)

    def same_fetch(self, request: _Links) -> bool:
        """The request for this URI, when no record id says otherwise."""
        return (request.is_request and not request.used and not request.concurrent
                and self.uri is not None and request.uri == self.uri)


@dataclass
class _Waiting:
    """An item on its way out, perhaps waiting for a request written after it."""

    item: Item
    about: _Links
    wants_page: bool
    page: str | None = None


class _PageLinks:
    """Gives image items the page their request or page record names, in
    archive order, remembering only the last LINK_WINDOW records."""

    def __init__(self, window: int = LINK_WINDOW) -> None:
        self.window = window
        self.count = 0
        self.behind: deque[_Links] = deque(maxlen=window)  # records naming a page
        self.waiting: deque[_Waiting] = deque()

    def add(self, about: _Links, item: Item | None) -> Iterator[Item]:
        about.index = self.count
        self.count += 1
        if about.page is not None:
            self._give(about)
        if item is not None:
            wants = (item.error is None and item.skipped is None
                     and bool(item.sighting.url) and not item.sighting.page_url)
            waiting = _Waiting(item, about, wants)
            if wants:
                waiting.page = self._look_back(about)
            self.waiting.append(waiting)
        if about.page is not None and not about.used:
            self.behind.append(about)
        while self.waiting and (self.waiting[0].page is not None
                                or not self.waiting[0].wants_page
                                or self.count - 1 - self.waiting[0].about.index >= self.window):
            yield self._release(self.waiting.popleft())

    def flush(self) -> Iterator[Item]:
        while self.waiting:
            yield self._release(self.waiting.popleft())

    def _give(self, giver: _Links) -> None:
        """A page-naming record after an image: the first image it belongs to takes it."""
        open_ = [w for w in self.waiting if w.wants_page and w.page is None]
        chosen = next((w for w in open_ if w.about.links_to(giver)), None) \
            or next((w for w in open_ if w.about.same_fetch(giver)), None)
        if chosen is not None:
            chosen.page = giver.page
            giver.used = giver.is_request

    def _look_back(self, about: _Links) -> str | None:
        while self.behind and about.index - self.behind[0].index > self.window:
            self.behind.popleft()
        recent = list(reversed(self.behind))
        giver = next((g for g in recent if about.links_to(g)), None) \
            or next((g for g in recent if about.same_fetch(g)), None)
        if giver is None:
            return None
        giver.used = giver.is_request
        return giver.page

    @staticmethod
    def _release(waiting: _Waiting) -> Item:
        if waiting.page is None:
            return waiting.item
        return replace(waiting.item, sighting=replace(waiting.item.sighting,
                                                      page_url=waiting.page))


def _links_of(record) -> _Links:
    """The ids, URI and page (Referer, or its own URI for a page) of a record."""
    headers = record.rec_headers
    uri = headers.get_header("WARC-Target-URI")
    concurrent = frozenset(value.strip() for name, value in headers.headers
                           if name.lower() == "warc-concurrent-to" and value.strip())
    about = _Links(0, (headers.get_header("WARC-Record-ID") or "").strip() or None, uri,
                   concurrent, is_request=record.rec_type == "request")
    http = record.http_headers
    if about.is_request:
        referer = (http.get_header("Referer") or "").strip() if http is not None else ""
        about.page = clean_field(referer) if referer else None
    elif record.rec_type in ("response", "resource") and uri:
        content_type = (http.get_header("Content-Type") if http is not None
                        and record.rec_type == "response"
                        else headers.get_header("Content-Type")) or ""
        if content_type.split(";")[0].strip().lower() in _PAGE_TYPES:
            about.page = clean_field(uri.strip())
    return about


def _record_item(record, make_label, platform: str | None) -> Item | None:
    headers = record.rec_headers
    uri = headers.get_header("WARC-Target-URI")
    when = parse_when(headers.get_header("WARC-Date") or "")
    host = urlsplit(uri).hostname if uri else None

    def done(**kwargs) -> Item:
        label = make_label()
        sighting = Sighting(platform=platform or host, url=uri, collected_at=when,
                            source=label)
        error = kwargs.pop("error", None)
        if error is not None:
            error = type(error)(error.detail, source=label, reason=error.reason)
        return Item(label, sighting, error=error, **kwargs)

    if record.rec_type == "revisit":
        digest = headers.get_header("WARC-Payload-Digest")
        if not digest:
            return done(skipped="revisit-without-digest")
        return done(revisit_of=digest)
    if record.rec_type not in ("response", "resource"):
        return None
    http = record.http_headers
    if http is not None and record.rec_type == "response":
        status = http.get_statuscode()
        if status != "200":
            return done(skipped=f"http-{status}")
        content_type = http.get_header("Content-Type")
        declared = http.get_header("Content-Length")
    else:
        content_type = headers.get_header("Content-Type")
        declared = None
    stream = record.content_stream()
    head = stream.read(16)
    if not looks_like_image(content_type, head):
        return done(skipped="not-an-image")
    try:
        payload = head + stream.read(MAX_PAYLOAD_BYTES + 1 - len(head))
    except Exception as exc:  # zlib/chunking errors inside one record
        return done(error=DecodeError(f"unreadable record: {exc}"))
    if len(payload) > MAX_PAYLOAD_BYTES:  # the rest is skipped unread (never held)
        return done(error=ImageTooLarge(
            f"the record's payload is larger than {MAX_PAYLOAD_BYTES >> 20} MB once "
            "decoded (a compression bomb, or not an ad's image); not read further"))
    truncated = (declared is not None and declared.isdigit() and len(payload) < int(declared)) \
        or getattr(record.digest_checker, "passed", None) is False
    if truncated:
        return done(error=InputError(
            f"truncated record: {len(payload)} bytes of payload"
            + (f", {declared} declared" if declared else ", failing its digest"),
            reason="truncated-record"))
    digest = headers.get_header("WARC-Payload-Digest") or sha1_digest(payload)
    return done(data=payload, payload_digest=digest)
