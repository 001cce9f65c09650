"""Signals: PDQ against Meta's reference hashes, pHash/dHash against imagehash,
dihedral variants, EXIF orientation, Pillow modes, and HashValue behaviour.

The PDQ reference material (``shared/pdq-reference``) comes from the pdq/data
folder of facebook/ThreatExchange; tests that need it are skipped without it.
"""

from __future__ import annotations

import csv
import io
from functools import lru_cache
from pathlib import Path

import imagehash
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from imgmatch import evidence, features
from imgmatch import signals as registry
from imgmatch.decode import Decoded, decode
from imgmatch.errors import SignalError
from imgmatch.report.provenance import describe, made_with
from imgmatch.signals import (DEFAULT_SIGNALS, DIHEDRAL_OPS, HashValue, get, hamming,
                              names, parse_list)

PDQ = get("pdq")
PHASH = get("phash")
DHASH = get("dhash")

REFERENCE_COLUMNS = ("pdq_cpp_reference", "pdq_python_reference")
#: Meta's reference implementations differ by up to 16 bits; its Python test allows 16.
REFERENCE_TOLERANCE = 16
#: Largest distance to a reference hash measured today; a regression shows here first.
REFERENCE_MAX_MEASURED = 14

T = Image.Transpose
#: Index of each transpose in DIHEDRAL_OPS (identity first).
OP_INDEX = {op: i for i, op in enumerate(DIHEDRAL_OPS)}

#: Output of Meta's C++ pdq-photo-hasher for exif-rotn/*.jpg, as published in
#: ThreatExchange's pdq/sql/README.md. The C++ hasher ignores EXIF orientation,
#: so these are hashes of the pixels as stored in the file.
EXIF_ROTN_CPP = {
    1: "f439d924da56a1d4c63973a56acfc926cd53d9341b18367d318666cf9b142649",
    3: "3acfa3cfab36b95e39cfa0023946790af441f1417d850401f7616005ffc17ff2",
    6: "e9782aad54ae0b6365315ac278592d68d4b5434a5fcd7471f7abcb594b481a94",
    8: "6b507c23b4adb07ec2fe2b4db52038b15e0c970fcaf3f049058ae8687bf9251e",
}
#: The transpose that turns a displayed (oriented) image back into the stored pixels.
UNDO_ORIENTATION = {1: None, 3: T.ROTATE_180, 6: T.ROTATE_90, 8: T.ROTATE_270}
#: The transpose a viewer applies to stored pixels for each EXIF orientation.
APPLY_ORIENTATION = {1: None, 3: T.ROTATE_180, 6: T.ROTATE_270, 8: T.ROTATE_90}

ORIGINALS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "originals"
ORIGINALS = sorted(ORIGINALS_DIR.glob("*.jpg"))


@lru_cache(maxsize=None)
def decoded(path: Path) -> Decoded:
    return decode(path.read_bytes(), source=path.name)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def pdq_of(data: bytes) -> HashValue:
    return PDQ.compute(decode(data))


# ----------------------------------------------------------- PDQ conformance
def _reference_distances(ref: Path, row: dict[str, str]) -> dict[str, int]:
    value = PDQ.compute(decoded(ref / row["path"]))
    return {col: value - PDQ.from_hex(row[col]) for col in REFERENCE_COLUMNS if row[col].strip()}


def test_pdq_matches_meta_reference_hashes(pdq_reference, reference_row):
    distances = _reference_distances(pdq_reference, reference_row)
    assert distances, "row has no reference hash"
    for column, distance in distances.items():
        assert distance <= REFERENCE_TOLERANCE, (
            f"{reference_row['path']}: {distance} bits from {column}")


def test_pdq_reference_worst_case_has_not_regressed(pdq_reference):
    with open(pdq_reference / "reference-hashes.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) >= 15
    worst = 0
    print(f"\n{'path':36} {'cpp':>4} {'python':>6}")
    for row in rows:
        d = _reference_distances(pdq_reference, row)
        cells = [str(d[c]) if c in d else "-" for c in REFERENCE_COLUMNS]
        print(f"{row['path']:36} {cells[0]:>4} {cells[1]:>6}")
        worst = max([worst, *d.values()])
    print(f"max distance: {worst}")
    assert worst <= REFERENCE_MAX_MEASURED


def test_pdq_hash_of_meta_reference_is_not_trivially_close(pdq_reference):
    """The conformance distances mean something: other images are ~128 bits away."""
    a = PDQ.compute(decoded(pdq_reference / "labelme-subset" / "q0291.jpg"))
    b = PDQ.from_hex("489db672e9190276d452aeab41eba20f02375fe4092d88defdf491a5c55c5f70")  # q1050
    assert a - b > 64


# ------------------------------------------------------------- quality gate
def test_flat_image_has_low_quality_and_is_not_usable():
    flat = encode(Image.new("L", (300, 300), 128), "PNG")
    value = pdq_of(flat)
    assert value.quality is not None and value.quality < 50
    assert not PDQ.usable(value)


def test_real_photo_has_high_quality_and_is_usable(photo_bytes):
    value = pdq_of(photo_bytes)
    assert value.quality >= 50
    assert PDQ.usable(value)


@pytest.mark.parametrize("name, make, expected", [
    # one sharp vertical edge: 64 rows x trunc(255 * 100 / 255) = 6400 -> 6400 // 90
    ("edge", lambda i, j: 255.0 * (j >= 32), 71),
    # ramps: steps of 2 truncate to 0 per pixel; steps of 3 to 1 (63 x 64 = 4032 -> 44)
    ("ramp2", lambda i, j: 2.0 * j, 0),
    ("ramp3", lambda i, j: 3.0 * j, 44),
    ("ramp2-down", lambda i, j: 2.0 * i, 0),
    ("ramp3-down", lambda i, j: 3.0 * i, 44),
    ("flat", lambda i, j: 0.0 * i + 77.0, 0),
    ("checkerboard", lambda i, j: 255.0 * ((i + j) % 2), 100),
])
def test_pdq_quality_metric_by_hand(name, make, expected):
    """Meta's metric: sum of trunc(100 * |neighbour difference| / 255), // 90, capped at 100."""
    from imgmatch.signals.pdq import quality

    buf = np.fromfunction(make, (64, 64), dtype=np.float64)
    assert quality(buf) == expected


def test_value_without_quality_is_not_usable():
    value = PDQ.from_hex("ab" * 32)
    assert value.quality is None
    assert not PDQ.usable(value)


# ---------------------------------------------------------------- dihedral
def test_pdq_dihedral_has_eight_variants_identity_first(pdq_reference):
    image = decoded(pdq_reference / "dih" / "bridge-1-original.jpg")
    variants = PDQ.dihedral(image)
    assert len(variants) == 8
    assert variants[0] == PDQ.compute(image)
    assert variants[0].quality == PDQ.compute(image).quality
    assert len({v.hex for v in variants}) == 8


def test_every_dihedral_photo_matches_its_own_variant(pdq_reference):
    variants = PDQ.dihedral(decoded(pdq_reference / "dih" / "bridge-1-original.jpg"))
    paths = sorted((pdq_reference / "dih").glob("*.jpg"))
    assert len(paths) == 8
    best = {}
    for path in paths:
        value = PDQ.compute(decoded(path))
        distances = [value - v for v in variants]
        i = int(np.argmin(distances))
        assert distances[i] <= 16, f"{path.name}: {distances}"
        best[path.name] = i
    # each of the 8 photos is a different rotation/mirror: a different variant
    assert sorted(best.values()) == list(range(8)), best


@pytest.mark.parametrize("op", DIHEDRAL_OPS, ids=lambda op: "identity" if op is None else op.name)
def test_pdq_dihedral_is_close_to_hashing_transposed_pixels(pdq_reference, op):
    image = decoded(pdq_reference / "dih" / "bridge-1-original.jpg")
    from_dct = PDQ.dihedral(image)[OP_INDEX[op]]
    exact = PDQ.compute(image.transposed(op))
    # identical on symmetric sampling grids; a few bits off otherwise
    assert from_dct - exact <= 16


@pytest.mark.parametrize("path", ORIGINALS, ids=lambda p: p.name)
@pytest.mark.parametrize("signal, variants_of, count, bits", [
    (PHASH, PHASH.dihedral, 8, 4),         # from one DCT, by sign flips
    (DHASH, DHASH.link_variants, 4, 2),    # from one 9x8 thumbnail, flipped
], ids=["phash", "dhash"])
def test_cheap_variants_equal_hashing_transposed_pixels(path, signal, variants_of, count, bits):
    image = decoded(path)
    variants = variants_of(image)
    assert len(variants) == count
    assert variants[0] == signal.compute(image)
    for op, variant in zip(DIHEDRAL_OPS[:count], variants):
        assert variant - signal.compute(image.transposed(op)) <= bits, op


def test_phash_dihedral_of_reference_photo(pdq_reference):
    image = decoded(pdq_reference / "dih" / "bridge-1-original.jpg")
    expected = [PHASH.compute(image.transposed(op)) for op in DIHEDRAL_OPS]
    actual = PHASH.dihedral(image)
    assert len(actual) == 8
    assert all(a - e <= 4 for a, e in zip(actual, expected))


@pytest.mark.parametrize("path", ORIGINALS, ids=lambda p: p.name)
def test_pdq_dihedral_of_value_approximates_exact_variants(path):
    image = decoded(path)
    exact = PDQ.dihedral(image)
    approx = PDQ.dihedral_of_value(exact[0])
    assert len(approx) == 8
    assert approx[0] == exact[0]
    for i, (a, e) in enumerate(zip(approx, exact)):
        assert a - e <= PDQ.threshold, f"variant {i}: {a - e} bits"


def test_pdq_dihedral_of_value_on_reference_photo(pdq_reference):
    exact = PDQ.dihedral(decoded(pdq_reference / "dih" / "bridge-1-original.jpg"))
    approx = PDQ.dihedral_of_value(exact[0])
    assert all(a - e <= 31 for a, e in zip(approx, exact))


def test_default_dihedral_of_value_is_the_value_itself():
    value = PHASH.from_hex("0123456789abcdef")
    assert PHASH.dihedral_of_value(value) == [value]


# ------------------------------------------------------- pHash/dHash vs imagehash
def _check_imagehash_agreement(path: Path) -> None:
    image = decoded(path)
    phash, dhash = PHASH.compute(image), DHASH.compute(image)
    # close to imagehash on the decoded image and on a naive full decode of the
    # file, which is what values computed elsewhere with imagehash are (the
    # box reduction before Lanczos moves a bit or two)
    with Image.open(path) as naive:
        naive.load()
        others = {
            "pHash, decoded image": phash - PHASH.from_hex(str(imagehash.phash(image.image))),
            "dHash, decoded image": dhash - DHASH.from_hex(str(imagehash.dhash(image.image))),
            "pHash, naive decode": phash - PHASH.from_hex(str(imagehash.phash(naive))),
            "dHash, naive decode": dhash - DHASH.from_hex(str(imagehash.dhash(naive))),
        }
    assert max(others.values()) <= 4, f"bits from imagehash: {others}"


@pytest.mark.parametrize("path", ORIGINALS, ids=lambda p: p.name)
def test_phash_dhash_agree_with_imagehash_on_fixture_photos(path):
    _check_imagehash_agreement(path)


def test_phash_dhash_agree_with_imagehash_on_labelme(labelme_path):
    _check_imagehash_agreement(labelme_path)


def test_phash_dhash_agree_with_imagehash_on_reduced_decode(pdq_reference):
    """exif-rotn-1 is 4032 x 3024, decoded at a reduced scale."""
    path = pdq_reference / "exif-rotn" / "exif-rotn-1.jpg"
    assert decoded(path).image.size[0] < decoded(path).width
    _check_imagehash_agreement(path)


# ------------------------------------------------------------ EXIF orientation
@pytest.mark.parametrize("n", [1, 3, 6, 8])
def test_exif_rotn_dimensions_are_as_displayed(pdq_reference, n):
    image = decoded(pdq_reference / "exif-rotn" / f"exif-rotn-{n}.jpg")
    with Image.open(pdq_reference / "exif-rotn" / f"exif-rotn-{n}.jpg") as raw:
        stored = raw.size
    expected = stored[::-1] if n in (6, 8) else stored
    assert (image.width, image.height) == expected
    w, h = image.image.size
    assert (w > h) == (expected[0] > expected[1])


@pytest.mark.parametrize("n", [1, 3, 6, 8])
def test_exif_rotn_orientation_is_applied(pdq_reference, n):
    """Undoing the orientation gives Meta's hash of the stored pixels; not undoing does not.

    (The four exif-rotn files are four separate shots of one desk, so they are
    not compared with each other: see the synthetic test below.)
    """
    image = decoded(pdq_reference / "exif-rotn" / f"exif-rotn-{n}.jpg")
    cpp = PDQ.from_hex(EXIF_ROTN_CPP[n])
    assert PDQ.compute(image.transposed(UNDO_ORIENTATION[n])) - cpp <= REFERENCE_TOLERANCE
    if n != 1:
        assert PDQ.compute(image) - cpp > PDQ.threshold


@pytest.mark.parametrize("n", [3, 6, 8])
def test_same_photo_stored_with_exif_orientation_hashes_alike(n):
    """One photo stored rotated plus the EXIF tag that puts it upright again."""
    with Image.open(ORIGINALS_DIR / "coffee.jpg") as img:  # 600 x 400: not square
        upright = img.convert("RGB")
    assert upright.width != upright.height
    inverse = {3: T.ROTATE_180, 6: T.ROTATE_90, 8: T.ROTATE_270}[n]
    stored = upright.transpose(inverse)
    assert stored.transpose(APPLY_ORIENTATION[n]).tobytes() == upright.tobytes()
    exif = Image.Exif()
    exif[0x0112] = n
    reference = pdq_of(encode(upright, "JPEG", quality=95))
    tagged = pdq_of(encode(stored, "JPEG", quality=95, exif=exif))
    untagged = pdq_of(encode(stored, "JPEG", quality=95))
    assert tagged - reference <= 16
    assert untagged - reference > PDQ.threshold  # the test has teeth


# ------------------------------------------------------------------- modes
@pytest.fixture(scope="module")
def modes_original(pdq_reference) -> HashValue:
    data = (pdq_reference / "misc-images" / "modes" / "original.jpg").read_bytes()
    return pdq_of(data)


@pytest.fixture(scope="module")
def modes_half_size(pdq_reference) -> tuple[Image.Image, HashValue]:
    """original.jpg at half size (faster to convert and encode 13 times), and its PDQ."""
    with Image.open(pdq_reference / "misc-images" / "modes" / "original.jpg") as img:
        rgb = img.convert("RGB").reduce(2)
    return rgb, pdq_of(encode(rgb, "PNG"))


def test_mode_files_hash_like_the_original(modes_original, mode_file):
    original = modes_original
    value = PDQ.compute(decoded(mode_file))
    assert decoded(mode_file).image.mode in ("RGB", "L")
    assert value - original <= 16, mode_file.name


def _in_mode(rgb: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":
        grey = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
        return Image.frombytes("I;16", rgb.size, grey.astype("<u2").tobytes())
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "I", "I;16", "F", "CMYK",
                                  "YCbCr", "HSV", "LAB", "RGBA"])
def test_every_pillow_mode_decodes_and_hashes_like_the_original(modes_half_size, modes_original,
                                                               mode):
    rgb, original = modes_half_size
    assert original - modes_original <= 8  # half size hashes like full size
    img = _in_mode(rgb, mode)
    assert img.mode == mode
    if mode == "I;16":
        assert np.asarray(img).max() > 255  # really 16-bit samples
    data = None
    for fmt in ("TIFF", "PNG", "WEBP"):
        try:
            data = encode(img, fmt)
            break
        except (OSError, ValueError, KeyError):
            continue
    if data is None:
        pytest.skip(f"this Pillow cannot save mode {mode} as TIFF, PNG or WebP")
    result = decode(data)
    assert result.image.mode in ("RGB", "L")
    assert (result.width, result.height) == rgb.size
    assert PDQ.compute(result) - original <= 20, f"{mode} via {fmt}"


# ------------------------------------------------------------- HashValue
def test_hex_round_trip(photo_bytes):
    for signal in (PDQ, PHASH, DHASH):
        value = signal.compute(decode(photo_bytes))
        assert len(value.hex) == signal.bits // 4
        assert value.bits == signal.bits
        assert str(value) == value.hex
        back = signal.from_hex(value.hex)
        assert back == value
        assert back.signal == signal.name
        assert back - value == 0


def test_from_hex_accepts_prefix_case_and_surrounding_space():
    value = PDQ.from_hex("0f" * 32)
    assert PDQ.from_hex("  0x" + "0F" * 32 + "\n") == value
    assert value.data == bytes([0x0F]) * 32


def test_to_json():
    value = PDQ.from_bytes(bytes(range(32)), quality=77)
    assert value.to_json() == {"signal": "pdq", "hex": bytes(range(32)).hex(), "quality": 77}
    assert "quality" not in PDQ.from_hex("00" * 32).to_json()


def test_distance_is_symmetric_and_counts_bits(original_paths):
    values = [PDQ.compute(decoded(p)) for p in original_paths[:3]]
    a, b, c = values
    assert a - a == 0
    assert a - b == b - a > 0
    assert a - c == c - a > 0
    assert (a - c) <= (a - b) + (b - c)
    flipped = bytearray(a.data)
    flipped[0] ^= 0b1011_0000
    flipped[31] ^= 0b0000_0001
    assert a - PDQ.from_bytes(bytes(flipped)) == 4


def test_equality_ignores_quality():
    assert PDQ.from_bytes(bytes(32), quality=90) == PDQ.from_bytes(bytes(32), quality=3)
    assert PDQ.from_bytes(bytes(32)) != PDQ.from_bytes(bytes(31) + b"\x01")


def test_comparing_different_signals_raises(photo_bytes):
    image = decode(photo_bytes)
    with pytest.raises(SignalError):
        PDQ.compute(image) - PHASH.compute(image)
    with pytest.raises(SignalError):
        PHASH.compute(image) - DHASH.compute(image)  # same size, different signal
    with pytest.raises(TypeError):
        PDQ.compute(image) - 3


@pytest.mark.parametrize("text", [
    "0" * 63,
    "0" * 65,
    "",
    "0123456789abcdef",               # a 64-bit hash given to PDQ
    "zz" * 32,                        # right length, not hex
    "0g" + "00" * 31,
    "00 " * 20 + "0000",              # right length, but spaces inside
])
def test_from_hex_rejects_bad_strings(text):
    with pytest.raises(SignalError):
        PDQ.from_hex(text)


def test_from_bytes_rejects_wrong_size():
    with pytest.raises(SignalError):
        PDQ.from_bytes(bytes(8))
    with pytest.raises(SignalError):
        PHASH.from_bytes(bytes(32))


def test_parse_list():
    assert parse_list("pdq,phash") == ("pdq", "phash")
    assert parse_list(" PDQ , dhash,pdq ") == ("pdq", "dhash")
    assert parse_list(None) == DEFAULT_SIGNALS
    assert parse_list("") == DEFAULT_SIGNALS
    with pytest.raises(SignalError):
        parse_list(" , ,")


def test_unknown_signal_lists_known_names():
    assert {"pdq", "phash", "dhash"} <= set(names())
    with pytest.raises(SignalError) as info:
        parse_list("pdq,nosuchhash")
    message = str(info.value)
    assert "nosuchhash" in message
    for known in ("pdq", "phash", "dhash"):
        assert known in message
    with pytest.raises(SignalError):
        get("nosuchhash")


def test_local_features_are_a_kind_of_signal_in_the_registry():
    """``orb`` is registered like the hashes, with its own version, decode
    size, threshold (the verification support from which it agrees) and
    description; code tells the kinds apart by asking, not by name."""
    orb = registry.signal("orb")
    assert orb.kind == "local" and registry.local() is orb
    assert (orb.version, orb.min_side) == (features.VERSION, features.SIDE)
    assert orb.threshold == evidence.AGREED_SUPPORT
    assert names() == sorted(set(names()) - {"orb"})  # the hashes, as before
    assert names(kind="local") == ["orb"] and "orb" in names(kind=None)
    assert registry.split(["pdq", "orb", "dhash"]) == (("pdq", "dhash"), ("orb",))
    assert parse_list("pdq,ORB") == ("pdq", "orb")
    assert "orb" not in registry.describe()  # partners exchange hashes only
    with pytest.raises(SignalError, match="local features, not a hash"):
        get("orb")
    with pytest.raises(SignalError, match="a hash, not local features"):
        registry.local("pdq")
    with pytest.raises(SignalError, match="known signals: .*orb"):
        registry.split(["pdq", "sift"])


def test_reports_state_local_features_from_their_signal_type():
    made = made_with(["pdq", "orb"], "0.0")
    assert made["signals"]["orb"] == registry.local().describe()
    assert made["signals"]["orb"]["kind"] == "local"
    assert made["signals"]["pdq"] == PDQ.describe()
    line = describe(made)
    assert f"orb v{features.VERSION} (local features" in line
    assert "pdq v1 (within 31 bits)" in line


def test_a_second_kind_of_local_features_is_refused():
    class Sift(registry.ORB):
        name = "sift"

    with pytest.raises(SignalError, match="already registered as 'orb'"):
        registry.register(Sift)
    assert "sift" not in names(kind=None)


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_hex_and_hamming_properties(a_bytes, b_bytes):
    a = PDQ.from_bytes(a_bytes)
    b = PDQ.from_bytes(b_bytes)
    assert PDQ.from_hex(a.hex) == a
    assert PDQ.from_hex(a.hex).data == a_bytes
    expected = bin(int(a.hex, 16) ^ int(b.hex, 16)).count("1")
    assert a - b == expected == b - a
    assert hamming(a_bytes, b_bytes) == expected
    numpy_count = int(np.unpackbits(np.frombuffer(a_bytes, np.uint8)
                                    ^ np.frombuffer(b_bytes, np.uint8)).sum())
    assert numpy_count == expected


@given(st.integers(1, 8), st.integers(1, 70), st.integers(0, 2**32 - 1), st.booleans())
def test_threshold_rows_is_a_bit_per_value_above_numpys_median(rows, width, seed, ties):
    from imgmatch.signals.base import threshold_rows

    values = np.random.default_rng(seed).normal(size=(rows, width))
    if ties:
        values = np.round(values * 2)
    expected = [np.packbits(row > np.median(row)).tobytes() for row in values]
    assert threshold_rows(values, lower_median=False) == expected
