"""Scoring a benchmark run's predictions again: each in the model that weighed it.

``scripts/bench rescore`` measures a change to the evidence model on the
candidates an accuracy run found; a prediction scored in the wrong tier's
model would move the figures by itself, so the unchanged model must give
back the run's own scores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from imgmatch.evidence import Evidence, Verified

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_rescore  # noqa: E402


def _reported(ev: Evidence, *, named: bool) -> dict:
    out = ev.to_json()
    if not named:  # as runs reported it before evidence named its tier
        out.pop("tier")
    return {"reference": "r_1", "score": ev.settle(), "evidence": out}


@pytest.mark.parametrize("named", [True, False])
def test_the_unchanged_model_gives_back_the_run_s_scores(named: bool) -> None:
    hashes = {"pdq": (24, True), "phash": (2, True), "dhash": (1, True)}
    unverified = Verified(inliers=0, support=0.0, spread=0.0, shared_area=0.0)
    verified = Verified(inliers=120, support=90.0, spread=0.8, shared_area=0.5, overlap=0.3)
    found = [Evidence(hashes=dict(hashes), verified=unverified, robust=False,
                      qualities={"phash": 85}),  # too smooth to verify: hash model
             Evidence(hashes=dict(hashes), verified=verified, robust=True,
                      qualities={"phash": 85}),
             Evidence(hashes={"pdq": (116, False), "phash": (24, False), "dhash": (0, False)},
                      qualities={"phash": 0}, robust=True)]
    run = {"robust": {"evidence": {f"q_{i}": [_reported(ev, named=named)]
                                   for i, ev in enumerate(found)}}}
    again = bench_rescore.rescored(run, "robust")
    assert [s for _, _, s in again] == pytest.approx([ev.settle() for ev in found])
    # the robust model would have scored the smooth candidate otherwise
    assert Evidence.from_json({**found[0].to_json(), "tier": "robust"}).settle() \
        != pytest.approx(found[0].settle())


def test_negatives_over_the_threshold_are_counted_per_query() -> None:
    metrics = {"per_family": {"crop": {"n_neg": 40, "neg_false_alarm_at_t99": 0.05},
                              "jpeg": {"n_neg": 60, "neg_false_alarm_at_t99": 0.0}}}
    assert bench_rescore.negatives_at(metrics) == pytest.approx(0.02)


def test_only_the_families_that_moved_are_listed() -> None:
    before = {"per_family": {"chain": {"recall_at_t99": 0.868}, "crop": {"recall_at_t99": 0.961}}}
    after = {"per_family": {"chain": {"recall_at_t99": 0.895}, "crop": {"recall_at_t99": 0.961}}}
    assert bench_rescore.family_rows("check", "robust", before, after) == [
        "| check | robust | chain | 0.868 → 0.895 |"]
