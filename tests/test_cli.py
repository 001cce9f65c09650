"""End-to-end tests of the ``imgmatch`` command line on the bundled fixtures.

The collection is built once per module (ingesting fixtures/manifest.csv);
the tests then query, report and inspect it through ``imgmatch.cli.main`` and,
for the console path, through a real subprocess.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from imgmatch.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MANIFEST = FIXTURES / "manifest.csv"
QUERIES = FIXTURES / "queries"
ASTRONAUT = FIXTURES / "originals" / "astronaut.jpg"

HEX64 = re.compile(r"[0-9a-f]{64}")
HEX16 = re.compile(r"[0-9a-f]{16}")
SIGNALS = {"pdq", "phash", "dhash"}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def original_name(rel_path: str) -> str:
    """The source photo a manifest path shows: reposts/NAME_platform_year.jpg -> NAME."""
    path = Path(rel_path)
    return path.stem.split("_")[0] if path.parent.name == "reposts" else path.stem


def manifest_rows() -> list[dict[str, str]]:
    with MANIFEST.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def rows_by_original() -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in manifest_rows():
        out[original_name(row["path"])].append(row)
    return out


def shas_of(name: str) -> set[str]:
    """sha256 of every catalogued file showing the photo ``name``."""
    return {sha256_of(FIXTURES / row["path"]) for row in rows_by_original()[name]}


def call(*argv: object) -> tuple[int, str, str]:
    """Run the CLI in this process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> SimpleNamespace:
    """A collection of the whole manifest, and what the first ingest printed."""
    db = tmp_path_factory.mktemp("cli") / "case.db"
    code, out, err = call("--db", db, "ingest", "--manifest", MANIFEST, "--json")
    return SimpleNamespace(db=db, code=code, out=out, err=err)


def query_json(db: Path, *args: object) -> tuple[int, list[dict]]:
    code, out, err = call("--db", db, "query", *args, "--json")
    return code, json_lines(out)


def ranking(db: Path, query: Path) -> list[tuple[str, float, dict]]:
    code, lines = query_json(db, query, "--min-score", "0", "--top-k", "20")
    assert code == 0
    return [(m["sha256"], m["score"], m["distances"]) for m in lines[0]["matches"]]


# --------------------------------------------------------------------- ingest
def test_first_ingest_summary(built):
    assert built.code == 0, built.err
    summary = json.loads(built.out)
    assert summary["files_seen"] == 22
    # astronaut.jpg and coffee.jpg are each listed twice with identical bytes
    assert summary["images_added"] == 20
    assert summary["sightings_added"] == 22
    assert summary["failed"] == 0
    assert summary["failures"] == []
    assert summary["failure_reasons"] == {}


def test_second_ingest_is_idempotent(built):
    code, out, err = call("--db", built.db, "ingest", "--manifest", MANIFEST, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["files_seen"] == 22
    assert summary["images_added"] == 0
    assert summary["sightings_added"] == 0
    assert summary["sightings_known"] == 22
    assert summary["links_added"] == 0
    assert summary["failed"] == 0
    code, out, _ = call("--db", built.db, "stats", "--json")
    assert (json.loads(out)["images"], json.loads(out)["sightings"]) == (20, 22)


def test_the_default_ingest_is_the_robust_tier_and_fast_the_hash_tier(tmp_path):
    """Local features unless --fast: a crop that only they find is linked by
    a default ingest, not by a --fast one; --fast and --signals conflict."""
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    photo = Image.open(FIXTURES / "originals" / "temple.jpg").convert("RGB")
    photo.save(folder / "temple.jpg", quality=92)
    photo.crop((0, 0, photo.width * 55 // 100, photo.height * 7 // 10)).save(
        folder / "crop.jpg", quality=85)
    found = {}
    for name, flags in (("default", []), ("fast", ["--fast"])):
        db = tmp_path / f"{name}.db"
        code, out, err = call("--db", db, "ingest", folder, "--workers", "0", "--json", *flags)
        assert code == 0, err
        found[name] = json.loads(out)["links_added"]
        code, out, _ = call("--db", db, "stats", "--json")
        assert json.loads(out)["local_features"] == (2 if name == "default" else 0)
    assert found == {"default": 1, "fast": 0}
    code, _, err = call("--db", tmp_path / "x.db", "ingest", folder, "--fast", "--signals",
                        "pdq")
    assert code == 2 and "--fast is the hash tier" in err
    assert not (tmp_path / "x.db").exists()


def test_ingest_human_output(built):
    code, out, err = call("--db", built.db, "ingest", "--manifest", MANIFEST)
    assert code == 0, err
    assert re.search(r"files seen:\s+22", out)
    assert re.search(r"images added:\s+0", out)
    assert re.search(r"failures:\s+0", out)


def test_links_added_matches_links_in_catalog(built):
    summary = json.loads(built.out)
    code, out, _ = call("--db", built.db, "stats", "--json")
    assert summary["links_added"] == json.loads(out)["links"]


# ---------------------------------------------------------------------- query
@pytest.mark.parametrize("name", ["astronaut", "cat", "temple"])
def test_query_finds_every_copy_and_nothing_else(built, name):
    query = QUERIES / f"{name}_mirror_crop10.jpg"
    code, lines = query_json(built.db, query)
    assert code == 0
    assert len(lines) == 1
    result = lines[0]
    assert result["query"] == str(query)
    found = {m["sha256"] for m in result["matches"]}
    # fixtures/README.md: the query matches every row of its photo, and only those
    assert found == shas_of(name)
    urls = sorted(s["url"] for m in result["matches"] for s in m["sightings"])
    assert urls == sorted(r["url"] for r in rows_by_original()[name])
    for m in result["matches"]:
        assert m["score"] >= 0.5


def test_query_astronaut_original_carries_both_sightings(built):
    code, lines = query_json(built.db, QUERIES / "astronaut_mirror_crop10.jpg")
    assert code == 0
    by_sha = {m["sha256"]: m for m in lines[0]["matches"]}
    original = by_sha[sha256_of(ASTRONAUT)]
    assert original["score"] >= 0.5
    assert sorted(s["platform"] for s in original["sightings"]) == ["backpage-clone", "citylist"]
    assert {s["ad_id"] for s in original["sightings"]} == {"3824128", "10424"}
    assert all(s["extra"]["phone"] == "555-0142" for s in original["sightings"])


def test_query_match_shape(built):
    code, lines = query_json(built.db, QUERIES / "astronaut_mirror_crop10.jpg")
    assert code == 0
    matches = lines[0]["matches"]
    assert matches
    for m in matches:
        assert {"sha256", "score", "distances", "sightings", "signals"} <= set(m)
        assert HEX64.fullmatch(m["sha256"])
        assert 0.0 <= m["score"] <= 1.0
        assert set(m["distances"]) == SIGNALS
        assert all(isinstance(v, int) and 0 <= v for v in m["distances"].values())
        assert HEX64.fullmatch(m["signals"]["pdq"])
        assert HEX16.fullmatch(m["signals"]["phash"])
        assert HEX16.fullmatch(m["signals"]["dhash"])
        assert m["sightings"] and all("platform" in s for s in m["sightings"])
    scores = [m["score"] for m in matches]
    assert scores == sorted(scores, reverse=True)


def test_query_unrelated_photo_matches_nothing(built):
    code, lines = query_json(built.db, QUERIES / "unrelated.jpg")
    assert code == 0
    assert lines == [{"query": str(QUERIES / "unrelated.jpg"), "matches": []}]


def test_query_min_score_zero_returns_top_k(built):
    code, lines = query_json(built.db, QUERIES / "unrelated.jpg", "--min-score", "0",
                             "--top-k", "5")
    assert code == 0
    matches = lines[0]["matches"]
    assert len(matches) == 5
    scores = [m["score"] for m in matches]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s < 0.5 for s in scores)
    assert len({m["sha256"] for m in matches}) == 5


def test_query_several_images_one_line_each(built):
    queries = [QUERIES / "cat_mirror_crop10.jpg", QUERIES / "unrelated.jpg"]
    code, lines = query_json(built.db, *queries)
    assert code == 0
    assert [line["query"] for line in lines] == [str(q) for q in queries]
    assert lines[0]["matches"] and lines[1]["matches"] == []


def test_query_human_output(built):
    code, out, _ = call("--db", built.db, "query", QUERIES / "astronaut_mirror_crop10.jpg")
    assert code == 0
    assert out.startswith(f"{QUERIES / 'astronaut_mirror_crop10.jpg'}: 5 matches")
    assert sha256_of(ASTRONAUT) in out
    assert "backpage-clone" in out
    assert re.search(r"\d+ inliers; (mirror|identity)\]", out)  # the robust tier's evidence


def test_query_missing_image_is_partial(built, tmp_path):
    missing = tmp_path / "gone.jpg"
    code, lines = query_json(built.db, missing, QUERIES / "cat_mirror_crop10.jpg")
    assert code == 1
    assert lines[0]["query"] == str(missing)
    assert lines[0]["matches"] == [] and "error" in lines[0]
    assert lines[1]["matches"]  # the other query still ran


def astronaut_pdq_hex() -> str:
    code, out, _ = call("hash", ASTRONAUT, "--json")
    assert code == 0
    return json.loads(out)["signals"]["pdq"]["hex"]


def test_query_pdq_hash_ranks_the_original_first(built):
    code, lines = query_json(built.db, "--pdq", astronaut_pdq_hex(), "--min-score", "0",
                             "--top-k", "3")
    assert code == 0
    top = lines[0]["matches"][0]
    assert top["sha256"] == sha256_of(ASTRONAUT)
    assert top["distances"]["pdq"] == 0
    assert top["signals"]["pdq"] == astronaut_pdq_hex()


def test_query_pdq_hash_finds_the_original_near_certainly(built):
    code, lines = query_json(built.db, "--pdq", astronaut_pdq_hex())
    assert code == 0
    by_sha = {m["sha256"]: m for m in lines[0]["matches"]}
    match = by_sha[sha256_of(ASTRONAUT)]
    assert match["score"] > 0.99
    assert match["distances"]["pdq"] == 0


def test_query_bad_pdq_hex_is_a_usage_error(built):
    code, out, err = call("--db", built.db, "query", "--pdq", "abc", "--json")
    assert code == 2
    assert out == ""  # refused before any query ran
    assert "--pdq" in err and "64 hex digits" in err


# ----------------------------------------------------------------------- hash
def test_hash_json():
    code, out, err = call("hash", ASTRONAUT, "--json")
    assert code == 0, err
    (result,) = json_lines(out)
    assert result["file"] == str(ASTRONAUT)
    assert result["sha256"] == sha256_of(ASTRONAUT)
    assert (result["width"], result["height"], result["format"]) == (512, 512, "JPEG")
    signals = result["signals"]
    assert set(signals) == SIGNALS
    assert HEX64.fullmatch(signals["pdq"]["hex"])
    assert isinstance(signals["pdq"]["quality"], int) and 0 <= signals["pdq"]["quality"] <= 100
    assert HEX16.fullmatch(signals["phash"]["hex"])
    assert HEX16.fullmatch(signals["dhash"]["hex"])


def test_hash_agrees_with_the_catalog(built):
    """What ``hash`` prints is what ingest stored for the same bytes."""
    code, out, _ = call("hash", ASTRONAUT, "--json")
    signals = {k: v["hex"] for k, v in json.loads(out)["signals"].items()}
    code, lines = query_json(built.db, ASTRONAUT, "--top-k", "1")
    assert code == 0
    top = lines[0]["matches"][0]
    assert top["sha256"] == sha256_of(ASTRONAUT)
    assert top["score"] > 0.99
    assert top["signals"] == signals


def test_hash_signal_subset():
    code, out, _ = call("hash", ASTRONAUT, "--signals", "phash", "--json")
    assert code == 0
    assert set(json.loads(out)["signals"]) == {"phash"}
    assert "local_features" not in json.loads(out)


def test_hash_counts_local_features():
    code, out, _ = call("hash", ASTRONAUT, "--signals", "pdq,orb", "--json")
    assert code == 0
    result = json.loads(out)
    assert set(result["signals"]) == {"pdq"}
    assert 100 < result["local_features"]["keypoints"] <= 500


@pytest.mark.parametrize("content, reason", [
    (b"just some words, not a picture\n", "unsupported-format"),
    (b"", "empty-file"),
])
def test_hash_non_image_prints_error_object(tmp_path, content, reason):
    path = tmp_path / "notes.jpg"
    path.write_bytes(content)
    code, out, _ = call("hash", path, ASTRONAUT, "--json")
    assert code == 1
    bad, good = json_lines(out)
    assert bad["file"] == str(path)
    assert bad["error"]["reason"] == reason
    assert bad["error"]["message"]
    assert "signals" not in bad
    assert good["sha256"] == sha256_of(ASTRONAUT)  # the next file is still hashed


def test_hash_missing_path(tmp_path):
    missing = tmp_path / "nope.jpg"
    code, out, _ = call("hash", missing, "--json")
    assert code == 1
    (result,) = json_lines(out)
    assert result["error"]["reason"] == "missing-file"


def test_hash_human_output():
    code, out, _ = call("hash", ASTRONAUT)
    assert code == 0
    assert f"sha256={sha256_of(ASTRONAUT)}" in out
    assert re.search(r"pdq=[0-9a-f]{64} q=\d+", out)


# --------------------------------------------------------------------- report
def report_json(db: Path, *args: object) -> dict:
    code, out, err = call("--db", db, "report", "--format", "json", *args)
    assert code == 0, err
    return json.loads(out)


def test_report_json(built):
    report = report_json(built.db)
    assert report["report_version"] == 1
    clusters = report["clusters"]
    assert report["n_clusters"] == len(clusters) >= 4
    n_platforms = [len(c["platforms"]) for c in clusters]
    assert n_platforms == sorted(n_platforms, reverse=True)
    first = clusters[0]
    assert len(first["platforms"]) >= 3
    assert len(first["platforms"]) == max(n_platforms)
    assert sha256_of(ASTRONAUT) in {s["sha256"] for s in first["sightings"]}
    assert set(report["platforms"]) == {"backpage-clone", "citylist", "nightads", "jobboard"}
    for c in clusters:
        assert c["n_sightings"] == len(c["sightings"]) >= 2
        assert c["n_images"] == len(c["images"])
        assert c["first_seen"] <= c["last_seen"]
        assert all(HEX64.fullmatch(s["sha256"]) for s in c["sightings"])


def test_report_first_cluster_is_the_astronaut_story(built):
    first = report_json(built.db)["clusters"][0]
    assert {s["sha256"] for s in first["sightings"]} == shas_of("astronaut")
    assert first["n_sightings"] == 6
    assert [p["platform"] for p in first["platform_order"]] == [
        "backpage-clone", "citylist", "nightads", "jobboard"]
    assert first["first_seen"] == "2023-02-11T22:41:00Z"


def test_report_filters(built):
    only = report_json(built.db, "--platform", "nightads")["clusters"]
    assert only and all("nightads" in c["platforms"] for c in only)
    cross = report_json(built.db, "--cross-platform")["clusters"]
    assert all(len(c["platforms"]) >= 2 for c in cross)
    many = report_json(built.db, "--min-sightings", "5")["clusters"]
    assert [c["n_sightings"] for c in many] == [6]


def test_report_csv(built):
    clusters = report_json(built.db)["clusters"]
    code, out, _ = call("--db", built.db, "report", "--format", "csv")
    assert code == 0
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0][0] == "cluster_id"
    body = rows[1:]
    assert len(body) == sum(c["n_sightings"] for c in clusters)
    header = rows[0]
    sha_col, cluster_col = header.index("sha256"), header.index("cluster_id")
    assert {r[sha_col] for r in body} == {s["sha256"] for c in clusters for s in c["sightings"]}
    assert {int(r[cluster_col]) for r in body} == {c["id"] for c in clusters}


def test_report_to_file(built, tmp_path):
    target = tmp_path / "reuse.csv"
    code, out, _ = call("--db", built.db, "report", "--format", "csv", "-o", target)
    assert code == 0
    assert out == ""
    assert target.read_text(encoding="utf-8").startswith("cluster_id,")


def test_report_table(built):
    code, out, _ = call("--db", built.db, "report")
    assert code == 0
    assert "backpage-clone" in out
    assert "route:" in out
    head = re.fullmatch(r"(\d+) reused pictures, (\d+) seen on more than one platform",
                        out.splitlines()[0])
    report = report_json(built.db)
    assert head and int(head[1]) == report["n_clusters"]
    assert int(head[2]) == report["n_cross_platform"]
    assert out.count("route:") == report["n_clusters"]


@pytest.fixture
def hostile_db(tmp_path) -> Path:
    """One photo seen twice, with a formula and terminal escapes in its metadata."""
    shutil.copy(ASTRONAUT, tmp_path / "a.jpg")
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "platform", "url", "caption"])
        writer.writerow(["a.jpg", "citylist", '=HYPERLINK("http://evil.example")',
                         "hi \x1b[2J there"])
        writer.writerow(["a.jpg", "nightads", "@SUM(A1)", "\u202eevil"])
    db = tmp_path / "c.db"
    code, _, err = call("--db", db, "ingest", "--manifest", manifest)
    assert code == 0, err
    return db


def test_report_csv_neutralises_formulas(hostile_db):
    code, out, _ = call("--db", hostile_db, "report", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted(r["url"] for r in rows) == ["'=HYPERLINK(\"http://evil.example\")",
                                              "'@SUM(A1)"]
    code, out, _ = call("--db", hostile_db, "report", "--format", "csv", "--raw")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted(r["url"] for r in rows) == ['=HYPERLINK("http://evil.example")', "@SUM(A1)"]


def test_report_table_strips_control_characters(hostile_db):
    code, out, _ = call("--db", hostile_db, "report")
    assert code == 0
    assert "\x1b" not in out and "\u202e" not in out
    assert "hi ?[2J there" in out


# ---------------------------------------------------------- stats and indexes
def test_stats_json(built):
    code, out, _ = call("--db", built.db, "stats", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["images"] == 20
    assert info["sightings"] == 22
    assert info["platforms"] == 4
    assert info["failures"] == 0
    assert info["signals"] == {"pdq": 20, "phash": 20, "dhash": 20}
    assert info["local_features"] == 20  # built with the defaults: the robust tier
    assert info["platforms_by_sightings"] == {"citylist": 8, "backpage-clone": 5,
                                              "jobboard": 5, "nightads": 4}


def test_stats_human_output(built):
    code, out, _ = call("--db", built.db, "stats")
    assert code == 0
    assert re.search(r"images:\s+20", out)
    assert re.search(r"sightings:\s+22", out)
    assert "local features: 20 images" in out


def test_reindex_keeps_query_results(built):
    query = QUERIES / "temple_mirror_crop10.jpg"
    before = ranking(built.db, query)
    code, out, _ = call("--db", built.db, "reindex")
    assert code == 0
    assert set(out.split()) >= {"pdq:", "phash:", "dhash:", "20", "codes"}
    assert ranking(built.db, query) == before


def test_query_without_index_files_rebuilds_from_catalog(built):
    query = QUERIES / "cat_mirror_crop10.jpg"
    before = ranking(built.db, query)
    index_dir = Path(str(built.db) + ".indexes")
    assert index_dir.is_dir()
    shutil.rmtree(index_dir)
    assert ranking(built.db, query) == before
    code, _, _ = call("--db", built.db, "reindex")
    assert code == 0
    assert index_dir.is_dir()


def test_damaged_index_file_is_rebuilt(built):
    query = QUERIES / "astronaut_mirror_crop10.jpg"
    before = ranking(built.db, query)
    index_dir = Path(str(built.db) + ".indexes")
    index_file = index_dir / "pdq.mih" / "codes.npy"
    index_file.write_bytes(b"\0" * 64)
    assert ranking(built.db, query) == before


# ---------------------------------------------------------------------- usage
def test_ingest_without_inputs_is_a_usage_error(tmp_path):
    db = tmp_path / "c.db"
    code, _, err = call("--db", db, "ingest")
    assert code == 2
    assert "manifest" in err
    assert not db.exists()


def test_unknown_signal_is_refused_with_the_known_ones(tmp_path):
    db = tmp_path / "c.db"
    code, out, err = call("--db", db, "ingest", ASTRONAUT, "--signals", "pdq,nope")
    assert code in (2, 3)
    message = out + err
    assert "nope" in message
    for name in SIGNALS:
        assert name in message
    assert not db.exists()


def test_bad_option_values_are_usage_errors(built):
    assert call("--db", built.db, "query", ASTRONAUT, "--top-k", "0")[0] == 2
    assert call("--db", built.db, "query", ASTRONAUT, "--min-score", "1.5")[0] == 2
    assert call("--db", built.db, "report", "--format", "xml")[0] == 2
    assert call("--db", built.db, "nosuchcommand")[0] == 2
    assert call("--db", built.db, "query")[0] == 2
    assert call("hash")[0] == 2


def test_query_without_collection_is_fatal(tmp_path):
    db = tmp_path / "missing.db"
    code, out, err = call("--db", db, "query", ASTRONAUT)
    assert code == 3
    assert "no collection" in err
    assert str(db) in err
    assert out == ""
    assert not db.exists()


@pytest.mark.parametrize("command", [["stats"], ["report"]])
def test_read_commands_without_collection_are_fatal(tmp_path, command):
    code, _, err = call("--db", tmp_path / "missing.db", *command)
    assert code == 3
    assert err.startswith("error:")


def test_ingest_directory_with_platform(tmp_path):
    folder = tmp_path / "crawl"
    folder.mkdir()
    shutil.copy(ASTRONAUT, folder / "a.jpg")
    (folder / "readme.txt").write_text("not an image")
    db = tmp_path / "c.db"
    code, out, err = call("--db", db, "ingest", folder, "--platform", "citylist", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["files_seen"], summary["images_added"]) == (1, 1)
    code, lines = query_json(db, ASTRONAUT)
    (match,) = lines[0]["matches"]
    assert [s["platform"] for s in match["sightings"]] == ["citylist"]


# ---------------------------------------------------------------- subprocess
def run_console(*argv: object, db: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "IMGMATCH_DB": str(db)}
    return subprocess.run([sys.executable, "-m", "imgmatch.cli", *map(str, argv)],
                          env=env, capture_output=True, text=True, timeout=120)


def test_console_query_uses_imgmatch_db(built):
    proc = run_console("query", QUERIES / "astronaut_mirror_crop10.jpg", "--json", db=built.db)
    assert proc.returncode == 0, proc.stderr
    (line,) = json_lines(proc.stdout)
    assert sha256_of(ASTRONAUT) in {m["sha256"] for m in line["matches"]}


def test_console_exit_code_for_missing_collection(tmp_path):
    proc = run_console("stats", "--json", db=tmp_path / "missing.db")
    assert proc.returncode == 3
    assert "no collection" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


# ------------------------------------------------------------- reported bugs
def error_line(err: str) -> str:
    """The one 'Error:' line of a usage error (click prints usage lines above it)."""
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("Error:")]
    return line


@pytest.fixture
def small(tmp_path) -> Path:
    """A fresh collection of two photos (cheap enough to change in each test)."""
    db = tmp_path / "small.db"
    code, _, err = call("--db", db, "ingest", ASTRONAUT, FIXTURES / "originals" / "cat.jpg",
                        "--workers", "0", "--quiet")
    assert code == 0, err
    return db


@pytest.mark.parametrize("args, option, expected", [
    (["query", "--pdq", "123"], "--pdq", "64 hex digits"),
    (["query", "--pdq", "g" * 64], "--pdq", "hex"),
    (["ignore", "--pdq", "xyz"], "--pdq", "64 hex digits"),
    (["ingest", ASTRONAUT, "--signals", "foo"], "--signals", "known signals"),
    (["hash", ASTRONAUT, "--signals", "foo"], "--signals", "known signals"),
    (["upgrade", "--signals", "pdq,foo"], "--signals", "known signals"),
    (["link", "--signal", "foo"], "--signal", "known signals"),
    (["report", "--since", "last tuesday"], "--since", "YYYY-MM-DD"),
    (["show", "not-hex-at-all"], "SHA256", "hex"),
    (["erase", "abc123"], "SHA256", "8"),
    (["ignore", "12345zz9"], "SHA256", "hex"),
])
def test_malformed_arguments_exit_2_naming_the_option(small, args, option, expected):
    before = call("--db", small, "stats", "--json")[1]
    code, out, err = call("--db", small, *args)
    assert code == 2, err
    line = error_line(err)
    assert option in line and expected in line
    assert json.loads(call("--db", small, "stats", "--json")[1])["runs"] == \
        json.loads(before)["runs"]  # nothing ran


def test_malformed_signal_list_creates_no_collection(tmp_path):
    db = tmp_path / "c.db"
    code, _, err = call("--db", db, "ingest", ASTRONAUT, "--signals", "pdq,nope")
    assert code == 2
    assert "'nope'" in error_line(err)
    assert not db.exists()


@pytest.mark.parametrize("target", ["missing/dir/x.html", "a-file/x.html"])
def test_report_to_an_unusable_output_is_a_clear_error(built, tmp_path, target):
    (tmp_path / "a-file").write_text("not a folder")
    code, out, err = call("--db", built.db, "report", "--format", "html",
                          "-o", tmp_path / target)
    assert code == 2, err
    line = error_line(err)
    assert "--output" in line and str((tmp_path / target).parent) in line
    assert not (tmp_path / "missing").exists()


def test_report_output_that_cannot_be_opened_is_a_clear_error(built, tmp_path):
    (tmp_path / "taken").mkdir()
    code, out, err = call("--db", built.db, "report", "-o", tmp_path / "taken")
    assert code == 2
    assert "taken" in error_line(err)


@pytest.mark.parametrize("command", [
    ["ingest", ASTRONAUT], ["stats"], ["report"], ["query", ASTRONAUT], ["show", "a" * 64],
    ["ignore", "--list"], ["link"], ["reindex"], ["upgrade"], ["erase", "a" * 64],
    ["keys", "list"], ["keys", "add", "bot", "--scope", "read"],
])
def test_db_in_a_missing_folder_is_refused(tmp_path, command):
    db = tmp_path / "nonexistent" / "dir" / "x.db"
    code, out, err = call("--db", db, *command)
    assert code == 2, err
    line = error_line(err)
    assert "--db" in line and str(db.parent) in line and "does not exist" in line
    assert not (tmp_path / "nonexistent").exists()


def test_import_hashes_with_db_in_a_missing_folder_is_refused(tmp_path):
    listing = tmp_path / "l.txt"
    listing.write_text("pdq " + "a" * 64 + "\n")
    code, _, err = call("--db", tmp_path / "no" / "x.db", "import-hashes", listing)
    assert code == 2 and "--db" in error_line(err)
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("args", [
    ["nosuch.jpg"],
    ["nosuch.jpg", "other-missing.warc.gz"],
    ["--manifest", "nosuch.csv"],
    [ASTRONAUT, "--manifest", "nosuch.csv"],
    ["--scrapy-items", "nosuch.jsonl", "--scrapy-store", "."],
])
def test_ingest_of_inputs_that_do_not_exist_creates_nothing(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "c.db"
    code, out, err = call("--db", db, "ingest", *args)
    assert code == 2, err
    assert "nosuch" in error_line(err)
    assert not db.exists() and not Path(str(db) + ".indexes").exists()


def test_import_of_a_missing_hash_list_creates_nothing(tmp_path):
    db = tmp_path / "c.db"
    code, _, err = call("--db", db, "import-hashes", tmp_path / "nosuch.txt")
    assert code == 2 and "nosuch.txt" in error_line(err)
    assert not db.exists()


def test_missing_path_beside_one_that_exists_is_a_recorded_failure(tmp_path):
    db = tmp_path / "c.db"
    code, out, err = call("--db", db, "ingest", tmp_path / "gone.jpg", ASTRONAUT,
                          "--workers", "0", "--json")
    assert code == 1, err
    summary = json.loads(out)
    assert summary["images_added"] == 1
    assert [(f["source"], f["reason"]) for f in summary["failures"]] == [
        (str(tmp_path / "gone.jpg"), "missing-file")]


def test_show_ignore_and_erase_accept_a_unique_prefix(small):
    sha = sha256_of(ASTRONAUT)
    code, out, err = call("--db", small, "show", sha[:8], "--json")
    assert code == 0, err
    assert json.loads(out)["sha256"] == sha
    code, out, _ = call("--db", small, "show", sha[:12].upper())
    assert code == 0 and f"image {sha}" in out
    assert call("--db", small, "ignore", sha[:10], "--reason", "stock")[0] == 0
    code, out, _ = call("--db", small, "ignore", "--list")
    assert sha in out and "stock" in out
    code, out, err = call("--db", small, "erase", sha[:8])
    assert (code, out.strip()) == (0, "erased 1 image"), err
    assert json.loads(call("--db", small, "stats", "--json")[1])["images"] == 1


def test_ambiguous_and_unknown_prefixes_are_clear_errors(small):
    from imgmatch.records import ImageRow
    from imgmatch.collection import Collection

    twins = ["deadbeef" + "0" * 56, "deadbeef" + "1" * 56]
    with Collection.open(small) as collection:
        collection.catalog.write_batch(
            [ImageRow(s, 1, 1, 1, "PNG", "L", 1, ()) for s in twins], [], [], None)
        assert collection.resolve("deadbeef1") == twins[1]
        assert collection.resolve(twins[0].upper()) == twins[0]
    code, out, err = call("--db", small, "show", "deadbeef")
    assert code == 3
    assert "ambiguous" in err and twins[0] in err and twins[1] in err
    assert "Traceback" not in err and out == ""
    code, _, err = call("--db", small, "erase", "deadbeef")
    assert code == 3 and "ambiguous" in err
    assert json.loads(call("--db", small, "stats", "--json")[1])["images"] == 4
    code, _, err = call("--db", small, "erase", "0123456789")
    assert code == 3 and "no image" in err and "0123456789" in err


def test_emit_matches_failures_are_objects_and_the_summary_has_no_null(tmp_path):
    stream = tmp_path / "in.jsonl"
    stream.write_text(json.dumps({"path": str(ASTRONAUT)}) + "\n"
                      + json.dumps({"path": str(tmp_path / "gone.jpg")}) + "\n"
                      + json.dumps({"data_b64": "bm90IGFuIGltYWdl"}) + "\n")
    db = tmp_path / "c.db"
    code, out, err = call("--db", db, "ingest", "--jsonl", stream, "--emit-matches",
                          "--workers", "0")
    assert code == 1, err
    lines = json_lines(out)
    assert [x["status"] for x in lines] == ["added", "failed", "failed"]
    assert lines[1]["error"]["reason"] == "missing-file"
    assert lines[2]["error"]["reason"] == "unsupported-format"
    assert all(isinstance(x["error"]["message"], str) and x["error"]["message"]
               for x in lines[1:])
    summary = json.loads(err.strip().splitlines()[-1])
    assert summary["failed"] == 2
    assert summary.get("failures", []) is not None


def test_emit_matches_keeps_the_input_order_and_names_each_line(tmp_path):
    """A pipeline matches output lines to input lines: in the input's order
    (a line that fails while it is read waits for the lines before it, which
    the workers are still decoding) and each with its input line number."""
    originals = sorted((FIXTURES / "originals").glob("*.jpg"))
    rows = [json.dumps({"path": str(p)}) for p in originals[:3]]
    rows.insert(2, "not json")
    rows.insert(3, json.dumps({"data_b64": "%%%"}))
    rows.append("")  # a blank line is skipped, and counts
    rows.append(json.dumps({"path": str(originals[3])}))
    stream = tmp_path / "in.jsonl"
    stream.write_text("\n".join(rows) + "\n")
    code, out, err = call("--db", tmp_path / "c.db", "ingest", "--jsonl", stream,
                          "--emit-matches", "--workers", "2")
    assert code == 1, err
    lines = json_lines(out)
    assert [x["line"] for x in lines] == [1, 2, 3, 4, 5, 7]
    assert [x["status"] for x in lines] == ["added", "added", "failed", "failed", "added",
                                            "added"]
    assert [x["source"] for x in lines if x["status"] == "added"] == \
        [str(p) for p in originals[:4]]


def test_quiet_prints_nothing_but_a_count_of_failures(tmp_path):
    db = tmp_path / "c.db"
    code, out, err = call("--db", db, "ingest", ASTRONAUT, "--workers", "0", "--quiet")
    assert (code, out, err) == (0, "", "")
    code, out, err = call("--db", db, "ingest", ASTRONAUT, tmp_path / "gone.jpg",
                          "--workers", "0", "--quiet")
    assert code == 1 and out == ""
    assert err.strip() == "1 file could not be used ('imgmatch stats' lists them)"
    code, out, err = call("--db", db, "upgrade", "--robust", "--workers", "0", "--quiet")
    assert (code, out, err) == (0, "", "")


def test_the_camera_capture_date_is_metadata_of_the_image(tmp_path):
    """A timeline of crawl dates says when ads ran; the camera's date (EXIF) says
    when the picture was taken, often years before: kept with the image."""
    from PIL import Image

    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2019:07:14 22:05:00"
    photo, repost = tmp_path / "photo.jpg", tmp_path / "repost.jpg"
    Image.open(ASTRONAUT).save(photo, exif=exif)
    Image.open(ASTRONAUT).save(repost, quality=70)  # re-encoded: no EXIF
    db = tmp_path / "c.db"
    assert call("--db", db, "ingest", photo, repost, "--workers", "0", "--quiet")[0] == 0
    sha = hashlib.sha256(photo.read_bytes()).hexdigest()
    record = json.loads(call("--db", db, "show", sha, "--json")[1])
    assert record["captured_at"] == "2019-07-14T22:05:00"
    assert "taken 2019-07-14T22:05:00" in call("--db", db, "show", sha)[1]
    report = json.loads(call("--db", db, "report", "--format", "json")[1])
    (cluster,) = report["clusters"]
    assert {i["sha256"]: i.get("captured_at") for i in cluster["images"]}[sha] == \
        "2019-07-14T22:05:00"


def test_stats_last_runs_give_no_null_lists(tmp_path):
    db = tmp_path / "c.db"
    code, _, err = call("--db", db, "ingest", tmp_path / "gone.jpg", tmp_path / "gone2.jpg",
                        ASTRONAUT, "--workers", "0", "--quiet")
    assert code == 1, err
    assert call("--db", db, "upgrade", "--quiet")[0] == 0
    code, out, _ = call("--db", db, "stats", "--json")
    runs = json.loads(out)["last_runs"]
    assert [r["command"] for r in runs] == ["upgrade", "ingest"]
    assert runs[1]["stats"]["failed"] == 2
    for run in runs:
        assert None not in (run["stats"].get("failures", []),
                            run["stats"].get("unreachable_images", []))


@pytest.fixture
def one_picture_db(tmp_path) -> Path:
    """One photo seen twice in one ad on one platform: every count in the report is 1 or 2."""
    shutil.copy(ASTRONAUT, tmp_path / "a.jpg")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,platform,url,ad_id\na.jpg,citylist,https://x.example/1,7\n"
                        "a.jpg,citylist,https://x.example/2,7\n", encoding="utf-8")
    db = tmp_path / "c.db"
    code, _, err = call("--db", db, "ingest", "--manifest", manifest, "--robust",
                        "--workers", "0")
    assert code == 0, err
    return db


def test_counts_of_one_are_singular(one_picture_db):
    code, out, _ = call("--db", one_picture_db, "report")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "1 reused picture, 0 seen on more than one platform"
    assert re.search(r"cluster \d+: 1 platform, 1 image, 2 sightings, 1 ad, ", out)
    code, out, _ = call("--db", one_picture_db, "stats")
    assert "local features: 1 image (robust tier)" in out
    code, out, _ = call("--db", one_picture_db, "reindex")
    assert "pdq: 1 code\n" in out


def test_every_option_has_help_text():
    from imgmatch.cli import cli

    def walk(group, prefix=""):
        for name, command in group.commands.items():
            yield prefix + name, command
            if hasattr(command, "commands"):
                yield from walk(command, f"{prefix}{name} ")

    lacking = [f"{name} {param.opts[-1]}" for name, command in walk(cli)
               for param in command.params
               if param.param_type_name == "option" and not param.help
               and param.name not in ("help", "version")]
    assert lacking == []
