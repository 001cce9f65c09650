"""The library API: the public names, add/query/image round trips, and silence."""

from __future__ import annotations

import __future__

import dataclasses
import hashlib
import inspect
import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

import imgmatch
from imgmatch import errors
from imgmatch import signals as registry
from imgmatch.model import Added, ImageRecord

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ASTRONAUT = FIXTURES / "originals" / "astronaut.jpg"
CAT = FIXTURES / "originals" / "cat.jpg"


@pytest.fixture(scope="module")
def astronaut_bytes() -> bytes:
    return ASTRONAUT.read_bytes()


def mirrored_jpeg(data: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
        out, format="JPEG", quality=85)
    return out.getvalue()


# ---------------------------------------------------------------- public names
def test_all_names_exist_and_are_unique():
    assert len(imgmatch.__all__) == len(set(imgmatch.__all__))
    for name in imgmatch.__all__:
        assert getattr(imgmatch, name) is not None, name


def test_all_is_exactly_what_the_package_defines():
    for name in imgmatch.__all__:  # names other than the exceptions load on first use
        getattr(imgmatch, name)
    defined = {name for name, value in vars(imgmatch).items()
               if not name.startswith("_") and not inspect.ismodule(value)
               and not isinstance(value, __future__._Feature)}
    assert set(imgmatch.__all__) == defined


def test_core_public_names():
    assert {"Collection", "Sighting", "Match", "Cluster", "HashValue", "ImgmatchError",
            "IngestSummary", "hash_bytes"} <= set(imgmatch.__all__)
    assert isinstance(imgmatch.__version__, str) and imgmatch.__version__


def test_every_error_is_exported_and_an_imgmatch_error():
    assert set(errors.__all__) <= set(imgmatch.__all__)
    for name in errors.__all__:
        cls = getattr(imgmatch, name)
        assert cls is getattr(errors, name)
        assert issubclass(cls, imgmatch.ImgmatchError)
    for name in ("EmptyFile", "UnsupportedFormat", "DecodeError", "ImageTooLarge",
                 "ImageTooSmall", "UnsafePath", "MissingFile"):
        cls = getattr(imgmatch, name)
        assert issubclass(cls, imgmatch.InputError)
        assert cls.reason != imgmatch.InputError.reason
    reasons = [getattr(imgmatch, n).reason for n in errors.__all__
               if issubclass(getattr(imgmatch, n), imgmatch.InputError)]
    assert len(reasons) == len(set(reasons))


def test_input_error_carries_reason_detail_and_source():
    exc = imgmatch.DecodeError("cannot decode", source="a.jpg")
    assert (exc.reason, exc.detail, exc.source) == ("decode-error", "cannot decode", "a.jpg")
    assert str(exc) == "a.jpg: cannot decode"


# ------------------------------------------------------------------ round trips
def test_add_bytes_then_query_bytes(tmp_path, astronaut_bytes):
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        added = c.add(astronaut_bytes, imgmatch.Sighting(platform="x", url="u"))
        assert isinstance(added, Added)
        assert (added.sha256, added.new_image, added.new_sighting) == \
            (hashlib.sha256(astronaut_bytes).hexdigest(), True, True)
        assert c.catalog.failures() == []
        matches = c.query(astronaut_bytes)
    (match,) = matches
    assert isinstance(match, imgmatch.Match)
    assert match.sha256 == hashlib.sha256(astronaut_bytes).hexdigest()
    assert match.score > 0.99  # every signal at distance 0: near-certain
    assert set(match.distances.values()) == {0}
    assert not match.low_information
    (sighting,) = match.sightings
    assert isinstance(sighting, imgmatch.Sighting)
    assert (sighting.platform, sighting.url) == ("x", "u")


def test_query_finds_a_mirrored_copy(tmp_path, astronaut_bytes):
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.add(astronaut_bytes, imgmatch.Sighting(platform="x"))
        c.add(CAT)
        (match,) = c.query(mirrored_jpeg(astronaut_bytes))
    assert match.sha256 == hashlib.sha256(astronaut_bytes).hexdigest()
    assert match.score >= 0.5
    assert match.transform == "mirror"
    assert "pdq" in match.agreed


def test_add_path_records_its_source(tmp_path):
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.add(CAT)
        c.add(str(CAT), imgmatch.Sighting(platform="citylist", url="https://c.example/1",
                                          source="crawl/cat.jpg"))
        info = c.image(hashlib.sha256(CAT.read_bytes()).hexdigest())
    sightings = sorted(info.sightings, key=lambda s: s.source)
    assert [s.source for s in sightings] == [str(CAT), "crawl/cat.jpg"]
    assert [s.platform for s in sightings] == [None, "citylist"]


def test_image_returns_metadata_signals_and_sightings(tmp_path, astronaut_bytes):
    sha = hashlib.sha256(astronaut_bytes).hexdigest()
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.add_many([(astronaut_bytes, imgmatch.Sighting(platform="a", posted_at="2024-01-02T00:00:00Z")),
                    (astronaut_bytes, imgmatch.Sighting(platform="b", posted_at="2023-01-02T00:00:00Z"))])
        info = c.image(sha)
        assert c.image(sha.upper()).sha256 == sha
    assert isinstance(info, ImageRecord)
    assert info.sha256 == sha
    assert (info.width, info.height, info.format) == (512, 512, "JPEG")
    assert info.size_bytes == len(astronaut_bytes)
    assert [s.platform for s in info.sightings] == ["b", "a"]  # oldest first
    assert set(info.signals) == {"pdq", "phash", "dhash"}
    assert len(info.signals["pdq"].hex) == 64
    expected = imgmatch.hash_bytes(astronaut_bytes)["signals"]
    assert {k: v.hex for k, v in info.signals.items()} == \
        {k: v["hex"] for k, v in expected.items()}


def test_unknown_sha256_raises(tmp_path, astronaut_bytes):
    unknown = "ab" * 32
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.add(astronaut_bytes)
        with pytest.raises(imgmatch.ImgmatchError, match=unknown):
            c.image(unknown)


def test_query_of_an_empty_collection(tmp_path, astronaut_bytes):
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        assert c.query(astronaut_bytes) == []
        assert c.clusters() == []


def test_query_of_bad_bytes_raises_an_input_error(tmp_path, astronaut_bytes):
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.add(astronaut_bytes)
        with pytest.raises(imgmatch.UnsupportedFormat):
            c.query(b"definitely not an image")
        with pytest.raises(imgmatch.EmptyFile):
            c.query(b"")


def test_add_bad_bytes_raises_and_records_nothing(tmp_path):
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        with pytest.raises(imgmatch.UnsupportedFormat) as caught:
            c.add(b"\x00" * 100, imgmatch.Sighting(source="upload-1"))
        assert (caught.value.reason, caught.value.source) == ("unsupported-format", "upload-1")
        assert c.catalog.failures() == []
        assert (c.catalog.counts()["images"], c.catalog.counts()["sightings"]) == (0, 0)


def test_add_many_bad_bytes_is_a_recorded_failure(tmp_path):
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        summary = c.add_many([(b"\x00" * 100, imgmatch.Sighting(source="upload-1"))])
        assert summary.images_added == 0
        assert [(s, r) for s, r, _ in summary.failures] == [("upload-1", "unsupported-format")]
        assert [f["source"] for f in c.catalog.failures()] == ["upload-1"]


def test_query_hash_with_a_computed_value(tmp_path, astronaut_bytes):
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.add(astronaut_bytes)
        info = imgmatch.hash_bytes(astronaut_bytes)["signals"]["pdq"]
        pdq = registry.get("pdq")
        value = pdq.from_bytes(bytes.fromhex(info["hex"]), info["quality"])
        (match,) = c.query_hash(value)
    assert match.score > 0.99
    assert match.distances == {"pdq": 0}


def test_hash_bytes(astronaut_bytes):
    result = imgmatch.hash_bytes(astronaut_bytes, ["pdq", "phash"])
    assert result["sha256"] == hashlib.sha256(astronaut_bytes).hexdigest()
    assert set(result["signals"]) == {"pdq", "phash"}
    bad = imgmatch.hash_bytes(b"GIF89a-broken")
    assert bad["error"]["reason"] in ("decode-error", "unsupported-format")
    assert "signals" not in bad


def test_hash_value_arithmetic():
    a = imgmatch.HashValue("phash", bytes.fromhex("ff00000000000000"))
    b = imgmatch.HashValue("phash", bytes.fromhex("0f00000000000001"))
    assert a - b == b - a == 5
    assert a - a == 0
    assert str(a) == a.hex == "ff00000000000000"
    assert a.bits == 64
    with pytest.raises(imgmatch.SignalError):
        a - imgmatch.HashValue("dhash", bytes(8))


def test_match_and_cluster_json(tmp_path, astronaut_bytes):
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.add_many([(astronaut_bytes, imgmatch.Sighting(platform="x", url="u1")),
                    (mirrored_jpeg(astronaut_bytes), imgmatch.Sighting(platform="y", url="u2"))])
        (match, other) = c.query(astronaut_bytes)
        (cluster,) = c.clusters()
    data = match.to_json()
    assert data["sha256"] == match.sha256 and data["score"] > 0.99
    assert data["sightings"] == [dataclasses.asdict(s) for s in match.sightings]
    assert isinstance(cluster, imgmatch.Cluster)
    assert cluster.platforms == ("x", "y")
    assert len(cluster.links) == 1 and cluster.links[0]["transform"] == "mirror"


def test_stale_index_files_catch_up_with_the_catalog(tmp_path, astronaut_bytes):
    db = tmp_path / "c.db"
    index_dir = Path(str(db) + ".indexes")
    with imgmatch.Collection.open(db) as c:
        c.add(astronaut_bytes)
    shutil.copytree(index_dir, tmp_path / "old-indexes")
    with imgmatch.Collection.open(db) as c:
        c.add(CAT)
    shutil.rmtree(index_dir)
    shutil.copytree(tmp_path / "old-indexes", index_dir)  # an index one image behind
    with imgmatch.Collection.open(db, readonly=True) as c:
        (match,) = c.query(CAT)
        assert match.sha256 == hashlib.sha256(CAT.read_bytes()).hexdigest()
        assert match.score > 0.99
        assert len(c.query(CAT, min_score=0)) == 2


def test_the_library_never_prints(tmp_path, astronaut_bytes, capfd):
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.add(astronaut_bytes, imgmatch.Sighting(platform="x", url="u"))
        with pytest.raises(imgmatch.UnsupportedFormat):
            c.add(b"not an image")
        c.add_many([(b"not an image", None)])
        c.add(CAT)
        c.query(astronaut_bytes)
        c.query(mirrored_jpeg(astronaut_bytes), min_score=0)
        c.image(hashlib.sha256(astronaut_bytes).hexdigest())
        c.clusters()
        c.stats()
        c.reindex()
    imgmatch.hash_bytes(b"")
    assert capfd.readouterr() == ("", "")  # neither Python nor native code wrote
