"""--all-frames: every frame of an animated file is an image of its own, seen
where the file was; without it the first frame stands for the file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

import imgmatch
from imgmatch import analysis
from imgmatch.analysis import Options, analyse, frame_digest
from imgmatch.cli import main
from imgmatch.decode import decode, decode_frames

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PHOTOS = ["cat", "temple", "rocket", "coffee"]


def animation(names=PHOTOS, fmt="GIF") -> bytes:
    """An ad's slideshow: real photos as the frames of one animated file."""
    frames = [Image.open(FIXTURES / "originals" / f"{n}.jpg").convert("RGB").resize((320, 240))
              for n in names]
    out = io.BytesIO()
    frames[0].save(out, fmt, save_all=True, append_images=frames[1:], duration=500, loop=0)
    return out.getvalue()


@pytest.fixture(scope="module")
def slideshow() -> bytes:
    return animation()


def test_frames_in_one_pass_equal_frames_decoded_one_by_one(slideshow):
    pdq = imgmatch.signals.get("pdq")
    one_pass = list(decode_frames(slideshow))
    assert [k for k, _ in one_pass] == [1, 2, 3]
    for k, decoded in one_pass:
        assert pdq.compute(decoded) == pdq.compute(decode(slideshow, frame=k))


def test_each_frame_is_analysed_under_its_own_identity(slideshow):
    plain = analyse(slideshow, ["pdq", "phash"])
    assert plain.frames == ()
    result = analyse(slideshow, ["pdq", "phash"], options=Options(all_frames=True))
    assert result.image.frames == 4 and [k for k, _ in result.frames] == [1, 2, 3]
    digests = {result.sha256} | {f.sha256 for _, f in result.frames}
    assert len(digests) == 4
    assert [f.sha256 for _, f in result.frames] == [frame_digest(result.sha256, k)
                                                   for k in (1, 2, 3)]
    pdq = {k: f.image.signals[0].value for k, f in result.frames}
    assert len(set(pdq.values()) | {result.image.signals[0].value}) == 4


def test_frames_are_capped(slideshow, monkeypatch):
    monkeypatch.setattr(analysis, "MAX_FRAMES", 2)
    result = analyse(slideshow, ["pdq"], options=Options(all_frames=True))
    assert [k for k, _ in result.frames] == [1]


@pytest.mark.parametrize("workers", [0, 1])
def test_ingest_all_frames_finds_each_photo_of_a_slideshow(tmp_path, slideshow, workers, capsys):
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    (crawl / "ad-77.gif").write_bytes(slideshow)
    db = tmp_path / "c.db"
    args = ["--db", str(db), "ingest", str(crawl), "--platform", "nightads", "--workers",
            str(workers), "--json", "--all-frames"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["files_seen"], summary["images_added"], summary["sightings_added"]) == (1, 4, 4)
    assert main(args) == 0  # again: the file is known, nothing is added twice
    again = json.loads(capsys.readouterr().out)
    assert (again["images_added"], again["sightings_added"]) == (0, 0)
    with imgmatch.Collection.open(db) as c:
        for k, name in enumerate(PHOTOS):
            # a repost of the third photo finds the slideshow's third frame
            matches = c.query(FIXTURES / "originals" / f"{name}.jpg")
            (seen,) = matches[0].sightings
            assert seen.platform == "nightads" and seen.source.endswith("ad-77.gif")
            assert seen.extra.get("frame", 0) == k


def test_without_all_frames_the_first_frame_stands_for_the_file(tmp_path, slideshow):
    (tmp_path / "ad.gif").write_bytes(slideshow)
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        summary = c.add_many([(tmp_path / "ad.gif", None)])
        assert summary.images_added == 1
        assert c.query(FIXTURES / "originals" / "cat.jpg")
        assert not [m for m in c.query(FIXTURES / "originals" / "temple.jpg") if m.score >= 0.5]


def test_a_broken_frame_is_recorded_and_the_rest_kept(tmp_path, slideshow):
    cut = slideshow[: int(len(slideshow) * 0.8)]  # the last frames are cut off
    (tmp_path / "cut.gif").write_bytes(cut)
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        summary = c.ingest(imgmatch.sources.iter_paths([tmp_path]), all_frames=True)
    assert summary.images_added >= 1
    assert summary.failures and all("#frame=" in source for source, _, _ in summary.failures)
