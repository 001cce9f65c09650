"""Query -> candidates from every signal's index -> exact distances -> scored matches.

This is the only layer that joins indexes (ids and distances) with the
catalog (everything else). Candidates come from each signal's index, searched
with all of the query's dihedral variants, so one stored hash per image
matches mirrored and rotated copies. Every candidate is then re-measured on
every signal both sides have, verified geometrically where the robust tier
is on, and scored from all of that evidence at once (:mod:`imgmatch.evidence`):
agreement raises the score, a clear disagreement lowers it, and the score
estimates the probability that the two images show the same picture.

A pair is *low-information* when either image is too plain for its hashes
to be evidence: a PDQ quality under Meta's gate (50), a pHash quality (the
picture's :func:`~imgmatch.signals.imagehashes.information`) under its gate,
or a hash whose bits are degenerate (periodic or lopsided). Such a pair
matches only on strong geometric evidence and says ``low_information``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set

import numpy as np

from . import features
from . import signals as registry
from .catalog import Catalog
from .decode import Decoded
from .descriptors import PART_OWNER, VOTERS, DescriptorIndex, votes_across
from .evidence import PRECISE, SCALES, Evidence, Verified
from .index import BinaryIndex
from .model import Match
from .records import Box, HashValue, LinkRow, hamming
from .signals.base import degenerate
from .signals.local import centre_hash
from .signals.pdq import hash_luma

#: Default minimum score of a reported match and of a stored link: a lead
#: (precision 0.93 to 0.96 among the fit half's candidates). From 0.98
#: (:data:`imgmatch.evidence.PRECISE`) every tier reached precision 0.99
#: there; clusters are built from those (:data:`imgmatch.cluster.STRONG_SCORE`).
MATCH_SCORE = 0.5
#: How many neighbours per query variant each index is asked for (at least).
MIN_CANDIDATES = 32
#: Signals whose plain or degenerate values make the whole pair low-information.
INFORMATION_SIGNALS = ("pdq", "phash")

#: Keypoints an image needs for a failed verification to count against a
#: pair: with fewer (a smooth picture has none) the hashes decide, as for an
#: image without local features. Chosen on the fit half (``scripts/bench
#: accuracy --verifiable N``): 8 against 1 found a little more (recall at
#: precision 0.99 0.840 against 0.839, the crawl 0.863 against 0.862);
#: 20, the support from which local features agree, raised the negatives
#: scoring 0.5 or more from 2.7% to 3.3% (app screenshots of few corners).
VERIFIABLE = 8
#: Candidates verified geometrically: the best by hash score, and the most
#: voted by the descriptor index.
VERIFY_FROM_HASHES = 4
VERIFY_FROM_DESCRIPTORS = 8
#: Descriptor candidates with fewer votes than this are not worth verifying.
MIN_VOTES = 3
#: Candidates voted by each tile of the query (collages) that are verified.
VERIFY_PER_TILE = 3
#: Each tile's strongest descriptors (of the tile, and of its mirror) that
#: vote; the whole image's: :data:`imgmatch.descriptors.VOTERS`. Fewer
#: would shorten a query at a million images (each tile's vote search costs
#: what the image's does) but lose collages: on the fit half
#: (``scripts/bench accuracy --tile-voters N``), 250 gave collages recall@1
#: / at P0.99 0.816 / 0.612, 100 gave 0.786 / 0.561, 50 0.796 / 0.551.
TILE_VOTERS = VOTERS
#: With a share here, a query is explained by its whole image when one
#: candidate scores at least :data:`imgmatch.evidence.PRECISE`, verified over
#: that share of the query or more (the query is that picture, not a collage
#: or a screenshot with other photos in it), and its tiles are not searched:
#: each tile's search costs what the whole image's does. None: never. On the
#: fit half (``scripts/bench accuracy --explained-share 0.8``) it halved the
#: query p50 (72 to 41 ms). It used to cost recall at precision 0.99 (0.839
#: to 0.814): the tiles also re-verified wrong candidates of one series
#: (road signs in one ring, icons of one set), whose partial matches then
#: scored lower than their whole-image ones. Since inliers that repeat one
#: pattern are discounted (:data:`imgmatch.features.FULL_DISTINCT`), 0.868
#: to 0.864 on the fit half, and nothing on the check half (0.790 both;
#: p50 71 to 39 ms).
EXPLAINED_SHARE: float | None = 0.8
#: At ingest, only the few images with the most descriptor votes, and at
#: least this many, are verified: ingest must stay fast, and a repost's
#: strongest descriptors vote for it many times over.
LINK_MIN_VOTES = 12
LINK_VERIFY = 4
#: The scores that decide, for explanations and reports to state: a query's
#: default minimum (a lead), the lowest stored link, and the links clusters
#: are built from.
THRESHOLDS: dict[str, float] = {"match": MATCH_SCORE, "link": MATCH_SCORE, "cluster": PRECISE}
#: A new image's strongest descriptors that vote at ingest (queries use
#: :data:`imgmatch.descriptors.VOTERS`). Chosen on the fit half's simulated
#: crawl, robust B-cubed precision / recall: 250 voters 0.9912 / 0.8380,
#: 200 0.9908 / 0.8401, 150 0.9922 / 0.8449, 100 0.9916 / 0.8406. The weak
#: descriptors' votes mostly crowd the few candidates verified.
LINK_VOTERS = 150
#: At ingest, an orientation (the image, its mirror) is verified against a
#: candidate only if its own descriptors gave that candidate at least this
#: many votes, or more than the other's: a mirrored repost votes through the
#: mirror, and matching the other orientation's descriptors cannot succeed.
LINK_ORIENTATION_VOTES = LINK_MIN_VOTES
#: A link whose only evidence is a partial overlap (a photo inside a
#: collage or a screenshot: the shared region covers less than this share of
#: one image) is capped at :data:`PARTIAL_LINK_CAP`, so that clusters treat
#: it as a weak link: it attaches the collage or screenshot to one picture,
#: and never joins two pictures' clusters through it.
PARTIAL_AREA = 0.5
PARTIAL_LINK_CAP = 0.97

TRANSFORM_NAMES = ("identity", "mirror", "flip", "rotate-180", "transpose",
                   "rotate-90", "rotate-270", "transverse")


LocalQuery = tuple[features.LocalFeatures, features.LocalFeatures | None]


def verify_candidates(catalog: Catalog, views: Sequence[tuple[LocalQuery, Iterable[int]]],
                      found: dict[int, Evidence], grey: np.ndarray | None = None,
                      stored_pdq: Mapping[int, bytes] | None = None,
                      orientations: Mapping[int, tuple[bool, bool]] | None = None,
                      boxes: Sequence[tuple[int, int, int, int]] | None = None,
                      frames: Sequence[tuple[float, float, float, float]] = ()
                      ) -> dict[int, features.LocalFeatures]:
    """Verify candidates geometrically and add what it finds to their evidence;
    returns the candidates' stored features it read.

    ``views`` pairs the query's local features (the whole image first, then
    its tiles, :func:`imgmatch.features.tiles`) with the candidates to verify
    against them; an image verified in several views keeps its best. Every
    candidate of the pair's query that has local features is marked as seen
    by the robust tier, verified or not.

    With the query's pixels (``grey``, the whole image) and the candidates'
    PDQ hashes, a candidate whose frame the query covers is also compared
    aligned: the query moved onto the candidate's frame, hashed with PDQ
    (:func:`imgmatch.features.aligned`).

    ``orientations``: per candidate, whether to try the query as it is and
    its mirror (default: both, the mirror only when the query's own
    verification is inconclusive).

    ``boxes``: where each view lies in ``grey`` (default: the whole image,
    then :func:`imgmatch.features.view_boxes`).

    ``frames``: the pictures the whole image frames, at its features'
    analysed size (:func:`imgmatch.features.frames`): its verifications say
    what share of their inliers lie in them (the ``frame-only`` rule of
    :mod:`imgmatch.evidence`).
    """
    wanted = sorted({i for _, ids in views for i in ids})
    blobs = catalog.features_of(wanted)
    stored = {i: features.LocalFeatures.from_bytes(b) for i, b in blobs.items()}
    if boxes is None:
        boxes = [] if grey is None else [(0, 0, grey.shape[1], grey.shape[0])] + (
            features.view_boxes(grey) if len(views) > 1 else [])
    tried: dict[int, list[tuple[features.Verification, bool, int]]] = {}
    for n, ((plain, mirrored), ids) in enumerate(views):
        for image_id in ids:
            if image_id not in stored:
                continue
            try_plain, try_mirror = (orientations or {}).get(image_id, (True, True))
            framed = frames if n == 0 else ()
            if try_plain or mirrored is None:
                result, flipped = features.best_of(plain, mirrored if try_mirror else None,
                                                   stored[image_id], framed)
            else:
                result, flipped = features.verify(
                    mirrored, stored[image_id],
                    features.mirrored_boxes(framed, mirrored.width)), True
            tried.setdefault(image_id, []).append((result, flipped, n))
    # the robust model weighs the candidates that local features could have
    # found: for one without any (a partner's hash, an image catalogued by
    # the hash tier) or with too few to verify (a smooth picture), and for
    # a query with too few, a missing verification is no evidence
    if views and len(views[0][0][0]) >= VERIFIABLE:
        for image_id in catalog.with_features(found, at_least=VERIFIABLE):
            found[image_id].robust = True
    for image_id, results in tried.items():
        ev = found.setdefault(image_id, Evidence(robust=True))
        if KEEP_BEST_BY == "support":
            results = [max(results, key=lambda r: r[0].support)]  # the first of equals
        for result, flipped, n in results:
            if KEEP_BEST_BY == "support" and ev.verified is not None \
                    and ev.verified.support >= result.support:
                continue  # verified better already (the whole image): no aligned hash
            verified = _verified(result, flipped, views[n][0][0].width, stored[image_id],
                                 grey, boxes[n] if n < len(boxes) else None,
                                 (stored_pdq or {}).get(image_id), in_tile=n > 0)
            if ev.verified is not None and not _better(ev, verified):
                continue  # verified better already (another view)
            ev.verified = verified
            if not ev.hashes or ev.strong_geometry:
                ev.transform = "mirror" if flipped else "identity"
    return stored


#: Which of a candidate's verifications (one per view that voted for it) its
#: evidence keeps: the one with the most ``support``, or the highest
#: ``score``. On the fit half (``scripts/bench accuracy --keep-best-by
#: score``) the best score raised wrong candidates of a reference's series
#: more than right ones: recall at precision 0.99 0.819 against 0.839.
KEEP_BEST_BY = "support"


def _better(ev: Evidence, verified: Verified) -> bool:
    """Whether ``verified`` is better evidence than the pair's present one."""
    if KEEP_BEST_BY == "support":
        return verified.support > ev.verified.support  # type: ignore[union-attr]
    return dataclasses.replace(ev, verified=verified).score() > ev.score()


def _verified(result: features.Verification, flipped: bool, width: int,
              stored: features.LocalFeatures, grey: np.ndarray | None,
              box: tuple[int, int, int, int] | None, pdq: bytes | None,
              in_tile: bool = False) -> Verified:
    """A verification as evidence, with the aligned comparison where it applies."""
    aligned, centre = None, False
    if grey is not None and pdq is not None and box is not None \
            and result.support >= ALIGN_SUPPORT:
        moved = features.aligned(grey, box, width, result, flipped, stored)
        if moved is not None:
            aligned = hamming(hash_luma(moved), pdq)
        if CENTRE_ALIGN and stored.centre is not None and (
                aligned is None or (CENTRE_OVER_WHOLE and aligned > CENTRE_AGREES)):
            moved = features.aligned_centre(grey, box, width, result, flipped, stored)
            bits = None if moved is None else hamming(hash_luma(moved), stored.centre)
            # only agreement is evidence: a quarter of the frame, moved by a
            # similarity, drifts apart where the copy was squeezed or tilted
            if bits is not None and bits <= CENTRE_AGREES:
                aligned, centre = bits, True
    return Verified(result.inliers, result.support, result.spread, result.shared_area,
                    result.overlap, aligned, matches=result.matches,
                    coverage=result.coverage, query_share=result.query_share,
                    repeated=result.repeated, in_tile=in_tile,
                    stored_share=result.stored_share, framed_share=result.framed_share,
                    aligned_centre=centre,
                    regions=(_in_whole(result.query_box, flipped, width, grey, box),
                             result.stored_box))


def _in_part(box: Box | None, part: tuple[float, float, float, float],
             whole: features.LocalFeatures) -> Box | None:
    """A box as shares of a part's sides, as shares of the whole image's."""
    if box is None or not whole.width or not whole.height:
        return None
    x0, y0, x1, y1 = part
    w, h = (x1 - x0) / whole.width, (y1 - y0) / whole.height
    left, top = x0 / whole.width, y0 / whole.height
    return (left + box[0] * w, top + box[1] * h, left + box[2] * w, top + box[3] * h)


def _in_whole(view_box: tuple[float, float, float, float] | None, flipped: bool,
              view_width: int, grey: np.ndarray | None,
              box: tuple[int, int, int, int] | None) -> Box | None:
    """A box in a verified view's analysed pixels (the image or a tile of it,
    mirrored or not) as shares of the whole image's sides; None where the
    view's place in the image is not known."""
    if view_box is None or grey is None or box is None or view_width <= 0:
        return None
    x0, y0, x1, y1 = view_box
    if flipped:
        x0, x1 = view_width - x1, view_width - x0
    left, top, right, _ = box
    per = (right - left) / view_width  # grey pixels per analysed pixel
    h, w = grey.shape[:2]
    return (min(1.0, (left + x0 * per) / w), min(1.0, (top + y0 * per) / h),
            min(1.0, (left + x1 * per) / w), min(1.0, (top + y1 * per) / h))


#: Whether a query that covers too little of the stored image for the whole
#: aligned comparison is compared on the stored image's centre instead
#: (:func:`imgmatch.features.aligned_centre`), where it covers that: a
#: collage's cell cut square, a screenshot's photo. On the fit half of the
#: second set (``scripts/bench accuracy --centre-align 0/1``,
#: docs/benchmarks.md): recall at precision 0.99 0.903 to 0.912, collages
#: 0.734 to 0.766, negatives unchanged.
CENTRE_ALIGN = True
#: PDQ bits up to which the centres compared agree (half of PDQ's evidence
#: scale, where :attr:`imgmatch.evidence.Evidence.aligned_agrees` does);
#: farther, the comparison is not kept.
CENTRE_AGREES = 32
#: Whether agreeing centres also stand for a whole frame that disagrees: an
#: ad's banners over the top and bottom fifths of a photo move the whole
#: aligned hash, not the centre's. On the fit half (``--centre-over-whole``):
#: recall at precision 0.99 0.912 to 0.919, screenshots 0.778 to 0.800.
CENTRE_OVER_WHOLE = True

#: Verifications with less support are not worth an aligned comparison (a
#: warp and a PDQ hash): a few inliers fix no frame.
ALIGN_SUPPORT = 8.0


#: How far (a share of the evidence scale, :data:`imgmatch.evidence.SCALES`)
#: hash candidates are looked up: PDQ 40 bits, pHash and dHash 10. Farther
#: pairs score under the match score on hashes alone; the robust tier's
#: descriptor votes find those that geometry vouches for. Each bit further
#: costs the multi-index tables more probes, so the reach stops there.
CANDIDATE_REACH = 0.625


def radius_for(name: str, threshold: int) -> int:
    """The range searched for hash candidates of a signal: :data:`CANDIDATE_REACH`
    of its evidence scale, or its threshold for a signal outside the model."""
    scale = SCALES.get(name)
    return int(CANDIDATE_REACH * scale) if scale else int(threshold)


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def min_distances(variants: np.ndarray, stored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each stored code, the smallest Hamming distance to any query variant.

    ``variants`` is (V, bytes), ``stored`` (C, bytes); returns (distances (C,),
    index of the closest variant (C,)).
    """
    d = _POPCOUNT[variants[:, None, :] ^ stored[None, :, :]].sum(axis=2, dtype=np.int32)
    which = d.argmin(axis=0)
    return d[which, np.arange(d.shape[1])], which


def _weak(name: str, quality: int | None) -> bool:
    """Whether a value is under its own signal's quality gate (PDQ: 50)."""
    return not registry.get(name).trusts(quality)


def gather_evidence(query: Mapping[str, Sequence[HashValue]],
                    stored: Mapping[int, Mapping[str, tuple[bytes, int | None]]]
                    ) -> dict[int, Evidence]:
    """Distances and informativeness of stored images' hashes against a query.

    Vectorised over candidates, signal by signal. ``stored`` maps an image id
    to its values ``{signal: (bytes, quality)}``. A bare hash (a partner's
    PDQ, no quality) is trusted, but its bits are still checked.
    """
    ids = list(stored)
    own = [vs[0] for name, vs in query.items() if vs and name in INFORMATION_SIGNALS]
    query_weak = any(_weak(v.signal, v.quality) for v in own)
    query_degenerate = any(degenerate(v.data) for v in own)
    query_pdq_degenerate = any(degenerate(v.data) for v in own if v.signal == "pdq")
    out = {i: Evidence(weak_values=query_weak, degenerate=query_degenerate,
                       pdq_degenerate=query_pdq_degenerate) for i in ids}
    best_transform: dict[int, tuple[float, int]] = {}
    for name, variants in query.items():
        have = [i for i in ids if name in stored[i]]
        if not have or not variants:
            continue
        sig = registry.get(name)
        width = sig.bits // 8
        codes = np.frombuffer(b"".join(v.data for v in variants), np.uint8).reshape(-1, width)
        values = np.frombuffer(b"".join(stored[i][name][0] for i in have),
                               np.uint8).reshape(-1, width)
        dist, which = min_distances(codes, values)
        query_ok = variants[0].quality is None or sig.usable(variants[0])
        for i, d, w in zip(have, dist.tolist(), which.tolist()):
            data, quality = stored[i][name]
            ev = out[i]
            if name not in SCALES:
                ev.extra_thresholds[name] = sig.threshold
            ev.hashes[name] = (d, query_ok and sig.trusts(quality))
            known = [q for q in (variants[0].quality, quality) if q is not None]
            if known:
                ev.qualities[name] = min(known)
            if name in INFORMATION_SIGNALS:
                ev.weak_values = ev.weak_values or _weak(name, quality)
                if degenerate(data):
                    ev.degenerate = True
                    ev.pdq_degenerate = ev.pdq_degenerate or name == "pdq"
            closeness = 1.0 - d / sig.bits
            if i not in best_transform or closeness > best_transform[i][0]:
                best_transform[i] = (closeness, w)
    for i, (_, w) in best_transform.items():
        out[i].transform = TRANSFORM_NAMES[w] if w < len(TRANSFORM_NAMES) else "identity"
    return out


def weigh(catalog: Catalog, indexes: Mapping[str, BinaryIndex],
          query: Mapping[str, Sequence[HashValue]], *, top_k: int = 10,
          min_score: float = MATCH_SCORE,
          local: LocalQuery | Sequence[LocalQuery] | None = None,
          descriptors: DescriptorIndex | None = None, grey: np.ndarray | None = None,
          reread: Callable[[int], np.ndarray | None] | None = None
          ) -> tuple[dict[int, Evidence], dict[int, dict[str, tuple[bytes, int | None]]]]:
    """The candidates a query finds and the evidence it weighs for each, unranked
    (see :func:`find_matches`, which ranks them): also what ``imgmatch
    explain`` weighs, so a pair is explained as the query found it.
    ``reread``: a stored image's pixels read again, to verify the query
    within the part of it where the query lies (:func:`framing`)."""
    candidates: set[int] = set()
    for name, variants in query.items():
        index = indexes.get(name)
        if index is None or not len(index) or not variants:
            continue
        codes = np.frombuffer(b"".join(v.data for v in variants), dtype=np.uint8)
        threshold = registry.get(name).threshold
        if min_score > 0:
            # hash candidates near enough to agree; the evidence decides the rest
            for near, _ in index.range_search(codes, radius_for(name, threshold)):
                candidates.update(int(i) for i in near)
        else:
            _, nearest = index.search(codes, max(top_k * 2, MIN_CANDIDATES))
            candidates.update(int(i) for i in nearest.ravel() if i >= 0)
    views: list[tuple[LocalQuery, set[int]]] = []
    given: list[LocalQuery] = []
    if local is not None and descriptors is not None:
        given = [local] if isinstance(local, tuple) else list(local)
        views.append((given[0], _voted(descriptors, given[0], VERIFY_FROM_DESCRIPTORS,
                                       VOTERS)))
        candidates.update(views[0][1])
    # the pictures the query frames, looked for once: its frames and its tiles
    framed = features.regions(grey) if given and grey is not None else None
    found, stored = ({}, {}) if not candidates else measure(
        catalog, query, candidates, views, grey,
        features.frames(grey, given[0][0].width, framed)
        if grey is not None and framed is not None else ())
    if views and descriptors is not None and not explained(found):
        _search_tiles(catalog, query, views[0][0], given[1:], grey, found, stored,
                      lambda view: _voted(descriptors, view, VERIFY_PER_TILE, TILE_VOTERS),
                      regions=framed)
    if views and reread is not None:
        verify_framing(catalog, views[0][0], found, reread, unmatched_only=False,
                       framed_only=QUERY_FRAMED_ONLY, query_grey=grey)
    if QUERY_PARTS and KEEP_PARTS and PART_VERIFY and views and descriptors is not None \
            and grey is not None and not framed and not features.gridded(grey):
        _verify_kept_parts(catalog, query, views[0][0], descriptors, found, stored, grey)
    if QUERY_REVERSE and views and not framed:
        verify_reversed(catalog, views[0][0], found, MATCH_SCORE, grey=grey)
    return found, stored


#: Whether a query that is a photo (it frames no picture and looks like no
#: grid) is also verified against the parts collages and screenshots kept
#: (:func:`verify_parts`), as an ingest verifies a new photo: an
#: investigator's photo, searched for among the collages that show it.
QUERY_PARTS = True


def _verify_kept_parts(catalog: Catalog, query: Mapping[str, Sequence[HashValue]],
                       view: LocalQuery, descriptors: DescriptorIndex,
                       found: dict[int, Evidence], stored: dict[int, dict],
                       grey: np.ndarray) -> None:
    """The :data:`PART_CANDIDATES` images whose kept parts a photo's
    descriptors vote for most, weighed and verified against those parts."""
    voted = votes_across([(descriptors, None)], [f for f in view if f is not None],
                         PART_CANDIDATES, voters=VOTERS, kept_parts=True)
    ids = sorted({i & ~PART_OWNER for i, votes in voted if sum(votes) >= MIN_VOTES})
    if not ids:
        return
    new = [i for i in ids if i not in found]
    if new:
        more_found, more_stored = measure(catalog, query, new)
        found.update(more_found)
        stored.update(more_stored)
    read = {i: features.LocalFeatures.from_bytes(blob)
            for i, blob in catalog.features_of(ids).items()}
    verify_parts(view, read, found, grey)


def find_matches(catalog: Catalog, indexes: Mapping[str, BinaryIndex],
                 query: Mapping[str, Sequence[HashValue]], *, top_k: int = 10,
                 min_score: float = MATCH_SCORE, with_sightings: bool = True,
                 local: LocalQuery | Sequence[LocalQuery] | None = None,
                 descriptors: DescriptorIndex | None = None,
                 grey: np.ndarray | None = None,
                 reread: Callable[[int], np.ndarray | None] | None = None) -> list[Match]:
    """The best ``top_k`` catalogued images for a query, best first.

    ``query`` maps a signal name to the query's values for it (the dihedral
    variants, identity first). With ``min_score`` > 0 every image scoring at
    least that through a hash is a candidate (an exact range search: no
    scan); with 0 the nearest neighbours of each signal are ranked (a scan),
    so a full ranking can be evaluated. ``local`` (the query's local features
    and its mirror's; or a list of such views, the whole image first, then
    its tiles) adds the robust tier: candidates voted by the ``descriptors``
    index, and geometric verification of the best candidates. Tiles find the
    photos of a collage or a screenshot: each gets its own votes and
    verifications (unless the whole image explains the query, where
    :data:`EXPLAINED_SHARE` is set: :func:`explained`). ``grey`` (the query's pixels,
    the views' source) adds the aligned comparison, and gives the tiles'
    features when ``local`` holds none. ``reread``: as for :func:`weigh`.
    """
    found, stored = weigh(catalog, indexes, query, top_k=top_k, min_score=min_score,
                          local=local, descriptors=descriptors, grey=grey, reread=reread)
    if not found:
        return []
    scores = {i: ev.settle() for i, ev in found.items()}
    scored = [(image_id, ev, stored.get(image_id, {})) for image_id, ev in found.items()
              if scores[image_id] >= min_score]
    scored.sort(key=lambda t: (-scores[t[0]], sum(d for d, _ in t[1].hashes.values()), t[0]))
    scored = scored[:top_k]
    ids = [image_id for image_id, _, _ in scored]
    images = catalog.images(ids)
    sightings = catalog.sightings_of(ids) if with_sightings else {}
    out = []
    for image_id, ev, values in scored:
        image = images.get(image_id, {})
        out.append(Match(
            sha256=image.get("sha256"), image_id=image_id, score=scores[image_id],
            distances={n: d for n, (d, _) in ev.hashes.items()}, agreed=ev.agreed,
            signals={name: value.hex() for name, (value, _) in sorted(values.items())},
            sightings=tuple(sightings.get(image_id, ())), image=image,
            low_information=ev.low_information, transform=ev.transform,
            inliers=ev.verified.inliers if ev.verified else None,
            disagreed=ev.disagreed, evidence=ev.to_json()))
    return out


def _voted(descriptors: DescriptorIndex, view: LocalQuery, limit: int, voters: int) -> set[int]:
    """The ``limit`` images most voted for by a view's descriptors, with enough votes."""
    return {i for i, votes in descriptors.candidates(
        [f for f in view if f is not None], limit, voters=voters) if votes >= MIN_VOTES}


def explained(found: Mapping[int, Evidence]) -> bool:
    """Whether one candidate accounts for the query (:data:`EXPLAINED_SHARE`;
    never while that is None)."""
    share = EXPLAINED_SHARE
    return share is not None and any(
        ev.verified is not None and (ev.verified.query_share or 0.0) >= share
        and ev.score() >= PRECISE for ev in found.values())


#: Inliers from which a verification over a part of a new image makes its
#: tiles worth searching at ingest (:func:`worth_tiling`). Chosen on the fit
#: half (``scripts/bench accuracy --data ../imgmatch-bench-data/second-fit
#: --ingest-links --tile-gate-inliers N``: collages and screenshots linked
#: to their photo when catalogued, of 104 and 86): 8 inliers 63 / 54, 15
#: inliers 60 / 54; None, never: 33 / 47.
TILE_GATE_INLIERS: int | None = 8
#: Whether a new image that frames pictures (:func:`imgmatch.features.regions`:
#: a screenshot's photo, a collage's cells) has its tiles searched at ingest
#: even when its whole matched nothing.
TILE_FRAMED = True
#: Whether such an image's quarters and centre are searched too, not only
#: its framed pictures. On the fit half (``scripts/bench accuracy
#: --ingest-links --framed-quarters 1``) they linked 5 more of 104 collages
#: (72) and 1 more of 86 screenshots, with one more wrong link, and took
#: the references' ingest from 72 to 47 images/s (13% of them frame a
#: picture). More framed pictures (``--max-regions 6``) linked none more.
FRAMED_QUARTERS = False
#: Whether a new image that looks like a grid of tiles
#: (:func:`imgmatch.features.gridded`: tiles that touch, or clip art on white
#: beside clip art on white, which no flat frame sets apart) has its quarters,
#: centre and framed pictures searched at ingest, as a query's are, even when
#: its whole matched nothing; framed or not (the largest framed pictures are
#: not always the cell that matters). On the fit half, 22 of the collages
#: and screenshots that a query with them found at 0.5 or more were not
#: linked when catalogued, their photo's part of the whole image too small
#: for the votes; 17 of them look like a grid (docs/benchmarks.md).
TILE_GRIDDED = True


def worth_tiling(found: Mapping[int, Evidence], framed: bool = False,
                 gridded: bool = False) -> bool:
    """Whether a new image's tiles are worth searching at ingest: nothing yet
    matched it as the same picture (a score of
    :data:`~imgmatch.evidence.PRECISE`), and either its whole matched a part
    of it to another image (:data:`TILE_GATE_INLIERS` over less than
    :data:`PARTIAL_AREA` of it), or it frames pictures (``framed``, with
    :data:`TILE_FRAMED`), or it looks like a grid of tiles (``gridded``,
    with :data:`TILE_GRIDDED`): a collage or a screenshot, whose tiles show
    its photos better than its whole does.

    An ingest, unlike a query, must stay about as fast as the analysis, and
    each tile costs a feature extraction and a vote search as the whole
    image does: an image already matched as the same picture (a crop of a
    catalogued one) is not tiled. With that, and the tiles voting with the
    ingest's voters, 31 of ``scripts/bench ingest``'s 600 ad-sized photos
    (windows cut from fewer pictures) were tiled by the inliers alone
    instead of 56, for 63 collages linked on the fit half instead of 65
    (docs/benchmarks.md)."""
    if any(ev.score() >= PRECISE for ev in found.values()):
        return False
    return framed and TILE_FRAMED or gridded and TILE_GRIDDED or part_matched(found)


def part_matched(found: Mapping[int, Evidence]) -> bool:
    """Whether a new image's whole matched a part of it to another image
    (:data:`TILE_GATE_INLIERS` over less than :data:`PARTIAL_AREA` of it):
    then its quarters and centre are searched too, not only its framed
    pictures."""
    gate = TILE_GATE_INLIERS
    return gate is not None and any(
        ev.verified is not None and ev.verified.inliers >= gate
        and (ev.verified.query_share or 0.0) < PARTIAL_AREA
        for ev in found.values())


#: At ingest, the older images whose part a new image's whole matched (at
#: least :data:`TILE_GATE_INLIERS` inliers, over less than
#: :data:`PARTIAL_AREA` of the older image and at least that share of the new
#: one) that are read again and cut where the new image lies
#: (:func:`framing`): the most supported first, at most this many. 0: none.
FRAMING_CANDIDATES = 2
#: The cut's margin around the new image's place, a share of its size on
#: each side: room for a similarity fitted on the few keypoints the older
#: image spent there.
FRAMING_MARGIN = 0.1
#: The longer side (at least) the older image is read again at: its part
#: that shows the new image is then described at that part's own
#: resolution, not at what is left of it at the whole image's analysed size.
FRAMING_SIDE = 4 * features.SIDE
#: Whether a query (not an ingest) is verified within a stored image only
#: where its place is a framed picture of that image
#: (:func:`imgmatch.features.regions`, overlapping it by
#: :data:`FRAMING_IOU`): a screenshot shows an ad's photo in a rectangle,
#: a collage in its cells; a drawing that reuses a part of another (the
#: same feet in two clip-art figures) frames nothing, and a query's match
#: is a lead on its own, where a link from a part stays weak
#: (:data:`PARTIAL_LINK_CAP`). Chosen on the fit half (``scripts/bench
#: accuracy --ingest-links --query-framed-only 0``): without it, a photo's
#: query found 12 more of 104 collages that show it, and 1 more of 86
#: screenshots, but the bench's queries gained 3 right predictions scoring
#: 0.5 or more for 7 wrong ones (4 of them over 0.9); with it, they gained
#: none of either. At ingest it would lose 10 of the 46 collages catalogued
#: before their photo and linked to it, for no fewer wrong links.
QUERY_FRAMED_ONLY = True
FRAMING_IOU = 0.5


def framing(found: Mapping[int, Evidence], *, unmatched_only: bool = True) -> list[int]:
    """The candidates that may frame a new image (a screenshot or a collage
    catalogued before the photo it shows), the most supported first: its
    whole matched a part of theirs (:data:`FRAMING_CANDIDATES`), and nothing
    matched it as the same picture (unless not ``unmatched_only``: a query
    ranks every place its photo appears).

    The older image spent its keypoints on all of itself, so few lie on the
    photo: the match is weak and partial. Cut where the photo lies and
    described again, that part matches the photo as a whole, as a
    screenshot catalogued after its photo matches it through its tiles
    (:func:`worth_tiling`)."""
    gate = TILE_GATE_INLIERS
    if gate is None or not FRAMING_CANDIDATES \
            or unmatched_only and any(ev.score() >= PRECISE for ev in found.values()):
        return []
    chosen = [(ev.verified.support, i) for i, ev in found.items()
              if ev.verified is not None and not ev.verified.in_tile
              and ev.verified.inliers >= gate
              and (ev.verified.stored_share or 1.0) < PARTIAL_AREA
              and (ev.verified.query_share or 0.0) >= PARTIAL_AREA]
    return [i for _, i in sorted(chosen, key=lambda c: (-c[0], c[1]))[:FRAMING_CANDIDATES]]


def verify_framing(catalog: Catalog, view: LocalQuery, found: Mapping[int, Evidence],
                   reread: Callable[[int], np.ndarray | None], *, unmatched_only: bool,
                   framed_only: bool, query_grey: np.ndarray | None = None) -> int:
    """Read again the candidates that may frame the query (:func:`framing`)
    and verify it within each (:func:`verify_within`); how many were read."""
    read = 0
    for other in framing(found, unmatched_only=unmatched_only):
        grey = reread(other)
        if grey is not None:
            read += 1
            verify_within(catalog, view, other, found[other], grey, framed_only, query_grey)
    return read


#: Whether a query verified within the part of a stored image where it lies
#: (:func:`verify_within`) is also compared aligned with that part: its PDQ,
#: and its centre's, taken from the pixels read again. A photo catalogued
#: after the collage that shows it matched the cell's keypoints but had no
#: comparison of the pictures themselves, which its copies and the collage
#: catalogued after it have. Only agreement counts (within
#: :data:`CENTRE_AGREES` bits): the cut's margin is not the photo.
ALIGN_WITHIN = True


def verify_within(catalog: Catalog, view: LocalQuery, image_id: int, ev: Evidence,
                  grey: np.ndarray, framed_only: bool = False,
                  query_grey: np.ndarray | None = None) -> None:
    """Verify a query's whole against the part of a stored image where it
    lies (``grey``: the stored image's pixels, read again), and keep that
    verification in the pair's evidence when it is better (:func:`framing`).
    ``query_grey``: the query's grey pixels (any size), to compare it aligned
    with that part (:data:`ALIGN_WITHIN`); without them, keypoints only.
    ``framed_only``: only where that part is a framed picture
    (:data:`QUERY_FRAMED_ONLY`)."""
    blob = catalog.features_of([image_id]).get(image_id)
    if blob is None:
        return
    stored = features.LocalFeatures.from_bytes(blob)
    plain, mirrored = view
    whole, flipped = features.best_of(plain, mirrored, stored)
    box = features.where_within(whole, plain, stored, grey.shape, FRAMING_MARGIN)
    if box is None:
        return
    if framed_only:
        place = features.where_within(whole, plain, stored, grey.shape, 0.0)
        if place is None or not any(features.iou(place, region) >= FRAMING_IOU
                                    for region in features.regions(grey)):
            return
    prepared = features.prepare(features.cut(grey, [box])[0])  # as extract sizes it
    part = features.extract(prepared)
    pdq = whole_box = None
    if ALIGN_WITHIN and query_grey is not None and len(part):
        part = dataclasses.replace(part, centre=centre_hash(prepared))
        pdq = hash_luma(prepared)
        whole_box = (0, 0, query_grey.shape[1], query_grey.shape[0])
    result, flipped = features.best_of(plain, mirrored, part)
    verified = _verified(result, flipped, plain.width, part, query_grey, whole_box, pdq,
                         in_tile=True)
    # the stored side's box lies in the cut, not in the older image
    verified = dataclasses.replace(verified, regions=(
        verified.regions[0] if verified.regions else None, None))
    if verified.aligned is not None and verified.aligned > CENTRE_AGREES:
        # only agreement is evidence: the cut holds a margin of whatever lies
        # around the photo (an interface, the next cell), which the photo
        # moved onto it lacks
        verified = dataclasses.replace(verified, aligned=None, aligned_centre=False)
    if ev.verified is None or _better(ev, verified):
        ev.verified = verified
        if not ev.hashes or ev.strong_geometry:
            ev.transform = "mirror" if flipped else "identity"


def _search_tiles(catalog: Catalog, query: Mapping[str, Sequence[HashValue]],
                  whole: LocalQuery, tiles: Sequence[LocalQuery], grey: np.ndarray | None,
                  found: dict[int, Evidence], stored: dict[int, dict],
                  vote: Callable[[LocalQuery], set[int]], quarters: bool = True,
                  regions: Sequence[tuple[int, int, int, int]] | None = None,
                  ready: Sequence[tuple[tuple[int, int, int, int], LocalQuery]] | None = None
                  ) -> list[tuple[tuple[int, int, int, int], LocalQuery]]:
    """Add the candidates the query's tiles vote for (``vote``: a tile's
    candidates), verified in the tile that voted: the photos of a collage or
    of a screenshot. ``tiles``: the tiles' local features, or none given
    (then taken from ``grey`` now: its quarters and centre unless
    ``quarters`` is false, and its framed pictures, ``regions`` where
    already looked for; ``ready``: those tiles, described already, as
    :func:`imgmatch.features.described_views` gives them). ``stored``: the
    candidates' values by image id, those of new candidates added. Returns
    the tiles taken from ``grey``, with their boxes in it."""
    boxes = None
    described: list[tuple[tuple[int, int, int, int], LocalQuery]] = []
    if not tiles and grey is not None:
        described = list(ready if ready is not None else
                         features.described_views(grey, quarters, regions))
        tiles = [view for _, view in described]
        boxes = [(0, 0, grey.shape[1], grey.shape[0]), *(box for box, _ in described)]
    views = [(view, vote(view)) for view in tiles]
    new = sorted(set().union(*(ids for _, ids in views)) - found.keys())
    if new:
        more_found, more_stored = measure(catalog, query, new)
        found.update(more_found)
        stored.update(more_stored)
    if any(ids for _, ids in views):
        # the whole image first, verifying nothing again, so each view keeps its box
        verify_candidates(catalog, [(whole, set()), *views], found, grey,
                          {i: stored[i]["pdq"][0] for _, ids in views for i in ids
                           if "pdq" in stored.get(i, {})}, boxes=boxes)
    return described


def pixel_query(pixels: Callable[[], Decoded], names: Iterable[str], *, local_features: bool,
                variants: Mapping[str, list[HashValue]] | None = None,
                local: LocalQuery | None = None, tiles: bool = True
                ) -> tuple[dict[str, list[HashValue]], list[LocalQuery] | None, np.ndarray | None]:
    """What a query searches with, from its pixels: each of ``names``' values
    for the picture's 8 rotations and mirrors and, with ``local_features``,
    the local features of the picture and its mirror, then (with ``tiles``;
    otherwise :func:`find_matches` takes them when it needs them) of its
    tiles (:func:`imgmatch.features.tiles`), with the grey pixels they came
    from. ``variants`` and ``local`` reuse what an analysis already computed."""
    given = variants or {}
    query = {name: given.get(name) or registry.get(name).dihedral(pixels()) for name in names}
    views: list[LocalQuery] | None = None
    grey = None
    if local_features:
        grey = np.asarray(pixels().grey)
        views = [local or features.extract_both(grey)]
        if tiles:
            views += [features.extract_both(tile) for tile in features.tiles(grey)]
    return query, views, grey


def _best_by_hashes(found: Mapping[int, Evidence]) -> list[int]:
    """The :data:`VERIFY_FROM_HASHES` candidates the hashes alone rank highest."""
    by_hashes = {i: ev.score() for i, ev in found.items()}
    return sorted(by_hashes, key=lambda i: (-by_hashes[i], i))[:VERIFY_FROM_HASHES]


def measure(catalog: Catalog, query: Mapping[str, Sequence[HashValue]], candidates: Iterable[int],
            views: Sequence[tuple[LocalQuery, set[int]]] = (), grey: np.ndarray | None = None,
            frames: Sequence[tuple[float, float, float, float]] = ()
            ) -> tuple[dict[int, Evidence], dict[int, dict[str, tuple[bytes, int | None]]]]:
    """The evidence a query weighs for each candidate: every signal both have
    re-measured exactly (:func:`gather_evidence`) and, with ``views`` (the
    query's local features, each with the candidates it voted for), geometric
    verification of those and of the best few by hashes. Returns the evidence
    and the candidates' stored values by image id.

    Queries rank what this measures; ``imgmatch explain`` shows it for one
    pair, so the two cannot disagree on how a pair is weighed.
    """
    stored = catalog.signals_of(sorted(candidates))
    found = gather_evidence(query, stored)
    if views:
        views[0][1].update(_best_by_hashes(found))
        verify_candidates(catalog, views, found, grey,
                          {i: values["pdq"][0] for i, values in stored.items()
                           if "pdq" in values}, frames=frames)
    return found, stored


def score_pairs(catalog: Catalog, a: np.ndarray, b: np.ndarray,
                min_score: float = MATCH_SCORE, chunk: int = 20_000) -> Iterator[LinkRow]:
    """Links from pairs that one signal's all-pairs search found, each scored on
    every signal both images have (as stored: no rotations), so that the link
    pass weighs the same evidence as ingest and queries."""
    for start in range(0, len(a), chunk):
        xs, ys = a[start:start + chunk].tolist(), b[start:start + chunk].tolist()
        stored = catalog.signals_of(sorted(set(xs) | set(ys)))
        for x, y in zip(xs, ys):
            if x not in stored or y not in stored:
                continue
            query = {name: [HashValue(name, bytes(data), quality)]
                     for name, (data, quality) in stored[x].items()}
            ev = gather_evidence(query, {y: stored[y]})[y]
            score = ev.settle()
            if score >= min_score and ev.agreed:
                yield LinkRow(min(x, y), max(x, y), score,
                              {n: d for n, (d, _) in ev.hashes.items()}, ev.agreed, "identity")


def link_distances(ev: Evidence) -> dict[str, int]:
    """What a link keeps of its evidence: each hash's distance in bits and, for
    a pair verified geometrically, its ``inliers`` (shown in reports)."""
    out = {n: d for n, (d, _) in ev.hashes.items()}
    if ev.verified is not None and ev.verified.inliers:
        out["inliers"] = ev.verified.inliers
    return out


def link_regions(ev: Evidence, new_first: bool
                 ) -> tuple[Box | None, Box | None] | None:
    """Where a link's inliers lie in its two images, ordered as the link's
    images are (the new one first or not); None where nothing was verified."""
    if ev.verified is None or ev.verified.regions is None:
        return None
    new, older = ev.verified.regions
    if new is None and older is None:
        return None
    return (new, older) if new_first else (older, new)


def link_score(ev: Evidence) -> float:
    """A pair's score as a link: a partial overlap alone (a collage's tile, a
    screenshot's photo) is capped so that clusters treat it as weak."""
    score = ev.settle()
    partial = ev.verified is not None and (ev.verified.shared_area < PARTIAL_AREA
                                           or ev.verified.in_tile)
    if partial and not any(n in ev.hashes for n in ev.agreed):  # no hash agreed
        score = min(score, PARTIAL_LINK_CAP)
    return score


class IndexLinker:
    """Links each new image to its near-duplicates while it is written.

    Called by the ingest inside the batch's transaction: each new image's
    dihedral variants are searched in the collection's indexes (older images)
    and in a small index of the batch itself, every candidate is scored as a
    query would score it, and pairs at or above the match score become links.
    After the commit, the batch's values are appended to the indexes.
    """

    def __init__(self, catalog: Catalog, indexes: Mapping[str, BinaryIndex],
                 min_score: float = MATCH_SCORE,
                 descriptors: DescriptorIndex | None = None, *, older_only: bool = True,
                 follow: Callable[[], tuple[Mapping[str, BinaryIndex],
                                            DescriptorIndex | None]] | None = None,
                 reread: Callable[[int], np.ndarray | None] | None = None) -> None:
        self.catalog = catalog
        self.indexes = indexes
        self.min_score = min_score
        self.descriptors = descriptors
        #: False: images already catalogued are linked again (an upgrade gave
        #: them new signals), to every image in the indexes, older or newer
        self.older_only = older_only
        #: catches the indexes up with what other writers committed and gives
        #: them back (a catalog several processes write: see :meth:`catch_up`)
        self._follow = follow
        #: an older image's grey pixels, read again from its source (at
        #: :data:`FRAMING_SIDE`; None where it cannot be): to cut the part
        #: that frames a new image (:func:`framing`)
        self._reread = reread
        #: older images read again so far (to cut where a new image lies)
        self.images_reread = 0
        #: the parts the batch being linked kept, by image id, for the index
        #: to take with the images once committed (:meth:`committed`)
        self.parts: dict[int, tuple[features.Part, ...]] = {}
        #: images that kept parts so far (an upgrade then rebuilds the vote
        #: index from the catalog: an image linked again may have had parts)
        self.images_parted = 0

    def catch_up(self) -> None:
        """Take in what other writers committed, before a batch is linked.

        Called with the catalog's write lock held, so no image can be
        committed between this and the batch's own: each new image is
        compared with every older one, whichever process wrote it. A no-op
        for a catalog only this process writes."""
        if self._follow is not None:
            self.indexes, self.descriptors = self._follow()

    def links(self, new_images: list[tuple[int, str]],
              variants: Mapping[str, Mapping[str, Sequence[HashValue]]],
              local: Mapping[str, LocalQuery] | None = None,
              greys: Mapping[str, np.ndarray] | None = None,
              pixels: Callable[[str], np.ndarray | None] | None = None,
              framed: Mapping[str, Sequence[tuple[float, float, float, float]]] | None = None,
              described: Mapping[str, tuple] | None = None
              ) -> list[LinkRow]:
        """Links of new images; ``local`` and ``greys`` (by sha256: local
        features, and the grey pixels they were taken from) add the robust
        tier's verification and its aligned comparison.

        ``pixels`` gives a new image's grey pixels at the size it was
        analysed (or None when they cannot be had again): an image whose
        whole matches only a part of another, or that frames pictures (its
        sha256 in ``framed``, with the frames its verifications weigh:
        :func:`verify_candidates`), and that nothing matched as the same picture
        (:func:`worth_tiling`) then has its tiles searched and verified, as a
        query's are, so a collage or a screenshot is linked to the photos it
        shows. ``described`` (by sha256: :attr:`imgmatch.analysis.Analysis.tiles`)
        gives the tiles a worker described already, used where they are the
        ones wanted, cut from pixels of the same size."""
        local = local or {}
        described = described or {}
        greys = greys or {}
        framed = framed or {}
        self.parts = {}
        candidates: dict[int, set[int]] = {image_id: set() for image_id, _ in new_images}
        batch = DescriptorIndex()
        for image_id, sha256 in new_images:
            if sha256 in local:
                batch.add(image_id, local[sha256][0])
        # the new images a part of an older one may show: photos, not screens
        # or collages (two screens of one app agree on its bars)
        seams = {sha256: features.gridded(greys.get(sha256)) for _, sha256 in new_images}
        photos = {image_id for image_id, sha256 in new_images
                  if sha256 not in framed and not seams[sha256]}
        whole_votes = self._whole_votes(new_images, local, batch)
        # the parts' votes are cast image by image below, once the parts the
        # batch's earlier images kept are indexed
        voted, orientations = self._voted(new_images, local, batch, frozenset(), whole_votes)
        for name, index in self.indexes.items():
            threshold = registry.get(name).threshold
            owners: list[int] = []
            chunks: list[bytes] = []
            for image_id, sha256 in new_images:
                for value in variants.get(sha256, {}).get(name, ()):
                    owners.append(image_id)
                    chunks.append(value.data)
            if not chunks:
                continue
            codes = np.frombuffer(b"".join(chunks), dtype=np.uint8)
            owner_of = np.asarray(owners, dtype=np.int64)
            # one pass over each index for the whole batch: older images, then the batch
            for n, idx in enumerate((index, self._batch_index(name, new_images, variants))):
                q, hits, _ = idx.range_pairs(codes, threshold)
                who = owner_of[q]
                # newer queries older only, so the links found do not depend
                # on where batches begin and end
                keep = hits < who if self.older_only or n else hits != who
                for owner, i in zip(who[keep].tolist(), hits[keep].tolist()):
                    candidates[owner].add(i)
        wanted = sorted(set().union(*candidates.values(), *voted.values())) if candidates else []
        stored = self.catalog.signals_of(wanted)
        out: list[LinkRow] = []
        for image_id, sha256 in new_images:
            if KEEP_PARTS and PART_VERIFY and sha256 in local and image_id in photos:
                # the parts' votes, on the parts older images kept, in the
                # collection and earlier in the batch (as the next batch
                # would see them)
                more, sides = self._voted([(image_id, sha256)], local, batch, photos,
                                          whole_votes)
                voted[image_id] = more.get(image_id, [])
                if image_id in sides:
                    orientations[image_id] = sides[image_id]
                stored.update(self.catalog.signals_of(
                    [o for o in voted[image_id] if o not in stored]))
            query = {name: list(vs) for name, vs in variants.get(sha256, {}).items()}
            others = {o: stored.get(o, {}) for o in
                      sorted(candidates[image_id] | set(voted.get(image_id, ())))}
            found = gather_evidence(query, others)
            if sha256 in local:
                # as a query does (:func:`measure`): the votes' candidates and the
                # best few by hashes; the robust model counts an unverified
                # candidate as weak evidence, so a copy the votes missed (a small
                # downscale has few keypoints) must be verified to be linked
                chosen = set(voted.get(image_id, ())) | set(_best_by_hashes(found))
                read: Mapping[int, features.LocalFeatures] = {}
                if chosen:
                    read = verify_candidates(self.catalog, [(local[sha256], chosen)], found,
                                      greys.get(sha256),
                                      {o: stored[o]["pdq"][0] for o in chosen
                                       if "pdq" in stored.get(o, {})},
                                      orientations.get(image_id),
                                      frames=framed.get(sha256, ()))
                grid = TILE_GRIDDED and seams[sha256]
                if pixels is not None and self.descriptors is not None \
                        and worth_tiling(found, sha256 in framed, grid):
                    grey = pixels(sha256)
                    if grey is not None:  # searched as a query's tiles are
                        quarters = FRAMED_QUARTERS or grid or part_matched(found)
                        ready = described.get(sha256)
                        cut = _search_tiles(
                            self.catalog, query, local[sha256], [], grey, found, stored,
                            self._tile_votes(image_id, self.descriptors, batch),
                            quarters=quarters,
                            ready=ready[2] if ready is not None and ready[0] == quarters
                            and tuple(ready[1]) == grey.shape else None)
                        if KEEP_PARTS:
                            self._keep_parts(image_id, parts_of(cut, grey, local[sha256][0]),
                                             batch)
                if self._reread is not None:
                    self.images_reread += verify_framing(
                        self.catalog, local[sha256], found, self._reread,
                        unmatched_only=True, framed_only=False,
                        query_grey=greys.get(sha256))
                if PART_VERIFY and chosen and image_id in photos:
                    # after the cut read again, which compares the pictures
                    # best where the source is still there
                    verify_parts(local[sha256], read, found, greys.get(sha256))
                if REVERSE_VERIFY and sha256 not in framed:
                    verify_reversed(self.catalog, local[sha256], found, self.min_score,
                                    orientations.get(image_id), greys.get(sha256))
            for other, ev in found.items():
                score = link_score(ev)
                if score >= self.min_score and ev.agreed:
                    out.append(LinkRow(min(image_id, other), max(image_id, other), score,
                                       link_distances(ev), ev.agreed, ev.transform,
                                       link_regions(ev, image_id < other)))
        return out

    def _keep_parts(self, image_id: int, parts: tuple[features.Part, ...],
                    batch: DescriptorIndex) -> None:
        """Store a new image's parts with its features, and index them: in the
        batch's index now, the collection's once committed."""
        blob = self.catalog.features_of([image_id]).get(image_id) if parts else None
        if blob is None:
            return
        found = features.LocalFeatures.from_bytes(blob)
        self.catalog.replace_features(image_id, dataclasses.replace(found, parts=parts)
                                      .to_bytes())
        self.parts[image_id] = parts
        self.images_parted += 1
        batch.add(image_id, dataclasses.replace(features.empty(), parts=parts))

    def _tile_votes(self, image_id: int, collection: DescriptorIndex, batch: DescriptorIndex
                    ) -> Callable[[LocalQuery], set[int]]:
        """A new image's tile's candidates: the images it votes for most in the
        collection and earlier in the batch, with the ingest's voters
        (:data:`LINK_VOTERS`: a tile's vote search costs what the whole
        image's does)."""
        def vote(view: LocalQuery) -> set[int]:
            return {i for i, votes in votes_across(
                [(collection, None), (batch, image_id)], [f for f in view if f is not None],
                VERIFY_PER_TILE, voters=LINK_VOTERS)
                if sum(votes) >= MIN_VOTES and self._older(i, image_id)}
        return vote

    def _older(self, other: int, image_id: int) -> bool:
        """Whether a new image links to ``other`` (newer images query older)."""
        return other < image_id or not self.older_only and other != image_id

    def _whole_votes(self, new_images: list[tuple[int, str]], local: Mapping[str, LocalQuery],
                     batch: DescriptorIndex) -> dict[int, list[tuple[int, tuple[int, ...]]]]:
        """Per new image, the older images its local descriptors vote for most
        (:func:`votes_across`): in the collection and earlier in the
        ``batch``, ranked as one index (shared votes)."""
        if self.descriptors is None:
            return {}
        return {image_id: votes_across(
                    [(self.descriptors, None), (batch, image_id)],
                    [f for f in local[sha256] if f is not None], LINK_VERIFY,
                    voters=LINK_VOTERS)
                for image_id, sha256 in new_images if sha256 in local}

    def _voted(self, new_images: list[tuple[int, str]], local: Mapping[str, LocalQuery],
               batch: DescriptorIndex, photos: Set[int],
               whole_votes: Mapping[int, list[tuple[int, tuple[int, ...]]]]
               ) -> tuple[dict[int, list[int]], dict[int, dict[int, tuple[bool, bool]]]]:
        """Per new image, the older images worth verifying: those its
        ``whole_votes`` (:meth:`_whole_votes`) give enough votes, and for the
        ``photos`` those whose kept parts it votes for enough (ranked apart:
        a few more candidates); and for each the orientations worth
        verifying (:data:`LINK_ORIENTATION_VOTES`)."""
        if self.descriptors is None or not local:
            return {}, {}
        out: dict[int, list[int]] = {}
        sides: dict[int, dict[int, tuple[bool, bool]]] = {}
        for image_id, sha256 in new_images:
            if sha256 not in local:
                continue
            queries = [f for f in local[sha256] if f is not None]
            found = list(whole_votes.get(image_id, ()))
            if KEEP_PARTS and PART_VERIFY and image_id in photos:
                found += votes_across([(self.descriptors, None), (batch, image_id)], queries,
                                      PART_CANDIDATES, voters=LINK_VOTERS, kept_parts=True)
            chosen: dict[int, tuple[int, ...]] = {}
            for i, votes in found:
                i &= ~PART_OWNER
                if sum(votes) >= LINK_MIN_VOTES and self._older(i, image_id) \
                        and sum(votes) > sum(chosen.get(i, ())):
                    chosen[i] = votes
            if chosen:
                out[image_id] = sorted(chosen)
                if len(queries) == 2:
                    sides[image_id] = {i: _worth_verifying(v) for i, v in chosen.items()}
        return out, sides

    def _batch_index(self, name: str, new_images: list[tuple[int, str]],
                     variants: Mapping[str, Mapping[str, Sequence[HashValue]]]) -> BinaryIndex:
        index = BinaryIndex(registry.get(name).bits)
        ids, codes = _identity_codes(name, new_images, variants)
        index.add(ids, codes)
        return index

    def committed(self, new_images: list[tuple[int, str]],
                  variants: Mapping[str, Mapping[str, Sequence[HashValue]]],
                  local: Mapping[str, LocalQuery] | None = None) -> None:
        for name, index in self.indexes.items():
            ids, codes = _identity_codes(name, new_images, variants)
            index.add(ids, codes)
        if self.descriptors is not None and local:
            for image_id, sha256 in new_images:
                if sha256 in local:
                    self.descriptors.add(image_id, dataclasses.replace(
                        local[sha256][0], parts=self.parts.get(image_id, ())))
        self.parts = {}


#: Whether a new image whose tiles were searched (:func:`worth_tiling`)
#: keeps the features of those tiles with its own (:func:`parts_of`), and
#: the vote index takes some of them (``descriptors.PER_PART``), so that a
#: photo catalogued after the collage or the screenshot that shows it finds
#: it, and is verified against the part where it lies
#: (:data:`PART_VERIFY`). ``scripts/bench accuracy --keep-parts 0`` turns it off.
KEEP_PARTS = True
#: Candidates an ingest takes from the parts images kept, ranked apart from
#: the images' own (:data:`LINK_VERIFY`), whose places they would take.
PART_CANDIDATES = 2
#: Whether a new image's candidates that kept parts are verified against
#: each part too, the best kept where it beats the whole: the photo, as a
#: whole, against the collage's cell at the cell's own resolution, as
#: :func:`verify_within` does with an image read again (which a part makes
#: unnecessary, and works where the source is gone).
PART_VERIFY = True
#: Whether a part's verification counts only where the new image, moved
#: onto the part, agrees with it (PDQ, the part's whole or its centre,
#: within :data:`CENTRE_AGREES` bits): a match through a part is a
#: collage's cell or a screenshot's photo, the picture itself.
PART_AGREES = True


def parts_of(described: Sequence[tuple[tuple[int, int, int, int], LocalQuery]],
             grey: np.ndarray, whole: features.LocalFeatures) -> tuple[features.Part, ...]:
    """The parts an image keeps of the tiles its search described
    (``described``: boxes in ``grey``, and their features): their boxes at
    the image's analysed size (``whole``'s), each with its PDQ and its
    centre's, for the aligned comparison a photo gets against it."""
    if not grey.shape[1]:
        return ()
    scale = whole.width / grey.shape[1]
    out = []
    for box, (plain, _) in described[:features.MAX_PARTS]:
        if len(plain) < VERIFIABLE:
            continue
        prepared = features.prepare(features.cut(grey, [box])[0])  # as extract sized it
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        out.append(features.part_of(plain, (x0, y0, x1, y1), centre_hash(prepared),
                                    hash_luma(prepared)))
    return tuple(out)


def verify_parts(view: LocalQuery, stored: Mapping[int, features.LocalFeatures],
                 found: dict[int, Evidence], query_grey: np.ndarray | None = None) -> int:
    """Verify a new image (``view``: its features and its mirror's) against
    the parts its candidates kept (``stored``: their features, as
    :func:`verify_candidates` read them), each compared aligned with the
    part as :func:`verify_within` compares (only agreement counts, and with
    :data:`PART_AGREES` only a part that agrees), and keep the part that
    scores the pair highest where it scores it higher than before.
    Candidates already linked are skipped: a part's link is capped
    (:data:`PARTIAL_LINK_CAP`), and would take the place of a whole match
    that joins clusters. Returns how many candidates' parts were verified."""
    plain, mirrored = view
    if len(plain) < VERIFIABLE:
        return 0
    whole_box = None if query_grey is None else (0, 0, query_grey.shape[1],
                                                 query_grey.shape[0])
    tried = 0
    for image_id, older in sorted(stored.items()):
        if not older.parts:
            continue
        ev = found.get(image_id) or Evidence(robust=True)
        if ev.verified is not None and link_score(ev) >= MATCH_SCORE:
            continue  # linked as it is: a whole match joins clusters, a part's is capped
        tried += 1
        best, best_score = None, link_score(ev) if ev.verified is not None else -1.0
        for part in older.parts:
            if len(part.features) < VERIFIABLE:
                continue
            result, flipped = features.best_of(plain, mirrored, part.features,
                                               min_support=ALIGN_SUPPORT)
            if result.support < ALIGN_SUPPORT:
                continue
            verified = _verified(result, flipped, plain.width, part.features, query_grey,
                                 whole_box, part.pdq, in_tile=True)
            verified = dataclasses.replace(verified, regions=(
                verified.regions[0] if verified.regions else None,
                _in_part(verified.regions[1] if verified.regions else None, part.box, older)))
            agrees = verified.aligned is not None and verified.aligned <= CENTRE_AGREES
            if PART_AGREES and not agrees:
                continue  # keypoints alone: a word two banners share, a figure's feet
            if not agrees:
                verified = dataclasses.replace(verified, aligned=None, aligned_centre=False)
            turned = dataclasses.replace(ev, verified=verified)
            if not ev.hashes or turned.strong_geometry:
                turned.transform = "mirror" if flipped else "identity"
            # kept where the pair scores higher: a copy that matched as a
            # whole stays a whole match, not a part's (capped) one
            if link_score(turned) > best_score:
                best, best_score = turned, link_score(turned)
        if best is not None:
            found[image_id] = best
    return tried


#: At ingest, a candidate verified but not linked is verified the other way
#: too: its stored features as the query, the new image's as the stored
#: ones. A link means "the same picture" whichever image came first, and a
#: query with the older image would find the newer once catalogued; the
#: model, fitted on edited copies querying their originals, is not
#: symmetric (a copy turned 12 degrees, querying its original, can score
#: under the match score where the original querying the copy scores a
#: link: ``tests/test_reverse_links.py``). Not for a new image that frames
#: pictures: the older one's frames are not known, so the ``frame-only``
#: rule could not hold two screens of one app apart.
REVERSE_VERIFY = True
#: Whether a query verifies its candidates the other way round too, as an
#: ingest does (:data:`REVERSE_VERIFY`), unless it frames pictures: then a
#: query scores a pair as its link was scored, whichever image was
#: catalogued first. Chosen on the fit half (``scripts/bench accuracy
#: --query-reverse 0/1``): recall at precision 0.99 0.900 to 0.903, at 0.90
#: 0.960 to 0.963; negatives scoring 0.5 or more 3.3% to 3.5% (one query).
QUERY_REVERSE = True
#: Inliers the forward verification must have found for the reverse one
#: to be tried: geometry seen, but weighed down.
REVERSE_MIN_INLIERS = 20
#: Whether a reverse verification makes its own aligned comparison (the new
#: image moved onto the older one's frame by its similarity, inverted)
#: where the forward one had too little support to make one: a copy whose
#: keypoints, querying its original, are mostly one pattern repeated, and
#: the original querying the copy aligns (``tests/test_reverse_links.py``).
REVERSE_ALIGN = True


def verify_reversed(catalog: Catalog, view: LocalQuery, found: dict[int, Evidence],
                    min_score: float,
                    orientations: Mapping[int, tuple[bool, bool]] | None = None,
                    grey: np.ndarray | None = None) -> int:
    """Verify, the other way round, the candidates of a new image (``view``:
    its features and its mirror's) that were verified but score under
    ``min_score``; keep the reverse verification where it scores higher.
    Returns how many were verified again.

    With the new image's pixels (``grey``, as :func:`verify_candidates`
    takes them), a reverse verification makes its own aligned comparison
    where the forward one made none (:data:`REVERSE_ALIGN`)."""
    wanted = [i for i, ev in found.items()
              if ev.verified is not None and ev.verified.inliers >= REVERSE_MIN_INLIERS
              and link_score(ev) < min_score]
    if not wanted:
        return 0
    plain, mirrored = view
    blobs = catalog.features_of(wanted)
    pdq = {i: values["pdq"][0] for i, values in catalog.signals_of(wanted).items()
           if "pdq" in values} if REVERSE_ALIGN and grey is not None else {}
    for image_id, blob in blobs.items():
        older = features.LocalFeatures.from_bytes(blob)
        if len(older) < VERIFIABLE:
            continue
        try_plain, try_mirror = (orientations or {}).get(image_id, (True, True))
        results = []
        if try_plain or mirrored is None:
            results.append((features.verify(older, plain), False))
        if mirrored is not None and try_mirror and not (
                results and results[0][0].support >= features.CONCLUSIVE_SUPPORT):
            results.append((features.verify(older, mirrored), True))
        result, flipped = max(results, key=lambda r: r[0].support)
        ev = found[image_id]
        # the aligned comparison (the new image moved onto the older one's
        # frame) compares the two pictures whichever way they were verified:
        # kept, so that two screens of one app stay apart by their photos
        new_box = result.stored_box
        if new_box is not None and flipped:  # the new image's mirror played the stored one
            new_box = (1.0 - new_box[2], new_box[1], 1.0 - new_box[0], new_box[3])
        older_box = None if result.query_box is None or not older.width else (
            result.query_box[0] / older.width, result.query_box[1] / older.height,
            result.query_box[2] / older.width, result.query_box[3] / older.height)
        aligned = ev.verified.aligned if ev.verified is not None else None
        centre = ev.verified is not None and ev.verified.aligned_centre
        if aligned is None and grey is not None and image_id in pdq:
            # the new image moved onto the older one's frame by this
            # verification's similarity, inverted: what a query with the
            # older image would compare
            back = features.turned(result, older,
                                   mirrored if flipped and mirrored is not None else plain)
            moved = None if back is None else _verified(
                back, flipped, plain.width, older, grey, (0, 0, grey.shape[1], grey.shape[0]),
                pdq[image_id])
            if moved is not None and moved.aligned is not None:
                aligned, centre = moved.aligned, moved.aligned_centre
        verified = dataclasses.replace(
            _verified(result, flipped, older.width, plain, None, None, None),
            aligned=aligned, aligned_centre=centre, reversed=True,
            regions=(new_box, older_box))
        turned = dataclasses.replace(ev, verified=verified)
        if link_score(turned) > link_score(ev):
            turned.transform = "mirror" if flipped else "identity"
            found[image_id] = turned
    return len(blobs)


def _worth_verifying(votes: tuple[int, ...]) -> tuple[bool, bool]:
    """Which orientations (the image, its mirror) a candidate's votes make
    worth verifying: each with enough votes of its own, or the one with more."""
    plain, mirror = votes
    return (plain >= LINK_ORIENTATION_VOTES or plain >= mirror,
            mirror >= LINK_ORIENTATION_VOTES or mirror > plain)


def _identity_codes(name: str, new_images: list[tuple[int, str]],
                    variants: Mapping[str, Mapping[str, Sequence[HashValue]]]
                    ) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(image_id, variants[sha][name][0].data) for image_id, sha in new_images
             if name in variants.get(sha, {})]
    ids = np.array([p[0] for p in pairs], dtype=np.int64)
    codes = np.frombuffer(b"".join(p[1] for p in pairs), dtype=np.uint8)
    return ids, codes
