"""Fit the evidence model's weights on one benchmark set (the ``fit`` half by default).

Every query of the set is run through imgmatch's own query path with no
minimum score, and each of its top candidates becomes one labelled pair:
its evidence (every signal's distance and informativeness, the
verification's inliers, spread and shared area) and whether it is the
query's reference. A logistic model per tier is fitted to those pairs
(:func:`imgmatch.evidence.fit`), and printed as the Python literal to paste
into ``imgmatch/evidence.py``, with the score-to-precision table of the
fitted model on the same pairs. The held-out check is ``scripts/bench
accuracy`` on the other sets: never fit and report on one set.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import SYSTEMS, ImgmatchSystem, load_scorer  # noqa: E402
from bench_sets import ensure  # noqa: E402

def table(scores: np.ndarray, labels: np.ndarray, positives: int,
          steps=(0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)) -> list[str]:
    rows = ["| score ≥ | precision | recall |", "|---|---|---|"]
    for t in steps:
        kept = scores >= t
        precision = labels[kept].mean() if kept.any() else float("nan")
        rows.append(f"| {t:.2f} | {precision:.4f} | {labels[kept].sum() / positives:.3f} |")
    return rows


def wilson_low(right: int, total: int, z: float = 1.96) -> float:
    """The lower end of the 95% Wilson interval of a proportion."""
    if total == 0:
        return 0.0
    p = right / total
    centre = p + z * z / (2 * total)
    spread = z * ((p * (1 - p) + z * z / (4 * total)) / total) ** 0.5
    return (centre - spread) / (1 + z * z / total)


def precise_score(scores: np.ndarray, labels: np.ndarray, target: float = 0.99) -> float:
    """The lowest score (in steps of 0.01) from which the precision's 95% lower
    bound reaches ``target`` on these pairs: the score to document, with a
    margin for the sample the weights were fitted on."""
    for t in np.arange(0.5, 1.0, 0.01):
        kept = scores >= t
        if kept.any() and wilson_low(int(labels[kept].sum()), int(kept.sum())) >= target:
            return round(float(t), 2)
    return 1.0


def recall_at_precision(rows: list[tuple[str, int, float]], positives: int,
                        top: int = 10, precision: float = 0.99) -> float:
    """The scorer's R@P99: each query's top predictions pooled and sorted by
    score; the best recall (of positive queries) at precision >= 0.99."""
    by_query: dict[str, list[tuple[float, int]]] = {}
    for q, label, score in rows:
        by_query.setdefault(q, []).append((score, label))
    pooled = sorted((p for preds in by_query.values()
                     for p in sorted(preds, reverse=True)[:top]), reverse=True)
    best = right = total = 0
    k = 0
    while k < len(pooled):
        score = pooled[k][0]
        while k < len(pooled) and pooled[k][0] == score:  # tied scores: one threshold
            right += pooled[k][1]
            total += 1
            k += 1
        if right / total >= precision:
            best = max(best, right)
    return best / positives


def fit_tier(evs: list, ys: list[int], qids: list[str], positives: int, gates, l2: float,
             negative_weights=(1.0, 4.0, 16.0)):
    """The gate, negative weight and model with the best R@P99 on these pairs
    (ties: the higher gate, precision first), recalibrated (Platt) so that its
    scores are probabilities again."""
    from dataclasses import replace

    from imgmatch import evidence

    y = np.array(ys, float)
    tier = evs[0].tier
    best = None
    for gate in gates:
        gated = dict(evidence.MODELS, **{tier: replace(evidence.MODELS[tier], gate=gate)})
        usable = [k for k, ev in enumerate(evs) if not ev.plain(gated)]
        x = np.array([evs[k].features() for k in usable])
        for weight in negative_weights:
            model = evidence.fit(x, y[usable], l2=l2, signs=evidence.SIGNS,
                                 negative_weight=weight)
            model = replace(evidence.recalibrate(model, x, y[usable]), gate=gate)
            models = dict(evidence.MODELS, **{tier: model})
            scores = np.array([ev.score(models) for ev in evs])
            r = recall_at_precision(list(zip(qids, ys, scores.tolist())), positives)
            print(f"  gate {gate}, negatives x{weight:g}: R@P99 {r:.3f}, "
                  f"{len(evs) - len(usable)} low-information", file=sys.stderr)
            if best is None or r >= best[0]:
                best = (r, gate, model, scores)
    return best


def picture_groups(data: Path, ds) -> dict[str, str]:
    """Each query's picture: its reference, or for a negative query the picture
    it was made from (``negative_source_id``, where the set records it), so
    that copies of one picture never sit on both sides of a fold."""
    extra: dict[str, str] = {}
    with open(Path(data) / "queries.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("negative_source_id"):
                extra[row["query_id"]] = row["negative_source_id"]
    return {q.query_id: q.reference_id or extra.get(q.query_id, q.query_id)
            for q in ds.queries}


def cross_validated(evs: list, ys: list[int], qids: list[str], positives: int,
                    groups: dict[str, str], gates, l2: float, folds: int = 2) -> float:
    """R@P99 of the whole fitting procedure (gate, weights, recalibration) on
    pictures it did not see: the fit set's pictures split in ``folds`` by a
    hash of their id, each fold scored by a model fitted on the others. A
    first filter for a change to the features; it still shares the fit
    set's families of pictures (icons of one series, an app's screenshots),
    so only the held-out set says whether a change carries over."""
    from imgmatch import evidence

    fold = [zlib.crc32(groups.get(q, q).encode()) % folds for q in qids]
    scores = np.zeros(len(evs))
    for f in range(folds):
        train = [k for k in range(len(evs)) if fold[k] != f]
        held = [k for k in range(len(evs)) if fold[k] == f]
        # (the fit keeps the model of best recall: the same whatever it is divided by)
        _, _, model, _ = fit_tier([evs[k] for k in train], [ys[k] for k in train],
                                  [qids[k] for k in train], positives, gates, l2)
        models = dict(evidence.MODELS, **{evs[0].tier: model})
        for k in held:
            scores[k] = evs[k].score(models)
    return recall_at_precision(list(zip(qids, ys, scores.tolist())), positives)


def collect(ds, tier: str, truth: dict, top_k: int) -> tuple[list, list, list, dict]:
    """Run every query of ``ds`` through one system; each of its top candidates
    becomes a labelled pair: (evidences, labels, query ids, reference by pair)."""
    from imgmatch import evidence

    system = ImgmatchSystem(**SYSTEMS[tier])
    system.top_k = top_k
    print(f"{tier}: indexing {len(ds.references)} references", file=sys.stderr)
    system.index([path for _, path in ds.references])
    evs, ys, qids = [], [], []
    refs_of: dict[int, str] = {}
    for q in ds.queries:
        system.search(q.path)
        for row in system.evidence[Path(q.path).stem]:
            evs.append(evidence.Evidence.from_json(row["evidence"], robust=tier == "robust"))
            ys.append(int(truth.get(q.query_id) == row["reference"]))
            qids.append(q.query_id)
            refs_of[id(evs[-1])] = row["reference"]
    system.collection.close()
    return evs, ys, qids, refs_of


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="a set in ../shared/bench's layout "
                    "(default: the fit half of the second set)")
    ap.add_argument("--tiers", default="pdq,hashes,robust",
                    help="the benchmark systems whose pairs fit each model")
    ap.add_argument("--gates", default="0,10,20,30,40,50",
                    help="pHash information gates to try (the quality under which a "
                         "picture is low-information)")
    ap.add_argument("--l2", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--cv", action="store_true",
                    help="also report the R@P99 of the fitting procedure on pictures "
                         "it did not see (2 folds of the set's pictures)")
    ap.add_argument("--json", type=Path, help="write the fitted models here")
    ap.add_argument("--pairs", type=Path, help="write every labelled pair here "
                    "(FILE.TIER.jsonl), to see what the wrong ones are")
    ap.add_argument("--from-pairs", type=Path, help="fit on pairs written by --pairs "
                    "(FILE.TIER.jsonl) instead of running the queries again")
    args = ap.parse_args(argv)

    from imgmatch import evidence

    scorer = load_scorer()
    data = args.data or ensure("fit")
    ds = scorer.load_dataset(data)
    truth = {q.query_id: q.reference_id for q in ds.queries if not q.is_negative}
    positives = len(truth)
    gates = [int(g) for g in args.gates.split(",")]
    fitted = {}
    lines = []
    for tier in args.tiers.split(","):
        evs, ys, qids = [], [], []
        refs_of: dict[int, str] = {}
        if args.from_pairs:
            for line in open(args.from_pairs.with_suffix(f".{tier}.jsonl")):
                row = json.loads(line)
                evs.append(evidence.Evidence.from_json(row["evidence"],
                                                       robust=tier == "robust"))
                ys.append(row["right"])
                qids.append(row["query"])
                refs_of[id(evs[-1])] = row["reference"]
        else:
            evs, ys, qids, refs_of = collect(ds, tier, truth, args.top_k)
        r, gate, model, scores = fit_tier(evs, ys, qids, positives, gates, args.l2)
        at99 = precise_score(scores, np.array(ys, float))
        if args.cv:
            cv = cross_validated(evs, ys, qids, positives,
                                 picture_groups(data, ds), gates, args.l2)
            lines += ["", f"{tier}: R@P99 of the fitting procedure on pictures it did not "
                      f"see (2 folds): {cv:.3f}"]
        fitted[tier] = {"gate": gate, "bias": model.bias, "weights": model.weights,
                        "recall_at_p99": r, "precision_99_score": at99}
        lines += ["", f"{tier}: {len(evs)} candidate pairs ({sum(ys)} right); pHash gate "
                  f"{gate}; R@P99 on these pairs {r:.3f}; precision >= 0.99 (95% lower "
                  f"bound) from score {at99}", "",
                  *table(scores, np.array(ys, float), positives),
                  "", f'    "{tier}": Model({model.bias:.3f}, ('
                  + ", ".join(f"{w:.3f}" for w in model.weights)
                  + f"), gate={gate}, precise={at99}),"]
        if args.pairs:
            with open(args.pairs.with_suffix(f".{tier}.jsonl"), "w") as fh:
                for q, ev, label, score in zip(qids, evs, ys, scores.tolist()):
                    fh.write(json.dumps({"query": q, "right": label, "score": score,
                                         "reference": refs_of.get(id(ev)),
                                         "evidence": ev.to_json()}) + "\n")
    lines += ["", "features: " + ", ".join(evidence.FEATURE_NAMES)]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(fitted, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
