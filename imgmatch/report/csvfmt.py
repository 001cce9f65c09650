"""The CSV report: one row per sighting, with its cluster's summary columns.

Spreadsheet-safe by default: a cell beginning with =, +, -, @, a tab or a
carriage return is prefixed with a single quote, so a formula planted in a
crawled caption never runs when an analyst opens the file (OWASP's advice
for CSV injection). Control characters inside a cell are written as visible
escapes (``\\r``, ``\\n``, ``\\x07``): Python's CSV writer leaves a lone carriage
return unquoted, and a reader that ends lines there would start a new row,
and a formula cell, in the middle of a crawled URL. ``raw=True`` writes
values untouched, every cell quoted.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from typing import TextIO

from ..model import Cluster

COLUMNS = ("cluster_id", "cluster_platforms", "cluster_first_seen", "cluster_last_seen",
           "cluster_images", "cluster_sightings", "cluster_ads", "sha256", "platform",
           "posted_at", "collected_at", "url", "page_url", "ad_id", "source", "extra")

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_ESCAPES = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _ESCAPES:
        return _ESCAPES[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def safe_cell(value: object) -> str:
    """Neutralise a cell a spreadsheet would run as a formula, and every line
    break or control character inside it (escaped, so nothing is lost)."""
    text = "" if value is None else str(value)
    text = "'" + text if text.startswith(_FORMULA_START) else text
    return _CONTROL.sub(_escape, text)


def write_csv(clusters: Sequence[Cluster], out: TextIO, *, raw: bool = False) -> None:
    cell = (lambda v: "" if v is None else str(v)) if raw else safe_cell
    writer = csv.writer(out, lineterminator="\n",
                        quoting=csv.QUOTE_ALL if raw else csv.QUOTE_MINIMAL)
    writer.writerow(COLUMNS)
    for c in clusters:
        head = [c.id, ";".join(c.platforms), c.first_seen, c.last_seen, len(c.images),
                len(c.sightings), c.ads]
        for s in c.sightings:
            extra = json.dumps(s.extra or {}, ensure_ascii=False, sort_keys=True)
            row = head + [s.sha256, s.platform, s.posted_at, s.collected_at, s.url,
                          s.page_url, s.ad_id, s.source, extra]
            writer.writerow([cell(v) for v in row])
