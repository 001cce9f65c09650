"""Inputs that once broke a parser of untrusted input, and a few ordinary ones,
run through the fuzz targets of scripts/fuzz_targets.py: the functions
scripts/fuzz runs under atheris, here without it.

Each file under tests/fuzz_regressions/<target>/ must end in imgmatch's named
errors or in none, within the time the fuzzer allows one input. A finding of
scripts/fuzz becomes such a file; one whose fix is still to come is listed in
OPEN (the test then fails once the fix lands, as a reminder to remove it).
"""

from __future__ import annotations

import importlib.util
import io
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
REGRESSIONS = ROOT / "tests" / "fuzz_regressions"


def _load_targets():
    spec = importlib.util.spec_from_file_location("fuzz_targets",
                                                  ROOT / "scripts" / "fuzz_targets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


fuzz = _load_targets()

#: Findings awaiting their fix: regression file -> what goes wrong. Remove an
#: entry with its fix (the test then passes, instead of failing as XPASS).
OPEN: dict[str, str] = {}


def _cases() -> list:
    cases = []
    for path in sorted(REGRESSIONS.glob("*/*")):
        name = f"{path.parent.name}/{path.name}"
        marks = [pytest.mark.xfail(strict=True, reason=OPEN[name])] if name in OPEN else []
        cases.append(pytest.param(path.parent.name, path, id=name, marks=marks))
    return cases


@pytest.mark.parametrize("target, path", _cases())
def test_regression_input_is_harmless(target: str, path: Path):
    started = time.monotonic()
    fuzz.run_target(target, path.read_bytes())
    took = time.monotonic() - started
    assert took < fuzz.TARGETS[target].timeout, f"{took:.1f} s: a hang for the fuzzer"


def test_every_regression_folder_is_a_target():
    folders = {p.name for p in REGRESSIONS.iterdir() if p.is_dir()}
    assert folders <= set(fuzz.TARGETS), folders - set(fuzz.TARGETS)
    assert set(OPEN) <= {f"{p.parent.name}/{p.name}" for p in REGRESSIONS.glob("*/*")}


@pytest.mark.parametrize("target, seeds", [
    ("decode", fuzz.image_seeds), ("warc", fuzz.warc_seeds),
    ("manifest_csv", fuzz.manifest_csv_seeds), ("manifest_jsonl", fuzz.manifest_jsonl_seeds),
    ("hashlist", fuzz.hashlist_seeds), ("multipart", fuzz.multipart_seeds)])
def test_the_seeds_made_in_code_are_harmless(target: str, seeds):
    made = list(seeds())
    assert made
    for _, data in made:
        assert len(data) <= fuzz.TARGETS[target].max_len
        fuzz.run_target(target, data)


def test_a_later_frame_is_held_to_the_pixel_limits():
    """A small first page cannot carry a larger second one past the limits."""
    from imgmatch.decode import decode, decode_frames

    out = io.BytesIO()
    Image.new("L", (20, 20)).save(out, "TIFF", save_all=True,
                                  append_images=[Image.new("L", (200, 200))])
    data = out.getvalue()
    assert decode(data, max_pixels=1000).frames == 2
    ((k, error),) = decode_frames(data, max_pixels=1000)
    assert k == 1 and error.reason == "too-large"


def test_a_later_animation_frame_is_held_to_the_composited_budget():
    """A later GIF frame is composited over the whole canvas in RGBA: a 1-KB
    file with a 130-megapixel canvas took 2.5 GB by its second frame. Its
    first frame still decodes; the second is refused as too large."""
    from imgmatch.decode import COMPOSITED_SHARE, decode, decode_frames
    from imgmatch.errors import ImageTooLarge

    frames = [Image.new("L", (100, 100), 10), Image.new("L", (100, 100), 200)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    data = out.getvalue()
    canvas = 100 * 100
    assert [k for k, f in decode_frames(data, max_pixels=canvas * COMPOSITED_SHARE)
            if not isinstance(f, Exception)] == [1]
    assert decode(data, max_pixels=canvas).frames == 2
    ((k, error),) = decode_frames(data, max_pixels=canvas)
    assert k == 1 and error.reason == "too-large"
    with pytest.raises(ImageTooLarge):
        decode(data, max_pixels=canvas, frame=1)


def test_executions_come_from_libfuzzers_final_stats():
    log = "#2\tINITED exec/s: 0\nstat::number_of_executed_units: 52267\nstat::peak_rss_mb: 40\n"
    assert fuzz.executions(log) == 52267
    assert fuzz.executions("==1== ERROR: libFuzzer: out-of-memory\n") is None
