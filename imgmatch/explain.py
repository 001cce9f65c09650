"""Why two catalogued images match or not: the evidence a query weighs, laid out.

A match that ends up in a case file must be reproducible and explainable:
which signals agreed and by how much, against which thresholds and which
versions of the algorithms, what the geometric verification found, what
score the evidence model made of it, and what that score is worth (the
precision measured at it on data the weights never saw).

The pair is measured by the code a query runs (:func:`imgmatch.match.measure`)
and scored by the same model (:mod:`imgmatch.evidence`), so an explanation
cannot tell another story than the query. The first image plays the query,
the second the candidate. The catalog keeps no pictures, but it keeps where
each was seen: when the first image's bytes can be read there again (its
SHA-256 must agree, as for ``imgmatch upgrade``), it is searched with
exactly what a query of that picture searches with (every rotation and
mirror, the local features of the picture, its mirror and its tiles, the
aligned comparison). When they cannot, its stored values stand in for it
(PDQ's rotations and mirrors derived from its bits, as ``query --pdq``
does), and the explanation's notes say what that could not show.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import match
from . import signals as registry
from .catalog import Catalog
from .errors import ImgmatchError, InputError, SignalError
from .decode import decode
from .evidence import RULES, SCALES, Evidence, Verified, calibration_at
from .features import regions
from .match import (THRESHOLDS, TRANSFORM_NAMES, VERIFIABLE, LocalQuery, explained, measure,
                    pixel_query, verify_reversed)
from .model import Explanation, Link, SignalComparison
from .records import HashValue
from .upgrade import reread

#: What a query searches with, made from an image's bytes: (bytes, a name for
#: messages, the hash signals, whether local features) -> (values per signal
#: for the picture's rotations and mirrors, local-feature views or None, grey
#: pixels or None); an InputError when the bytes cannot be decoded.
Prepare = Callable[[bytes, str, list[str], bool],
                   tuple[dict[str, list[HashValue]], list[LocalQuery] | None, Any]]
#: A query's search of the collection, from what :data:`Prepare` made: the
#: evidence it weighs for each candidate (:func:`imgmatch.match.weigh`).
Search = Callable[[dict[str, list[HashValue]], list[LocalQuery] | None, Any],
                  Mapping[int, Evidence]]


def decode_here(data: bytes, source: str, names: list[str],
                local_features: bool) -> tuple[dict[str, list[HashValue]],
                                               list[LocalQuery] | None, Any]:
    """:data:`Prepare` in this process (a long-lived service passes its
    sandbox's instead)."""
    decoded = decode(data, source=source)
    return pixel_query(lambda: decoded, names, local_features=local_features)


def explain_pair(catalog: Catalog, a: tuple[int, str], b: tuple[int, str],
                 prepare: Prepare = decode_here, search: Search | None = None,
                 indexed: Sequence[str] = ()) -> Explanation:
    """The explanation of catalogued images ``a`` and ``b``, each given as
    (image id, sha256); ImgmatchError when they have nothing to compare.
    ``prepare`` decodes ``a`` when its bytes can be read again.

    With ``search`` (the collection's, whose indexes hold the signals
    ``indexed``), A's picture is searched as a query would search it, and B
    is weighed as that query weighed it: the same views, the same tiles, the
    same score. Where the query does not put B forward for verification, B
    is verified here anyway, in each of A's views, and a note says so."""
    (id_a, sha_a), (id_b, sha_b) = a, b
    values = catalog.signals_of([id_a, id_b])
    mine, theirs = values.get(id_a, {}), values.get(id_b, {})
    blobs = catalog.features_of([id_a, id_b])
    robust = catalog.feature_count() > 0  # a query would compare local features
    names = sorted(set(theirs) | set(indexed))
    from_pixels = _from_pixels(catalog, id_a, names, robust, prepare)
    grey = None
    views: list[tuple[LocalQuery, set[int]]] = []
    ev = None
    if isinstance(from_pixels, tuple):
        query, local, grey = from_pixels
        unread = None
        if search is not None:
            ev = search(query, local, grey).get(id_b)
            if ev is not None and ev.verified is None and local and id_b in blobs:
                ev = None  # found by its hashes, not put forward for verification
        # a query verifies the candidates its views vote for; here, B in each
        views = [(view, {id_b}) for view in local or ()]
    else:
        unread = from_pixels
        query = {name: registry.get(name).dihedral_of_value(HashValue(name, data, quality))
                 for name, (data, quality) in mine.items()}
        if id_a in blobs:  # A's own features, without its mirror's
            views.append(((registry.local().load(blobs[id_a]), None), {id_b}))
    as_queried = ev is not None
    if ev is None:
        # like a query, the tiles only where the whole picture leaves it unexplained
        found, _ = measure(catalog, query, [id_b], views[:1], grey)
        if len(views) > 1 and not explained(found):
            found, _ = measure(catalog, query, [id_b], views, grey)
        if match.QUERY_REVERSE and views and not (grey is not None and regions(grey)):
            # as a query weighs it: verified the other way round too
            verify_reversed(catalog, views[0][0], found, THRESHOLDS["match"], grey=grey)
        ev = found.get(id_b)
    if ev is None or not (ev.hashes or ev.verified):
        raise ImgmatchError(
            f"images {sha_a[:12]} and {sha_b[:12]} have no signal in common to compare "
            f"({_listing(mine)} against {_listing(theirs)}); 'imgmatch upgrade' gives "
            "images the signals they lack")
    score = ev.settle()
    _, rules = ev.scored()
    versions = catalog.signal_versions([id_a, id_b])
    feature_versions = catalog.feature_versions([id_a, id_b])
    row = calibration_at(ev.tier, score)
    link = _stored_link(catalog, id_a, id_b, sha_b)
    return Explanation(
        a=sha_a, b=sha_b, verdict=_verdict(score), score=score,
        model_score=ev.model_score(), tier=ev.tier, rules={r: RULES[r] for r in rules},
        low_information=ev.low_information, transform=ev.transform,
        # A's value as compared: read from its picture now, or as stored
        signals=tuple(_comparison(name, ev, query[name], theirs[name][0],
                                  (registry.get(name).version if unread is None
                                   else versions.get(id_a, {}).get(name, 0),
                                   versions.get(id_b, {}).get(name, 0)))
                      for name in sorted(ev.hashes)),
        verification=_verification(ev, (feature_versions.get(id_a, 0),
                                        feature_versions.get(id_b, 0))),
        calibration={} if row is None else {
            "table": "held-out check set", "tier": ev.tier, "at_least": row[0],
            "precision": row[1], "recall": row[2]},
        thresholds=dict(THRESHOLDS), terms=ev.terms(),
        link=link, weighed_by="pdq" if ev.ranked_by_pdq() else ev.tier,
        notes=_notes(ev, mine, theirs, id_a in blobs or (robust and unread is None),
                     id_b in blobs, unread, as_queried or search is None)
        + ((f"the stored link's score ({link.score:.4f}) was measured from the pictures at "
            "ingest and is the better measure here",)
           if link is not None and unread is not None and abs(link.score - score) > 0.1
           else ()))


def _from_pixels(catalog: Catalog, image_id: int, names: list[str], robust: bool,
                 prepare: Prepare
                 ) -> tuple[dict[str, list[HashValue]], list[LocalQuery] | None, Any] | str:
    """What a query of the image's picture searches with (``names``' values
    for its rotations and mirrors, and in a robust collection its local
    features, its tiles' and its grey pixels), from its bytes read again
    where it was seen; else why they cannot be read."""
    found = reread(catalog, image_id)
    if isinstance(found, str):
        return found
    source, data = found
    try:
        return prepare(data, source, names, robust)
    except InputError as exc:
        return f"{exc.reason}: {exc}"
    except SignalError as exc:  # a signal's model failed on it
        return f"model-error: {exc}"


def _verdict(score: float) -> str:
    if score >= THRESHOLDS["cluster"]:
        return "same"
    return "lead" if score >= THRESHOLDS["match"] else "different"


def _comparison(name: str, ev: Evidence, variants: list[HashValue], b: bytes,
                versions: tuple[int, int]) -> SignalComparison:
    distance, informative = ev.hashes[name]
    # the rotation or mirror of A that the distance was measured from
    theirs = int.from_bytes(b, "big")
    which = min(range(len(variants)), key=lambda i: (
        (int.from_bytes(variants[i].data, "big") ^ theirs).bit_count(), i))
    sig = registry.get(name)
    if not informative or ev.low_information:
        verdict = "uninformative"
    elif name in ev.agreed:
        verdict = "agreed"
    elif name in ev.disagreed:
        verdict = "disagreed"
    else:
        verdict = "inconclusive"
    return SignalComparison(
        signal=name, a=variants[which].data.hex(), b=b.hex(), distance=distance,
        bits=sig.bits, threshold=sig.threshold, scale=SCALES.get(name), version=sig.version,
        versions=versions, quality=ev.qualities.get(name), informative=informative,
        verdict=verdict,
        transform=TRANSFORM_NAMES[which] if which < len(TRANSFORM_NAMES) else "identity")


def _verification(ev: Evidence, versions: tuple[int, int]) -> dict[str, Any] | None:
    """The local features' comparison, as an explanation shows it."""
    v = ev.verified
    if v is None:
        return None
    return {"matches": v.matches, "inliers": v.inliers, "support": round(v.support, 2),
            "spread": round(v.spread, 3),
            "coverage": None if v.coverage is None else round(v.coverage, 3),
            "shared_area": round(v.shared_area, 3), "overlap": round(v.overlap, 3),
            "aligned": v.aligned,
            "aligned_on": None if v.aligned is None else "centre" if v.aligned_centre else "whole",
            "repeated": None if v.repeated is None else round(v.repeated, 3),
            "in_tile": v.in_tile, "reversed": v.reversed,
            "framed_share": None if v.framed_share is None else round(v.framed_share, 3),
            "strong": ev.strong_geometry,
            "agreed": registry.FEATURES in ev.agreed, "version": registry.local().version,
            "versions": list(versions), "regions": _regions(v)}


def _regions(v: Verified) -> dict[str, list[float] | None] | None:
    """Where the inliers lie in A and in B: (x0, y0, x1, y1) as shares of each
    image's width and height (a collage's cell, a screenshot's photo)."""
    if v.regions is None:
        return None
    return {side: None if box is None else [round(x, 3) for x in box]
            for side, box in zip(("a", "b"), v.regions)}


def _stored_link(catalog: Catalog, id_a: int, id_b: int, sha_b: str) -> Link | None:
    for other, score, distances, agreed, transform in catalog.links_of(id_a):
        if other == id_b:
            return Link(sha_b, score, distances, agreed, transform)
    return None


def _notes(ev: Evidence, mine: dict, theirs: dict, a_features: bool,
           b_features: bool, unread: str | None, as_queried: bool = True) -> tuple[str, ...]:
    """What this comparison could not do, where it matters."""
    out = []
    if unread is None:
        out.append("A was read again from where it was seen and searched as a query "
                   "of its picture would be")
        if not as_queried:
            out.append("a query of A's picture does not put B forward for geometric "
                       "verification (its local features do not vote for B): B was "
                       "verified here in each of A's views, so the score is the best "
                       "such a query could give")
    else:
        out.append(f"A could not be read again ({_reason(unread)}): its stored values "
                   "stand in for its picture")
    for who, have, lack in (("A", mine, theirs), ("B", theirs, mine)):
        missing = sorted(set(lack) - set(have))
        if missing and (who == "B" or unread is not None):
            out.append(f"{who} has no {', '.join(missing)}, so it was not compared "
                       "('imgmatch upgrade' adds the signals images lack)")
    if a_features and not b_features:
        out.append("B has no local features: not verified geometrically")
    elif b_features and not a_features:
        out.append("A has no local features: not verified geometrically (a query with "
                   "A's picture would have them)")
    elif a_features and b_features and not ev.robust:
        out.append(f"A or B has fewer than {VERIFIABLE} keypoints, too few to verify: "
                   "weighed by its hashes alone")
    if ev.verified is not None and unread is not None:
        out.append("without A's picture, its local features were compared without its "
                   "mirror image and the aligned comparison was not made")
    if unread is not None and ev.transform != "identity" and {"phash", "dhash"} & set(ev.hashes):
        out.append(f"PDQ matched best as A's {ev.transform}, derived from its bits; the "
                   "64-bit hashes cannot be turned so without pixels and were compared "
                   "as stored")
    return tuple(out)


def _reason(why: str) -> str:
    """The reason code of why an image could not be read again, without the
    file or record it names."""
    return why.split(":", 1)[0]


def _listing(values: dict) -> str:
    return ", ".join(sorted(values)) or "no hashes"
