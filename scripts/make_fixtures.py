#!/usr/bin/env python3
"""Generate the simulated ad-platform reposts, held-out queries and manifest.

Why: imgmatch has to recognise one photograph after it has been re-used in
many ads -- resized, recompressed, cropped, mirrored, stamped with a phone
number -- on different sites, in different cities, over several years.  Real
ad data cannot be shipped, so this script fabricates such a history from a
handful of permissively licensed photographs (see fixtures/README.md).

Inputs (committed, never modified here):
    fixtures/originals/*.jpg      the six source photographs
    fixtures/distractors/*.jpg    three unrelated photos seen once each
    fixtures/queries/unrelated.jpg

Outputs (committed too, and rewritten identically on every run):
    fixtures/reposts/*.jpg        edited copies of five originals
    fixtures/queries/*_mirror_crop10.jpg
    fixtures/manifest.csv         one row per sighting

Everything is driven by the SIGHTINGS table below and a fixed random seed,
so running the script twice gives byte-identical files (with the same Pillow
build).  Needs only Python 3.10+, Pillow and the standard library.

Usage:  python scripts/make_fixtures.py [--fixtures DIR]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import random
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

SEED = 20240309
MANIFEST_COLUMNS = [
    "path", "platform", "url", "page_url", "ad_id",
    "posted_at", "collected_at", "phone", "city",
]

# --------------------------------------------------------------------------
# Edit operations.  Each takes and returns a PIL image; the final JPEG
# quality is part of the sighting, not of the ops.
# --------------------------------------------------------------------------


def op_resize(factor: float):
    def run(im: Image.Image) -> Image.Image:
        w, h = im.size
        return im.resize((round(w * factor), round(h * factor)),
                         Image.Resampling.LANCZOS)
    run.desc = f"resize x{factor:g}"
    return run


def op_crop(left: float, top: float, right: float, bottom: float):
    """Cut the given fractions of width/height off each side."""
    def run(im: Image.Image) -> Image.Image:
        w, h = im.size
        box = (round(w * left), round(h * top),
               w - round(w * right), h - round(h * bottom))
        return im.crop(box)
    kept = (1 - left - right) * (1 - top - bottom)
    run.desc = (f"crop {left * 100:g}/{top * 100:g}/{right * 100:g}/"
                f"{bottom * 100:g}% off left/top/right/bottom"
                f" (-{(1 - kept) * 100:.1f}% area)")
    return run


def op_mirror():
    def run(im: Image.Image) -> Image.Image:
        return ImageOps.mirror(im)
    run.desc = "mirror"
    return run


def _font(size: int) -> ImageFont.ImageFont:
    # Pillow's bundled font (FreeType build), so output does not depend on
    # which system fonts are installed.  Bitmap fallback for old Pillows.
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def op_text(text: str, where: str = "bottom"):
    """Stamp a phone number on a translucent banner, like ad sites do."""
    def run(im: Image.Image) -> Image.Image:
        base = im.convert("RGBA")
        w, h = base.size
        font = _font(max(12, h // 14))
        layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        tw, th = x1 - x0, y1 - y0
        pad = max(4, th // 3)
        bh = th + 2 * pad
        by = h - bh - h // 30 if where == "bottom" else h // 30
        draw.rectangle((0, by, w, by + bh), fill=(0, 0, 0, 150))
        draw.text(((w - tw) // 2 - x0, by + pad - y0), text, font=font,
                  fill=(255, 230, 0, 255))
        return Image.alpha_composite(base, layer).convert("RGB")
    run.desc = f'text "{text}" ({where})'
    return run


# --------------------------------------------------------------------------
# Platforms: how each fictional site builds its image and page URLs.
# --------------------------------------------------------------------------


def _slug(city: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", city.lower()).strip("-")


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def platform_urls(platform: str, ad_id: str, city: str, posted: datetime,
                  photo_no: int, rng: random.Random) -> tuple[str, str]:
    c = _slug(city)
    if platform == "citylist":
        return (f"https://citylist.example/ads/{ad_id}/photo{photo_no}.jpg",
                f"https://citylist.example/{c}/ads/{ad_id}")
    if platform == "backpage-clone":
        return (f"https://img.backpage-clone.example/{posted:%Y/%m}/"
                f"{_hex(rng, 16)}.jpg",
                f"https://backpage-clone.example/{c}/post/{ad_id}")
    if platform == "nightads":
        return (f"https://cdn.nightads.example/p/{ad_id}_{photo_no}.jpg",
                f"https://nightads.example/{c}/ad/{ad_id}")
    if platform == "jobboard":
        return (f"https://jobboard.example/media/{ad_id}/{_hex(rng, 8)}.jpg",
                f"https://jobboard.example/jobs/{ad_id}?loc={c}")
    raise ValueError(f"unknown platform {platform!r}")


AD_ID_DIGITS = {"citylist": 5, "backpage-clone": 7, "nightads": 6,
                "jobboard": 6}


# --------------------------------------------------------------------------
# The story.  One entry per sighting (= one manifest row).
#   source:  file under fixtures/ that the sighting starts from
#   ops:     edits; empty + quality None means "the file itself, unchanged"
#            (manifest path then points at the source file)
# --------------------------------------------------------------------------


@dataclass
class Sighting:
    source: str
    platform: str
    posted_at: str
    city: str
    phone: str
    ops: list = field(default_factory=list)
    quality: int | None = None
    photo_no: int = 1


S = Sighting
SIGHTINGS: list[Sighting] = [
    # astronaut.jpg -- "the same person" moving between sites and cities.
    S("originals/astronaut.jpg", "backpage-clone", "2023-02-11T22:41:00Z",
      "Houston", "555-0142"),
    S("originals/astronaut.jpg", "citylist", "2023-05-06T19:03:00Z",
      "Houston", "555-0142"),
    S("originals/astronaut.jpg", "citylist", "2023-10-28T21:15:00Z",
      "Dallas", "555-0142", [op_resize(0.75)], 75, photo_no=2),
    S("originals/astronaut.jpg", "nightads", "2024-03-09T21:14:00Z",
      "Atlanta", "555-0178",
      [op_crop(0.04, 0.03, 0.02, 0.02), op_text("555-0178")], 80),
    S("originals/astronaut.jpg", "jobboard", "2024-09-17T08:30:00Z",
      "Atlanta", "555-0178", [op_mirror()], 70),
    S("originals/astronaut.jpg", "nightads", "2025-04-02T23:55:00Z",
      "Miami", "555-0193",
      [op_mirror(), op_crop(0.03, 0.06, 0.03, 0.02), op_resize(0.6),
       op_text("Call 555-0193")], 65),

    # cat.jpg -- a pet-sale photo that keeps being reused.
    S("originals/cat.jpg", "citylist", "2023-04-14T16:20:00Z",
      "Portland", "555-0117", [op_resize(0.8)], 80),
    S("originals/cat.jpg", "backpage-clone", "2024-01-22T10:05:00Z",
      "Seattle", "555-0117", [op_crop(0.02, 0.05, 0.05, 0.02)], 65),
    S("originals/cat.jpg", "citylist", "2025-06-30T12:45:00Z",
      "Seattle", "555-0121",
      [op_text("Kittens 555-0121", "top")], 72, photo_no=3),

    # coffee.jpg -- "barista wanted" ads; the unchanged file on two sites.
    S("originals/coffee.jpg", "jobboard", "2023-03-01T07:00:00Z",
      "Chicago", "555-0160"),
    S("originals/coffee.jpg", "citylist", "2023-03-02T09:12:00Z",
      "Chicago", "555-0160"),
    S("originals/coffee.jpg", "jobboard", "2024-02-19T07:30:00Z",
      "Milwaukee", "555-0160", [op_resize(0.5)], 70),
    S("originals/coffee.jpg", "backpage-clone", "2025-01-08T18:40:00Z",
      "Detroit", "555-0142",
      [op_mirror(), op_crop(0.05, 0.03, 0.02, 0.04)], 78),

    # rocket.jpg -- "tickets / tours" ads.
    S("originals/rocket.jpg", "citylist", "2024-05-21T14:00:00Z",
      "Orlando", "555-0134",
      [op_crop(0.035, 0.035, 0.035, 0.035), op_resize(0.7)], 75),
    S("originals/rocket.jpg", "nightads", "2025-02-14T20:10:00Z",
      "Miami", "555-0193",
      [op_mirror(), op_text("555-0193")], 68),

    # temple.jpg -- "travel agent" ads.
    S("originals/temple.jpg", "backpage-clone", "2023-08-03T11:11:00Z",
      "San Francisco", "555-0105", [], 60),
    S("originals/temple.jpg", "jobboard", "2024-07-12T09:00:00Z",
      "Los Angeles", "555-0105", [op_resize(0.6)], 76),
    S("originals/temple.jpg", "nightads", "2025-03-27T22:22:00Z",
      "Las Vegas", "555-0178",
      [op_crop(0.06, 0.02, 0.02, 0.05), op_text("555-0178")], 70),

    # flower.jpg -- the sixth original, seen exactly once.
    S("originals/flower.jpg", "citylist", "2024-04-18T15:30:00Z",
      "Denver", "555-0150"),

    # Distractors: unrelated photos, one sighting each.
    S("distractors/cameraman.jpg", "jobboard", "2023-06-12T08:15:00Z",
      "Boston", "555-0109"),
    S("distractors/deep_field.jpg", "citylist", "2024-11-05T20:00:00Z",
      "Phoenix", "555-0186"),
    S("distractors/grass.jpg", "backpage-clone", "2025-05-19T13:37:00Z",
      "Austin", "555-0124"),
]

# Held-out queries: mirrored, ~10% of the area cropped away (uneven margins,
# so the crop is slightly off-centre), JPEG quality 70.  Not in the manifest.
QUERIES = [
    ("originals/astronaut.jpg", "queries/astronaut_mirror_crop10.jpg",
     (0.035, 0.015, 0.015, 0.035)),
    ("originals/cat.jpg", "queries/cat_mirror_crop10.jpg",
     (0.015, 0.035, 0.030, 0.020)),
    ("originals/temple.jpg", "queries/temple_mirror_crop10.jpg",
     (0.030, 0.020, 0.020, 0.030)),
]
QUERY_QUALITY = 70


# --------------------------------------------------------------------------


def encode_jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=False, progressive=False)
    return buf.getvalue()


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def build(root: Path) -> list[dict]:
    rng = random.Random(SEED)
    reposts_dir = root / "reposts"
    reposts_dir.mkdir(exist_ok=True)
    # Remove stale outputs so renamed entries do not linger.
    for old in reposts_dir.glob("*.jpg"):
        old.unlink()

    rows: list[dict] = []
    used_names: set[str] = set()
    used_ids: set[tuple[str, str]] = set()
    digests: dict[str, str] = {}
    for s in SIGHTINGS:
        src_path = root / s.source
        if not src_path.is_file():
            sys.exit(f"missing input: {src_path}")
        if s.ops or s.quality is not None:
            with Image.open(src_path) as im:
                im = im.convert("RGB") if im.mode != "L" else im.copy()
            for op in s.ops:
                im = op(im)
            data = encode_jpeg(im, s.quality)
            stem = Path(s.source).stem
            name = f"{stem}_{s.platform}_{s.posted_at[:4]}.jpg"
            suffix = ord("b")
            while name in used_names:
                name = f"{stem}_{s.platform}_{s.posted_at[:4]}{chr(suffix)}.jpg"
                suffix += 1
            used_names.add(name)
            digest = hashlib.sha256(data).hexdigest()
            if digest in digests:
                sys.exit(f"{name} is byte-identical to {digests[digest]}")
            digests[digest] = name
            (reposts_dir / name).write_bytes(data)
            rel = f"reposts/{name}"
        else:
            rel = s.source

        while True:
            ad_id = str(rng.randrange(10 ** (AD_ID_DIGITS[s.platform] - 1),
                                      10 ** AD_ID_DIGITS[s.platform]))
            if (s.platform, ad_id) not in used_ids:
                used_ids.add((s.platform, ad_id))
                break
        posted = datetime.strptime(s.posted_at, "%Y-%m-%dT%H:%M:%SZ") \
            .replace(tzinfo=timezone.utc)
        collected = posted + timedelta(days=rng.randint(1, 45),
                                       minutes=rng.randint(0, 1439))
        url, page_url = platform_urls(s.platform, ad_id, s.city, posted,
                                      s.photo_no, rng)
        rows.append({
            "path": rel, "platform": s.platform, "url": url,
            "page_url": page_url, "ad_id": ad_id,
            "posted_at": iso(posted), "collected_at": iso(collected),
            "phone": s.phone, "city": s.city,
        })

    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)

    for src, dst, (l, t, r, b) in QUERIES:
        with Image.open(root / src) as im:
            im = im.convert("RGB")
        im = op_crop(l, t, r, b)(op_mirror()(im))
        (root / dst).write_bytes(encode_jpeg(im, QUERY_QUALITY))
    return rows


def describe() -> str:
    """Text table of what each repost is made of (for the README)."""
    lines = []
    for s in SIGHTINGS:
        if s.ops or s.quality is not None:
            steps = [op.desc for op in s.ops] + [f"JPEG q{s.quality}"]
            lines.append(f"{s.source} -> {s.platform} {s.posted_at[:10]}: "
                         + ", ".join(steps))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fixtures", type=Path, default=here.parent / "fixtures",
                   help="fixtures directory (default: %(default)s)")
    p.add_argument("--describe", action="store_true",
                   help="print the edit recipe of every repost and exit")
    a = p.parse_args(argv)
    if a.describe:
        print(describe())
        return 0
    rows = build(a.fixtures)
    print(f"wrote {len(rows)} manifest rows to {a.fixtures / 'manifest.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
