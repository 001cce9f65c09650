"""Clusters that must not chain, ignored images, filters, show, thumbnails."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

import imgmatch
from imgmatch.cli import main
from imgmatch import cluster
from imgmatch.cluster import HUB_PART, STRONG_SCORE, guarded_groups
from imgmatch.signals import ROBUST_SIGNALS
from imgmatch.sources import iter_manifest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
STRONG = (STRONG_SCORE, ("pdq", "phash"))
WEAK = (0.7, ("dhash",))


def links(*edges):
    return [(a, b, *kind) for a, b, kind in edges]


def test_strong_links_are_connected_components():
    groups = guarded_groups(range(1, 6), links((1, 2, STRONG), (2, 3, STRONG), (4, 5, STRONG)))
    assert groups == [[1, 2, 3], [4, 5]]


def test_a_weak_link_never_merges_two_clusters():
    # 1-2 and 3-4 are clusters; 5 (a collage, a logo) links weakly to both
    groups = guarded_groups(range(1, 6), links(
        (1, 2, STRONG), (3, 4, STRONG), (2, 3, WEAK), (5, 1, WEAK), (5, 4, (0.8, ("dhash",)))))
    assert groups == [[1, 2], [3, 4, 5]]  # 5 joins its best link's cluster only


def test_lone_images_do_not_pair_on_a_weak_link():
    # 1 is a collage of 2 and 3, or an icon of their series: weak links to both,
    # and no cluster to corroborate either
    groups = guarded_groups([1, 2, 3], links((1, 2, (0.7, ("dhash",))),
                                             (1, 3, (0.6, ("dhash",)))))
    assert groups == [[1], [2], [3]]


def test_two_lone_images_pair_only_on_each_others_best_link():
    # 1 and 2 (a screenshot and a repost of a photo never collected) have
    # only each other; 3 links to 2 less well, and stays alone
    pair = (cluster.PAIR_SCORE, ("orb",))
    weaker = (cluster.PAIR_SCORE, ("orb",))
    assert guarded_groups([1, 2, 3], links((1, 2, (0.9, ("orb",))), (2, 3, weaker))) \
        == [[1, 2], [3]]
    assert guarded_groups([1, 2], links((1, 2, pair))) == [[1, 2]]
    under = (cluster.PAIR_SCORE - 0.01, ("orb",))
    assert guarded_groups([1, 2], links((1, 2, under))) == [[1], [2]]


def test_a_lone_image_attaches_through_its_best_link_into_a_cluster():
    # 3 (a screenshot) links best to 4, another lone screenshot of the photo,
    # and more weakly to the photo's cluster 1-2: it joins that cluster, and
    # 4, whose only link is to a lone image, stays alone
    groups = guarded_groups(range(1, 5), links((1, 2, STRONG), (3, 4, (0.9, ("orb",))),
                                               (3, 1, (0.7, ("orb",)))))
    assert groups == [[1, 2, 3], [4]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11),
                          st.sampled_from([STRONG_SCORE, 0.99, 0.97, 0.8, 0.6, 0.5])),
                max_size=30))
def test_weak_links_only_attach_lone_images_to_one_cluster(edges) -> None:
    """Whatever the links, each cluster is one component of the strong links
    with lone images that have a weak link into it, or two lone images
    paired on a link of :data:`imgmatch.cluster.PAIR_SCORE` or more: weak
    links never join two strong components, nor more than two lone images."""
    edges = [(a, b, score) for a, b, score in edges if a != b]
    # a hub's strong links into the groups it does not keep count as weak
    hubs = cluster._hub_links([(min(a, b), max(a, b)) for a, b, score in edges
                               if score >= STRONG_SCORE])
    edges = [(a, b, cluster.WEAK_HUB_SCORE if (min(a, b), max(a, b)) in hubs else score)
             for a, b, score in edges]
    groups = guarded_groups(range(12), [(a, b, score, ("orb",)) for a, b, score in edges])
    strong = guarded_groups(range(12), [(a, b, score, ("orb",)) for a, b, score in edges
                                        if score >= STRONG_SCORE])
    core_of = {n: tuple(g) for g in strong for n in g}
    assert sorted(n for g in groups for n in g) == list(range(12))
    for group in groups:
        cores = {core_of[n] for n in group if len(core_of[n]) > 1}
        assert len(cores) <= 1
        if not cores:
            assert len(group) == 1 or len(group) == 2 and any(
                set(group) == {a, b} and score >= cluster.PAIR_SCORE for a, b, score in edges)
            continue
        core = set(cores.pop())
        assert core <= set(group)
        for n in set(group) - core:
            assert len(core_of[n]) == 1 and any(
                {a, b} & core and n in (a, b) for a, b, score in edges if score < STRONG_SCORE)


def _clique(*nodes):
    return [(a, b, STRONG) for i, a in enumerate(nodes) for b in nodes[i + 1:]]


def test_a_collage_of_two_photos_does_not_join_their_clusters():
    # 1-3 and 4-7 are copies of two photos; 8, a collage whose two cells
    # each cover half of it, matches both strongly
    edges = _clique(1, 2, 3) + _clique(4, 5, 6, 7) + [(8, 1, STRONG), (8, 2, STRONG),
                                                       (8, 4, STRONG), (8, 5, STRONG)]
    assert guarded_groups(range(1, 9), links(*edges)) == [[1, 2, 3], [4, 5, 6, 7, 8]]


def test_an_image_matched_strongly_to_many_groups_joins_one():
    # a logo or a stock background strongly matched to many pictures' copies
    edges = [(0, 1, STRONG), (0, 2, STRONG)]
    for first in range(1, 300, 3):
        edges += _clique(first, first + 1, first + 2)
    edges += [(0, 4, STRONG), (0, 5, STRONG), (0, 7, STRONG)]
    groups = guarded_groups(range(301), links(*edges))
    assert [0, 1, 2, 3] in groups and len(groups) == 100


def test_a_hub_spares_small_groups_and_groups_joined_twice():
    # a reference between two pairs of its own copies (mirrors, crops) that
    # do not match each other: parts under HUB_PART
    pairs = _clique(1, 2) + _clique(3, 4) + [(5, 1, STRONG), (5, 3, STRONG)]
    assert guarded_groups(range(1, 6), links(*pairs)) == [[1, 2, 3, 4, 5]]
    # two groups joined by two images, not one: no image is the only join
    twice = _clique(1, 2, 3) + _clique(4, 5, 6) + [(7, 1, STRONG), (7, 4, STRONG),
                                                   (8, 2, STRONG), (8, 5, STRONG)]
    assert guarded_groups(range(1, 9), links(*twice)) == [list(range(1, 9))]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), max_size=25))
def test_hubs_are_the_images_that_alone_join_groups(edges) -> None:
    """The separators found without recursion are those a brute force finds:
    removing the image leaves two or more parts of HUB_PART images or more."""
    edges = {(min(a, b), max(a, b)) for a, b in edges if a != b}
    adjacent: dict[int, set[int]] = {}
    for a, b in edges:
        adjacent.setdefault(a, set()).add(b)
        adjacent.setdefault(b, set()).add(a)

    def parts_without(v):
        seen, sizes = {v}, []
        for start in adjacent[v]:
            if start in seen:
                continue
            todo, size = [start], 0
            seen.add(start)
            while todo:
                size += 1
                for y in adjacent[todo.pop()]:
                    if y not in seen:
                        seen.add(y)
                        todo.append(y)
            sizes.append(size)
        return sizes

    brute = sorted(v for v in adjacent if sum(s >= HUB_PART for s in parts_without(v)) >= 2)
    order, hubs = cluster._separators(adjacent)
    assert sorted(hubs) == brute
    for v, parts in hubs.items():  # the parts are those the brute force finds
        assert sorted(n for _, _, n in parts) == sorted(parts_without(v))


def test_one_strong_signal_is_enough():
    groups = guarded_groups([1, 2, 3], links((1, 2, (STRONG_SCORE, ("pdq",))),
                                             (2, 3, (0.7, ("pdq",)))))
    assert groups == [[1, 2, 3]]  # 3 is alone, so its weak link attaches it to 1-2


def test_a_lead_under_the_attach_score_attaches_nothing():
    # a link of 0.5 to 0.65 stays a lead between two images: on the fit
    # half's crawl such links attached screenshots of one app and icons of
    # one series to each other's clusters
    lead = (cluster.ATTACH_SCORE - 0.01, ("orb",))
    assert guarded_groups([1, 2, 3], links((1, 2, STRONG), (2, 3, lead))) == [[1, 2], [3]]
    attach = (cluster.ATTACH_SCORE, ("orb",))
    assert guarded_groups([1, 2, 3], links((1, 2, STRONG), (2, 3, attach))) == [[1, 2, 3]]


def _jpeg(img: Image.Image, path: Path, size: tuple[int, int] | None = None) -> None:
    if size:
        img = img.resize(size, Image.Resampling.LANCZOS)
    img.convert("RGB").save(path, quality=85)


def _logo(img: Image.Image) -> Image.Image:
    img = img.convert("RGB").copy()
    draw = ImageDraw.Draw(img)
    w, h = img.size
    draw.rectangle((0, int(h * 0.55), w, h), fill=(250, 30, 120))
    draw.ellipse((w * 0.3, h * 0.6, w * 0.7, h * 0.95), fill=(255, 255, 255))
    return img


def test_collage_and_shared_logo_do_not_merge_pictures(tmp_path):
    cat = Image.open(FIXTURES / "originals" / "cat.jpg").convert("RGB")
    temple = Image.open(FIXTURES / "originals" / "temple.jpg").convert("RGB")
    rows = ["path,platform,url"]
    made = {}

    def add(name, img, platform, size=None):
        _jpeg(img, tmp_path / name, size)
        made[name] = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        rows.append(f"{name},{platform},https://{platform}.example/{name}")

    add("cat.jpg", cat, "a")
    add("cat_small.jpg", cat, "b", (cat.width // 2, cat.height // 2))
    add("temple.jpg", temple, "a")
    add("temple_small.jpg", temple, "c", (temple.width * 2 // 3, temple.height * 2 // 3))
    collage = Image.new("RGB", (cat.width + temple.width, max(cat.height, temple.height)))
    collage.paste(cat, (0, 0))
    collage.paste(temple, (cat.width, 0))
    add("collage.jpg", collage, "d")
    add("cat_logo.jpg", _logo(cat), "e")
    add("temple_logo.jpg", _logo(temple), "e")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.ingest(iter_manifest(tmp_path / "m.csv"))
        clusters = c.clusters(min_sightings=1)
    owner = {}
    for cluster in clusters:
        for img in cluster.images:
            owner[img["sha256"]] = cluster.id
    assert owner[made["cat.jpg"]] == owner[made["cat_small.jpg"]]
    assert owner[made["temple.jpg"]] == owner[made["temple_small.jpg"]]
    assert owner[made["cat.jpg"]] != owner[made["temple.jpg"]]
    # however the ambiguous images attach, no cluster holds both pictures
    cat_side = {made["cat.jpg"], made["cat_small.jpg"]}
    temple_side = {made["temple.jpg"], made["temple_small.jpg"]}
    for cluster in clusters:
        shas = {img["sha256"] for img in cluster.images}
        assert not (shas & cat_side and shas & temple_side)


def test_ignored_images_and_hashes_leave_the_report(tmp_path, capsys):
    db = tmp_path / "c.db"
    assert main(["--db", str(db), "ingest", "--quiet", "--robust", "--manifest",
                 str(FIXTURES / "manifest.csv")]) == 0
    capsys.readouterr()
    astronaut = hashlib.sha256((FIXTURES / "originals" / "astronaut.jpg").read_bytes()).hexdigest()

    def report_shas() -> set[str]:
        assert main(["--db", str(db), "report", "--format", "json"]) == 0
        data = json.loads(capsys.readouterr().out)
        return {img["sha256"] for c in data["clusters"] for img in c["images"]}

    assert astronaut in report_shas()
    assert main(["--db", str(db), "ignore", astronaut, "--reason", "stock photo"]) == 0
    assert astronaut not in report_shas()
    assert main(["--db", str(db), "ignore", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "stock photo" in listing
    entry = int(listing.split()[0])
    assert main(["--db", str(db), "ignore", "--remove", str(entry)]) == 0
    assert astronaut in report_shas()
    # a hash: every image within PDQ's threshold of it leaves the report
    with imgmatch.Collection.open(db, readonly=True) as c:
        cat = c.image(hashlib.sha256(
            (FIXTURES / "reposts" / "cat_citylist_2023.jpg").read_bytes()).hexdigest())
    assert main(["--db", str(db), "ignore", "--pdq", cat.signals["pdq"].hex]) == 0
    assert cat.sha256 not in report_shas()


def test_show_filters_fields_and_thumbnails(tmp_path, capsys):
    db = tmp_path / "c.db"
    assert main(["--db", str(db), "ingest", "--quiet", "--robust", "--thumbnails", "--manifest",
                 str(FIXTURES / "manifest.csv")]) == 0
    capsys.readouterr()
    astronaut = hashlib.sha256((FIXTURES / "originals" / "astronaut.jpg").read_bytes()).hexdigest()
    assert main(["--db", str(db), "show", astronaut]) == 0
    out = capsys.readouterr().out
    assert "backpage-clone" in out and "links (" in out
    assert main(["--db", str(db), "show", "--cluster", "1", "--json"]) == 0
    cluster = json.loads(capsys.readouterr().out)
    assert cluster["id"] == 1 and len(cluster["platforms"]) == 4
    assert main(["--db", str(db), "show", "--cluster", "9999"]) == 3
    capsys.readouterr()
    assert main(["--db", str(db), "report", "--fields", "phone,city"]) == 0
    table = capsys.readouterr().out
    assert "phone: 555-0142, 555-0178, 555-0193" in table
    assert main(["--db", str(db), "report", "--format", "json", "--since", "2025-04-01"]) == 0
    late = json.loads(capsys.readouterr().out)
    assert late["n_clusters"] >= 1
    assert all(any(s["posted_at"] >= "2025-04-01" for s in c["sightings"])
               for c in late["clusters"])
    assert main(["--db", str(db), "report", "--format", "json", "--until", "2023-01-01"]) == 0
    assert json.loads(capsys.readouterr().out)["n_clusters"] == 0
    assert main(["--db", str(db), "report", "--since", "not a date"]) == 2
    with imgmatch.Collection.open(db, readonly=True) as c:
        thumbs = c.thumbnails([astronaut])
    thumb = Image.open(io.BytesIO(thumbs[astronaut]))
    assert thumb.format == "JPEG" and max(thumb.size) <= 160
    # stored thumbnails reach an HTML report only when it asks for them
    stored = base64.b64encode(thumbs[astronaut]).decode()
    plain, pictures = tmp_path / "plain.html", tmp_path / "pictures.html"
    assert main(["--db", str(db), "report", "--format", "html", "-o", str(plain)]) == 0
    assert main(["--db", str(db), "report", "--format", "html", "--thumbnails",
                 "-o", str(pictures)]) == 0
    assert stored not in plain.read_text()
    assert stored in pictures.read_text()


def test_no_thumbnails_unless_asked(tmp_path):
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.ingest(iter_manifest(FIXTURES / "manifest.csv"), signals=ROBUST_SIGNALS)
        assert c.thumbnails(img["sha256"] for cl in c.clusters() for img in cl.images) == {}
