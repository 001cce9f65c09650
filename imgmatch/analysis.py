"""One image's bytes -> its catalog row and signal values: a pure function.

This is what worker processes run, so it imports only what decoding and
hashing need (Pillow, numpy): no SQLite, no FAISS.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import features
from . import signals as registry
from .catalog import ImageRow, SignalRow
from .decode import decode
from .errors import InputError, ModelError
from .signals import FEATURES, HashValue


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


def analyse_source(path: str | None, data: bytes | None, signal_names: Sequence[str],
                   source: str, is_known: Callable[[str], bool] | None = None,
                   thumbnails: bool = False) -> Analysis:
    """Read (if given a path), take the SHA-256, and analyse unless already known.

    This is the whole of a worker's job: reading and hashing the bytes where
    they are decoded saves sending them between processes.
    """
    if data is None:
        try:
            with open(path or "", "rb") as fh:
                data = fh.read()
        except OSError as exc:
            return Analysis("", reason="missing-file",
                            detail=f"cannot read: {exc.strerror or exc}")
    digest = hashlib.sha256(data).hexdigest()
    if is_known is not None and is_known(digest):
        return Analysis(digest, known=True)
    if not data:
        return Analysis(digest, reason="empty-file", detail="the file is empty (0 bytes)")
    return analyse(data, signal_names, source, digest, thumbnails)


#: Longer side and JPEG quality of opt-in thumbnails (small on purpose: enough
#: for an analyst to recognise a picture, no more).
THUMBNAIL_PX = 160
THUMBNAIL_QUALITY = 70


def analyse(data: bytes, signal_names: Sequence[str], source: str | None = None,
            sha256: str | None = None, thumbnails: bool = False) -> Analysis:
    """Decode once and compute every signal; never raises for bad input."""
    digest = sha256 or hashlib.sha256(data).hexdigest()
    hashes = [name for name in signal_names if name != FEATURES]
    local = FEATURES in signal_names
    try:
        target = max([registry.get(name).min_side for name in hashes]
                     + ([features.SIDE] if local else []))
        decoded = decode(data, source=source, target=target)
        variants = {name: registry.get(name).link_variants(decoded) for name in hashes}
        found = features.extract_both(np.asarray(decoded.grey)) if local else None
        thumb = make_thumbnail(decoded) if thumbnails else None
    except InputError as exc:
        return Analysis(digest, reason=exc.reason, detail=exc.detail)
    except ModelError as exc:
        return Analysis(digest, reason="model-error", detail=str(exc))
    except MemoryError:
        return Analysis(digest, reason="decode-error", detail="ran out of memory decoding")
    rows = tuple(SignalRow(name, registry.get(name).version, vs[0].data, vs[0].quality)
                 for name, vs in variants.items())
    stored = (features.VERSION, len(found[0]), found[0].to_bytes()) if found else None
    return Analysis(digest, image=ImageRow(
        sha256=digest, size_bytes=len(data), width=decoded.width, height=decoded.height,
        format=decoded.format, mode=decoded.mode, frames=decoded.frames, signals=rows,
        thumbnail=thumb, features=stored),
        variants=variants, features=found)


def make_thumbnail(decoded) -> bytes:
    """A small colour JPEG of the image, for reports (only when asked for)."""
    import io

    image = decoded.in_colour().image.copy()
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=THUMBNAIL_QUALITY)
    return out.getvalue()
