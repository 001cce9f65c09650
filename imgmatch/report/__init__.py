"""Report writers: one data model (clusters), several formats.

Every writer takes the clusters and a text stream. Crawled text is hostile:
the CSV writer neutralises spreadsheet formulas unless asked for raw output,
and the table writer strips control characters so a caption cannot rewrite
the analyst's terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TextIO

from ..model import Cluster
from .csvfmt import write_csv
from .jsonfmt import write_json
from .table import write_table

Writer = Callable[[Sequence[Cluster], TextIO], None]

FORMATS: dict[str, Writer] = {
    "table": write_table,
    "json": write_json,
    "csv": write_csv,
}

__all__ = ["FORMATS", "write_table", "write_json", "write_csv"]
