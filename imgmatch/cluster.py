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
corroborates it: the core of its best weak link into a core. Two lone
images never pair up on a weak link (on the second benchmark set, such
pairs were icons of one series and signs of one template), weak links
never merge two cores, and an image attaches to one core at most. Images
marked with ``imgmatch ignore`` (and images matching an ignored hash) take
no part.
"""

from __future__ import annotations

from collections.abc import Iterable

from .catalog import Catalog
from .evidence import PRECISE
from .model import Cluster


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


def is_strong(score: float) -> bool:
    return score >= STRONG_SCORE


def guarded_groups(nodes: Iterable[int],
                   links: Iterable[tuple[int, int, float, tuple[str, ...]]]) -> list[list[int]]:
    """Clusters from (a, b, score, agreed) links, with the chaining guard above."""
    links = list(links)
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
        if is_strong(score):
            continue
        # a lone image's best weak link *into a core*, even where its best
        # of all is to another lone image (another screenshot of its photo):
        # on the fit half's simulated crawl, B-cubed recall 0.899 -> 0.910,
        # precision 0.9892 -> 0.9879 (docs/benchmarks.md)
        for x, y in ((a, b), (b, a)):
            if size[core[x]] == 1 and size[core[y]] > 1 and \
                    (x not in best or (score, -y) > (best[x][0], -best[x][1])):
                best[x] = (score, y)
    for x, (_, y) in best.items():
        uf.union(x, y)
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
    link_rows = [row for row in catalog.links()
                 if row[2] >= min_score and row[0] not in ignored and row[1] not in ignored]
    linked = {a for a, *_ in link_rows} | {b for _, b, *_ in link_rows}
    seeds = (set(catalog.multi_sighting_image_ids(2)) | linked) - ignored
    components = guarded_groups(seeds, ((a, b, score, agreed)
                                        for a, b, score, _, agreed, _ in link_rows))
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
