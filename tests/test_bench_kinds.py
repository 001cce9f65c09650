"""The composite families' recall broken down by what their picture is.

Issue 15 asks for "the photos inside collages"; the scorer pools a family's
queries whatever their original, so a family's misses can all be flat clip
art, banners and app screens. ``scripts/bench accuracy`` also prints each
composite family by kind of original, at the run's precision-0.99 threshold.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_accuracy  # noqa: E402


@dataclass
class Query:
    query_id: str
    family: str
    reference_id: str
    is_negative: bool
    kind: str


def test_queries_found_at_the_threshold_are_counted_by_family_and_kind() -> None:
    queries = [Query("q1", "collage", "r1", False, "photo"),
               Query("q2", "collage", "r2", False, "clipart"),
               Query("q3", "collage", "r3", False, "clipart"),
               Query("q4", "collage", "", True, "photo"),     # negatives are not counted
               Query("q5", "crop", "r5", False, "photo"),      # nor other families
               Query("q6", "screenshot", "r6", False, "")]
    predictions = [("q1", "r1", 0.9), ("q1", "r1", 0.2),      # the best of a pair counts
                   ("q2", "r9", 0.99), ("q2", "r2", 0.4),      # under the threshold
                   ("q3", "r3", 0.5), ("q4", "r1", 0.99), ("q5", "r5", 1.0),
                   ("q6", "r6", 0.7)]
    table = bench_accuracy.by_kind(predictions, queries, 0.5)
    assert table == {"collage": {"photo": (1, 1), "clipart": (1, 2)},
                     "screenshot": {"unknown": (1, 1)}}
    assert bench_accuracy.by_kind(predictions, queries, None)["collage"] == \
        {"photo": (0, 1), "clipart": (0, 2)}  # no threshold reached: none found
    lines = bench_accuracy.kind_lines({"robust": {"by_kind": table}})
    assert "| collage | 1 / 2 | 1 / 1 | - | 2 / 3 |" in lines
    assert "| screenshot | - | - | 1 / 1 | 1 / 1 |" in lines
