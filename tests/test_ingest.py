"""Ingest: bad files become failure rows with reasons, manifests are checked row by
row, metadata is normalised, and re-running or using worker processes changes
nothing in the catalog."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import imgmatch
from imgmatch.cli import cli, main
from imgmatch.sources import IMAGE_EXTENSIONS, iter_manifest, iter_paths

from conftest import FIXTURES, ORIGINALS, png_bomb

MANIFEST = FIXTURES / "manifest.csv"


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------- bad inputs
def ico_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 20, 20)).save(out, format="ICO")
    return out.getvalue()


def gif_bytes() -> bytes:
    frames = []
    for i in range(3):
        im = Image.new("RGB", (96, 96), (40 * i, 90, 200 - 40 * i))
        im.paste((255, 255, 0), (10 + 20 * i, 10, 40 + 20 * i, 80))
        frames.append(im)
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=80,
                   loop=0)
    return out.getvalue()


@pytest.fixture(scope="module")
def bad_files() -> dict[str, tuple[bytes, str]]:
    """File name -> (content, the failure reason ingest must record)."""
    jpeg = (ORIGINALS / "temple.jpg").read_bytes()
    return {
        "empty.jpg": (b"", "empty-file"),
        "noise.jpg": (random.Random(7).randbytes(4096), "unsupported-format"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "decode-error"),
        "words.png": (b"this is a text file, whatever its name says\n" * 20,
                      "unsupported-format"),
        "bomb.png": (png_bomb(), "too-large"),
        "icon.jpg": (ico_bytes(), "unsupported-format"),
    }


def test_png_bomb_helper_is_a_real_png():
    """The bomb builder writes a PNG Pillow decodes (checked on a small side)."""
    im = Image.open(io.BytesIO(png_bomb(2500)))
    im.load()
    assert (im.format, im.mode, im.size) == ("PNG", "1", (2500, 2500))
    assert im.getextrema() == (0, 0)


@pytest.fixture
def crawl(tmp_path, bad_files) -> Path:
    """A folder of good images (one animated GIF, one in a subfolder), bad files, a text file."""
    folder = tmp_path / "crawl"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(ORIGINALS / "cat.jpg", folder / "cat.jpg")
    shutil.copy(ORIGINALS / "rocket.jpg", folder / "sub" / "rocket.jpg")
    (folder / "anim.gif").write_bytes(gif_bytes())
    (folder / "readme.txt").write_text("not picked up by the walk")
    for name, (content, _) in bad_files.items():
        (folder / name).write_bytes(content)
    return folder


GOOD = ("cat.jpg", "sub/rocket.jpg", "anim.gif")


def expected_failures(folder: Path, bad_files) -> dict[str, str]:
    return {str(folder / name): reason for name, (_, reason) in bad_files.items()}


def test_bad_files_are_recorded_with_their_reasons(tmp_path, crawl, bad_files):
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        summary = collection.ingest(iter_paths([crawl]))
        assert summary.files_seen == len(GOOD) + len(bad_files)
        assert {source: reason for source, reason, _ in summary.failures} == \
            expected_failures(crawl, bad_files)
        assert all(detail for _, _, detail in summary.failures)
        assert summary.images_added == len(GOOD)
        assert summary.sightings_added == len(GOOD)
        rows = collection.catalog.failures()
        assert {r["source"]: r["reason"] for r in rows} == expected_failures(crawl, bad_files)
        assert len(rows) == len(bad_files)
        assert all(r["detail"] and r["run_id"] is not None for r in rows)
        stats = collection.stats()
        assert stats["failures"] == len(bad_files)
        assert stats["failure_reasons"] == {"unsupported-format": 3, "empty-file": 1,
                                            "decode-error": 1, "too-large": 1}
        for name in GOOD:
            info = collection.image(sha256_of((crawl / name).read_bytes()))
            assert [s.source for s in info.sightings] == [str(crawl / name)]


def test_animated_gif_is_catalogued_with_its_frames(tmp_path, crawl):
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.ingest(iter_paths([crawl / "anim.gif"]))
        info = collection.image(sha256_of((crawl / "anim.gif").read_bytes()))
    assert (info.format, info.frames, info.width, info.height) == ("GIF", 3, 96, 96)
    assert set(info.signals) == {"pdq", "phash", "dhash"}


def test_rerun_records_no_duplicate_failures(tmp_path, crawl, bad_files):
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.ingest(iter_paths([crawl]))
        first = collection.catalog.failures()
        again = collection.ingest(iter_paths([crawl]))
        assert again.images_added == 0
        assert again.sightings_added == 0
        assert again.sightings_known == len(GOOD)
        assert len(again.failures) == len(bad_files)  # still reported on every run
        rows = collection.catalog.failures()
        assert len(rows) == len(first) == len(bad_files)
        assert {r["source"] for r in rows} == {r["source"] for r in first}
        assert collection.stats()["images"] == len(GOOD)


def test_replaced_file_clears_its_failure(tmp_path, crawl, bad_files):
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.ingest(iter_paths([crawl]))
        fixed = crawl / "truncated.jpg"
        shutil.copy(ORIGINALS / "temple.jpg", fixed)
        summary = collection.ingest(iter_paths([crawl]))
        assert summary.images_added == 1
        assert str(fixed) not in {source for source, _, _ in summary.failures}
        rows = {r["source"]: r["reason"] for r in collection.catalog.failures()}
    expected = expected_failures(crawl, bad_files)
    del expected[str(fixed)]
    assert rows == expected


def test_cli_exits_1_for_a_folder_with_bad_files(tmp_path, crawl, bad_files, capsys):
    code = main(["--db", str(tmp_path / "c.db"), "ingest", str(crawl), "--json"])
    out, _ = capsys.readouterr()
    assert code == 1
    summary = json.loads(out)
    assert summary["failed"] == len(bad_files)
    assert summary["images_added"] == len(GOOD)
    assert summary["failure_reasons"] == {"unsupported-format": 3, "empty-file": 1,
                                          "decode-error": 1, "too-large": 1}
    assert {f["source"]: f["reason"] for f in summary["failures"]} == \
        expected_failures(crawl, bad_files)


def test_cli_human_summary_lists_failures(tmp_path, crawl, capsys):
    code = main(["--db", str(tmp_path / "c.db"), "ingest", str(crawl)])
    out, _ = capsys.readouterr()
    assert code == 1
    # a long path is cut in its middle, so the line still ends with the file's name
    line = next(line for line in out.splitlines() if "too-large" in line)
    assert line.split(": ", 1)[0].endswith("bomb.png")


def test_good_folder_exits_0(tmp_path, capsys):
    folder = tmp_path / "ok"
    folder.mkdir()
    shutil.copy(ORIGINALS / "cat.jpg", folder / "a.jpg")
    code = main(["--db", str(tmp_path / "c.db"), "ingest", str(folder), "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["failed"] == 0


def test_missing_path_argument_is_a_failure_not_a_crash(tmp_path):
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        summary = collection.ingest(iter_paths([tmp_path / "nope.jpg", ORIGINALS / "cat.jpg"]))
        assert [(s, r) for s, r, _ in summary.failures] == [
            (str(tmp_path / "nope.jpg"), "missing-file")]
        assert summary.images_added == 1


# ---------------------------------------------------------------- manifests
@pytest.fixture
def case(tmp_path) -> Path:
    """case/ holds images and manifests; ../outside.jpg lies outside it."""
    root = tmp_path / "case"
    (root / "img").mkdir(parents=True)
    shutil.copy(ORIGINALS / "rocket.jpg", root / "img" / "good.jpg")
    shutil.copy(ORIGINALS / "coffee.jpg", root / "good2.jpg")
    shutil.copy(ORIGINALS / "cat.jpg", tmp_path / "outside.jpg")
    os.symlink(tmp_path / "outside.jpg", root / "link.jpg")
    return root


def test_csv_manifest_refuses_unsafe_and_missing_rows(tmp_path, case):
    outside = tmp_path / "outside.jpg"
    manifest = case / "manifest.csv"
    manifest.write_text(
        "path,platform,url,phone\n"
        "img/good.jpg,citylist,https://a.example/1,555-0100\n"   # line 2
        "../outside.jpg,citylist,https://a.example/2,\n"          # line 3
        f"{outside},citylist,https://a.example/3,\n"               # line 4
        "link.jpg,citylist,https://a.example/4,\n"                 # line 5
        "missing.jpg,citylist,https://a.example/5,\n"              # line 6
        "good2.jpg,nightads,https://a.example/6,\n",               # line 7
        encoding="utf-8")
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        summary = collection.ingest(iter_manifest(manifest))
        assert summary.files_seen == 6
        assert summary.images_added == 2
        assert summary.sightings_added == 2
        failures = {source: (reason, detail) for source, reason, detail in summary.failures}
        assert len(failures) == 4
        expected = {3: "unsafe-path", 4: "unsafe-path", 5: "unsafe-path", 6: "missing-file"}
        for line, reason in expected.items():
            label = f"{manifest}:{line}"
            hits = [(r, s, d) for s, (r, d) in failures.items() if label in s or label in d]
            assert len(hits) == 1, (label, failures)
            assert hits[0][0] == reason
        assert {r["reason"] for r in collection.catalog.failures()} == {"unsafe-path",
                                                                        "missing-file"}
        # the file outside the folder was never read into the catalog
        assert collection.catalog.image_id(sha256_of(outside.read_bytes())) is None
        good = collection.image(sha256_of((case / "img" / "good.jpg").read_bytes()))
        (sighting,) = good.sightings
        assert sighting.platform == "citylist"
        assert sighting.url == "https://a.example/1"
        assert sighting.extra == {"phone": "555-0100"}
        assert sighting.source == str(case / "img" / "good.jpg")
        good2 = collection.image(sha256_of((case / "good2.jpg").read_bytes()))
        assert [s.platform for s in good2.sightings] == ["nightads"]


def test_manifest_platform_option_fills_missing_platforms(tmp_path, case):
    manifest = case / "m.csv"
    manifest.write_text("path,platform\nimg/good.jpg,\ngood2.jpg,jobboard\n", encoding="utf-8")
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.ingest(iter_manifest(manifest, platform="citylist"))
        platforms = {s.platform for name in ("img/good.jpg", "good2.jpg")
                     for s in collection.image(sha256_of((case / name).read_bytes())).sightings}
    assert platforms == {"citylist", "jobboard"}


def test_jsonl_manifest_rows_extra_and_dates(tmp_path, case):
    manifest = case / "m.jsonl"
    rows = [
        json.dumps({"path": "img/good.jpg", "platform": "jobboard",
                    "posted_at": "2024-03-09 21:14", "collected_at": "1700000000",
                    "caption": "hi there", "extra": {"lang": "en", "views": 3}}),
        "{not json",
        json.dumps({"path": "good2.jpg", "platform": "citylist", "posted_at": "last tuesday",
                    "collected_at": 1700000000}),
        "",
        json.dumps([1, 2]),
        json.dumps({"file": "good2.jpg", "platform": "nightads",
                    "posted_at": "2024-03-09T21:14:00+02:00"}),
    ]
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        summary = collection.ingest(iter_manifest(manifest))
        assert summary.sightings_added == 3
        failures = sorted((s, r) for s, r, _ in summary.failures)
        assert failures == [(f"{manifest}:2", "input-error"), (f"{manifest}:5", "input-error")]
        good = collection.image(sha256_of((case / "img" / "good.jpg").read_bytes()))
        (s,) = good.sightings
        assert s.platform == "jobboard"
        assert s.posted_at == "2024-03-09T21:14:00Z"
        assert s.collected_at == "2023-11-14T22:13:20Z"
        assert s.extra == {"caption": "hi there", "lang": "en", "views": 3}
        good2 = collection.image(sha256_of((case / "good2.jpg").read_bytes()))
        by_platform = {s.platform: s for s in good2.sightings}
        assert set(by_platform) == {"citylist", "nightads"}
        assert by_platform["citylist"].posted_at is None
        assert by_platform["citylist"].extra == {"posted_at_raw": "last tuesday"}
        assert by_platform["citylist"].collected_at == "2023-11-14T22:13:20Z"
        assert by_platform["nightads"].posted_at == "2024-03-09T19:14:00Z"


def test_hostile_date_does_not_abort_the_ingest(tmp_path, case):
    manifest = case / "m.csv"
    manifest.write_text("path,platform,posted_at\n"
                        "img/good.jpg,citylist,0001-01-01T00:00:00+01:00\n"
                        "good2.jpg,citylist,2024-01-01\n", encoding="utf-8")
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        summary = collection.ingest(iter_manifest(manifest))
    assert summary.sightings_added == 2


def test_oversized_csv_cell_costs_only_its_row(tmp_path, case):
    manifest = case / "m.csv"
    manifest.write_text("path,platform,caption\n"
                        "img/good.jpg,citylist,short\n"
                        f"img/good.jpg,nightads,{'z' * 200_000}\n"
                        "good2.jpg,jobboard,fine\n", encoding="utf-8")
    items = list(iter_manifest(manifest))
    assert [i.source.rsplit(":", 1)[-1] for i in items if i.error is not None] == ["3"]
    assert sum(i.error is None for i in items) == 2


# ---------------------------------------------------- workers and idempotence
def catalog_contents(collection) -> dict[str, set]:
    q = collection.catalog.conn.execute
    return {
        "signals": set(q("SELECT i.sha256, s.signal, s.value FROM signals s "
                         "JOIN images i ON i.id = s.image_id")),
        "images": set(q("SELECT sha256, size_bytes, width, height, format, frames "
                        "FROM images")),
        "sightings": set(q("SELECT i.sha256, s.platform, s.url, s.posted_at, s.source, s.extra "
                           "FROM sightings s JOIN images i ON i.id = s.image_id")),
        "links": set(q("SELECT ia.sha256, ib.sha256 FROM links l JOIN images ia ON ia.id = l.a "
                       "JOIN images ib ON ib.id = l.b")),
    }


@pytest.fixture(scope="module")
def default_contents(tmp_path_factory) -> dict[str, set]:
    db = tmp_path_factory.mktemp("default") / "c.db"
    with imgmatch.Collection.open(db) as collection:
        collection.ingest(iter_manifest(MANIFEST))
        return catalog_contents(collection)


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_processes_store_the_same_catalog(tmp_path, default_contents, workers):
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        summary = collection.ingest(iter_manifest(MANIFEST), workers=workers)
        assert (summary.images_added, summary.sightings_added) == (20, 22)
        contents = catalog_contents(collection)
    assert len(contents["signals"]) == 60
    for key in ("signals", "images", "sightings"):
        assert contents[key] == default_contents[key], key
    # links join the same pictures whichever process hashed them
    unordered = {frozenset(pair) for pair in contents["links"]}
    assert unordered == {frozenset(pair) for pair in default_contents["links"]}


def test_ingesting_the_same_tree_twice_changes_nothing(tmp_path):
    walked = sorted(p for p in FIXTURES.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    distinct = {sha256_of(p.read_bytes()) for p in walked}
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        first = collection.ingest(iter_paths([FIXTURES]))
        assert first.files_seen == len(walked)
        assert first.failures == []
        counts = collection.catalog.counts()
        assert counts["images"] == len(distinct)
        assert counts["sightings"] == len(walked)
        before = catalog_contents(collection)
        second = collection.ingest(iter_paths([FIXTURES]))
        assert second.images_added == 0
        assert second.sightings_added == 0
        assert second.sightings_known == len(walked)
        assert second.links_added == 0
        after = collection.catalog.counts()
        assert {k: after[k] for k in ("images", "sightings", "links", "failures")} == \
            {k: counts[k] for k in ("images", "sightings", "links", "failures")}
        assert catalog_contents(collection) == before


def test_reopened_collection_is_idempotent_too(tmp_path):
    db = tmp_path / "c.db"
    for expected_added in (2, 0):
        with imgmatch.Collection.open(db) as collection:
            summary = collection.ingest(iter_paths([ORIGINALS / "cat.jpg",
                                                    ORIGINALS / "rocket.jpg"]))
            assert summary.images_added == expected_added
            assert summary.sightings_added == expected_added
    with imgmatch.Collection.open(db, readonly=True) as collection:
        assert collection.stats()["sightings"] == 2


def test_a_nul_byte_in_a_manifest_path_costs_that_row_only(tmp_path, case):
    """The row is recorded as unsafe, the other rows are catalogued, and a
    re-run gives the same (no traceback, nothing lost)."""
    csv_manifest = case / "manifest.csv"
    csv_manifest.write_text("path,platform\nimg/go\x00od.jpg,citylist\ngood2.jpg,nightads\n",
                            encoding="utf-8")
    jsonl_manifest = case / "manifest.jsonl"
    jsonl_manifest.write_text(json.dumps({"path": "img/good.jpg\x00.png"}) + "\n"
                              + json.dumps({"path": "img/good.jpg"}) + "\n", encoding="utf-8")
    lines = tmp_path / "lines.jsonl"  # a pipeline's JSON lines: paths not confined
    lines.write_text(json.dumps({"path": str(case / "good2.jpg") + "\x00"}) + "\n")
    for _ in range(2):
        result = CliRunner().invoke(
            cli, ["--db", str(tmp_path / "c.db"), "ingest", "--json",
                  "--manifest", str(csv_manifest), "--manifest", str(jsonl_manifest),
                  "--jsonl", str(lines)])
        assert not isinstance(result.exception, Exception) or \
            isinstance(result.exception, SystemExit), result.output
        summary = json.loads(result.stdout)
        assert summary["failure_reasons"] == {"unsafe-path": 3}
        assert all("NUL byte" in f["detail"] for f in summary["failures"])
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        assert collection.stats()["images"] == 2


def test_a_fifo_named_like_an_image_is_refused_at_once(tmp_path):
    """A named pipe with no writer would block a worker's open() until its
    time limit; it is recorded as not-a-file, quickly, and the batch goes on."""
    folder = tmp_path / "crawl"
    folder.mkdir()
    os.mkfifo(folder / "pipe.jpg")
    shutil.copy(ORIGINALS / "cat.jpg", folder / "cat.jpg")
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        summary = collection.ingest(iter_paths([folder]), workers=1, timeout=5)
        assert [(Path(s).name, r) for s, r, _ in summary.failures] == [("pipe.jpg", "not-a-file")]
        assert "named pipe" in summary.failures[0][2]
        assert summary.images_added == 1
        # in process too (workers=0 reads in the parent, which must not block either)
        summary = collection.ingest(iter_paths([folder / "pipe.jpg"]), workers=0)
        assert [r for _, r, _ in summary.failures] == ["not-a-file"]


def test_an_endless_json_line_is_skipped_in_pieces_not_held(monkeypatch):
    """One line longer than the limit costs that line only; the lines after
    it are read as usual (the limit stands for 96 M characters)."""
    import imgmatch.sources as sources

    monkeypatch.setattr(sources, "MAX_LINE_CHARS", 1000)
    good = json.dumps({"path": str(ORIGINALS / "cat.jpg"), "platform": "p"})
    stream = io.StringIO(json.dumps({"data": "A" * 5000}) + "\n" + good + "\n"
                         + "x" * 3000)  # the last one without its newline
    items = list(sources.iter_jsonl_stream(stream, label="in"))
    assert [(i.line, i.error.reason if i.error else None) for i in items] == [
        (1, "too-large"), (2, None), (3, "too-large")]
    assert items[1].path == ORIGINALS / "cat.jpg"
    lines = list(sources.bounded_lines(["short\n", "y" * 2000], 1000))
    assert lines == ["short\n", None]


def _batches_written(tmp_path, monkeypatch, handoff: int) -> int:
    from imgmatch import ingest as ingest_module

    monkeypatch.setattr(ingest_module, "FLUSH_SECONDS", 1e9)  # never flushed for its age
    monkeypatch.setattr(ingest_module, "HANDOFF_IMAGES", handoff)
    written: list[list] = []
    with imgmatch.Collection.open(tmp_path / f"h{handoff}.db") as collection:
        summary = collection.ingest(iter_manifest(MANIFEST), workers=1, on_written=written.append)
    assert summary.images_added == 20
    return len(written)


def test_an_idle_writer_takes_the_images_ready_without_waiting_for_a_full_batch(
        tmp_path, monkeypatch):
    # the writer links: idle while a 256-image batch fills, it would leave the
    # workers' cores half used and the last batch long to write alone
    assert _batches_written(tmp_path, monkeypatch, handoff=4) >= 2
    assert _batches_written(tmp_path, monkeypatch, handoff=10**9) == 1


def test_workers_yield_the_cores_to_the_parent_that_links():
    from imgmatch.workers import WORKER_NICENESS, Job, ProcessPool

    pool = ProcessPool(["phash"], 1)
    try:
        pool.submit(Job(0, "a", path=str(ORIGINALS / sorted(os.listdir(ORIGINALS))[0])))
        results = []
        while not results:
            results = list(pool.results(5.0))
        [pid] = pool.pids
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(
            19, os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICENESS)
    finally:
        pool.close()
