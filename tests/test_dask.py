"""Ingest and the link pass on a Dask cluster give what local processes give.

One LocalCluster (two worker processes, one thread each, on loopback) serves
the module. The Dask workers are spawned processes: what a test registers
there (the saboteur signal) it sends with ``client.run``.
"""

from __future__ import annotations

import base64
import contextlib
import faulthandler
import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

distributed = pytest.importorskip("distributed")

import imgmatch  # noqa: E402
from imgmatch import signals as registry  # noqa: E402
from imgmatch.cli import main  # noqa: E402
from imgmatch.dask_pool import CHUNK_BYTES, TASKS_PER_THREAD, DaskPool  # noqa: E402
from imgmatch.decode import Decoded  # noqa: E402
from imgmatch.signals.base import HashValue, SignalType  # noqa: E402
from imgmatch.sources import iter_jsonl_stream, iter_paths  # noqa: E402
from imgmatch.workers import Job  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=":0") as running:
        yield running


@pytest.fixture(scope="module")
def client(cluster):
    with distributed.Client(cluster, set_as_default=False) as connected:
        yield connected


def _photo(seed: int, size: tuple[int, int] = (96, 72), quality: int = 90) -> bytes:
    """A distinct, photo-like JPEG (smooth random blobs)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small, "RGB").resize(size, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _png(size: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(size[0] * 1000 + size[1])
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8), "L").save(out, "PNG")
    return out.getvalue()


def _state(db: Path | str) -> dict:
    """What a collection holds, by content (ids may differ between runs)."""
    collection = imgmatch.Collection.open(db, readonly=True)
    con = collection.catalog.conn
    try:
        sha = dict(con.execute("SELECT id, sha256 FROM images"))
        return {
            "images": sorted(sha.values()),
            "signals": sorted((sha[i], s, bytes(v), q) for i, s, v, q in
                              con.execute("SELECT image_id, signal, value, quality FROM signals")),
            "sightings": sorted(r[0] for r in con.execute("SELECT key FROM sightings")),
            "failures": sorted(con.execute("SELECT source, reason FROM failures")),
            "links": sorted((*sorted((sha[a], sha[b])), round(score, 6)) for a, b, score in
                            con.execute("SELECT a, b, score FROM links")),
        }
    finally:
        collection.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ ingest
def test_dask_ingest_gives_the_local_collection(tmp_path, client, catalog_address):
    """Into either engine's catalog (a PostgreSQL one is what many nodes share)."""
    bad = tmp_path / "bad"
    bad.mkdir()
    jpeg = (FIXTURES / "originals" / "astronaut.jpg").read_bytes()
    (bad / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    (bad / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    states, summaries = [], []
    for db, dask in ((tmp_path / "local.db", None), (catalog_address, client)):
        with imgmatch.Collection.open(db) as c:
            summaries.append(c.ingest(imgmatch.sources_for(
                [bad], manifests=[FIXTURES / "manifest.csv"]), workers=1, client=dask))
        states.append(_state(db))
    local, dask_state = states
    assert dask_state == local
    assert len(local["images"]) == 20 and local["links"]
    assert [(Path(source).name, reason) for source, reason in local["failures"]] == [
        ("corrupt.jpg", "unsupported-format"), ("truncated.jpg", "decode-error")]
    assert [s.images_added for s in summaries] == [20, 20]
    assert summaries[1].links_added == summaries[0].links_added


class _Saboteur(SignalType):
    """A signal whose 'decoder' segfaults on 13-px-wide images, hangs on 17 and
    asks for more memory than a worker may take on 19."""

    name = "saboteur"
    bits = 64
    threshold = 0

    def compute(self, image: Decoded) -> HashValue:
        width = image.image.size[0]
        if width == 13:
            faulthandler.disable()  # a meant crash: no dump
            os.kill(os.getpid(), signal.SIGSEGV)
        if width == 17:
            time.sleep(3600)
        if width == 19:
            np.empty(8 << 30, np.uint8)
        return HashValue(self.name, bytes(8), 100)


def _register_saboteur() -> None:
    registry.register(_Saboteur)


def _unregister_saboteur() -> None:
    registry._REGISTRY.pop("saboteur", None)


@pytest.fixture
def saboteur(client):
    _register_saboteur()
    client.run(_register_saboteur)
    yield "saboteur"
    client.run(_unregister_saboteur)
    _unregister_saboteur()


def test_a_crash_a_hang_or_a_runaway_on_dask_costs_one_file(tmp_path, client, saboteur):
    folder = tmp_path / "in"
    folder.mkdir()
    for n in range(4):
        (folder / f"good{n}.png").write_bytes(_png((40 + n, 30)))
    (folder / "crash.png").write_bytes(_png((13, 30)))
    (folder / "hang.png").write_bytes(_png((17, 30)))
    (folder / "runaway.png").write_bytes(_png((19, 30)))
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        summary = c.ingest(iter_paths([folder]), signals=(saboteur,), timeout=2, client=client,
                           max_memory=2 << 30)
    reasons = {Path(source).name: reason for source, reason, _ in summary.failures}
    assert reasons == {"crash.png": "decoder-crash", "hang.png": "timeout",
                       "runaway.png": "out-of-memory"}
    details = " ".join(d for _, _, d in summary.failures)
    assert "SIGSEGV" in details and "2 s limit" in details
    assert summary.images_added == 4
    assert summary.workers_replaced == 2
    # the Dask workers themselves lived through it
    assert len(client.scheduler_info()["workers"]) == 2


def _noise_png(side: int) -> bytes:
    """A PNG that does not compress: larger than a task's share of shipped bytes."""
    out = io.BytesIO()
    pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(out, "PNG", compress_level=0)
    return out.getvalue()


def test_bytes_inputs_travel_to_the_workers(tmp_path, client):
    photos = [_photo(n) for n in range(6)] + [_photo(0, size=(80, 60), quality=60)]
    large = _noise_png(1400)
    assert len(large) > CHUNK_BYTES  # sent to a worker directly
    lines = [json.dumps({"data_b64": base64.b64encode(data).decode(), "platform": "feed",
                         "url": f"https://feed.example/{n}.jpg"})
             for n, data in enumerate(photos + [photos[1][:300], large])]
    states = []
    for name, dask in (("local", None), ("dask", client)):
        with imgmatch.Collection.open(tmp_path / f"{name}.db") as c:
            summary = c.ingest(iter_jsonl_stream(lines), workers=1, client=dask)
        assert summary.images_added == 8 and len(summary.failures) == 1
        states.append(_state(tmp_path / f"{name}.db"))
    assert states[0] == states[1]
    assert states[1]["links"], "the re-encoded copy is linked to its original"
    # again: bytes already catalogued are answered on the client, not shipped
    with imgmatch.Collection.open(tmp_path / "dask.db") as c:
        again = c.ingest(iter_jsonl_stream(lines), client=client)
    assert again.images_added == 0 and again.images_known == 8


def test_tasks_in_flight_stay_bounded(tmp_path, client):
    """However fast jobs come, at most TASKS_PER_THREAD chunks per worker thread wait."""
    pool = DaskPool(client, ("pdq",))
    try:
        most, got, key = 0, {}, 0
        while key < 2000 or pool.busy:
            if key < 2000:
                job = Job(key, f"missing-{key}", path=str(tmp_path / f"missing-{key}.jpg"))
                if pool.can_take(job):
                    pool.submit(job)
                    key += 1
            most = max(most, len(pool._flight))
            got.update(pool.results(0.0 if key < 2000 else 0.1))
        assert sorted(got) == list(range(2000))
        assert {a.reason for a in got.values()} == {"missing-file"}
        assert 2 <= most <= TASKS_PER_THREAD * 2
    finally:
        pool.close()


class _LosingClient:
    """A stand-in for a client whose every task kills its Dask workers
    (as a machine lost mid-task would, three times over)."""

    def __init__(self) -> None:
        self.sent: list[list[Job]] = []

    def wait_for_workers(self, n: int, timeout: float) -> None:
        pass

    def run(self, function, *args):
        return {"tcp://worker": function(*args)}

    def nthreads(self) -> dict:
        return {"tcp://worker": 1}

    def submit(self, function, jobs, settings, pure=False):
        self.sent.append(list(jobs))
        return _Lost()

    def cancel(self, futures) -> None:
        pass


class _Lost:
    status = "error"

    def done(self) -> bool:
        return True

    def exception(self) -> BaseException:
        return distributed.KilledWorker("analyse_chunk-1", None, 3)

    def add_done_callback(self, callback) -> None:
        callback(self)


def test_a_file_whose_worker_dies_on_every_try_is_recorded_as_worker_lost():
    lost = _LosingClient()
    pool = DaskPool(lost, ("pdq",))
    jobs = [Job(key, f"f{key}.jpg", path=f"f{key}.jpg") for key in range(3)]
    got = {}
    for job in jobs:
        assert pool.can_take(job)
        pool.submit(job)
    while pool.busy:
        got.update(pool.results(0.1))
    pool.close()
    assert sorted(got) == [0, 1, 2]
    assert {a.reason for a in got.values()} == {"worker-lost"}
    assert "4 tries" in got[0].detail
    # a chunk of several files was tried again file by file, before any was given up
    chunks = [sorted(j.key for j in sent) for sent in lost.sent]
    assert max(map(len, chunks)) > 1 and [[0], [1], [2]] == sorted(c for c in chunks
                                                                   if len(c) == 1)


# ------------------------------------------------------------ a killed run
def _crawl(root: Path, pictures: int = 50) -> Path:
    files = root / "crawl"
    files.mkdir()
    rows = ["path,platform,url"]
    for n in range(pictures * 3):
        seed, variant = divmod(n, 3)  # each picture: the same bytes twice, then re-encoded
        data = _photo(seed, size=(640, 480)) if variant < 2 else _photo(
            seed, size=(320, 240), quality=60)
        (files / f"img{n:04d}.jpg").write_bytes(data)
        rows.append(f"crawl/img{n:04d}.jpg,site{n % 3},https://site{n % 3}.example/{n}")
    (files / "broken.jpg").write_bytes(_photo(999)[:300])
    rows.append("crawl/broken.jpg,site0,https://site0.example/broken")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def _images(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return con.execute("SELECT count(*) FROM images").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_a_killed_dask_ingest_run_again_finishes_the_work(tmp_path, cluster):
    manifest = _crawl(tmp_path)

    def command(db: Path) -> list[str]:
        return [sys.executable, "-m", "imgmatch.cli", "--db", str(db), "ingest", "--manifest",
                str(manifest), "--dask", cluster.scheduler_address, "--batch-size", "4",
                "--timeout", "20", "--quiet", "--json"]

    clean = tmp_path / "clean.db"
    done = subprocess.run(command(clean), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]  # the broken file
    expected = _state(clean)
    assert len(expected["images"]) == 100 and expected["links"]

    resumed = tmp_path / "resumed.db"
    proc = subprocess.Popen(command(resumed), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while proc.poll() is None and _images(resumed) < 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the ingest finished before it could be killed: make it bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    part = _images(resumed)
    assert 12 <= part < 100
    done = subprocess.run(command(resumed), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert json.loads(done.stdout)["images_added"] == 100 - part
    assert _state(resumed) == expected


# --------------------------------------------------------------- link pass
def _hash_list(path: Path, codes: np.ndarray) -> None:
    path.write_text("".join(f"pdq {row.tobytes().hex()} item-{n}\n"
                            for n, row in enumerate(codes)))


def _planted(rng: np.random.Generator, codes: np.ndarray, n: int, lo: int, hi: int):
    """Copies of n of the codes with lo..hi random bits flipped."""
    copies = []
    for row in rng.choice(len(codes), size=n, replace=False):
        bits = np.unpackbits(codes[row])
        bits[rng.choice(bits.size, size=int(rng.integers(lo, hi + 1)), replace=False)] ^= 1
        copies.append(np.packbits(bits))
    return np.array(copies)


def _links(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        keys = dict(con.execute("SELECT id, hash_key FROM images"))
        return sorted((*sorted((keys[a], keys[b])), round(score, 6))
                      for a, b, score in con.execute("SELECT a, b, score FROM links"))
    finally:
        con.close()


def test_dask_link_gives_exactly_the_local_pairs(tmp_path, cluster, client):
    rng = np.random.default_rng(19)
    base = rng.integers(0, 256, size=(4000, 32), dtype=np.uint8)
    first = np.concatenate([base, _planted(rng, base, 120, 0, 31), _planted(rng, base, 30, 32, 40)])
    _hash_list(tmp_path / "first.txt", first)
    more = rng.integers(0, 256, size=(150, 32), dtype=np.uint8)
    second = np.concatenate([more, _planted(rng, base, 40, 0, 31), _planted(rng, more, 20, 0, 31)])
    _hash_list(tmp_path / "second.txt", second)
    built = tmp_path / "built.db"
    with imgmatch.Collection.open(built) as c:
        c.import_hashes(tmp_path / "first.txt", link=False)
    for name in ("local", "dask"):
        shutil.copy(built, tmp_path / f"{name}.db")

    results = {}
    with imgmatch.Collection.open(tmp_path / "local.db") as c:
        results["local"] = [c.link_pairs(workers=1)]
        c.import_hashes(tmp_path / "second.txt", link=False)
        results["local"].append(c.link_pairs(workers=1))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the first pass as the CLI runs it
        code = main(["--db", str(tmp_path / "dask.db"), "link", "--dask",
                     cluster.scheduler_address, "--json"])
    assert code == 0
    results["dask"] = [json.loads(out.getvalue())]
    with imgmatch.Collection.open(tmp_path / "dask.db") as c:
        c.import_hashes(tmp_path / "second.txt", link=False)
        results["dask"].append(c.link_pairs(client=client))
    assert results["dask"] == results["local"]
    # planted copies (a copy at distance 0 is the same hash, so not every one pairs)
    assert results["local"][0]["pdq"]["pairs"] >= 100 and results["local"][1]["pdq"]["pairs"] >= 50
    assert _links(tmp_path / "dask.db") == _links(tmp_path / "local.db")


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize("command", ["ingest", "link"])
def test_a_wrong_scheduler_address_fails_quickly_and_clearly(tmp_path, capsys, command):
    db = tmp_path / "c.db"
    address = f"tcp://127.0.0.1:{_closed_port()}"
    args = [str(FIXTURES / "originals" / "astronaut.jpg")] if command == "ingest" else []
    started = time.monotonic()
    code = main(["--db", str(db), command, *args, "--dask", address])
    assert code == 3
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert f"cannot connect to the Dask scheduler at {address}" in err
    assert "dask scheduler" in err
    assert not db.exists()  # nothing was started
    assert main(["--db", str(db), command, *args, "--dask", "no-port-here"]) == 3
    assert "not a Dask scheduler address" in capsys.readouterr().err


def test_without_dask_installed_the_error_says_how(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    code = main(["--db", str(tmp_path / "c.db"), "ingest",
                 str(FIXTURES / "originals" / "astronaut.jpg"), "--dask", "tcp://127.0.0.1:8786"])
    assert code == 3
    assert "pip install 'imgmatch[dask]'" in capsys.readouterr().err
    with pytest.raises(imgmatch.DaskError, match=r"imgmatch\[dask\]"):
        imgmatch.connect_dask("tcp://127.0.0.1:8786")
