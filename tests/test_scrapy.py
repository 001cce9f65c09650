"""A real Scrapy crawl of a local site, through FilesPipeline and imgmatch's pipeline."""

from __future__ import annotations

import functools
import hashlib
import http.server
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import imgmatch

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
                    "file_urls": [response.urljoin(src) for src in ad.css("img::attr(src)").getall()],
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
    spider.write_text(SPIDER.format(start=start))
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
    assert cat.sightings[0].extra["phone"] in ("555-0101", "555-0103")
    assert [s.ad_id for s in rocket.sightings] == ["103"]
    # the repost of the cat photo is linked to it
    assert cat.sha256 in {link.sha256 for link in repost.links}
    assert [f["reason"] for f in failures] == ["decode-error"]
