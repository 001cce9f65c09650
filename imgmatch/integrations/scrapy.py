"""A Scrapy item pipeline that catalogues the files a FilesPipeline stored.

Add it after Scrapy's own media pipeline, so the item already carries the
stored paths::

    ITEM_PIPELINES = {
        "scrapy.pipelines.files.FilesPipeline": 1,
        "imgmatch.integrations.scrapy.ImgmatchPipeline": 300,
    }
    FILES_STORE = "/data/crawl/files"
    IMGMATCH_DB = "/data/case.db"           # the collection (required)
    IMGMATCH_PLATFORM = "citylist"          # sightings' platform (default: the spider's name)
    IMGMATCH_BATCH = 64                     # files per catalog transaction
    IMGMATCH_FAST = False                   # True: the hash tier only (ingest --fast)

The item's own fields describe the ad: its ``url`` becomes each sighting's
page URL, ``ad_id``, ``posted_at`` and the like are kept as they are, and
other fields as extra metadata. ``collected_at`` is the item's own field when
it has one, else the time the pipeline took the item (ISO 8601 UTC): when it
was scraped, give or take the download of its files. Prefer FilesPipeline to
ImagesPipeline: ImagesPipeline re-encodes every image to JPEG, so its files
(and their SHA-256) are not the bytes the site served.

Scrapy itself is not a dependency of imgmatch: the pipeline only reads the
crawler's settings and spider, and the items, as dicts or anything ``dict()``
accepts. Its methods take the spider as an optional argument: older Scrapy
passes it, current Scrapy warns about a pipeline that requires it and will
stop passing it, so the spider is found through the crawler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import (DEFAULT_SIGNALS, HASH_SIGNALS, Collection, Item, catalog_address,
                scrapy_item_sources)
from ..errors import ImgmatchError


class ImgmatchPipeline:
    def __init__(self, db: str | Path, store: str | Path, platform: str | None = None,
                 batch: int = 64, workers: int = 1, fast: bool = False) -> None:
        self.db = catalog_address(db)
        #: the robust tier unless ``fast`` (a collection that holds local
        #: features keeps adding them either way)
        self.signals = HASH_SIGNALS if fast else DEFAULT_SIGNALS
        self.store = Path(store)
        self.platform = platform
        self.batch = max(1, int(batch))
        #: crawled files are decoded in supervised, capped worker processes,
        #: never in the crawler's own (0: in process, for tests only)
        self.workers = max(0, int(workers))
        self.collection: Collection | None = None
        #: Scrapy's Crawler, once from_crawler made this pipeline (Scrapy is not a dependency)
        self.crawler: Any = None
        self.pending: list[Item] = []
        self.stats = {"files": 0, "failed": 0}

    @classmethod
    def from_crawler(cls, crawler) -> ImgmatchPipeline:
        settings = crawler.settings
        db = settings.get("IMGMATCH_DB")
        store = settings.get("FILES_STORE") or settings.get("IMAGES_STORE")
        if not db or not store:
            raise ImgmatchError("set IMGMATCH_DB and FILES_STORE (or IMAGES_STORE) to use "
                                "imgmatch's Scrapy pipeline")
        def number(name: str, default: int) -> int:
            return settings.getint(name, default) if hasattr(settings, "getint") \
                else int(settings.get(name, default))

        fast = settings.getbool("IMGMATCH_FAST", False) if hasattr(settings, "getbool") \
            else bool(settings.get("IMGMATCH_FAST", False))
        pipeline = cls(db, store, settings.get("IMGMATCH_PLATFORM"),
                       number("IMGMATCH_BATCH", 64), number("IMGMATCH_WORKERS", 1), fast)
        pipeline.crawler = crawler  # its spider names the platform when none is set
        return pipeline

    def open_spider(self, spider: Any = None) -> None:
        """Open the collection. ``spider`` is optional: current Scrapy warns about a
        required one and will stop passing it; older versions still pass it."""
        self.collection = Collection.open(self.db)
        if spider is None:
            spider = getattr(self.crawler, "spider", None)
        if self.platform is None:
            self.platform = getattr(spider, "name", None)

    def process_item(self, item: Any, spider: Any = None) -> Any:
        """Queue the item's stored files; the item goes on unchanged."""
        self.pending.extend(scrapy_item_sources(dict(item), self.store, platform=self.platform))
        if len(self.pending) >= self.batch:
            self._flush()
        return item

    def close_spider(self, spider: Any = None) -> None:
        try:
            self._flush()
        finally:
            if self.collection is not None:
                self.collection.close()
                self.collection = None

    def _flush(self) -> None:
        if not self.pending or self.collection is None:
            return
        items, self.pending = self.pending, []
        summary = self.collection.ingest(items, command="scrapy", workers=self.workers,
                                         signals=self.signals)
        self.stats["files"] += summary.files_seen
        self.stats["failed"] += len(summary.failures)
