"""The JSON report: the stable, machine-readable shape of the clusters."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TextIO

from ..model import Cluster

REPORT_VERSION = 1


def report_dict(clusters: Sequence[Cluster], made_with: dict | None = None) -> dict:
    """The report's JSON shape; ``made_with`` (see :mod:`.provenance`) says
    what made it."""
    platforms = sorted({p for c in clusters for p in c.platforms})
    return {
        "report_version": REPORT_VERSION,
        **({"made_with": made_with} if made_with else {}),
        "n_clusters": len(clusters),
        "n_cross_platform": sum(1 for c in clusters if len(c.platforms) > 1),
        "platforms": platforms,
        "clusters": [c.to_json() for c in clusters],
    }


def write_json(clusters: Sequence[Cluster], out: TextIO, *,
               made_with: dict | None = None) -> None:
    json.dump(report_dict(clusters, made_with), out, indent=2, ensure_ascii=False)
    out.write("\n")
