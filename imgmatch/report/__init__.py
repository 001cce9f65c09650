"""Report writers: one data model (clusters), several formats.

Every writer takes the clusters and a text stream. Crawled text is hostile:
the CSV writers neutralise spreadsheet formulas unless asked for raw output,
the table writer strips control characters so a caption cannot rewrite the
analyst's terminal, the GraphML and GEXF writers never emit a character XML
forbids, and the HTML report escapes everything and loads nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TextIO

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

__all__ = ["FORMATS", "write_csv", "write_gexf", "write_graphml", "write_html", "write_json",
           "write_links_csv", "write_table"]
