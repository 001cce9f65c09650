"""Graph reports for link-analysis tools: GraphML, GEXF 1.3 and a flat links CSV.

One graph model behind all three:

- nodes: images (``img:<sha256>``, or ``img:pdq:<hex>`` for an image known
  only by an imported hash; ``img:unresolved:<cluster>`` for a sighting or
  link of one of several such images in a cluster, which the data cannot
  tell apart), ads (``ad:<platform>:<ad_id>``, else
  ``page:<page_url>``, else ``url:<image url>``, as :meth:`Cluster.ad_key`
  counts them), platforms (``platform:<name>``) and metadata values
  (``meta:<field>:<value>``, one per distinct value of every extra field);
- edges: image -> ad (``seen_in``, one per image and ad, carrying the first
  sighting's ``posted_at``, ``collected_at`` and ``url`` and the number of
  sightings), ad -> platform (``seen_in``), ad -> metadata value (``has``)
  and image -- image for each near-duplicate link (``near_duplicate``,
  undirected, with its score, agreed signals, distances and transform).
  A sighting that names no ad hangs from its image directly.

Ads, platforms and metadata values are shared between clusters: that is the
point of the graph (one phone number, one ad, joining several pictures).

Crawled text is hostile. Characters XML 1.0 forbids (most C0 controls, lone
surrogates, U+FFFE/U+FFFF), C1 controls and bidi overrides become U+FFFD, so
the output is always well-formed and a label cannot reorder what a person
reads. The links CSV is spreadsheet-safe like the CSV report unless ``raw``.
"""

from __future__ import annotations

import csv
import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..model import Cluster, Sighting
from .csvfmt import safe_cell
from .provenance import describe
from .names import ClusterNames, image_key, short_name

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff"
                      "\u202a-\u202e\u2066-\u2069]")

GRAPHML_NS = "http://graphml.graphdrawing.org/xmlns"
GEXF_NS = "http://gexf.net/1.3"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"


def xml_text(value: object) -> str:
    """Text that XML 1.0 can carry and a person can read safely."""
    return _NOT_XML.sub("\ufffd", "" if value is None else str(value))


# Attributes: (name, GraphML type, GEXF type). Distances get one attribute per signal.
NODE_ATTRS = (("kind", "string", "string"), ("label", "string", "string"),
              ("cluster", "long", "long"), ("width", "int", "integer"),
              ("height", "int", "integer"), ("format", "string", "string"),
              ("first_seen", "string", "string"), ("last_seen", "string", "string"),
              ("platform", "string", "string"), ("field", "string", "string"),
              ("value", "string", "string"))
EDGE_ATTRS = (("kind", "string", "string"), ("cluster", "long", "long"),
              ("posted_at", "string", "string"), ("collected_at", "string", "string"),
              ("url", "string", "string"), ("sightings", "int", "integer"),
              ("score", "double", "double"), ("agreed", "string", "string"),
              ("transform", "string", "string"), ("distances", "string", "string"))


@dataclass
class Node:
    id: str
    label: str
    attrs: dict = field(default_factory=dict)


@dataclass
class Edge:
    source: str
    target: str
    kind: str
    directed: bool = True
    attrs: dict = field(default_factory=dict)


@dataclass
class Graph:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    signals: list[str] = field(default_factory=list)
    _edge_keys: set[tuple[str, str, str]] = field(default_factory=set, repr=False)

    def node(self, node_id: str, label: object, **attrs) -> str:
        """Add a node once (ids and labels made XML-safe); give its id."""
        node_id = xml_text(node_id)
        if node_id not in self.nodes:
            self.nodes[node_id] = Node(node_id, xml_text(label),
                                       {k: v for k, v in attrs.items() if v is not None})
        return node_id

    def edge(self, source: str, target: str, kind: str, *, directed: bool = True,
             **attrs: Any) -> Edge:
        """Add an edge."""
        edge = Edge(source, target, kind, directed, attrs)
        self.edges.append(edge)
        return edge

    def edge_once(self, source: str, target: str, kind: str) -> None:
        """Add an edge, unless these nodes have one of this kind already."""
        if (source, target, kind) not in self._edge_keys:
            self._edge_keys.add((source, target, kind))
            self.edge(source, target, kind)


def ad_node_id(sighting: Sighting) -> str | None:
    """The graph id of a sighting's ad, or None when it names none."""
    key = Cluster.ad_key(sighting)
    if key is None:
        return None
    if key[0] == "ad":
        return f"ad:{key[1] or ''}:{key[2]}"
    return f"{key[0]}:{key[1]}"


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def image_node_id(names: ClusterNames, sha256: str | None) -> str:
    """The graph id of the image a sighting or link names (see the module docstring)."""
    key = names.key(sha256)
    return f"img:{key}" if key is not None else f"img:unresolved:{names.cluster_id}"


def build_graph(clusters: Sequence[Cluster]) -> Graph:
    """The graph model of the module docstring."""
    g = Graph()
    signals: set[str] = set()
    for c in clusters:
        names = ClusterNames(c)
        dates: dict[str, list[str]] = {}
        for s in c.sightings:
            key = names.key(s.sha256)
            if key and s.seen_at:
                dates.setdefault(key, []).append(s.seen_at)
        for img in c.images:
            key = image_key(img)
            seen = sorted(dates.get(key or "", []))
            g.node(f"img:{key}" if key else f"img:unresolved:{c.id}", short_name(key),
                   kind="image", cluster=c.id, width=img.get("width"),
                   height=img.get("height"), format=img.get("format"),
                   first_seen=seen[0] if seen else None, last_seen=seen[-1] if seen else None)

        def image(sha256: str | None) -> str:
            return g.node(image_node_id(names, sha256), names.label(sha256), kind="image",
                          cluster=c.id)

        image_ad: dict[tuple[str, str], Edge] = {}
        for s in c.sightings:
            holder = image_id = image(s.sha256)
            ad_id = ad_node_id(s)
            if ad_id is not None:
                kind, rest = ad_id.split(":", 1)
                label = f"{s.platform or '?'} {s.ad_id}" if s.ad_id else rest
                holder = ad = g.node(ad_id, label, kind=kind, platform=s.platform)
                edge = image_ad.get((image_id, ad))
                if edge is None:
                    edge = image_ad[(image_id, ad)] = g.edge(
                        image_id, ad, "seen_in", cluster=c.id, posted_at=s.posted_at,
                        collected_at=s.collected_at, url=s.url, sightings=0)
                edge.attrs["sightings"] += 1
            if s.platform:
                platform = g.node(f"platform:{s.platform}", s.platform, kind="platform")
                g.edge_once(holder, platform, "seen_in")
            for key, value in sorted((s.extra or {}).items(), key=lambda kv: str(kv[0])):
                if value is None or value == "":
                    continue
                text = _text(value)
                meta = g.node(f"meta:{key}:{text}", f"{key}: {text}", kind="meta",
                              field=str(key), value=text)
                g.edge_once(holder, meta, "has")
        for link in c.links:
            distances = link.get("distances") or {}
            signals.update(str(k) for k in distances)
            a, b = image(link.get("a")), image(link.get("b"))
            g.edge(a, b, "near_duplicate", directed=False, cluster=c.id,
                   score=link.get("score"),
                   agreed=",".join(str(x) for x in link.get("agreed") or ()),
                   transform=link.get("transform"),
                   distances=json.dumps(distances, sort_keys=True, default=str),
                   **{f"distance_{k}": v for k, v in distances.items()})
    g.signals = sorted(signals)
    return g


def _attr_table(g: Graph) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    edge_attrs = list(EDGE_ATTRS) + [(f"distance_{s}", "int", "integer") for s in g.signals]
    return list(NODE_ATTRS), edge_attrs


def _value(value: Any, kind: str) -> str:
    """A value as text of a declared type; ValueError or TypeError (from
    ``float`` or ``int``) when it is not one."""
    if kind == "double":
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("not a finite number")
        return repr(number)
    if kind in ("int", "long", "integer"):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("not an integer")
        return str(int(value))
    return xml_text(value)


def _usable(value: object, kind: str) -> bool:
    """Whether a value can be written as that type (strings always can)."""
    if value is None:
        return False
    try:
        _value(value, kind)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _write_xml(root: ET.Element, out: TextIO) -> None:
    ET.indent(root, space=" ")
    out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
    out.write(ET.tostring(root, encoding="unicode"))
    out.write("\n")


def write_graphml(clusters: Sequence[Cluster], out: TextIO, *,
                  made_with: dict | None = None) -> None:
    """GraphML: node and edge data declared as typed keys."""
    g = build_graph(clusters)
    node_attrs, edge_attrs = _attr_table(g)
    ET.register_namespace("", GRAPHML_NS)
    ET.register_namespace("xsi", _XSI)
    ns = f"{{{GRAPHML_NS}}}"
    root = ET.Element(ns + "graphml", {
        f"{{{_XSI}}}schemaLocation":
            f"{GRAPHML_NS} http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd"})
    keys: dict[tuple[str, str], tuple[str, str]] = {}
    for where, attrs, prefix in (("node", node_attrs, "n"), ("edge", edge_attrs, "e")):
        for index, (name, gtype, _) in enumerate(attrs):
            key = f"{prefix}{index}"
            keys[(where, name)] = (key, gtype)
            ET.SubElement(root, ns + "key", {"id": key, "for": where,
                                             "attr.name": xml_text(name), "attr.type": gtype})
    graph = ET.SubElement(root, ns + "graph", {"id": "imgmatch", "edgedefault": "directed"})
    if made_with:
        ET.SubElement(graph, ns + "desc").text = xml_text(f"Made with {describe(made_with)}")

    def data(parent: ET.Element, where: str, attrs: dict) -> None:
        for name, value in attrs.items():
            key, gtype = keys[(where, name)]
            if _usable(value, gtype):
                ET.SubElement(parent, ns + "data", {"key": key}).text = _value(value, gtype)

    for node in g.nodes.values():
        el = ET.SubElement(graph, ns + "node", {"id": xml_text(node.id)})
        data(el, "node", {"kind": node.attrs.get("kind"), "label": node.label,
                          **{k: v for k, v in node.attrs.items() if k != "kind"}})
    for number, edge in enumerate(g.edges):
        el = ET.SubElement(graph, ns + "edge", {
            "id": f"e{number}", "source": xml_text(edge.source),
            "target": xml_text(edge.target)})
        if not edge.directed:
            el.set("directed", "false")
        data(el, "edge", {"kind": edge.kind, **edge.attrs})
    _write_xml(root, out)


def write_gexf(clusters: Sequence[Cluster], out: TextIO, *,
               made_with: dict | None = None) -> None:
    """GEXF 1.3, a static graph with attributes declared up front (for Gephi)."""
    g = build_graph(clusters)
    node_attrs, edge_attrs = _attr_table(g)
    ET.register_namespace("", GEXF_NS)
    ET.register_namespace("xsi", _XSI)
    ns = f"{{{GEXF_NS}}}"
    root = ET.Element(ns + "gexf", {
        "version": "1.3",
        f"{{{_XSI}}}schemaLocation": f"{GEXF_NS} http://gexf.net/1.3/gexf.xsd"})
    meta = ET.SubElement(root, ns + "meta")
    ET.SubElement(meta, ns + "creator").text = "imgmatch"
    ET.SubElement(meta, ns + "description").text = (
        "Reused ad photos: images, the ads and platforms that showed them, their "
        "metadata values, and near-duplicate links"
        + (f". Made with {xml_text(describe(made_with))}" if made_with else ""))
    graph = ET.SubElement(root, ns + "graph", {"mode": "static",
                                               "defaultedgetype": "directed"})
    ids: dict[tuple[str, str], tuple[str, str]] = {}
    for where, attrs in (("node", node_attrs), ("edge", edge_attrs)):
        block = ET.SubElement(graph, ns + "attributes", {"class": where, "mode": "static"})
        declared = [a for a in attrs if not (where == "node" and a[0] == "label")]
        for index, (name, _, gtype) in enumerate(declared):  # a GEXF node has a label
            ids[(where, name)] = (str(index), gtype)
            ET.SubElement(block, ns + "attribute", {"id": str(index), "title": xml_text(name),
                                                    "type": gtype})

    def attvalues(parent: ET.Element, where: str, attrs: dict) -> None:
        declared = [(ids[(where, name)], value) for name, value in attrs.items()
                    if (where, name) in ids]
        values = [(aid, gtype, value) for (aid, gtype), value in declared
                  if _usable(value, gtype)]
        if values:
            block = ET.SubElement(parent, ns + "attvalues")
            for aid, gtype, value in values:
                ET.SubElement(block, ns + "attvalue", {"for": aid,
                                                       "value": _value(value, gtype)})

    nodes = ET.SubElement(graph, ns + "nodes")
    for node in g.nodes.values():
        el = ET.SubElement(nodes, ns + "node", {"id": xml_text(node.id),
                                                "label": xml_text(node.label)})
        attvalues(el, "node", node.attrs)
    edges = ET.SubElement(graph, ns + "edges")
    for number, edge in enumerate(g.edges):
        el = ET.SubElement(edges, ns + "edge", {
            "id": str(number), "source": xml_text(edge.source),
            "target": xml_text(edge.target), "kind": edge.kind, "label": edge.kind})
        if not edge.directed:
            el.set("type", "undirected")
        score = edge.attrs.get("score")
        if _usable(score, "double"):
            el.set("weight", _value(score, "double"))
        attvalues(el, "edge", {"kind": edge.kind, **edge.attrs})
    _write_xml(root, out)


LINK_COLUMNS = ("source", "target", "kind", "score", "agreed", "posted_at", "url",
                "cluster_id")


def link_rows(clusters: Sequence[Cluster]) -> Iterator[list[object]]:
    """One row per sighting (image -> its ad, else its platform) and per link."""
    for c in clusters:
        names = ClusterNames(c)
        for s in c.sightings:
            target = ad_node_id(s) or (f"platform:{s.platform}" if s.platform else "")
            yield [image_node_id(names, s.sha256), target, "seen_in", "", "", s.posted_at,
                   s.url, c.id]
        for link in c.links:
            yield [image_node_id(names, link.get("a")), image_node_id(names, link.get("b")),
                   "near_duplicate",
                   link.get("score"), ",".join(str(a) for a in link.get("agreed") or ()),
                   "", "", c.id]


_SURROGATE = re.compile("[\ud800-\udfff]")


def write_links_csv(clusters: Sequence[Cluster], out: TextIO, *, raw: bool = False) -> None:
    """Flat edge list: one row per sighting or link, spreadsheet-safe unless ``raw``.

    Values are kept as they are, except lone surrogates (text that was not
    UTF-8), which no UTF-8 file can hold: they become U+FFFD.
    """
    cell = (lambda v: "" if v is None else str(v)) if raw else safe_cell
    writer = csv.writer(out, lineterminator="\n",
                        quoting=csv.QUOTE_ALL if raw else csv.QUOTE_MINIMAL)
    writer.writerow(LINK_COLUMNS)
    for row in link_rows(clusters):
        writer.writerow([_SURROGATE.sub("\ufffd", cell(v)) for v in row])
