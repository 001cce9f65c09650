"""Report writers on synthetic clusters: every format parses, hostile crawled
text stays inert, and the graph has exactly the nodes and edges of its model.

Clusters are built directly (no catalog): a small known pair for exact
counts, and one cluster whose every field is hostile (markup, quotes,
spreadsheet formulas, a 100,000-character value, control characters, a bidi
override, mojibake and a lone surrogate).
"""

from __future__ import annotations

import base64
import csv
import gzip
import io
import json
import math
import os
import re
import subprocess
import xml.etree.ElementTree as ET
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from imgmatch.model import Cluster, Sighting
from imgmatch.report import FORMATS
from imgmatch.report.csvfmt import write_csv
from imgmatch.report.graph import build_graph, write_links_csv
from imgmatch.report.html import CSP, SCRIPT, STYLE

SHA_X, SHA_Y, SHA_Z = "a" * 64, "b" * 64, "c" * 64
SHA_H1, SHA_H2 = "d" * 64, "e" * 64

SCRIPT_TAG = "<script>alert(1)</script>"
QUOTES = "\"'><img src=x onerror=alert(2)>"
FORMULAS = ('=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "@SUM(1)", "-2+3")
LONG = "L" * 99_970 + SCRIPT_TAG
CONTROLS = "nul\x00 bell\x07 esc\x1b[31mred\x1b[0m"
BIDI = "\u202egpj.exe"
MOJIBAKE = "cafÃ© Ã¼ber â€\u0153quoteâ€\x9d \ufffd"
SURROGATE = "bad\udcff byte"
HOSTILE = (SCRIPT_TAG, QUOTES, *FORMULAS, LONG, CONTROLS, BIDI, MOJIBAKE, SURROGATE)

#: Characters XML 1.0 forbids, plus those the writers must also make visible.
XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
INVISIBLE = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def image(sha: str, image_id: int, width=512, height=512, fmt="JPEG") -> dict:
    return {"id": image_id, "sha256": sha, "size_bytes": 1000 + image_id, "width": width,
            "height": height, "format": fmt, "frames": 1, "created_at": "2024-01-01T00:00:00Z"}


@pytest.fixture
def known() -> list[Cluster]:
    """Two clusters sharing an ad: exact node and edge counts are known."""
    a = Cluster(
        id=1, image_ids=(1, 2), images=(image(SHA_X, 1), image(SHA_Y, 2)),
        sightings=(
            Sighting(platform="citylist", url="https://citylist.example/i/1.jpg",
                     page_url="https://citylist.example/ad/100", ad_id="100",
                     posted_at="2023-01-01T00:00:00Z", collected_at="2023-01-02T00:00:00Z",
                     extra={"phone": "555-0142", "city": "Houston"}, sha256=SHA_X),
            Sighting(platform="citylist", url="https://citylist.example/i/1.jpg",
                     page_url="https://citylist.example/ad/100", ad_id="100",
                     posted_at="2023-01-01T00:00:00Z", collected_at="2023-01-05T00:00:00Z",
                     extra={"phone": "555-0142", "city": "Houston"}, sha256=SHA_X),
            Sighting(platform="nightads", url="https://cdn.nightads.example/3.jpg",
                     page_url="https://nightads.example/p/3",
                     posted_at="2023-03-02T00:00:00Z", extra={"phone": "555-0142"},
                     sha256=SHA_Y),
        ),
        links=({"a": SHA_X, "b": SHA_Y, "score": 0.7,
                "distances": {"pdq": 40, "phash": 6, "dhash": 7},
                "agreed": ["phash", "dhash"], "transform": "mirror"},))
    b = Cluster(
        id=5, image_ids=(5,), images=(image(SHA_Z, 5, 300, 200, "PNG"),),
        sightings=(
            Sighting(platform="citylist", url="https://citylist.example/i/2.jpg",
                     page_url="https://citylist.example/ad/100", ad_id="100",
                     posted_at="2023-01-01T00:00:00Z", extra={"phone": "555-0199"},
                     sha256=SHA_Z),
            Sighting(source="local/z.png", collected_at="2023-02-01T12:00:00Z",
                     extra={"city": "Dallas", "age": 21}, sha256=SHA_Z),
        ),
        links=())
    return [a, b]


@pytest.fixture
def hostile() -> list[Cluster]:
    """One cluster whose every text field is hostile, and an undated one."""
    extra = {"phone": FORMULAS[0], "city": SCRIPT_TAG, "caption": LONG, "note": CONTROLS,
             "name": BIDI, "text": MOJIBAKE, "raw": SURROGATE, QUOTES: QUOTES,
             "cmd": FORMULAS[1], "sum": FORMULAS[2], "neg": FORMULAS[3]}
    sightings = tuple(
        Sighting(platform=platform, url=value, page_url=QUOTES, ad_id=FORMULAS[2],
                 posted_at=posted, collected_at=CONTROLS, source=BIDI, extra=extra,
                 sha256=sha)
        for platform, value, posted, sha in (
            (SCRIPT_TAG, FORMULAS[0], "2023-01-01T00:00:00Z", SHA_H1),
            (FORMULAS[1], FORMULAS[1], "2024-02-03T04:05:06Z", SHA_H2),
            (CONTROLS + BIDI, LONG, "not a date <b>", SHA_H2),
            (SURROGATE, MOJIBAKE, None, SHA_H1),
        ))
    evil = Cluster(
        id=9, image_ids=(9, 10),
        images=(image(SHA_H1, 9, fmt=SCRIPT_TAG), image(SHA_H2, 10, fmt=CONTROLS)),
        sightings=sightings,
        links=({"a": SHA_H1, "b": SHA_H2, "score": 0.61,
                "distances": {"pdq": 30, SCRIPT_TAG: 3, CONTROLS: 4},
                "agreed": [SCRIPT_TAG, BIDI], "transform": QUOTES},))
    undated = Cluster(
        id=12, image_ids=(12,), images=(image("f" * 64, 12),),
        sightings=(Sighting(platform="p", url="u1", sha256="f" * 64),
                   Sighting(platform="p", url="u2", sha256="f" * 64)),
        links=())
    return [evil, undated]


def render(fmt: str, clusters, **kwargs) -> str:
    out = io.StringIO()
    if fmt == "csv-raw":
        write_csv(clusters, out, raw=True)
    elif fmt == "links-csv-raw":
        write_links_csv(clusters, out, raw=True)
    else:
        FORMATS[fmt](clusters, out, **kwargs)
    return out.getvalue()


# ------------------------------------------------------------------ the model
def test_gaps_between_platforms(known):
    a, b = known
    assert a.platform_order == [("citylist", "2023-01-01T00:00:00Z"),
                                ("nightads", "2023-03-02T00:00:00Z")]
    assert a.gaps == [("citylist", "nightads", 60.0)]
    assert b.gaps == []  # one platform (the other sighting names none)


def test_gaps_round_to_a_tenth_of_a_day_and_say_none_for_bad_dates():
    def at(platform, when):
        return Sighting(platform=platform, posted_at=when, sha256=SHA_X)
    c = Cluster(id=1, image_ids=(1,), images=(image(SHA_X, 1),), links=(), sightings=(
        at("a", "2024-01-01T00:00:00Z"), at("b", "2024-01-01T06:00:00Z"),
        at("c", "2024-03-01T00:00:00Z"), at("d", "2024-13-45T00:00:00Z")))
    assert c.gaps == [("a", "b", 0.2), ("b", "c", 59.8), ("c", "d", None)]


def test_urls_and_field_values(known, hostile):
    a, b = known
    assert a.urls == 2 and b.urls == 1
    assert a.field_values(["phone", "city", "email"]) == {
        "phone": ["555-0142"], "city": ["Houston"], "email": []}
    assert b.field_values() == {"age": ["21"], "city": ["Dallas"], "phone": ["555-0199"]}
    assert a.field_values() == {"city": ["Houston"], "phone": ["555-0142"]}
    assert b.extra_fields == ["age", "city", "phone"]
    evil = hostile[0]
    assert evil.field_values(["caption", "city"]) == {"caption": [LONG], "city": [SCRIPT_TAG]}
    assert evil.urls == 4


def test_ads_are_counted_by_ad_key(known, hostile):
    for c in known + hostile:
        keys = {Cluster.ad_key(s) for s in c.sightings} - {None}
        assert c.ads == len(keys)
    assert known[0].ads == 2 and known[1].ads == 1
    assert Cluster.ad_key(Sighting(source="x")) is None


def test_to_json_adds_gaps_and_n_urls_and_keeps_every_key(known):
    data = known[0].to_json()
    assert set(data) >= {"id", "platforms", "platform_order", "first_seen", "last_seen",
                         "images", "sightings", "n_images", "n_sightings", "n_ads", "links"}
    assert data["gaps"] == [{"from": "citylist", "to": "nightads", "days": 60.0}]
    assert data["n_urls"] == 2
    assert json.loads(json.dumps(data)) == data


# -------------------------------------------------- every format, hostile data
ALL_FORMATS = ("table", "json", "csv", "csv-raw", "graphml", "gexf", "links-csv",
               "links-csv-raw", "html")


def test_every_format_is_registered():
    assert {"table", "json", "csv", "html", "graphml", "gexf", "links-csv"} <= set(FORMATS)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_every_format_parses_with_hostile_data(fmt, hostile, known):
    text = render(fmt, hostile + known)
    if fmt == "table":
        assert re.match(r"4 reused pictures, 2 seen on more than one platform\n", text)
        assert "\u202e" not in text and LONG not in text
        assert "nul? bell? esc?[31mred" in text  # in a caption (dates: see below)
    elif fmt == "json":
        data = json.loads(text)
        assert data["n_clusters"] == 4
        assert data["clusters"][0]["sightings"][0]["platform"] == SCRIPT_TAG
    elif fmt in ("csv", "csv-raw", "links-csv", "links-csv-raw"):
        rows = list(csv.reader(io.StringIO(text)))
        assert len({len(r) for r in rows}) == 1
        assert len(rows) > 1
    elif fmt in ("graphml", "gexf"):
        ET.fromstring(text.encode("utf-8"))
    else:
        parse_html(text)
    if fmt in ("graphml", "gexf", "links-csv", "html"):
        text.encode("utf-8")  # no lone surrogate: the file can be written


def test_table_cleans_hostile_dates(hostile):
    text = render("table", hostile)
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f]", text)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_every_format_handles_no_clusters(fmt):
    text = render(fmt, [])
    assert text
    if fmt == "html":
        assert tree_of(text).find(id="n-clusters").text() == "0"
    elif fmt in ("graphml", "gexf"):
        ET.fromstring(text)


@pytest.mark.parametrize("fmt", ("graphml", "gexf", "html"))
def test_markup_from_the_data_is_escaped(fmt, hostile):
    text = render(fmt, hostile)
    assert "<script>alert" not in text
    assert "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "\x1b" not in text and "\x00" not in text and "\x07" not in text
    assert "\u202e" not in text


@pytest.mark.parametrize("fmt", ("graphml", "gexf"))
def test_xml_carries_no_forbidden_characters(fmt, hostile):
    text = render(fmt, hostile)
    assert not XML_FORBIDDEN.search(text)
    assert not INVISIBLE.search(text)
    root = ET.fromstring(text)
    values = [el.text or "" for el in root.iter()] + [
        v for el in root.iter() for v in el.attrib.values()]
    assert SCRIPT_TAG in values  # kept as text, not as markup
    assert LONG in values  # long values are not cut
    assert "nul\ufffd bell\ufffd esc\ufffd[31mred\ufffd[0m" in values
    assert MOJIBAKE.replace("\x9d", "\ufffd") in values


def test_safe_csv_neutralises_formulas_and_raw_keeps_them(hostile):
    safe = list(csv.DictReader(io.StringIO(render("csv", hostile))))
    raw = list(csv.DictReader(io.StringIO(render("csv-raw", hostile))))
    assert len(safe) == len(raw) == 6
    for row in safe:
        for value in row.values():
            assert not value.startswith(FORMULA_START)
    assert safe[0]["url"] == "'" + FORMULAS[0] and raw[0]["url"] == FORMULAS[0]
    assert safe[0]["ad_id"] == "'@SUM(1)" and raw[0]["ad_id"] == "@SUM(1)"
    assert "'" + FORMULAS[1] in {r["platform"] for r in safe}
    assert FORMULAS[1] in {r["platform"] for r in raw}
    assert json.loads(raw[0]["extra"])["neg"] == "-2+3"


LINE_BREAK_FORMULA = "http://x.example/a\r=cmd|' /C calc'!A0\n+1\r\n@x\x85-y\u2028=z"


@pytest.mark.parametrize("fmt", ["csv", "links-csv", "csv-raw", "links-csv-raw"])
def test_a_line_break_inside_a_cell_cannot_start_a_formula(fmt):
    """A reader that ends lines at any CR or LF (quoted or not) sees no cell
    starting a formula in the safe formats; the raw ones keep the value and
    quote it (a CSV reader gets it back whole)."""
    cluster = Cluster(id=3, image_ids=(3,), images=(image(SHA_X, 3),),
                      sightings=(Sighting(platform="p", url=LINE_BREAK_FORMULA, sha256=SHA_X),
                                 Sighting(platform="p", url="u2", sha256=SHA_X)),
                      links=())
    text = render(fmt, [cluster])
    rows = list(csv.DictReader(io.StringIO(text)))
    if fmt.endswith("raw"):
        assert LINE_BREAK_FORMULA in {r["url"] for r in rows}  # untouched, and quoted:
        assert '"' + LINE_BREAK_FORMULA + '"' in text
        return
    assert "http://x.example/a\\r=cmd|' /C calc'!A0\\n+1\\r\\n@x\\x85-y\\u2028=z" in {
        r["url"] for r in rows}
    for line in re.split("[\r\n\x85\u2028\u2029]", text):
        for cell in line.split(","):
            assert not cell.lstrip('"').startswith(("=", "+", "@", "-", "\t")), line


def test_links_csv_rows_and_formulas(hostile, known):
    safe = list(csv.DictReader(io.StringIO(render("links-csv", hostile + known))))
    raw = list(csv.DictReader(io.StringIO(render("links-csv-raw", hostile + known))))
    assert list(safe[0]) == ["source", "target", "kind", "score", "agreed", "posted_at",
                             "url", "cluster_id"]
    n_sightings = sum(len(c.sightings) for c in hostile + known)
    n_links = sum(len(c.links) for c in hostile + known)
    assert len(safe) == len(raw) == n_sightings + n_links
    for row in safe:
        for value in row.values():
            assert not value.startswith(FORMULA_START)
    assert "'" + FORMULAS[0] in {r["url"] for r in safe}
    assert FORMULAS[0] in {r["url"] for r in raw}
    known_rows = [r for r in raw if r["cluster_id"] in ("1", "5")]
    assert [(r["source"], r["target"], r["kind"]) for r in known_rows] == [
        (f"img:{SHA_X}", "ad:citylist:100", "seen_in"),
        (f"img:{SHA_X}", "ad:citylist:100", "seen_in"),
        (f"img:{SHA_Y}", "page:https://nightads.example/p/3", "seen_in"),
        (f"img:{SHA_X}", f"img:{SHA_Y}", "near_duplicate"),
        (f"img:{SHA_Z}", "ad:citylist:100", "seen_in"),
        (f"img:{SHA_Z}", "", "seen_in"),
    ]
    link = known_rows[3]
    assert (link["score"], link["agreed"]) == ("0.7", "phash,dhash")


# ------------------------------------------------------------------ the graph
EXPECTED_NODES = {
    f"img:{SHA_X}", f"img:{SHA_Y}", f"img:{SHA_Z}",
    "ad:citylist:100", "page:https://nightads.example/p/3",
    "platform:citylist", "platform:nightads",
    "meta:phone:555-0142", "meta:city:Houston", "meta:phone:555-0199", "meta:city:Dallas",
    "meta:age:21",
}
EXPECTED_EDGES = {
    (f"img:{SHA_X}", "ad:citylist:100", "seen_in"),
    (f"img:{SHA_Y}", "page:https://nightads.example/p/3", "seen_in"),
    (f"img:{SHA_Z}", "ad:citylist:100", "seen_in"),
    ("ad:citylist:100", "platform:citylist", "seen_in"),
    ("page:https://nightads.example/p/3", "platform:nightads", "seen_in"),
    ("ad:citylist:100", "meta:phone:555-0142", "has"),
    ("ad:citylist:100", "meta:city:Houston", "has"),
    ("page:https://nightads.example/p/3", "meta:phone:555-0142", "has"),
    ("ad:citylist:100", "meta:phone:555-0199", "has"),
    (f"img:{SHA_Z}", "meta:city:Dallas", "has"),  # a sighting with no ad
    (f"img:{SHA_Z}", "meta:age:21", "has"),
    (f"img:{SHA_X}", f"img:{SHA_Y}", "near_duplicate"),
}


def test_graph_model_has_the_expected_nodes_and_edges(known):
    g = build_graph(known)
    assert set(g.nodes) == EXPECTED_NODES
    edges = [(e.source, e.target, e.kind) for e in g.edges]
    assert sorted(edges) == sorted(EXPECTED_EDGES)  # no duplicates either
    first = next(e for e in g.edges if e.source == f"img:{SHA_X}" and e.kind == "seen_in")
    assert first.attrs["sightings"] == 2
    assert first.attrs["posted_at"] == "2023-01-01T00:00:00Z"
    x = g.nodes[f"img:{SHA_X}"]
    assert x.attrs["cluster"] == 1 and x.attrs["width"] == 512
    assert (x.attrs["first_seen"], x.attrs["last_seen"]) == ("2023-01-01T00:00:00Z",) * 2
    assert g.nodes["ad:citylist:100"].attrs["kind"] == "ad"
    assert g.nodes["page:https://nightads.example/p/3"].attrs["kind"] == "page"


def graphml_graph(text: str):
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    root = ET.fromstring(text)
    assert root.tag == "{http://graphml.graphdrawing.org/xmlns}graphml"
    keys = {k.get("id"): (k.get("for"), k.get("attr.name"), k.get("attr.type"))
            for k in root.findall("g:key", ns)}
    graph = root.find("g:graph", ns)
    nodes, edges = {}, []
    for el in graph.findall("g:node", ns):
        data = {}
        for d in el.findall("g:data", ns):
            assert keys[d.get("key")][0] == "node"
            data[keys[d.get("key")][1]] = d.text
        assert el.get("id") not in nodes
        nodes[el.get("id")] = data
    edge_ids = set()
    for el in graph.findall("g:edge", ns):
        assert el.get("id") not in edge_ids
        edge_ids.add(el.get("id"))
        data = {}
        for d in el.findall("g:data", ns):
            assert keys[d.get("key")][0] == "edge"
            data[keys[d.get("key")][1]] = d.text
        edges.append((el.get("source"), el.get("target"), data["kind"], el.get("directed"),
                      data))
    for _, _, kind in keys.values():
        assert kind in ("boolean", "int", "long", "float", "double", "string")
    return nodes, edges


def gexf_graph(text: str):
    ns = {"x": "http://gexf.net/1.3"}
    root = ET.fromstring(text)
    assert root.tag == "{http://gexf.net/1.3}gexf" and root.get("version") == "1.3"
    graph = root.find("x:graph", ns)
    assert graph.get("mode") == "static" and graph.get("defaultedgetype") == "directed"
    declared = {}
    for block in graph.findall("x:attributes", ns):
        assert block.get("mode") == "static"
        for a in block.findall("x:attribute", ns):
            assert a.get("type") in ("integer", "long", "double", "string")
            declared[(block.get("class"), a.get("id"))] = (a.get("title"), a.get("type"))

    def values(el, where):
        out = {}
        for v in el.findall("x:attvalues/x:attvalue", ns):
            title, kind = declared[(where, v.get("for"))]
            if kind in ("integer", "long"):
                int(v.get("value"))
            elif kind == "double":
                float(v.get("value"))
            out[title] = v.get("value")
        return out

    nodes = {}
    for el in graph.findall("x:nodes/x:node", ns):
        assert el.get("id") not in nodes and el.get("label") is not None
        nodes[el.get("id")] = values(el, "node")
    edges, ids = [], set()
    for el in graph.findall("x:edges/x:edge", ns):
        assert el.get("id") not in ids
        ids.add(el.get("id"))
        edges.append((el.get("source"), el.get("target"), el.get("kind"), el.get("type"),
                      values(el, "edge")))
    return nodes, edges


@pytest.mark.parametrize("fmt, reader", [("graphml", graphml_graph), ("gexf", gexf_graph)])
def test_xml_graph_has_the_expected_nodes_and_edges(fmt, reader, known):
    nodes, edges = reader(render(fmt, known))
    assert set(nodes) == EXPECTED_NODES
    assert sorted((s, t, k) for s, t, k, *_ in edges) == sorted(EXPECTED_EDGES)
    for source, target, kind, direction, data in edges:
        assert source in nodes and target in nodes
        assert (direction in ("false", "undirected")) == (kind == "near_duplicate")
    link = next(data for *_, kind, _, data in edges if kind == "near_duplicate")
    assert float(link["score"]) == 0.7 and link["agreed"] == "phash,dhash"
    assert link["transform"] == "mirror"
    assert (link["distance_pdq"], link["distance_phash"], link["distance_dhash"]) == (
        "40", "6", "7")
    assert json.loads(link["distances"]) == {"pdq": 40, "phash": 6, "dhash": 7}
    seen = next(data for s, *_, data in edges if s == f"img:{SHA_X}"
                and data.get("kind", "seen_in") == "seen_in" and "sightings" in data)
    assert seen["sightings"] == "2" and seen["url"] == "https://citylist.example/i/1.jpg"
    assert seen["collected_at"] == "2023-01-02T00:00:00Z"
    x = nodes[f"img:{SHA_X}"]
    assert (x["kind"], x["cluster"], x["width"], x["height"], x["format"]) == (
        "image", "1", "512", "512", "JPEG")
    assert x["first_seen"] == "2023-01-01T00:00:00Z"
    assert nodes["meta:phone:555-0142"]["value"] == "555-0142"


@pytest.mark.parametrize("fmt, reader", [("graphml", graphml_graph), ("gexf", gexf_graph)])
def test_xml_graph_of_hostile_data_is_consistent(fmt, reader, hostile):
    nodes, edges = reader(render(fmt, hostile))
    for source, target, *_ in edges:
        assert source in nodes and target in nodes
    assert f"meta:city:{SCRIPT_TAG}" in nodes
    assert f"platform:{SCRIPT_TAG}" in nodes
    assert "platform:bad\ufffd byte" in nodes


# ------------------------------------------------------------------- the HTML
class Element:
    def __init__(self, tag: str, attrs: dict) -> None:
        self.tag, self.attrs, self.children, self.parts = tag, attrs, [], []

    def text(self) -> str:
        return "".join(self.parts).strip()

    def iter(self):
        yield self
        for child in self.children:
            yield from child.iter()

    def find(self, tag: str | None = None, **attrs):
        return next(self.find_all(tag, **attrs), None)

    def find_all(self, tag: str | None = None, **attrs):
        for el in self.iter():
            if (tag is None or el.tag == tag) and all(
                    el.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()):
                yield el

    def has_class(self, name: str) -> bool:
        return name in (self.attrs.get("class") or "").split()


class TreeBuilder(HTMLParser):
    """A small DOM from html.parser, strict about nesting."""

    VOID = frozenset({"meta", "link", "img", "br", "hr", "input", "source", "wbr", "area",
                      "base", "col", "embed", "track"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {})
        self.stack = [self.root]
        self.problems: list[str] = []
        self.doctype = None

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        names = [k for k, _ in attrs]
        if len(names) != len(set(names)):
            self.problems.append(f"duplicate attribute in <{tag}>")
        el = Element(tag, dict(attrs))
        self.stack[-1].children.append(el)
        if tag not in self.VOID:
            self.stack.append(el)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Element(tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if self.stack[-1].tag != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1].tag}>")
            return
        self.stack.pop()

    def handle_data(self, data):
        for el in self.stack:
            el.parts.append(data)


def tree_of(text: str) -> Element:
    builder = TreeBuilder()
    builder.feed(text)
    builder.close()
    assert builder.problems == []
    assert builder.stack == [builder.root], "unclosed elements"
    assert builder.doctype and builder.doctype.lower() == "doctype html"
    return builder.root


def parse_html(text: str) -> Element:
    return tree_of(text)


def report_data(root: Element) -> dict:
    """The details' data block of a parsed report (JSON, or gzip in base64)."""
    block = root.find("script", id="report-data")
    if block.attrs.get("data-encoding") == "gzip":
        return json.loads(gzip.decompress(base64.b64decode(block.text())))
    assert block.attrs.get("type") == "application/json"
    return json.loads(block.text())


def minutes(iso: str) -> int:
    """A time as the report's data keeps it: whole minutes since 1970, UTC."""
    return math.floor(datetime.fromisoformat(iso).timestamp() / 60)


def data_of(root: Element, cluster_id: int) -> dict:
    return next(c for c in report_data(root)["c"] if c["id"] == cluster_id)


def test_html_is_self_contained_and_strict(hostile, known):
    jpeg = b"\xff\xd8\xff\xe0" + b"\x00" * 40
    text = render("html", hostile + known, thumbnails={SHA_X: jpeg, SHA_H1: jpeg})
    root = tree_of(text)
    csp = [m for m in root.find_all("meta")
           if (m.attrs.get("http-equiv") or "").lower() == "content-security-policy"]
    assert len(csp) == 1 and csp[0].attrs["content"] == CSP
    for directive in ("default-src 'none'", "style-src 'unsafe-inline'",
                      "script-src 'unsafe-inline'", "img-src data:"):
        assert directive in CSP
    scripts = list(root.find_all("script"))
    code = [s for s in scripts if "type" not in s.attrs]
    assert len(code) == 1 and code[0].text() == SCRIPT.strip() and code[0].attrs == {}
    blocks = {s.attrs["id"]: s for s in scripts if "type" in s.attrs}
    assert set(blocks) == {"report-data", "report-thumbs"}
    for block in blocks.values():  # data, never code, and nothing in it can close it
        assert block.attrs["type"] == "application/json"
        assert not re.search("[<>&]", block.text())
        json.loads(block.text())
    styles = list(root.find_all("style"))
    assert len(styles) == 1 and styles[0].text() == STYLE.strip()
    for el in root.iter():
        for name, value in el.attrs.items():
            assert not name.startswith("on"), f"event handler {name} on <{el.tag}>"
            assert name not in ("href", "src", "action", "formaction", "xlink:href", "poster",
                                "style") or (el.tag, value) == ("link", "data:,")
        assert el.tag not in ("iframe", "object", "embed", "form", "base", "frame", "audio",
                              "video", "source", "img", "a")
        if el.tag == "link":
            assert el.attrs == {"rel": "icon", "href": "data:,"}
        if el.tag == "input":
            assert el.attrs["type"] == "search" and el.attrs["id"] == "find"
    assert not re.search(r"(?i)\b(?:src|href)\s*=\s*[\"']?(?:https?:|//|file:)", text)
    assert "@import" not in text and "url(" not in text


def test_html_escapes_the_hostile_text(hostile):
    text = render("html", hostile)
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
                         "\ud800-\udfff]", text)
    root = tree_of(text)
    body = root.find("main").text()
    assert SCRIPT_TAG in body and FORMULAS[1] in body  # platforms, shown as text
    assert "bad\ufffd byte" in body
    data = report_data(root)
    assert SCRIPT_TAG in data["p"]
    assert "nul\ufffd bell\ufffd esc\ufffd[31mred\ufffd[0m\ufffdgpj.exe" in data["p"]
    evil = data_of(root, 9)
    values = json.dumps(evil, ensure_ascii=False)
    for shown in (QUOTES, FORMULAS[0], LONG, "\ufffdgpj.exe", "bad\ufffd byte",
                  MOJIBAKE.replace("\x9d", "\ufffd")):
        assert json.dumps(shown, ensure_ascii=False)[1:-1] in values  # whole, as text
    fields = dict(evil["f"])
    assert fields["city"] == [SCRIPT_TAG] and fields["caption"] == [LONG]
    # the unreadable date stays text; the readable ones are minutes since 1970
    assert [s[2] if len(s) > 2 else None for s in evil["s"]] == [
        minutes("2023-01-01T00:00:00+00:00"), minutes("2024-02-03T04:05:06+00:00"),
        "not a date <b>", None]


def test_html_summary_index_and_data(known, hostile):
    clusters = [known[1], known[0]] + hostile
    root = tree_of(render("html", clusters, title="Case <7>", generated_at="2025-01-01"))
    assert root.find("title").text() == "Case <7>"
    assert root.find(id="n-clusters").text() == "4"
    assert root.find(id="n-cross-platform").text() == "2"
    rows = [tr for tr in root.find_all("tr") if tr.attrs.get("id", "").startswith("cluster-")]
    assert [tr.attrs["id"] for tr in rows] == ["cluster-5", "cluster-1", "cluster-9",
                                              "cluster-12"]
    cells = [td.text() for td in rows[1].children]
    assert cells == ["2", "cluster 1", "citylist → nightads", "2023-01-01", "2023-03-02", "2",
                     "3", "2"]
    button = rows[1].find("button")
    assert button.has_class("open") and button.attrs["aria-expanded"] == "false"
    data = report_data(root)
    assert [c["id"] for c in data["c"]] == [5, 1, 9, 12]  # the index's order
    one = data_of(root, 1)
    platform = data["p"].index
    assert one["r"] == [[platform("citylist"), "2023-01-01", None],
                        [platform("nightads"), "2023-03-02", "60 days"]]
    assert one["k"] == ["2023-01-01", "2023-03-02", "60 days", 2, 2]
    assert one["f"] == [["city", ["Houston"]], ["phone", ["555-0142"]]]
    assert [im[0] for im in one["i"]] == [SHA_X, SHA_Y]
    assert [s[0] for s in one["s"]] == [0, 0, 1]  # each sighting's image, by position
    (link,) = one["l"]
    assert link[:3] == [0, 1, 0.7]
    assert data["x"][link[3]] == ["phash", "dhash"]
    assert data["x"][link[4]] == ["pdq", "phash", "dhash"] and link[5] == [40, 6, 7]
    assert data["x"][link[7]] == "mirror" and link[6] is None  # no geometric check
    years = root.find("table", **{"class": "years"})
    head = [th.text() for th in years.find("thead").find_all("th")]
    assert head == ["Platform", "2023", "2024", "undated", "Total"]
    rows = {tr.children[0].text(): [td.text() for td in tr.children[1:]]
            for tr in years.find("tbody").children}
    assert rows["citylist"] == ["3", "0", "0", "3"]
    assert rows["no platform"] == ["1", "0", "0", "1"]
    assert rows["All platforms"][-1] == str(sum(len(c.sightings) for c in clusters))


def test_html_index_keeps_each_platform_of_a_route_whole(known):
    """A route wraps between platforms, never inside one (it did word by word at 700 px)."""
    root = tree_of(render("html", known))
    route = root.find("tr", id="cluster-1").find("td", **{"class": "route"})
    stops = [el for el in route.children if el.tag == "span"]
    assert [el.text() for el in stops] == ["citylist", "nightads"]
    assert all(el.has_class("s") for el in stops)
    assert re.search(r"\.s \{[^}]*white-space: nowrap", STYLE)


def test_html_links_carry_their_geometric_check(known):
    """A verified link's inliers reach the report, wherever the link keeps them."""
    a = known[0]
    links = ({"a": SHA_X, "b": SHA_Y, "score": 0.93, "distances": {"pdq": 50, "inliers": 42},
              "agreed": ["phash", "orb"], "transform": "rot90"},
             {"a": SHA_X, "b": SHA_Y, "score": 0.91, "distances": {"pdq": 60},
              "agreed": ["orb"], "transform": "identity",
              "evidence": {"verification": {"inliers": 17}}},
             {"a": SHA_X, "b": SHA_Y, "score": 0.9, "distances": {"pdq": 4},
              "agreed": ["pdq", "orb"], "transform": "identity"})
    c = Cluster(id=a.id, image_ids=a.image_ids, images=a.images, sightings=a.sightings,
                links=links)
    root = tree_of(render("html", [c]))
    data = report_data(root)
    rows = data_of(root, 1)["l"]
    assert [r[6] if len(r) > 6 else None for r in rows] == [42, 17, None]
    assert data["x"][rows[0][4]] == ["pdq"]  # inliers are not a distance in bits
    assert "orb" in data["x"][rows[2][3]]  # verified, count not kept: shown as verified


def test_html_thumbnails_only_on_request(known):
    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
    root = tree_of(render("html", known, thumbnails={SHA_X: jpeg, SHA_Z: png}))
    assert not list(root.find_all("img"))  # pictures are made only when asked for
    block = root.find("script", id="report-thumbs")
    assert json.loads(block.text()) == {SHA_X: base64.b64encode(jpeg).decode()}
    flags = {im[0]: len(im) > 6 and im[6] == 1
             for c in report_data(root)["c"] for im in c["i"]}
    assert flags == {SHA_X: True, SHA_Y: False, SHA_Z: False}  # the PNG is left out
    plain = tree_of(render("html", known))
    assert plain.find("script", id="report-thumbs") is None
    assert not [b for b in plain.find_all("button") if b.has_class("show-picture")]


def test_html_survives_dates_at_the_ends_of_the_calendar():
    def at(platform, when):
        return Sighting(platform=platform, posted_at=when, url=when, sha256=SHA_X)
    c = Cluster(id=3, image_ids=(3,), images=(image(SHA_X, 3),), links=(), sightings=(
        at("a", "0001-01-01T00:00:00Z"), at("b", "2024-05-01T00:00:00Z"),
        at("c", "9999-12-31T23:59:59Z"), at("d", "2024-05-01T00:00:00+14:00"),
        at("e", "0001-01-01T00:00:00+14:00")))
    root = tree_of(render("html", [c]))
    stamps = [s[2] for s in data_of(root, 3)["s"]]
    assert stamps == [minutes(s.posted_at.replace("Z", "+00:00")) for s in c.sightings]
    assert stamps[0] < 0 and stamps[2] > 4_000_000_000  # the script plots 1970 to 2200 only
    route = data_of(root, 3)["r"]  # a day before year 1 in UTC stays as its text
    assert [r[1] for r in route[:2]] == ["0001-01-01T00:00:00+14:00", "0001-01-01"]
    for fmt in ("graphml", "gexf", "links-csv", "json", "csv", "table"):
        assert render(fmt, [c])


def test_html_is_deterministic(known, hostile):
    assert render("html", known + hostile) == render("html", known + hostile)
    assert "Generated" not in render("html", known)


def test_large_html_data_is_compressed_and_still_reads_back(known, monkeypatch):
    from imgmatch.report import html as html_report

    plain = tree_of(render("html", known))
    monkeypatch.setattr(html_report, "PLAIN_DATA_LIMIT", 100)
    text = render("html", known)
    packed = tree_of(text).find("script", id="report-data")
    assert packed.attrs == {"type": "text/plain", "id": "report-data", "data-encoding": "gzip"}
    assert re.fullmatch(r"[A-Za-z0-9+/=]+", packed.text())
    assert report_data(tree_of(text)) == report_data(plain)
    assert text == render("html", known)  # no time stamp in the gzip


# ------------------------------------------------------- hash-only images
PDQ_1, PDQ_2 = "ab" * 32, "cd" * 32


def imported(key_hex: str, image_id: int) -> dict:
    """An image known only by a partner's PDQ hash, as the catalog gives it."""
    return {"id": image_id, "sha256": None, "size_bytes": None, "width": None, "height": None,
            "format": None, "frames": None, "created_at": "2024-01-01T00:00:00Z",
            "hash_key": f"pdq:{key_hex}"}


@pytest.fixture
def with_imports(known) -> list[Cluster]:
    """Cluster 1 with one imported hash; cluster 7 holding two (which the data cannot
    tell apart in its sightings)."""
    a = known[0]
    one = Cluster(
        id=1, image_ids=(*a.image_ids, 3), images=(*a.images, imported(PDQ_1, 3)),
        sightings=(*a.sightings, Sighting(platform="partner", source="case-17/item-1")),
        links=(*a.links, {"a": SHA_X, "b": None, "score": 0.8, "distances": {"pdq": 12},
                          "agreed": ["pdq"], "transform": "identity"}))
    two = Cluster(
        id=7, image_ids=(7, 8), images=(imported(PDQ_1[:-2] + "00", 7), imported(PDQ_2, 8)),
        sightings=(Sighting(platform="partner", source="a"),
                   Sighting(platform="partner", source="b")),
        links=({"a": None, "b": None, "score": 0.9, "distances": {"pdq": 2},
                "agreed": ["pdq"], "transform": "identity"},))
    return [one, two]


def test_table_names_an_imported_hash_by_its_hash(with_imports):
    text = render("table", with_imports)
    assert "None" not in text
    assert re.search(r"partner +pdq:abababababab  case-17/item-1", text)
    assert "imported hash (one of 2)" in text


def test_html_names_an_imported_hash_by_its_hash(with_imports):
    root = tree_of(render("html", with_imports))
    one, two = data_of(root, 1), data_of(root, 7)
    assert [im[0] for im in one["i"]] == [SHA_X, SHA_Y, f"pdq:{PDQ_1}"]
    partner = next(s for s in one["s"] if s[7:8] == ["case-17/item-1"])
    assert partner[0] == 2  # the one imported hash of its cluster
    assert one["l"][1][:2] == [0, 2]
    assert [s[0] for s in two["s"]] == [-1, -1] and two["l"][0][:2] == [-1, -1]


def test_graph_gives_each_imported_hash_its_own_node(with_imports):
    g = build_graph(with_imports)
    images = {n for n in g.nodes if n.startswith("img:")}
    assert images == {f"img:{SHA_X}", f"img:{SHA_Y}", f"img:pdq:{PDQ_1}",
                      f"img:pdq:{PDQ_1[:-2]}00", f"img:pdq:{PDQ_2}", "img:unresolved:7"}
    assert g.nodes[f"img:pdq:{PDQ_1}"].label == "pdq:abababababab"
    edges = {(e.source, e.target) for e in g.edges if e.kind == "near_duplicate"}
    assert (f"img:{SHA_X}", f"img:pdq:{PDQ_1}") in edges
    rows = list(csv.reader(io.StringIO(render("links-csv", with_imports))))
    assert not [r for r in rows if "img:None" in r]


@pytest.fixture(scope="module")
def partner_db(tmp_path_factory) -> Path:
    """The fixture collection and a partner's hash of one of its photos."""
    import imgmatch
    from imgmatch.sources import iter_manifest

    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    tmp = tmp_path_factory.mktemp("partner")
    db = tmp / "c.db"
    with imgmatch.Collection.open(db) as c:
        c.ingest(iter_manifest(fixtures / "manifest.csv"), workers=0)
        temple = imgmatch.hash_bytes((fixtures / "originals" / "temple.jpg").read_bytes())
        listing = tmp / "partner.txt"
        listing.write_text(f"pdq {temple['signals']['pdq']['hex']} alert-42\n")
        c.import_hashes(listing, platform="partner")
    return db


def cli(*argv: object) -> tuple[int, str]:
    from contextlib import redirect_stdout

    from imgmatch.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        code = main([str(a) for a in argv])
    return code, out.getvalue()


def test_an_imported_hash_in_a_real_collection_is_named_by_its_hash(partner_db, tmp_path):
    import imgmatch
    from imgmatch.report.html import write_html

    with imgmatch.Collection.open(partner_db, readonly=True) as c:
        clusters = c.clusters()
    cluster = next(cl for cl in clusters if "partner" in cl.platforms)
    key = next(img["hash_key"] for img in cluster.images if img["sha256"] is None)
    out = io.StringIO()
    write_html(clusters, out)
    data = data_of(tree_of(out.getvalue()), cluster.id)
    assert key in [im[0] for im in data["i"]]
    code, text = cli("--db", partner_db, "report")
    assert code == 0 and f"{key[:16]}  alert-42" in text
    code, text = cli("--db", partner_db, "show", "--cluster", cluster.id)
    assert code == 0 and f"{key[:16]}  alert-42" in text
    code, text = cli("--db", partner_db, "query", "--pdq", key[4:])
    assert code == 0 and f"  {key}  [pdq 0;" in text and "None" not in text
    other = next(img["sha256"] for img in cluster.images if img["sha256"])
    code, text = cli("--db", partner_db, "show", other)
    assert code == 0 and f"  {key}  pdq (" in text and "None" not in text


@pytest.mark.parametrize("pictures", [[], ["--thumbnails"]])
def test_html_report_of_a_collection_with_an_imported_hash(partner_db, tmp_path, pictures):
    code, _ = cli("--db", partner_db, "report", "--format", "html", "-o", tmp_path / "r.html",
                  *pictures)
    assert code == 0
    assert "pdq:" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_setup_browser_script_is_executable_bash():
    script = Path(__file__).resolve().parents[1] / "scripts" / "setup-browser"
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("fmt", ["json", "html", "graphml", "gexf", "table"])
def test_every_report_with_room_for_it_says_what_made_it(partner_db, tmp_path, fmt):
    """The version, each signal's version and threshold, the evidence model:
    a lead handed on says how it was found."""
    import imgmatch
    from imgmatch.signals import get

    out = tmp_path / f"r.{fmt}"
    code, _ = cli("--db", partner_db, "report", "--format", fmt, "-o", out)
    assert code == 0
    text = out.read_text(encoding="utf-8")
    with imgmatch.Collection.open(partner_db, readonly=True) as c:
        made = c.made_with()
    assert set(made["signals"]) == {"pdq", "phash", "dhash", "orb"}  # the defaults
    assert made["signals"]["pdq"] == {"kind": "hash", "version": get("pdq").version,
                                      "bits": 256, "threshold": get("pdq").threshold}
    assert made["signals"]["orb"]["kind"] == "local"
    assert made["scores"]["match"] == imgmatch.MATCH_SCORE and len(made["model"]) == 12
    if fmt == "json":
        assert json.loads(text)["made_with"] == made
    else:
        assert f"imgmatch {made['imgmatch']}" in text
        assert f"pdq v{get('pdq').version} (within {get('pdq').threshold} bits)" in text
        assert f"orb v{made['signals']['orb']['version']} (local features" in text
        assert f"evidence model {made['model']}" in text


@pytest.mark.parametrize("name", ["MEAN_CLOSENESS", "PDQ_APART", "LOW_INFORMATION_CAP"])
def test_the_model_digest_changes_with_a_rule_as_with_the_weights(monkeypatch, name):
    """A report names the evidence model it scored with: a rule that changes
    what a score means changes the digest, as refitted weights do."""
    from imgmatch import evidence
    from imgmatch.report.provenance import model_digest

    before = model_digest()
    value = getattr(evidence, name)
    monkeypatch.setattr(evidence, name, (not value) if isinstance(value, bool) else value + 1)
    assert model_digest() != before
    monkeypatch.setattr(evidence, name, value)
    assert model_digest() == before
