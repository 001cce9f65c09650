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

The item's own fields describe the ad: its ``url`` becomes each sighting's
page URL, ``ad_id``, ``posted_at`` and the like are kept as they are, and
other fields as extra metadata. Prefer FilesPipeline to ImagesPipeline:
ImagesPipeline re-encodes every image to JPEG, so its files (and their
SHA-256) are not the bytes the site served.

Scrapy itself is not a dependency of imgmatch: the pipeline only reads the
crawler's settings and the items, as dicts or anything ``dict()`` accepts.
"""

from __future__ import annotations

from pathlib import Path

from ..collection import Collection
from ..errors import ImgmatchError
from ..sources import Item, scrapy_item_files


class ImgmatchPipeline:
    def __init__(self, db: str | Path, store: str | Path, platform: str | None = None,
                 batch: int = 64) -> None:
        self.db = Path(db)
        self.store = Path(store)
        self.platform = platform
        self.batch = max(1, int(batch))
        self.collection: Collection | None = None
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
        return cls(db, store, settings.get("IMGMATCH_PLATFORM"),
                   settings.getint("IMGMATCH_BATCH", 64) if hasattr(settings, "getint")
                   else int(settings.get("IMGMATCH_BATCH", 64)))

    def open_spider(self, spider) -> None:
        self.collection = Collection.open(self.db)
        if self.platform is None:
            self.platform = getattr(spider, "name", None)

    def process_item(self, item, spider=None):
        row = dict(item)
        label = f"scrapy:{row.get('url') or 'item'}"
        self.pending.extend(scrapy_item_files(row, self.store.resolve(), self.store, label,
                                              self.platform))
        if len(self.pending) >= self.batch:
            self._flush()
        return item

    def close_spider(self, spider=None) -> None:
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
        summary = self.collection.ingest(items, command="scrapy")
        self.stats["files"] += summary.files_seen
        self.stats["failed"] += len(summary.failures)
