"""The HTML report: one self-contained, offline file for people.

Summary first, as HTML: clusters, cross-platform count, platforms, date
span, sightings per platform and year, and an index of the clusters in rank
order (route across platforms, first and last seen, counts). A cluster's
details (route with the gaps in days, facts, metadata values, a timeline,
its images, sightings and links with their evidence) are drawn by the page's
script when the analyst opens the cluster, from compact JSON embedded in the
file. Drawing every cluster up front made a 2,000-image report tens of
megabytes that took a minute or more to open; this way a 10,000-image
report is a few megabytes and usable within a second or two, and only the
clusters an analyst opens cost anything. A print of a report of up to
:data:`OPEN_ALL_LIMIT` clusters has every cluster in full; a larger one
prints its summary, index and the clusters that are open.

Safe to open on an investigator's machine: inline CSS and one small inline
script only, a strict Content-Security-Policy, and nothing that loads from
the network. Addresses from the data are shown as text, never as links.
Control and bidi-override characters in the data are made visible (U+FFFD);
then the summary's strings are HTML-escaped, and the details' strings travel
in a JSON data block (every ``<``, ``>`` and ``&`` escaped, so nothing in it
can end the block) that the script shows as text nodes, never as markup.
Nothing from the data goes into a style or into the code. Pictures appear
only when the analyst asks: thumbnails are kept in their own data block and
decoded only when a "show picture" button is pressed.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TextIO

from ..model import Cluster, parse_utc
from .provenance import describe
from .names import ClusterNames

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

#: Reports with at most this many clusters print every cluster in full and
#: offer "open all"; drawing thousands at once would freeze the page.
OPEN_ALL_LIMIT = 100

#: Rows an opened cluster's table draws at first; the rest are a click away,
#: so a cluster of thousands of links opens at once.
ROWS_SHOWN = 300

#: Index rows per chunk; a chunk off screen is not laid out (content-visibility),
#: so a long index costs little until it is scrolled to.
INDEX_CHUNK = 200

#: Details data up to this size (JSON bytes) is embedded as it is; a larger one
#: gzip-compressed and base64-encoded (a quarter of the size, unpacked by the
#: browser's DecompressionStream when first needed).
PLAIN_DATA_LIMIT = 1_000_000

_JPEG_MAGIC = b"\xff\xd8\xff"

_COLOURS = " ".join(f".c{i} {{ --c: {colour}; }}" for i, colour in enumerate(PALETTE))

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
.url { word-break: normal; overflow-wrap: anywhere; }
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
  margin-right: 6px; vertical-align: baseline; background: var(--c, #8795a1);
  -webkit-print-color-adjust: exact; print-color-adjust: exact; }
""" + _COLOURS + """
.chip { display: inline-block; padding: 1px 9px; margin: 2px 4px 2px 0; border-radius: 999px;
  background: var(--soft); border: 1px solid var(--line); font-size: 13px;
  max-width: 100%; overflow-wrap: anywhere; }
.section-head { display: flex; flex-wrap: wrap; align-items: baseline; gap: 6px 16px;
  margin-bottom: 10px; }
.section-head h2 { margin: 0; }
.section-head .tools { margin-left: auto; display: flex; gap: 8px; }
.section-head input { font: inherit; font-size: 13.5px; padding: 4px 10px; width: 22em;
  max-width: 100%; border: 1px solid var(--line); border-radius: 6px; }
.chunk { content-visibility: auto; contain-intrinsic-size: auto 6400px; }
table.index { table-layout: fixed; }
table.index col.rank { width: 48px; } table.index col.name { width: 118px; }
table.index col.day { width: 104px; } table.index col.count { width: 74px; }
table.index col.ads { width: 56px; }
.index > * > tr > :nth-child(1), .index > * > tr > :nth-child(n+6) { text-align: right;
  font-variant-numeric: tabular-nums; }
.index > tbody > tr > :nth-child(-n+2), .index > tbody > tr > :nth-child(4),
.index > tbody > tr > :nth-child(5), .index > tbody > tr > :nth-child(n+6) {
  white-space: nowrap; overflow-wrap: normal; }
.index > tbody > tr > td details { white-space: normal; overflow-wrap: anywhere; }
.index > tbody > tr.opened > td { background: #eef4f9; }
.index > tbody > tr.detail > td { text-align: left; white-space: normal; background: none; }
td.route { color: var(--muted); }
.s { display: inline-block; white-space: nowrap; max-width: 100%; overflow: hidden;
  text-overflow: ellipsis; vertical-align: top; color: var(--ink); }
.s::before { content: ""; display: inline-block; width: 9px; height: 9px; border-radius: 50%;
  margin-right: 6px; background: var(--c, #8795a1); -webkit-print-color-adjust: exact;
  print-color-adjust: exact; }
button.open { font: inherit; color: var(--accent); background: none; border: 0; padding: 0;
  cursor: pointer; white-space: nowrap; text-align: left; }
button.open::before { content: "\\25B8\\00A0"; display: inline-block; width: 1em; }
button.open[aria-expanded="true"]::before { content: "\\25BE\\00A0"; }
button.open:hover { text-decoration: underline; }
button.tool, button.more, button.close { font: inherit; font-size: 12.5px; padding: 3px 10px;
  border: 1px solid var(--line); color: var(--ink); background: var(--paper);
  border-radius: 6px; cursor: pointer; }
button.tool:hover, button.more:hover, button.close:hover { background: var(--soft); }
tr.detail > td { padding: 6px 0 24px 0; border-bottom: 2px solid var(--line);
  overflow-wrap: normal; }
section.cluster { border-left: 3px solid var(--accent); padding: 8px 4px 4px 18px; }
.cluster-head { display: flex; flex-wrap: wrap; align-items: baseline; gap: 8px 16px;
  border-bottom: 1px solid var(--line); padding-bottom: 10px; margin-bottom: 4px; }
.cluster-head h2 { margin: 0; }
.cluster-head .close { margin-left: auto; }
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
ol.route li.gap { color: var(--muted); font-size: 13px; white-space: nowrap; }
dl.fields { display: grid; grid-template-columns: minmax(90px, max-content) 1fr;
  gap: 4px 14px; margin: 0; }
dl.fields dt { color: var(--muted); font-size: 13px; padding-top: 3px;
  overflow-wrap: anywhere; }
dl.fields dd { margin: 0; }
table.images col:nth-child(1) { width: 17%; } table.images col:nth-child(2) { width: 11%; }
table.images col:nth-child(4) { width: 10%; } table.images col:nth-child(5) { width: 10%; }
table.images col:nth-child(6) { width: 13%; } table.images col:nth-child(7) { width: 24%; }
table.sightings col:nth-child(1) { width: 14%; } table.sightings col:nth-child(2) { width: 15%; }
table.sightings col:nth-child(3) { width: 9%; } table.sightings col:nth-child(5) { width: 15%; }
table.sightings col:nth-child(6) { width: 18%; }
table.links col:nth-child(1), table.links col:nth-child(2) { width: 15%; }
table.links col:nth-child(3) { width: 7%; } table.links col:nth-child(4) { width: 19%; }
table.links col:nth-child(6) { width: 14%; } table.links col:nth-child(7) { width: 10%; }
p.more { margin: 8px 0 0; display: flex; gap: 12px; align-items: baseline; }
svg.timeline { width: 100%; height: auto; display: block; background: var(--paper); }
svg.timeline text { font-size: 12px; fill: var(--muted); }
svg.timeline text.row { fill: var(--ink); }
svg.timeline text.edge { fill: var(--ink); font-weight: 600; }
svg.timeline line.grid { stroke: var(--line); }
svg.timeline line.edge { stroke: #9aa5b1; stroke-dasharray: 2 2; }
svg.timeline line.base { stroke: #e8ebef; }
svg.timeline polyline { fill: none; stroke: #9aa5b1; stroke-dasharray: 3 4; }
svg.timeline circle { stroke: #fff; stroke-width: 1.5; fill: var(--c, #8795a1); }
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
.print-only { display: none; }
footer { max-width: 1120px; margin: 0 auto; padding: 8px 24px 40px; color: var(--muted);
  font-size: 12.5px; }
@media (max-width: 760px) {
  header.page, main, footer { padding-left: 12px; padding-right: 12px; }
  .card { padding: 14px 12px; }
  th, td { padding: 5px 6px; }
  table { font-size: 13px; }
  table.index col.rank { width: 36px; } table.index col.name { width: 110px; }
  table.index col.day { width: 88px; } table.index col.count { width: 68px; }
  table.index col.ads { width: 40px; }
  .index > thead > tr > th { padding: 5px 4px; }
  section.cluster { padding-left: 10px; }
  /* a narrow page sizes the details' columns by their content: codes, numbers
     and dates stay whole, addresses take the rest */
  table.fixed { table-layout: auto; }
  table.fixed td { overflow-wrap: break-word; }
  table.fixed code, table.fixed td.n, table.fixed .nw { white-space: nowrap; }
}
@media print {
  html, body { background: #fff; font-size: 10.5pt; }
  header.page, main, footer { max-width: none; padding: 0; }
  .card { border: none; border-radius: 0; padding: 0; margin: 0 0 18pt; }
  button.show-picture, button.more, button.close, .no-print { display: none !important; }
  button.open { color: inherit; }
  button.open::before, button.open[aria-expanded]::before { content: none; }
  .print-only { display: block; }
  .index > tbody > tr.opened > td { background: none; }
  tr, svg, .stat, ol.route li, dl.facts { break-inside: avoid; }
  tr.detail { break-inside: auto; }
  .cluster-head, h3 { break-after: avoid; }
  thead { display: table-header-group; }
  .chunk { content-visibility: visible; }
  details.long summary::after { content: ""; }
}
"""

SCRIPT = """
(function () {
  "use strict";
  var OPEN_ALL = @OPEN_ALL@, ROWS = @ROWS@, Y0 = @Y0@, Y1 = @Y1@, NC = @NC@;
  var SVG = "http://www.w3.org/2000/svg";
  var UNPACK = "This browser cannot unpack the details of so large a report (it needs " +
    "DecompressionStream: Chrome or Edge 80, Firefox 113, Safari 16.4 or later); " +
    "'imgmatch report --format table' or json gives them.";
  var data = null, loading = null, pictures = null, printed = [], haystacks = [];

  /* The details' data: JSON, or for a large report gzip in base64, unpacked once. */
  function load() {
    if (loading === null) {
      var node = document.getElementById("report-data");
      if (node.getAttribute("data-encoding") !== "gzip") {
        data = JSON.parse(node.textContent);
        loading = Promise.resolve(data);
      } else if (typeof DecompressionStream === "undefined") {
        loading = Promise.reject(new Error(UNPACK));
      } else {
        var text = atob(node.textContent.trim()), bytes = new Uint8Array(text.length);
        for (var i = 0; i < text.length; i++) { bytes[i] = text.charCodeAt(i); }
        var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
        loading = new Response(stream).text().then(function (json) {
          data = JSON.parse(json);
          return data;
        });
      }
    }
    return loading;
  }
  function picture(key) {
    if (pictures === null) {
      var node = document.getElementById("report-thumbs");
      pictures = node ? JSON.parse(node.textContent) : {};
    }
    return Object.prototype.hasOwnProperty.call(pictures, key) ? pictures[key] : null;
  }

  /* DOM helpers: data only ever becomes text nodes or attribute values. */
  function add(parent, child) {
    if (child === null || child === undefined) { return; }
    parent.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
  function h(tag, cls, children) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (children !== undefined) {
      (Array.isArray(children) ? children : [children]).forEach(function (c) { add(e, c); });
    }
    return e;
  }
  function svg(tag, attrs, text) {
    var e = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function x(index) { return index === null || index === undefined ? null : data.x[index]; }
  function colour(p) { return p !== null && p !== undefined && p >= 0 ? "c" + (p % NC) : "cx"; }
  function dot(p) { return h("span", "dot " + colour(p)); }
  /* A platform on one line, its colour dot before it (cut, with a tooltip, if long). */
  function stop(p) {
    var name = platform(p), e = h("span", "s " + colour(p), name);
    if (name.length > 24) { e.title = name; }
    return e;
  }
  function platform(p) { return p !== null && p !== undefined && p >= 0 ? data.p[p] : null; }
  function address(v) { return Array.isArray(v) ? x(v[0]) + v[1] : v; }
  function short(key) {
    if (!key) { return "?"; }
    var at = key.indexOf(":");
    return at >= 0 ? key.slice(0, at + 13) : key.slice(0, 12);
  }
  function num(n) { return typeof n === "number" ? n.toLocaleString("en-US") : n; }

  /* Break long addresses after '/', '?', '&', '=' and the like, never inside a word. */
  var SEPARATOR = /[\\/?&=#.,;:_~+-]/;
  function breakable(text) {
    var f = document.createDocumentFragment(), start = 0;
    if (text.length <= 4000) {
      for (var i = 0; i + 1 < text.length; i++) {
        if (SEPARATOR.test(text[i]) && !SEPARATOR.test(text[i + 1])) {
          f.appendChild(document.createTextNode(text.slice(start, i + 1)));
          f.appendChild(document.createElement("wbr"));
          start = i + 1;
        }
      }
    }
    f.appendChild(document.createTextNode(text.slice(start)));
    return f;
  }
  function long(text, limit, breaks) {
    text = String(text);
    var shown = function (t) { return breaks ? breakable(t) : document.createTextNode(t); };
    if (text.length <= limit) { return shown(text); }
    var summary = h("summary", null, [shown(text.slice(0, limit)), "\\u2026 ",
                                      h("span", "note", num(text.length) + " characters")]);
    var d = h("details", "long", summary);
    d.appendChild(shown(text));
    return d;
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function date(minutes) { return new Date(minutes * 60000); }
  function ymd(d) {
    var y = d.getUTCFullYear();
    return (y >= 0 && y < 1000 ? ("000" + y).slice(-4) : y) + "-" + pad(d.getUTCMonth() + 1) +
      "-" + pad(d.getUTCDate());
  }
  function hm(d) { return pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()); }
  function utc(year, month) {
    var d = new Date(0);
    d.setUTCFullYear(year, month, 1);
    return d.getTime() / 60000;
  }
  /* A stored time: minutes since 1970 (UTC), or the text that could not be read. */
  function when(v, time) {
    if (v === null || v === undefined) { return "\\u2013"; }
    if (typeof v !== "number") { return long(v, 32); }
    var d = date(v), out = h("span", null, h("span", "nw", ymd(d)));
    if (time && (d.getUTCHours() || d.getUTCMinutes())) {
      add(out, " ");
      out.appendChild(h("span", "nw", hm(d)));
    }
    return out;
  }
  function seen(s) { return s[2] !== null && s[2] !== undefined ? s[2] : s[3]; }

  function imageName(c, index) {
    var key = index >= 0 && c.i[index] ? c.i[index][0] : null;
    if (key) {
      var code = h("code", null, short(key));
      code.title = key;
      return code;
    }
    var hashOnly = c.i.filter(function (im) { return im[0] && im[0].indexOf(":") >= 0; });
    return h("span", "note", hashOnly.length ? "imported hash (one of " + hashOnly.length + ")"
                                             : "?");
  }

  /* A table whose first ROWS rows are drawn now, the rest on request. */
  function table(cls, headers, rows, row) {
    var t = h("table", cls + " fixed"), colgroup = h("colgroup"), tr = h("tr");
    headers.forEach(function (head) {
      colgroup.appendChild(h("col"));
      tr.appendChild(h("th", head[1] ? "n" : null, head[0]));
    });
    t.appendChild(colgroup);
    t.appendChild(h("thead", null, tr));
    var body = h("tbody");
    t.appendChild(body);
    var out = h("div", null, h("div", "wrap", t));
    function draw(from, to) {
      for (var i = from; i < to; i++) { body.appendChild(row(rows[i], i)); }
    }
    draw(0, Math.min(rows.length, ROWS));
    if (rows.length > ROWS) {
      var more = h("button", "more", "show all " + num(rows.length));
      more.type = "button";
      var note = h("span", "note", num(ROWS) + " of " + num(rows.length) + " shown");
      var p = h("p", "more", [more, note]);
      more._rest = function () { draw(ROWS, rows.length); p.remove(); };
      out.appendChild(p);
    }
    return out;
  }

  function ticks(start, end) {
    var a = date(start), b = date(end), step = 240, steps = [1, 2, 3, 6, 12, 24, 60, 120];
    var months = (b.getUTCFullYear() - a.getUTCFullYear()) * 12 + b.getUTCMonth() -
      a.getUTCMonth() + 1;
    for (var i = 0; i < steps.length; i++) {
      if (months / steps[i] <= 8) { step = steps[i]; break; }
    }
    var index = a.getUTCFullYear() * 12 + a.getUTCMonth(), out = [];
    index += ((-index % step) + step) % step;
    for (;;) {
      var year = Math.floor(index / 12), month = index % 12, t = utc(year, month);
      if (t > end) { return out; }
      if (t >= start) { out.push([t, step >= 12 ? String(year) : year + "-" + pad(month + 1)]); }
      index += step;
    }
  }

  function timeline(c) {
    var dated = [], undated = 0;
    c.s.forEach(function (s) {
      var t = seen(s);
      if (typeof t === "number") {
        var year = date(t).getUTCFullYear();
        if (year >= Y0 && year <= Y1) { dated.push({t: t, s: s}); return; }
      }
      undated += 1;
    });
    var out = document.createDocumentFragment();
    if (!dated.length) {
      out.appendChild(h("p", "note", "No sighting of this picture has a usable date."));
      return out;
    }
    dated.sort(function (a, b) { return a.t - b.t; });
    var rows = c.r.map(function (r) { return r[0]; }), others = [];
    dated.forEach(function (d) {
      var p = d.s[1] === undefined || d.s[1] === null ? -1 : d.s[1];
      if (rows.indexOf(p) < 0 && others.indexOf(p) < 0) { others.push(p); }
    });
    others.sort(function (a, b) {
      var na = platform(a) || "", nb = platform(b) || "";
      return na < nb ? -1 : na > nb ? 1 : 0;
    });
    rows = rows.concat(others);
    var first = dated[0].t, last = dated[dated.length - 1].t;
    var padding = Math.max((last - first) * 0.04, 3 * 1440), start = first - padding,
        end = last + padding, total = end - start;
    var width = 880, left = 150, right = 20, top = 14, rowH = 30,
        height = top + rowH * rows.length + 34, axis = top + rowH * rows.length + 4;
    function X(t) { return (left + (width - left - right) * (t - start) / total).toFixed(1); }
    function Y(p) {
      return (top + rowH * rows.indexOf(p === undefined || p === null ? -1 : p) +
              rowH / 2).toFixed(1);
    }
    var chart = svg("svg", {"class": "timeline", viewBox: "0 0 " + width + " " + height,
                            role: "img", "aria-label": "Timeline of cluster " + c.id + ": " +
                            dated.length + " dated sightings on " + rows.length + " platforms"});
    /* The first and last sightings get their own dated ticks; month ticks too
       close to them are left out. */
    var edges = [first];
    if (X(last) - X(first) >= 84) { edges.push(last); }
    ticks(start, end).forEach(function (tick) {
      var at = X(tick[0]);
      chart.appendChild(svg("line", {"class": "grid", x1: at, x2: at, y1: top - 4, y2: axis}));
      if (edges.every(function (e) { return Math.abs(X(e) - at) >= 62; })) {
        chart.appendChild(svg("text", {"class": "tick", x: at, y: axis + 16,
                                       "text-anchor": "middle"}, tick[1]));
      }
    });
    edges.forEach(function (e) {
      var at = X(e);
      chart.appendChild(svg("line", {"class": "edge", x1: at, x2: at, y1: top - 4, y2: axis}));
      chart.appendChild(svg("text", {"class": "tick edge", x: at, y: axis + 16,
                                     "text-anchor": "middle"}, ymd(date(e))));
    });
    rows.forEach(function (p) {
      var name = platform(p) || "no platform", y = Y(p);
      chart.appendChild(svg("line", {"class": "base", x1: left, x2: width - right, y1: y,
                                     y2: y}));
      var label = svg("text", {"class": "row", x: left - 10, y: (+y + 4).toFixed(1),
                               "text-anchor": "end"},
                      name.length <= 20 ? name : name.slice(0, 19) + "\\u2026");
      label.appendChild(svg("title", {}, name));
      chart.appendChild(label);
    });
    /* The picture's path through time: every dated sighting, in order. */
    if (dated.length > 1) {
      chart.appendChild(svg("polyline", {points: dated.map(function (d) {
        return X(d.t) + "," + Y(d.s[1]);
      }).join(" ")}));
    }
    dated.forEach(function (d) {
      var s = d.s, at = date(d.t), name = platform(s[1]);
      var key = s[0] >= 0 && c.i[s[0]] ? c.i[s[0]][0] : null;
      var tip = [ymd(at) + " " + hm(at) + " UTC", name || "no platform",
                 s[4] ? "ad " + s[4] : "", address(s[5]) || address(s[6]) || "",
                 "image " + short(key)].filter(Boolean).join(" \\u00b7 ");
      var dotEl = svg("circle", {cx: X(d.t), cy: Y(s[1]), r: 6, "class": colour(s[1])});
      dotEl.appendChild(svg("title", {}, tip.length <= 400 ? tip : tip.slice(0, 399) + "\\u2026"));
      chart.appendChild(dotEl);
    });
    out.appendChild(h("div", "wrap", chart));
    if (undated) {
      out.appendChild(h("p", "note", undated + " sighting" + (undated !== 1 ? "s" : "") +
                                     " without a usable date not shown."));
    }
    return out;
  }

  function imagesTable(c, token) {
    var counts = c.i.map(function () { return 0; });
    var firsts = c.i.map(function () { return null; });
    c.s.forEach(function (s) {
      if (s[0] < 0) { return; }
      counts[s[0]] += 1;
      var t = seen(s);
      if (typeof t === "number" && (firsts[s[0]] === null || t < firsts[s[0]])) {
        firsts[s[0]] = t;
      }
    });
    return table("images", [["Image"], ["Size"], ["Format"], ["Bytes", 1], ["Sightings", 1],
                            ["First seen"], ["Picture"]], c.i, function (im, n) {
      var size = im[1] !== null && im[1] !== undefined ? im[1] + "\\u00d7" + im[2] : "\\u2013";
      var format = (x(im[3]) || "\\u2013") + (im[4] ? ", " + im[4] + " frames" : "");
      var pictureCell = h("td");
      if (im[6]) {
        var id = "pic-" + token + "-" + n;
        var button = h("button", "show-picture", "show picture");
        button.type = "button";
        button.setAttribute("aria-controls", id);
        button.setAttribute("aria-expanded", "false");
        button._key = im[0];
        var img = h("img", "thumb");
        img.id = id;
        img.alt = "picture " + short(im[0]);
        img.hidden = true;
        pictureCell.appendChild(button);
        pictureCell.appendChild(img);
      } else {
        pictureCell.appendChild(h("span", "note", "\\u2013"));
      }
      return h("tr", null, [h("td", null, imageName(c, n)), h("td", null, h("span", "nw", size)),
                            h("td", null, format),
                            h("td", "n", im[5] !== null && im[5] !== undefined ? num(im[5])
                                                                               : "\\u2013"),
                            h("td", "n", counts[n]), h("td", "when", when(firsts[n], false)),
                            pictureCell]);
    });
  }

  function sightingsTable(c) {
    return table("sightings", [["When"], ["Platform"], ["Ad"], ["Page and image address"],
                               ["Image"], ["Other fields"]], c.s, function (s) {
      var whenCell = h("td", "time", when(seen(s), true));
      var posted = s[2] !== null && s[2] !== undefined, collected = s[3] !== null &&
        s[3] !== undefined;
      if (posted && collected) {
        whenCell.appendChild(h("br"));
        whenCell.appendChild(h("span", "note", ["collected ", when(s[3], true)]));
      } else if (!posted && collected) {
        whenCell.appendChild(h("br"));
        whenCell.appendChild(h("span", "note", "(collected)"));
      }
      var where = h("td");
      [["page", s[5]], ["image", s[6]], ["file", s[7]]].forEach(function (part) {
        var text = address(part[1]);
        if (text) {
          where.appendChild(h("div", "url mono", [h("span", "tag", part[0]),
                                                  long(text, @LONG@, true)]));
        }
      });
      if (!where.firstChild) { add(where, "\\u2013"); }
      var other = h("td"), extra = s[8] || [];
      for (var i = 0; i + 1 < extra.length; i += 2) {
        var field = c.f[extra[i]];
        other.appendChild(h("div", null, [h("span", "note", [long(field[0], 40), ":"]), " ",
                                          long(field[1][extra[i + 1]], 120)]));
      }
      if (!other.firstChild) { add(other, "\\u2013"); }
      var name = platform(s[1]);
      return h("tr", null, [whenCell, h("td", "platform", name ? stop(s[1]) : "\\u2013"),
                            h("td", null, s[4] ? long(s[4], 40) : "\\u2013"), where,
                            h("td", null, imageName(c, s[0])), other]);
    });
  }

  function linksTable(c) {
    return table("links", [["Image A"], ["Image B"], ["Score", 1], ["Signals that agree"],
                           ["Hash distances (bits)"], ["Geometric check"], ["Transform"]],
                 c.l, function (l) {
      var agreed = x(l[3]) || [], chips = h("td");
      agreed.forEach(function (a) { chips.appendChild(h("span", "chip", a)); });
      if (!agreed.length) { add(chips, "none"); }
      var keys = x(l[4]), distances = "\\u2013";
      if (keys && Array.isArray(l[5])) {
        distances = keys.map(function (k, i) { return k + " " + l[5][i]; }).join(", ");
      } else if (typeof l[5] === "string" && l[5]) {
        distances = l[5];
      }
      /* 'orb' agreeing means the pair was verified geometrically (local features). */
      var verified = agreed.indexOf("orb") >= 0, inliers = l[6];
      var check = verified ? (typeof inliers === "number" ? "\\u2713 " + num(inliers) +
                                                            " inliers" : "\\u2713 verified")
                           : (typeof inliers === "number" ? num(inliers) +
                                                            " inliers, not verified" : "\\u2013");
      var score = typeof l[2] === "number" ? l[2].toFixed(2) : (l[2] || "\\u2013");
      return h("tr", null, [h("td", null, imageName(c, l[0])), h("td", null, imageName(c, l[1])),
                            h("td", "n", score), chips, h("td", null, distances),
                            h("td", "geometry", check), h("td", null, x(l[7]) || "\\u2013")]);
    });
  }

  function detail(c, rank, token) {
    var section = h("section", "cluster");
    section.setAttribute("data-cluster-id", String(c.id));
    section.setAttribute("aria-labelledby", "detail-" + token + "-title");
    var title = h("h2", null, [h("span", "rank", "#" + rank), "Cluster " + c.id]);
    title.id = "detail-" + token + "-title";
    var chips = h("div");
    c.p.forEach(function (p) { chips.appendChild(h("span", "chip", [dot(p), platform(p)])); });
    var close = h("button", "close", "close");
    close.type = "button";
    section.appendChild(h("div", "cluster-head", [title, chips, close]));

    var facts = h("dl", "facts");
    [["First seen", long(c.k[0], 32)], ["Last seen", long(c.k[1], 32)], ["Span", c.k[2]],
     ["Platforms", c.p.length], ["Images", num(c.i.length)], ["Sightings", num(c.s.length)],
     ["Ads", num(c.k[3])], ["URLs", num(c.k[4])]].forEach(function (f) {
      facts.appendChild(h("div", null, [h("dt", null, f[0]), h("dd", null, f[1])]));
    });
    section.appendChild(facts);

    if (c.r.length) {
      section.appendChild(h("h3", null, "Route: the order in which platforms saw it"));
      var route = h("ol", "route");
      c.r.forEach(function (r) {
        if (r[2] !== null && r[2] !== undefined) {
          var gap = h("li", "gap", "\\u2192 " + r[2] + " later \\u2192");
          gap.setAttribute("aria-label", "then");
          route.appendChild(gap);
        }
        route.appendChild(h("li", "stop", [dot(r[0]), h("b", null, platform(r[0])),
                                           h("span", "when", long(r[1], 32))]));
      });
      section.appendChild(route);
    }

    if (c.f.length) {
      section.appendChild(h("h3", null, "Metadata values"));
      var fields = h("dl", "fields");
      c.f.forEach(function (f) {
        var dd = h("dd");
        f[1].forEach(function (v) {
          dd.appendChild(v.length <= 120 ? h("span", "chip", v)
                                         : h("div", "chip block", long(v, 120)));
        });
        if (!f[1].length) { add(dd, "\\u2013"); }
        fields.appendChild(h("dt", null, long(f[0], 60)));
        fields.appendChild(dd);
      });
      section.appendChild(fields);
    }

    if (c.w && c.w.length) {
      section.appendChild(h("h3", null, "On partners' watchlists"));
      var watched = h("dl", "fields");
      c.w.forEach(function (w) {
        watched.appendChild(h("dt", null, [long(w[0], 60), w[6] ? " (negative list)" : ""]));
        var dd = h("dd");
        [w[3], w[1] ? "shared by " + w[1] : "source not given",
         w[2] ? "terms: " + w[2] : "terms not given",
         w[4] + " bits from image " + (w[5] >= 0 ? String(c.i[w[5]][0]).slice(0, 16) : "?")
        ].forEach(function (v) {
          dd.appendChild(h("span", "chip", long(String(v), 120)));
        });
        watched.appendChild(dd);
      });
      section.appendChild(watched);
    }

    section.appendChild(h("h3", null, "Timeline"));
    section.appendChild(timeline(c));
    section.appendChild(h("h3", null, "Images (" + num(c.i.length) + ")"));
    section.appendChild(imagesTable(c, token));
    section.appendChild(h("h3", null, "Sightings (" + num(c.s.length) + ")"));
    section.appendChild(sightingsTable(c));
    if (c.l.length) {
      section.appendChild(h("h3", null, "Near-duplicate links (" + num(c.l.length) + ")"));
      section.appendChild(linksTable(c));
    } else {
      section.appendChild(h("h3", null, "Links"));
      section.appendChild(h("p", "note", "One image, seen more than once: no near-duplicate " +
                                         "links."));
    }
    return section;
  }

  var allRows = null;
  function rows() {
    if (allRows === null) {
      allRows = Array.prototype.slice.call(
        document.querySelectorAll('table.index tr[id^="cluster-"]'));
    }
    return allRows;
  }
  function isOpen(row) { return row.classList.contains("opened"); }
  function detailOf(row) {
    var next = row.nextElementSibling;
    return next && next.classList.contains("detail") ? next : null;
  }
  function setOpen(row, open) {
    var button = row.querySelector("button.open"), detailRow = detailOf(row);
    if (open && !detailRow) {
      var index = rows().indexOf(row), token = row.id.slice(8);
      detailRow = h("tr", "detail");
      detailRow.id = "detail-" + token;
      var cell = h("td", null, h("p", "note", "\u2026"));
      cell.colSpan = row.cells.length;
      detailRow.appendChild(cell);
      row.parentNode.insertBefore(detailRow, row.nextElementSibling);
      button.setAttribute("aria-controls", detailRow.id);
      var draw = function () {
        cell.textContent = "";
        cell.appendChild(detail(data.c[index], index + 1, token));
      };
      if (data !== null) {
        draw();
      } else {
        load().then(draw, function () {
          cell.textContent = "";
          cell.appendChild(h("p", "note", UNPACK));
        });
      }
    }
    if (detailRow) { detailRow.hidden = !open || row.hidden; }
    button.setAttribute("aria-expanded", open ? "true" : "false");
    row.classList.toggle("opened", open);
  }

  /* Finding: details are drawn on demand, so the browser's own search cannot see
     them; this looks through every cluster's data and keeps the rows that match. */
  function haystack(index) {
    if (haystacks[index] === undefined) {
      var c = data.c[index], parts = [String(c.id)];
      c.p.forEach(function (p) { parts.push(platform(p)); });
      c.f.forEach(function (f) { parts.push(f[0]); parts = parts.concat(f[1]); });
      c.i.forEach(function (im) { if (im[0]) { parts.push(im[0]); } });
      c.s.forEach(function (s) {
        [s[2], s[3]].forEach(function (t) {
          parts.push(typeof t === "number" ? ymd(date(t)) : t);
        });
        parts.push(s[4], address(s[5]), address(s[6]), s[7]);
      });
      haystacks[index] = parts.filter(function (t) { return t; }).join("\\n").toLowerCase();
    }
    return haystacks[index];
  }
  var finding = 0;
  function find(query) {
    var asked = ++finding;
    query = query.trim().toLowerCase();
    var found = document.getElementById("found");
    if (!query) {
      rows().forEach(function (row) { showRow(row, true); });
      found.textContent = "";
      return;
    }
    load().then(function () {
      if (asked !== finding) { return; }
      var n = 0;
      rows().forEach(function (row, index) {
        var hit = haystack(index).indexOf(query) >= 0;
        n += hit ? 1 : 0;
        showRow(row, hit);
      });
      found.textContent = n + " of " + rows().length + " clusters hold \u201c" + query +
        "\u201d.";
    }, function () { found.textContent = UNPACK; });
  }
  function showRow(row, shown) {
    row.hidden = !shown;
    var detailRow = detailOf(row);
    if (detailRow) { detailRow.hidden = !shown || !isOpen(row); }
  }
  var findBox = document.getElementById("find"), findTimer = null;
  if (findBox) {
    findBox.addEventListener("input", function () {
      clearTimeout(findTimer);
      findTimer = setTimeout(function () { find(findBox.value); }, 200);
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target instanceof Element ? event.target.closest("button") : null;
    if (!button) { return; }
    var row;
    if (button.classList.contains("open")) {
      row = button.closest("tr");
      setOpen(row, !isOpen(row));
    } else if (button.classList.contains("close")) {
      row = button.closest("tr.detail").previousElementSibling;
      setOpen(row, false);
      row.querySelector("button.open").focus();
    } else if (button.classList.contains("more")) {
      button._rest();
    } else if (button.id === "open-all" || button.id === "close-all") {
      rows().forEach(function (r) { setOpen(r, button.id === "open-all"); });
    } else if (button.classList.contains("show-picture")) {
      var img = document.getElementById(button.getAttribute("aria-controls"));
      if (!img) { return; }
      if (img.hasAttribute("src")) {
        img.removeAttribute("src");
        img.hidden = true;
        button.textContent = "show picture";
        button.setAttribute("aria-expanded", "false");
      } else {
        var jpeg = picture(button._key);
        if (!jpeg) { return; }
        img.setAttribute("src", "data:image/jpeg;base64," + jpeg);
        img.hidden = false;
        button.textContent = "hide picture";
        button.setAttribute("aria-expanded", "true");
      }
    }
  });

  function openFromAddress() {
    var id;
    try { id = decodeURIComponent(location.hash.slice(1)); } catch (e) { return; }
    var row = id.indexOf("cluster-") === 0 ? document.getElementById(id) : null;
    if (row && rows().indexOf(row) >= 0) {
      setOpen(row, true);
      row.scrollIntoView();
    }
  }
  window.addEventListener("hashchange", openFromAddress);
  openFromAddress();

  /* A print of a small report has every cluster in full. */
  window.addEventListener("beforeprint", function () {
    var all = rows();
    if (all.length > OPEN_ALL) { return; }
    load().catch(function () { return null; });
    all.forEach(function (r) {
      if (!isOpen(r)) { setOpen(r, true); printed.push(r); }
    });
  });
  window.addEventListener("afterprint", function () {
    printed.forEach(function (r) { setOpen(r, false); });
    printed = [];
  });
})();
""".replace("@OPEN_ALL@", str(OPEN_ALL_LIMIT)).replace("@ROWS@", str(ROWS_SHOWN)).replace(
    "@Y0@", str(PLOTTED_YEARS[0])).replace("@Y1@", str(PLOTTED_YEARS[1])).replace(
    "@NC@", str(len(PALETTE))).replace("@LONG@", str(LONG_TEXT))


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


def _utc(text: str | None) -> datetime | None:
    """A stored time in UTC, or None when it cannot be read (or leaves the calendar)."""
    when = parse_utc(text)
    try:
        return None if when is None else when.astimezone(timezone.utc)
    except OverflowError:
        return None


def _ymd(when: datetime) -> str:
    """A day as YYYY-MM-DD, in UTC where the calendar allows (strftime's %Y drops
    the zeros of year 1)."""
    try:
        when = when.astimezone(timezone.utc)
    except OverflowError:
        pass
    return when.date().isoformat()


def _day(text: str | None) -> str:
    """A stored time's day as HTML ('2023-02-11'), or the raw text escaped."""
    if not text:
        return "–"
    when = _utc(text)
    return _long(text, 32) if when is None else when.date().isoformat()


def _day_text(text: str | None) -> str:
    """A stored time's day as plain text, or the raw text made printable."""
    if not text:
        return "–"
    when = _utc(text)
    return printable(text) if when is None else when.date().isoformat()


def _days(value: float | None) -> str:
    if value is None:
        return "? days"
    if abs(value) < 1:
        return f"{value * 24:.0f} hours"
    return f"{value:,.0f} days" if abs(value) >= 10 else f"{value:.1f} days"


def _span_days(first: str | None, last: str | None) -> float | None:
    a, b = parse_utc(first), parse_utc(last)
    return None if a is None or b is None else (b - a).total_seconds() / 86400


def cid_token(value: object) -> str:
    """A cluster id as a safe HTML id fragment."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(value))


def _dot(rank_of: dict[str, int], platform: str | None) -> str:
    # The colour is ours (a class by platform rank), never the data's.
    rank = rank_of.get(platform or "")
    return f'<span class="dot {"cx" if rank is None else f"c{rank % len(PALETTE)}"}"></span>'


# ---------------------------------------------------------------- the file
def write_html(clusters: Sequence[Cluster], out: TextIO, *,
               thumbnails: dict[str, bytes] | None = None,
               title: str = "imgmatch reuse report", generated_at: str | None = None,
               made_with: dict | None = None) -> None:
    """Write the report. ``thumbnails`` maps an image's sha256 to JPEG bytes
    shown (on request) beside it; anything that is not a JPEG is left out.
    Every thumbnail given is embedded, so the caller decides which to give."""
    platforms = sorted({p for c in clusters for p in c.platforms})
    rank_of = {p: i for i, p in enumerate(platforms)}
    data, pictures = _data(clusters, platforms, rank_of, thumbnails or {})
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
    if made_with:
        w(f"Made with {esc(describe(made_with))}. ")
    w("A self-contained file: nothing in it loads from the network, and web addresses "
      "from the data are shown as text, not links. Times are UTC; a sighting's time is "
      "when it was posted, else when it was collected.</p>")
    if pictures:
        w(f'<p class="note pictures"><strong>This file contains {len(pictures):,} '
          f'{"picture" if len(pictures) == 1 else "pictures"}</strong> (small thumbnails, '
          "each hidden until its \u201cshow picture\u201d button is pressed). They may show "
          "victims: keep and share this file as you would the pictures themselves.</p>")
    else:
        w('<p class="note pictures">This file contains no pictures, only text '
          "(imgmatch report --thumbnails adds the thumbnails stored at ingest).</p>")
    w("</header>\n<main>\n")
    _summary(clusters, platforms, rank_of, w)
    _index(clusters, rank_of, w)
    w("</main>\n<footer>Written by imgmatch. Pictures are shown only on request; "
      "printing leaves hidden pictures out.</footer>\n")
    w(_data_block(data))
    if pictures:
        w(f'<script type="application/json" id="report-thumbs">{_json(pictures)}</script>\n')
    w(f"<script>{SCRIPT}</script>\n</body>\n</html>\n")


def _data_block(data: dict) -> str:
    """The details' data as a script data block: JSON, or when large its gzip in base64
    (deterministic: no time stamp in the gzip header)."""
    text = _json(data)
    if len(text) <= PLAIN_DATA_LIMIT:
        return f'<script type="application/json" id="report-data">{text}</script>\n'
    packed = base64.b64encode(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))
    return (f'<script type="text/plain" id="report-data" data-encoding="gzip">'
            f'{packed.decode("ascii")}</script>\n')


def _json(value: object) -> str:
    """Compact JSON that cannot end its script element: '<', '>' and '&' escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ------------------------------------------------------------------ summary
def _summary(clusters: Sequence[Cluster], platforms: list[str], rank_of: dict[str, int],
             w: Callable[[str], object]) -> None:
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
        w(f'<div class="stat wide"><span class="num">{_ymd(times[0])} → '
          f'{_ymd(times[-1])}</span><span class="lbl">first and last sighting, '
          f"{_days(span)} apart</span></div>\n")
    w("</div>\n")
    if not clusters:
        w('<p class="note">No picture was seen more than the report asks for.</p>\n'
          "</section>\n")
        return

    # Platforms: how many clusters and sightings each, first and last seen.
    per_platform: dict[str, dict] = {p: {"clusters": 0, "cross": 0, "sightings": 0,
                                         "times": []} for p in platforms}
    for c in clusters:
        for p in c.platforms:
            per_platform[p]["clusters"] += 1
            per_platform[p]["cross"] += len(c.platforms) > 1
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
        ts = sorted(info["times"])
        w(f'<tr><td>{_dot(rank_of, p)}{esc(p)}</td><td class="n">{info["clusters"]:,}</td>'
          f'<td class="n">{info["cross"]:,}</td><td class="n">{info["sightings"]:,}</td>'
          f'<td class="when">{_ymd(ts[0]) if ts else "–"}</td>'
          f'<td class="when">{_ymd(ts[-1]) if ts else "–"}</td></tr>\n')
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
        w(f"<tr><td>{_dot(rank_of, p)}{esc(p) if p else '<i>no platform</i>'}</td>")
        for y in years:
            n = counts.get((p, y), 0)
            w(f'<td class="n{" zero" if not n else ""}">{n}</td>')
        w(f'<td class="n"><b>{sum(counts.get((p, y), 0) for y in years)}</b></td></tr>\n')
    w("<tr><td><b>All platforms</b></td>")
    for y in years:
        w(f'<td class="n"><b>{sum(counts.get((p, y), 0) for p in rows)}</b></td>')
    w(f'<td class="n"><b>{len(sightings)}</b></td></tr>\n</tbody></table></div>\n</section>\n')


# -------------------------------------------------------------------- index
_INDEX_COLUMNS = ('<colgroup><col class="rank"><col class="name"><col><col class="day">'
                  '<col class="day"><col class="count"><col class="count"><col class="ads">'
                  "</colgroup>")


def _index(clusters: Sequence[Cluster], rank_of: dict[str, int],
           w: Callable[[str], object]) -> None:
    """The clusters in rank order, one row each; a row opens to its details.

    Rows come in tables of :data:`INDEX_CHUNK` that share their column widths,
    so the browser lays out only the ones in view."""
    if not clusters:
        return
    w('<section class="card" id="clusters" aria-labelledby="clusters-title">\n'
      '<div class="section-head"><h2 id="clusters-title">Clusters</h2>'
      '<div class="tools no-print"><input type="search" id="find" autocomplete="off" '
      'spellcheck="false" placeholder="Find in every cluster: phone, address, ad, hash…" '
      'aria-label="Find clusters by any text in their details">')
    if len(clusters) <= OPEN_ALL_LIMIT:
        w('<button type="button" class="tool" id="open-all">open all</button>'
          '<button type="button" class="tool" id="close-all">close all</button>')
    w('</div></div>\n<p class="note">Ranked by platforms seen, then span, then sightings. '
      'Open a cluster for its route, timeline, images, sightings and links. '
      '<span id="found" role="status"></span></p>\n')
    if len(clusters) > OPEN_ALL_LIMIT:
        w(f'<p class="note print-only">This print shows every cluster\'s row and, in full, '
          f"the clusters that were open (a report of more than {OPEN_ALL_LIMIT} clusters "
          "is not printed whole).</p>\n")
    w('<noscript><p class="note">A cluster\'s details need JavaScript; the summary and this '
      "index are complete without it, and 'imgmatch report --format table' (or json) "
      "gives every detail.</p></noscript>\n")
    for start in range(0, len(clusters), INDEX_CHUNK):
        w(f'<div class="wrap chunk"><table class="index">{_INDEX_COLUMNS}\n')
        if not start:
            w("<thead><tr><th>#</th><th>Cluster</th><th>Platforms, in the order they saw it"
              "</th><th>First seen</th><th>Last seen</th><th>Images</th><th>Sightings</th>"
              "<th>Ads</th></tr></thead>\n")
        w("<tbody>\n")
        for rank, c in enumerate(clusters[start:start + INDEX_CHUNK], start=start + 1):
            order = [p for p, _ in c.platform_order]
            order += [p for p in c.platforms if p not in order]
            route = " → ".join(_stop(rank_of, p) for p in order) or "–"
            w(f'<tr id="cluster-{cid_token(c.id)}"><td>{rank}</td><td><button class="open" '
              f'aria-expanded="false">cluster {esc(c.id)}</button></td><td class="route">'
              f"{route}</td><td>{_day(c.first_seen)}</td><td>{_day(c.last_seen)}</td>"
              f"<td>{len(c.images)}</td><td>{len(c.sightings)}</td><td>{c.ads}</td></tr>\n")
        w("</tbody></table></div>\n")
    w("</section>\n")


def _stop(rank_of: dict[str, int], platform: str) -> str:
    """One platform of a route, its colour dot before it, kept on one line (cut,
    with a tooltip, if very long)."""
    name = printable(platform)
    tip = f' title="{html.escape(name, quote=True)}"' if len(name) > 24 else ""
    rank = rank_of.get(platform)
    colour = "cx" if rank is None else f"c{rank % len(PALETTE)}"
    return f'<span class="s {colour}"{tip}>{html.escape(name)}</span>'


# --------------------------------------------------------------- the details
class _Shared:
    """Values that repeat across a report (URL folders, formats, signal lists),
    stored once in the data and referred to by position."""

    def __init__(self) -> None:
        self.values: list[object] = []
        self._at: dict[object, int] = {}

    def __call__(self, value: str | list[str]) -> int:
        key = value if isinstance(value, str) else ("list", *value)
        at = self._at.get(key)
        if at is None:
            at = self._at[key] = len(self.values)
            self.values.append(value)
        return at


def _data(clusters: Sequence[Cluster], platforms: list[str], rank_of: dict[str, int],
          thumbnails: dict[str, bytes]) -> tuple[dict, dict[str, str]]:
    """The details of every cluster as compact JSON, and the thumbnails (base64) by image.

    ``{"p": platforms, "x": shared values, "c": clusters}``, each cluster
    ``{"id", "p": its platforms, "k": [first seen, last seen, span, ads, urls],
    "r": route, "f": metadata values, "i": images, "s": sightings, "l": links,
    "w": watchlist hits}``
    (see :func:`_cluster`). Times are minutes since 1970 (UTC), or the text
    when it cannot be read.
    """
    shared = _Shared()
    pictures: dict[str, str] = {}
    out = [_cluster(c, rank_of, shared, thumbnails, pictures) for c in clusters]
    return {"p": [printable(p) for p in platforms], "x": shared.values, "c": out}, pictures


def _cluster(c: Cluster, rank_of: dict[str, int], shared: _Shared,
             thumbnails: dict[str, bytes], pictures: dict[str, str]) -> dict:
    """One cluster's details.

    - route ``[[platform, day, gap before it or null]]``;
    - metadata values ``[[field, [values]]]``;
    - images ``[name (sha256 or signal:hex), width, height, format, frames,
      bytes, has a picture]``;
    - sightings ``[image, platform, posted, collected, ad, page, url, file,
      [field, value, ...]]`` (image, platform, field and value by position;
      -1 when not known; an address is text or [shared folder, rest]);
    - links ``[image a, image b, score, agreed, distance names, distances,
      inliers, transform]``.

    Trailing empty values are left off every row.
    """
    names = ClusterNames(c)
    position = {key: i for i, key in enumerate(names.keys) if key}

    def image_of(sha256: object) -> int:
        key = names.key(sha256)
        return position.get(key, -1) if key else -1

    images = []
    for img, key in zip(c.images, names.keys):
        sha = img.get("sha256")
        jpeg = thumbnails.get(sha) if isinstance(sha, str) else None
        if not isinstance(jpeg, (bytes, bytearray)) or bytes(jpeg[:3]) != _JPEG_MAGIC:
            jpeg = None  # not a JPEG: never embedded
        picture = jpeg is not None
        if jpeg is not None and key:
            pictures[printable(key)] = base64.b64encode(bytes(jpeg)).decode("ascii")
        frames, nbytes = img.get("frames"), img.get("size_bytes")
        images.append(_trim([
            printable(key) if key else None, _value(img.get("width")),
            _value(img.get("height")),
            shared(printable(img["format"])) if img.get("format") else None,
            frames if isinstance(frames, int) and frames > 1 else None,
            nbytes if isinstance(nbytes, int) and not isinstance(nbytes, bool) else None,
            1 if picture and key else None]))

    values = c.field_values()
    fields = [[printable(name), [printable(v) for v in found]] for name, found in values.items()]
    field_at = {name: i for i, name in enumerate(values)}
    value_at = {name: {v: i for i, v in enumerate(found)} for name, found in values.items()}

    sightings = []
    for s in c.sightings:
        extra = []
        for k, v in sorted((s.extra or {}).items(), key=lambda kv: str(kv[0])):
            if v is None or v == "":
                continue
            name = str(k)
            extra += [field_at[name], value_at[name][_text(v)]]
        located = s.page_url or s.url
        sightings.append(_trim([
            image_of(s.sha256), rank_of.get(s.platform, -1) if s.platform else -1,
            _stamp(s.posted_at), _stamp(s.collected_at),
            printable(s.ad_id) if s.ad_id else None, _address(s.page_url, shared),
            _address(s.url, shared) if s.url != s.page_url else None,
            printable(s.source) if s.source and not located else None, extra]))

    links = []
    for link in c.links:
        agreed = [printable(a) for a in link.get("agreed") or ()]
        distances = link.get("distances") or {}
        if isinstance(distances, dict):
            bits = [(printable(k), v) for k, v in distances.items() if k != "inliers"]
            names_at = shared([k for k, _ in bits]) if bits else None
            shown: object = [_value(v) for _, v in bits] if bits else None
        else:
            names_at, shown = None, printable(distances)
        links.append(_trim([
            image_of(link.get("a")), image_of(link.get("b")), _value(link.get("score")),
            shared(agreed), names_at, shown, _inliers(link),
            shared(printable(link["transform"])) if link.get("transform") else None]))

    order, gaps = c.platform_order, c.gaps
    route = [[rank_of.get(p, -1), _day_text(when), _days(gaps[i - 1][2]) if i else None]
             for i, (p, when) in enumerate(order)]
    span = _span_days(c.first_seen, c.last_seen)
    return {"id": c.id if isinstance(c.id, int) else printable(c.id),
            "p": [rank_of[p] for p in c.platforms],
            "k": [_day_text(c.first_seen), _day_text(c.last_seen),
                  _days(span) if span is not None else "–", c.ads, c.urls],
            "r": route, "f": fields, "i": images, "s": sightings, "l": links,
            "w": [_trim([printable(w["watchlist"]), printable(w.get("source") or ""),
                         printable(w.get("licence") or ""),
                         printable(w.get("name") or f"entry {w['entry_id']}"),
                         _value(w.get("distance")), image_of(w.get("image")),
                         1 if w.get("negative") else None])
                  for w in c.watched]}


def _trim(row: list) -> list:
    """A row without its trailing empty values (the script reads them as missing)."""
    while row and (row[-1] is None or row[-1] == []):
        row.pop()
    return row


def _stamp(text: str | None) -> int | str | None:
    """A stored time as whole minutes since 1970 (UTC); its text when unreadable."""
    if not text:
        return None
    when = parse_utc(text)
    return printable(text) if when is None else math.floor(when.timestamp() / 60)


def _address(text: str | None, shared: _Shared) -> str | list | None:
    """A web address, its folder shared with the others in it (they repeat a lot)."""
    if not text:
        return None
    text = printable(text)
    cut = text.rfind("/", 0, len(text) - 1) + 1
    if cut < 12 or len(text) > 2000:
        return text
    return [shared(text[:cut]), text[cut:]]


def _value(value: object) -> int | float | str | None:
    """A number as itself (finite; scores to 4 places), anything else as printable text."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return round(value, 4)
    return printable(value)


def _inliers(link: dict) -> int | None:
    """The inlier count of a geometrically verified link, wherever its evidence keeps it."""
    evidence = link.get("evidence")
    verification = evidence.get("verification") if isinstance(evidence, dict) else None
    for source in (link, link.get("distances"), verification):
        count = source.get("inliers") if isinstance(source, dict) else None
        if isinstance(count, int) and not isinstance(count, bool):
            return count
    return None


def _text(value: object) -> str:
    """A metadata value as :meth:`Cluster.field_values` gives it."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
