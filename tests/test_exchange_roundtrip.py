"""Round trips with python-threatexchange's own command line, both ways.

(a) threatexchange matches photos against a list imgmatch exported: the
list is loaded as a local-file collaboration (``config collab edit
local_file``, ``fetch``) and ``threatexchange match photo`` runs on real
fixture photos; (b) imgmatch imports what ``threatexchange hash photo``
wrote and matches it to the catalogued reposts. The HMA CSV is checked with
the validation HMA's bank API applies to each signal. threatexchange keeps
its state in ~/.threatexchange, so each run gets a HOME of its own.

Without threatexchange (``pip install threatexchange==1.2.17``, in the
``test`` extra) these tests are skipped, saying so; with the environment
variable IMGMATCH_REQUIRE_EXCHANGE set they fail instead.
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import imgmatch
from imgmatch.cli import main
from imgmatch.sources import iter_manifest

from test_hash_export import bash_blocks, export_section, run_blocks

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
VERSION = "1.2.17"
REQUIRE = "IMGMATCH_REQUIRE_EXCHANGE"


def _threatexchange() -> str:
    """The threatexchange command beside this Python, else on PATH; a skip
    (or, under $IMGMATCH_REQUIRE_EXCHANGE, a failure) that says what to install."""
    found = shutil.which("threatexchange", path=str(Path(sys.executable).parent)) \
        or shutil.which("threatexchange")
    try:
        version = importlib.metadata.version("threatexchange")
    except importlib.metadata.PackageNotFoundError:
        version = None
    if found and version == VERSION:
        return found
    why = (f"python-threatexchange {VERSION} is not installed (found "
           f"{version or 'no package'}, command {found or 'missing'}): "
           f"pip install threatexchange=={VERSION}, or install the 'test' extra")
    if os.environ.get(REQUIRE):
        pytest.fail(f"{why}; {REQUIRE} is set, so this is a failure")
    pytest.skip(why)


@pytest.fixture
def tx(tmp_path):
    """Run threatexchange with a HOME of its own; (stdout, stderr) of a run that worked."""
    command = _threatexchange()
    home = tmp_path / "tx-home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home))

    def run(*args: str | Path) -> str:
        done = subprocess.run([command, *map(str, args)], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=300)
        assert done.returncode == 0, f"threatexchange {args}: {done.stderr[-2000:]}"
        return done.stdout
    return run


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("exchange") / "case.db"
    with imgmatch.Collection.open(db) as c:
        c.ingest(iter_manifest(FIXTURES / "manifest.csv"))
    return db


def _export(db: Path, capsys, *args: str) -> dict:
    code = main(["--db", str(db), "export-hashes", *args])
    err = capsys.readouterr().err
    assert code == 0, err
    return json.loads(err.strip().splitlines()[-1])


def _load(tx, listing: Path, name: str = "case_17") -> set[str]:
    """Load a file as a local-file collaboration; the signals threatexchange took."""
    tx("config", "collab", "edit", "local_file", "--create", "--filename", listing.resolve(),
       name)
    tx("fetch")
    return set(tx("dataset", "--print-signals", "--print-signals-only").splitlines())


def test_threatexchange_matches_photos_against_an_imgmatch_export(case, capsys, tx,
                                                                  tmp_path):
    """(a) Only the jobboard images are exported; threatexchange finds the
    pagoda (an original the case does not hold) through its jobboard repost,
    14 bits away, and nothing for the astronaut (whose jobboard repost is a
    crop far from it), for a cat never seen on jobboard, or for an
    unrelated photo."""
    listing = tmp_path / "jobboard.pdq.txt"
    summary = _export(case, capsys, "--format", "pytx", "--platform", "jobboard",
                      "-o", str(listing))
    lines = listing.read_text().splitlines()
    assert summary["lines"] == len(lines) == 5
    assert _load(tx, listing) == set(lines)  # every line read, as written

    def match(photo: str) -> list[str]:
        return tx("match", "--all", "photo", FIXTURES / photo).splitlines()

    (temple,) = match("originals/temple.jpg")
    assert temple.startswith("pdq ") and temple.endswith("(case_17) INVESTIGATION_SEED")
    assert 0 < int(temple.split()[1]) <= 31  # a repost, within PDQ's threshold
    assert match("reposts/coffee_jobboard_2024.jpg")  # an exported image itself
    assert match("originals/astronaut.jpg") == []
    assert match("originals/cat.jpg") == []
    assert match("queries/unrelated.jpg") == []


def test_threatexchange_reads_every_hash_whatever_the_names(tmp_path, capsys, tx):
    """Hash-only images with hostile names, low-quality hashes: the pytx file
    stays one 'pdq HEX' per line, and threatexchange takes each of them."""
    db = tmp_path / "c.db"
    with imgmatch.Collection.open(db) as c:
        c.add(FIXTURES / "originals" / "cat.jpg",
              imgmatch.Sighting(platform='x\npdq 00,"y"\x00', source="a\nb"))
        listing = tmp_path / "partner.csv"
        rocket = imgmatch.hash_bytes((FIXTURES / "originals" / "rocket.jpg").read_bytes())
        listing.write_text(f"{rocket['signals']['pdq']['hex']},12,name\x00with\rbreaks\n"
                           f"pdq {'0f' * 32} pdq {'ab' * 32}\n", newline="")
        c.import_hashes(listing, platform="partner\nfeed")
    out = tmp_path / "list.txt"
    summary = _export(db, capsys, "--format", "pytx", "-o", str(out))
    lines = out.read_text().splitlines()
    assert summary["lines"] == len(lines) == 3 and summary["low_quality"] == 1
    assert _load(tx, out) == set(lines)


def test_threatexchange_drops_a_hash_with_a_name_on_its_line(tmp_path, tx):
    """Why names never share a pytx line: threatexchange's local-file reader
    takes all after 'pdq ' as the hash, and passes over what is not one."""
    cat = imgmatch.hash_bytes((FIXTURES / "originals" / "cat.jpg").read_bytes())
    temple = imgmatch.hash_bytes((FIXTURES / "originals" / "temple.jpg").read_bytes())
    listing = tmp_path / "named.txt"
    listing.write_text(f"pdq {cat['signals']['pdq']['hex']} case-17/item-1\n"
                       f"pdq {temple['signals']['pdq']['hex']}\n")
    assert _load(tx, listing) == {f"pdq {temple['signals']['pdq']['hex']}"}


def test_imgmatch_imports_and_matches_what_threatexchange_hashed(case, capsys, tx,
                                                                 tmp_path):
    """(b) threatexchange hashes three originals the case does not hold; imgmatch
    imports its lines, links them to the reposts, and answers them."""
    photos = [FIXTURES / "originals" / name for name in ("cat.jpg", "temple.jpg",
                                                         "astronaut.jpg")]
    written = tx("hash", "photo", *photos)
    listing = tmp_path / "partner.txt"
    listing.write_text(written)
    assert len(written.splitlines()) == 3

    db = tmp_path / "case.db"
    shutil.copy(case, db)
    assert main(["--db", str(db), "import-hashes", str(listing), "--platform", "partner",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["lines"], summary["images_added"], summary["failed"]) == (3, 3, 0)
    assert summary["links_added"] >= 3

    # the same picture hashed by both: a few bits apart at most
    for line, photo in zip(written.splitlines(), photos):
        theirs = imgmatch.parse_hash(line.split()[1])
        ours = imgmatch.parse_hash(
            imgmatch.hash_bytes(photo.read_bytes())["signals"]["pdq"]["hex"])
        assert theirs - ours <= 8, photo.name

    assert main(["--db", str(db), "query", "--pdq-file", str(listing)]) == 0
    answers = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    reposts = {"cat.jpg": "cat_", "temple.jpg": "temple_", "astronaut.jpg": "astronaut"}
    with imgmatch.Collection.open(db, readonly=True) as c:
        for answer, photo in zip(answers, photos):
            found = {s.source for m in answer["matches"] if m["sha256"]
                     for s in c.image(m["sha256"]).sightings if s.source}
            assert any(reposts[photo.name] in Path(src).name for src in found), photo.name


def test_hma_csv_rows_pass_the_check_hma_makes_of_each_signal(case, capsys, tmp_path, tx):
    """HMA's bank API looks each row's signal type up by name among
    threatexchange's signal types and validates the string with it; the
    rows of an hma-csv export pass, as HMA would take them."""
    target = tmp_path / "case.hma.csv"
    _export(case, capsys, "--format", "hma-csv", "-o", str(target))
    check = ("import csv, sys\n"
             "from threatexchange.signal_type.pdq.signal import PdqSignal\n"
             "types = {PdqSignal.get_name(): PdqSignal}\n"
             "n = 0\n"
             "for row in csv.DictReader(open(sys.argv[1], newline='')):\n"
             "    body = {row['signal_type']: row['signal_str']}\n"
             "    for name, value in body.items():\n"
             "        types[name].validate_signal_str(value)\n"
             "    n += 1\n"
             "print(n)\n")
    done = subprocess.run([sys.executable, "-c", check, str(target)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert int(done.stdout) == len(rows) == 20


def test_the_export_docs_threatexchange_commands_run(tmp_path, tx):
    """Every command of docs/exchange.md's Export section, threatexchange's
    included, as a reader would run them; the match shown is the one made."""
    section = export_section()
    runs = run_blocks(bash_blocks(section), tmp_path)
    shown = "pdq 14 (case_17) INVESTIGATION_SEED"
    assert shown in section
    assert shown in [line for run in runs for line in run.stdout.splitlines()]
