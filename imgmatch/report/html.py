"""The HTML report: one self-contained, offline file for people.

A summary (clusters, cross-platform count, platforms, date span, sightings
per platform and year), then one section per cluster: the route between
platforms with the gaps in days, its facts, the distinct values of its
metadata fields, a timeline (inline SVG), its images, sightings and links.

Safe to open on an investigator's machine: inline CSS and a small inline
script only, a strict Content-Security-Policy, and nothing that loads from
the network. Addresses from the data are shown as text, never as links.
Every string from the data is HTML-escaped after control and bidi-override
characters are made visible (U+FFFD); nothing from the data goes into the
script or a style. Pictures appear only when the analyst asks: a thumbnail
is kept in a ``data-src`` attribute and shown by its button.
"""

from __future__ import annotations

import base64
import html
import re
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TextIO

from ..model import Cluster, parse_utc

CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "img-src data:; base-uri 'none'; form-action 'none'")

_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029"
                     "\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufffe\uffff]")

#: Longer values are cut in tables, with the whole text a click away.
LONG_TEXT = 240

#: Years a timeline can show; a date outside them is taken as a mistake, not plotted.
PLOTTED_YEARS = (1970, 2200)

#: Platform colours (calm, distinguishable, print-friendly), by platform rank.
PALETTE = ("#2f6f9f", "#c0612b", "#4b8b3b", "#8a4f9e", "#b3454c", "#2b8a87", "#9a7b22",
           "#5d6470")

_JPEG_MAGIC = b"\xff\xd8\xff"

STYLE = """
:root { --ink: #1f2933; --muted: #5f6b7a; --line: #d9dee5; --soft: #f4f6f8;
  --accent: #2f6f9f; --paper: #ffffff; }
* { box-sizing: border-box; }
html { background: var(--soft); }
body { margin: 0; color: var(--ink); background: var(--soft);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
header.page, main { max-width: 1120px; margin: 0 auto; padding: 0 24px; }
header.page { padding-top: 28px; padding-bottom: 8px; }
h1 { font-size: 26px; margin: 0 0 4px; font-weight: 650; letter-spacing: -0.01em; }
h2 { font-size: 19px; margin: 0 0 12px; font-weight: 650; }
h3 { font-size: 13px; margin: 22px 0 8px; text-transform: uppercase; letter-spacing: .06em;
  color: var(--muted); font-weight: 650; }
.note { color: var(--muted); font-size: 12.5px; }
p.note { margin: 0; font-size: 13px; }
.card { background: var(--paper); border: 1px solid var(--line); border-radius: 10px;
  padding: 20px 24px; margin: 18px 0; }
.stats { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr));
  gap: 12px; margin: 4px 0 8px; }
.stat { background: var(--soft); border-radius: 8px; padding: 10px 14px; }
.stat .num { display: block; font-size: 24px; font-weight: 650; line-height: 1.2;
  font-variant-numeric: tabular-nums; }
.stat .lbl { color: var(--muted); font-size: 13px; }
.stat.wide { grid-column: span 2; }
.stat.wide .num { font-size: 20px; white-space: nowrap; padding-top: 3px; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: 12.5px; background: var(--soft); }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.zero { color: #b8c0ca; }
.wrap { overflow-x: auto; }
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas,
  "Liberation Mono", monospace; font-size: 12.5px; }
.url { word-break: break-all; }
.url .tag { font-family: system-ui, sans-serif; font-size: 11px; color: var(--muted);
  text-transform: uppercase; letter-spacing: .04em; margin-right: 6px; }
td { overflow-wrap: anywhere; }
td.when, td.n { white-space: nowrap; overflow-wrap: normal; }
td.when details { white-space: normal; overflow-wrap: anywhere; }
td.time { overflow-wrap: normal; }
.nw { white-space: nowrap; }
td.time details { overflow-wrap: anywhere; }
table.fixed { table-layout: fixed; }
.chip.block { display: block; border-radius: 8px; margin: 4px 0; }
.dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%;
  margin-right: 6px; vertical-align: baseline; -webkit-print-color-adjust: exact;
  print-color-adjust: exact; }
.chip { display: inline-block; padding: 1px 9px; margin: 2px 4px 2px 0; border-radius: 999px;
  background: var(--soft); border: 1px solid var(--line); font-size: 13px;
  max-width: 100%; overflow-wrap: anywhere; }
.cluster-head { display: flex; flex-wrap: wrap; align-items: baseline; gap: 8px 16px;
  border-bottom: 1px solid var(--line); padding-bottom: 10px; margin-bottom: 4px; }
.cluster-head h2 { margin: 0; }
.rank { color: var(--muted); font-weight: 500; margin-right: 6px; }
dl.facts { display: grid; grid-template-columns: repeat(auto-fit, minmax(104px, 1fr));
  gap: 6px 16px; margin: 14px 0 0; }
dl.facts div { border-left: 3px solid var(--line); padding-left: 10px; }
dl.facts dt { color: var(--muted); font-size: 12.5px; }
dl.facts dd { margin: 0; font-weight: 600; font-variant-numeric: tabular-nums; }
ol.route { list-style: none; padding: 0; margin: 0; display: flex; flex-wrap: wrap;
  align-items: center; gap: 6px; }
ol.route li.stop { background: var(--soft); border: 1px solid var(--line);
  border-radius: 8px; padding: 4px 10px; }
ol.route li.stop span.when { color: var(--muted); margin-left: 6px; font-size: 13px; }
ol.route li.gap { color: var(--muted); font-size: 13px; }
dl.fields { display: grid; grid-template-columns: minmax(90px, max-content) 1fr;
  gap: 4px 14px; margin: 0; }
dl.fields dt { color: var(--muted); font-size: 13px; padding-top: 3px;
  overflow-wrap: anywhere; }
dl.fields dd { margin: 0; }
svg.timeline { width: 100%; height: auto; display: block; background: var(--paper); }
svg.timeline text { font-size: 12px; fill: var(--muted); }
svg.timeline text.row { fill: var(--ink); }
svg.timeline line.grid { stroke: var(--line); }
svg.timeline line.base { stroke: #e8ebef; }
svg.timeline polyline { fill: none; stroke: #9aa5b1; stroke-dasharray: 3 4; }
svg.timeline circle { stroke: #fff; stroke-width: 1.5; }
details summary { cursor: pointer; color: var(--accent); }
details.long summary { color: inherit; }
details.long summary::after { content: " (show all)"; color: var(--accent); }
button.show-picture { font: inherit; font-size: 12.5px; padding: 3px 10px;
  border: 1px solid var(--accent); color: var(--accent); background: var(--paper);
  border-radius: 6px; cursor: pointer; }
button.show-picture:hover { background: #eaf2f8; }
img.thumb { display: block; max-width: 220px; max-height: 220px; margin-top: 8px;
  border-radius: 6px; border: 1px solid var(--line); }
img.thumb[hidden] { display: none; }
a.jump { color: var(--accent); text-decoration: none; }
a.jump:hover { text-decoration: underline; }
footer { max-width: 1120px; margin: 0 auto; padding: 8px 24px 40px; color: var(--muted);
  font-size: 12.5px; }
@media print {
  html, body { background: #fff; font-size: 10.5pt; }
  header.page, main, footer { max-width: none; padding: 0; }
  .card { border: none; border-radius: 0; padding: 0; margin: 0 0 18pt; }
  section.cluster { break-before: page; }
  button, .no-print { display: none !important; }
  tr, svg, .stat, ol.route li { break-inside: avoid; }
  thead { display: table-header-group; }
  a.jump { color: inherit; }
  details.long summary::after { content: ""; }
}
"""

SCRIPT = """
(function () {
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button.show-picture");
    if (!button) { return; }
    var img = document.getElementById(button.getAttribute("aria-controls"));
    if (!img) { return; }
    if (img.hasAttribute("src")) {
      img.removeAttribute("src");
      img.hidden = true;
      button.textContent = "show picture";
      button.setAttribute("aria-expanded", "false");
    } else {
      img.setAttribute("src", img.getAttribute("data-src"));
      img.hidden = false;
      button.textContent = "hide picture";
      button.setAttribute("aria-expanded", "true");
    }
  });
})();
"""


def printable(value: object) -> str:
    """Text with control, zero-width and bidi-override characters made visible."""
    return _UNSAFE.sub("\ufffd", "" if value is None else str(value))


def esc(value: object) -> str:
    """Data as HTML text or attribute value."""
    return html.escape(printable(value), quote=True)


def _long(value: object, limit: int = LONG_TEXT) -> str:
    """Escaped text; a long value shows its start, the rest behind a click."""
    text = printable(value)
    if len(text) <= limit:
        return html.escape(text, quote=True)
    return (f'<details class="long"><summary>{html.escape(text[:limit], quote=True)}… '
            f'<span class="note">{len(text):,} characters</span></summary>'
            f'{html.escape(text, quote=True)}</details>')


def _when(text: str | None, *, time: bool = True) -> str:
    """A stored time for people ('2023-02-11 22:41'), or the raw text escaped."""
    if not text:
        return "–"
    when = parse_utc(text)
    if when is None:
        return _long(text, 32)
    when = when.astimezone(timezone.utc)
    shown = f'<span class="nw">{when:%Y-%m-%d}</span>'
    if time and (when.hour or when.minute):
        shown += f' <span class="nw">{when:%H:%M}</span>'
    return shown


def _day(text: str | None) -> str:
    return _when(text, time=False)


def _days(value: float | None) -> str:
    if value is None:
        return "? days"
    if abs(value) < 1:
        return f"{value * 24:.0f} hours"
    return f"{value:,.0f} days" if abs(value) >= 10 else f"{value:.1f} days"


def _span_days(first: str | None, last: str | None) -> float | None:
    a, b = parse_utc(first), parse_utc(last)
    return None if a is None or b is None else (b - a).total_seconds() / 86400


def _short(sha256: object) -> str:
    return esc(str(sha256 or "?")[:12])


class _Colours:
    def __init__(self, platforms: Sequence[str]) -> None:
        self.of = {p: PALETTE[i % len(PALETTE)] for i, p in enumerate(platforms)}

    def __call__(self, platform: str | None) -> str:
        return self.of.get(platform or "", "#8795a1")

    def dot(self, platform: str | None) -> str:
        # The colour is ours, never the data's.
        return f'<span class="dot" style="background:{self(platform)}"></span>'


def write_html(clusters: Sequence[Cluster], out: TextIO, *,
               thumbnails: dict[str, bytes] | None = None,
               title: str = "imgmatch reuse report", generated_at: str | None = None) -> None:
    """Write the report. ``thumbnails`` maps an image's sha256 to JPEG bytes
    shown (on request) beside it; anything that is not a JPEG is left out."""
    thumbnails = thumbnails or {}
    platforms = sorted({p for c in clusters for p in c.platforms})
    colours = _Colours(platforms)
    w = out.write
    w('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
      f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
      '<meta name="referrer" content="no-referrer">\n'
      '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
      '<meta name="generator" content="imgmatch">\n'
      f'<title>{esc(title)}</title>\n<link rel="icon" href="data:,">\n'
      f'<style>{STYLE}</style>\n</head>\n<body>\n')
    w(f'<header class="page"><h1>{esc(title)}</h1><p class="note">')
    if generated_at:
        w(f"Generated {esc(generated_at)}. ")
    w("A self-contained file: nothing in it loads from the network, and web addresses "
      "from the data are shown as text, not links. Times are UTC; a sighting's time is "
      "when it was posted, else when it was collected.</p></header>\n<main>\n")
    _summary(clusters, platforms, colours, w)
    for rank, c in enumerate(clusters, start=1):
        _cluster(rank, c, colours, thumbnails, w)
    w("</main>\n<footer>Written by imgmatch. Pictures are shown only on request; "
      "printing leaves hidden pictures out.</footer>\n")
    w(f"<script>{SCRIPT}</script>\n</body>\n</html>\n")


# ------------------------------------------------------------------ summary
def _summary(clusters: Sequence[Cluster], platforms: list[str], colours: _Colours,
             w) -> None:
    cross = sum(1 for c in clusters if len(c.platforms) > 1)
    sightings = [s for c in clusters for s in c.sightings]
    times = sorted(t for t in (parse_utc(s.seen_at) for s in sightings) if t is not None)
    w('<section class="card" id="summary" aria-labelledby="summary-title">\n'
      '<h2 id="summary-title">Summary</h2>\n<div class="stats">\n')
    stats = [
        (f'<span class="num" id="n-clusters">{len(clusters)}</span>',
         "reused pictures (clusters)"),
        (f'<span class="num" id="n-cross-platform">{cross}</span>', "seen on 2+ platforms"),
        (f'<span class="num">{len(platforms)}</span>', "platforms"),
        (f'<span class="num">{sum(len(c.images) for c in clusters):,}</span>', "images"),
        (f'<span class="num">{len(sightings):,}</span>', "sightings"),
        (f'<span class="num">{len({Cluster.ad_key(s) for s in sightings} - {None}):,}</span>',
         "ads"),
    ]
    for num, label in stats:
        w(f'<div class="stat">{num}<span class="lbl">{label}</span></div>\n')
    if times:
        span = (times[-1] - times[0]).total_seconds() / 86400
        w(f'<div class="stat wide"><span class="num">{times[0]:%Y-%m-%d} → '
          f'{times[-1]:%Y-%m-%d}</span><span class="lbl">first and last sighting, '
          f"{_days(span)} apart</span></div>\n")
    w("</div>\n")
    if not clusters:
        w('<p class="note">No picture was seen more than the report asks for.</p>\n'
          "</section>\n")
        return

    # Platforms: how many clusters and sightings each, first and last seen.
    per_platform: dict[str, dict] = {p: {"clusters": 0, "sightings": 0, "times": []}
                                     for p in platforms}
    for c in clusters:
        for p in c.platforms:
            per_platform[p]["clusters"] += 1
        for s in c.sightings:
            if s.platform:
                per_platform[s.platform]["sightings"] += 1
                t = parse_utc(s.seen_at)
                if t is not None:
                    per_platform[s.platform]["times"].append(t)
    w('<h3>Platforms</h3>\n<div class="wrap"><table>\n<thead><tr><th>Platform</th>'
      '<th class="n">Clusters</th><th class="n">Cross-platform clusters</th>'
      '<th class="n">Sightings</th><th>First seen</th><th>Last seen</th></tr></thead>\n'
      '<tbody>\n')
    for p in sorted(platforms, key=lambda p: (-per_platform[p]["clusters"], p)):
        info = per_platform[p]
        crossing = sum(1 for c in clusters if p in c.platforms and len(c.platforms) > 1)
        ts = sorted(info["times"])
        w(f'<tr><td>{colours.dot(p)}{esc(p)}</td><td class="n">{info["clusters"]}</td>'
          f'<td class="n">{crossing}</td><td class="n">{info["sightings"]}</td>'
          f'<td class="when">{f"{ts[0]:%Y-%m-%d}" if ts else "–"}</td>'
          f'<td class="when">{f"{ts[-1]:%Y-%m-%d}" if ts else "–"}</td></tr>\n')
    w("</tbody></table></div>\n")

    # Sightings per platform and year.
    counts: Counter = Counter()
    for s in sightings:
        t = parse_utc(s.seen_at)
        counts[(s.platform or "", str(t.year) if t else "undated")] += 1
    years = sorted({y for _, y in counts if y != "undated"})
    if any(y == "undated" for _, y in counts):
        years.append("undated")
    rows = platforms + ([""] if any(p == "" for p, _ in counts) else [])
    w('<h3>Sightings per platform and year</h3>\n<div class="wrap"><table class="years">\n'
      '<thead><tr><th>Platform</th>')
    for y in years:
        w(f'<th class="n">{esc(y)}</th>')
    w('<th class="n">Total</th></tr></thead>\n<tbody>\n')
    for p in rows:
        w(f"<tr><td>{colours.dot(p)}{esc(p) if p else '<i>no platform</i>'}</td>")
        for y in years:
            n = counts.get((p, y), 0)
            w(f'<td class="n{" zero" if not n else ""}">{n}</td>')
        w(f'<td class="n"><b>{sum(counts.get((p, y), 0) for y in years)}</b></td></tr>\n')
    w("<tr><td><b>All platforms</b></td>")
    for y in years:
        w(f'<td class="n"><b>{sum(counts.get((p, y), 0) for p in rows)}</b></td>')
    w(f'<td class="n"><b>{len(sightings)}</b></td></tr>\n</tbody></table></div>\n')

    # An index of the clusters, each a jump to its section.
    w('<h3>Clusters</h3>\n<div class="wrap"><table class="index">\n<thead><tr>'
      '<th class="n">#</th><th>Cluster</th><th>Platforms, in the order they saw it</th>'
      '<th>First seen</th><th>Last seen</th><th class="n">Images</th>'
      '<th class="n">Sightings</th><th class="n">Ads</th></tr></thead>\n<tbody>\n')
    for rank, c in enumerate(clusters, start=1):
        order = [p for p, _ in c.platform_order]
        order += [p for p in c.platforms if p not in order]
        route = " → ".join(f"{colours.dot(p)}{esc(p)}" for p in order) or "–"
        w(f'<tr><td class="n">{rank}</td><td><a class="jump" href="#cluster-{cid_token(c.id)}">'
          f'cluster {esc(c.id)}</a></td><td>{route}</td><td class="when">'
          f'{_day(c.first_seen)}</td><td class="when">{_day(c.last_seen)}</td>'
          f'<td class="n">{len(c.images)}</td>'
          f'<td class="n">{len(c.sightings)}</td><td class="n">{c.ads}</td></tr>\n')
    w("</tbody></table></div>\n</section>\n")


# ------------------------------------------------------------------ clusters
def _cluster(rank: int, c: Cluster, colours: _Colours, thumbnails: dict[str, bytes],
             w) -> None:
    cid, anchor = esc(c.id), cid_token(c.id)
    w(f'<section class="card cluster" id="cluster-{anchor}" data-cluster-id="{cid}" '
      f'aria-labelledby="cluster-{anchor}-title">\n<div class="cluster-head">'
      f'<h2 id="cluster-{anchor}-title"><span class="rank">#{rank}</span>Cluster {cid}</h2>'
      '<div>')
    for p in c.platforms:
        w(f'<span class="chip">{colours.dot(p)}{esc(p)}</span>')
    w("</div></div>\n")

    span = _span_days(c.first_seen, c.last_seen)
    facts = [("First seen", _day(c.first_seen)), ("Last seen", _day(c.last_seen)),
             ("Span", _days(span) if span is not None else "–"),
             ("Platforms", str(len(c.platforms))), ("Images", str(len(c.images))),
             ("Sightings", str(len(c.sightings))), ("Ads", str(c.ads)),
             ("URLs", str(c.urls))]
    w('<dl class="facts">')
    for label, value in facts:
        w(f"<div><dt>{label}</dt><dd>{value}</dd></div>")
    w("</dl>\n")

    order = c.platform_order
    if order:
        w('<h3>Route: the order in which platforms saw it</h3>\n<ol class="route">')
        gaps = c.gaps
        for i, (platform, when) in enumerate(order):
            if i:
                w(f'<li class="gap" aria-label="then">→ {_days(gaps[i - 1][2])} later →</li>')
            w(f'<li class="stop">{colours.dot(platform)}<b>{esc(platform)}</b>'
              f'<span class="when">{_day(when)}</span></li>')
        w("</ol>\n")

    values = c.field_values()
    if values:
        w('<h3>Metadata values</h3>\n<dl class="fields">')
        for name, found in values.items():
            chips = "".join(
                f'<span class="chip">{esc(v)}</span>' if len(printable(v)) <= 120
                else f'<div class="chip block">{_long(v, 120)}</div>' for v in found)
            w(f"<dt>{_long(name, 60)}</dt><dd>{chips or '–'}</dd>")
        w("</dl>\n")

    w("<h3>Timeline</h3>\n")
    w(_timeline(c, colours))

    _images(c, thumbnails, w)
    _sightings(c, colours, w)
    _links(c, w)
    w("</section>\n")


def _ticks(start: datetime, end: datetime) -> list[tuple[datetime, str]]:
    """Month-aligned ticks, at most about eight, labelled by year or month."""
    months = (end.year - start.year) * 12 + end.month - start.month + 1
    step = next((s for s in (1, 2, 3, 6, 12, 24, 60, 120) if months / s <= 8), 240)
    index = start.year * 12 + start.month - 1
    index += (-index) % step
    out = []
    while True:
        when = datetime(index // 12, index % 12 + 1, 1, tzinfo=timezone.utc)
        if when > end:
            return out
        if when >= start:
            out.append((when, f"{when:%Y}" if step >= 12 else f"{when:%Y-%m}"))
        index += step


def _timeline(c: Cluster, colours: _Colours) -> str:
    dated = [(t, s) for s in c.sightings if (t := parse_utc(s.seen_at)) is not None
             and PLOTTED_YEARS[0] <= t.year <= PLOTTED_YEARS[1]]
    undated = len(c.sightings) - len(dated)
    if not dated:
        return '<p class="note">No sighting of this picture has a usable date.</p>\n'
    rows = [p for p, _ in c.platform_order]
    rows += sorted({s.platform or "" for _, s in dated} - set(rows))
    start, end = min(t for t, _ in dated), max(t for t, _ in dated)
    pad = max((end - start) * 0.04, timedelta(days=3))
    start, end = start - pad, end + pad
    width, left, right, top, row_h = 880, 150, 20, 14, 30
    height = top + row_h * len(rows) + 34
    total = (end - start).total_seconds()

    def x(t: datetime) -> float:
        return left + (width - left - right) * (t - start).total_seconds() / total

    def y(platform: str) -> float:
        return top + row_h * rows.index(platform) + row_h / 2

    label = (f"Timeline of cluster {esc(c.id)}: {len(dated)} dated sightings on "
             f"{len(rows)} platforms")
    parts = [(f'<div class="wrap"><svg class="timeline" viewBox="0 0 {width} {height}" '
              f'role="img" aria-label="{label}">')]
    axis_y = top + row_h * len(rows) + 4
    for when, text in _ticks(start, end):
        parts.append(f'<line class="grid" x1="{x(when):.1f}" x2="{x(when):.1f}" '
                     f'y1="{top - 4}" y2="{axis_y}"/>'
                     f'<text x="{x(when):.1f}" y="{axis_y + 16}" text-anchor="middle">'
                     f"{text}</text>")
    for platform in rows:
        name = printable(platform) or "no platform"
        shown = name if len(name) <= 20 else name[:19] + "…"
        parts.append(f'<line class="base" x1="{left}" x2="{width - right}" '
                     f'y1="{y(platform):.1f}" y2="{y(platform):.1f}"/>'
                     f'<text class="row" x="{left - 10}" y="{y(platform) + 4:.1f}" '
                     f'text-anchor="end">{html.escape(shown, quote=True)}'
                     f"<title>{html.escape(name, quote=True)}</title></text>")
    route = [(parse_utc(when), p) for p, when in c.platform_order]
    route = [(t, p) for t, p in route if t is not None and start <= t <= end]
    if len(route) > 1:
        points = " ".join(f"{x(t):.1f},{y(p):.1f}" for t, p in route)
        parts.append(f'<polyline points="{points}"/>')
    for t, s in sorted(dated, key=lambda ts: ts[0]):
        platform = s.platform or ""
        tip = " · ".join(part for part in (
            f"{t:%Y-%m-%d %H:%M} UTC", platform or "no platform",
            f"ad {s.ad_id}" if s.ad_id else "", s.page_url or s.url or "",
            f"image {str(s.sha256 or '')[:12]}") if part)
        parts.append(f'<circle cx="{x(t):.1f}" cy="{y(platform):.1f}" r="6" '
                     f'fill="{colours(s.platform)}"><title>{_tip(tip)}</title></circle>')
    parts.append("</svg></div>\n")
    if undated:
        parts.append(f'<p class="note">{undated} sighting{"s" if undated != 1 else ""} '
                     "without a usable date not shown.</p>\n")
    return "".join(parts)


def _tip(text: str) -> str:
    text = printable(text)
    return html.escape(text if len(text) <= 400 else text[:399] + "…", quote=True)


def _images(c: Cluster, thumbnails: dict[str, bytes], w) -> None:
    firsts: dict[str, str] = {}
    counts: Counter = Counter()
    for s in c.sightings:
        counts[s.sha256] += 1
        if s.seen_at and (s.sha256 not in firsts or s.seen_at < firsts[s.sha256]):
            firsts[s.sha256] = s.seen_at
    w(f'<h3>Images ({len(c.images)})</h3>\n<div class="wrap"><table class="images fixed">\n'
      '<colgroup><col style="width:16%"><col style="width:11%"><col><col style="width:10%">'
      '<col style="width:10%"><col style="width:13%"><col style="width:26%"></colgroup>'
      '<thead><tr><th>Image (SHA-256)</th><th>Size</th><th>Format</th>'
      '<th class="n">Bytes</th><th class="n">Sightings</th><th>First seen</th>'
      '<th>Picture</th></tr></thead>\n<tbody>\n')
    for index, img in enumerate(c.images):
        sha = img.get("sha256")
        size = (f"{esc(img.get('width'))}×{esc(img.get('height'))}"
                if img.get("width") is not None else "–")
        frames = img.get("frames")
        fmt = esc(img.get("format") or "–") + (f", {esc(frames)} frames"
                                              if isinstance(frames, int) and frames > 1 else "")
        nbytes = img.get("size_bytes")
        w(f'<tr><td><code title="{esc(sha)}">{_short(sha)}</code></td><td>{size}</td>'
          f'<td>{fmt}</td><td class="n">{f"{nbytes:,}" if isinstance(nbytes, int) else "–"}'
          f'</td><td class="n">{counts.get(sha, 0)}</td><td class="when">{_day(firsts.get(sha))}'
          "</td><td>")
        data = thumbnails.get(sha) if isinstance(sha, str) else None
        if isinstance(data, (bytes, bytearray)) and bytes(data[:3]) == _JPEG_MAGIC:
            pic = f"pic-{cid_token(c.id)}-{index}"
            uri = "data:image/jpeg;base64," + base64.b64encode(bytes(data)).decode("ascii")
            w(f'<button type="button" class="show-picture" aria-controls="{pic}" '
              f'aria-expanded="false">show picture</button>'
              f'<img class="thumb" id="{pic}" alt="picture {_short(sha)}" hidden '
              f'data-src="{uri}">')
        else:
            w('<span class="note">–</span>')
        w("</td></tr>\n")
    w("</tbody></table></div>\n")


def cid_token(value: object) -> str:
    """A cluster id as a safe HTML id fragment."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(value))


def _sightings(c: Cluster, colours: _Colours, w) -> None:
    w(f'<h3>Sightings ({len(c.sightings)})</h3>\n<div class="wrap">'
      '<table class="sightings fixed">\n'
      '<colgroup><col style="width:14%"><col style="width:15%"><col style="width:9%"><col>'
      '<col style="width:12%"><col style="width:18%"></colgroup>'
      "<thead><tr><th>When</th><th>Platform</th><th>Ad</th><th>Page and image address</th>"
      '<th>Image</th><th class="other">Other fields</th></tr></thead>\n<tbody>\n')
    for s in c.sightings:
        when = _when(s.seen_at)
        if s.posted_at and s.collected_at:
            when += f'<br><span class="note">collected {_when(s.collected_at)}</span>'
        elif not s.posted_at and s.collected_at:
            when += '<br><span class="note">(collected)</span>'
        where = []
        if s.page_url:
            where.append(f'<div class="url mono"><span class="tag">page</span>'
                         f"{_long(s.page_url)}</div>")
        if s.url and s.url != s.page_url:
            where.append(f'<div class="url mono"><span class="tag">image</span>'
                         f"{_long(s.url)}</div>")
        if not where and s.source:
            where.append(f'<div class="url mono"><span class="tag">file</span>'
                         f"{_long(s.source)}</div>")
        extra = "".join(f'<div><span class="note">{_long(k, 40)}:</span> {_long(v, 120)}</div>'
                        for k, v in sorted((s.extra or {}).items(), key=lambda kv: str(kv[0]))
                        if v not in (None, ""))
        w(f'<tr><td class="time">{when}</td><td class="platform">{colours.dot(s.platform)}'
          f"{esc(s.platform or '–')}</td>"
          f"<td>{_long(s.ad_id, 40) if s.ad_id else '–'}</td>"
          f"<td>{''.join(where) or '–'}</td><td><code>{_short(s.sha256)}</code></td>"
          f"<td>{extra or '–'}</td></tr>\n")
    w("</tbody></table></div>\n")


def _links(c: Cluster, w) -> None:
    if not c.links:
        w('<h3>Links</h3>\n<p class="note">One image, seen more than once: no '
          "near-duplicate links.</p>\n")
        return
    w(f'<h3>Near-duplicate links ({len(c.links)})</h3>\n<div class="wrap">'
      '<table class="links fixed">\n<colgroup><col style="width:14%"><col style="width:14%">'
      '<col style="width:8%"><col style="width:24%"><col><col style="width:12%"></colgroup>'
      '<thead><tr><th>Image</th><th>Image</th><th class="n">Score</th>'
      "<th>Signals that agree</th><th>Distances (bits)</th><th>Transform</th></tr></thead>\n"
      "<tbody>\n")
    for link in c.links:
        score = link.get("score")
        shown = f"{score:.2f}" if isinstance(score, (int, float)) else esc(score)
        agreed = "".join(f'<span class="chip">{esc(a)}</span>'
                         for a in link.get("agreed") or ()) or "none"
        distances = link.get("distances") or {}
        dist = (", ".join(f"{esc(k)} {esc(v)}" for k, v in distances.items())
                if isinstance(distances, dict) else esc(distances))
        w(f'<tr><td><code title="{esc(link.get("a"))}">{_short(link.get("a"))}</code></td>'
          f'<td><code title="{esc(link.get("b"))}">{_short(link.get("b"))}</code></td>'
          f'<td class="n">{shown}</td><td>{agreed}</td><td>{dist or "–"}</td>'
          f'<td>{esc(link.get("transform") or "–")}</td></tr>\n')
    w("</tbody></table></div>\n")
