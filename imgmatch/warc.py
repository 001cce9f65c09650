"""WARC and ARC files (gzipped or not) as a stream of items, via warcio.

Every image response becomes a sighting with its target URI and WARC date
(platform: the one given, else the URI's host). A revisit record, which a
deduplicating crawler writes instead of repeating the bytes, becomes a
sighting of the image it revisits, found by its payload digest. Responses
that are not images are skipped and counted; a truncated image record (its
payload shorter than declared, or failing its digest) is recorded as failed;
a file that breaks off mid-record ends with one failure naming the offset.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from .catalog import SightingRow
from .errors import DecodeError, InputError, ManifestError
from .sources import Item, parse_when

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

        try:
            for record in iterator:
                item = _record_item(record, label, platform)
                if item is not None:
                    yield item
        except (ArchiveLoadFailed, EOFError, OSError, ValueError) as exc:
            label = f"{path}#{offset}"
            yield Item(label, SightingRow(source=label), error=DecodeError(
                f"the archive breaks off after offset {offset}: {exc}", source=label))


def _record_item(record, make_label, platform: str | None) -> Item | None:
    headers = record.rec_headers
    uri = headers.get_header("WARC-Target-URI")
    when = parse_when(headers.get_header("WARC-Date") or "")
    host = urlsplit(uri).hostname if uri else None

    def done(**kwargs) -> Item:
        label = make_label()
        sighting = SightingRow(platform=platform or host, url=uri, collected_at=when,
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
        payload = head + stream.read()
    except Exception as exc:  # zlib/chunking errors inside one record
        return done(error=DecodeError(f"unreadable record: {exc}"))
    truncated = (declared is not None and declared.isdigit() and len(payload) < int(declared)) \
        or getattr(record.digest_checker, "passed", None) is False
    if truncated:
        return done(error=InputError(
            f"truncated record: {len(payload)} bytes of payload"
            + (f", {declared} declared" if declared else ", failing its digest"),
            reason="truncated-record"))
    digest = headers.get_header("WARC-Payload-Digest") or sha1_digest(payload)
    return done(data=payload, payload_digest=digest)
