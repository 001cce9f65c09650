"""Where images come from: file trees and CSV/JSONL manifests, as a stream of items.

Everything a crawl supplies is hostile. A manifest row's path is resolved
inside the manifest's folder and refused if it escapes it (``../``, absolute
paths, symlinks pointing out) or does not exist; such a row becomes an
:class:`Item` carrying its error, so the ingest records it and moves on.
Metadata strings are kept as given (reports escape them), but bounded in
length, and dates are normalised to ISO 8601 UTC when they parse.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import ImageTooLarge, InputError, ManifestError, MissingFile, UnsafePath
from .records import PATH_KEYS, Sighting

#: Files a directory walk picks up (by extension); manifests name files explicitly.
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".bmp", ".dib",
    ".tif", ".tiff", ".heic", ".heif", ".avif", ".mpo"})


@dataclass(frozen=True)
class Item:
    """One input to ingest: a file (or bytes) and the sighting it belongs to."""

    source: str
    sighting: Sighting
    path: Path | None = None
    data: bytes | None = None
    error: InputError | None = None
    #: a record that is not an image (counted, not a failure), and why
    skipped: str | None = None
    #: a WARC revisit: the payload digest of the image it sees again
    revisit_of: str | None = None
    #: the crawler's digest of these bytes (WARC-Payload-Digest), remembered
    #: so later revisits can find the image
    payload_digest: str | None = None
    #: already analysed by the caller (the HTTP service does it outside its
    #: write lock); ingest then uses it as the worker's result
    analysis: Any = None
    #: the grey pixels the caller decoded, should the linker search the
    #: image's tiles (:func:`imgmatch.analysis.tiling_grey`); the HTTP
    #: service decodes uploads in its sandbox only, so ingest must not
    #: decode them again. None: ingest decodes the bytes again if need be
    pixels: Callable[[], Any] | None = None
    #: the input line it came from (JSON lines), for a pipeline to match its
    #: output lines to its input
    line: int | None = None


def iter_paths(paths: Iterable[str | Path], *, platform: str | None = None,
               file_times: bool = False) -> Iterator[Item]:
    """Files given directly, and image files found recursively in directories.

    With ``file_times``, each file's modification time is its ``collected_at``.
    Never by default: a copied or unpacked file's mtime says when it was
    copied, not when the picture was seen; ask only for files kept as the
    crawler saved them.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    child = Path(root, name)
                    if child.suffix.lower() in IMAGE_EXTENSIONS and not child.is_symlink():
                        yield _file_item(child, platform, file_times)
        else:
            yield _file_item(path, platform, file_times)


def _file_item(path: Path, platform: str | None, file_times: bool = False) -> Item:
    source = str(path)
    collected_at = modified_at(path) if file_times else None
    return Item(source=source, path=path,
                sighting=Sighting(platform=platform, source=source,
                                     collected_at=collected_at))


def modified_at(path: Path) -> str | None:
    """A file's modification time as ISO 8601 UTC, to the second; None when it
    cannot be read (the ingest then reports the file itself)."""
    try:
        when = datetime.fromtimestamp(path.stat().st_mtime_ns // 10**9, timezone.utc)
    except (OSError, OverflowError, ValueError):
        return None
    return (f"{when.year:04d}-{when.month:02d}-{when.day:02d}T"
            f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}Z")


def iter_manifest(manifest: str | Path, *, platform: str | None = None) -> Iterator[Item]:
    """Items from a CSV (with a header) or JSONL manifest; paths relative to its folder."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ManifestError(f"manifest {manifest} does not exist or is not a file")
    base = manifest.parent.resolve()
    is_jsonl = manifest.suffix.lower() in (".jsonl", ".ndjson", ".json")
    rows = _jsonl_rows(manifest) if is_jsonl else _csv_rows(manifest)
    for line_no, row, error in rows:
        label = f"{manifest}:{line_no}"
        if error is not None:
            yield Item(source=label, sighting=Sighting(source=label),
                       error=InputError(error, source=label))
            continue
        yield _manifest_item(row, base, manifest.parent, label, platform)


def _manifest_item(row: dict, base: Path, shown_base: Path, label: str,
                   platform: str | None) -> Item:
    """An item for a row naming a file that must lie inside ``base``."""
    raw_path = next((row[k] for k in PATH_KEYS if row.get(k)), None)
    sighting = Sighting.from_fields(row, default_platform=platform)
    if not raw_path or not isinstance(raw_path, str):
        return Item(label, replace(sighting, source=label),
                    error=InputError("the row names no file (a 'path' column)", source=label))
    if "\x00" in raw_path:  # no file system takes it: refuse the row, not the manifest
        return Item(label, replace(sighting, source=label), error=UnsafePath(
            f"path {raw_path!r} contains a NUL byte; refused", source=label))
    candidate = Path(raw_path)
    try:
        resolved = (base / candidate).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        return Item(label, replace(sighting, source=label), error=UnsafePath(
            f"path {raw_path!r} cannot be resolved ({exc}); refused", source=label))
    try:
        rel = resolved.relative_to(base)
    except ValueError:
        return Item(label, replace(sighting, source=label), error=UnsafePath(
            f"path {raw_path!r} points outside the folder {shown_base}; refused",
            source=label))
    source = str(shown_base / rel)
    sighting = replace(sighting, source=sighting.source or source)
    try:
        is_file = resolved.is_file()
    except OSError as exc:  # a name too long for the file system
        return Item(source, sighting, error=MissingFile(
            f"file {raw_path!r} named in {label} cannot be read ({exc.strerror or exc})",
            source=source))
    if not is_file:
        return Item(source, sighting, error=MissingFile(
            f"file {raw_path!r} named in {label} does not exist", source=source))
    return Item(source, sighting, path=resolved)


def _csv_rows(manifest: Path) -> Iterator[tuple[int, dict, str | None]]:
    try:
        fh = manifest.open(newline="", encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {manifest}: {exc}") from None
    with fh:
        reader = csv.DictReader(fh)
        try:
            fieldnames = reader.fieldnames
        except csv.Error as exc:
            raise ManifestError(f"manifest {manifest} has an unreadable header: {exc}") from None
        if not fieldnames or not any(k in fieldnames for k in PATH_KEYS):
            raise ManifestError(
                f"manifest {manifest} needs a header row with a 'path' column "
                f"(found: {', '.join(fieldnames or []) or 'nothing'})")
        while True:
            line_no = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # one bad row (say, an endless cell) costs that row
                yield line_no, {}, f"unreadable CSV row: {exc}"
                continue
            row.pop(None, None)  # cells beyond the header
            yield line_no, {k: v for k, v in row.items() if k}, None


def _jsonl_rows(manifest: Path) -> Iterator[tuple[int, dict, str | None]]:
    try:
        fh = manifest.open(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {manifest}: {exc}") from None
    with fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as exc:  # nested too deep: RecursionError
                yield line_no, {}, f"not valid JSON: {exc}"
                continue
            if not isinstance(row, dict):
                yield line_no, {}, "a JSONL row must be an object"
                continue
            yield line_no, row, None


#: Longest JSON line read (a base64 image of about 64 MB and its metadata): a
#: longer one is skipped in pieces, never held, so a stream cannot exhaust
#: the ingest parent's memory with one endless line.
MAX_LINE_CHARS = 96 << 20


def bounded_lines(stream: Iterable[str], limit: int = MAX_LINE_CHARS) -> Iterator[str | None]:
    """The stream's lines, None for each longer than ``limit`` characters (read
    past in pieces). A stream without ``readline`` is taken line by line."""
    readline = getattr(stream, "readline", None)
    if readline is None:
        for line in stream:
            yield line if len(line) <= limit else None
        return
    while True:
        line = readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith("\n"):
            yield line
            continue
        while line and not line.endswith("\n"):  # the rest of the long line
            line = readline(1 << 20)
        yield None


def iter_jsonl_stream(stream: Iterable[str], *, label: str = "<stdin>",
                      platform: str | None = None) -> Iterator[Item]:
    """Items from JSON lines (a pipeline's stdin): a 'path' or base64 'data' each.

    A path here is the pipeline's own, like a command-line argument, so it is
    taken relative to the working directory, not confined to a folder.
    """
    for line_no, line in enumerate(bounded_lines(stream, MAX_LINE_CHARS), start=1):
        where = f"{label}:{line_no}"
        if line is None:
            yield Item(where, Sighting(source=where), line=line_no, error=ImageTooLarge(
                f"the line is longer than {MAX_LINE_CHARS >> 20} M characters; skipped "
                "unread", source=where))
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:
            yield Item(where, Sighting(source=where), line=line_no,
                       error=InputError(f"not valid JSON: {exc}", source=where))
            continue
        if not isinstance(row, dict):
            yield Item(where, Sighting(source=where), line=line_no,
                       error=InputError("a JSON line must be an object", source=where))
            continue
        sighting = Sighting.from_fields(
            {k: v for k, v in row.items() if k not in ("data", "data_b64")},
            default_platform=platform)
        encoded = row.get("data_b64", row.get("data"))
        if encoded is not None:
            try:
                data = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) \
                    else None
            except (ValueError, binascii.Error):
                data = None
            if not data:
                yield Item(where, replace(sighting, source=sighting.source or where),
                           line=line_no,
                           error=InputError("'data' is not valid base64", source=where))
                continue
            yield Item(sighting.source or where, replace(sighting, source=sighting.source or where),
                       data=data, line=line_no)
            continue
        raw_path = next((row[k] for k in PATH_KEYS if isinstance(row.get(k), str)), None)
        if not raw_path:
            yield Item(where, replace(sighting, source=where), line=line_no, error=InputError(
                "the line gives neither 'path' nor base64 'data'", source=where))
            continue
        if "\x00" in raw_path:
            yield Item(where, replace(sighting, source=where), line=line_no, error=UnsafePath(
                f"path {raw_path!r} contains a NUL byte; refused", source=where))
            continue
        yield Item(raw_path, replace(sighting, source=sighting.source or raw_path),
                   path=Path(raw_path), line=line_no)


#: Item fields of Scrapy's media pipelines that describe files, not the ad.
_SCRAPY_MEDIA_KEYS = ("files", "images", "file_urls", "image_urls")


def iter_scrapy(items_jsonl: str | Path, store: str | Path, *,
                platform: str | None = None) -> Iterator[Item]:
    """Items from Scrapy's FilesPipeline/ImagesPipeline output.

    ``items_jsonl`` is the feed export (one item per line) whose ``files`` or
    ``images`` lists give ``url`` and ``path`` (relative to ``store``, the
    FILES_STORE / IMAGES_STORE folder). The item's own fields describe the ad:
    ``url`` becomes the page URL, and the rest the sighting's metadata.
    """
    items_jsonl = Path(items_jsonl)
    base = Path(store).resolve()
    if not base.is_dir():
        raise ManifestError(f"Scrapy store folder {store} does not exist")
    for line_no, row, error in _jsonl_rows(items_jsonl):
        label = f"{items_jsonl}:{line_no}"
        if error is not None:
            yield Item(label, Sighting(source=label), error=InputError(error, source=label))
            continue
        yield from scrapy_item_files(row, base, Path(store), label, platform)


def scrapy_item_files(row: dict, base: Path, shown_base: Path, label: str,
                      platform: str | None) -> Iterator[Item]:
    """The stored files of one Scrapy item, each an item with the ad's metadata."""
    ad = {k: v for k, v in row.items() if k not in _SCRAPY_MEDIA_KEYS}
    if "url" in ad:
        ad.setdefault("page_url", ad.pop("url"))
    for key in ("files", "images"):
        for entry in row.get(key) or ():
            if not isinstance(entry, dict):
                continue
            fields = dict(ad)
            fields["path"] = entry.get("path")
            if entry.get("url"):
                fields["url"] = entry["url"]
            yield _manifest_item(fields, base, shown_base, label, platform)
