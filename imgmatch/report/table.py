"""The terminal report: each cluster's story, platforms first, in plain text.

An image is named by its SHA-256 (shortened), or by its hash when it has
none (``pdq:9f3a5c0d11e2``, an imported hash; see :mod:`.names`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from ..model import Cluster
from ..text import printable
from .provenance import describe
from .names import ClusterNames, short_name


def _day(when: str | None) -> str:
    return printable(when[:10]) if when else "?"


def _image(names: ClusterNames, sha256: str | None) -> str:
    """A sighting's image: 12 characters of its SHA-256, else its hash's name."""
    return printable(sha256, 12) if sha256 else f"{printable(names.label(sha256)):12}"


def write_table(clusters: Sequence[Cluster], out: TextIO, *,
                fields: Sequence[str] = (), made_with: dict | None = None) -> None:
    cross = sum(1 for c in clusters if len(c.platforms) > 1)
    out.write(f"{len(clusters)} reused picture{'s' if len(clusters) != 1 else ''}, "
              f"{cross} seen on more than one platform\n")
    for rank, c in enumerate(clusters, start=1):
        out.write("\n")
        order = " -> ".join(f"{printable(p, 30)} ({_day(d)})" for p, d in c.platform_order)
        n_p, n_i, n_s = len(c.platforms), len(c.images), len(c.sightings)
        out.write(f"#{rank}  cluster {c.id}: {n_p} platform{'s' if n_p != 1 else ''}, "
                  f"{n_i} image{'s' if n_i != 1 else ''}, "
                  f"{n_s} sighting{'s' if n_s != 1 else ''}, "
                  f"{c.ads} ad{'s' if c.ads != 1 else ''}, "
                  f"{_day(c.first_seen)} .. {_day(c.last_seen)}\n")
        if order:
            out.write(f"    route: {order}\n")
        for w in c.watched:
            out.write(f"    watched: {printable(w['watchlist'], 30)} "
                      f"({printable(w.get('source') or 'source not given', 40)}; "
                      f"{printable(w.get('licence') or 'terms not given', 40)}), entry "
                      f"{printable(w.get('name') or w['entry_id'], 40)} at "
                      f"{w['distance']} bits of image {short_name(w.get('image'))}"
                      f"{' (negative list)' if w.get('negative') else ''}\n")
        if fields:
            values = c.field_values(fields)
            out.write("    " + "; ".join(
                f"{printable(name, 20)}: "
                f"{', '.join(printable(v, 40) for v in values.get(name, [])) or '-'}"
                for name in fields) + "\n")
        names = ClusterNames(c)
        for s in c.sightings:
            extra = s.extra or {}
            details = ", ".join(f"{printable(k, 20)}={printable(v, 40)}"
                                for k, v in sorted(extra.items()) if not k.endswith("_raw"))
            out.write(f"    {_day(s.seen_at)}  {printable(s.platform or '-', 16):16} "
                      f"{_image(names, s.sha256)}  "
                      f"{printable(s.url or s.source, 60)}"
                      f"{'  [' + details + ']' if details else ''}\n")
    if made_with:
        out.write(f"made with {printable(describe(made_with))}\n")
