"""``scripts/bench linking --dump-links``: every link of an ingest in fixed
batches, the same whichever batch size a run would have reached in time, so
that two engines' links can be compared with ``diff``."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
sys.path.insert(0, str(ROOT / "scripts"))

import bench_linking  # noqa: E402


def test_the_links_dumped_name_the_pairs_and_repeat_exactly(tmp_path: Path) -> None:
    files = sorted((FIXTURES / "originals").glob("*.jpg"))[:3] + sorted(
        p for p in (FIXTURES / "reposts").glob("*.jpg")
        if p.name.startswith(("astronaut_", "cat_")))
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    found = bench_linking.dump_links(files, first, batch_size=4)
    assert bench_linking.dump_links(files, second, batch_size=4) == found
    assert first.read_bytes() == second.read_bytes()
    sha = {hashlib.sha256(p.read_bytes()).hexdigest(): p.name for p in files}
    pairs = [line.split()[:2] for line in first.read_text().splitlines()]
    assert len(pairs) == found
    named = {frozenset(sha[x].split("_")[0].split(".")[0] for x in pair) for pair in pairs}
    # reposts link to their own original, and never a cat to an astronaut
    assert frozenset({"astronaut"}) in named and frozenset({"cat"}) in named
    assert frozenset({"astronaut", "cat"}) not in named


def test_the_dump_leaves_the_ingest_batches_as_they_were(tmp_path: Path) -> None:
    from imgmatch import ingest

    before = ingest.FLUSH_SECONDS
    bench_linking.dump_links(sorted((FIXTURES / "originals").glob("*.jpg"))[:2],
                             tmp_path / "a.txt", batch_size=8)
    assert ingest.FLUSH_SECONDS == before


def test_composites_come_before_the_references(tmp_path: Path) -> None:
    (tmp_path / "queries.csv").write_text(
        "query_id,file,family,is_negative\n"
        "q1,queries/q1.jpg,crop,0\nq2,queries/q2.jpg,collage,0\n"
        "q3,queries/q3.jpg,screenshot,1\nq4,queries/q4.jpg,screenshot,0\n")
    (tmp_path / "references.csv").write_text(
        "reference_id,file\nr1,references/r1.jpg\nr2,references/r2.jpg\n")
    assert [p.relative_to(tmp_path).as_posix()
            for p in bench_linking.composites_then_references(tmp_path)] == [
        "queries/q2.jpg", "queries/q4.jpg", "references/r1.jpg", "references/r2.jpg"]
