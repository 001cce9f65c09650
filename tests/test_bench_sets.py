"""The second set's judged pairs: well formed, and one picture kept of each group.

The verdicts in ``scripts/second_set_shared_pictures.json`` decide which
pictures the second benchmark set leaves out, so a contradictory or
malformed entry would silently change the set; these checks catch it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_sets  # noqa: E402


def test_every_judged_pair_is_well_formed_and_judged_once():
    verdicts = json.loads(bench_sets.REVIEWED.read_text())
    seen = set()
    for v in verdicts:
        assert set(v) == {"a", "b", "same", "why"}
        assert isinstance(v["same"], bool) and v["why"].strip()
        assert v["a"] < v["b"], "pairs are kept in key order"
        assert (v["a"], v["b"]) not in seen, "a pair judged twice"
        seen.add((v["a"], v["b"]))
    assert any(v["same"] for v in verdicts) and not all(v["same"] for v in verdicts)


def test_one_picture_of_each_group_judged_the_same_stays():
    verdicts = [
        dict(a="a", b="b", same=True, why="one drawing"),
        dict(a="b", b="c", same=True, why="one drawing"),
        dict(a="d", b="e", same=False, why="one frame"),
        dict(a="f", b="g", same=True, why="one photo"),
    ]
    dropped = bench_sets.shared_pictures(verdicts)
    assert set(dropped) == {"b", "c", "g"}
    assert "as a " in dropped["c"] and "as f " in dropped["g"]


def test_the_left_out_pictures_include_the_judged_ones():
    dropped = bench_sets.excluded()
    judged = bench_sets.shared_pictures(json.loads(bench_sets.REVIEWED.read_text()))
    assert set(judged) <= set(dropped)


def test_a_rows_pool_key_names_its_picture_as_the_pool_does():
    assert bench_sets.pool_key(dict(source="text-banners", source_path="banner_007.png",
                                    kind="banner")) == "banner:007"
    row = dict(source="gimp-help-en", source_path="usr/share/a.png", kind="dark-photo")
    assert bench_sets.pool_key(row) == "dark:gimp-help-en:usr/share/a.png"
    assert bench_sets.pool_key(dict(row, kind="photo")) == "gimp-help-en:usr/share/a.png"
