"""One image's bytes -> its catalog row and signal values: a pure function.

This is what worker processes run: it imports decoding, the signals, local
features and the plain records (Pillow, numpy, OpenCV on first use), and
neither SQLite nor FAISS. (A worker asks whether it knows an image through
a read-only connection of its own: :class:`imgmatch.catalog.KnownImages`.)
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import features
from . import signals as registry
from .decode import Decoded, decode, decode_frames, out_of_memory
from .errors import DecodeError, InputError, ModelError, NotAFile, OutOfMemory
from .records import HashValue, ImageRow, SignalRow
from .signals import LocalSignalType


@dataclass(frozen=True)
class Options:
    """What an ingest computes besides the signals (the same for every file)."""

    #: a small JPEG of each new image, for reports (opt-in: these are victims' photos)
    thumbnails: bool = False
    #: every frame of an animated file (GIF, WebP, APNG, TIFF pages) as an image of
    #: its own, not only the first
    all_frames: bool = False


#: Frames analysed per file with ``all_frames``: an animation of thousands of
#: frames (a bomb, or a video turned GIF) costs at most this many decodes.
MAX_FRAMES = 100


def frame_digest(sha256: str, frame: int) -> str:
    """The identity of frame ``frame`` (>= 1) of a file: no bytes are its own, so
    it is the SHA-256 of the file's digest and the frame number."""
    return hashlib.sha256(f"{sha256}:frame:{frame}".encode()).hexdigest()


@dataclass(frozen=True)
class Analysis:
    """The outcome of analysing one file's bytes: an image row, or why not."""

    sha256: str
    image: ImageRow | None = None
    reason: str | None = None
    detail: str | None = None
    #: per signal, the values of the image and of its mirror (and rotations,
    #: where they are cheap), identity first: what linking searches with
    variants: dict[str, list[HashValue]] = field(default_factory=dict)
    #: the catalog already held these bytes, so nothing was decoded
    known: bool = False
    #: local features of the image and of its mirror (robust tier only)
    features: tuple | None = None
    #: the grey pixels they were taken from, reduced (:func:`imgmatch.features.align_grey`)
    #: for the aligned comparison of link candidates; never stored
    grey: np.ndarray | None = None
    #: whether the image frames pictures (:func:`imgmatch.features.regions`:
    #: a screenshot's photo, a collage's cells), whose tiles the linker
    #: searches (robust tier only)
    framed: bool = False
    #: the large ones among them, at the features' analysed size
    #: (:func:`imgmatch.features.frames`), that its verifications weigh
    framed_boxes: tuple[tuple[float, float, float, float], ...] = ()
    #: with ``Options.all_frames``: (frame number, its analysis) of frames 1, 2, ...
    frames: tuple[tuple[int, Analysis], ...] = ()
    #: for an image that frames pictures or looks like a grid (robust tier,
    #: :data:`DESCRIBE_TILES`): whether its quarters were among its tiles,
    #: the shape of the pixels they were cut from, and the tiles
    #: (:func:`imgmatch.features.described_views`): the linker searches such
    #: an image's tiles unless its whole already matched, and takes them from
    #: here instead of describing them in its one serial process
    tiles: tuple[bool, tuple[int, ...], tuple] | None = None


#: Whether a worker describes the tiles of an image that frames pictures or
#: looks like a grid (:attr:`Analysis.tiles`), so that the linker, the
#: ingest's one serial stage, does not. Their quarters are included where
#: the image looks like a grid, as the linker includes them
#: (:meth:`imgmatch.match.IndexLinker.links`); where the linker wants another
#: set (a partial match adds the quarters), it describes them itself. The
#: linker still decodes such an image again for its pixels, which the
#: aligned comparisons of its tiles need and the pipe does not carry.
DESCRIBE_TILES = True


def analyse_source(path: str | None, data: bytes | None, signal_names: Sequence[str],
                   source: str, is_known: Callable[[str], bool] | None = None,
                   options: Options = Options(),
                   decoded_by: Callable[[], Decoded] | None = None) -> Analysis:
    """Read (if given a path), take the SHA-256, and analyse unless already known.

    This is the whole of a worker's job: reading and hashing the bytes where
    they are decoded saves sending them between processes. ``decoded_by``:
    as for :func:`analyse`.
    """
    if data is None:
        try:
            data = read_regular_file(path or "")
        except NotAFile as exc:
            return Analysis("", reason=exc.reason, detail=exc.detail)
        except OSError as exc:
            return Analysis("", reason="missing-file",
                            detail=f"cannot read: {exc.strerror or exc}")
    digest = hashlib.sha256(data).hexdigest()
    if is_known is not None and is_known(digest):
        return Analysis(digest, known=True)
    if not data:
        return Analysis(digest, reason="empty-file", detail="the file is empty (0 bytes)")
    return analyse(data, signal_names, source, digest, options, decoded_by)


def read_regular_file(path: str | Path) -> bytes:
    """The bytes of a regular file; anything else (a FIFO, a device, a socket
    named ``*.jpg``) is refused at once instead of holding a worker until its
    time limit, or reading forever from ``/dev/zero``.

    Opened without blocking (a FIFO with no writer would block ``open``),
    then checked on the open descriptor, so nothing can swap the file between
    the check and the read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else
                    "a directory" if stat.S_ISDIR(mode) else
                    "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
                    "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
            raise NotAFile(f"{kind}, not an image file; not read")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as fh:
            fd = -1  # the file object closes it
            return fh.read()
    finally:
        if fd >= 0:
            os.close(fd)


#: Longer side and JPEG quality of opt-in thumbnails (small on purpose: enough
#: for an analyst to recognise a picture, no more).
THUMBNAIL_PX = 160
THUMBNAIL_QUALITY = 70


def decode_target(signal_names: Sequence[str]) -> int:
    """The smallest longer side the signals need a decode to keep."""
    return max(registry.signal(name).min_side for name in signal_names)


def analyse(data: bytes, signal_names: Sequence[str], source: str | None = None,
            sha256: str | None = None, options: Options = Options(),
            decoded_by: Callable[[], Decoded] | None = None) -> Analysis:
    """Decode once and compute every signal; never raises for bad input.
    ``decoded_by``: the (first frame's) decode at :func:`decode_target`,
    when the caller needs the pixels too and decodes them on demand."""
    digest = sha256 or hashlib.sha256(data).hexdigest()
    hashes, local_names = registry.split(signal_names)
    local = registry.local(local_names[0]) if local_names else None
    target = decode_target(signal_names)
    first = _measure(decoded_by or (lambda: decode(data, source=source, target=target)),
                     data, hashes, local, digest, options)
    if not options.all_frames or first.image is None or (first.image.frames or 1) < 2:
        return first
    frames = tuple(
        (k, _measure(functools.partial(_frame, decoded), data, hashes, local,
                     frame_digest(digest, k), options))
        for k, decoded in decode_frames(data, source=source, target=target, limit=MAX_FRAMES))
    return replace(first, frames=frames)


def _frame(decoded: Decoded | DecodeError) -> Decoded:
    """A frame as :func:`decode_frames` gives it: its image, or its error raised
    where :func:`_measure` records it like any other."""
    if isinstance(decoded, DecodeError):
        raise decoded
    return decoded


def _measure(decoded_by: Callable[[], Decoded], data: bytes, hashes: Sequence[str],
             local: LocalSignalType | None, digest: str, options: Options) -> Analysis:
    """One image (or frame): its signals, local features and thumbnail, or why not."""
    try:
        decoded = decoded_by()
        variants = {name: registry.get(name).link_variants(decoded) for name in hashes}
        found: tuple | None = None
        grey: np.ndarray | None = None
        framed = False
        framed_boxes: tuple = ()
        tiles: tuple | None = None
        if local is not None:
            pixels = np.asarray(decoded.grey)
            plain, mirrored, grey = local.extract(pixels)
            found = (plain, mirrored)
            boxes = features.regions(pixels)
            framed = bool(boxes)
            framed_boxes = tuple(features.frames(pixels, plain.width, boxes))
            if DESCRIBE_TILES and len(plain):
                grid = features.gridded(grey)
                if framed or grid:
                    tiles = (grid, pixels.shape, tuple(
                        features.described_views(pixels, grid, boxes)))
        thumb = make_thumbnail(decoded) if options.thumbnails else None
    except InputError as exc:
        return Analysis(digest, reason=exc.reason, detail=exc.detail)
    except ModelError as exc:
        return Analysis(digest, reason="model-error", detail=str(exc))
    except MemoryError:  # a signal's own arrays, past the worker's memory limit
        return Analysis(digest, reason=OutOfMemory.reason, detail=out_of_memory(None).detail)
    rows = tuple(SignalRow(name, registry.get(name).version, vs[0].data, vs[0].quality)
                 for name, vs in variants.items())
    stored = local.stored(found[0]) if local is not None and found else None
    return Analysis(digest, image=ImageRow(
        sha256=digest, size_bytes=len(data), width=decoded.width, height=decoded.height,
        format=decoded.format, mode=decoded.mode, frames=decoded.frames, signals=rows,
        thumbnail=thumb, features=stored, captured_at=decoded.captured_at),
        variants=variants, features=found, grey=grey, framed=framed,
        framed_boxes=framed_boxes, tiles=tiles)


def tiling_grey(data: bytes, source: str | None = None,
                side: int = features.SIDE) -> np.ndarray | None:
    """An image's grey pixels, decoded again for the linker to search its
    tiles, or None where the bytes no longer decode: at least ``side`` on the
    longer side where the image has it (the size its local features are
    taken at, by default). The analysis does not keep them: they would not
    cross a worker's pipe unread (:data:`imgmatch.features.ALIGN_SIDE`), and
    few images need them."""
    try:
        return np.asarray(decode(data, source=source, target=side).grey)
    except InputError:
        return None


def make_thumbnail(decoded: Decoded) -> bytes:
    """A small colour JPEG of the image, for reports (only when asked for)."""
    import io

    image = decoded.in_colour().image.copy()
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=THUMBNAIL_QUALITY)
    return out.getvalue()
