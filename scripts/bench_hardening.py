"""Figures for the hardening work: what hostile input and careless operation cost now.

    scripts/bench hardening [--md]

Each row repeats one attack of the hardening issue against this checkout, on
loopback, and prints what it costs after the fix: peak memory of the process
that used to blow up, how long, whether /healthz kept answering, and bytes of
an erased image found in the collection's files. Peak memory is the kernel's
high-water mark of each process (VmHWM), so nothing is sampled.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import os
import resource
import shutil
import socket
import sqlite3
import stat
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
CLI = [sys.executable, "-m", "imgmatch.cli"]


def run(*args: object, umask: int | None = None) -> str:
    done = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=600, preexec_fn=(lambda: os.umask(umask)) if umask else None)
    if done.returncode not in (0, 1):
        raise SystemExit(done.stderr)
    return done.stdout


def chunk(name: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + name + body
            + struct.pack(">I", zlib.crc32(name + body) & 0xFFFFFFFF))


def rgba_png(side: int) -> bytes:
    row = bytes(1 + side * 4)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row * 100) for _ in range(side // 100)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 6, 0,
                                                             0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def gzip_bomb(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    return b"".join([packer.compress(b"\xff\xd8\xff\xe0")]
                    + [packer.compress(zeros) for _ in range(size >> 20)] + [packer.flush()])


def bomb_warc(path: Path, payload: bytes) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with path.open("wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        headers = StatusAndHeaders("200 OK", [("Content-Type", "image/jpeg"),
                                              ("Content-Encoding", "gzip"),
                                              ("Content-Length", str(len(payload)))],
                                   protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(
            "https://bomb.example/a.jpg", "response", payload=io.BytesIO(payload),
            http_headers=headers))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else {}
    finally:
        conn.close()


def upload(port: int, key: str, path: str, data: bytes) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"x\"\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return request(port, "POST", path, body, {
        "Authorization": f"Bearer {key}",
        "Content-Type": f"multipart/form-data; boundary={boundary}"})


def outcome(status: int, body: dict) -> str:
    """'200' or '400 out-of-memory': how a request ended."""
    return f"{status} {body['error']['reason']}" if "error" in body else str(status)


def health(port: int) -> float:
    start = time.monotonic()
    request(port, "GET", "/healthz")
    return time.monotonic() - start


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def serving(db: Path, *extra: str):
    port = free_port()
    log = (db.parent / "serve.log").open("w")
    proc = subprocess.Popen([*CLI, "--db", str(db), "serve", "--port", str(port),
                             "--max-upload-mb", "200", *extra], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                if request(port, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


# ------------------------------------------------------------------ the rows
def warc_bomb(work: Path, size_gb: int) -> dict:
    warc = work / f"bomb{size_gb}.warc.gz"
    bomb_warc(warc, gzip_bomb(size_gb << 30))
    script = ("import json, sys, time, imgmatch\nfrom imgmatch.warc import iter_warc\n"
              "t = time.monotonic()\n"
              "with imgmatch.Collection.open(sys.argv[1]) as c:\n"
              "    s = c.ingest(iter_warc(sys.argv[2]), workers=1)\n"
              "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
              "print(json.dumps([int(peak.split()[1]),"
              " time.monotonic() - t, [f[1] for f in s.failures]]))\n")
    done = subprocess.run([sys.executable, "-c", script, str(work / f"w{size_gb}.db"),
                           str(warc)], capture_output=True, text=True, timeout=900)
    peak_kb, seconds, reasons = json.loads(done.stdout)
    return {"row": 1, "what": f"WARC of {warc.stat().st_size / 1024:.0f} KB whose record inflates "
            f"to {size_gb} GB", "after": f"ingest parent peak {peak_kb / 1024:.0f} MB, "
            f"{seconds:.1f} s, recorded as {', '.join(reasons)}"}


def service_bomb(work: Path, max_memory: int, reupload: bool = True) -> list[dict]:
    work.mkdir(exist_ok=True)
    db = work / "svc.db"
    run("--db", db, "ingest", "--quiet", FIXTURES / "originals" / "cat.jpg")
    key = run("--db", db, "keys", "add", "k", "--scope", "admin").strip().splitlines()[-1]
    bomb = rgba_png(12_000)
    rows = []
    with serving(db, "--max-memory", str(max_memory)) as (port, proc):
        base = peak_mb(proc.pid)
        start = time.monotonic()
        status, body = upload(port, key, "/v1/query", bomb)
        one = time.monotonic() - start
        rows.append({"row": 2, "what": f"one 12,000 x 12,000 RGBA PNG of "
                     f"{len(bomb) / 1024:.0f} KB to /v1/query, decoders capped at "
                     f"{max_memory:,} MB",
                     "after": f"{outcome(status, body)} in {one:.1f} s; service "
                     f"peak {peak_mb(proc.pid):.0f} MB (at start {base:.0f} MB)"})
        with ThreadPoolExecutor(4) as pool:
            answers = [pool.submit(upload, port, key, "/v1/query", bomb) for _ in range(4)]
            worst = 0.0
            start = time.monotonic()
            while not all(a.done() for a in answers):
                worst = max(worst, health(port))
                time.sleep(0.1)
            took = time.monotonic() - start
        reasons = sorted({outcome(*a.result()) for a in answers})
        rows.append({"row": 2, "what": "four of them at once",
                     "after": f"{' / '.join(reasons)} in {took:.1f} s; service peak "
                     f"{peak_mb(proc.pid):.0f} MB; slowest /healthz {worst * 1000:.0f} ms"})
        if not reupload:
            return rows
        big = work / "big.png"  # no reduced decode for PNG, unlike JPEG: a slow one
        from PIL import Image

        Image.open(FIXTURES / "originals" / "astronaut.jpg").resize((8000, 6000)).save(big)
        data = big.read_bytes()
        upload(port, key, "/v1/images", data)
        small = (FIXTURES / "originals" / "cat.jpg").read_bytes()
        with ThreadPoolExecutor(2) as pool:
            again = pool.submit(upload, port, key, "/v1/images", data)
            time.sleep(0.05)
            waits = []
            while not again.done():
                start = time.monotonic()
                upload(port, key, "/v1/query", small)
                waits.append(time.monotonic() - start)
        rows.append({"row": 10, "what": f"queries while a known {len(data) >> 20} MB, "
                     "48-megapixel PNG is uploaded again",
                     "after": f"slowest of {len(waits)} queries {max(waits or [0]) * 1000:.0f} ms"})
    return rows


def slow_headers(work: Path, clients: int) -> dict:
    db = work / "slow.db"
    run("--db", db, "ingest", "--quiet", FIXTURES / "originals" / "cat.jpg")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    clients = min(clients, hard - 200)
    with serving(db, "--header-timeout", "10") as (port, proc):
        socks = []
        for _ in range(clients):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                socks.append(s)
            except OSError:
                break
        during = health(port)
        time.sleep(11)
        closed = 0
        for s in socks:
            try:
                s.settimeout(1)
                closed += s.recv(1) == b""
            except OSError:
                closed += 1
            s.close()
        after = health(port)
    log = (db.parent / "serve.log").stat().st_size
    return {"row": 5, "what": f"{len(socks):,} connections sending headers slowly "
            f"(file limit {hard:,})", "after": f"/healthz {during * 1000:.0f} ms during, "
            f"{closed:,} of {len(socks):,} cut off after the 10 s header limit, "
            f"/healthz {after * 1000:.0f} ms after; log {log:,} bytes"}


def erasure(work: Path) -> dict:
    case = work / "case"
    case.mkdir()
    gone = FIXTURES / "reposts" / "astronaut_citylist_2023.jpg"
    shutil.copy(gone, case / "gone-zq81.jpg")
    shutil.copy(FIXTURES / "originals" / "cat.jpg", case / "cat.jpg")
    (case / "m.csv").write_text("path,platform,url,ad_id,phone\n"
                                "gone-zq81.jpg,x,https://e.example/zq81.jpg,ad-zq81,555-9931\n"
                                "cat.jpg,x,https://e.example/cat.jpg,ad-cat,555-0000\n")
    store = work / "store"
    store.mkdir()
    db = store / "c.db"
    run("--db", db, "ingest", "--thumbnails", "--quiet", "--manifest",
        case / "m.csv")
    sha = hashlib.sha256(gone.read_bytes()).hexdigest()
    with sqlite3.connect(db) as conn:
        (image_id,) = conn.execute("SELECT id FROM images WHERE sha256 = ?", (sha,)).fetchone()
        needles = [sha.encode(), bytes.fromhex(sha), b"zq81", b"555-9931"]
        needles += [bytes(v) for (v,) in conn.execute(
            "SELECT value FROM signals WHERE image_id = ? AND signal = 'pdq'", (image_id,))]
        needles += [bytes(j)[-200:-136] for (j,) in conn.execute(
            "SELECT jpeg FROM thumbnails WHERE image_id = ?", (image_id,))]

    def found() -> int:
        return sum(f.read_bytes().count(n) for f in store.rglob("*") if f.is_file()
                   for n in needles)

    before = found()
    key = run("--db", db, "keys", "add", "k", "--scope", "admin").strip().splitlines()[-1]
    with serving(db) as (port, _):
        upload(port, key, "/v1/query", gone.read_bytes())
        run("--db", db, "erase", sha)
        status, body = upload(port, key, "/v1/query", gone.read_bytes())
        still = sum(m["sha256"] == sha for m in body.get("matches", []))
    return {"row": 3, "what": "erase beside a running service (robust tier, thumbnails)",
            "after": f"copies of its SHA-256, PDQ, thumbnail, URL, ad id and phone in the "
            f"collection's files: {before} before, {found()} after; the service's next "
            f"query returns it {still} times"}


def permissions(work: Path) -> list[dict]:
    folder = work / "perm"
    folder.mkdir()
    db = folder / "c.db"
    run("--db", db, "ingest", "--quiet", "--thumbnails", FIXTURES / "originals" / "cat.jpg",
        FIXTURES / "reposts" / "cat_citylist_2023.jpg", umask=0o022)
    plain, shown = folder / "r.html", folder / "t.html"
    run("--db", db, "report", "--format", "html", "-o", plain, umask=0o022)
    run("--db", db, "report", "--format", "html", "--thumbnails", "-o", shown, umask=0o022)
    modes = sorted({oct(stat.S_IMODE(p.stat().st_mode)) for p in folder.rglob("*")
                    if p.name != "serve.log"})

    def pictures(page: Path) -> int:
        text = page.read_text()
        start = text.find('id="report-thumbs">')
        return 0 if start < 0 else len(json.loads(
            text[start + len('id="report-thumbs">'):text.index("</script>", start)]))

    return [{"row": 9, "what": "files a CLI ingest and report make under umask 022",
             "after": f"modes {', '.join(modes)}"},
            {"row": 8, "what": "HTML report of a collection holding thumbnails",
             "after": f"pictures embedded: {pictures(plain)} without --thumbnails, "
             f"{pictures(shown)} with it (its first screen says so)"}]


def small_rows(work: Path) -> list[dict]:
    """Rows 4, 6, 7, 11, 12, 13, 14: each a count or a time, measured once."""
    import re
    import signal as signals

    rows = []
    db = work / "small.db"
    run("--db", db, "ingest", "--quiet", FIXTURES / "originals" / "cat.jpg")
    key = run("--db", db, "keys", "add", "k", "--scope", "admin").strip().splitlines()[-1]
    astronaut = (FIXTURES / "originals" / "astronaut.jpg").read_bytes()
    with serving(db) as (port, proc):
        run("--db", db, "ingest", "--quiet", FIXTURES / "originals" / "astronaut.jpg")
        start = time.monotonic()
        while not upload(port, key, "/v1/query", astronaut)[1].get("matches"):
            time.sleep(0.05)
        rows.append({"row": 4, "what": "an image a CLI ingest adds beside the running service",
                     "after": f"found by the service {time.monotonic() - start:.2f} s after "
                     "the ingest ended"})
        lower = request(port, "GET", "/v1/clusters", headers={"Authorization": f"bearer {key}"})
        shapes = [request(port, m, path, headers={"Authorization": f"Bearer {key}"})
                  for m, path in (("GET", "/nowhere"), ("DELETE", "/v1/clusters"))]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/docs")
        page = conn.getresponse().read().decode()
        conn.close()
        external = len(re.findall(r"(src|href)=\"?(https?:)?//", page))
        rows.append({"row": 13, "what": "/docs", "after": f"{len(page):,} bytes, made by the "
                     f"service; references to other hosts: {external}"})
        proc.send_signal(signals.SIGKILL)
        proc.wait(30)
    run("--db", db, "ingest", "--quiet", FIXTURES / "originals" / "rocket.jpg")
    with sqlite3.connect(db) as conn:
        (status,) = conn.execute("SELECT status FROM runs WHERE command = 'serve'").fetchone()
    rows.append({"row": 14, "what": "protocol details", "after": f"'bearer' in lower case: "
                 f"{lower[0]}; unknown route and wrong method: "
                 f"{', '.join(f'{st} with {sorted(body)}' for st, body in shapes)}; a "
                 f"server killed with SIGKILL: run '{status}' once the next command starts"})
    # CSV: a CR inside a URL, read by a reader that ends lines at any CR or LF
    case = work / "csv"
    case.mkdir()
    shutil.copy(FIXTURES / "originals" / "cat.jpg", case / "a.jpg")
    shutil.copy(FIXTURES / "originals" / "cat.jpg", case / "b.jpg")
    (case / "m.jsonl").write_text("".join(
        json.dumps({"path": n, "platform": "p", "url": f"http://x/{n}\r=cmd|' /C calc'!A0"})
        + "\n" for n in ("a.jpg",)) + json.dumps({"path": "b.jpg", "platform": "q"}) + "\n")
    (case / "b.jpg").write_bytes((case / "b.jpg").read_bytes() + b"\0")
    cdb = case / "c.db"
    run("--db", cdb, "ingest", "--quiet", "--manifest", case / "m.jsonl")
    text = run("--db", cdb, "report", "--format", "csv", "--min-sightings", "1")
    formulas = sum(cell.lstrip('"').startswith(("=", "+", "-", "@"))
                   for line in re.split("[\r\n]", text) for cell in line.split(","))
    rows.append({"row": 6, "what": "a crawled URL holding CR then =cmd|..., in the CSV report",
                 "after": f"cells starting a formula for a reader splitting at CR: {formulas}"})
    # NUL in a manifest path, twice
    (case / "nul.csv").write_text("path,platform\na\x00.jpg,p\na.jpg,p\n")
    outcomes = []
    for _ in range(2):
        out = json.loads(run("--db", work / "nul.db", "ingest", "--json", "--manifest",
                             case / "nul.csv"))
        outcomes.append(f"{out['failure_reasons']} and {out['sightings_added'] + out['sightings_known']} "
                        "sighting kept")
    rows.append({"row": 7, "what": "a NUL byte in one manifest path, ingested twice",
                 "after": "; ".join(outcomes)})
    # FIFO
    fifo_dir = work / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "pipe.jpg")
    start = time.monotonic()
    out = json.loads(run("--db", work / "fifo.db", "ingest", "--json", "--workers", "1",
                         fifo_dir))
    rows.append({"row": 12, "what": "a FIFO named pipe.jpg in a walked folder",
                 "after": f"recorded as {', '.join(out['failure_reasons'])} in "
                 f"{time.monotonic() - start:.1f} s (the whole ingest command)"})
    # two processes saving one index, 80 times
    script = ("import sys, numpy as np\nfrom pathlib import Path\n"
              "from imgmatch.index import BinaryIndex\n"
              "rng = np.random.default_rng()\n"
              "for _ in range(80):\n"
              "    i = BinaryIndex(64); i.add(np.arange(1, 51), rng.integers(0, 256, (50, 8),"
              " dtype=np.uint8))\n"
              "    i.save(Path(sys.argv[1]), collection_id='c', signal='phash', deletions=0)\n")
    target = work / "idx" / "phash.mih"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(target)],
                              stderr=subprocess.PIPE) for _ in range(2)]
    failed = sum(proc.wait(300) != 0 for proc in procs)
    rows.append({"row": 11, "what": "two processes saving the same index, 80 saves each",
                 "after": f"processes that failed: {failed} of 2"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--md", action="store_true", help="print a Markdown table")
    parser.add_argument("--slow-clients", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = [warc_bomb(work, 1), warc_bomb(work, 3), *service_bomb(work, 4096),
                *service_bomb(work / "low", 1024, reupload=False),
                slow_headers(work, args.slow_clients), erasure(work), *permissions(work),
                *small_rows(work)]
        rows.sort(key=lambda r: r["row"])
    if args.md:
        print("| # | attack | after the fix |\n|---|---|---|")
        for r in rows:
            cells = [str(r["row"]), r["what"], r["after"]]
            print("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    else:
        for r in rows:
            print(f"#{r['row']:<3} {r['what']}\n     {r['after']}")


if __name__ == "__main__":
    main()
