"""The terminal report: each cluster's story, platforms first, in plain text.

An image is named by its SHA-256 (shortened), or by its hash when it has
none (``pdq:9f3a5c0d11e2``, an imported hash; see :mod:`.names`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TextIO

from ..model import Cluster
from .names import ClusterNames

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")


def clean(value: object, width: int | None = None) -> str:
    """Printable text: control and bidi-override characters become '?'."""
    text = _CONTROL.sub("?", "" if value is None else str(value))
    if width is not None and len(text) > width:
        text = text[:width - 1] + "…"
    return text


def _day(when: str | None) -> str:
    return clean(when[:10]) if when else "?"


def _image(names: ClusterNames, sha256: str | None) -> str:
    """A sighting's image: 12 characters of its SHA-256, else its hash's name."""
    return clean(sha256, 12) if sha256 else f"{clean(names.label(sha256)):12}"


def write_table(clusters: Sequence[Cluster], out: TextIO, *,
                fields: Sequence[str] = ()) -> None:
    cross = sum(1 for c in clusters if len(c.platforms) > 1)
    out.write(f"{len(clusters)} reused picture{'s' if len(clusters) != 1 else ''}, "
              f"{cross} seen on more than one platform\n")
    for rank, c in enumerate(clusters, start=1):
        out.write("\n")
        order = " -> ".join(f"{clean(p, 30)} ({_day(d)})" for p, d in c.platform_order)
        n_p, n_i, n_s = len(c.platforms), len(c.images), len(c.sightings)
        out.write(f"#{rank}  cluster {c.id}: {n_p} platform{'s' if n_p != 1 else ''}, "
                  f"{n_i} image{'s' if n_i != 1 else ''}, "
                  f"{n_s} sighting{'s' if n_s != 1 else ''}, "
                  f"{c.ads} ad{'s' if c.ads != 1 else ''}, "
                  f"{_day(c.first_seen)} .. {_day(c.last_seen)}\n")
        if order:
            out.write(f"    route: {order}\n")
        if fields:
            values = c.field_values(fields)
            out.write("    " + "; ".join(
                f"{clean(name, 20)}: {', '.join(clean(v, 40) for v in values.get(name, [])) or '-'}"
                for name in fields) + "\n")
        names = ClusterNames(c)
        for s in c.sightings:
            extra = s.extra or {}
            details = ", ".join(f"{clean(k, 20)}={clean(v, 40)}" for k, v in sorted(extra.items())
                                if not k.endswith("_raw"))
            out.write(f"    {_day(s.seen_at)}  {clean(s.platform or '-', 16):16} "
                      f"{_image(names, s.sha256)}  "
                      f"{clean(s.url or s.source, 60)}"
                      f"{'  [' + details + ']' if details else ''}\n")
