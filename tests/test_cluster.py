"""Clusters: connected components of the link graph, and the fixture collection's stories."""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import imgmatch
from imgmatch.cluster import HUB_PART, STRONG_SCORE, _hub_links, build_clusters, guarded_groups
from imgmatch.signals import ROBUST_SIGNALS
from imgmatch.sources import iter_manifest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MANIFEST = FIXTURES / "manifest.csv"


# ------------------------------------------------- strong links: components
def group(nodes, edges) -> list[list[int]]:
    """Clusters of strong links only: unless one image alone joins two groups
    of HUB_PART images or more (a hub: tests/test_cluster_guard.py), the
    chaining guard has nothing to refuse, so they are the connected
    components of the graph."""
    return guarded_groups(nodes, ((a, b, STRONG_SCORE, ()) for a, b in edges))


def reference_components(nodes, edges) -> list[list[int]]:
    """Connected components by breadth-first search, in group()'s order."""
    neighbours: dict[int, set[int]] = defaultdict(set)
    for n in nodes:
        neighbours[n]
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    seen: set[int] = set()
    out = []
    for start in sorted(neighbours):
        if start in seen:
            continue
        component, frontier = {start}, [start]
        while frontier:
            node = frontier.pop()
            for other in neighbours[node] - component:
                component.add(other)
                frontier.append(other)
        seen |= component
        out.append(sorted(component))
    return sorted(out, key=lambda c: c[0])


@pytest.mark.parametrize("nodes, edges, expected", [
    ([], [], []),
    ([5], [], [[5]]),
    ([3, 1, 2], [], [[1], [2], [3]]),
    ([1, 2, 3, 4], [(1, 2), (3, 4)], [[1, 2], [3, 4]]),
    ([1, 2, 3, 4], [(4, 3), (2, 3), (1, 2)], [[1, 2, 3, 4]]),      # a chain, any order
    ([10, 20, 30], [(30, 10)], [[10, 30], [20]]),
    ([1, 2, 3], [(1, 2), (2, 1), (1, 1)], [[1, 2], [3]]),           # repeats and a loop
    ([], [(7, 8), (9, 8)], [[7, 8, 9]]),                             # nodes from edges only
    ([6, 2], [(6, 5), (2, 4), (4, 5)], [[2, 4, 5, 6]]),             # merged through a path
])
def test_group_small_graphs(nodes, edges, expected):
    assert group(nodes, edges) == expected


def test_group_accepts_iterators():
    assert group(iter([1, 2, 3]), ((a, a + 1) for a in (1,))) == [[1, 2], [3]]


graphs = st.lists(st.integers(0, 40), max_size=30).flatmap(
    lambda nodes: st.tuples(
        st.just(nodes),
        st.lists(st.tuples(st.sampled_from(nodes), st.sampled_from(nodes)), max_size=40)
        if nodes else st.just([])))


@settings(max_examples=300, deadline=None, database=None)
@given(graphs)
def test_group_is_the_connected_components(graph):
    nodes, edges = graph
    components = group(nodes, edges)
    where = {}
    for index, component in enumerate(components):
        assert component == sorted(set(component))
        for node in component:
            assert node not in where, "components overlap"
            where[node] = index
    assert set(where) == set(nodes) | {n for e in edges for n in e}
    hubs = _hub_links(list({(min(a, b), max(a, b)) for a, b in edges if a != b}))
    for a, b in edges:
        assert where[a] == where[b] or (min(a, b), max(a, b)) in hubs
    assert [c[0] for c in components] == sorted(c[0] for c in components)
    # each cluster lies within one component; without hubs, they are the components
    reference = reference_components(nodes, edges)
    within = {n: k for k, c in enumerate(reference) for n in c}
    assert all(len({within[n] for n in c}) == 1 for c in components)
    assert not hubs and components == reference or hubs and len(components) > len(reference)


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=2 * HUB_PART, unique=True))
def test_group_of_a_path_is_one_component(nodes):
    # (a longer path has images that alone join two groups of HUB_PART: hubs)
    edges = list(zip(nodes, nodes[1:]))
    assert group(reversed(nodes), edges) == [sorted(nodes)]


# ------------------------------------------------------ the fixture collection
def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def original_name(rel_path: str) -> str:
    """reposts/NAME_platform_year.jpg -> NAME; originals/NAME.jpg, distractors/NAME.jpg -> NAME."""
    path = Path(rel_path)
    return path.stem.split("_")[0] if path.parent.name == "reposts" else path.stem


@pytest.fixture(scope="module")
def manifest_rows() -> list[dict[str, str]]:
    with MANIFEST.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def original_of(manifest_rows) -> dict[str, str]:
    """sha256 of every catalogued file -> the name of the photo it shows."""
    out: dict[str, str] = {}
    for row in manifest_rows:
        sha, name = sha256_of(FIXTURES / row["path"]), original_name(row["path"])
        assert out.setdefault(sha, name) == name
    return out


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    db = tmp_path_factory.mktemp("cluster") / "c.db"
    with imgmatch.Collection.open(db) as c:
        c.ingest(iter_manifest(MANIFEST), signals=ROBUST_SIGNALS)
    c = imgmatch.Collection.open(db, readonly=True)
    yield c
    c.close()


def test_astronaut_sightings_form_one_cluster(collection, original_of, manifest_rows):
    astronaut_urls = {r["url"] for r in manifest_rows if original_name(r["path"]) == "astronaut"}
    assert len(astronaut_urls) == 6
    clusters = collection.clusters(min_sightings=1)
    holding = [c for c in clusters if astronaut_urls & {s.url for s in c.sightings}]
    assert len(holding) == 1
    (cluster,) = holding
    assert {s.url for s in cluster.sightings} == astronaut_urls
    assert len(cluster.images) == 5
    assert cluster.platforms == ("backpage-clone", "citylist", "jobboard", "nightads")
    assert clusters[0] is cluster  # the most platforms ranks first


def test_no_cluster_mixes_two_photos(collection, original_of):
    clusters = collection.clusters(min_sightings=1)
    assert clusters
    for cluster in clusters:
        names = {original_of[img["sha256"]] for img in cluster.images}
        assert len(names) == 1, names
        assert {original_of[s.sha256] for s in cluster.sightings} == names


@pytest.mark.parametrize("name, n_sightings", [("cat", 3), ("temple", 3), ("coffee", 4)])
def test_reposted_photos_cluster_whole(collection, original_of, name, n_sightings):
    shas = {sha for sha, n in original_of.items() if n == name}
    (cluster,) = [c for c in collection.clusters() if shas & {i["sha256"] for i in c.images}]
    assert {i["sha256"] for i in cluster.images} == shas
    assert len(cluster.sightings) == n_sightings


def test_cluster_shape_and_ranking(collection):
    clusters = collection.clusters()
    assert len(clusters) >= 4
    keys = [c.rank_key() for c in clusters]
    assert keys == sorted(keys)
    for c in clusters:
        assert len(c.sightings) >= 2
        assert c.id == min(c.image_ids) == c.image_ids[0]
        assert list(c.image_ids) == sorted(c.image_ids)
        shas = {i["sha256"] for i in c.images}
        assert {s.sha256 for s in c.sightings} <= shas
        for link in c.links:
            assert {link["a"], link["b"]} <= shas
            assert link["score"] >= 0.5 and link["agreed"]
        when = [s.posted_at or "" for s in c.sightings]
        assert when == sorted(when)
        assert c.first_seen == when[0] and c.last_seen == when[-1]
        assert c.ads == len(c.sightings)  # every fixture sighting is its own ad
        order = [p for p, _ in c.platform_order]
        assert sorted(order) == list(c.platforms)


def test_cluster_filters(collection):
    every = collection.clusters()
    assert [c.id for c in collection.clusters(platforms=["jobboard"])] == \
        [c.id for c in every if "jobboard" in c.platforms]
    assert collection.clusters(platforms=["no-such-site"]) == []
    assert all(len(c.platforms) >= 2 for c in collection.clusters(cross_platform_only=True))
    assert [len(c.sightings) for c in collection.clusters(min_sightings=6)] == [6]


def test_same_bytes_seen_twice_is_a_cluster_without_links(collection, original_of):
    clusters = build_clusters(collection.catalog, min_score=1.01)  # ignore every link
    assert sorted(original_of[c.images[0]["sha256"]] for c in clusters) == ["astronaut",
                                                                            "coffee"]
    for c in clusters:
        assert len(c.images) == 1 and len(c.sightings) == 2 and c.links == ()


def test_cluster_json_shape(collection):
    data = collection.clusters()[0].to_json()
    assert data["n_sightings"] == len(data["sightings"]) == 6
    assert data["n_images"] == len(data["images"]) == 5
    assert data["platform_order"][0] == {"platform": "backpage-clone",
                                         "first_seen": "2023-02-11T22:41:00Z"}
    assert all("id" not in s for s in data["sightings"])
