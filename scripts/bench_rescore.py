"""Score a ``bench accuracy --json`` run's predictions again, with the evidence model as it is now.

Every prediction of a run keeps its evidence (hash distances, qualities,
verification), so a change to how evidence becomes a score (a rule, a cap,
a constant of :mod:`imgmatch.evidence`) can be measured on the candidates
the run found without running the queries again: seconds instead of a
quarter of an hour. What it cannot see: candidates outside a query's top 10
in that run (a change that raises a score can bring one in), links, and the
crawl; ``scripts/bench accuracy`` measures those.

``--set NAME=VALUE`` changes a constant of :mod:`imgmatch.evidence` first
(``--set MEAN_CLOSENESS=0``), so a rule can be compared with what it
replaced in one run; ``--families`` lists the families whose recall at
precision 0.99 moved. The sets are found by name among ``--data`` folders
(default: the second set's halves and ../shared/bench's dev set).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import DATA, emit, shared_bench  # noqa: E402


def rescored(run: dict, tier: str) -> list[tuple[str, str, float]]:
    """The run's (query, reference, score) predictions of ``tier``, scored again.

    Evidence reported before it named its model (``tier``) is taken in the
    model whose new score lies nearer the reported one: a robust query weighs
    a candidate with too few keypoints to verify by the hash tier's model."""
    from imgmatch.evidence import Evidence

    out = []
    for query, found in run[tier]["evidence"].items():
        for m in found:
            if "tier" in m["evidence"] or tier != "robust":
                score = Evidence.from_json(m["evidence"], robust=tier == "robust").settle()
            else:
                score = min((Evidence.from_json(m["evidence"], robust=robust).settle()
                             for robust in (True, False)), key=lambda s: abs(s - m["score"]))
            out.append((query, m["reference"], score))
    return out


def negatives_at(metrics: dict) -> float:
    """Share of negative queries with a prediction at the P0.99 threshold or above."""
    families = metrics["per_family"].values()
    count = sum(f["n_neg"] for f in families)
    return sum(f["neg_false_alarm_at_t99"] * f["n_neg"] for f in families) / max(1, count)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="a `scripts/bench accuracy --json` file")
    ap.add_argument("--data", type=Path, action="append", default=[],
                    help="a set's folder, found by its name in the results (repeat)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a constant of imgmatch.evidence to change first")
    ap.add_argument("--families", action="store_true",
                    help="also list each family whose recall at P0.99 moved")
    ap.add_argument("--md", type=Path, help="also write the Markdown table here")
    args = ap.parse_args(argv)
    from imgmatch import evidence

    for item in args.set:
        name, _, value = item.partition("=")
        if not hasattr(evidence, name):
            ap.error(f"imgmatch.evidence has no {name}")
        try:
            setattr(evidence, name, ast.literal_eval(value))
        except (ValueError, SyntaxError):
            ap.error(f"--set {item}: the value must be a Python literal (0.5, True, 96)")
    sys.path.insert(0, str(shared_bench()))
    import score

    folders = {p.name: p for p in args.data} or {
        p.name: p for p in (DATA.iterdir() if DATA.is_dir() else ())
        if (p / "queries.csv").exists()}
    results = json.loads(args.results.read_text())
    moved: list[str] = []
    lines = [f"Predictions of `{args.results.name}` scored again"
             + (f" with {', '.join(args.set)}" if args.set else "") + ":", "",
             "| set | tier | µAP | recall at P0.99 | its threshold | negatives at it |",
             "|---|---|---|---|---|---|"]
    for name, run in results.items():
        if name not in folders:
            print(f"skipped {name}: no --data folder of that name", file=sys.stderr)
            continue
        dataset = score.load_dataset(folders[name])
        for tier in run:
            before = run[tier]["metrics"]
            after = score.evaluate(rescored(run, tier), dataset)
            lines.append(
                f"| {name} | {tier} | {before['uAP']:.4f} → {after['uAP']:.4f} | "
                f"{before['recall_at_p99']:.4f} → {after['recall_at_p99']:.4f} | "
                f"{before['threshold_p99']:.3f} → {after['threshold_p99']:.3f} | "
                f"{negatives_at(before):.2%} → {negatives_at(after):.2%} |")
            if args.families:
                moved.extend(family_rows(name, tier, before, after))
    if moved:
        lines += ["", "| set | tier | family | recall at P0.99 |", "|---|---|---|---|", *moved]
    return emit(lines, args.md)


def family_rows(name: str, tier: str, before: dict, after: dict) -> list[str]:
    """Table rows of the families whose recall at the P0.99 threshold moved."""
    out = []
    for family, now in after["per_family"].items():
        was = before["per_family"][family]["recall_at_t99"]
        if abs(now["recall_at_t99"] - was) > 1e-9:
            out.append(f"| {name} | {tier} | {family} | {was:.3f} → {now['recall_at_t99']:.3f} |")
    return out


if __name__ == "__main__":
    sys.exit(main())
