"""Every format on the allow-list decodes to (nearly) the same hash as the JPEG."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, features

from imgmatch.decode import decode
from imgmatch.signals import get

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PHOTO = FIXTURES / "originals" / "temple.jpg"


def encoded(fmt: str, **kwargs) -> bytes:
    if fmt == "HEIF":
        pillow_heif = pytest.importorskip("pillow_heif")
        pillow_heif.register_heif_opener()
    if fmt == "AVIF" and not features.check("avif"):
        pytest.skip("this Pillow was built without AVIF")
    buf = io.BytesIO()
    Image.open(PHOTO).convert("RGB").save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("fmt, kwargs", [
    ("PNG", {}), ("WEBP", {"quality": 90}), ("BMP", {}), ("TIFF", {}), ("GIF", {}),
    ("HEIF", {"quality": 90}), ("AVIF", {"quality": 90}),
])
def test_format_hashes_like_the_jpeg(fmt, kwargs):
    pdq = get("pdq")
    reference = pdq.compute(decode(PHOTO.read_bytes()))
    decoded = decode(encoded(fmt, **kwargs))
    assert decoded.format == fmt
    # GIF's 256-colour palette costs a few more bits than the other encodings
    assert pdq.compute(decoded) - reference <= (24 if fmt == "GIF" else 16)
