"""The HTML report in a real browser: headless Chromium driven by Playwright.

Built from the fixture collection, the report must open without console
errors, load nothing but itself, agree with the JSON report on its counts,
draw a cluster's details when it is opened, keep pictures hidden until
asked, and leave screenshots in tests/output/ for a person to look at.
Built from a synthetic collection of 10,000 images, it must stay under 5 MB
and be usable within 3 seconds. Needs Debian's chromium
(scripts/setup-browser) and the playwright package; skipped otherwise.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image

import imgmatch
from imgmatch.records import ImageRow, LinkRow
from imgmatch.model import Cluster, Sighting
from imgmatch.report.html import ROWS_SHOWN, write_html
from imgmatch.report.jsonfmt import report_dict
from imgmatch.sources import iter_manifest

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "fixtures" / "manifest.csv"
OUTPUT = REPO / "tests" / "output"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

#: What a 10,000-image report must stay within (the users' targets, not tighter).
LARGE_IMAGES = 10_000
LARGE_MAX_BYTES = 5_000_000
LARGE_MAX_MS = 3_000

#: Characters after which an address may break onto the next line.
SEPARATORS = set("/?&=#.,;:_~+-")

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is missing (scripts/setup-browser installs it)",
                allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)")


def thumbnail(path: Path) -> bytes:
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((200, 200))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=80)
        return buf.getvalue()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """The fixture collection's HTML report (with thumbnails) and its JSON twin."""
    tmp = tmp_path_factory.mktemp("html-report")
    collection = imgmatch.Collection.open(tmp / "c.db")
    try:
        collection.ingest(iter_manifest(MANIFEST))
        clusters = collection.clusters()
    finally:
        collection.close()
    thumbs = {}
    for c in clusters:
        for s in c.sightings:
            if s.sha256 not in thumbs and s.source and (REPO / s.source).is_file():
                thumbs[s.sha256] = thumbnail(REPO / s.source)
    path = tmp / "report.html"
    with path.open("w", encoding="utf-8") as fh:
        write_html(clusters, fh, thumbnails=thumbs, generated_at="2025-06-01 12:00 UTC")
    data = report_dict(clusters)
    (tmp / "report.json").write_text(json.dumps(data), encoding="utf-8")
    assert thumbs, "the fixtures should give at least one thumbnail"
    return {"path": path, "json": data, "thumbnails": thumbs}


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                     headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def open_report(browser, path: Path, width: int = 1280, init_script: str | None = None) -> dict:
    """Open a report file; record console messages, page errors, dialogs and requests.
    ``init_script`` runs in the page before the report's own (to time it)."""
    context = browser.new_context(viewport={"width": width, "height": 900},
                                  device_scale_factor=1)
    pg = context.new_page()
    if init_script:
        pg.add_init_script(init_script)
    seen: dict = {"console": [], "requests": [], "errors": [], "dialogs": []}
    pg.on("console", lambda m: seen["console"].append((m.type, m.text)))
    pg.on("pageerror", lambda e: seen["errors"].append(str(e)))
    pg.on("request", lambda r: seen["requests"].append(r.url))

    def on_dialog(dialog):
        seen["dialogs"].append(dialog.message)
        dialog.dismiss()
    pg.on("dialog", on_dialog)
    url = path.resolve().as_uri()
    pg.goto(url, wait_until="load")
    pg.wait_for_load_state("networkidle")
    return {"page": pg, "context": context, "url": url, **seen}


def write_report(clusters, path: Path, **kwargs) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        write_html(clusters, fh, **kwargs)
    return path


def open_all(pg, n: int) -> None:
    """Open every cluster with the report's own button; wait until all are drawn."""
    if pg.locator("section.cluster").count() < n:
        pg.click("#open-all")
    pg.wait_for_function(  # a function: CSP forbids the page evaluating a string
        f"() => document.querySelectorAll('section.cluster').length === {n}")


def index_rows(pg):
    return pg.locator('table.index tr[id^="cluster-"]')


@pytest.fixture(scope="module")
def page(browser, report):
    """The fixture report open in Chromium."""
    opened = open_report(browser, report["path"])
    yield opened
    opened["context"].close()


def test_summary_and_index_come_first_and_details_on_demand(page, report):
    pg = page["page"]
    n = report["json"]["n_clusters"]
    assert n >= 4
    assert pg.text_content("#n-clusters").strip() == str(n)
    assert pg.text_content("#n-cross-platform").strip() == str(
        report["json"]["n_cross_platform"])
    assert index_rows(pg).count() == n
    ids = index_rows(pg).evaluate_all("rows => rows.map(r => r.id)")
    assert ids == [f"cluster-{c['id']}" for c in report["json"]["clusters"]]
    if pg.locator("section.cluster").count() == 0:  # nothing drawn until asked
        first = index_rows(pg).first.locator("button.open")
        first.click()
        section = pg.locator("tr.detail section.cluster")
        assert section.count() == 1 and first.get_attribute("aria-expanded") == "true"
        assert section.locator("h2").inner_text() == f"#1Cluster {ids[0][8:]}"
        first.click()
        assert not section.is_visible() and first.get_attribute("aria-expanded") == "false"
    open_all(pg, n)
    shown = [int(x) for x in pg.locator("section.cluster").evaluate_all(
        "els => els.map(e => e.dataset.clusterId)")]
    assert shown == [c["id"] for c in report["json"]["clusters"]]


def test_no_console_errors_or_warnings(page, report):
    open_all(page["page"], report["json"]["n_clusters"])
    bad = [(kind, text) for kind, text in page["console"] if kind in ("error", "warning")]
    assert bad == []
    assert page["errors"] == [] and page["dialogs"] == []


def test_loads_nothing_but_itself(page):
    page["page"].wait_for_timeout(300)
    assert page["requests"], "the page load itself should be recorded"
    others = [u for u in page["requests"] if u != page["url"] and not u.startswith("data:")]
    assert others == []


def test_every_cluster_has_a_timeline_with_a_dot_per_dated_sighting(page, report):
    pg = page["page"]
    open_all(pg, report["json"]["n_clusters"])
    for c in report["json"]["clusters"]:
        section = pg.locator(f'section.cluster[data-cluster-id="{c["id"]}"]')
        times = sorted((s["posted_at"] or s["collected_at"]) for s in c["sightings"]
                       if s["posted_at"] or s["collected_at"])
        assert section.locator("svg.timeline circle").count() == len(times)
        assert section.locator("svg.timeline circle title").count() == len(times)
        # the dashed path joins every dated sighting in time order, not only each
        # platform's first
        points = section.locator("svg.timeline polyline").get_attribute("points").split()
        xs = [float(p.split(",")[0]) for p in points]
        assert len(points) == len(times) and xs == sorted(xs)
        # the earliest point has its own dated tick, right above it
        cxs = section.locator("svg.timeline circle").evaluate_all(
            "els => els.map(e => +e.getAttribute('cx'))")
        first = section.locator("svg.timeline text.edge").first
        assert first.text_content() == times[0][:10]
        assert float(first.get_attribute("x")) == min(cxs)


def test_a_picture_is_shown_only_when_asked(page, report):
    pg = page["page"]
    open_all(pg, report["json"]["n_clusters"])
    images = pg.locator("img.thumb")
    assert images.count() == sum(
        1 for c in report["json"]["clusters"] for i in c["images"]
        if i["sha256"] in report["thumbnails"])
    assert pg.locator("img[src]").count() == 0
    first = images.first
    assert first.get_attribute("src") is None
    assert not first.is_visible()
    button = pg.locator(f'button[aria-controls="{first.get_attribute("id")}"]')
    button.click()
    src = first.get_attribute("src")
    assert src and src.startswith("data:image/jpeg;base64,")
    assert first.is_visible()
    assert first.evaluate("img => img.complete && img.naturalWidth > 0")
    assert button.get_attribute("aria-expanded") == "true"
    button.click()
    assert first.get_attribute("src") is None
    assert not first.is_visible()
    button.click()  # shown again for the screenshot


def test_print_layout_hides_buttons(page, report):
    pg = page["page"]
    open_all(pg, report["json"]["n_clusters"])
    pg.emulate_media(media="print")
    try:
        assert pg.locator("button.show-picture").first.is_hidden()
        assert pg.locator("#find").is_hidden() and pg.locator("#open-all").is_hidden()
        assert pg.locator("button.open").first.is_visible()  # the cluster's name
    finally:
        pg.emulate_media(media="screen")


def test_screenshot(page, report):
    open_all(page["page"], report["json"]["n_clusters"])
    OUTPUT.mkdir(parents=True, exist_ok=True)
    target = OUTPUT / "report.png"
    page["page"].screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000
    with Image.open(target) as im:
        assert im.width == 1280 and im.height > 900


def test_route_column_keeps_each_platform_whole_at_700px(browser, report):
    """At 700 px the route wraps between platforms, each on one line, none cut."""
    opened = open_report(browser, report["path"], width=700)
    try:
        pg = opened["page"]
        stops = pg.locator("table.index td.route .s")
        assert stops.count() >= sum(len(c["platforms"]) for c in report["json"]["clusters"])
        lines = stops.evaluate_all("els => els.map(e => [e.getClientRects().length, "
                                   "e.getBoundingClientRect().height, "
                                   "e.scrollWidth - e.clientWidth])")
        height = lines[0][1]
        assert all(n == 1 and h == height and cut <= 0 for n, h, cut in lines), lines
        assert pg.evaluate("document.documentElement.scrollWidth") <= 700
        open_all(pg, report["json"]["n_clusters"])
        OUTPUT.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(OUTPUT / "report-700px.png"), full_page=True)
    finally:
        opened["context"].close()


LONG_URL = ("https://escort-directory.example/united-states/texas/houston/downtown/listings/"
            "2023/02/11/ad-3824128/photos/full-size/482dc905d90ee6e2.jpg?ref=search&page=2"
            "&sort=newest&session=4f1c2a9e")

SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64


def verified_cluster() -> Cluster:
    """Three images: one link verified with its inliers kept, one verified without
    them, one not verified; one sighting with a long address."""
    images = tuple({"id": n, "sha256": sha, "width": 640, "height": 480, "format": "JPEG"}
                   for n, sha in enumerate((SHA_A, SHA_B, SHA_C), start=1))
    sightings = (
        Sighting(platform="escort-directory", url=LONG_URL, page_url=LONG_URL[:-40],
                 posted_at="2023-02-11T22:41:00Z", sha256=SHA_A),
        Sighting(platform="citylist", url="https://citylist.example/1.jpg",
                 posted_at="2023-05-06T19:03:00Z", sha256=SHA_B),
        Sighting(platform="citylist", url="https://citylist.example/2.jpg",
                 posted_at="2023-06-01T10:00:00Z", sha256=SHA_C))
    links = ({"a": SHA_A, "b": SHA_B, "score": 0.93, "agreed": ["phash", "orb"],
              "distances": {"pdq": 52, "phash": 8, "inliers": 41}, "transform": "rot90"},
             {"a": SHA_A, "b": SHA_C, "score": 0.9, "agreed": ["orb"],
              "distances": {"pdq": 74}, "transform": "mirror"},
             {"a": SHA_B, "b": SHA_C, "score": 0.99, "agreed": ["pdq", "phash"],
              "distances": {"pdq": 4, "phash": 0}, "transform": "identity"})
    return Cluster(id=1, image_ids=(1, 2, 3), images=images, sightings=sightings, links=links)


def test_links_name_both_images_and_show_their_geometric_check(browser, tmp_path):
    path = write_report([verified_cluster()], tmp_path / "verified.html")
    opened = open_report(browser, path)
    try:
        pg = opened["page"]
        open_all(pg, 1)
        table = pg.locator("table.links")
        heads = table.locator("th").all_inner_texts()
        assert heads[:2] == ["Image A", "Image B"] and len(set(heads)) == len(heads)
        rows = [r.locator("td").all_inner_texts() for r in table.locator("tbody tr").all()]
        geometry = heads.index("Geometric check")
        assert [r[geometry] for r in rows] == ["✓ 41 inliers", "✓ verified", "–"]
        distances = heads.index("Hash distances (bits)")
        assert rows[0][distances] == "pdq 52, phash 8"  # inliers are not bits
        assert [r[:2] for r in rows] == [["aaaaaaaaaaaa", "bbbbbbbbbbbb"],
                                         ["aaaaaaaaaaaa", "cccccccccccc"],
                                         ["bbbbbbbbbbbb", "cccccccccccc"]]
        assert opened["errors"] == []
    finally:
        opened["context"].close()


BREAKS = """el => {
  const out = []; let top = null, before = null;
  const walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  for (let node = walk.nextNode(); node; node = walk.nextNode()) {
    if (node.parentElement.classList.contains("tag")) { continue; }
    for (let i = 0; i < node.length; i++) {
      const range = document.createRange();
      range.setStart(node, i); range.setEnd(node, i + 1);
      const rect = range.getClientRects()[0];
      if (!rect) { continue; }
      if (top !== null && rect.top > top + 2) { out.push(before + node.data[i]); }
      top = rect.top; before = node.data[i];
    }
  }
  return out;
}"""


@pytest.mark.parametrize("width", [1280, 700])
def test_long_addresses_break_only_after_separators(browser, tmp_path, width):
    """A long address wraps after '/', '?', '&'... never in the middle of a word,
    and copies as itself."""
    path = write_report([verified_cluster()], tmp_path / "urls.html")
    opened = open_report(browser, path, width=width)
    try:
        pg = opened["page"]
        open_all(pg, 1)
        address = next(el for el in pg.locator("table.sightings .url").all()
                       if el.text_content().startswith("image"))
        assert address.text_content() == "image" + LONG_URL  # copies whole
        breaks = address.evaluate(BREAKS)
        assert breaks, "the address should need more than one line"
        assert all(pair[0] in SEPARATORS for pair in breaks), breaks
    finally:
        opened["context"].close()


HOSTILE = ("<script>alert(1)</script>", "\"'><img src=x onerror=alert(2)>",
           "<svg onload=alert(3)>", "javascript:alert(4)", '=HYPERLINK("http://x","y")',
           "\x00\x07\x1b[31m\u202eexe.txt", "A" * 100_000)


def test_hostile_text_stays_text_in_the_browser(browser, tmp_path):
    """Markup planted in every field runs nothing and loads nothing, opened or not."""
    sightings = tuple(
        Sighting(platform=text[:40], url="http://evil.example/" + text,
                 page_url="//evil.example/p", ad_id=text,
                 posted_at=f"2024-0{n + 1}-01T00:00:00Z", source=text,
                 extra={"caption": text, text[:30]: "x"}, sha256=f"{n:064x}")
        for n, text in enumerate(HOSTILE))
    cluster = Cluster(id=1, image_ids=tuple(range(len(HOSTILE))),
                      images=tuple({"id": n, "sha256": f"{n:064x}", "width": 1, "height": 1,
                                    "format": text[:50]} for n, text in enumerate(HOSTILE)),
                      sightings=sightings,
                      links=({"a": f"{0:064x}", "b": f"{1:064x}", "score": 0.9,
                              "distances": {HOSTILE[0]: 1}, "agreed": [HOSTILE[1]],
                              "transform": HOSTILE[2]},))
    path = write_report([cluster], tmp_path / "hostile.html", title=HOSTILE[0])
    opened = open_report(browser, path)
    try:
        pg = opened["page"]
        open_all(pg, 1)
        pg.locator("details.long summary").first.click()
        pg.fill("#find", HOSTILE[1])
        pg.wait_for_function("() => document.getElementById('found').textContent !== ''")
        pg.wait_for_timeout(300)
        assert opened["dialogs"] == [] and opened["errors"] == []
        assert [m for m in opened["console"] if m[0] in ("error", "warning")] == []
        assert [u for u in opened["requests"] if u != opened["url"]] == []
        assert pg.title() == HOSTILE[0]
        assert pg.locator("script:not([type])").count() == 1
        assert pg.locator("main img, main iframe, main object, main embed").count() == 0
        assert pg.locator("[onerror], [onload]").count() == 0
        assert pg.locator("a[href]").count() == 0
        text = pg.locator("main").inner_text()
        for planted in HOSTILE[:5]:
            assert planted in text
        assert "1 of 1 clusters hold" in pg.text_content("#found")
        pg.screenshot(path=str(tmp_path / "hostile.png"))  # the viewport: a full page of
        # 100,000 letters takes 20 s to paint
    finally:
        opened["context"].close()


def test_dates_at_the_ends_of_the_calendar_are_not_plotted(browser, tmp_path):
    def at(platform, when):
        return Sighting(platform=platform, posted_at=when, url=when, sha256=SHA_A)
    c = Cluster(id=3, image_ids=(3,), images=({"id": 3, "sha256": SHA_A},), links=(),
                sightings=(at("a", "0001-01-01T00:00:00Z"), at("b", "2024-05-01T00:00:00Z"),
                           at("c", "9999-12-31T23:59:59Z"),
                           at("d", "2024-05-01T00:00:00+14:00")))
    opened = open_report(browser, write_report([c], tmp_path / "calendar.html"))
    try:
        pg = opened["page"]
        open_all(pg, 1)
        section = pg.locator("section.cluster")
        assert section.locator("svg.timeline circle").count() == 2
        assert "2 sightings without a usable date not shown" in section.inner_text()
        assert "0001-01-01" in section.locator("ol.route").inner_text()
        assert opened["errors"] == []
    finally:
        opened["context"].close()


# ------------------------------------------------------------- at scale
PLATFORMS = ("backpage-clone", "citylist", "nightads", "jobboard", "escortdir",
             "classifieds-now", "massage-reviews", "datingzone")
CITIES = ("Houston", "Dallas", "Atlanta", "Portland", "Seattle", "Miami", "Denver", "Phoenix")


def cluster_sizes(n_images: int, rng: random.Random) -> list[int]:
    """Mostly pictures reposted a few times, and a few reposted hundreds of times."""
    sizes, left = [], n_images
    for size in [300, 120, 80] + [40] * 5 + [15] * 20:
        if size * 4 > left:
            break
        sizes.append(size)
        left -= size
    while left > 0:
        size = min(left, rng.choice((1, 1, 2, 2, 2, 3, 3, 4, 5, 6)))
        sizes.append(size)
        left -= size
    return sizes


def synthetic_collection(db: Path, n_images: int, seed: int = 7) -> None:
    """A collection as a crawl would leave it, written straight to the catalog: images
    with one to four dated sightings on a few platforms each (addresses, ad ids, phone
    and city), and near-duplicate links within each picture's images (every pair in a
    small cluster, 25 per image in a large one; each image's first strong, so every image
    joins its picture's cluster; some verified geometrically)."""
    rng = random.Random(seed)
    start = datetime(2022, 1, 1, tzinfo=timezone.utc)
    images, sightings, links = [], {}, []
    image_id = 0
    for size in cluster_sizes(n_images, rng):
        ids = []
        home = rng.sample(PLATFORMS, rng.choice((1, 2, 2, 3, 4)))
        base = start + timedelta(minutes=rng.randrange(3 * 365 * 24 * 60))
        phone, city = f"555-{rng.randrange(10000):04d}", rng.choice(CITIES)
        for _ in range(size):
            image_id += 1
            ids.append(image_id)
            sha = hashlib.sha256(f"{seed}:{image_id}".encode()).hexdigest()
            images.append(ImageRow(sha, rng.randrange(20_000, 900_000), 640, 480, "JPEG", "RGB",
                                   1, ()))
            sightings[sha] = []
            for _ in range(rng.choice((1, 1, 2, 2, 3)) + (size == 1)):
                p = rng.choice(home)
                when = base + timedelta(minutes=rng.randrange(400 * 24 * 60))
                ad = str(rng.randrange(10**6, 10**7))
                sightings[sha].append(Sighting(
                    platform=p, ad_id=ad,
                    url=f"https://img.{p}.example/{when:%Y/%m}/{rng.getrandbits(64):016x}.jpg",
                    page_url=f"https://{p}.example/{city.lower()}/post/{ad}",
                    posted_at=f"{when:%Y-%m-%dT%H:%M:%SZ}",
                    collected_at=f"{when + timedelta(days=rng.randrange(30)):%Y-%m-%dT%H:%M:%SZ}",
                    extra={"phone": phone, "city": rng.choice((city, city, rng.choice(CITIES)))}))
        for k in range(1, len(ids)):
            for n, other in enumerate(ids[:k] if k <= 15 else rng.sample(ids[:k], min(k, 25))):
                agreed = rng.choice((("pdq", "phash", "dhash"), ("phash", "dhash"), ("pdq",),
                                     ("phash", "orb"), ("pdq", "phash", "dhash", "orb")))
                # the first is strong (joins the picture's cluster), the rest may be weak
                score = rng.uniform(0.98, 1.0) if n == 0 else rng.uniform(0.6, 1.0)
                links.append(LinkRow(other, ids[k], score,
                                     {"pdq": rng.randrange(70), "phash": rng.randrange(20),
                                      "dhash": rng.randrange(20)}, agreed,
                                     rng.choice(("identity", "identity", "mirror", "rot90"))))
    with imgmatch.Collection.open(db) as c:
        for at in range(0, len(images), 2000):
            chunk = images[at:at + 2000]
            c.catalog.write_batch(chunk, [(row.sha256, s) for row in chunk
                                          for s in sightings[row.sha256]], [], None)
        c.catalog.add_links(links)


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> dict:
    """The report of a 10,000-image collection, and its clusters."""
    tmp = tmp_path_factory.mktemp("large")
    synthetic_collection(tmp / "c.db", LARGE_IMAGES)
    with imgmatch.Collection.open(tmp / "c.db", readonly=True) as c:
        clusters = c.clusters()
    assert sum(len(c.images) for c in clusters) == LARGE_IMAGES
    return {"path": write_report(clusters, tmp / "large.html"), "clusters": clusters}


#: Notes when the page is usable: the first frame drawn after its load event,
#: in milliseconds from the start of navigation, as the browser measures it.
USABLE = """addEventListener("load", () => requestAnimationFrame(() => requestAnimationFrame(
  () => { window.usableAfterMs = performance.now(); })));"""


def test_a_large_report_is_small_and_usable_quickly(browser, large):
    size = large["path"].stat().st_size
    assert size < LARGE_MAX_BYTES, f"{size:,} bytes"
    opened = open_report(browser, large["path"], init_script=USABLE)
    try:
        pg = opened["page"]
        usable_ms = pg.wait_for_function("() => window.usableAfterMs").json_value()
        print(f"\n{LARGE_IMAGES:,} images: {size / 1e6:.2f} MB, usable after {usable_ms:.0f} ms")
        assert usable_ms < LARGE_MAX_MS
        assert pg.text_content("#n-clusters").strip() == str(len(large["clusters"]))
        assert index_rows(pg).count() == len(large["clusters"])
        assert opened["errors"] == []
    finally:
        opened["context"].close()


def test_opening_a_cluster_of_a_large_report_shows_its_details(browser, large):
    clusters = large["clusters"]
    biggest = max(range(len(clusters)), key=lambda i: len(clusters[i].sightings))
    opened = open_report(browser, large["path"])
    try:
        pg = opened["page"]
        for rank in (0, biggest, len(clusters) - 1):
            c = clusters[rank]
            row = pg.locator(f"#cluster-{c.id}")
            started = pg.evaluate("performance.now()")
            row.locator("button.open").click()
            section = pg.locator(f'tr.detail section.cluster[data-cluster-id="{c.id}"]')
            section.locator("table.links, p.note").first.wait_for()
            drawn_ms = pg.evaluate("performance.now()") - started
            print(f"\ncluster {c.id} ({len(c.sightings)} sightings, {len(c.links)} links) "
                  f"drawn in {drawn_ms:.0f} ms")
            assert drawn_ms < LARGE_MAX_MS
            assert section.locator("h2").inner_text() == f"#{rank + 1}Cluster {c.id}"
            assert section.locator("ol.route li.stop").count() == len(c.platform_order)
            assert section.locator("svg.timeline circle").count() == len(c.sightings)
            shown = min(len(c.sightings), ROWS_SHOWN)
            assert section.locator("table.sightings tbody tr").count() == shown
            assert section.locator("table.links tbody tr").count() == min(len(c.links),
                                                                          ROWS_SHOWN)
            if len(c.sightings) > ROWS_SHOWN:
                section.locator("table.sightings").locator(
                    "xpath=../..").locator("button.more").click()
                assert section.locator("table.sightings tbody tr").count() == len(c.sightings)
        assert opened["errors"] == []
        assert [m for m in opened["console"] if m[0] in ("error", "warning")] == []
    finally:
        opened["context"].close()


def test_finding_text_in_any_cluster_of_a_large_report(browser, large):
    """Details are drawn on demand, so the page finds text in every cluster's data."""
    clusters = large["clusters"]
    target = clusters[len(clusters) // 2]
    leaf = target.sightings[-1].url.rsplit("/", 1)[1]  # a random name: one cluster has it
    opened = open_report(browser, large["path"])
    try:
        pg = opened["page"]
        pg.fill("#find", leaf)
        pg.wait_for_function("() => document.getElementById('found').textContent !== ''")
        visible = pg.locator('table.index tr[id^="cluster-"]:not([hidden])')
        assert visible.evaluate_all("rows => rows.map(r => r.id)") == [f"cluster-{target.id}"]
        assert pg.text_content("#found").startswith(f"1 of {len(clusters)} clusters hold")
        pg.fill("#find", "")
        pg.wait_for_function("() => document.getElementById('found').textContent === ''")
        assert visible.count() == len(clusters)
    finally:
        opened["context"].close()


def test_watchlist_hits_are_shown_with_their_provenance_as_text(browser, tmp_path):
    listing = tmp_path / "list.txt"
    astronaut = imgmatch.hash_bytes((REPO / "fixtures" / "originals" / "astronaut.jpg")
                                    .read_bytes(), ["pdq"])["signals"]["pdq"]["hex"]
    listing.write_text(f"{astronaut},100,<img src=x onerror=alert(1)>\n")
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.watchlist_add("ngo-x", listing, source="<script>alert(2)</script>",
                                 licence="no onward sharing")
        collection.ingest(iter_manifest(MANIFEST))
        clusters = [c for c in collection.clusters() if c.watched]
    assert clusters
    path = write_report(clusters, tmp_path / "watched.html")
    opened = open_report(browser, path)
    try:
        pg = opened["page"]
        open_all(pg, len(clusters))
        section = pg.locator("section.cluster").first
        assert section.locator("h3", has_text="On partners' watchlists").count() == 1
        text = section.inner_text()
        assert "ngo-x" in text and "shared by <script>alert(2)</script>" in text
        assert "<img src=x onerror=alert(1)>" in text and "terms: no onward sharing" in text
        assert opened["dialogs"] == [] and opened["errors"] == []
    finally:
        opened["context"].close()
