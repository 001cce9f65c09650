"""Report writers: one data model (clusters), several formats.

Every writer takes the clusters and a text stream. Crawled text is hostile:
the CSV writers neutralise spreadsheet formulas unless asked for raw output,
the table writer strips control characters so a caption cannot rewrite the
analyst's terminal, the GraphML and GEXF writers never emit a character XML
forbids, and the HTML report escapes everything and loads nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from ..errors import ImgmatchError
from ..model import Cluster
from .csvfmt import write_csv
from .graph import write_gexf, write_graphml, write_links_csv
from .html import write_html
from .jsonfmt import write_json
from .table import write_table

Writer = Callable[[Sequence[Cluster], TextIO], None]

FORMATS: dict[str, Writer] = {
    "table": write_table,
    "json": write_json,
    "csv": write_csv,
    "links-csv": write_links_csv,
    "graphml": write_graphml,
    "gexf": write_gexf,
    "html": write_html,
}

#: The names of the formats, for a choice of them.
REPORT_FORMATS: tuple[str, ...] = tuple(sorted(FORMATS))


def write_report(clusters: Sequence[Cluster], out: TextIO, format: str = "table", *,
                 raw: bool = False, fields: Sequence[str] = (),
                 thumbnails: Mapping[str, bytes] | None = None,
                 made_with: dict | None = None) -> None:
    """Write clusters in one of :data:`REPORT_FORMATS`, with the options that
    format takes: ``raw`` (csv, links-csv: do not neutralise spreadsheet
    formulas), ``fields`` (table: the metadata fields whose values each cluster
    lists), ``thumbnails`` (html: JPEG bytes by sha256, embedded), and
    ``made_with`` (:meth:`Collection.made_with`: the version, signals and
    thresholds, stated by every format with room for it; the CSV formats,
    one row per sighting or link, have none)."""
    if format == "csv":
        write_csv(clusters, out, raw=raw)
    elif format == "links-csv":
        write_links_csv(clusters, out, raw=raw)
    elif format == "table":
        write_table(clusters, out, fields=fields, made_with=made_with)
    elif format == "html":
        write_html(clusters, out, thumbnails=dict(thumbnails or {}), made_with=made_with)
    elif format in ("json", "graphml", "gexf"):
        writer = {"json": write_json, "graphml": write_graphml, "gexf": write_gexf}[format]
        writer(clusters, out, made_with=made_with)
    else:
        raise ImgmatchError(f"no report format {format!r}; one of {', '.join(REPORT_FORMATS)}")


__all__ = ["FORMATS", "REPORT_FORMATS", "write_report", "write_csv", "write_gexf",
           "write_graphml", "write_html", "write_json", "write_links_csv", "write_table"]
