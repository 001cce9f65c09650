"""Shared fixtures: the project's own photos and the PDQ reference material.

The reference material (Meta's PDQ test images and published hashes) lives in
``shared/pdq-reference`` beside the repository, or wherever the environment
variable ``IMGMATCH_SHARED`` points (the folder that holds ``pdq-reference``).
Tests that need it are skipped when it is absent.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"
ORIGINALS = FIXTURES / "originals"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(side: int = 40_000) -> bytes:
    """A valid, all-black 1-bit PNG of side x side pixels (under 1 MB on disk).

    The same file as ``Image.new("1", (side, side)).save(...)``, written
    directly because Pillow needs several seconds to encode 1.6 gigapixels.
    """
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    rows_per_block = 1000
    z = zlib.compressobj(1)
    body = b"".join(z.compress(row * rows_per_block) for _ in range(side // rows_per_block))
    body += z.compress(row * (side % rows_per_block)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body)
            + _png_chunk(b"IEND", b""))


def shared_dir() -> Path:
    """The shared folder: $IMGMATCH_SHARED, else ``shared`` beside the repository."""
    env = os.environ.get("IMGMATCH_SHARED")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "shared"


def pdq_reference_dir() -> Path | None:
    """``shared/pdq-reference`` if it is there (with its hash table), else None."""
    path = shared_dir() / "pdq-reference"
    return path if (path / "reference-hashes.csv").is_file() else None


@pytest.fixture(scope="session")
def pdq_reference() -> Path:
    path = pdq_reference_dir()
    if path is None:
        pytest.skip("shared/pdq-reference not found")
    return path


@pytest.fixture(scope="session")
def photo_bytes() -> bytes:
    """A real photo (512 x 512 JPEG) from the project's fixtures."""
    return (ORIGINALS / "astronaut.jpg").read_bytes()


@pytest.fixture(scope="session")
def original_paths() -> list[Path]:
    paths = sorted(ORIGINALS.glob("*.jpg"))
    assert paths, "fixtures/originals holds no photos"
    return paths



def _reference_rows(ref: Path) -> list[dict[str, str]]:
    with open(ref / "reference-hashes.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _mode_files(ref: Path) -> list[Path]:
    folder = ref / "misc-images" / "modes"
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in (".png", ".jpg", ".webp") and p.name != "original.jpg")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize over the reference material when a test asks for one item of it.

    ``reference_row``: a row of reference-hashes.csv (dict); ``mode_file``: a
    file of misc-images/modes other than original.jpg; ``labelme_path``: a
    photo of labelme-subset. Without the material
    the test gets one skipped parameter.
    """
    for name, items, ident in (
        ("reference_row", _reference_rows, lambda row: row["path"]),
        ("mode_file", _mode_files, lambda path: path.name),
        ("labelme_path", lambda ref: sorted((ref / "labelme-subset").glob("*.jpg")),
         lambda path: path.name),
    ):
        if name not in metafunc.fixturenames:
            continue
        ref = pdq_reference_dir()
        if ref is None:
            metafunc.parametrize(name, [pytest.param(
                None, marks=pytest.mark.skip(reason="shared/pdq-reference not found"))])
        else:
            values = items(ref)
            metafunc.parametrize(name, values, ids=[ident(v) for v in values])


# ------------------------------------------------------------------ PostgreSQL
#: The server the PostgreSQL catalog tests use: .ci/run starts one with
#: scripts/postgres and names it here; without it, this session starts one
#: itself where the server's programs are installed (never installing them).
ENV_TEST_PG = "IMGMATCH_TEST_PG"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server's maintenance database, for tests that
    make catalogs in databases of their own; skipped, saying why, where no
    server can be had."""
    pytest.importorskip("psycopg", reason="psycopg is not installed "
                                          "(pip install 'imgmatch[postgres]')")
    url = os.environ.get(ENV_TEST_PG)
    if url:
        yield url
        return
    # not under pytest's folders: run as root, the server runs as 'postgres',
    # which must reach its data folder
    folder = Path(tempfile.mkdtemp(prefix="imgmatch-pg-"))
    os.chmod(folder, 0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"IMGMATCH_PG_DIR": str(folder / "server"),
                        "IMGMATCH_PG_PORT": str(port), "IMGMATCH_PG_NO_INSTALL": "1"}
    script = REPO / "scripts" / "postgres"
    started = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True,
                             timeout=120)
    if started.returncode != 0:
        pytest.skip("no PostgreSQL server could be started here (scripts/postgres start: "
                    f"{started.stderr.strip()[-300:]}); .ci/run starts one and sets "
                    f"{ENV_TEST_PG}")
    try:
        yield started.stdout.strip().split("=", 1)[1]
    finally:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server, tmp_path, monkeypatch) -> Iterator[str]:
    """A new, empty database on the test server (dropped afterwards), as a
    catalog URL; this node's indexes of it go under the test's folder."""
    import psycopg

    name = f"imgmatch_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    monkeypatch.setenv("IMGMATCH_INDEX_DIR", str(tmp_path / "node-indexes"))
    base = postgres_server.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_address(request, tmp_path) -> str | Path:
    """A new catalog's address on each engine: an SQLite file, then a
    PostgreSQL database (the same test runs against both)."""
    if request.param == "sqlite":
        return tmp_path / "c.db"
    return request.getfixturevalue("postgres_url")
