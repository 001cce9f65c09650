"""Hashes out (imgmatch export-hashes): each format read back, hostile text
kept out of every line a partner's tool parses, filters, low quality, the
audit entry, and the docs' commands run as written."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import imgmatch
from imgmatch.cli import main
from imgmatch.hashlists import read_hash_list
from imgmatch.sources import iter_manifest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
HEX64 = r"[0-9a-f]{64}"
NAME = rf"(?:{HEX64}|pdq:{HEX64})"
#: What a line of each format may be, whole: nothing crawled fits in it.
LINE = {
    "pytx": re.compile(rf"pdq {HEX64}"),
    "meta-csv": re.compile(rf"{HEX64},\d{{0,3}},{NAME}"),
    "hma-csv": re.compile(rf"pdq,{HEX64},\d{{0,3}},{NAME}"),
}
HOSTILE = 'evil\nplatform,"quoted"\x00\u2028next\r\nline'


def _manifest_truth() -> dict[str, list[dict[str, str]]]:
    """Each manifest file's SHA-256 -> its manifest rows."""
    out: dict[str, list[dict[str, str]]] = {}
    with (FIXTURES / "manifest.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            sha = hashlib.sha256((FIXTURES / row["path"]).read_bytes()).hexdigest()
            out.setdefault(sha, []).append(row)
    return out


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    """The fixtures' crawl, catalogued once (thumbnails kept, so an export
    that leaked one would show it)."""
    db = tmp_path_factory.mktemp("export") / "case.db"
    with imgmatch.Collection.open(db) as c:
        c.ingest(iter_manifest(FIXTURES / "manifest.csv"), thumbnails=True)
    return db


def _export(db: Path, capsys, *args: str) -> tuple[str, dict]:
    """(what an export wrote to standard output, its summary from standard error)."""
    code = main(["--db", str(db), "export-hashes", *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out, json.loads(captured.err.strip().splitlines()[-1])


def _jsonl(text: str) -> tuple[dict, list[dict]]:
    header, *records = (json.loads(line) for line in text.splitlines())
    return header, records


def _pdq_of(db: Path) -> dict[str, tuple[str, int | None]]:
    """Each catalogued image's name -> (its PDQ hex, quality), from the catalog."""
    out = {}
    with imgmatch.Collection.open(db, readonly=True) as c:
        for sha in _manifest_truth():
            value = c.image(sha).signals["pdq"]
            out[sha] = (value.hex, value.quality)
    return out


# ------------------------------------------------------------ each format
def test_every_format_reads_back_as_the_catalog_holds_it(case, capsys, tmp_path):
    truth = _pdq_of(case)
    assert len(truth) == 20

    out, summary = _export(case, capsys, "--format", "pytx")
    assert (summary["lines"], summary["low_quality"], summary["format"]) == (20, 0, "pytx")
    (tmp_path / "l.txt").write_text(out)
    lines = list(read_hash_list(tmp_path / "l.txt"))
    assert [line.name for line in lines] == [None] * 20  # names never share the hash's line
    assert sorted(line.value.hex() for line in lines) == sorted(h for h, _ in truth.values())

    out, _ = _export(case, capsys, "--format", "meta-csv")
    (tmp_path / "m.csv").write_text(out)
    assert {line.name: (line.value.hex(), line.quality)
            for line in read_hash_list(tmp_path / "m.csv")} == truth

    out, _ = _export(case, capsys, "--format", "hma-csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["signal_type", "signal_str", "quality", "content_id"]
    assert {r["content_id"]: (r["signal_str"], int(r["quality"])) for r in rows} == truth
    assert {r["signal_type"] for r in rows} == {"pdq"}

    out, _ = _export(case, capsys, "--format", "jsonl")
    header, records = _jsonl(out)
    assert header["imgmatch_hash_export"] == 1 and header["signal"] == "pdq"
    assert header["made_with"]["signals"]["pdq"]["threshold"] == 31
    assert header["quality_gate"] == 50
    assert {r["sha256"]: (r["hex"], r["quality"]) for r in records} == truth
    manifest = _manifest_truth()
    for r in records:
        rows = manifest[r["sha256"]]
        assert r["hash_key"] is None and r["cluster"] is None and not r["low_quality"]
        assert r["sightings"] == {
            "count": len(rows), "platforms": sorted({x["platform"] for x in rows}),
            "first_seen": min(x["posted_at"] for x in rows),
            "last_seen": max(x["posted_at"] for x in rows)}


def test_no_picture_and_no_crawled_text_leaves(case, capsys):
    """Thumbnails were stored; no format carries one, nor a URL, phone, city
    or file name of the crawl: only hashes, qualities and imgmatch's names."""
    for fmt in imgmatch.HASH_EXPORT_FORMATS:
        out, _ = _export(case, capsys, "--format", fmt)
        assert out.isascii()
        for needle in ("\xff\xd8", "/9j/", "JFIF", "http", "555-01", "Houston", ".jpg",
                       "reposts/"):
            assert needle not in out, (fmt, needle)
        for line in out.splitlines()[1 if fmt in ("hma-csv", "jsonl") else 0:]:
            if fmt in LINE:
                assert LINE[fmt].fullmatch(line), (fmt, line)


def test_stdout_and_a_file_hold_the_same_and_the_file_is_replaced_whole(case, capsys,
                                                                        tmp_path):
    out, _ = _export(case, capsys, "--format", "meta-csv")
    target = tmp_path / "list.csv"
    target.write_text("old\n")
    _, summary = _export(case, capsys, "--format", "meta-csv", "-o", str(target))
    assert target.read_text() == out and summary["output"] == str(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # about victims: the owner's only
    assert summary["sidecar"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.csv"]


def test_pytx_to_a_file_has_a_sidecar_line_by_line(case, capsys, tmp_path):
    target = tmp_path / "case.pdq.txt"
    _, summary = _export(case, capsys, "--format", "pytx", "-o", str(target))
    sidecar = Path(summary["sidecar"])
    assert sidecar == tmp_path / "case.pdq.txt.meta.jsonl"
    header, records = _jsonl(sidecar.read_text())
    assert header["imgmatch_hash_export"] == 1
    lines = target.read_text().splitlines()
    assert [r["line"] for r in records] == list(range(1, len(lines) + 1))
    assert [f"pdq {r['hex']}" for r in records] == lines


# ---------------------------------------------------------- hostile names
def test_hostile_names_break_no_line_and_inject_no_row(tmp_path, capsys):
    """A platform, a source and a partner's hash name full of line breaks,
    commas, quotes and NUL: every format keeps one hash per line; jsonl
    carries the platform exactly, escaped; the others never carry it."""
    db = tmp_path / "c.db"
    with imgmatch.Collection.open(db) as c:
        c.add(FIXTURES / "originals" / "cat.jpg",
              imgmatch.Sighting(platform=HOSTILE, source=HOSTILE + ".jpg",
                                url="https://x.example/1.jpg", extra={"phone": HOSTILE}))
        c.add(FIXTURES / "originals" / "temple.jpg", imgmatch.Sighting(platform="plain"))
        listing = tmp_path / "partner.csv"
        other = imgmatch.hash_bytes((FIXTURES / "originals" / "rocket.jpg").read_bytes())
        listing.write_text(f"{other['signals']['pdq']['hex']},90,a\x00b,\"c\n", newline="")
        c.import_hashes(listing, platform=HOSTILE)
    for fmt in imgmatch.HASH_EXPORT_FORMATS:
        out, summary = _export(db, capsys, "--format", fmt)
        assert summary["lines"] == 3
        assert out.isascii() and "\r" not in out and "\x00" not in out
        lines = out.split("\n")
        assert lines[-1] == "" and len(lines) - 1 == 3 + (fmt in ("hma-csv", "jsonl"))
        if fmt == "jsonl":
            _, records = _jsonl(out)
            assert [r["sightings"]["platforms"] for r in records] == [
                [HOSTILE], ["plain"], [HOSTILE]]
            assert records[2]["sha256"] is None
            assert records[2]["hash_key"] == f"pdq:{records[2]['hex']}"
        else:
            assert "evil" not in out and "quoted" not in out
            for line in lines[1 if fmt == "hma-csv" else 0:-1]:
                assert LINE[fmt].fullmatch(line), (fmt, line)
        if fmt == "hma-csv":
            assert len(list(csv.reader(io.StringIO(out)))) == 4


# ---------------------------------------------------------------- filters
def test_filter_by_cluster_names_the_cluster(case, capsys):
    with imgmatch.Collection.open(case, readonly=True) as c:
        clusters = c.clusters()
    first, second = clusters[0], clusters[1]
    out, summary = _export(case, capsys, "--format", "jsonl", "--cluster", str(first.id),
                           "--cluster", str(second.id))
    header, records = _jsonl(out)
    assert header["filters"]["clusters"] == sorted([first.id, second.id])
    expected = {img["sha256"]: c.id for c in (first, second) for img in c.images}
    assert {r["sha256"]: r["cluster"] for r in records} == expected
    assert summary["lines"] == len(expected)


def test_an_unknown_cluster_is_an_error_that_writes_nothing(case, capsys, tmp_path):
    before = _audit_actions(case)
    code = main(["--db", str(case), "export-hashes", "--cluster", "99999", "-o",
                 str(tmp_path / "x.txt")])
    err = capsys.readouterr().err
    assert code == 3 and "no cluster 99999" in err and "imgmatch report" in err
    assert list(tmp_path.iterdir()) == []
    assert _audit_actions(case) == before


def test_filter_by_platform_and_dates_keeps_images_seen_there_then(case, capsys):
    manifest = _manifest_truth()
    out, _ = _export(case, capsys, "--format", "jsonl", "--platform", "nightads",
                     "--platform", "jobboard")
    got = {r["sha256"] for r in _jsonl(out)[1]}
    assert got == {sha for sha, rows in manifest.items()
                   if {"nightads", "jobboard"} & {r["platform"] for r in rows}}

    out, _ = _export(case, capsys, "--format", "jsonl", "--since", "2024-03-09",
                     "--until", "2024-09-17")
    got = {r["sha256"] for r in _jsonl(out)[1]}
    assert got == {sha for sha, rows in manifest.items()
                   if any("2024-03-09" <= r["posted_at"][:10] <= "2024-09-17" for r in rows)}
    assert len(got) == 5  # both bounds inclusive: 2024-03-09 and 2024-09-17 are in

    out, _ = _export(case, capsys, "--format", "jsonl", "--platform", "citylist",
                     "--since", "2025-01-01")
    (record,) = _jsonl(out)[1]
    # kept for its 2025 citylist sighting; its summary tells its whole story
    assert record["sightings"]["platforms"] == ["citylist"]
    assert record["sightings"]["first_seen"].startswith("2025-06-30")


@pytest.mark.parametrize("args, message", [
    (["--since", "yesterday"], "not a date"),
    (["--signal", "nope"], "unknown signal"),
    (["--signal", "pdq,phash"], "name one signal"),
    (["--format", "csv"], "'csv' is not one of"),
])
def test_bad_options_are_usage_errors(case, capsys, args, message):
    assert main(["--db", str(case), "export-hashes", *args]) == 2
    assert message in capsys.readouterr().err


def test_without_a_collection_nothing_is_made(tmp_path, capsys):
    db = tmp_path / "missing.db"
    code = main(["--db", str(db), "export-hashes", "-o", str(tmp_path / "x.txt")])
    assert code == 3 and capsys.readouterr().err.startswith("error:")
    assert list(tmp_path.iterdir()) == []


def test_a_format_carries_only_the_signals_its_readers_know(case, capsys):
    for fmt in ("pytx", "hma-csv", "meta-csv"):
        assert main(["--db", str(case), "export-hashes", "--format", fmt,
                     "--signal", "phash"]) == 3
        assert "use --format jsonl for phash" in capsys.readouterr().err
    out, summary = _export(case, capsys, "--format", "jsonl", "--signal", "phash")
    header, records = _jsonl(out)
    assert header["signal"] == "phash" and summary["lines"] == 20
    assert all(re.fullmatch(r"[0-9a-f]{16}", r["hex"]) for r in records)


def test_ignored_images_are_left_out_and_counted(tmp_path, capsys):
    db = tmp_path / "c.db"
    with imgmatch.Collection.open(db) as c:
        kept = c.add(FIXTURES / "originals" / "cat.jpg",
                     imgmatch.Sighting(platform="a")).sha256
        stock = c.add(FIXTURES / "originals" / "temple.jpg",
                      imgmatch.Sighting(platform="b")).sha256
        c.ignore(sha256=stock, reason="stock photo")
    out, summary = _export(db, capsys, "--format", "jsonl")
    assert [r["sha256"] for r in _jsonl(out)[1]] == [kept]
    assert (summary["lines"], summary["ignored"]) == (1, 1)
    _, summary = _export(db, capsys, "--format", "jsonl", "--platform", "a")
    assert (summary["lines"], summary["ignored"]) == (1, 0)  # not one the filter chose


# ------------------------------------------------------------ low quality
def _flat_png(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (256, 256), (shade, shade + 10, shade + 20)).save(buf, "PNG")
    return buf.getvalue()


def test_low_quality_hashes_are_written_with_their_quality_and_counted(tmp_path, capsys):
    db = tmp_path / "c.db"
    with imgmatch.Collection.open(db) as c:
        good = c.add(FIXTURES / "originals" / "cat.jpg").sha256
        flat = c.add(_flat_png(120)).sha256
        listing = tmp_path / "partner.csv"
        other = imgmatch.hash_bytes((FIXTURES / "originals" / "rocket.jpg").read_bytes())
        weak, unknown = other["signals"]["pdq"]["hex"], "f" * 64
        listing.write_text(f"{weak},12,weak-one\npdq {unknown}\n")
        c.import_hashes(listing, platform="partner")
        assert c.image(flat).signals["pdq"].quality < 50

    out, summary = _export(db, capsys, "--format", "meta-csv")
    assert (summary["lines"], summary["low_quality"], summary["skipped_low_quality"]) == \
        (4, 2, 0)
    (tmp_path / "m.csv").write_text(out)
    qualities = {line.name: line.quality for line in read_hash_list(tmp_path / "m.csv")}
    assert qualities[good] == 100 and qualities[flat] == 0
    assert qualities[f"pdq:{weak}"] == 12
    assert qualities[f"pdq:{unknown}"] is None  # imported without one: not low, unknown

    out, summary = _export(db, capsys, "--format", "jsonl")
    flags = {r["sha256"] or r["hash_key"]: r["low_quality"] for r in _jsonl(out)[1]}
    assert flags == {good: False, flat: True, f"pdq:{weak}": True, f"pdq:{unknown}": False}

    out, summary = _export(db, capsys, "--format", "pytx", "-o", str(tmp_path / "l.txt"))
    assert (summary["lines"], summary["low_quality"]) == (4, 2)
    _, side = _jsonl(Path(summary["sidecar"]).read_text())
    assert [r["quality"] for r in side] == [100, 0, 12, None]

    out, summary = _export(db, capsys, "--format", "meta-csv", "--min-quality", "50")
    assert (summary["lines"], summary["low_quality"], summary["skipped_low_quality"]) == \
        (2, 0, 2)
    assert {line.split(",")[2] for line in out.splitlines()} == {good, f"pdq:{unknown}"}


def test_a_pytx_export_of_one_hash_says_threatexchange_will_not_match_it(tmp_path, capsys):
    db = tmp_path / "c.db"
    with imgmatch.Collection.open(db) as c:
        c.add(FIXTURES / "originals" / "cat.jpg")
    _, summary = _export(db, capsys, "--format", "pytx")
    assert summary["lines"] == 1 and "#1318" in summary["notes"][0]
    _, summary = _export(db, capsys, "--format", "jsonl")
    assert summary["notes"] == []


# ------------------------------------------------------------------ audit
def _audit_actions(db: Path) -> list[tuple[str, dict]]:
    with imgmatch.Collection.open(db, readonly=True) as c:
        return [(e.action, e.details) for e in c.audit_entries()]


def test_an_export_is_audited_with_counts_never_hashes(case, capsys, tmp_path):
    _export(case, capsys, "--format", "hma-csv", "--platform", "nightads",
            "--since", "2024-01-01", "-o", str(tmp_path / "h.csv"))
    action, details = _audit_actions(case)[-1]
    assert action == "export-hashes"
    assert details == {"format": "hma-csv", "signal": "pdq", "lines": 4, "low_quality": 0,
                       "skipped_low_quality": 0, "clusters": 0, "platforms": ["nightads"],
                       "since": "2024-01-01", "until": None, "min_quality": None,
                       "to_file": True}
    with imgmatch.Collection.open(case, readonly=True) as c:
        assert c.verify_audit()["ok"]


def test_the_library_writes_to_any_stream(case):
    buf = io.StringIO()
    with imgmatch.Collection.open(case, readonly=True) as c:
        summary = c.export_hashes(buf, "meta-csv", platforms=["nightads"])
        with pytest.raises(imgmatch.ExportError, match="carries pdq hashes only"):
            c.export_hashes(io.StringIO(), "pytx", signal="dhash")
        with pytest.raises(imgmatch.ExportError, match="no hash export format 'csv'"):
            c.export_hashes(io.StringIO(), "csv")
        with pytest.raises(imgmatch.SignalError, match="'orb' is local features, not a hash"):
            c.export_hashes(io.StringIO(), "jsonl", signal="orb")
    assert summary["lines"] == 4 == len(buf.getvalue().splitlines())


# ------------------------------------------------------------------- docs
def export_section() -> str:
    text = (ROOT / "docs" / "exchange.md").read_text()
    match = re.search(r"^## Export\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, "docs/exchange.md has no '## Export' section"
    return match.group(1)


def bash_blocks(section: str) -> list[str]:
    """The section's ```bash blocks: the commands a reader runs, and this test
    runs (```sh blocks need a running HMA and are shown, not run)."""
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def run_blocks(blocks: list[str], workdir: Path) -> list[subprocess.CompletedProcess]:
    """Each block as a bash script, in order, in one folder beside the fixtures."""
    (workdir / "fixtures").symlink_to(FIXTURES)
    (workdir / "home").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "IMGMATCH_DB"}
    env.update(HOME=str(workdir / "home"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    done = []
    for block in blocks:
        run = subprocess.run(["bash", "-c", "set -euo pipefail\n" + block], cwd=workdir,
                             env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{block}\n{run.stderr[-2000:]}"
        done.append(run)
    return done


def test_the_export_docs_commands_run(tmp_path):
    section = export_section()
    assert "/tmp/" not in section and "/work/" not in section and "/root/" not in section
    blocks = [b for b in bash_blocks(section) if "threatexchange " not in b]
    assert blocks and any(" export-hashes " in b for b in blocks)
    runs = run_blocks(blocks, tmp_path)
    for fmt in imgmatch.HASH_EXPORT_FORMATS:
        assert f"--format {fmt}" in section, f"the docs show no {fmt} export"
    summaries = [json.loads(line) for run in runs for line in run.stderr.splitlines()
                 if line.startswith('{"format"')]
    assert summaries and all(s["lines"] > 0 for s in summaries)
