"""Every kind of input an ingest takes, as one stream of items.

The CLI names files, folders, manifests, web archives, a Scrapy feed and a
JSON lines stream; a Scrapy pipeline hands over one item at a time. Both get
their items here, so a program that drives the library ingests exactly what
``imgmatch ingest`` would from the same inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from .errors import ImgmatchError
from .sources import Item, iter_jsonl_stream, iter_manifest, iter_paths, iter_scrapy, \
    scrapy_item_files
from .text import utcnow
from .warc import iter_warc

#: Paths read as web archives (WARC or ARC, gzipped or not), not as images.
ARCHIVE_SUFFIXES = (".warc", ".warc.gz", ".arc", ".arc.gz")


def sources_for(paths: Iterable[str | Path] = (), *, manifests: Iterable[str | Path] = (),
                jsonl: TextIO | None = None, scrapy_items: str | Path | None = None,
                scrapy_store: str | Path | None = None, platform: str | None = None,
                file_times: bool = False) -> Iterator[Item]:
    """The items of every input, in this order: image files and folders
    (recursive) among ``paths``, ``manifests`` (CSV or JSONL), the web archives
    among ``paths`` (names ending .warc, .warc.gz, .arc or .arc.gz), a Scrapy
    items feed with its store folder, then JSON lines (``jsonl``, a pipeline's
    standard input).

    ``platform`` stands for sightings that name none; ``file_times`` takes each
    image file's modification time (of ``paths``) as its ``collected_at``.
    Nothing is read until the items are asked for, so a stream without
    ``jsonl`` can be made twice: once to count it, once to ingest it.
    """
    if (scrapy_items is None) != (scrapy_store is None):
        raise ImgmatchError("a Scrapy items feed and its store folder go together")
    given = [Path(p) for p in paths]
    archives = [p for p in given if str(p).lower().endswith(ARCHIVE_SUFFIXES)]
    plain = [p for p in given if p not in archives]
    return _chain(plain, list(manifests), archives, jsonl, scrapy_items, scrapy_store,
                  platform, file_times)


def _chain(plain: list[Path], manifests: list[str | Path], archives: list[Path],
           jsonl: TextIO | None, scrapy_items: str | Path | None,
           scrapy_store: str | Path | None, platform: str | None,
           file_times: bool) -> Iterator[Item]:
    yield from iter_paths(plain, platform=platform, file_times=file_times)
    for manifest in manifests:
        yield from iter_manifest(manifest, platform=platform)
    for archive in archives:
        yield from iter_warc(archive, platform=platform)
    if scrapy_items is not None and scrapy_store is not None:
        yield from iter_scrapy(scrapy_items, scrapy_store, platform=platform)
    if jsonl is not None:
        yield from iter_jsonl_stream(jsonl, label=jsonl.name, platform=platform)


def scrapy_item_sources(item: Mapping[str, Any], store: str | Path, *,
                        platform: str | None = None) -> list[Item]:
    """The files Scrapy's FilesPipeline stored for one item (paths relative to
    ``store``), each an item to ingest with the ad's metadata: the item's
    ``url`` becomes the page URL, and ``collected_at``, when the item has none,
    is now (it was scraped just now, and a timeline needs a date)."""
    row = dict(item)
    if row.get("collected_at") in (None, ""):
        row["collected_at"] = utcnow()
    label = f"scrapy:{row.get('url') or 'item'}"
    folder = Path(store)
    return list(scrapy_item_files(row, folder.resolve(), folder, label, platform))
