"""Real Scrapy crawls of a local site: through imgmatch's item pipeline, and through
Scrapy's FilesPipeline and ImagesPipeline with a feed that `imgmatch ingest` reads."""

from __future__ import annotations

import functools
import hashlib
import http.server
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

import imgmatch
from imgmatch.integrations.scrapy import ImgmatchPipeline

pytest.importorskip("scrapy")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

SPIDER = textwrap.dedent('''
    import scrapy

    class Ads(scrapy.Spider):
        name = "citylist"
        start_urls = [{start!r}]

        def parse(self, response):
            for ad in response.css("div.ad"):
                yield {{
                    "url": response.urljoin(ad.css("a::attr(href)").get()),
                    "ad_id": ad.attrib["data-id"],
                    "phone": ad.css("span.phone::text").get(),
                    {field!r}: [response.urljoin(src) for src in ad.css("img::attr(src)").getall()],
                }}
''')


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "site"
    (root / "img").mkdir(parents=True)
    photos = {"a.jpg": FIXTURES / "originals" / "cat.jpg",
              "b.jpg": FIXTURES / "reposts" / "cat_citylist_2023.jpg",
              "c.jpg": FIXTURES / "originals" / "rocket.jpg"}
    for name, src in photos.items():
        (root / "img" / name).write_bytes(src.read_bytes())
    (root / "img" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "index.html").write_text(
        '<div class="ad" data-id="101"><a href="/ad/101">ad</a><span class="phone">555-0101'
        '</span><img src="/img/a.jpg"><img src="/img/broken.jpg"></div>'
        '<div class="ad" data-id="102"><a href="/ad/102">ad</a><span class="phone">555-0102'
        '</span><img src="/img/b.jpg"></div>'
        '<div class="ad" data-id="103"><a href="/ad/103">ad</a><span class="phone">555-0103'
        '</span><img src="/img/c.jpg"><img src="/img/a.jpg"></div>')
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/index.html", photos
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_crawl_through_files_pipeline_into_the_catalog(tmp_path, site):
    start, photos = site
    spider = tmp_path / "spider.py"
    spider.write_text(SPIDER.format(start=start, field="file_urls"))
    db, store = tmp_path / "case.db", tmp_path / "files"
    done = subprocess.run(
        [sys.executable, "-m", "scrapy", "runspider", str(spider),
         "-s", "ITEM_PIPELINES={\"scrapy.pipelines.files.FilesPipeline\": 1, "
               "\"imgmatch.integrations.scrapy.ImgmatchPipeline\": 300}",
         "-s", f"FILES_STORE={store}", "-s", f"IMGMATCH_DB={db}",
         "-s", "TELNETCONSOLE_ENABLED=False", "-s", "LOG_LEVEL=WARNING",
         "-s", "ROBOTSTXT_OBEY=False"],
        capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    with imgmatch.Collection.open(db, readonly=True) as c:
        cat = c.image(hashlib.sha256(photos["a.jpg"].read_bytes()).hexdigest())
        rocket = c.image(hashlib.sha256(photos["c.jpg"].read_bytes()).hexdigest())
        repost = c.image(hashlib.sha256(photos["b.jpg"].read_bytes()).hexdigest())
        failures = c.catalog.failures()
    # the cat photo appears in two ads: two sightings of one image
    assert sorted(s.ad_id for s in cat.sightings) == ["101", "103"]
    assert {s.platform for s in cat.sightings} == {"citylist"}
    assert {s.page_url for s in cat.sightings} == {start.replace("index.html", "ad/101"),
                                                    start.replace("index.html", "ad/103")}
    assert all(s.url.endswith("/img/a.jpg") for s in cat.sightings)
    assert all(s.collected_at for s in cat.sightings), "dated when the pipeline took the item"
    assert cat.sightings[0].extra["phone"] in ("555-0101", "555-0103")
    assert [s.ad_id for s in rocket.sightings] == ["103"]
    # the repost of the cat photo is linked to it
    assert cat.sha256 in {link.sha256 for link in repost.links}
    assert [f["reason"] for f in failures] == ["decode-error"]


@pytest.mark.parametrize("pipeline", ["files", "images"])
def test_feed_and_store_of_scrapys_media_pipelines_through_the_cli(tmp_path, site, pipeline):
    """A crawl with Scrapy's own FilesPipeline or ImagesPipeline and a JSON lines
    feed, catalogued afterwards by 'imgmatch ingest --scrapy-items'."""
    from imgmatch.cli import main

    start, photos = site
    spider = tmp_path / "spider.py"
    spider.write_text(SPIDER.format(start=start, field=f"{pipeline[:-1]}_urls"))
    store, feed = tmp_path / "store", tmp_path / "items.jsonl"
    stage = "files.FilesPipeline" if pipeline == "files" else "images.ImagesPipeline"
    done = subprocess.run(
        [sys.executable, "-m", "scrapy", "runspider", str(spider),
         "-s", f"ITEM_PIPELINES={{\"scrapy.pipelines.{stage}\": 1}}",
         "-s", f"{pipeline.upper()}_STORE={store}", "-o", f"{feed}:jsonlines",
         "-s", "TELNETCONSOLE_ENABLED=False", "-s", "LOG_LEVEL=WARNING",
         "-s", "ROBOTSTXT_OBEY=False"],
        capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    db = tmp_path / "case.db"
    code = main(["--db", str(db), "ingest", "--scrapy-items", str(feed), "--scrapy-store",
                 str(store), "--platform", "citylist", "--quiet", "--json"])
    with imgmatch.Collection.open(db, readonly=True) as c:
        shas = [row[0] for row in c.catalog.conn.execute("SELECT sha256 FROM images")]
        images = {sha: c.image(sha) for sha in shas}
    by_url = {}
    for image in images.values():
        for s in image.sightings:
            by_url.setdefault(s.url.rsplit("/", 1)[-1], set()).add((image.sha256, s.ad_id))
    cat = {sha for sha, _ in by_url["a.jpg"]}
    assert len(cat) == 1, "one stored file per URL: one image, seen in two ads"
    assert sorted(ad for _, ad in by_url["a.jpg"]) == ["101", "103"]
    assert {ad for _, ad in by_url["c.jpg"]} == {"103"}
    original = hashlib.sha256(photos["a.jpg"].read_bytes()).hexdigest()
    if pipeline == "files":
        # FilesPipeline keeps the bytes: the catalogue's SHA-256 is the original's,
        # and the broken download is stored as it came, then recorded as failed
        assert cat == {original}
        assert code == 1 and "broken.jpg" not in by_url
    else:
        # ImagesPipeline re-encodes to JPEG (and drops what it cannot open): the
        # SHA-256 is of its copy, not of the photo as published; the copy of
        # the repost is still linked to it by the perceptual hashes
        assert cat != {original} and code == 0 and "broken.jpg" not in by_url
        (copy,) = cat
        (repost,) = {digest for digest, _ in by_url["b.jpg"]}
        assert repost in {link.sha256 for link in images[copy].links}


# ------------------------------------------------- the pipeline, in this process
def _stored_item(tmp_path: Path, **fields) -> tuple[Path, dict, str]:
    """A FILES_STORE holding one photo, and the item FilesPipeline would pass on."""
    store = tmp_path / "files"
    (store / "full").mkdir(parents=True)
    data = (FIXTURES / "originals" / "cat.jpg").read_bytes()
    (store / "full" / "a.jpg").write_bytes(data)
    item = {"url": "https://citylist.example/ad/1", "ad_id": "1", **fields,
            "files": [{"url": "https://img.citylist.example/a.jpg", "path": "full/a.jpg"}]}
    return store, item, hashlib.sha256(data).hexdigest()


def _sighting(db: Path, sha256: str):
    with imgmatch.Collection.open(db, readonly=True) as c:
        (s,) = c.image(sha256).sightings
    return s


@pytest.mark.filterwarnings("error::scrapy.exceptions.ScrapyDeprecationWarning")
def test_the_pipeline_follows_scrapys_current_api(tmp_path):
    """Current Scrapy warns about (and will stop passing) the spider argument
    of a pipeline's methods; the pipeline finds the spider through its crawler."""
    import asyncio

    import scrapy
    from scrapy.pipelines import ItemPipelineManager
    from scrapy.utils.test import get_crawler

    if not hasattr(ItemPipelineManager, "open_spider_async"):
        pytest.skip("this Scrapy still passes the spider to every pipeline method")

    class Ads(scrapy.Spider):
        name = "citylist"

    store, item, sha = _stored_item(tmp_path)
    db = tmp_path / "case.db"
    crawler = get_crawler(Ads, {
        "ITEM_PIPELINES": {"imgmatch.integrations.scrapy.ImgmatchPipeline": 300},
        "IMGMATCH_DB": str(db), "FILES_STORE": str(store)})

    async def crawl() -> None:
        manager = ItemPipelineManager.from_crawler(crawler)  # warns here if outdated
        crawler.spider = Ads.from_crawler(crawler)
        await manager.open_spider_async()
        await manager.process_item_async(item)
        await manager.close_spider_async()

    asyncio.run(crawl())
    s = _sighting(db, sha)
    assert (s.platform, s.page_url, s.ad_id) == ("citylist", item["url"], "1")


def test_the_pipeline_still_takes_the_spider_older_scrapy_passes(tmp_path):
    store, item, sha = _stored_item(tmp_path)
    spider = SimpleNamespace(name="citylist")
    pipeline = ImgmatchPipeline(tmp_path / "case.db", store)
    pipeline.open_spider(spider)
    assert pipeline.process_item(item, spider) is item
    pipeline.close_spider(spider)
    assert _sighting(tmp_path / "case.db", sha).platform == "citylist"
    assert pipeline.stats == {"files": 1, "failed": 0}


@pytest.mark.parametrize("fast, features", [(False, 1), (True, 0)])
def test_the_pipeline_keeps_local_features_unless_fast(tmp_path, fast, features):
    """The robust tier, as ``imgmatch ingest``; ``IMGMATCH_FAST`` the hash tier."""
    store, item, sha = _stored_item(tmp_path)
    settings = {"IMGMATCH_DB": str(tmp_path / "case.db"), "FILES_STORE": str(store),
                "IMGMATCH_WORKERS": 0, "IMGMATCH_FAST": fast}
    pipeline = ImgmatchPipeline.from_crawler(SimpleNamespace(settings=settings))
    pipeline.open_spider(SimpleNamespace(name="citylist"))
    pipeline.process_item(item)
    pipeline.close_spider()
    with imgmatch.Collection.open(tmp_path / "case.db", readonly=True) as c:
        assert c.stats()["local_features"] == features


def test_the_pipeline_dates_each_sighting_when_it_took_the_item(tmp_path):
    from imgmatch.text import utcnow

    store, item, sha = _stored_item(tmp_path)
    pipeline = ImgmatchPipeline(tmp_path / "case.db", store, platform="citylist")
    pipeline.open_spider(SimpleNamespace(name="citylist"))
    before = utcnow()
    pipeline.process_item(item)
    after = utcnow()
    pipeline.close_spider()
    collected = _sighting(tmp_path / "case.db", sha).collected_at
    assert collected is not None and before <= collected <= after  # ISO 8601 UTC, to the s
    assert "collected_at" not in item, "the item is passed on as it came"


@pytest.mark.parametrize("given, stored", [
    ("2024-05-06T07:08:09+02:00", "2024-05-06T05:08:09Z"),
    ("1714972089", "2024-05-06T05:08:09Z"),
])
def test_the_pipeline_keeps_an_items_own_collected_at(tmp_path, given, stored):
    store, item, sha = _stored_item(tmp_path, collected_at=given)
    pipeline = ImgmatchPipeline(tmp_path / "case.db", store, platform="citylist")
    pipeline.open_spider(SimpleNamespace(name="citylist"))
    pipeline.process_item(item)
    pipeline.close_spider()
    assert _sighting(tmp_path / "case.db", sha).collected_at == stored
