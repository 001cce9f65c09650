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
import io
import json
import os
import re
import subprocess
import xml.etree.ElementTree as ET
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
    assert len(scripts) == 1 and scripts[0].text() == SCRIPT.strip()
    assert scripts[0].attrs == {}
    styles = list(root.find_all("style"))
    assert len(styles) == 1 and styles[0].text() == STYLE.strip()
    for el in root.iter():
        for name, value in el.attrs.items():
            assert not name.startswith("on"), f"event handler {name} on <{el.tag}>"
            if name in ("href", "src", "action", "formaction", "xlink:href", "poster"):
                assert value.startswith(("#", "data:")), f"<{el.tag} {name}={value!r}>"
            if name == "style":
                assert re.fullmatch(r"background:#[0-9a-f]{6}|width:\d+%", value)
        assert el.tag not in ("iframe", "object", "embed", "form", "base", "frame", "audio",
                              "video", "source", "input")
        if el.tag == "link":
            assert el.attrs == {"rel": "icon", "href": "data:,"}
        if el.tag == "a":
            assert el.attrs["href"].startswith("#cluster-")
    assert not re.search(r"(?i)\b(?:src|href)\s*=\s*[\"']?(?:https?:|//|file:)", text)
    assert "@import" not in text and "url(" not in text


def test_html_escapes_the_hostile_text(hostile):
    text = render("html", hostile)
    root = tree_of(text)
    body = root.find("main").text()
    assert SCRIPT_TAG in body  # shown as text
    assert QUOTES in body
    assert FORMULAS[0] in body  # shown as is: it is not a spreadsheet
    assert LONG in body  # whole, behind a click
    assert "nul\ufffd bell\ufffd esc\ufffd[31mred" in body
    assert "\ufffdgpj.exe" in body and "bad\ufffd byte" in body
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
                         "\ud800-\udfff]", text)
    section = root.find("section", data_cluster_id="9")
    assert section.find("svg") is not None
    assert len(list(section.find_all("circle"))) == 2  # two sightings have a date
    assert "2 sightings without a usable date not shown" in section.text()


def test_html_summary_and_sections(known, hostile):
    clusters = [known[1], known[0]] + hostile
    root = tree_of(render("html", clusters, title="Case <7>", generated_at="2025-01-01"))
    assert root.find("title").text() == "Case <7>"
    assert root.find(id="n-clusters").text() == "4"
    assert root.find(id="n-cross-platform").text() == "2"
    sections = [el for el in root.iter() if el.has_class("cluster")]
    assert [s.attrs["data-cluster-id"] for s in sections] == ["5", "1", "9", "12"]
    assert all(s.tag == "section" for s in sections)
    one = sections[1]
    assert "citylist" in one.text() and "nightads" in one.text()
    route = one.find("ol")
    assert route.has_class("route")
    assert [li.text() for li in route.children] == [
        "citylist2023-01-01", "→ 60 days later →", "nightads2023-03-02"]
    facts = {d.children[0].text(): d.children[1].text() for d in one.find("dl").children}
    assert facts["Images"] == "2" and facts["Sightings"] == "3" and facts["Ads"] == "2"
    assert facts["URLs"] == "2" and facts["First seen"] == "2023-01-01"
    assert facts["Span"] == "60 days"
    fields = one.find("dl", **{"class": "fields"})
    assert [dt.text() for dt in fields.find_all("dt")] == ["city", "phone"]
    assert [dd.text() for dd in fields.find_all("dd")] == ["Houston", "555-0142"]
    circles = list(one.find("svg").find_all("circle"))
    assert len(circles) == 3
    assert all(c.find("title").text().startswith("2023-") for c in circles)
    tables = [t for t in one.find_all("table")]
    assert [t.attrs["class"].split()[0] for t in tables] == ["images", "sightings", "links"]
    link_row = tables[2].find("tbody").children[0]
    cells = [td.text() for td in link_row.children]
    assert cells[2:] == ["0.70", "phashdhash", "pdq 40, phash 6, dhash 7", "mirror"]
    years = root.find("table", **{"class": "years"})
    head = [th.text() for th in years.find("thead").find_all("th")]
    assert head == ["Platform", "2023", "2024", "undated", "Total"]
    rows = {tr.children[0].text(): [td.text() for td in tr.children[1:]]
            for tr in years.find("tbody").children}
    assert rows["citylist"] == ["3", "0", "0", "3"]
    assert rows["no platform"] == ["1", "0", "0", "1"]
    assert rows["All platforms"][-1] == str(sum(len(c.sightings) for c in clusters))


def test_html_thumbnails_only_on_request(known):
    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
    root = tree_of(render("html", known, thumbnails={SHA_X: jpeg, SHA_Z: png}))
    images = list(root.find_all("img"))
    assert len(images) == 1  # the PNG bytes are not a JPEG: left out
    img = images[0]
    assert "src" not in img.attrs and "hidden" in img.attrs
    assert img.attrs["data-src"] == "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    button = root.find("button", aria_controls=img.attrs["id"])
    assert button.text() == "show picture" and button.attrs["type"] == "button"
    assert not list(tree_of(render("html", known)).find_all("img"))
    assert not list(tree_of(render("html", known)).find_all("button"))


def test_html_survives_dates_at_the_ends_of_the_calendar():
    def at(platform, when):
        return Sighting(platform=platform, posted_at=when, url=when, sha256=SHA_X)
    c = Cluster(id=3, image_ids=(3,), images=(image(SHA_X, 3),), links=(), sightings=(
        at("a", "0001-01-01T00:00:00Z"), at("b", "2024-05-01T00:00:00Z"),
        at("c", "9999-12-31T23:59:59Z"), at("d", "2024-05-01T00:00:00+14:00")))
    root = tree_of(render("html", [c]))
    section = root.find("section", data_cluster_id="3")
    assert len(list(section.find("svg").find_all("circle"))) == 2
    assert "2 sightings without a usable date not shown" in section.text()
    assert c.gaps[0] == ("a", "d", 739_005.4)  # d is 2024-04-30T10:00Z
    for fmt in ("graphml", "gexf", "links-csv", "json", "csv", "table"):
        assert render(fmt, [c])


def test_html_is_deterministic(known, hostile):
    assert render("html", known + hostile) == render("html", known + hostile)
    assert "Generated" not in render("html", known)


def test_setup_browser_script_is_executable_bash():
    script = Path(__file__).resolve().parents[1] / "scripts" / "setup-browser"
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    subprocess.run(["bash", "-n", str(script)], check=True)
