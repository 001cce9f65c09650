"""Bytes to normalised pixels, once per image.

Every signal is computed from the one image this module returns, so the
expensive part (decoding) happens once. Decoding is guarded: only an
allow-list of formats is opened, the pixel count is checked *before* pixels
are decoded (decompression bombs), and every failure becomes a named
:class:`~imgmatch.errors.InputError` that the batch records and moves past.

JPEGs are decoded straight to grey with libjpeg's DCT scaling
(``Image.draft``), at the smallest scale that keeps the longer side at least
``target`` pixels: PDQ needs about 512, pHash and dHash far less, so the
decode is sized by the signals asked for. EXIF orientation is applied here,
in one place, so every signal hashes what a viewer shows.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DecodeError, EmptyFile, ImageTooLarge, InputError, OutOfMemory, \
    UnsupportedFormat

#: Formats imgmatch opens. Anything else is refused before a decoder runs.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO",
                                    "AVIF", "HEIF")
#: ISO-BMFF brands of HEIF/HEIC files (decoded by pillow-heif, registered on first use).
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")

#: Default ceiling on width x height (a 16k x 16k poster is not an ad photo).
DEFAULT_MAX_PIXELS = 150_000_000
#: Default ceiling on either side, so a 1 x 10^8 strip is refused too.
DEFAULT_MAX_SIDE = 30_000
#: Longer side the decode keeps at least (PDQ wants about 512).
DEFAULT_TARGET = 512
#: Formats whose later frames Pillow composites over the whole canvas in
#: RGBA, keeping the frame before: about 4 bytes a pixel, twice, where a
#: first frame takes 1 to 3. A later frame's canvas is held to
#: ``max_pixels // COMPOSITED_SHARE``, so that a 1-KB GIF with a 130-megapixel
#: canvas cannot take 2.5 GB by its second frame (a fuzzing finding).
COMPOSITED_FORMATS = ("GIF", "PNG", "WEBP")
COMPOSITED_SHARE = 4


class Decoded:
    """A decoded, oriented image ready for hashing (treat as immutable).

    ``image`` is in mode L (default) or RGB; its longer side is at least
    ``target`` pixels when the original was that large (it may be a reduced
    decode).
    ``width`` and ``height`` are the original's, after EXIF orientation.
    """

    __slots__ = ("image", "width", "height", "format", "mode", "frames", "captured_at",
                 "_luma", "_grey", "_redecode")

    def __init__(self, image: Image.Image, width: int, height: int, format: str,
                 mode: str, frames: int = 1, captured_at: str | None = None) -> None:
        self.image = image
        self.width = width
        self.height = height
        self.format = format
        self.mode = mode
        self.frames = frames
        #: when the camera took it (EXIF DateTimeOriginal, ISO 8601, no zone:
        #: cameras record local time), if the file says so plausibly
        self.captured_at = captured_at
        self._luma: np.ndarray | None = None
        self._grey: Image.Image | None = None
        self._redecode: Callable[[], Decoded] | None = None

    def in_colour(self) -> Decoded:
        """The same image decoded in RGB (itself if it already is, or cannot be)."""
        if self.image.mode == "RGB" or self._redecode is None:
            return self
        return self._redecode()

    @property
    def luma(self) -> np.ndarray:
        """Luma as PDQ's reference computes it: float 0.299 R + 0.587 G + 0.114 B
        for colour, the 8-bit values themselves for grey (left as uint8, so a
        consumer converts only what it reads)."""
        if self._luma is None:
            arr = np.asarray(self.image)
            if arr.ndim == 3:
                arr = arr.astype(np.float32) @ _LUMA
            self._luma = arr
        return self._luma

    @property
    def grey(self) -> Image.Image:
        """8-bit grey image, as imagehash's ``convert('L')`` makes it."""
        if self._grey is None:
            self._grey = self.image if self.image.mode == "L" else self.image.convert("L")
        return self._grey

    def transposed(self, op: Image.Transpose | None) -> Decoded:
        """The same image rotated or mirrored (``op`` None: itself)."""
        if op is None:
            return self
        image = self.image.transpose(op)
        return Decoded(image, image.size[0], image.size[1], self.format, self.mode, self.frames)


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def open_image(data: bytes, *, source: str | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS,
               max_side: int = DEFAULT_MAX_SIDE) -> Image.Image:
    """Identify ``data`` and check its size, without decoding pixels."""
    if not data:
        raise EmptyFile("the file is empty (0 bytes)", source=source)
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        _register_heif()
    try:
        with warnings.catch_warnings():
            # Pillow warns about bombs; we apply our own, explicit limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_registered_formats())
    except UnidentifiedImageError:
        raise UnsupportedFormat(
            "not an image in a supported format "
            f"({', '.join(f.lower() for f in ALLOWED_FORMATS if f != 'MPO')})",
            source=source) from None
    except MemoryError:
        raise out_of_memory(source) from None
    except Exception as exc:  # see _unusable: Pillow raises any type on hostile bytes
        raise _unusable(exc, "cannot read the image header", source) from None
    _check_size(img.size, source, max_pixels, max_side)
    return img


def _check_size(size: tuple[int, int], source: str | None, max_pixels: int,
                max_side: int) -> None:
    """Refuse an image (or one frame of it: a later TIFF page or animation frame
    may be far larger than the first) before its pixels are decoded."""
    width, height = size
    if width < 1 or height < 1:
        raise DecodeError(f"the image has no pixels ({width}x{height})", source=source)
    if width > max_side or height > max_side or width * height > max_pixels:
        raise ImageTooLarge(
            f"{width}x{height} pixels exceeds the limit of {max_pixels:,} pixels "
            f"or {max_side:,} per side (a possible decompression bomb)", source=source)


def _check_later_frame(img: Image.Image, source: str | None, max_pixels: int) -> None:
    """Refuse to seek to a later frame of an animation whose canvas is too
    large to composite (:data:`COMPOSITED_SHARE`); the first frame is
    decoded as before."""
    if img.format in COMPOSITED_FORMATS:
        width, height = img.size
        budget = max_pixels // COMPOSITED_SHARE
        if width * height > budget:
            raise ImageTooLarge(
                f"a later frame of this {width}x{height} animation exceeds the limit of "
                f"{budget:,} pixels for frames composited in full colour (a possible "
                f"decompression bomb)", source=source)


def _unusable(exc: Exception, what: str, source: str | None) -> InputError:
    """The input error for an exception Pillow raised while reading a file.

    Pillow's format plugins raise almost any exception type on malformed bytes
    (SyntaxError, TypeError, IndexError, KeyError, ...: its own fuzzing harness
    catches Exception), so every one of them is the file's fault, not a bug to
    stop a batch for; its own decompression-bomb check is a size refusal.
    """
    if isinstance(exc, InputError):
        return exc
    if isinstance(exc, Image.DecompressionBombError):
        return ImageTooLarge(str(exc), source=source)
    return DecodeError(f"{what}: {exc}", source=source)


def _frame_count(img: Image.Image, source: str | None) -> int | None:
    """How many frames the file says it has, or None when counting fails: Pillow
    reads every frame's header to count them, and a later frame can be broken or
    cut off (a partial download) while the first is sound."""
    try:
        return int(getattr(img, "n_frames", 1) or 1)
    except MemoryError:
        raise out_of_memory(source) from None
    except Exception:  # see _unusable
        return None


def _registered_formats() -> tuple[str, ...]:
    """The allowed formats whose Pillow plugins are loaded (plugins load lazily)."""
    if not _PLUGINS_LOADED:
        _load_plugins()
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def _load_plugins() -> None:
    global _PLUGINS_LOADED
    import importlib

    for name in ("Jpeg", "Mpo", "Png", "Gif", "WebP", "Bmp", "Tiff", "Avif"):
        try:
            importlib.import_module(f"PIL.{name}ImagePlugin")
        except ImportError:  # a Pillow built without that codec
            pass
    _PLUGINS_LOADED = True


_PLUGINS_LOADED = False


def _register_heif() -> None:
    """Teach Pillow HEIF/HEIC (imported only when such a file turns up)."""
    global _HEIF_READY
    if not _HEIF_READY:
        from pillow_heif import register_heif_opener

        register_heif_opener()
        _HEIF_READY = True


_HEIF_READY = False


def decode(data: bytes, *, source: str | None = None, target: int = DEFAULT_TARGET,
           max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = DEFAULT_MAX_SIDE,
           frame: int = 0, colour: bool = False) -> Decoded:
    """Decode ``data`` to an oriented image whose longer side is >= ``target`` px.

    By default the result is grey (mode L): for JPEG that is libjpeg's own
    luma, with no colour conversion, about twice as fast. ``colour=True``
    gives RGB, for signals that need exact float luma or colour.
    Raises an :class:`~imgmatch.errors.InputError` subclass for anything that
    cannot be used; never returns a partial image.
    """
    img = open_image(data, source=source, max_pixels=max_pixels, max_side=max_side)
    frames = _frame_count(img, source)
    if frames is None:  # later frames unreadable: the first one alone, opened afresh
        img, frames = open_image(data, source=source, max_pixels=max_pixels,
                                 max_side=max_side), 1
    try:
        if frame:
            _check_later_frame(img, source, max_pixels)
            img.seek(frame)
    except MemoryError:
        raise out_of_memory(source) from None
    except Exception as exc:  # see _unusable
        raise _unusable(exc, "cannot decode the image", source) from None
    return _finish(img, data, source, target, max_pixels, max_side, frame, frames, colour)


def decode_frames(data: bytes, *, source: str | None = None, target: int = DEFAULT_TARGET,
                  max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = DEFAULT_MAX_SIDE,
                  first: int = 1, limit: int = 100) -> Iterator[tuple[int, Decoded | DecodeError]]:
    """Frames ``first`` .. ``limit - 1`` of an animated image, decoded in one pass
    (seeking from the start for each would decode the earlier ones again):
    (frame number, its image, or the DecodeError that stopped it). A frame
    that cannot be decoded ends the sequence, as later ones build on it."""
    img = open_image(data, source=source, max_pixels=max_pixels, max_side=max_side)
    frames = _frame_count(img, source) or 1
    for k in range(first, min(frames, limit)):
        try:
            _check_later_frame(img, source, max_pixels)
            img.seek(k)
            yield k, _finish(img, data, source, target, max_pixels, max_side, k, frames, False)
        except DecodeError as exc:
            yield k, exc
            return
        except MemoryError:
            yield k, out_of_memory(source)
            return
        except Exception as exc:  # see _unusable; a frame too large ends the sequence too
            error = _unusable(exc, f"cannot decode frame {k}", source)
            yield k, DecodeError(error.detail, source=source, reason=error.reason)
            return


def _finish(img, data: bytes, source: str | None, target: int, max_pixels: int, max_side: int,
            frame: int, frames: int, colour: bool) -> Decoded:
    """The current frame of an opened image, decoded, reduced and oriented."""
    _check_size(img.size, source, max_pixels, max_side)
    fmt = img.format or "unknown"
    try:
        orientation = _orientation(img)
        captured_at = _captured_at(img)
        src_mode = img.mode
        header_size = img.size
        if fmt in ("JPEG", "MPO"):
            draft_mode = "RGB" if colour or src_mode not in ("RGB", "L", "YCbCr") else "L"
            img.draft(draft_mode if src_mode != "CMYK" else "CMYK",
                      _draft_box(header_size, target))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
        pixels = _to_rgb_or_grey(img)
        if not colour and pixels.mode != "L":
            pixels = pixels.convert("L")
    except MemoryError:
        raise out_of_memory(source) from None
    except Exception as exc:  # see _unusable
        raise _unusable(exc, "cannot decode the image", source) from None
    pixels = _reduce(pixels, target)
    if orientation in _TRANSPOSE:
        pixels = pixels.transpose(_TRANSPOSE[orientation])
    width, height = _oriented(header_size, orientation)
    decoded = Decoded(pixels, width, height, fmt, src_mode, frames, captured_at)
    if not colour:
        decoded._redecode = lambda: decode(data, source=source, target=target,
                                           max_pixels=max_pixels, max_side=max_side,
                                           frame=frame, colour=True)
    return decoded


def out_of_memory(source: str | None) -> OutOfMemory:
    """The error for a file whose decoding ran out of memory: under an ingest
    worker's cap, the file's own doing (a hostile or runaway decode)."""
    return OutOfMemory("decoding needed more memory than it may use (an ingest worker's "
                       "limit is set by --max-memory)", source=source)


def _draft_box(size: tuple[int, int], target: int) -> tuple[int, int]:
    """The size to ask ``draft`` for so that the longer side stays >= target."""
    w, h = size
    if w >= h:
        return target, max(1, target * h // w)
    return max(1, target * w // h), target


def _oriented(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    w, h = size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
        value = int(value)
    except Exception:  # a broken EXIF block must not cost the image
        return 1
    return value if 1 <= value <= 8 else 1


#: EXIF's date format, "YYYY:MM:DD HH:MM:SS".
_EXIF_DATE = re.compile(r"(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")


def _captured_at(img: Image.Image) -> str | None:
    """EXIF DateTimeOriginal as ISO 8601 (local time, no zone), or None.

    Crawled metadata is hostile: only a well-formed date between 1970 and
    2100 is kept, and nothing else from the EXIF block."""
    try:
        value = img.getexif().get_ifd(0x8769).get(0x9003)
    except Exception:  # a broken EXIF block must not cost the image
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    match = _EXIF_DATE.fullmatch(value.strip().rstrip("\x00")) if isinstance(value, str) \
        else None
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups())
    try:
        when = datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None
    return when.isoformat() if 1970 <= year <= 2100 else None


def _to_rgb_or_grey(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB or L, keeping what a viewer would see."""
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        # one float32 copy, scaled in place: a 150-megapixel 16-bit image then
        # needs 0.6 GB beside its decode, not several float64 temporaries
        arr = np.array(img, dtype=np.float32)
        hi = float(arr.max()) if arr.size else 0.0
        lo = float(arr.min()) if arr.size else 0.0
        if lo >= 0 and hi <= 255:
            pass
        elif lo >= 0 and hi <= 65535:
            arr /= 257.0  # 16-bit samples
        else:
            arr -= lo
            arr *= 255.0 / max(hi - lo, 1e-12)
        np.rint(arr, out=arr)
        np.clip(arr, 0, 255, out=arr)
        return Image.fromarray(arr.astype(np.uint8), "L")
    if mode == "P" and "transparency" in img.info:
        return _flatten_palette(img)
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        return _on_white(img)
    if mode == "LAB":
        # Pillow cannot convert LAB to RGB directly; L* is already lightness.
        return img.getchannel("L")
    if mode == "1":
        return img.convert("L")
    return img.convert("RGB")


def _on_white(img: Image.Image) -> Image.Image:
    """Flattened onto white, as a browser shows a transparent ad photo (RGB)."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _flatten_palette(img: Image.Image) -> Image.Image:
    """A palette image with transparency flattened onto white through its
    palette: the same pixels as :func:`_on_white`, without its three full-size
    RGBA copies (a GIF of 600 bytes can declare a 130-megapixel canvas, which
    flattening pixel by pixel took 2 GB for)."""
    rawmode = "RGBA" if img.palette is not None and img.palette.mode == "RGBA" else "RGB"
    swatch = Image.new("P", (256, 1))
    swatch.putdata(range(256))
    swatch.putpalette(img.getpalette(rawmode) or [], rawmode)
    swatch.info["transparency"] = img.info["transparency"]
    indexed = img.copy()  # the frame itself stays as it was: later frames build on it
    indexed.putpalette(_on_white(swatch).tobytes(), "RGB")
    del indexed.info["transparency"]
    return indexed.convert("RGB")


def _reduce(pixels: Image.Image, target: int) -> Image.Image:
    """Shrink by an integer box factor while the longer side stays >= target.

    Bounds the work (and the filter matrices) of every signal, the way
    ``draft`` does for JPEG, for formats without DCT scaling.
    """
    factor = max(pixels.size) // target
    if factor >= 2:
        pixels = pixels.reduce(factor)
    return pixels
