"""Near-duplicate links -> clusters of the same picture, with their sightings.

Links are recorded at ingest (each new image against everything before it),
so building clusters is a pass over the links table with a union-find, not a
new all-pairs search. A picture whose bytes were seen more than once is a
cluster of one image with several sightings.

Chaining guard. Plain connected components let one ambiguous image (a
collage, a photo under a big site logo, a stock background) join unrelated
pictures into one cluster. So only *strong* links (a calibrated score of
at least ``STRONG_SCORE``) build the cores; a *weak* link (a lead, under
``STRONG_SCORE``) can only attach a lone image to a core, which
corroborates it: the core of its best weak link into a core, from
``ATTACH_SCORE`` up. Two lone
images pair up on a weak link only where each is the other's best, from
:data:`PAIR_SCORE` (on the second benchmark set, weaker pairs were icons
of one series and signs of one template); weak links never merge two
cores, and an image attaches to one core at most. One
image whose strong links are the only join between two groups of images
(a collage of two photos, each cell half of it, matched strongly to both)
is a hub: it keeps its strong links into the larger group, and the others
count as weak (:data:`HUB_PART`). A collage shows several pictures, in
cells apart from each other: an image whose links' evidence lies in parts
of it apart from each other (:func:`composites`, from where each link's
inliers lie) keeps as strong only the links that lie where its best one
does, and no lone image attaches to a cluster through it. Images
marked with ``imgmatch ignore`` (and images matching an ignored hash) take
no part.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from .catalog import Catalog
from .evidence import PRECISE
from .model import Cluster
from .records import Box


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        parent.setdefault(x, x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb


#: A link at or above this score counts as strong: the score from which every
#: tier reached precision 0.99 on the fit half of the second benchmark set
#: (:data:`imgmatch.evidence.PRECISE`, docs/benchmarks.md). A partial
#: overlap alone (a collage's tile, a screenshot's photo) is capped below it
#: at linking, so it can attach an image to a cluster but never join two.
STRONG_SCORE = PRECISE
#: The weakest link that attaches a lone image to a cluster; links under it
#: stay leads between two images. Chosen on the fit half's simulated crawl,
#: its links clustered again (``scripts/bench crawl-links --recluster
#: ATTACH_SCORE=0.5,0.62,0.65,0.7,0.72``, docs/benchmarks.md), as the lowest
#: that kept the crawl's B-cubed precision of the engine before an agreeing
#: aligned comparison was weighed more (0.9965): 0.5 gave 0.9957 / recall
#: 0.9398, 0.62 0.9957 / 0.9354, 0.65 to 0.70 0.9973 / 0.9341, 0.72 0.9986 /
#: 0.9327.
ATTACH_SCORE = 0.65
#: What a hub's strong link into a group it does not keep counts as: weak,
#: kept over the other weak links (it may still attach a lone image)
WEAK_HUB_SCORE = math.nextafter(STRONG_SCORE, 0.0)


def is_strong(score: float) -> bool:
    return score >= STRONG_SCORE


#: A hub joins groups of at least this many images each (without it) that
#: no other strong link joins. Chosen on the fit half's simulated crawl, its
#: links clustered again (``scripts/bench crawl-links --recluster
#: HUB_PART=2,3,1000000``): without hubs 0.9946 / recall 0.9348, a collage of
#: two photos joining their clusters; at 3 0.9973 / 0.9341; at 2 0.9973 /
#: 0.9329, a reference between two pairs of its own copies cut off.
HUB_PART = 3


def _separators(adjacent: dict[int, set[int]]
                ) -> tuple[dict[int, int], dict[int, list[tuple[int, int, int]]]]:
    """Images whose removal splits their group of strong links into two or
    more parts of :data:`HUB_PART` images or more: articulation points, by
    Tarjan's algorithm without recursion, in one pass over the links however
    long a chain a crawl holds. Returns each image's depth-first order, and
    each such image's parts as ``(first, end, images)``: a part below it in
    the search holds the orders ``first <= order < end``; the rest of its
    group is ``(-1, -1, images)``."""
    order: dict[int, int] = {}
    low: dict[int, int] = {}
    size: dict[int, int] = {}
    found: dict[int, list[tuple[int, int, int]]] = {}
    for root in sorted(adjacent):
        if root in order:
            continue
        cut: dict[int, list[tuple[int, int, int]]] = {}
        order[root] = low[root] = len(order)
        size[root] = 1
        stack: list[tuple[int, int | None, Iterator[int]]] = [
            (root, None, iter(sorted(adjacent[root])))]
        members = 1
        while stack:
            v, parent, rest = stack[-1]
            for w in rest:
                if w == parent:
                    continue
                if w in order:
                    low[v] = min(low[v], order[w])
                else:
                    order[w] = low[w] = len(order)
                    size[w] = 1
                    members += 1
                    stack.append((w, v, iter(sorted(adjacent[w]))))
                    break
            else:
                stack.pop()
                if stack:
                    p = stack[-1][0]
                    low[p] = min(low[p], low[v])
                    size[p] += size[v]
                    if low[v] >= order[p]:  # v's subtree hangs on p alone
                        cut.setdefault(p, []).append((order[v], order[v] + size[v], size[v]))
        for v, parts in cut.items():
            if v != root:
                parts = parts + [(-1, -1, members - 1 - sum(n for _, _, n in parts))]
            if sum(n >= HUB_PART for _, _, n in parts) >= 2:
                found[v] = parts
    return order, found


def _hub_links(strong: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """The strong links that count as weak: each hub's (:func:`_separators`)
    into every part but the largest it joins."""
    adjacent: dict[int, set[int]] = {}
    for a, b in strong:
        adjacent.setdefault(a, set()).add(b)
        adjacent.setdefault(b, set()).add(a)
    order, hubs = _separators(adjacent)
    weak: set[tuple[int, int]] = set()
    for hub, parts in hubs.items():
        keep = min(parts, key=lambda part: (-part[2], part[0]))
        rest = next((part for part in parts if part[0] < 0), None)
        below = sorted(part for part in parts if part[0] >= 0)
        starts = [first for first, _, _ in below]
        for n in adjacent[hub]:
            k = bisect.bisect_right(starts, order[n]) - 1
            part = below[k] if k >= 0 and order[n] < below[k][1] else rest
            if part != keep:
                weak.add((min(hub, n), max(hub, n)))
    return weak


#: Whether the composites' guard applies (:func:`composites`). Chosen on
#: the fit half's simulated crawl (``scripts/bench crawl-links --recluster
#: COMPOSITE_GUARD=False,True``): 0.9973 / 0.9357 either way (its 3
#: clusters mixing pictures have other causes); on the dev set's photographs
#: in collages, screenshots and chains (``scripts/bench sets
#: --photo-composites``, never tuned on), 0.9731 / 0.8269 with 7 clusters
#: mixing pictures without it, 0.9968 / 0.8183 with 1 (docs/benchmarks.md).
COMPOSITE_GUARD = True
#: Two regions of one image lie apart when their intersection is less than
#: this share of the smaller: a collage's cells, not a photo's crops. Set
#: a priori: the fit half's crawl gives the same clusters from 0.05 to 0.5.
APART = 0.2
#: Regions smaller than this share of an image do not count (a word, a logo).
MIN_REGION = 0.01


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def apart(a: Box, b: Box) -> bool:
    """Whether two regions of one image share less than :data:`APART` of the smaller."""
    inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    return inter < APART * min(_area(a), _area(b))


def composites(links: Iterable[tuple[int, int, float, tuple[str, ...]]],
               regions: Mapping[tuple[int, int], tuple[Box | None, Box | None]]
               ) -> dict[int, Box]:
    """The images whose links' evidence lies in parts of them apart from each
    other (a collage's cells), each with its home: where its best link's
    evidence lies (ties: the link to the smaller image id)."""
    seen: dict[int, list[tuple[float, int, Box]]] = {}
    for a, b, score, _ in links:
        boxes = regions.get((min(a, b), max(a, b)))
        if boxes is None:
            continue
        if a > b:
            a, b = b, a
        for image, other, box in ((a, b, boxes[0]), (b, a, boxes[1])):
            if box is not None and _area(box) >= MIN_REGION:
                seen.setdefault(image, []).append((score, -other, box))
    out: dict[int, Box] = {}
    for image, found in seen.items():
        if len(found) < 2:
            continue
        found.sort(reverse=True)
        if _any_apart(np.array([box for _, _, box in found], dtype=np.float64)):
            out[image] = found[0][2]
    return out


def _any_apart(boxes: np.ndarray, rows: int = 512) -> bool:
    """Whether any two of (N, 4) boxes lie :func:`apart`: every pair, in
    blocks of ``rows``, so that a picture copied thousands of times (each
    copy's link a box over all of it) costs arrays, not a Python loop over
    millions of pairs."""
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    for start in range(0, len(boxes), rows):
        block = boxes[start:start + rows, None, :]
        w = np.minimum(block[..., 2], boxes[None, :, 2]) - np.maximum(block[..., 0], boxes[None, :, 0])
        h = np.minimum(block[..., 3], boxes[None, :, 3]) - np.maximum(block[..., 1], boxes[None, :, 1])
        inter = np.clip(w, 0, None) * np.clip(h, 0, None)
        smaller = np.minimum(area[start:start + rows, None], area[None, :])
        if np.any(inter < APART * smaller):
            return True
    return False


def _away_from_home(links: list[tuple[int, int, float, tuple[str, ...]]],
                    regions: Mapping[tuple[int, int], tuple[Box | None, Box | None]],
                    homes: Mapping[int, Box]) -> set[tuple[int, int]]:
    """The strong links whose evidence lies, in a composite, apart from its home."""
    out: set[tuple[int, int]] = set()
    for a, b, score, _ in links:
        if not is_strong(score):
            continue
        pair = (min(a, b), max(a, b))
        boxes = regions.get(pair)
        if boxes is None:
            continue
        for image, box in ((pair[0], boxes[0]), (pair[1], boxes[1])):
            if image in homes and box is not None and apart(homes[image], box):
                out.add(pair)
    return out


#: Two images still alone after the attachments pair up where each is the
#: other's best link among lone images, at this score or more (None: never),
#: unless either is a composite: a screenshot and a chained repost of a
#: photo whose original was never collected have only each other. Chosen on
#: the fit half's simulated crawl (``scripts/bench crawl-links --recluster
#: PAIR_SCORE=None,0.85,0.8,0.75,0.7``): 0.9973 / 0.9357 never, 0.9973 /
#: 0.9358 from 0.85 and 0.8, 0.9973 / 0.9360 at 0.75, 0.9968 / 0.9360 at
#: 0.7 (a fourth cluster mixing pictures); 0.8 keeps a step of margin.
PAIR_SCORE: float | None = 0.8


def _pair_lone(links: list[tuple[int, int, float, tuple[str, ...]]], uf: _UnionFind,
               size: dict[int, int], core: dict[int, int],
               attached: dict[int, tuple[float, int]], homes: Mapping[int, Box]) -> None:
    """Join the pairs of lone images that are each other's best link (:data:`PAIR_SCORE`)."""
    assert PAIR_SCORE is not None
    best: dict[int, tuple[float, int]] = {}
    for a, b, score, _ in links:
        if is_strong(score) or score < PAIR_SCORE:
            continue
        for x, y in ((a, b), (b, a)):
            if x in attached or y in attached or size[core[x]] > 1 or size[core[y]] > 1 \
                    or x in homes or y in homes:
                continue
            if x not in best or (score, -y) > (best[x][0], -best[x][1]):
                best[x] = (score, y)
    for x, (_, y) in best.items():
        if x < y and best.get(y, (0.0, -1))[1] == x:
            uf.union(x, y)


def guarded_groups(nodes: Iterable[int],
                   links: Iterable[tuple[int, int, float, tuple[str, ...]]],
                   regions: Mapping[tuple[int, int], tuple[Box | None, Box | None]]
                   | None = None) -> list[list[int]]:
    """Clusters from (a, b, score, agreed) links, with the chaining guard
    above; ``regions`` (by pair, smaller id first) say where each link's
    evidence lies in its two images, where known."""
    links = list(links)
    homes = composites(links, regions) if regions and COMPOSITE_GUARD else {}
    hubs = _hub_links([(min(a, b), max(a, b)) for a, b, score, _ in links if is_strong(score)])
    if homes:
        hubs |= _away_from_home(links, regions or {}, homes)
    if hubs:
        links = [(a, b, min(score, WEAK_HUB_SCORE) if (min(a, b), max(a, b)) in hubs
                  else score, agreed) for a, b, score, agreed in links]
    uf = _UnionFind()
    for n in nodes:
        uf.find(n)
    best: dict[int, tuple[float, int]] = {}
    for a, b, score, _ in links:
        uf.find(a), uf.find(b)
        if is_strong(score):
            uf.union(a, b)
    size: dict[int, int] = {}
    for n in list(uf.parent):
        root = uf.find(n)
        size[root] = size.get(root, 0) + 1
    core = {n: uf.find(n) for n in list(uf.parent)}
    for a, b, score, _ in links:
        if is_strong(score) or score < ATTACH_SCORE:
            continue
        # a lone image's best weak link *into a core*, even where its best
        # of all is to another lone image (another screenshot of its photo):
        # on the fit half's simulated crawl, B-cubed recall 0.899 -> 0.910,
        # precision 0.9892 -> 0.9879 (docs/benchmarks.md)
        for x, y in ((a, b), (b, a)):
            if y in homes:
                continue  # a collage's cell: the lone image may show another of its pictures
            if size[core[x]] == 1 and size[core[y]] > 1 and \
                    (x not in best or (score, -y) > (best[x][0], -best[x][1])):
                best[x] = (score, y)
    for x, (_, y) in best.items():
        uf.union(x, y)
    if PAIR_SCORE is not None:
        _pair_lone(links, uf, size, core, best, homes)
    components: dict[int, list[int]] = {}
    for node in list(uf.parent):
        components.setdefault(uf.find(node), []).append(node)
    return sorted((sorted(c) for c in components.values()), key=lambda c: c[0])


def build_clusters(catalog: Catalog, *, min_sightings: int = 2, min_score: float = 0.5,
                   platforms: Iterable[str] | None = None,
                   cross_platform_only: bool = False, since: str | None = None,
                   until: str | None = None, ignored: set[int] | None = None) -> list[Cluster]:
    """Clusters with at least ``min_sightings`` sightings, best-ranked first.

    Ranking: seen on most platforms, then over the longest span, then most
    sightings. A cluster's id is the smallest image id in it, stable across
    runs as long as that image stays. ``since``/``until`` (ISO dates) keep
    the clusters seen at least once in that period, with all their sightings.
    """
    ignored = ignored if ignored is not None else catalog.ignored_image_ids()
    link_rows = []
    regions = {}
    for a, b, score, distances, agreed, transform, where in catalog.links_with_regions():
        if score >= min_score and a not in ignored and b not in ignored:
            link_rows.append((a, b, score, distances, agreed, transform))
            if where is not None:
                regions[(a, b)] = where
    linked = {a for a, *_ in link_rows} | {b for _, b, *_ in link_rows}
    seeds = (set(catalog.multi_sighting_image_ids(2)) | linked) - ignored
    components = guarded_groups(seeds, ((a, b, score, agreed)
                                        for a, b, score, _, agreed, _ in link_rows), regions)
    all_ids = [i for c in components for i in c]
    images = catalog.images(all_ids)
    sightings = catalog.sightings_of(all_ids)
    hits = catalog.watch.hits_of(all_ids)
    links_by_root: dict[int, list[dict]] = {}
    root_of = {i: c[0] for c in components for i in c}
    for a, b, score, distances, agreed, transform in link_rows:
        if root_of[a] != root_of[b]:
            continue  # a weak link the guard did not follow
        links_by_root.setdefault(root_of[a], []).append({
            "a": images[a]["sha256"], "b": images[b]["sha256"], "score": round(score, 4),
            "distances": distances, "agreed": list(agreed), "transform": transform})
    wanted = set(platforms or ())
    out = []
    for component in components:
        cluster_sightings = [s for image_id in component for s in sightings.get(image_id, [])]
        cluster_sightings.sort(key=lambda s: (s.seen_at or "", s.platform or "", s.url or "",
                                              s.sha256 or "", s.source or ""))
        cluster = Cluster(
            id=component[0], image_ids=tuple(component),
            images=tuple(images[i] for i in component),
            sightings=tuple(cluster_sightings),
            links=tuple(links_by_root.get(component[0], ())),
            watched=tuple({"image": images[i].get("sha256") or images[i].get("hash_key"), **h}
                          for i in component for h in hits.get(i, ())))
        if len(cluster.sightings) < min_sightings:
            continue
        if wanted and not wanted & set(cluster.platforms):
            continue
        if cross_platform_only and len(cluster.platforms) < 2:
            continue
        if (since or until) and not any(
                (not since or (s.seen_at or "") >= since)
                and (not until or (s.seen_at or "") <= until + "\uffff")
                for s in cluster.sightings):
            continue
        out.append(cluster)
    out.sort(key=Cluster.rank_key)
    return out
