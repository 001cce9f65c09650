"""Framed pictures: the photo an app's screen shows, the cells of a collage.

A screenshot's quarters cut its photo in pieces, and its whole image spends
most of its keypoints on the interface; the rectangle the photo is framed
in holds all of it (:func:`imgmatch.features.regions`).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageOps

import imgmatch
from imgmatch import features, match
from imgmatch import evidence
from imgmatch.evidence import PRECISE

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PHOTOS = sorted((FIXTURES / "originals").glob("*.jpg")) + \
    sorted((FIXTURES / "distractors").glob("*.jpg"))


def grey(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"))


def near(box: tuple[int, int, int, int], want: tuple[int, int, int, int], tolerance: float
         ) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(box, want))


def in_an_app(photo: Image.Image) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A phone screen showing the photo under a status bar, above listing
    text; and the photo's box in it."""
    screen = Image.new("RGB", (540, 1100), (245, 245, 245))
    draw = ImageDraw.Draw(screen)
    draw.rectangle((0, 0, 540, 70), fill=(30, 30, 30))
    draw.text((20, 25), "12:41   LTE   87%", fill="white")
    for k in range(12):
        draw.text((20, 600 + 36 * k), f"Listing line {k}: call 555-01{k:02d}", fill=(40, 40, 40))
    shown = ImageOps.contain(photo, (500, 440))
    screen.paste(shown, (20, 100))
    return screen, (20, 100, 20 + shown.width, 100 + shown.height)


def in_a_web_page(photo: Image.Image) -> Image.Image:
    """A browser's window showing the photo small, beside forty lines of an
    ad's text: the whole page's keypoints are the text's."""
    page = Image.new("RGB", (1280, 800), (248, 248, 248))
    draw = ImageDraw.Draw(page)
    draw.rectangle((0, 0, 1280, 60), fill=(220, 222, 226))
    draw.rounded_rectangle((60, 15, 700, 45), 10, fill="white")
    draw.text((80, 22), "https://adsnow.example/ad/198065", fill=(60, 60, 60))
    for k in range(40):
        draw.text((420, 100 + 16 * k), f"Details line {k}: {1000 + 37 * k} call "
                  f"555-{k:04d} tonight new in town", fill=(30, 30, 30))
    page.paste(ImageOps.contain(photo, (260, 190)), (60, 100))
    return page


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def test_the_photo_an_app_screen_shows_is_a_framed_region() -> None:
    for path in PHOTOS[:4]:
        screen, box = in_an_app(Image.open(path).convert("RGB"))
        found = features.regions(grey(screen))
        assert any(near(b, box, 0.02 * 1100) for b in found), (path.name, found, box)


def test_the_cells_of_a_collage_are_framed_regions() -> None:
    collage = Image.new("RGB", (640, 500), "white")
    cells = []
    for n, path in enumerate(PHOTOS[:4]):
        x, y = 10 + (n % 2) * 315, 10 + (n // 2) * 245
        collage.paste(Image.open(path).convert("RGB").resize((305, 235)), (x, y))
        cells.append((x, y, x + 305, y + 235))
    found = features.regions(grey(collage))
    assert len(found) == features.MAX_REGIONS
    assert all(any(near(b, cell, 0.02 * 640) for cell in cells) for b in found), found


def test_photos_frame_no_pictures() -> None:
    """A window or a door is a rectangle too, but has more photo around it
    than a page's flat background: no photo of the fixtures frames one, so
    an ingest does not search their tiles."""
    for path in PHOTOS:
        assert features.regions(grey(Image.open(path))) == [], path.name


def test_an_image_too_small_to_tile_has_no_regions() -> None:
    screen, _ = in_an_app(Image.open(PHOTOS[0]).convert("RGB"))
    small = screen.resize((features.MIN_TILED_SIDE - 1, 2 * features.MIN_TILED_SIDE))
    assert features.regions(grey(small)) == []


def test_the_tiles_of_a_screen_include_its_photo() -> None:
    """Tiles and their boxes come from one function each, in one order, so a
    verification found in a tile is aligned with that tile's box."""
    screen, box = in_an_app(Image.open(PHOTOS[0]).convert("RGB"))
    pixels = grey(screen)
    boxes = features.view_boxes(pixels)
    grid = features.cells(pixels)  # the app's bars are seams too
    assert boxes[:len(grid)] == grid
    quarters = boxes[len(grid):len(grid) + 5]
    assert set(quarters) <= set(features.tile_boxes(*pixels.shape))
    tiles = features.tiles(pixels)
    assert [t.shape for t in tiles] == [(y1 - y0, x1 - x0) for x0, y0, x1, y1 in boxes]
    assert any(near(b, box, 0.02 * 1100) for b in boxes)


@settings(max_examples=30, deadline=None)
@given(width=st.integers(300, 900), height=st.integers(300, 900),
       background=st.integers(0, 255), seed=st.integers(0, 2**16),
       share=st.tuples(st.floats(0.25, 0.8), st.floats(0.25, 0.8)),
       at=st.tuples(st.floats(0.05, 0.95), st.floats(0.05, 0.95)))
def test_a_textured_picture_on_a_flat_page_is_found_where_it_is(
        width: int, height: int, background: int, seed: int,
        share: tuple[float, float], at: tuple[float, float]) -> None:
    rng = np.random.default_rng(seed)
    w, h = int(share[0] * width), int(share[1] * height)
    x = int(at[0] * (width - w - 16)) + 8
    y = int(at[1] * (height - h - 16)) + 8
    page = np.full((height, width), background, np.uint8)
    blobs = Image.fromarray(rng.integers(0, 256, (6, 8), dtype=np.uint8)).resize(
        (w, h), Image.Resampling.BICUBIC)
    picture = np.asarray(blobs).astype(np.int16) + rng.integers(-20, 21, (h, w))
    # kept clear of the page's grey along its edge, or it has no outline there
    edge = np.abs(picture - background) < 40
    picture[edge] = (background + 128) % 256
    page[y:y + h, x:x + w] = np.clip(picture, 0, 255)
    found = features.regions(page)
    tolerance = 0.02 * max(width, height) + 2
    assert any(near(b, (x, y, x + w, y + h), tolerance) for b in found), found


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> Path:
    """A collection of the fixtures' six photos."""
    folder = tmp_path_factory.mktemp("framed")
    with imgmatch.Collection.open(folder / "c.db") as collection:
        collection.add_many((p, None) for p in sorted((FIXTURES / "originals").glob("*.jpg")))
    return folder / "c.db"


@pytest.mark.parametrize("name", ["cat", "rocket", "temple"])
def test_a_query_finds_a_photo_shown_small_in_a_web_page(originals, monkeypatch, name) -> None:
    """The page's quarters cut the photo, and its whole image's keypoints are
    the text's: without the frame's tile, nothing is found."""
    photo = FIXTURES / "originals" / f"{name}.jpg"
    page = png(in_a_web_page(Image.open(photo).convert("RGB")))
    with imgmatch.Collection.open(originals, readonly=True) as collection:
        found = collection.query(page)
        assert [m.sha256 for m in found] == [hashlib.sha256(photo.read_bytes()).hexdigest()]
        assert found[0].score >= match.MATCH_SCORE
        monkeypatch.setattr(features, "MAX_REGIONS", 0)
        assert collection.query(page) == []


@pytest.mark.parametrize("framed", [True, False])
def test_an_ingest_links_a_web_page_to_the_photo_it_frames(tmp_path, monkeypatch, framed) -> None:
    """The page's whole image matches no part of the photo, so only its frame
    makes its tiles worth searching (:func:`imgmatch.match.worth_tiling`);
    the link found in a tile stays weak. (Under the photo, the blank lines
    between its text lines run across the whole page, narrow and flat
    between busy ones, so it also looks like a grid of tiles: that gate is
    held off here to see the frame's own.)"""
    monkeypatch.setattr(match, "TILE_FRAMED", framed)
    monkeypatch.setattr(match, "TILE_GRIDDED", False)
    photo = tmp_path / "rocket.jpg"
    photo.write_bytes((FIXTURES / "originals" / "rocket.jpg").read_bytes())
    page = tmp_path / "page.png"
    page.write_bytes(png(in_a_web_page(Image.open(photo).convert("RGB"))))
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.add(photo)
        summary = collection.add_many([(page, None)])
        record = collection.image(hashlib.sha256(page.read_bytes()).hexdigest())
    assert summary.images_tiled == framed
    assert [link.sha256 for link in record.links] == \
        ([hashlib.sha256(photo.read_bytes()).hexdigest()] if framed else [])
    assert all(match.MATCH_SCORE <= link.score < PRECISE for link in record.links)


def test_an_upgrade_links_a_web_page_to_the_photo_it_frames(tmp_path) -> None:
    """A hash-tier collection given local features in place: the upgrade's
    analysis says the page frames a picture, as an ingest's does."""
    from imgmatch.signals import HASH_SIGNALS

    photo = FIXTURES / "originals" / "temple.jpg"
    page = tmp_path / "page.png"
    page.write_bytes(png(in_a_web_page(Image.open(photo).convert("RGB"))))
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.add_many([(photo, None), (page, None)], signals=HASH_SIGNALS)
        assert collection.image(hashlib.sha256(page.read_bytes()).hexdigest()).links == ()
        collection.upgrade()
        record = collection.image(hashlib.sha256(page.read_bytes()).hexdigest())
    assert [link.sha256 for link in record.links] == [hashlib.sha256(photo.read_bytes()).hexdigest()]


def tiled(paths: list[Path], columns: int, cell: int, gap: int) -> Image.Image:
    """A collage: the pictures cut square, ``gap`` pixels of white between them."""
    rows = (len(paths) + columns - 1) // columns
    page = Image.new("RGB", (columns * cell + gap * (columns + 1),
                             rows * cell + gap * (rows + 1)), "white")
    for n, path in enumerate(paths):
        page.paste(ImageOps.fit(Image.open(path).convert("RGB"), (cell, cell)),
                   (gap + (n % columns) * (cell + gap), gap + (n // columns) * (cell + gap)))
    return page


def kept_grey(image: Image.Image) -> np.ndarray:
    """The grey pixels an ingest keeps of a new image (what it looks for seams in)."""
    return features.reduce(grey(image), features.ALIGN_SIDE)


@pytest.mark.parametrize("gap", [0, 4])
def test_tiles_that_touch_or_share_a_thin_gutter_look_like_a_grid(gap: int) -> None:
    collage = tiled(PHOTOS[:6], 3, 300, gap)
    assert features.regions(grey(collage)) == []  # no flat frame around its cells
    assert features.gridded(kept_grey(collage))
    assert features.gridded(kept_grey(collage.transpose(Image.Transpose.ROTATE_90)))


def test_photos_look_like_no_grid() -> None:
    for path in PHOTOS:
        assert not features.gridded(kept_grey(Image.open(path))), path.name
    assert not features.gridded(None)
    assert not features.gridded(np.zeros((20, 400), np.uint8))  # too thin to tell


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), width=st.integers(120, 400), height=st.integers(120, 400))
def test_a_flat_margin_or_a_smooth_photo_is_no_seam(seed: int, width: int, height: int) -> None:
    """A drawing on a wide white margin, and a smooth picture, have no line
    across them where the picture steps or a narrow gutter runs."""
    rng = np.random.default_rng(seed)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC))
    assert not features.gridded(smooth)
    page = np.full((height, width), 255, np.uint8)
    w, h = width // 3, height // 3
    page[h:2 * h, w:2 * w] = rng.integers(0, 256, (h, w), dtype=np.uint8)
    assert not features.gridded(page)


@pytest.mark.parametrize("gridded", [True, False])
def test_an_ingest_links_a_collage_of_touching_tiles_to_its_photo(tmp_path, monkeypatch,
                                                                  gridded) -> None:
    """Six photos cut square and set edge to edge: no cell is framed, and the
    rocket's cell is too small a part of the whole for its votes; the seams
    make its tiles worth searching (:data:`imgmatch.match.TILE_GRIDDED`)."""
    monkeypatch.setattr(match, "TILE_GRIDDED", gridded)
    rocket = FIXTURES / "originals" / "rocket.jpg"
    others = [p for p in PHOTOS if p != rocket][:5]
    collage = tmp_path / "collage.jpg"
    tiled(others[:2] + [rocket] + others[2:], 3, 300, 0).save(collage, "JPEG", quality=85)
    with imgmatch.Collection.open(tmp_path / "c.db") as collection:
        collection.add(rocket)
        summary = collection.add_many([(collage, None)])
        record = collection.image(hashlib.sha256(collage.read_bytes()).hexdigest())
    assert summary.images_tiled == gridded
    assert [link.sha256 for link in record.links] == \
        ([hashlib.sha256(rocket.read_bytes()).hexdigest()] if gridded else [])
    assert all(match.MATCH_SCORE <= link.score < PRECISE for link in record.links)


def test_a_grids_cells_are_cut_where_its_seams_run() -> None:
    """A 3 x 2 collage's six cells, each a photo: the quarters would cut its
    middle column in two."""
    collage = tiled(PHOTOS[:6], 3, 300, 4)
    pixels = grey(collage)
    down, across = features.seams(pixels)
    assert down == pytest.approx([1 / 3, 2 / 3], abs=0.02)
    assert across == pytest.approx([1 / 2], abs=0.02)
    # where the tiles touch, the rows are cut at least
    assert len(features.cells(grey(tiled(PHOTOS[:6], 3, 300, 0)))) >= 2
    found = features.cells(pixels)
    h, w = pixels.shape
    assert len(found) == 6
    for x0, y0, x1, y1 in found:
        assert (x1 - x0) == pytest.approx(w / 3, rel=0.06)
        assert (y1 - y0) == pytest.approx(h / 2, rel=0.06)
    # the cells come first among the tiles, and no quarter that is a cell is searched twice
    boxes = features.view_boxes(pixels)
    assert boxes[:6] == found
    for photo in PHOTOS:
        assert features.cells(grey(Image.open(photo))) == [], photo.name


def test_a_photo_in_a_grids_middle_column_is_found_in_its_cell(tmp_path, monkeypatch) -> None:
    """The rocket in the top row's middle cell of a 3 x 2 collage: no quarter
    holds it whole; its cell does."""
    names = ["astronaut", "rocket", "cat", "coffee", "flower", "temple"]
    collage = tiled([FIXTURES / "originals" / f"{n}.jpg" for n in names], 3, 440, 0)
    collage.save(tmp_path / "collage.jpg", quality=85)
    rocket = FIXTURES / "originals" / "rocket.jpg"
    with imgmatch.Collection.open(tmp_path / "c.db") as c:
        c.add_many([(str(rocket), imgmatch.Sighting(source="rocket"))])
        best = {}
        for on in (False, True):
            monkeypatch.setattr(features, "GRID_CELLS", on)
            best[on] = max((m.score for m in c.query(str(tmp_path / "collage.jpg"))), default=0)
    robust = evidence.MODELS["robust"].precise  # the tier's "precision 0.99" score
    assert best[True] >= robust and best[True] > best[False] + 0.05
