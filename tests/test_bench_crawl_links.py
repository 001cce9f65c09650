"""Why a simulated crawl's images have no right link: the causes named.

``scripts/bench crawl-links --why`` compares each image left without a link
to another image of its picture with every other image of that picture, as
``imgmatch explain`` does, and names where the link was lost. A pair that
scores a link was lost to the ingest's candidates; one that scores under
the match score was lost to the scoring.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from imgmatch import Collection, Sighting

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
sys.path.insert(0, str(ROOT / "scripts"))

import bench_crawl_links  # noqa: E402


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_images_without_a_right_link_are_told_apart_by_where_the_link_was_lost(
        tmp_path: Path) -> None:
    photo = FIXTURES / "originals" / "astronaut.jpg"
    repost = FIXTURES / "reposts" / "astronaut_citylist_2023.jpg"
    other = FIXTURES / "originals" / "coffee.jpg"
    with Collection.open(tmp_path / "case.db") as collection:
        collection.add_many(((p, Sighting(source=str(p))) for p in (photo, repost, other)),
                            link=False)  # no link made: as if ingest never put one forward
    # the truth says the coffee photo is the astronaut's picture: a link it cannot score
    truth = {_sha(photo): "picture:a", _sha(repost): "picture:a", _sha(other): "picture:a"}
    causes = bench_crawl_links.why_unlinked(tmp_path, truth, [_sha(repost), _sha(other)],
                                           {"picture:a": "photo"})
    assert causes[("scores a link: not put forward at ingest", "photo")] == 1
    assert sum(n for (cause, _), n in causes.items()
               if cause.startswith("under the match score")) == 1


def test_no_pair_to_compare_is_its_own_cause() -> None:
    assert bench_crawl_links.cause(None, 0.5) == "no pair to compare"


def test_a_setting_reaches_the_crawl_s_cli_and_a_bad_one_is_named(tmp_path: Path) -> None:
    changed = bench_crawl_links.settings(["match.LINK_VERIFY=8", "evidence.PDQ_APART=None"])
    exe = bench_crawl_links.wrapped_cli(tmp_path, changed)
    # the wrapper's lines before it hands over to the CLI, then what they set
    header = exe.read_text().split("from imgmatch.cli import main")[0]
    out = subprocess.run([sys.executable, "-c",
                          header + "print(match.LINK_VERIFY, evidence.PDQ_APART)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["8", "None"]
    # and the wrapper runs the CLI
    assert subprocess.run([str(exe), "--help"], capture_output=True).returncode == 0
    assert bench_crawl_links.wrapped_cli(tmp_path / "none", {}).name == "imgmatch"
    for bad in ("match.NO_SUCH=1", "os.sep=1", "match.LINK_VERIFY=eight"):
        with pytest.raises(ValueError, match="--set"):
            bench_crawl_links.settings([bad])


def test_recluster_settings_are_checked_before_the_crawl() -> None:
    assert bench_crawl_links.recluster_settings(["ATTACH_SCORE=0.5,0.65", "HUB_PART=2"]) == [
        ("ATTACH_SCORE", ["0.5", "0.65"]), ("HUB_PART", ["2"])]
    for bad in ("NO_SUCH=1", "ATTACH_SCORE=", "ATTACH_SCORE=0.5,high"):
        with pytest.raises(ValueError, match="--recluster"):
            bench_crawl_links.recluster_settings([bad])


def test_links_are_counted_by_the_band_clusters_put_them_in() -> None:
    from imgmatch import cluster, match

    sha = {1: "a", 2: "b", 3: "c", 4: "d"}
    truth = {"a": "picture:1", "b": "picture:1", "c": "picture:2", "d": ""}
    kind = {"a": "reference", "b": "jpeg", "c": "collage", "d": "reference"}
    links = [(1, 2, 1.0), (1, 3, match.PARTIAL_LINK_CAP), (2, 3, cluster.ATTACH_SCORE),
             (1, 4, match.MATCH_SCORE), (2, 4, cluster.STRONG_SCORE)]
    bands = bench_crawl_links.link_bands(links, sha, truth, kind)
    strong, partial, attach, lead = (bands[name] for name in bench_crawl_links.BANDS)
    assert (strong["right"], strong["wrong"]) == (1, 1)
    assert partial == {"wrong": 1, "wrong, a collage or screenshot": 1}
    assert attach == {"wrong": 1, "wrong, a collage or screenshot": 1}
    assert lead == {"wrong": 1}  # an image of no picture seen twice links wrongly


def test_fixed_batches_end_by_size_alone_in_one_process(tmp_path: Path) -> None:
    changed: dict[tuple[str, str], object] = {}
    args = bench_crawl_links.fixed_batches(64, changed)
    assert args == ["--workers=0", "--batch-size=64"]
    exe = bench_crawl_links.wrapped_cli(tmp_path, changed)
    header = exe.read_text().split("from imgmatch.cli import main")[0]
    out = subprocess.run([sys.executable, "-c", header + "print(ingest.FLUSH_SECONDS)"],
                         capture_output=True, text=True, check=True)
    # older than a batch could ever be, written as a literal the wrapper can hold
    assert float(out.stdout) >= 1e9
