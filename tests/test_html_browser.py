"""The HTML report in a real browser: headless Chromium driven by Playwright.

Built from the fixture collection, the report must open without console
errors, load nothing but itself, agree with the JSON report on its counts,
keep pictures hidden until asked, and leave a screenshot in tests/output/
for a person to look at. Needs Debian's chromium (scripts/setup-browser) and
the playwright package; skipped otherwise.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

import imgmatch
from imgmatch.model import Cluster, Sighting
from imgmatch.report.html import write_html
from imgmatch.report.jsonfmt import report_dict
from imgmatch.sources import iter_manifest

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "fixtures" / "manifest.csv"
OUTPUT = REPO / "tests" / "output"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

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


def open_report(browser, path: Path) -> dict:
    """Open a report file; record console messages, page errors, dialogs and requests."""
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  device_scale_factor=1)
    pg = context.new_page()
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


@pytest.fixture(scope="module")
def page(browser, report):
    """The fixture report open in Chromium."""
    opened = open_report(browser, report["path"])
    yield opened
    opened["context"].close()


def test_no_console_errors_or_warnings(page):
    bad = [(kind, text) for kind, text in page["console"] if kind in ("error", "warning")]
    assert bad == []
    assert page["errors"] == [] and page["dialogs"] == []


def test_loads_nothing_but_itself(page):
    page["page"].wait_for_timeout(300)
    assert page["requests"], "the page load itself should be recorded"
    others = [u for u in page["requests"] if u != page["url"] and not u.startswith("data:")]
    assert others == []


def test_counts_agree_with_the_json_report(page, report):
    pg = page["page"]
    n = report["json"]["n_clusters"]
    assert n >= 4
    assert pg.text_content("#n-clusters").strip() == str(n)
    assert pg.locator("section.cluster").count() == n
    assert pg.locator(".cluster").count() == n
    shown = [int(x) for x in pg.locator("section.cluster").evaluate_all(
        "els => els.map(e => e.dataset.clusterId)")]
    assert shown == [c["id"] for c in report["json"]["clusters"]]
    assert pg.text_content("#n-cross-platform").strip() == str(
        report["json"]["n_cross_platform"])


def test_every_cluster_has_a_timeline_with_a_dot_per_dated_sighting(page, report):
    pg = page["page"]
    for c in report["json"]["clusters"]:
        section = pg.locator(f'section.cluster[data-cluster-id="{c["id"]}"]')
        dated = sum(1 for s in c["sightings"] if s["posted_at"] or s["collected_at"])
        assert section.locator("svg.timeline circle").count() == dated
        assert section.locator("svg.timeline circle title").count() == dated


def test_a_picture_is_shown_only_when_asked(page, report):
    pg = page["page"]
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


def test_print_layout_hides_buttons(page):
    pg = page["page"]
    pg.emulate_media(media="print")
    try:
        assert pg.locator("button.show-picture").first.is_hidden()
    finally:
        pg.emulate_media(media="screen")


def test_screenshot(page):
    OUTPUT.mkdir(parents=True, exist_ok=True)
    target = OUTPUT / "report.png"
    page["page"].screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000
    with Image.open(target) as im:
        assert im.width == 1280 and im.height > 900


HOSTILE = ("<script>alert(1)</script>", "\"'><img src=x onerror=alert(2)>",
           "<svg onload=alert(3)>", "javascript:alert(4)", '=HYPERLINK("http://x","y")',
           "\x00\x07\x1b[31m\u202eexe.txt", "A" * 100_000)


def test_hostile_text_stays_text_in_the_browser(browser, tmp_path):
    """Markup planted in every field runs nothing and loads nothing."""
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
    path = tmp_path / "hostile.html"
    with path.open("w", encoding="utf-8") as fh:
        write_html([cluster], fh, title=HOSTILE[0])
    opened = open_report(browser, path)
    try:
        pg = opened["page"]
        pg.wait_for_timeout(300)
        assert opened["dialogs"] == [] and opened["errors"] == []
        assert [m for m in opened["console"] if m[0] in ("error", "warning")] == []
        assert [u for u in opened["requests"] if u != opened["url"]] == []
        assert pg.title() == HOSTILE[0]
        assert pg.locator("script").count() == 1
        assert pg.locator("main img, main iframe, main object, main embed").count() == 0
        assert pg.locator("[onerror], [onload]").count() == 0
        assert pg.locator("a[href]").evaluate_all(
            "els => els.every(a => a.getAttribute('href').startsWith('#'))")
        assert "<script>alert(1)</script>" in pg.locator("main").inner_text()
        pg.screenshot(path=str(tmp_path / "hostile.png"), full_page=True)
    finally:
        opened["context"].close()
