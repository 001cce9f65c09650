"""Crawl-scale ingest: worker isolation, kill-and-resume, WARC, stdin and Scrapy sources."""

from __future__ import annotations

import base64
import faulthandler
import gc
import hashlib
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgmatch
from imgmatch import signals as registry
from imgmatch.catalog import Catalog
from imgmatch.decode import Decoded
from imgmatch.ingest import ingest
from imgmatch.signals.base import HashValue, SignalType
from imgmatch.sources import iter_jsonl_stream, iter_paths, iter_scrapy
from imgmatch.warc import iter_warc

from conftest import png_bomb

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def jpeg_bytes(seed: int, size: tuple[int, int] = (96, 72), quality: int = 90) -> bytes:
    """A distinct, photo-like test image (smooth random blobs)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small, "RGB").resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _cli_ingest(db: Path, *args: object) -> tuple[int, dict]:
    """``imgmatch --db DB ingest ARGS... --json`` in this process: (exit code, summary)."""
    import contextlib

    from imgmatch.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--db", str(db), "ingest", *map(str, args), "--json"])
    return code, json.loads(out.getvalue())


# ----------------------------------------------------------- worker isolation
class _Saboteur(SignalType):
    """A signal whose 'decoder' segfaults on 13-px-wide images, hangs on 17 and
    asks for more memory than a worker may take on 19."""

    name = "saboteur"
    bits = 64
    threshold = 0

    def compute(self, image: Decoded) -> HashValue:
        if image.image.size[0] == 13:
            # a meant crash: no "Fatal Python error" dump (pytest's faulthandler,
            # inherited through fork, would print one into the test output)
            faulthandler.disable()
            os.kill(os.getpid(), signal.SIGSEGV)
        if image.image.size[0] == 17:
            time.sleep(3600)
        if image.image.size[0] == 19:  # runs away: asks for 8 GB (never touched)
            np.empty(8 << 30, np.uint8)
        return HashValue(self.name, bytes(8), 100)


@pytest.fixture
def saboteur():
    registry.register(_Saboteur)
    yield "saboteur"
    registry._REGISTRY.pop("saboteur", None)


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(),
                    reason="the saboteur signal reaches workers only through fork")
def test_a_crashing_or_hanging_decoder_costs_one_file(tmp_path, saboteur):
    folder = tmp_path / "in"
    folder.mkdir()
    for n in range(6):
        (folder / f"good{n}.png").write_bytes(_png((40 + n, 30)))
    (folder / "crash.png").write_bytes(_png((13, 30)))
    (folder / "hang.png").write_bytes(_png((17, 30)))
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        summary = c.ingest(iter_paths([folder]), signals=("saboteur",), workers=2, timeout=3)
    reasons = {Path(source).name: reason for source, reason, _ in summary.failures}
    assert reasons == {"crash.png": "decoder-crash", "hang.png": "timeout"}
    details = " ".join(d for _, _, d in summary.failures)
    assert "SIGSEGV" in details and "3 s limit" in details
    assert summary.images_added == 6
    assert summary.workers_replaced == 2


def _crash_with_faulthandler_on(log: str) -> None:
    """The saboteur's crash, in a child whose faulthandler writes to ``log``
    (as pytest's, inherited through fork, writes to the test output)."""
    from types import SimpleNamespace

    with open(log, "w") as fh:
        faulthandler.enable(fh)
        _Saboteur().compute(SimpleNamespace(image=SimpleNamespace(size=(13, 30))))


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(),
                    reason="the saboteur crashes workers made by fork")
def test_the_saboteurs_crash_prints_no_fatal_error_dump(tmp_path):
    """The crash is meant: a 'Fatal Python error' dump in the output of a
    passing run reads as a failure."""
    import multiprocessing

    log = tmp_path / "stderr.txt"
    child = multiprocessing.get_context("fork").Process(
        target=_crash_with_faulthandler_on, args=(str(log),))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGSEGV  # still a real crash for the pool to isolate
    assert "Fatal Python error" not in log.read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the cap is Linux's RLIMIT_AS")
def test_a_file_that_needs_more_memory_than_a_worker_may_take_costs_that_file_alone(
        tmp_path, saboteur):
    folder = tmp_path / "in"
    folder.mkdir()
    for n in range(3):
        (folder / f"good{n}.png").write_bytes(_png((40 + n, 30)))
    (folder / "greedy.png").write_bytes(_png((19, 30)))      # the signal runs away
    (folder / "huge.png").write_bytes(png_bomb(12_000))     # 144 MP: within the pixel limit
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        summary = c.ingest(iter_paths([folder]), signals=("saboteur",), workers=1,
                           max_memory=128 << 20)
    reasons = {Path(source).name: reason for source, reason, _ in summary.failures}
    assert reasons == {"greedy.png": "out-of-memory", "huge.png": "out-of-memory"}
    assert all("--max-memory" in detail for _, _, detail in summary.failures)
    assert summary.images_added == 3
    assert summary.workers_replaced == 0  # the worker survived both


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the cap is Linux's RLIMIT_AS")
def test_the_cli_caps_each_workers_memory(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "huge.png").write_bytes(png_bomb(12_000))
    (folder / "small.jpg").write_bytes(jpeg_bytes(1))
    code, summary = _cli_ingest(tmp_path / "c.db", folder, "--workers", "1",
                                "--max-memory", "128")
    assert code == 1
    assert summary["failure_reasons"] == {"out-of-memory": 1}
    assert summary["images_added"] == 1


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(),
                    reason="the saboteur signal reaches workers only through fork")
def test_jobs_carrying_bytes_queue_shallow_and_a_crash_among_them_costs_one(
        tmp_path, saboteur):
    """Files sent as bytes (stdin, WARC) wait at most DATA_QUEUE_DEPTH deep per
    worker, paths up to QUEUE_DEPTH; a crash among byte jobs is still pinned on
    its own file."""
    from imgmatch.workers import DATA_QUEUE_DEPTH, QUEUE_DEPTH, Job, ProcessPool

    pool = ProcessPool(("saboteur",), 1)
    try:
        big = _png((40, 30)) + bytes(1 << 20)  # a valid PNG with trailing bytes
        for key in range(DATA_QUEUE_DEPTH):
            assert pool.can_take(Job(key, "b", data=big))
            pool.submit(Job(key, "b", data=big))
        assert not pool.can_take(Job(99, "b", data=big))
        assert pool.can_take(Job(99, "p", path=str(tmp_path / "x.png")))
        assert DATA_QUEUE_DEPTH < QUEUE_DEPTH
        done = []
        while len(done) < DATA_QUEUE_DEPTH:
            done += list(pool.results(1.0))
        assert sorted(k for k, _ in done) == list(range(DATA_QUEUE_DEPTH))
    finally:
        pool.close()
    lines = [json.dumps({"data_b64": base64.b64encode(_png((40 + n, 30))).decode(),
                         "url": f"https://x.example/{n}"}) + "\n" for n in range(5)]
    lines.insert(2, json.dumps({"data_b64": base64.b64encode(_png((13, 30))).decode(),
                                "url": "https://x.example/crash"}) + "\n")
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        summary = c.ingest(iter_jsonl_stream(lines), signals=("saboteur",), workers=1, timeout=5)
    assert [(r, d.split(" (")[0]) for _, r, d in summary.failures] == \
        [("decoder-crash", "the decoder crashed")]
    assert summary.failures[0][0] == "<stdin>:3"  # the third line
    assert summary.images_added == 5


def test_workers_leave_when_their_parent_is_killed_as_they_start(tmp_path):
    """The parent dies before its workers finish starting: they must not take
    the reaper for their parent, and must notice without a poll timeout."""
    script = tmp_path / "orphan_workers.py"
    script.write_text(
        "import os, signal\n"
        "from imgmatch.workers import ProcessPool\n"
        "pool = ProcessPool(('phash',), 2)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, str(script)], timeout=60, check=False)
    deadline = time.monotonic() + 5
    while _processes_with(str(script)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _processes_with(str(script)), "workers outlived a parent killed at start-up"


def test_link_workers_leave_when_their_parent_is_killed(tmp_path):
    """``imgmatch link`` forks workers that hold the collection's codes; a
    killed link pass must not leave them waiting for ever."""
    script = tmp_path / "orphan_link_workers.py"
    script.write_text(
        "import os, signal, time\n"
        "from imgmatch import pairs\n"
        "pool = pairs._fork_pool(2)\n"
        "busy = [pool.submit(time.sleep, 60) for _ in range(2)]\n"
        "time.sleep(0.5)\n"
        "print(len(pool._processes), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    run = subprocess.run([sys.executable, str(script)], timeout=60, check=False,
                         capture_output=True, text=True)
    assert run.stdout.strip() == "2", run.stderr  # both workers were running
    deadline = time.monotonic() + 5
    while _processes_with(str(script)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _processes_with(str(script)), "link workers outlived their killed parent"


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, 128).save(buf, "PNG")
    return buf.getvalue()


# ------------------------------------------------------- nothing hashed twice
class _Tally(SignalType):
    """A signal that notes each image it is computed for, in a file (workers too)."""

    name = "tally"
    bits = 64
    threshold = 0
    log: Path | None = None

    def compute(self, image: Decoded) -> HashValue:
        with open(type(self).log, "a") as fh:
            fh.write(f"{image.image.size[0]}\n")
        return HashValue(self.name, image.image.size[0].to_bytes(8, "big"), 100)


def _computed() -> list[str]:
    """The widths the tally noted, less the picture a worker analyses
    before its memory cap (see imgmatch.workers.serve_jobs)."""
    from imgmatch.decode import decode
    from imgmatch.workers import warm_up_picture

    warm = str(decode(warm_up_picture(), target=_Tally.min_side).image.size[0])
    return [w for w in _Tally.log.read_text().split() if w != warm]


@pytest.mark.parametrize("workers", [0, 1])
def test_a_rerun_decodes_only_bytes_it_has_not_seen(tmp_path, workers):
    _Tally.log = tmp_path / "computed.txt"
    registry.register(_Tally)
    try:
        folder = tmp_path / "in"
        folder.mkdir()
        for n in range(4):
            (folder / f"photo{n}.png").write_bytes(_png((40 + n, 30)))
        with imgmatch.Collection.open(tmp_path / "c.db") as c:
            c.ingest(iter_paths([folder]), signals=("tally",), workers=workers)
            first = _computed()  # an image and its mirror
            assert sorted(set(first)) == ["40", "41", "42", "43"]
            # the same files, a copy under a new name and one new photo
            (folder / "copy_of_photo1.png").write_bytes((folder / "photo1.png").read_bytes())
            (folder / "new.png").write_bytes(_png((50, 30)))
            summary = c.ingest(iter_paths([folder]), signals=("tally",), workers=workers)
    finally:
        registry._REGISTRY.pop("tally", None)
    assert set(_computed()[len(first):]) == {"50"}
    assert (summary.images_added, summary.images_known) == (1, 5)
    assert (summary.sightings_added, summary.sightings_known) == (2, 4)


# ------------------------------------------------------------ kill and resume
def _make_crawl(root: Path, n_images: int = 240) -> Path:
    """Images with duplicates, near-duplicates, a bad file, and a manifest."""
    rng = random.Random(7)
    files = root / "crawl"
    files.mkdir()
    rows = ["path,platform,url,posted_at"]
    for n in range(n_images):
        seed = n // 3  # every picture three times: same bytes, re-encoded, re-encoded smaller
        variant = n % 3
        data = jpeg_bytes(seed, quality=90) if variant < 2 else jpeg_bytes(
            seed, size=(80, 60), quality=60)
        name = f"img{n:04d}.jpg"
        (files / name).write_bytes(data)
        platform = rng.choice(["citylist", "nightads", "jobboard"])
        rows.append(f"crawl/{name},{platform},https://{platform}.example/{n},"
                    f"2024-0{1 + n % 9}-1{n % 10}T10:00:00Z")
    (files / "broken.jpg").write_bytes(jpeg_bytes(999)[:300])
    rows.append("crawl/broken.jpg,citylist,https://citylist.example/broken,2024-01-01")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def _processes_with(text: str) -> list[int]:
    """Pids whose command line mentions ``text`` (Linux /proc; empty elsewhere)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace"):
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def _catalog_state(db: Path) -> dict:
    con = sqlite3.connect(db)
    try:
        sha = dict(con.execute("SELECT id, sha256 FROM images"))
        return {
            "images": sorted(sha.values()),
            "signals": sorted((sha[i], s, bytes(v)) for i, s, v in
                              con.execute("SELECT image_id, signal, value FROM signals")),
            "sightings": sorted(r[0] for r in con.execute("SELECT key FROM sightings")),
            "sighting_count": con.execute("SELECT count(*) FROM sightings").fetchone()[0],
            "failures": sorted(con.execute("SELECT source, reason FROM failures")),
            "links": sorted(tuple(sorted((sha[a], sha[b])))
                            for a, b in con.execute("SELECT a, b FROM links")),
        }
    finally:
        con.close()


def _images_in(db: Path) -> int:
    """Images a catalog being written holds so far (0 before it exists)."""
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute("SELECT count(*) FROM images").fetchone()[0]
    except sqlite3.OperationalError:  # its schema not written yet
        return 0
    finally:
        con.close()


def _ingest_cmd(db: Path, manifest: Path) -> list[str]:
    return [sys.executable, "-m", "imgmatch.cli", "--db", str(db), "ingest", "--manifest",
            str(manifest), "--workers", "2", "--batch-size", "8", "--quiet", "--json"]


def test_killed_ingests_resume_to_the_same_catalog(tmp_path):
    manifest = _make_crawl(tmp_path)
    clean = tmp_path / "clean.db"
    subprocess.run(_ingest_cmd(clean, manifest), check=False, capture_output=True, timeout=300)
    expected = _catalog_state(clean)
    assert len(expected["images"]) == 160  # 80 pictures x (original bytes, small re-encode)
    assert expected["sighting_count"] == 240
    assert expected["failures"] == [(str(tmp_path / "crawl" / "broken.jpg"), "decode-error")]
    assert expected["links"], "re-encoded copies must be linked to their originals"

    resumed = tmp_path / "resumed.db"
    rng = random.Random(11)
    kills = 0
    for _ in range(4):
        # killed once the catalog holds a random number more of the images
        # left (a timer set from a clean run's length let a slow machine's
        # resumed runs finish first): anywhere in a batch, since the kill
        # lands while the next one is read, hashed and linked
        written = _images_in(resumed)
        target = written + rng.randint(1, max(1, (len(expected["images"]) - written) // 2))
        proc = subprocess.Popen(_ingest_cmd(resumed, manifest), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while proc.poll() is None and _images_in(resumed) < target:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        if resumed.exists():  # consistent after every kill
            con = sqlite3.connect(resumed)
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            orphans = con.execute("SELECT count(*) FROM images WHERE id NOT IN "
                                  "(SELECT image_id FROM signals)").fetchone()[0]
            con.close()
            assert orphans == 0, "an image was written without its signals"
    assert kills >= 2, "the ingest finished before it could be killed: make it bigger"
    # the killed parents' workers notice and leave
    deadline = time.monotonic() + 10
    while _processes_with(str(resumed)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_with(str(resumed)), "workers outlived their killed parent"
    done = subprocess.run(_ingest_cmd(resumed, manifest), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1  # the broken file, again
    assert _catalog_state(resumed) == expected
    with Catalog.open(resumed, readonly=True) as catalog:  # tallies survived the kills
        assert catalog.counts() == catalog.recount()


# ------------------------------------------------------------------------ WARC
def _write_warc(path: Path) -> str:
    # warcio's writer leaves its spooled temporary files to the garbage collector
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        digest = _write_warc_records(path)
        gc.collect()
    return digest


def _write_warc_records(path: Path) -> str:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    cat = (FIXTURES / "originals" / "cat.jpg").read_bytes()
    rocket = (FIXTURES / "originals" / "rocket.jpg").read_bytes()
    with path.open("wb") as fh:
        writer = WARCWriter(fh, gzip=path.suffix == ".gz")

        def response(uri, payload, ctype, date, declared=None):
            headers = StatusAndHeaders("200 OK", [
                ("Content-Type", ctype), ("Content-Length", str(declared or len(payload)))],
                protocol="HTTP/1.1")
            record = writer.create_warc_record(uri, "response", payload=io.BytesIO(payload),
                                               http_headers=headers,
                                               warc_headers_dict={"WARC-Date": date})
            writer.write_record(record)
            return record

        first = response("https://citylist.example/ads/1/a.jpg", cat, "image/jpeg",
                         "2024-01-02T03:04:05Z")
        response("https://citylist.example/ads/1", b"<html>an ad</html>", "text/html",
                 "2024-01-02T03:04:06Z")
        response("https://nightads.example/p/2.jpg", rocket[:5000], "image/jpeg",
                 "2024-02-02T03:04:05Z", declared=len(rocket))
        digest = first.rec_headers.get_header("WARC-Payload-Digest")
        revisit = writer.create_revisit_record(
            "https://nightads.example/p/9.jpg", digest, "https://citylist.example/ads/1/a.jpg",
            "2024-01-02T03:04:05Z", warc_headers_dict={"WARC-Date": "2025-05-05T05:05:05Z"})
        writer.write_record(revisit)
    return hashlib.sha256(cat).hexdigest()


def test_revisit_in_a_later_warc_finds_the_image_of_an_earlier_one(tmp_path):
    from warcio.warcwriter import WARCWriter

    first = tmp_path / "a.warc.gz"
    _write_warc(first)
    from warcio.archiveiterator import ArchiveIterator
    with first.open("rb") as fh:
        digest = next(r for r in ArchiveIterator(fh) if r.rec_type == "response")\
            .rec_headers.get_header("WARC-Payload-Digest")
    second = tmp_path / "b.warc"
    with second.open("wb") as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        writer = WARCWriter(fh, gzip=False)
        writer.write_record(writer.create_revisit_record(
            "https://jobboard.example/x.jpg", digest, "https://citylist.example/ads/1/a.jpg",
            "2024-01-02T03:04:05Z", warc_headers_dict={"WARC-Date": "2026-01-01T00:00:00Z"}))
        del writer
        gc.collect()
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.ingest(iter_warc(first))
        summary = c.ingest(iter_warc(second))
        platforms = {s.platform for s in c.catalog.sightings_of([1])[1]}
    assert summary.revisits == 1 and summary.sightings_added == 1
    assert "jobboard.example" in platforms


def _write_arc(path: Path) -> str:
    """An ARC (version 1) file, the Internet Archive's format before WARC, written
    by hand (warcio reads ARC but writes only WARC): a file header, an image,
    a page and a truncated image, each record gzipped on its own for .arc.gz."""
    import gzip

    cat = (FIXTURES / "originals" / "cat.jpg").read_bytes()
    rocket = (FIXTURES / "originals" / "rocket.jpg").read_bytes()

    def record(url: str, when: str, ctype: str, body: bytes) -> bytes:
        head = f"{url} 192.0.2.7 {when} {ctype} {len(body)}\n".encode()
        return head + body + b"\n"

    def http(ctype: str, payload: bytes, declared: int | None = None) -> bytes:
        return (f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {declared or len(payload)}\r\n\r\n").encode() + payload

    version = b"1 0 imgmatch tests\nURL IP-address Archive-date Content-type Archive-length\n"
    records = [
        record(f"filedesc://{path.name}", "20240102030405", "text/plain", version),
        record("http://escortlist.example/ad/7/photo.jpg", "20240102030405", "image/jpeg",
               http("image/jpeg", cat)),
        record("http://escortlist.example/ad/7", "20240102030406", "text/html",
               http("text/html", b"<html>an ad</html>")),
        record("http://escortlist.example/ad/8/photo.jpg", "20240103040506", "image/jpeg",
               http("image/jpeg", rocket[:5000], declared=len(rocket))),
    ]
    gz = path.suffix == ".gz"
    path.write_bytes(b"".join(gzip.compress(r) if gz else r for r in records))
    return hashlib.sha256(cat).hexdigest()


@pytest.mark.parametrize("name", ["crawl.warc", "crawl.warc.gz", "crawl.arc", "crawl.arc.gz"])
def test_archive_images_revisits_non_images_and_truncated_records(tmp_path, name):
    archive = tmp_path / name
    arc = ".arc" in name
    cat_sha = (_write_arc if arc else _write_warc)(archive)
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        summary = c.ingest(iter_warc(archive))
        info = c.image(cat_sha)
        counts = c.catalog.counts()
    assert summary.images_added == 1
    assert summary.skipped == {"not-an-image": 1}
    assert [r for _, r, _ in summary.failures] == ["truncated-record"]
    seen = {(s.platform, s.url, s.collected_at) for s in info.sightings}
    if arc:  # ARC has no revisit records
        assert summary.revisits == 0
        assert seen == {("escortlist.example", "http://escortlist.example/ad/7/photo.jpg",
                         "2024-01-02T03:04:05Z")}
    else:
        assert summary.revisits == 1
        assert seen == {("citylist.example", "https://citylist.example/ads/1/a.jpg",
                         "2024-01-02T03:04:05Z"),
                        ("nightads.example", "https://nightads.example/p/9.jpg",
                         "2025-05-05T05:05:05Z")}
    assert counts["images"] == 1 and counts["sightings"] == len(seen)


def test_the_cli_reads_warc_and_arc_files_named_on_its_command_line(tmp_path):
    warc, arc = tmp_path / "one.warc.gz", tmp_path / "two.ARC"
    cat_sha = _write_warc(warc)
    assert _write_arc(arc) == cat_sha
    code, summary = _cli_ingest(tmp_path / "c.db", warc, arc)
    assert code == 1  # partial: a truncated record in each archive
    assert summary["failure_reasons"] == {"truncated-record": 2}
    assert summary["images_added"] == 1 and summary["revisits"] == 1
    assert summary["skipped"] == {"not-an-image": 2}
    with imgmatch.Collection.open(tmp_path / "c.db", readonly=True) as c:
        platforms = sorted(s.platform for s in c.image(cat_sha).sightings)
    assert platforms == ["citylist.example", "escortlist.example", "nightads.example"]


def test_a_warc_that_breaks_off_is_one_failure_and_keeps_what_came_before(tmp_path):
    warc = tmp_path / "crawl.warc.gz"
    _write_warc(warc)
    data = warc.read_bytes()
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(data[: len(data) - 200])
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        summary = c.ingest(iter_warc(cut))
    assert summary.images_added == 1
    assert summary.failures, "the broken tail must be recorded"


# ------------------------------------------------ WARC: the page an image was on
def _capture_warc(path: Path, records: list[dict]) -> None:
    """A WARC of request and response records, each a dict: ``type``, ``name``,
    ``uri``, and ``referer`` (requests) or ``body`` and ``ctype`` (responses);
    ``to`` lists the names (or raw ids) its WARC-Concurrent-To headers point at."""
    # warcio's writer leaves its spooled temporary files to the garbage collector
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        _capture_warc_records(path, records)
        gc.collect()


def _capture_warc_records(path: Path, records: list[dict]) -> None:
    import uuid

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    ids = {r["name"]: f"<urn:uuid:{uuid.uuid4()}>" for r in records}
    with path.open("wb") as fh:
        writer = WARCWriter(fh, gzip=path.suffix == ".gz")
        for r in records:
            if r["type"] == "request":
                fields = [("Host", "x")] + ([("Referer", r["referer"])] if "referer" in r else [])
                http = StatusAndHeaders("GET / HTTP/1.1", fields, is_http_request=True)
                payload = b""
            else:
                payload = r["body"]
                http = StatusAndHeaders("200 OK", [
                    ("Content-Type", r["ctype"]), ("Content-Length", str(len(payload)))],
                    protocol="HTTP/1.1")
            record = writer.create_warc_record(
                r["uri"], r["type"], payload=io.BytesIO(payload), http_headers=http,
                warc_headers_dict={"WARC-Record-ID": ids[r["name"]],
                                   "WARC-Date": "2024-04-05T06:07:08Z"})
            for target in r.get("to", ()):
                record.rec_headers.add_header("WARC-Concurrent-To", ids.get(target, target))
            writer.write_record(record)


def _image(name: str, uri: str, seed: int, to: tuple[str, ...] = ()) -> dict:
    return {"type": "response", "name": name, "uri": uri, "body": jpeg_bytes(seed),
            "ctype": "image/jpeg", "to": to}


def _request(name: str, uri: str, referer: str | None, to: tuple[str, ...] = ()) -> dict:
    return {"type": "request", "name": name, "uri": uri, "to": to,
            **({"referer": referer} if referer is not None else {})}


def _pages(archive: Path) -> list[tuple[str | None, str | None]]:
    """(url, page_url) of each image item, in the order iter_warc gives them."""
    return [(i.sighting.url, i.sighting.page_url) for i in iter_warc(archive)
            if i.data is not None or i.revisit_of is not None]


IMG, PAGE = "https://citylist.example/img/1.jpg", "https://citylist.example/ad/1"


@pytest.mark.parametrize("records", [
    # wget: the request, then its response naming it in WARC-Concurrent-To
    [_request("q", IMG, PAGE), _image("r", IMG, 1, to=("q",))],
    # Heritrix, warcprox, pywb: the response, then its request naming the response
    [_image("r", IMG, 1), _request("q", IMG, PAGE, to=("r",))],
    # no record ids at all: the adjacent request for the same URI
    [_request("q", IMG, PAGE), _image("r", IMG, 1)],
    [_image("r", IMG, 1), _request("q", IMG, PAGE)],
], ids=["request-first", "response-first", "request-first-by-uri", "response-first-by-uri"])
def test_a_warc_response_takes_its_page_from_its_requests_referer(tmp_path, records):
    archive = tmp_path / "crawl.warc.gz"
    _capture_warc(archive, records)
    assert _pages(archive) == [(IMG, PAGE)]
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.ingest(iter_warc(archive))
        (s,) = c.image(hashlib.sha256(jpeg_bytes(1)).hexdigest()).sightings
    assert (s.url, s.page_url, s.collected_at) == (IMG, PAGE, "2024-04-05T06:07:08Z")


@pytest.mark.parametrize("page_first", [True, False])
def test_a_warc_response_concurrent_to_a_page_record_was_seen_on_that_page(tmp_path,
                                                                          page_first):
    page = {"type": "response", "name": "p", "uri": PAGE, "body": b"<html>an ad</html>",
            "ctype": "text/html; charset=utf-8"}
    image = _image("r", IMG, 1, to=("p",))
    _capture_warc(tmp_path / "c.warc", [page, image] if page_first else [image, page])
    assert _pages(tmp_path / "c.warc") == [(IMG, PAGE)]


def test_a_warc_response_without_a_request_has_no_page(tmp_path):
    other, third = "https://citylist.example/img/2.jpg", "https://citylist.example/img/3.jpg"
    _capture_warc(tmp_path / "c.warc", [
        _request("q", other, PAGE),                      # another URI, no id link
        _image("r", IMG, 1),
        _request("q2", IMG, None, to=("r",)),            # its request, without a Referer
        _image("r3", third, 3, to=("elsewhere",)),       # names a record not in the file
        _request("q3", third, "  \t ", to=("r3",))])     # a blank Referer
    assert _pages(tmp_path / "c.warc") == [(IMG, None), (third, None)]


@pytest.mark.parametrize("linked", [True, False])
def test_one_image_url_fetched_from_two_pages_keeps_each_page(tmp_path, linked):
    """The same image URL twice, from two ads: each response gets its own
    request's page, whether ids link them or only adjacency does."""
    other = "https://citylist.example/ad/2"
    heritrix = [_image("r1", IMG, 1), _request("q1", IMG, PAGE, to=("r1",) if linked else ()),
                _image("r2", IMG, 1), _request("q2", IMG, other, to=("r2",) if linked else ())]
    wget = [_request("q1", IMG, PAGE), _image("r1", IMG, 1, to=("q1",) if linked else ()),
            _request("q2", IMG, other), _image("r2", IMG, 1, to=("q2",) if linked else ())]
    for name, records in (("heritrix", heritrix), ("wget", wget)):
        _capture_warc(tmp_path / f"{name}.warc", records)
        assert _pages(tmp_path / f"{name}.warc") == [(IMG, PAGE), (IMG, other)], name


@pytest.mark.parametrize("request_first", [True, False])
def test_warc_links_reach_only_a_few_records(tmp_path, request_first):
    """Memory stays bounded: a request more than LINK_WINDOW records away from
    its response is not remembered (nor is the response held back for it), and
    items still come out in archive order."""
    from imgmatch.warc import LINK_WINDOW

    filler = [_image(f"f{n}", f"https://citylist.example/other/{n}.jpg", 10 + n)
              for n in range(LINK_WINDOW + 1)]
    request, image = _request("q", IMG, PAGE), _image("r", IMG, 1)
    records = [request, *filler, image] if request_first else [image, *filler, request]
    _capture_warc(tmp_path / "c.warc", records)
    pages = _pages(tmp_path / "c.warc")
    assert (IMG, None) in pages and all(page is None for _, page in pages)
    assert [url for url, _ in pages] == [r["uri"] for r in records if r["type"] == "response"]
    # just inside the window, the link is still made
    near = [request, *filler[:LINK_WINDOW - 1], image] if request_first \
        else [image, *filler[:LINK_WINDOW - 1], request]
    _capture_warc(tmp_path / "near.warc", near)
    assert (IMG, PAGE) in _pages(tmp_path / "near.warc")


def test_a_hostile_referer_is_cleaned_like_any_metadata(tmp_path):
    from imgmatch.text import MAX_FIELD_CHARS

    long_page = PAGE + "?q=" + "x" * (2 * MAX_FIELD_CHARS)
    _capture_warc(tmp_path / "c.warc", [_request("q", IMG, long_page),
                                        _image("r", IMG, 1, to=("q",))])
    ((_, page),) = _pages(tmp_path / "c.warc")
    assert page == long_page[:MAX_FIELD_CHARS] + "…[cut]"
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        summary = c.ingest(iter_warc(tmp_path / "c.warc"))
        (s,) = c.image(hashlib.sha256(jpeg_bytes(1)).hexdigest()).sightings
    assert summary.images_added == 1 and s.page_url == page


# ------------------------------------------------------------- JSONL and stdin
def test_jsonl_on_stdin_with_paths_and_base64(tmp_path):
    photo = FIXTURES / "originals" / "coffee.jpg"
    lines = [
        json.dumps({"path": str(photo), "platform": "citylist", "url": "https://c.example/1",
                    "phone": "555-0101"}),
        json.dumps({"data_b64": base64.b64encode(jpeg_bytes(1)).decode(), "platform": "nightads",
                    "source": "worker-7/item-2"}),
        json.dumps({"data_b64": "%%% not base64"}),
        "not json",
        json.dumps({"platform": "nothing to read"}),
    ]
    db = tmp_path / "c.db"
    done = subprocess.run([sys.executable, "-m", "imgmatch.cli", "--db", str(db), "ingest",
                           "--jsonl", "-", "--json", "--workers", "0"],
                          input="\n".join(lines) + "\n", capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert summary["images_added"] == 2
    assert summary["failed"] == 3
    with imgmatch.Collection.open(db, readonly=True) as c:
        info = c.image(hashlib.sha256(photo.read_bytes()).hexdigest())
    assert info.sightings[0].extra == {"phone": "555-0101"}


def test_jsonl_stream_items_are_lazy():
    def endless():
        n = 0
        while True:
            n += 1
            yield json.dumps({"path": f"missing-{n}.jpg"}) + "\n"

    stream = iter_jsonl_stream(endless())
    assert [next(stream).source for _ in range(3)] == [
        "missing-1.jpg", "missing-2.jpg", "missing-3.jpg"]


# ---------------------------------------------------------------------- Scrapy
def test_scrapy_files_pipeline_output(tmp_path):
    store = tmp_path / "store"
    (store / "full").mkdir(parents=True)
    a = jpeg_bytes(3)
    (store / "full" / "aa.jpg").write_bytes(a)
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(jpeg_bytes(4))
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join([
        json.dumps({"url": "https://citylist.example/ad/5", "ad_id": "5", "phone": "555-0100",
                    "file_urls": ["https://img.citylist.example/5.jpg"],
                    "files": [{"url": "https://img.citylist.example/5.jpg",
                               "path": "full/aa.jpg", "checksum": "x", "status": "downloaded"}]}),
        json.dumps({"url": "https://citylist.example/ad/6",
                    "files": [{"url": "https://img.citylist.example/6.jpg",
                               "path": "../secret.jpg"}]}),
    ]) + "\n")
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        summary = c.ingest(iter_scrapy(items, store, platform="citylist"))
        info = c.image(hashlib.sha256(a).hexdigest())
    assert summary.images_added == 1
    assert [r for _, r, _ in summary.failures] == ["unsafe-path"]
    (s,) = info.sightings
    assert (s.platform, s.url, s.page_url, s.ad_id) == (
        "citylist", "https://img.citylist.example/5.jpg", "https://citylist.example/ad/5", "5")
    assert s.extra == {"phone": "555-0100"}


# ------------------------------------------------------------- in-process path
def test_inline_and_worker_ingest_agree(tmp_path):
    files = sorted((FIXTURES / "reposts").glob("*.jpg"))[:6]
    states = []
    for workers in (0, 2):
        db = tmp_path / f"w{workers}.db"
        with imgmatch.Collection.open(db) as c:
            ingest(c.catalog, iter_paths(files), workers=workers)
        states.append(_catalog_state(db)["signals"])
    assert states[0] == states[1]


def test_hostile_text_in_json_lines_is_stored_safely(tmp_path):
    """A lone surrogate is valid JSON but not UTF-8; a junk date is not a date."""
    line = json.dumps({"data_b64": base64.b64encode(jpeg_bytes(5)).decode(),
                       "platform": "x\udcff", "posted_at": "\x1b[2J yesterday",
                       "phone": "555\ud800"})
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        summary = c.ingest(iter_jsonl_stream([line + "\n"]))
        assert summary.images_added == 1 and not summary.failures
        (s,) = c.image(hashlib.sha256(jpeg_bytes(5)).hexdigest()).sightings
    assert s.platform == "x\ufffd" and s.extra["phone"] == "555\ufffd"
    assert s.posted_at is None and s.extra["posted_at_raw"].endswith("yesterday")


def test_library_sightings_are_normalised_too(tmp_path):
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        added = c.add(jpeg_bytes(6), imgmatch.Sighting(platform="p", posted_at="2024-03-09 21:14",
                                                        collected_at="not a date"))
        (s,) = c.image(added.sha256).sightings
    assert s.posted_at == "2024-03-09T21:14:00Z"
    assert s.collected_at is None and s.extra["collected_at_raw"] == "not a date"


def test_a_robust_ingest_of_large_images_as_bytes_through_one_worker_finishes(tmp_path):
    """Jobs that carry their bytes (JSON lines, WARC records) block the parent
    while it sends them, so each analysis a worker sends back must fit in
    the pipe unread: the grey pixels a robust analysis keeps for linking are
    small for that. Kept at full size, this ingest never finished."""
    lines = []
    for n, path in enumerate(sorted((FIXTURES / "originals").glob("*.jpg")) * 4):
        out = io.BytesIO()
        image = Image.open(path).convert("RGB")
        w, h = image.size
        image.crop((n, n, w - n, h - 2 * n)).resize((1600, 1200)).save(out, "JPEG",
                                                                       quality=97)
        lines.append(json.dumps({"data_b64": base64.b64encode(out.getvalue()).decode()}))
    feed = tmp_path / "feed.jsonl"
    feed.write_text("\n".join(lines) + "\n")
    done = subprocess.run([sys.executable, "-m", "imgmatch.cli", "--db", str(tmp_path / "c.db"),
                           "ingest", "--robust", "--workers", "1", "--quiet", "--json",
                           "--jsonl", str(feed)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["images_added"] == len(lines)


def _gzip_bomb(size: int) -> bytes:
    """A JPEG's first bytes and then ``size`` zero bytes, gzipped (about 1/1000 of it)."""
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # the gzip container
    parts = [packer.compress(b"\xff\xd8\xff\xe0")]
    zeros = bytes(1 << 20)
    for _ in range(size >> 20):
        parts.append(packer.compress(zeros))
    parts.append(packer.flush())
    return b"".join(parts)


def _write_bomb_warc(path: Path, payload: bytes) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        with path.open("wb") as fh:
            writer = WARCWriter(fh, gzip=True)
            headers = StatusAndHeaders("200 OK", [
                ("Content-Type", "image/jpeg"), ("Content-Encoding", "gzip"),
                ("Content-Length", str(len(payload)))], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(
                "https://bomb.example/a.jpg", "response", payload=io.BytesIO(payload),
                http_headers=headers, warc_headers_dict={"WARC-Date": "2024-01-01T00:00:00Z"}))
            cat = (FIXTURES / "originals" / "cat.jpg").read_bytes()
            headers = StatusAndHeaders("200 OK", [
                ("Content-Type", "image/jpeg"), ("Content-Length", str(len(cat)))],
                protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(
                "https://fine.example/cat.jpg", "response", payload=io.BytesIO(cat),
                http_headers=headers, warc_headers_dict={"WARC-Date": "2024-01-01T00:00:00Z"}))
        gc.collect()


def test_a_compression_bomb_in_a_warc_is_cut_off_in_bounded_memory(tmp_path):
    """A 1 MB record that inflates to 1 GB: recorded as too large, the next
    record still catalogued, and the ingest's peak memory stays far below the
    bomb's size (the parent reads archives, outside the workers' cap). The
    peak is the kernel's high-water mark of the new process (VmHWM: unlike
    ru_maxrss, not carried over from the test process it was forked from)."""
    warc = tmp_path / "bomb.warc.gz"
    _write_bomb_warc(warc, _gzip_bomb(1 << 30))
    assert warc.stat().st_size < 2 << 20
    script = (
        "import json, sys, imgmatch\n"
        "from imgmatch.warc import iter_warc\n"
        "with imgmatch.Collection.open(sys.argv[1]) as c:\n"
        "    s = c.ingest(iter_warc(sys.argv[2]), workers=1)\n"
        "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(json.dumps({'peak_kb': int(peak.split()[1]),\n"
        "                  'added': s.images_added, 'failures': s.failures}))\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "c.db"), str(warc)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["added"] == 1
    assert [(f[1], "64 MB" in f[2]) for f in result["failures"]] == [("too-large", True)]
    assert result["peak_kb"] < 600 << 10, result  # the bomb alone would be 1,048,576 KB


def test_linking_beside_the_workers_gives_the_catalog_of_an_ingest_in_turn(tmp_path):
    """With workers, a writer thread links each batch while the next is
    analysed; small batches make many of them overlap. The catalog (images,
    ids in input order, links) is the one an in-process ingest writes."""
    files = sorted((FIXTURES / "originals").glob("*.jpg")) + \
        sorted((FIXTURES / "reposts").glob("*.jpg")) * 2  # repeats: known while in flight
    states, ids = [], []
    for workers in (0, 2):
        db = tmp_path / f"w{workers}.db"
        with imgmatch.Collection.open(db) as c:
            summary = c.ingest(iter_paths(files), signals=imgmatch.ROBUST_SIGNALS,
                               workers=workers, batch_size=3)
        assert summary.files_seen == len(files) and not summary.failures
        assert summary.images_added + summary.images_known == len(files)
        states.append(_catalog_state(db))
        with sqlite3.connect(db) as con:
            ids.append(con.execute("SELECT id, sha256 FROM images ORDER BY id").fetchall())
    assert states[0] == states[1] and ids[0] == ids[1]
    assert states[0]["links"]


POOL_UNDER_A_SMALL_CAP = """
import sys, time
import imgmatch
from imgmatch.workers import Job, ProcessPool
assert "cv2" not in sys.modules  # the worker must load OpenCV itself
pool = ProcessPool(imgmatch.ROBUST_SIGNALS, 1, max_memory=256 << 20)
try:
    pool.submit(Job(1, "cat", path=sys.argv[1]))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for _, analysis in pool.results(1.0):
            print(analysis.reason, analysis.features is not None)
            sys.exit(0)
finally:
    pool.close()
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="the cap is Linux's")
def test_a_worker_forked_before_opencv_was_loaded_fits_a_small_cap():
    """A Dask worker, or a program that has not touched OpenCV, forks ingest
    workers without it; loaded under a 256 MB cap, OpenCV crashed each of
    them on every file (SIGSEGV). Workers load their libraries first."""
    cat = FIXTURES / "originals" / "cat.jpg"
    out = subprocess.run([sys.executable, "-c", POOL_UNDER_A_SMALL_CAP, str(cat)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["None", "True"], out.stdout
