"""decode(): every bad input becomes a named InputError; good ones come out oriented.

Bad inputs are made in memory. The bomb tests replace Pillow's pixel loading
with a function that fails the test, so they prove the size is refused from the
header alone (and a regression cannot allocate gigabytes on the test machine).
"""

from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile, ImageOps

from imgmatch import errors
from imgmatch.decode import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, Decoded, decode
from imgmatch.signals import get

EXIF_ORIENTATION = 0x0112


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def png_of_zeros(width: int, height: int, level: int = 4) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels, streamed.

    Built chunk by chunk, so the test never holds the pixels: Pillow's
    ``Image.new("1", ...)`` keeps a byte per pixel (1.6 GB at 40000 x 40000).
    """
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    rows_per_block = max(1, 4_000_000 // len(row))
    comp = zlib.compressobj(level)
    parts = []
    left = height
    while left:
        n = min(left, rows_per_block)
        parts.append(comp.compress(row * n))
        left -= n
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


@pytest.fixture
def no_pixel_loading(monkeypatch):
    """Make any attempt to decode pixels fail the test."""
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"pixels of a {self.size} image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(Image.Image, "load", refuse)


def patterned(width: int, height: int) -> Image.Image:
    """An RGB image that looks different under every rotation and mirror."""
    img = Image.new("RGB", (width, height), (240, 240, 240))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, width // 3, height // 4], fill=(200, 20, 20))
    draw.ellipse([width // 2, height // 2, width - 5, height - 3], fill=(20, 20, 180))
    draw.line([0, height - 1, width // 2, 0], fill=(0, 140, 0), width=3)
    return img


# ------------------------------------------------------------- the error tree
@pytest.mark.parametrize("cls", [
    errors.EmptyFile, errors.UnsupportedFormat, errors.DecodeError,
    errors.ImageTooLarge, errors.ImageTooSmall, errors.UnsafePath, errors.MissingFile,
])
def test_input_errors_are_input_errors_with_a_reason(cls):
    assert issubclass(cls, errors.InputError)
    assert issubclass(cls, errors.ImgmatchError)
    exc = cls("something is wrong", source="ads/1.jpg")
    assert isinstance(exc.reason, str) and exc.reason
    assert exc.reason != errors.InputError.reason
    assert exc.source == "ads/1.jpg"
    assert exc.detail == "something is wrong"
    assert str(exc) == "ads/1.jpg: something is wrong"


def test_reasons_are_distinct():
    classes = [errors.EmptyFile, errors.UnsupportedFormat, errors.DecodeError,
               errors.ImageTooLarge, errors.ImageTooSmall, errors.UnsafePath,
               errors.MissingFile]
    reasons = [c.reason for c in classes]
    assert len(set(reasons)) == len(reasons)


# ----------------------------------------------------------------- bad input
def test_zero_bytes_is_empty_file():
    with pytest.raises(errors.EmptyFile) as info:
        decode(b"")
    assert info.value.reason == "empty-file"


def test_source_is_named_in_the_error():
    with pytest.raises(errors.EmptyFile) as info:
        decode(b"", source="uploads/ad-17.jpg")
    assert info.value.source == "uploads/ad-17.jpg"
    assert "uploads/ad-17.jpg" in str(info.value)


def test_random_bytes_are_unsupported():
    rng = random.Random(1234)
    data = bytes(rng.randrange(256) for _ in range(4096))
    with pytest.raises(errors.UnsupportedFormat) as info:
        decode(data)
    assert info.value.reason == "unsupported-format"
    assert str(info.value)


def test_text_file_is_unsupported():
    data = b"Call me! Nice flat downtown, 2 rooms, photos on request.\n" * 20
    with pytest.raises(errors.UnsupportedFormat):
        decode(data)


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "TGA", "PPM"])
def test_real_image_in_a_format_outside_the_allow_list_is_unsupported(fmt):
    data = encode(patterned(64, 48), fmt)
    # Pillow itself can read it back: the refusal is imgmatch's allow-list.
    assert Image.open(io.BytesIO(data)).format == fmt
    with pytest.raises(errors.UnsupportedFormat):
        decode(data)


def test_truncated_jpeg_is_a_decode_error(photo_bytes):
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    data = photo_bytes[: int(len(photo_bytes) * 0.6)]
    with pytest.raises(errors.DecodeError) as info:
        decode(data)
    assert info.value.reason == "decode-error"
    assert str(info.value).strip()


def _start_of_scan(jpeg: bytes) -> int:
    pos = jpeg.find(b"\xff\xda")
    assert pos > 0, "no SOS marker"
    return pos


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_corrupt_jpeg_is_a_decode_error_or_a_whole_image(photo_bytes, seed):
    """Header intact, 2000 bytes of entropy-coded data replaced by garbage.

    With current Pillow/libjpeg-turbo this is a DecodeError ("broken data
    stream"); a libjpeg that conceals the damage may decode it instead. Either
    way decode() must not leak a raw exception or return part of an image.
    """
    rng = random.Random(seed)
    data = bytearray(photo_bytes)
    start = _start_of_scan(photo_bytes) + 200
    data[start:start + 2000] = bytes(rng.randrange(256) for _ in range(2000))
    try:
        decoded = decode(bytes(data))
    except errors.DecodeError as exc:
        assert str(exc).strip()
        return
    original = decode(photo_bytes)
    assert (decoded.width, decoded.height) == (original.width, original.height)
    assert decoded.image.size == original.image.size


def test_damaged_image_header_is_a_decode_error():
    """A PNG cut inside its IHDR chunk: identified, but the header cannot be read."""
    png = encode(patterned(32, 32), "PNG")
    with pytest.raises(errors.DecodeError) as info:
        decode(png[:20])
    assert "header" in str(info.value)


# ---------------------------------------------------------------- size limits
@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    return png_of_zeros(40_000, 40_000)


def test_decompression_bomb_is_refused_before_decoding(bomb_png, no_pixel_loading):
    assert len(bomb_png) < 1_000_000
    with pytest.raises(errors.ImageTooLarge) as info:
        decode(bomb_png)
    assert info.value.reason == "too-large"


def test_own_pixel_limit_below_pillows_bomb_limit(no_pixel_loading):
    """13000 x 12000 passes Pillow's bomb check but not imgmatch's 150 Mpx default."""
    assert 13_000 * 12_000 > DEFAULT_MAX_PIXELS
    assert 13_000 * 12_000 < 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(errors.ImageTooLarge) as info:
        decode(png_of_zeros(13_000, 12_000))
    assert "13000x12000" in str(info.value)


def test_long_strip_is_refused_by_default_max_side(no_pixel_loading):
    assert 40_000 > DEFAULT_MAX_SIDE
    with pytest.raises(errors.ImageTooLarge):
        decode(png_of_zeros(1, 40_000))
    with pytest.raises(errors.ImageTooLarge):
        decode(png_of_zeros(40_000, 1))


def test_max_side_is_inclusive():
    data = png_of_zeros(1, 2000)
    assert decode(data, max_side=2000).height == 2000
    with pytest.raises(errors.ImageTooLarge):
        decode(data, max_side=1999)


def test_max_pixels_is_inclusive():
    data = png_of_zeros(200, 100)
    assert decode(data, max_pixels=20_000).width == 200
    with pytest.raises(errors.ImageTooLarge):
        decode(data, max_pixels=19_999)


# ------------------------------------------------------------ animated images
@pytest.fixture(scope="module")
def three_frame_gif() -> bytes:
    frames = [Image.new("L", (96, 96), 0) for _ in range(3)]
    ImageDraw.Draw(frames[0]).rectangle([0, 0, 47, 95], fill=255)   # left half
    ImageDraw.Draw(frames[1]).rectangle([0, 0, 95, 47], fill=255)   # top half
    ImageDraw.Draw(frames[2]).ellipse([24, 24, 72, 72], fill=255)   # disc
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                  duration=100, loop=0)


def test_animated_gif_counts_frames_and_decodes_each(three_frame_gif):
    pdq = get("pdq")
    decoded = [decode(three_frame_gif, frame=i) for i in range(3)]
    assert all(d.format == "GIF" and d.frames == 3 for d in decoded)
    hashes = [pdq.compute(d) for d in decoded]
    # left half vs top half: unrelated images, far beyond the match threshold
    assert hashes[1] - hashes[0] > pdq.threshold
    assert hashes[2] - hashes[0] > pdq.threshold
    # frame 0 by default
    assert pdq.compute(decode(three_frame_gif)) == hashes[0]
    # the pixels are really the frames drawn above
    left = np.asarray(decoded[0].grey)
    top = np.asarray(decoded[1].grey)
    assert left[48, 10] > 200 and left[48, 85] < 50
    assert top[10, 48] > 200 and top[85, 48] < 50


def test_frame_past_the_end_is_a_decode_error(three_frame_gif):
    with pytest.raises(errors.DecodeError):
        decode(three_frame_gif, frame=3)


# ------------------------------------------------------------------ tiny images
@pytest.mark.parametrize("side", [1, 4])
def test_tiny_images_decode_and_have_pdq_quality_zero(side):
    rng = np.random.default_rng(side)
    pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    decoded = decode(encode(Image.fromarray(pixels), "PNG"))
    assert (decoded.width, decoded.height) == (side, side)
    assert decoded.image.size == (side, side)
    assert decoded.image.mode in ("RGB", "L")
    pdq = get("pdq")
    value = pdq.compute(decoded)
    assert value.quality == 0
    assert not pdq.usable(value)


# ------------------------------------------------------------- decoded images
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "1", "CMYK"])
def test_output_is_rgb_or_grey(mode):
    img = patterned(40, 30).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    decoded = decode(encode(img, fmt))
    assert decoded.image.mode in ("RGB", "L")
    assert decoded.mode == mode
    assert decoded.format == fmt


def test_transparent_pixels_are_flattened_onto_white():
    img = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    img.paste((255, 0, 0, 255), (0, 0, 10, 20))
    decoded = decode(encode(img, "PNG"))
    grey = np.asarray(decoded.grey, dtype=np.int16)  # RGB or grey: compare luma
    assert abs(grey[10, 5] - 76) <= 1       # opaque red: 0.299 * 255
    assert grey[10, 15] == 255              # transparent: white, not black


def test_large_jpeg_is_reduced_but_reports_original_size():
    img = patterned(2400, 1800)
    decoded = decode(encode(img, "JPEG", quality=90))
    assert (decoded.width, decoded.height) == (2400, 1800)
    w, h = decoded.image.size
    assert max(w, h) >= 512
    assert w < 2400  # DCT scaling kicked in
    assert abs(w / h - 2400 / 1800) < 0.01


def test_large_png_is_box_reduced_to_at_least_target():
    decoded = decode(encode(patterned(1600, 1100), "PNG"))
    assert (decoded.width, decoded.height) == (1600, 1100)
    assert max(decoded.image.size) >= 512
    # reduced by a whole factor (Pillow's reduce rounds up)
    factors = [f for f in range(2, 9) if decoded.image.size == (-(-1600 // f), -(-1100 // f))]
    assert factors, decoded.image.size


@pytest.mark.parametrize("target", [64, 128, 256])
def test_target_bounds_the_decoded_size(photo_bytes, target):
    decoded = decode(photo_bytes, target=target)  # a square photo, 512 x 512
    assert decoded.width == decoded.height == 512
    w, h = decoded.image.size
    assert w == h
    assert target <= w < 2 * target


# ------------------------------------------------------------ EXIF orientation
def test_exif_orientation_6_swaps_width_and_height():
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    decoded = decode(encode(patterned(300, 200), "JPEG", exif=exif))
    assert (decoded.width, decoded.height) == (200, 300)
    assert decoded.image.size == (200, 300)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillows_exif_transpose(orientation):
    """Lossless PNG with an eXIf chunk: decode() shows exactly what a viewer shows."""
    stored = patterned(60, 40)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    data = encode(stored, "PNG", exif=exif)
    decoded = decode(data)
    assert decoded.image.mode in ("RGB", "L")
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert(decoded.image.mode)
    assert decoded.image.size == expected.size
    assert (decoded.width, decoded.height) == expected.size
    assert np.array_equal(np.asarray(decoded.image), np.asarray(expected))
    if orientation in (5, 6, 7, 8):
        assert expected.size == (40, 60)


def _with_capture_date(value) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = value  # DateTimeOriginal, in the Exif sub-IFD
    return encode(patterned(80, 60), "JPEG", exif=exif)


def test_the_camera_capture_date_is_kept_as_iso_8601():
    assert decode(_with_capture_date("2023:05:06 19:03:07")).captured_at == \
        "2023-05-06T19:03:07"
    assert decode(encode(patterned(80, 60), "JPEG")).captured_at is None


@pytest.mark.parametrize("value", ["2023:13:06 19:03:07", "0000:00:00 00:00:00",
                                   "not a date", "2023:05:06 19:03:07<script>", "1800:01:01 00:00:00",
                                   "    :  :     :  :  "])
def test_a_hostile_or_impossible_capture_date_is_dropped(value):
    assert decode(_with_capture_date(value)).captured_at is None


def test_broken_orientation_value_is_ignored():
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 42
    stored = patterned(60, 40)
    decoded = decode(encode(stored, "PNG", exif=exif))
    assert np.array_equal(np.asarray(decoded.image),
                          np.asarray(stored.convert(decoded.image.mode)))


def test_decoded_transposed_is_the_pixels_transposed(photo_bytes):
    decoded = decode(photo_bytes)
    assert decoded.transposed(None) is decoded
    turned = decoded.transposed(Image.Transpose.ROTATE_90)
    assert isinstance(turned, Decoded)
    assert np.array_equal(np.asarray(turned.image),
                          np.rot90(np.asarray(decoded.image)))
