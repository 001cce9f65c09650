"""Sources: date normalisation, manifest parsing, field bounds and directory walks."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from imgmatch.cli import main
from imgmatch.errors import ManifestError, MissingFile
from imgmatch.records import Sighting
from imgmatch.sources import iter_manifest, iter_paths
from imgmatch.text import MAX_FIELD_CHARS, parse_when, printable

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ISO_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
UTC = timezone.utc


def as_utc(text: str) -> datetime:
    assert ISO_Z.fullmatch(text), text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


# ----------------------------------------------------------------- parse_when
@pytest.mark.parametrize("text, expected", [
    ("2024-03-09T21:14:00Z", "2024-03-09T21:14:00Z"),
    ("2024-03-09T21:14:00z", "2024-03-09T21:14:00Z"),
    ("2024-03-09T21:14:00+00:00", "2024-03-09T21:14:00Z"),
    ("2024-03-09T23:44:00+02:30", "2024-03-09T21:14:00Z"),
    ("2024-03-09T16:14:00-05:00", "2024-03-09T21:14:00Z"),
    ("2024-03-09T00:30:00+01:00", "2024-03-08T23:30:00Z"),  # crosses midnight
    ("2024-03-09 21:14", "2024-03-09T21:14:00Z"),            # naive: taken as UTC
    ("2024-03-09T21:14:59.999999Z", "2024-03-09T21:14:59Z"),  # to the second
    ("2024-03-09", "2024-03-09T00:00:00Z"),
    ("  2024-03-09T21:14:00Z\n", "2024-03-09T21:14:00Z"),
    ("1700000000", "2023-11-14T22:13:20Z"),                  # Unix seconds
    (" 1700000000 ", "2023-11-14T22:13:20Z"),
    ("999999999", "2001-09-09T01:46:39Z"),
    ("0", None),                                             # too short for seconds
    ("", None),
    ("   ", None),
    ("last tuesday", None),
    ("2024-13-01", None),
    ("2024-02-30T10:00:00Z", None),
    ("1700000000.5", None),
])
def test_parse_when(text, expected):
    assert parse_when(text) == expected


@pytest.mark.parametrize("text", [
    pytest.param("²" * 10, id="superscript-digits"),
    pytest.param("0001-01-01T00:00:00+01:00", id="before-year-1-in-utc"),
    pytest.param("9999-12-31T23:59:59-01:00", id="after-year-9999-in-utc"),
])
def test_parse_when_never_raises(text):
    assert parse_when(text) is None


def test_parse_when_pads_early_years():
    assert parse_when("0999-01-01") == "0999-01-01T00:00:00Z"


fixed_offsets = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23, minutes=-59),
                            max_value=timedelta(hours=23, minutes=59)))


@settings(max_examples=200, deadline=None, database=None)
@given(st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2200, 12, 30),
                    timezones=fixed_offsets))
# an offset under a second, which Python 3.11's fromisoformat reads as UTC
@example(datetime(2000, 1, 1, tzinfo=timezone(timedelta(microseconds=1))))
@example(datetime(2000, 1, 1, tzinfo=timezone(-timedelta(microseconds=500_000))))
def test_aware_datetimes_round_trip_to_the_utc_second(when):
    expected = when.astimezone(UTC).replace(microsecond=0)
    assert as_utc(parse_when(when.isoformat())) == expected
    assert as_utc(parse_when(when.isoformat(sep=" "))) == expected


@settings(max_examples=100, deadline=None, database=None)
@given(st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2200, 12, 30)))
def test_naive_and_z_datetimes_are_utc(when):
    expected = when.replace(microsecond=0, tzinfo=UTC)
    assert as_utc(parse_when(when.isoformat())) == expected
    assert as_utc(parse_when(when.isoformat() + "Z")) == expected


@settings(max_examples=100, deadline=None, database=None)
@given(st.integers(min_value=10**8, max_value=10**11 - 1))
def test_unix_seconds(seconds):
    assert as_utc(parse_when(str(seconds))) == datetime.fromtimestamp(seconds, UTC)


# ------------------------------------------------------------------ mappings
def test_sighting_from_mapping_sorts_fields_into_columns_and_extra():
    s = Sighting.from_fields({
        "path": "a.jpg", "platform": "citylist", "url": "https://x.example/1", "ad_id": 42,
        "posted_at": "2024-03-09 21:14", "collected_at": "soon", "phone": "555-0100",
        "city": "", "extra": {"lang": "en"},
    })
    assert (s.platform, s.url, s.ad_id) == ("citylist", "https://x.example/1", "42")
    assert s.posted_at == "2024-03-09T21:14:00Z"
    assert s.collected_at is None
    assert s.extra == {"phone": "555-0100", "lang": "en", "collected_at_raw": "soon"}
    assert s.source is None


def test_default_platform_only_fills_gaps():
    assert Sighting.from_fields({"path": "a"}, default_platform="jobboard").platform == "jobboard"
    assert Sighting.from_fields({"path": "a", "platform": ""},
                                 default_platform="jobboard").platform == "jobboard"
    assert Sighting.from_fields({"path": "a", "platform": "nightads"},
                                 default_platform="jobboard").platform == "nightads"


@pytest.mark.parametrize("field", ["url", "caption"])
def test_long_fields_are_cut(field):
    long = "x" * (MAX_FIELD_CHARS + 500)
    s = Sighting.from_fields({"path": "a.jpg", field: long})
    value = s.url if field == "url" else s.extra["caption"]
    assert value != long
    assert value.startswith("x" * MAX_FIELD_CHARS)
    assert MAX_FIELD_CHARS < len(value) <= MAX_FIELD_CHARS + 20
    assert not value[MAX_FIELD_CHARS:].startswith("x")  # marked as cut


def test_field_at_the_limit_is_kept_whole():
    exact = "y" * MAX_FIELD_CHARS
    assert Sighting.from_fields({"path": "a.jpg", "caption": exact}).extra["caption"] == exact


def test_long_csv_cell_is_cut(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,caption\na.jpg,{'c' * (MAX_FIELD_CHARS * 2)}\n", encoding="utf-8")
    (item,) = iter_manifest(manifest)
    assert item.error is None
    caption = item.sighting.extra["caption"]
    assert caption.startswith("c" * MAX_FIELD_CHARS)
    assert len(caption) < MAX_FIELD_CHARS * 2


# ----------------------------------------------------------------- manifests
@pytest.mark.parametrize("content", [
    "file_name,platform\na.jpg,citylist\n",
    "platform,url\ncitylist,https://x.example\n",
    "",
])
def test_csv_manifest_without_a_path_column(tmp_path, content):
    manifest = tmp_path / "m.csv"
    manifest.write_text(content, encoding="utf-8")
    with pytest.raises(ManifestError, match="path"):
        list(iter_manifest(manifest))


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        list(iter_manifest(tmp_path / "nope.csv"))


def test_cli_manifest_without_a_path_column_is_fatal(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("platform\ncitylist\n", encoding="utf-8")
    code = main(["--db", str(tmp_path / "c.db"), "ingest", "--manifest", str(manifest)])
    err = capsys.readouterr().err
    assert code == 3
    assert "'path' column" in err and str(manifest) in err


def test_cli_manifest_with_a_header_only_is_empty(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,platform\n", encoding="utf-8")
    code = main(["--db", str(tmp_path / "c.db"), "ingest", "--manifest", str(manifest),
                 "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["files_seen"] == 0


def test_csv_manifest_path_aliases_and_bom(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jpg").write_bytes(b"x")
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("\ufefffile,platform,city\nsub/a.jpg,citylist,Houston\n".encode())
    (item,) = iter_manifest(manifest)
    assert item.error is None
    assert item.path == (tmp_path / "sub" / "a.jpg").resolve()
    assert item.sighting.platform == "citylist"
    assert item.sighting.extra == {"city": "Houston"}
    assert item.sighting.source == str(tmp_path / "sub" / "a.jpg")


def test_manifest_row_without_a_path_is_an_input_error(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,platform\n,citylist\n", encoding="utf-8")
    (item,) = iter_manifest(manifest)
    assert item.error is not None
    assert item.error.reason == "input-error"
    assert item.source == f"{manifest}:2"


def test_a_missing_manifest_file_is_an_error_item(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "gone.jpg"}\n', encoding="utf-8")
    (item,) = iter_manifest(manifest)
    assert isinstance(item.error, MissingFile) and item.path is None


def test_jsonl_line_numbers_count_blank_lines(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('\n\n{"path": 5}\nnull\n', encoding="utf-8")
    items = list(iter_manifest(manifest))
    assert [i.source for i in items] == [f"{manifest}:3", f"{manifest}:4"]
    assert all(i.error is not None for i in items)


def test_fixture_manifest_items():
    items = list(iter_manifest(FIXTURES / "manifest.csv"))
    assert len(items) == 22
    assert all(i.error is None and i.path.is_file() for i in items)
    first = items[0]
    assert first.sighting.platform == "backpage-clone"
    assert first.sighting.posted_at == "2023-02-11T22:41:00Z"
    assert first.sighting.extra == {"phone": "555-0142", "city": "Houston"}
    assert first.path == (FIXTURES / "originals" / "astronaut.jpg").resolve()


# ---------------------------------------------------------------- iter_paths
def test_iter_paths_walks_recursively_and_skips_non_images(tmp_path):
    root = tmp_path / "crawl"
    for rel in ("b.jpg", "a.PNG", "notes.txt", "sub/c.webp", "sub/deeper/d.jpeg",
                "sub/deeper/e.json", "sub/Makefile", "z/f.GIF"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    os.symlink(root / "b.jpg", root / "link.jpg")
    items = list(iter_paths([root], platform="citylist"))
    assert [Path(i.source).relative_to(root).as_posix() for i in items] == [
        "a.PNG", "b.jpg", "sub/c.webp", "sub/deeper/d.jpeg", "z/f.GIF"]
    assert all(i.sighting.platform == "citylist" for i in items)
    assert all(i.sighting.source == i.source == str(i.path) for i in items)


def test_iter_paths_takes_named_files_as_given(tmp_path):
    named = tmp_path / "picture.data"
    named.write_bytes(b"x")
    (item,) = iter_paths([named])
    assert item.path == named
    assert item.sighting.platform is None


def test_iter_paths_on_the_fixtures():
    items = list(iter_paths([FIXTURES]))
    names = {Path(i.source).relative_to(FIXTURES).as_posix() for i in items}
    assert "originals/astronaut.jpg" in names
    assert "queries/unrelated.jpg" in names
    assert "manifest.csv" not in names and "README.md" not in names
    assert len(items) == 27


def test_iter_paths_dates_files_by_their_modification_time_only_when_asked(tmp_path):
    root = tmp_path / "crawl"
    (root / "sub").mkdir(parents=True)
    named = tmp_path / "named.jpg"
    for path, mtime in ((root / "a.jpg", 1_700_000_000), (root / "sub" / "b.png", 1_700_000_000.75),
                        (named, 999_999_999)):
        path.write_bytes(b"x")
        os.utime(path, (0, mtime))
    assert all(i.sighting.collected_at is None for i in iter_paths([root, named]))
    dated = {Path(i.source).name: i.sighting.collected_at
             for i in iter_paths([root, named], file_times=True)}
    assert dated == {"a.jpg": "2023-11-14T22:13:20Z", "b.png": "2023-11-14T22:13:20Z",
                     "named.jpg": "2001-09-09T01:46:39Z"}


def test_file_times_of_a_missing_file_leave_it_to_the_ingest(tmp_path):
    (item,) = iter_paths([tmp_path / "gone.jpg"], file_times=True)
    assert item.sighting.collected_at is None and item.error is None


@pytest.mark.parametrize("flag, expected", [([], None), (["--file-times"], "2023-11-14T22:13:20Z")])
def test_cli_ingest_takes_file_times_only_with_its_flag(tmp_path, capsys, flag, expected):
    import hashlib

    import imgmatch

    folder = tmp_path / "in"
    folder.mkdir()
    photo = folder / "cat.jpg"
    photo.write_bytes((FIXTURES / "originals" / "cat.jpg").read_bytes())
    os.utime(photo, (0, 1_700_000_000))
    db = tmp_path / "c.db"
    assert main(["--db", str(db), "ingest", str(folder), *flag, "--workers", "0",
                 "--quiet", "--json"]) == 0
    with imgmatch.Collection.open(db, readonly=True) as c:
        (s,) = c.image(hashlib.sha256(photo.read_bytes()).hexdigest()).sightings
    assert s.collected_at == expected


def test_sources_for_chains_the_inputs_in_the_order_ingest_reads_them(tmp_path):
    """Files and folders, then manifests, then web archives (known by name)."""
    import imgmatch

    archive = tmp_path / "crawl.warc.gz"   # named as an archive: read as one, not an image
    archive.write_bytes(b"")                # (an empty one holds no record)
    photo = FIXTURES / "originals" / "cat.jpg"
    items = list(imgmatch.sources_for([archive, photo], manifests=[FIXTURES / "manifest.csv"],
                                      platform="given"))
    assert items[0].source == str(photo) and items[0].sighting.platform == "given"
    assert items[1:] == list(iter_manifest(FIXTURES / "manifest.csv", platform="given"))
    with pytest.raises(imgmatch.ImgmatchError, match="go together"):
        imgmatch.sources_for(scrapy_items=tmp_path / "items.jsonl")


@given(st.text(max_size=300), st.integers(min_value=3, max_value=120), st.booleans())
def test_printable_text_fits_its_width_and_a_path_keeps_its_end(text, width, keep_end):
    shown = printable(text, width, keep_end=keep_end)
    assert len(shown) <= width
    if len(text) <= width:
        assert len(shown) == len(text)
    else:
        assert shown.count("…") >= 1
        if keep_end:  # a path's end names its file
            tail = (width - 1) * 2 // 3
            assert printable(text)[-tail:] == shown[-tail:]


def test_a_long_path_in_the_summary_keeps_its_file_name():
    path = "/srv/crawls/" + "nested/" * 20 + "bomb.png"
    shown = printable(path, 80, keep_end=True)
    assert len(shown) == 80 and shown.startswith("/srv/crawls/") and shown.endswith("/bomb.png")
