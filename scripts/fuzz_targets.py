"""Fuzz targets for imgmatch's parsers of untrusted input, and the runner of scripts/fuzz.

Every byte a crawl or a client sends is hostile. Each target here feeds bytes
to imgmatch's own parsing code the way ingest or the HTTP service does, and
takes imgmatch's named errors (and the form parser's own refusal) as the
expected outcome: any other exception, a crash, a hang or runaway memory is a
finding. A finding is kept as a file under tests/fuzz_regressions/<target>/,
which tests/test_fuzz_regressions.py runs through the same function (without
atheris, which only the ``fuzz`` extra installs).

The runner starts each target in a process of its own under atheris
(libFuzzer), on a seed corpus built at run time from fixtures/,
shared/pdq-reference, the regression files and a few inputs made here, all
copied into a temporary folder: fuzzing never writes to the repository.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imgmatch is imported by each target, after instrumentation starts
    from imgmatch.sources import Item

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"
REGRESSIONS = REPO / "tests" / "fuzz_regressions"
#: Memory one fuzzing process may hold before libFuzzer calls it a finding.
RSS_LIMIT_MB = 2048

Seeds = Iterator[tuple[str, bytes]]


def shared_dir() -> Path:
    """The shared folder, found as the tests find it: $IMGMATCH_SHARED, else
    ``shared`` beside the repository."""
    env = os.environ.get("IMGMATCH_SHARED")
    return Path(env).expanduser() if env else REPO.parent / "shared"


# ------------------------------------------------------------------ scratch
_scratch: Path | None = None


def scratch() -> Path:
    """A folder for the files a target must write (the readers take paths).

    The runner names one inside its own temporary folder (libFuzzer ends a
    process without Python's clean-up, so the runner removes it); elsewhere
    (the regression tests) a temporary folder is made and removed at exit.
    """
    global _scratch
    if _scratch is None:
        given = os.environ.get("IMGMATCH_FUZZ_SCRATCH")
        if given:
            _scratch = Path(given)
            _scratch.mkdir(parents=True, exist_ok=True)
        else:
            import atexit

            _scratch = Path(tempfile.mkdtemp(prefix="imgmatch-fuzz-"))
            atexit.register(shutil.rmtree, _scratch, True)
    return _scratch


def _use_item(item: Item) -> None:
    """What ingest does with every item before analysing and storing it: the
    bytes' digest taken, the sighting made storable and its identity taken."""
    digest = hashlib.sha256(item.data or b"").hexdigest()
    item.sighting.normalised().key(digest)


# ------------------------------------------------------------------ targets
def fuzz_decode(data: bytes) -> None:
    """Bytes as an ingest worker decodes them: imgmatch's decode with its
    default pixel limits and target size, the pixels the signals read, the
    colour decode, and the next frames of an animation."""
    from imgmatch.decode import decode, decode_frames
    from imgmatch.errors import ImgmatchError

    try:
        decoded = decode(data, source="fuzz")
        decoded.luma
        decoded.grey
        decoded.in_colour().luma
        if decoded.frames > 1:
            for _, frame in decode_frames(data, source="fuzz", limit=3):
                if not isinstance(frame, ImgmatchError):
                    frame.grey
    except ImgmatchError:
        return


def fuzz_warc(data: bytes) -> None:
    """Bytes as a web archive through imgmatch's record reader, every item and
    its payload consumed. warcio tells WARC from ARC (gzipped or not) by the
    bytes, not the name, so one pass covers both; the seeds hold both kinds."""
    from imgmatch.errors import ImgmatchError
    from imgmatch.warc import iter_warc

    path = scratch() / "fuzz.warc"
    path.write_bytes(data)
    try:
        for item in iter_warc(path):
            _use_item(item)
    except ImgmatchError:
        return


def _manifest(data: bytes, name: str) -> None:
    from imgmatch.errors import ImgmatchError
    from imgmatch.sources import iter_manifest

    folder = scratch() / "manifest"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    try:
        for item in iter_manifest(path):
            _use_item(item)
    except ImgmatchError:
        return


def fuzz_manifest_csv(data: bytes) -> None:
    """Bytes as a CSV manifest (``--manifest x.csv``): rows, paths confined to
    the manifest's folder, sightings."""
    _manifest(data, "manifest.csv")


def fuzz_manifest_jsonl(data: bytes) -> None:
    """Bytes as a JSON lines manifest (``--manifest x.jsonl``), and as the JSON
    lines a pipeline sends on standard input (``--jsonl -``, read as the CLI
    reads it: UTF-8, undecodable bytes replaced)."""
    from imgmatch.errors import ImgmatchError
    from imgmatch.sources import iter_jsonl_stream

    _manifest(data, "manifest.jsonl")
    try:
        for item in iter_jsonl_stream(io.StringIO(data.decode("utf-8", "replace"))):
            _use_item(item)
    except ImgmatchError:
        return


class UnstorableHash(Exception):
    """A hash list line the reader accepted but the catalog cannot store."""


#: SQLite's INTEGER, where the catalog keeps a hash's quality.
_SQLITE_INT = range(-2**63, 2**63)


def fuzz_hashlist(data: bytes) -> None:
    """Bytes as a partner's hash list (``imgmatch import-hashes``), read as a
    PDQ list and as a pHash list; every line read must be one the catalog can
    store (its value as long as the signal's, its quality an SQLite integer)."""
    from imgmatch.errors import ImgmatchError
    from imgmatch.hashlists import read_hash_list

    path = scratch() / "hashes.txt"
    path.write_bytes(data)
    for signal, digits in (("pdq", 64), ("phash", 16)):
        try:
            for line in read_hash_list(path, signal=signal, digits=digits):
                if line.value is None:
                    if not line.error:
                        raise UnstorableHash(f"line {line.line_no}: unreadable, but no error")
                    continue
                if len(line.value) * 2 != digits:
                    raise UnstorableHash(f"line {line.line_no}: {len(line.value)} bytes")
                if line.quality is not None and line.quality not in _SQLITE_INT:
                    raise UnstorableHash(f"line {line.line_no}: quality {line.quality}")
                line.hash
        except ImgmatchError:
            return


#: Bytes per ``http.request`` message: small, so that parts straddle messages
#: as they do when a server hands a body over in pieces.
MULTIPART_CHUNK = 1000
#: Bytes h11 (the service's HTTP/1.1 parser) refuses in a header value, with a
#: 400 before the app sees the request; it strips spaces and tabs around one.
_NOT_IN_HEADER = re.compile(rb"[\x00\r\x0b\x0c]")
_loop: asyncio.AbstractEventLoop | None = None


def fuzz_multipart(data: bytes) -> None:
    """A request as the service's upload endpoints parse it: the first line is
    its Content-Type, the rest its body. Starlette's ``request.form()``
    (python-multipart underneath) with its default limits, which the service
    keeps (its own body limit, 20 MB, is far above any input here), then what
    ``/v1/images`` and ``/v1/query`` read: the upload, the other fields as a
    sighting, a ``pdq`` field as a hash."""
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    _loop.run_until_complete(_multipart(data))


async def _multipart(data: bytes) -> None:
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException
    from starlette.requests import Request

    from imgmatch import Sighting
    from imgmatch.errors import ImgmatchError
    from imgmatch.signals import parse_hash

    content_type, _, body = data.partition(b"\n")
    if _NOT_IN_HEADER.search(content_type):
        return
    content_type = content_type.strip(b" \t")
    chunks = [body[i:i + MULTIPART_CHUNK] for i in range(0, len(body), MULTIPART_CHUNK)] or [b""]

    async def receive() -> dict:
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    scope = {"type": "http", "method": "POST", "path": "/v1/images", "query_string": b"",
             "headers": [(b"content-type", content_type),
                         (b"content-length", str(len(body)).encode())]}
    request = Request(scope, receive)
    try:
        form = await request.form()
    except (MultiPartException, HTTPException):  # the service answers 400
        return
    try:
        upload = form.get("image")
        if upload is not None and not isinstance(upload, str):
            await upload.read()
            upload.filename
        fields = {k: v for k, v in form.multi_items() if k != "image" and isinstance(v, str)}
        Sighting.from_fields(fields).normalised().key("0" * 64)
        pdq = form.get("pdq")
        if isinstance(pdq, str):
            parse_hash(pdq)
    except ImgmatchError:
        pass
    finally:
        await form.close()


# -------------------------------------------------------------------- seeds
def _seed_files(*folders: Path, suffixes: tuple[str, ...] = ()) -> Iterator[Path]:
    for folder in folders:
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if path.is_file() and (not suffixes or path.suffix.lower() in suffixes):
                    yield path


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff",
                   ".heic", ".avif")


def _small(path: Path, limit: int) -> bytes | None:
    """An image file as a seed: as it is when small enough, else a 96-pixel copy
    in the same format and mode (with its EXIF), so a large photo still brings
    its structure within the fuzzer's input size."""
    data = path.read_bytes()
    if len(data) <= limit:
        return data
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, exif = img.format or "PNG", img.info.get("exif")
            img.thumbnail((96, 96))
            out = io.BytesIO()
            img.save(out, fmt, **({"exif": exif} if exif else {}))
    except Exception:  # a seed that cannot be made is one seed fewer
        return None
    return out.getvalue() if out.tell() <= limit else None


def image_seeds() -> Seeds:
    """Tiny images in each format and mode decode treats apart: animation, EXIF
    orientation and date, 16-bit, palette with transparency, CMYK, and HEIF
    when pillow-heif can write it."""
    from PIL import Image

    base = Image.linear_gradient("L").resize((48, 32)).convert("RGB")

    def save(img: Image.Image, fmt: str, **options) -> bytes:
        out = io.BytesIO()
        img.save(out, fmt, **options)
        return out.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6
    exif.get_ifd(0x8769)[0x9003] = "2024:02:29 23:59:59"
    yield "exif.jpg", save(base, "JPEG", exif=exif.tobytes(), progressive=True)
    yield "cmyk.jpg", save(base.convert("CMYK"), "JPEG")
    yield "grey.png", save(base.convert("L"), "PNG")
    yield "i16.png", save(base.convert("I;16"), "PNG")
    yield "la.png", save(base.convert("LA"), "PNG")
    palette = base.convert("P")
    yield "p-transparent.png", save(palette, "PNG", transparency=0)
    yield "1bit.bmp", save(base.convert("1"), "BMP")
    frames = [base, base.rotate(90), base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    yield "animated.gif", save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    yield "animated.png", save(frames[0], "PNG", save_all=True, append_images=frames[1:])
    yield "pages.tif", save(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    yield "tiny.webp", save(base, "WEBP")
    try:
        from pillow_heif import register_heif_opener

        register_heif_opener()
        yield "tiny.heic", save(base, "HEIF")
    except Exception:  # no HEIF encoder here: fuzz without that seed
        pass


def decode_seeds() -> Seeds:
    yield from image_seeds()
    ref = shared_dir() / "pdq-reference"
    for path in _seed_files(FIXTURES, ref, suffixes=_IMAGE_SUFFIXES):
        data = _small(path, TARGETS["decode"].max_len)
        if data is not None:
            yield path.name, data


def _tiny_jpeg() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.linear_gradient("L").resize((16, 16)).save(out, "JPEG", quality=50)
    return out.getvalue()


def warc_seeds() -> Seeds:
    """A WARC (plain and gzipped) with a request, an image, its page, a revisit
    and a truncated image, and an ARC file (plain and gzipped per record)."""
    import gzip

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    jpeg = _tiny_jpeg()
    for gz in (False, True):
        out = io.BytesIO()
        with warnings.catch_warnings():  # warcio leaves its temporary files to the GC
            warnings.simplefilter("ignore", ResourceWarning)
            writer = WARCWriter(out, gzip=gz)

            def response(uri: str, payload: bytes, ctype: str, declared: int | None = None):
                http = StatusAndHeaders("200 OK", [
                    ("Content-Type", ctype), ("Content-Length", str(declared or len(payload)))],
                    protocol="HTTP/1.1")
                record = writer.create_warc_record(
                    uri, "response", payload=io.BytesIO(payload), http_headers=http,
                    warc_headers_dict={"WARC-Date": "2024-01-02T03:04:05Z"})
                writer.write_record(record)
                return record

            request = writer.create_warc_record(
                "https://ads.example/1/a.jpg", "request", payload=io.BytesIO(b""),
                http_headers=StatusAndHeaders("GET /1/a.jpg HTTP/1.1", [
                    ("Host", "ads.example"), ("Referer", "https://ads.example/1")],
                    protocol="HTTP/1.1", is_http_request=True))
            writer.write_record(request)
            image = response("https://ads.example/1/a.jpg", jpeg, "image/jpeg")
            response("https://ads.example/1", b"<html>an ad</html>", "text/html")
            response("https://ads.example/2/b.jpg", jpeg[:200], "image/jpeg", len(jpeg))
            writer.write_record(writer.create_revisit_record(
                "https://ads.example/3/c.jpg", image.rec_headers.get_header("WARC-Payload-Digest"),
                "https://ads.example/1/a.jpg", "2024-01-02T03:04:05Z"))
            del request, image
            writer = None  # its spooled temporary files go with it  # noqa: F841
            gc.collect()
        yield ("crawl.warc.gz" if gz else "crawl.warc"), out.getvalue()

    def arc_record(url: str, ctype: str, body: bytes) -> bytes:
        return f"{url} 192.0.2.7 20240102030405 {ctype} {len(body)}\n".encode() + body + b"\n"

    def http(ctype: str, payload: bytes) -> bytes:
        return (f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload

    version = b"1 0 fuzz\nURL IP-address Archive-date Content-type Archive-length\n"
    records = [arc_record("filedesc://crawl.arc", "text/plain", version),
               arc_record("http://ads.example/7/photo.jpg", "image/jpeg",
                          http("image/jpeg", jpeg)),
               arc_record("http://ads.example/7", "text/html",
                          http("text/html", b"<html>an ad</html>"))]
    yield "crawl.arc", b"".join(records)
    yield "crawl.arc.gz", b"".join(gzip.compress(r) for r in records)


def manifest_csv_seeds() -> Seeds:
    yield "manifest.csv", (FIXTURES / "manifest.csv").read_bytes()
    yield "one-row.csv", b"path,platform,posted_at\nads/1.jpg,citylist,2024-01-02\n"
    yield "bom-quoted.csv", ("\ufeffpath,url,extra_note\n"
                             '"a b.jpg",https://x.example/1,"two\nlines"\n'
                             "../outside.jpg,,\n").encode()


def manifest_jsonl_seeds() -> Seeds:
    import csv

    with (FIXTURES / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    yield "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode()
    yield "one-line.jsonl", b'{"path": "ads/1.jpg", "platform": "citylist", "posted_at": 1700000000}\n'
    yield "mixed.jsonl", (json.dumps({"data": base64.b64encode(_tiny_jpeg()).decode(),
                                      "extra": {"phone": ["555-0142"]}}) + "\n"
                          + '[1, 2]\n{"path": "/etc/passwd"}\nnot json\n\n').encode()


def hashlist_seeds() -> Seeds:
    ref = shared_dir() / "pdq-reference" / "reference-hashes.csv"
    if ref.is_file():
        yield ref.name, ref.read_bytes()
    pdq = "f8f8f0cce0f4e84d0e370a22028f67f0b36e2ed596623e1d33e6339c4e9c9b22"
    yield "threatexchange.txt", f"# a partner's list\npdq {pdq} ad 7\n\n{pdq}\n".encode()
    yield "hasher.csv", f"hash,quality,filename\n{pdq},100,a.jpg\n{pdq},x,b.jpg\n".encode()
    yield "phash.txt", b"phash 8f373714acfcf4d0\n8f373714acfcf4d0,50,c.jpg\n"


def multipart_seeds() -> Seeds:
    boundary = "fuzzboundary"
    image = (f"--{boundary}\r\n"
             'Content-Disposition: form-data; name="image"; filename="ad.jpg"\r\n'
             "Content-Type: image/jpeg\r\n\r\n").encode() + _tiny_jpeg() + (
             f"\r\n--{boundary}\r\n"
             'Content-Disposition: form-data; name="platform"\r\n\r\ncitylist\r\n'
             f"--{boundary}\r\n"
             'Content-Disposition: form-data; name="posted_at"\r\n\r\n2024-01-02\r\n'
             f"--{boundary}--\r\n").encode()
    yield "upload.txt", f"multipart/form-data; boundary={boundary}\n".encode() + image
    query = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"pdq\"\r\n\r\n"
             f"{'f8' * 32}\r\n--{boundary}--\r\n")
    yield "query.txt", (f"multipart/form-data; charset=latin-1; boundary={boundary}\n"
                        + query).encode()
    yield "urlencoded.txt", b"application/x-www-form-urlencoded\npdq=abc&platform=x%20y&url="


# ------------------------------------------------------------------ registry
@dataclass(frozen=True)
class Target:
    """A fuzz target: its function, its input size, how long one input may take
    before it counts as a hang, its seeds, and the modules whose Python code
    guides the fuzzer (instrumented for coverage)."""

    name: str
    run: Callable[[bytes], None]
    max_len: int
    timeout: int
    seeds: Callable[[], Seeds]
    modules: tuple[str, ...]


_PIL = ("PIL.Image", "PIL.ImageFile", "PIL.JpegImagePlugin", "PIL.MpoImagePlugin",
        "PIL.PngImagePlugin", "PIL.GifImagePlugin", "PIL.WebPImagePlugin",
        "PIL.BmpImagePlugin", "PIL.TiffImagePlugin", "PIL.TiffTags")
_SIGHTINGS = ("imgmatch.records", "imgmatch.text")

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("decode", fuzz_decode, 65536, 30, decode_seeds, (*_PIL, "imgmatch.decode")),
    Target("warc", fuzz_warc, 32768, 10, warc_seeds,
           ("warcio", "warcio.archiveiterator", "warcio.recordloader",
            "warcio.statusandheaders", "warcio.bufferedreaders", "imgmatch.warc",
            *_SIGHTINGS)),
    Target("manifest_csv", fuzz_manifest_csv, 8192, 10, manifest_csv_seeds,
           ("imgmatch.sources", *_SIGHTINGS)),
    Target("manifest_jsonl", fuzz_manifest_jsonl, 8192, 10, manifest_jsonl_seeds,
           ("imgmatch.sources", *_SIGHTINGS)),
    Target("hashlist", fuzz_hashlist, 8192, 10, hashlist_seeds,
           ("imgmatch.hashlists", "imgmatch.records")),
    Target("multipart", fuzz_multipart, 16384, 10, multipart_seeds,
           ("python_multipart", "starlette.formparsers", "starlette.requests",
            "starlette.datastructures", "imgmatch.signals", *_SIGHTINGS)),
)}


def run_target(name: str, data: bytes) -> None:
    """Run one input through a target, as the fuzzer does: warnings (which
    hostile files cause in plenty) are not findings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        TARGETS[name].run(data)


def regression_seeds(name: str) -> Seeds:
    for path in _seed_files(REGRESSIONS / name):
        yield f"regression-{path.name}", path.read_bytes()


# ------------------------------------------------------------------- runner
_EXECUTED = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_ARTIFACT = re.compile(r"^(crash|timeout|oom|leak|slow-unit|python)-")


def executions(log: str) -> int | None:
    """The number of inputs run, from libFuzzer's final stats (None if absent)."""
    found = _EXECUTED.findall(log)
    return int(found[-1]) if found else None


@dataclass
class Outcome:
    """What fuzzing one target gave: how many inputs ran, and the findings."""

    target: str
    seconds: int
    executions: int | None
    findings: list[Path]
    log: str


def fuzz_one(target: Target, seconds: int, work: Path, corpus_only: bool,
             keep_going: bool) -> Outcome:
    """Fuzz one target in its own process and collect what it found."""
    corpus, artifacts = work / "corpus", work / "artifacts"
    corpus.mkdir(parents=True)
    artifacts.mkdir()
    count = 0
    for seeds in (target.seeds(), regression_seeds(target.name)):
        for _, data in seeds:
            (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)
            count += 1
    # one bar for "too slow": the target's timeout. libFuzzer would also keep
    # any input slower than 10 s as a "slow unit", and under load the decode
    # target's 130-megapixel GIF seeds cross that while far inside the timeout
    flags = [f"-timeout={target.timeout}", f"-report_slow_units={target.timeout}",
             f"-rss_limit_mb={RSS_LIMIT_MB}",
             f"-max_len={target.max_len}", "-print_final_stats=1",
             f"-artifact_prefix={artifacts}{os.sep}",
             "-runs=0" if corpus_only else f"-max_total_time={seconds}"]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", target.name,
           "--artifacts", str(artifacts), *(["--keep-going"] if keep_going else []),
           "--", str(corpus), *flags]
    env = dict(os.environ, IMGMATCH_FUZZ_SCRATCH=str(work / "scratch"))
    print(f"{target.name}: {count} seeds, "
          + ("the seed corpus only" if corpus_only else f"{seconds} s"), flush=True)
    # the child's own -timeout catches a slow input; this catches a stuck process
    limit = (0 if corpus_only else seconds) + target.timeout * 4 + 300
    try:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=env, timeout=limit, cwd=work)
        log, code = done.stdout.decode("utf-8", "replace"), done.returncode
    except subprocess.TimeoutExpired as exc:
        log = (exc.stdout or b"").decode("utf-8", "replace") + \
            f"\nthe fuzzing process was still running after {limit} s and was stopped\n"
        code = -1
    (work / "fuzz.log").write_text(log)
    # inputs only: a traceback beside an input (--keep-going) goes along with it
    findings = sorted(p for p in artifacts.iterdir()
                      if _ARTIFACT.match(p.name) and p.suffix != ".txt")
    if code != 0 and not findings:
        findings = [work / "fuzz.log"]
    return Outcome(target.name, 0 if corpus_only else seconds, executions(log), findings, log)


def _child(name: str, artifacts: Path, keep_going: bool, libfuzzer_args: list[str]) -> None:
    """Fuzz one target in this process: the libFuzzer side of :func:`fuzz_one`."""
    import importlib

    try:
        import atheris
    except ImportError:
        sys.exit("atheris is not installed: pip install -e '.[fuzz]' (scripts/fuzz does it)")
    target = TARGETS[name]
    with atheris.instrument_imports(include=sorted({m.split(".")[0] for m in target.modules})):
        for module in target.modules:
            importlib.import_module(module)
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)  # python-multipart logs every malformed body
    seen: set[str] = set()

    def one_input(data: bytes) -> None:
        if not keep_going:
            target.run(data)
            return
        try:
            target.run(data)
        except Exception as exc:  # noqa: BLE001 - every unexpected exception is a finding
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            signature = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"
            if signature not in seen:
                seen.add(signature)
                stem = artifacts / f"python-{hashlib.sha1(data).hexdigest()}"
                stem.write_bytes(data)
                stem.with_suffix(".txt").write_text(signature + "\n" + traceback.format_exc())
                print(f"finding (going on): {signature}", file=sys.stderr, flush=True)

    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/fuzz", description="Fuzz imgmatch's parsers of untrusted input.",
        epilog=f"targets: {', '.join(TARGETS)}")
    parser.add_argument("--seconds", type=int, default=60,
                        help="how long to fuzz each target (default: 60)")
    parser.add_argument("--target", dest="targets", action="extend", nargs="+",
                        choices=sorted(TARGETS), metavar="NAME",
                        help="fuzz only these targets (default: all)")
    parser.add_argument("--corpus-only", action="store_true",
                        help="run each seed once, without fuzzing")
    parser.add_argument("--keep-going", action="store_true",
                        help="record each distinct Python exception and go on fuzzing "
                             "(crashes, hangs and memory still stop a target)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("libfuzzer", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.artifacts, args.keep_going, args.libfuzzer)
        return 0
    if args.seconds < 1:
        parser.error("--seconds must be at least 1")

    outcomes = []
    with tempfile.TemporaryDirectory(prefix="imgmatch-fuzz-") as tmp:
        for name in args.targets or TARGETS:
            outcomes.append(fuzz_one(TARGETS[name], args.seconds, Path(tmp) / name,
                                     args.corpus_only, args.keep_going))
        kept = _keep_findings(outcomes)

    print(f"\n{'target':<16}{'seconds':>8}{'executions':>12}{'findings':>10}")
    for o in outcomes:
        runs = "?" if o.executions is None else f"{o.executions:,}"
        print(f"{o.target:<16}{o.seconds:>8}{runs:>12}{len(o.findings):>10}")
    if kept is None:
        return 0
    print(f"\nFindings were kept in {kept}: each file is an input (beside it, its log "
          "or traceback). Save each input under tests/fuzz_regressions/<target>/ and fix "
          "the parser until tests/test_fuzz_regressions.py passes.", file=sys.stderr)
    return 1


def _keep_findings(outcomes: list[Outcome]) -> Path | None:
    """Copy every finding (and its target's log) out of the work folder, which
    is about to go, into a folder of its own; None when there are none."""
    if not any(o.findings for o in outcomes):
        return None
    kept = Path(tempfile.mkdtemp(prefix="imgmatch-fuzz-findings-"))
    for o in outcomes:
        if not o.findings:
            continue
        folder = kept / o.target
        folder.mkdir()
        (folder / "fuzz.log").write_text(o.log)
        for path in o.findings:
            if path.name != "fuzz.log":
                for kept_file in (path, path.with_suffix(".txt")):
                    if kept_file.is_file():
                        shutil.copy(kept_file, folder / kept_file.name)
        print(f"\n{o.target}: {len(o.findings)} finding(s), kept in {folder}", file=sys.stderr)
        for path in o.findings:
            note = path.with_suffix(".txt")
            if note.is_file():  # --keep-going: its signature
                print(f"  {path.name}: {note.read_text().splitlines()[0]}", file=sys.stderr)
        print(_what_happened(o.log), file=sys.stderr)
    return kept


def _what_happened(log: str) -> str:
    """The part of a fuzzing log that says what stopped it: the Python traceback,
    else libFuzzer's error lines (a hang, memory, a native crash)."""
    lines = log.splitlines()
    start = next((i for i, line in enumerate(lines) if "Uncaught Python exception" in line),
                 None)
    if start is not None:
        end = next((i for i in range(start, len(lines)) if "ERROR: libFuzzer" in lines[i]),
                   len(lines))
        return "\n".join(lines[start:end + 1])
    errors = [line for line in lines if "ERROR:" in line or "SUMMARY:" in line]
    return "\n".join(errors) if errors else ""


if __name__ == "__main__":
    sys.exit(main())
