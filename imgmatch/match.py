"""Query -> candidates from every signal's index -> exact distances -> scored matches.

This is the only layer that joins indexes (ids and distances) with the
catalog (everything else). Candidates come from each signal's index, searched
with all of the query's dihedral variants, so one stored hash per image
matches mirrored and rotated copies. Every candidate is then re-measured on
every signal both sides have, and scored.

Score: per usable signal, ``1 - d / (2 * threshold)`` clipped to [0, 1], so
a distance exactly at the threshold scores 0.5; the match's score is the
best of its usable signals. A value is unusable when its quality is below
its signal's gate (PDQ: 50), on either side: plain images (blank, flat, very
dark) all hash alike and must not make confident matches; their score is
capped below 0.5 and the match says ``low_information``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from . import features
from . import signals as registry
from .catalog import Catalog, LinkRow
from .descriptors import DescriptorIndex
from .index import BinaryIndex
from .model import Match
from .signals import FEATURES, HashValue

#: Default minimum score of a reported match: at the thresholds.
MATCH_SCORE = 0.5
#: Ceiling for matches resting on low-information hashes only.
LOW_INFORMATION_CAP = 0.45
#: How many neighbours per query variant each index is asked for (at least).
MIN_CANDIDATES = 32

#: Inliers at which a geometric verification alone scores the match score.
INLIERS_AT_THRESHOLD = 20
#: Candidates verified geometrically: the best by hash score, and the most
#: voted by the descriptor index.
VERIFY_FROM_HASHES = 4
VERIFY_FROM_DESCRIPTORS = 8
#: Descriptor candidates with fewer votes than this are not worth verifying.
MIN_VOTES = 3
#: Candidates voted by each tile of the query (collages) that are verified.
VERIFY_PER_TILE = 3
#: At ingest, only the few images with the most descriptor votes, and at
#: least this many, are verified: ingest must stay fast, and a repost's
#: strongest descriptors vote for it many times over.
LINK_MIN_VOTES = 12
LINK_VERIFY = 4

TRANSFORM_NAMES = ("identity", "mirror", "flip", "rotate-180", "transpose",
                   "rotate-90", "rotate-270", "transverse")


def signal_score(distance: int, threshold: int) -> float:
    """1 at distance 0, 0.5 at the threshold, 0 at twice it (a threshold of 0: exact only)."""
    return max(0.0, min(1.0, 1.0 - distance / (2.0 * max(threshold, 0.5))))


def feature_score(support: float) -> float:
    """0 without inliers, 0.5 at :data:`INLIERS_AT_THRESHOLD`, towards 1 beyond.

    ``support`` is the inlier count discounted for a small overlap
    (:attr:`imgmatch.features.Verification.support`).
    """
    return 1.0 - 0.5 ** (support / INLIERS_AT_THRESHOLD)


LocalQuery = tuple[features.LocalFeatures, features.LocalFeatures | None]


def verify_candidates(catalog: Catalog, views: Sequence[tuple[LocalQuery, Iterable[int]]],
                      scored: dict[int, dict]) -> None:
    """Verify candidates geometrically and fold the evidence into their results.

    ``views`` pairs the query's local features (the whole image, or a tile
    of it) with the candidates to verify against them; an image verified in
    several views keeps its best. A verified pair's score is the better of
    its hash score and its feature score; the local features join ``agreed``
    at or above the threshold, the inlier count is kept, and strong geometric
    evidence overrides a low-information flag (plain images give few
    keypoints and few inliers).
    """
    wanted = sorted({i for _, ids in views for i in ids})
    blobs = catalog.features_of(wanted)
    stored = {i: features.LocalFeatures.from_bytes(b) for i, b in blobs.items()}
    best: dict[int, tuple[features.Verification, bool]] = {}
    for (plain, mirrored), ids in views:
        for image_id in ids:
            if image_id not in stored:
                continue
            result, flipped = features.best_of(plain, mirrored, stored[image_id])
            if image_id not in best or result.support > best[image_id][0].support:
                best[image_id] = (result, flipped)
    for image_id, (result, flipped) in best.items():
        a = scored.setdefault(image_id, {"distances": {}, "agreed": (), "score": 0.0,
                                         "low_information": False, "transform": "identity"})
        a["inliers"] = result.inliers
        s = feature_score(result.support)
        if result.support >= INLIERS_AT_THRESHOLD:
            a["agreed"] = tuple(a["agreed"]) + (FEATURES,)
            a["low_information"] = False
        if s > a["score"]:
            a["score"] = s
            a["transform"] = "mirror" if flipped else "identity"


def radius_for(min_score: float, threshold: int) -> int:
    """Largest distance whose signal score is still >= min_score."""
    return int(np.floor(2.0 * max(threshold, 0.5) * (1.0 - min_score) + 1e-9))


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def min_distances(variants: np.ndarray, stored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each stored code, the smallest Hamming distance to any query variant.

    ``variants`` is (V, bytes), ``stored`` (C, bytes); returns (distances (C,),
    index of the closest variant (C,)).
    """
    d = _POPCOUNT[variants[:, None, :] ^ stored[None, :, :]].sum(axis=2, dtype=np.int32)
    which = d.argmin(axis=0)
    return d[which, np.arange(d.shape[1])], which


def score_candidates(query: Mapping[str, Sequence[HashValue]],
                     stored: Mapping[int, Mapping[str, tuple[bytes, int | None]]]
                     ) -> dict[int, dict]:
    """Distances, agreeing signals and score of stored images against a query.

    Vectorised over candidates, signal by signal. ``stored`` maps an image id
    to its values ``{signal: (bytes, quality)}``.
    """
    ids = list(stored)
    acc = {i: {"distances": {}, "agreed": [], "usable": 0.0, "any": 0.0,
               "best": -1.0, "transform": 0} for i in ids}
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
        # a bare hash (a partner's PDQ) comes without its quality: trust it
        query_ok = variants[0].quality is None or sig.usable(variants[0])
        for i, d, w in zip(have, dist.tolist(), which.tolist()):
            a = acc[i]
            a["distances"][name] = d
            s = signal_score(d, sig.threshold)
            stored_quality = stored[i][name][1]  # None: an imported hash, trusted too
            usable = query_ok and sig.trusts(stored_quality)
            a["any"] = max(a["any"], s)
            if usable:
                a["usable"] = max(a["usable"], s)
                if d <= sig.threshold:
                    a["agreed"].append(name)
            if s > a["best"]:
                a["best"], a["transform"] = s, w
    out = {}
    for i, a in acc.items():
        low_information = a["usable"] < a["any"] and a["usable"] < MATCH_SCORE
        score = a["usable"] if not low_information else min(a["any"], LOW_INFORMATION_CAP)
        out[i] = {"distances": a["distances"], "agreed": tuple(a["agreed"]), "score": score,
                  "low_information": low_information,
                  "transform": TRANSFORM_NAMES[a["transform"]]
                  if a["transform"] < len(TRANSFORM_NAMES) else "identity"}
    return out


def score_candidate(query: Mapping[str, Sequence[HashValue]],
                    stored: Mapping[str, tuple[bytes, int | None]]) -> dict:
    """Distances, agreeing signals and score of one stored image against a query."""
    return score_candidates(query, {0: stored})[0]


def find_matches(catalog: Catalog, indexes: Mapping[str, BinaryIndex],
                 query: Mapping[str, Sequence[HashValue]], *, top_k: int = 10,
                 min_score: float = MATCH_SCORE, with_sightings: bool = True,
                 local: LocalQuery | Sequence[LocalQuery] | None = None,
                 descriptors: DescriptorIndex | None = None) -> list[Match]:
    """The best ``top_k`` catalogued images for a query, best first.

    ``query`` maps a signal name to the query's values for it (the dihedral
    variants, identity first). With ``min_score`` > 0 every image scoring at
    least that through a hash is a candidate (an exact range search: no
    scan); with 0 the nearest neighbours of each signal are ranked (a scan),
    so a full ranking can be evaluated. ``local`` (the query's local features
    and its mirror's; or a list of such views, the whole image first, then
    its tiles) adds the robust tier: candidates voted by the ``descriptors``
    index, and geometric verification of the best candidates. Tiles find the
    photos of a collage: each gets its own votes and verifications.
    """
    candidates: set[int] = set()
    for name, variants in query.items():
        index = indexes.get(name)
        if index is None or not len(index) or not variants:
            continue
        codes = np.frombuffer(b"".join(v.data for v in variants), dtype=np.uint8)
        threshold = registry.get(name).threshold
        if min_score > 0:
            # exact: an image scores >= min_score only through a signal within this radius
            for ids, _ in index.range_search(codes, radius_for(min_score, threshold)):
                candidates.update(int(i) for i in ids)
        else:
            _, ids = index.search(codes, max(top_k * 2, MIN_CANDIDATES))
            candidates.update(int(i) for i in ids.ravel() if i >= 0)
    views: list[tuple[LocalQuery, set[int]]] = []
    if local is not None and descriptors is not None:
        for n, view in enumerate([local] if isinstance(local, tuple) else local):
            limit = VERIFY_FROM_DESCRIPTORS if n == 0 else VERIFY_PER_TILE
            voted = {i for i, votes in descriptors.candidates(
                [f for f in view if f is not None], limit) if votes >= MIN_VOTES}
            candidates.update(voted)
            views.append((view, voted))
    if not candidates:
        return []
    stored = catalog.signals_of(sorted(candidates))
    results = score_candidates(query, stored)
    if views:
        views[0][1].update(sorted(results, key=lambda i: (-results[i]["score"], i))
                           [:VERIFY_FROM_HASHES])
        verify_candidates(catalog, views, results)
    scored = [(image_id, result, stored.get(image_id, {}))
              for image_id, result in results.items() if result["score"] >= min_score]
    scored.sort(key=lambda t: (-t[1]["score"], sum(t[1]["distances"].values()), t[0]))
    scored = scored[:top_k]
    ids = [image_id for image_id, _, _ in scored]
    images = catalog.images(ids)
    sightings = catalog.sightings_of(ids) if with_sightings else {}
    out = []
    for image_id, result, values in scored:
        image = images.get(image_id, {})
        out.append(Match(
            sha256=image.get("sha256"), image_id=image_id, score=result["score"],
            distances=result["distances"], agreed=result["agreed"],
            signals={name: value.hex() for name, (value, _) in sorted(values.items())},
            sightings=tuple(sightings.get(image_id, ())), image=image,
            low_information=result["low_information"], transform=result["transform"],
            inliers=result.get("inliers")))
    return out


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
                 descriptors: DescriptorIndex | None = None) -> None:
        self.catalog = catalog
        self.indexes = indexes
        self.min_score = min_score
        self.descriptors = descriptors

    def links(self, new_images: list[tuple[int, str]],
              variants: Mapping[str, Mapping[str, Sequence[HashValue]]],
              local: Mapping[str, LocalQuery] | None = None) -> list[LinkRow]:
        local = local or {}
        candidates: dict[int, set[int]] = {image_id: set() for image_id, _ in new_images}
        voted = self._voted(new_images, local)
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
            for idx in (index, self._batch_index(name, new_images, variants)):
                q, other, _ = idx.range_pairs(codes, threshold)
                who = owner_of[q]
                # newer queries older only, so the links found do not depend
                # on where batches begin and end
                keep = other < who
                for owner, i in zip(who[keep].tolist(), other[keep].tolist()):
                    candidates[owner].add(i)
        wanted = sorted(set().union(*candidates.values(), *voted.values())) if candidates else []
        stored = self.catalog.signals_of(wanted)
        out: list[LinkRow] = []
        for image_id, sha256 in new_images:
            query = {name: list(vs) for name, vs in variants.get(sha256, {}).items()}
            others = {o: stored.get(o, {}) for o in
                      sorted(candidates[image_id] | set(voted.get(image_id, ())))}
            results = score_candidates(query, others)
            if voted.get(image_id):
                verify_candidates(self.catalog, [(local[sha256], voted[image_id])], results)
            for other, result in results.items():
                if result["score"] >= self.min_score and result["agreed"]:
                    out.append(LinkRow(min(image_id, other), max(image_id, other),
                                       result["score"], result["distances"],
                                       result["agreed"], result["transform"]))
        return out

    def _voted(self, new_images: list[tuple[int, str]],
               local: Mapping[str, LocalQuery]) -> dict[int, list[int]]:
        """Per new image, the older images its local descriptors vote for enough
        to be worth verifying (in the collection, then earlier in the batch)."""
        if self.descriptors is None or not local:
            return {}
        batch = DescriptorIndex()
        for image_id, sha256 in new_images:
            if sha256 in local:
                batch.add(image_id, local[sha256][0])
        out: dict[int, list[int]] = {}
        for image_id, sha256 in new_images:
            if sha256 not in local:
                continue
            queries = [f for f in local[sha256] if f is not None]
            found = self.descriptors.candidates(queries, LINK_VERIFY) + \
                batch.candidates(queries, LINK_VERIFY, exclude_from=image_id)
            found.sort(key=lambda t: (-t[1], t[0]))
            ids = sorted({i for i, votes in found[:LINK_VERIFY]
                          if votes >= LINK_MIN_VOTES and i < image_id})
            if ids:
                out[image_id] = ids
        return out

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
                    self.descriptors.add(image_id, local[sha256][0])


def _identity_codes(name: str, new_images: list[tuple[int, str]],
                    variants: Mapping[str, Mapping[str, Sequence[HashValue]]]
                    ) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(image_id, variants[sha][name][0].data) for image_id, sha in new_images
             if name in variants.get(sha, {})]
    ids = np.array([p[0] for p in pairs], dtype=np.int64)
    codes = np.frombuffer(b"".join(p[1] for p in pairs), dtype=np.uint8)
    return ids, codes
