"""The one exception tree of imgmatch.

Every error the library raises on purpose derives from :class:`ImgmatchError`.
Messages say what was wrong and what the user can do about it. Errors about a
single input file (the ``InputError`` branch) carry a short machine-readable
``reason`` that the catalog records in its ``failures`` table, so that a batch
can go on and a report can say what was not examined.

    ImgmatchError
    ├── InputError                  one input could not be used (recorded, batch goes on)
    │   ├── EmptyFile
    │   ├── UnsupportedFormat
    │   ├── DecodeError
    │   │   └── OutOfMemory     decoding needed more memory than a worker may use
    │   ├── ImageTooLarge
    │   ├── ImageTooSmall
    │   ├── UnsafePath
    │   ├── MissingFile
    │   └── NotAFile            a FIFO, device or socket where a file was expected
    ├── ManifestError               a manifest file as a whole cannot be read
    ├── Busy                        every decoder of a service is busy: send it again
    ├── SignalError                 a hash string or signal name is not valid
    ├── CatalogError                the catalog cannot be opened or is from the future
    ├── IndexFileError              an index file is corrupt or foreign (rebuilt, never trusted)
    ├── ExportError                 a hash export cannot be made as asked (format, cluster)
    ├── AuditError                  an audit entry would name a picture, or its chain is broken
    ├── WatchlistError              a watchlist is unknown, exists already, or is named badly
    ├── DeliveryError               an alert could not be delivered (retried from its cursor)
    └── DaskError                   Dask is missing, its scheduler or workers cannot be used
"""

from __future__ import annotations


class ImgmatchError(Exception):
    """Base class of every error imgmatch raises on purpose."""


class InputError(ImgmatchError):
    """One input (file, manifest row, upload) cannot be used.

    ``reason`` is a stable short code stored in the catalog's failures table.
    """

    reason = "input-error"

    def __init__(self, message: str, *, source: str | None = None,
                 reason: str | None = None) -> None:
        self.source = source
        if reason is not None:
            self.reason = reason
        super().__init__(message if source is None else f"{source}: {message}")
        self.detail = message


class EmptyFile(InputError):
    reason = "empty-file"


class UnsupportedFormat(InputError):
    reason = "unsupported-format"


class DecodeError(InputError):
    reason = "decode-error"


class OutOfMemory(DecodeError):
    """Decoding or hashing one file needed more memory than allowed (an ingest
    worker's ``--max-memory``, or the machine's)."""

    reason = "out-of-memory"


class ImageTooLarge(InputError):
    reason = "too-large"


class ImageTooSmall(InputError):
    reason = "too-small"


class UnsafePath(InputError):
    reason = "unsafe-path"


class MissingFile(InputError):
    reason = "missing-file"


class NotAFile(InputError):
    """A path names a FIFO, a device, a socket or a folder, not a file: never
    read (a FIFO would hold a worker, a device could be endless)."""

    reason = "not-a-file"


class ManifestError(ImgmatchError):
    """A manifest cannot be read at all (as opposed to one bad row)."""


class Busy(ImgmatchError):
    """Every worker that decodes uploads is busy (the HTTP service answers 503):
    the request may be sent again in a moment."""


class SignalError(ImgmatchError):
    """A signal name, hash string or stored value is not valid."""


class ModelError(SignalError):
    """A user-supplied model (the learned descriptor) is missing, unusable or failed."""


class CatalogError(ImgmatchError):
    """The catalog cannot be opened, or was written by a newer imgmatch."""


class IndexFileError(ImgmatchError):
    """An index file is missing, stale, corrupt or was not written by this collection."""


class ExportError(ImgmatchError):
    """A hash export cannot be made as asked: a format that cannot carry the
    signal, or a cluster that does not exist."""


class AuditError(ImgmatchError):
    """The audit log refused an entry (its details would name a picture: a
    SHA-256, a hash, a URL), or its hash chain does not hold (an entry was
    changed or removed after it was written)."""


def error_for(reason: str | None, detail: str | None, source: str | None = None) -> InputError:
    """The InputError subclass for a recorded failure reason (InputError if none fits)."""
    for cls in _INPUT_ERRORS:
        if cls.reason == reason:
            return cls(detail or reason or "unusable input", source=source)
    return InputError(detail or reason or "unusable input", source=source, reason=reason)


_INPUT_ERRORS = (EmptyFile, UnsupportedFormat, DecodeError, OutOfMemory, ImageTooLarge,
                 ImageTooSmall, UnsafePath, MissingFile, NotAFile)

__all__ = [
    "ImgmatchError",
    "InputError",
    "EmptyFile",
    "UnsupportedFormat",
    "DecodeError",
    "OutOfMemory",
    "ImageTooLarge",
    "ImageTooSmall",
    "UnsafePath",
    "MissingFile",
    "NotAFile",
    "ManifestError",
    "Busy",
    "SignalError",
    "ModelError",
    "CatalogError",
    "IndexFileError",
    "ExportError",
    "AuditError",
    "WatchlistError",
    "DeliveryError",
    "DaskError",
]


class WatchlistError(ImgmatchError):
    """A watchlist is unknown, exists already, or its name or threshold is not usable."""


class DeliveryError(ImgmatchError):
    """Alerts could not be delivered to a file or webhook; delivery resumes from
    the last one delivered, so nothing is lost."""


class DaskError(ImgmatchError):
    """Work could not be run on a Dask cluster: Dask is not installed
    (``pip install 'imgmatch[dask]'``), the scheduler cannot be reached, it
    has no workers, a worker runs another imgmatch, or the connection was lost
    mid-run (run the same command again: what was written is kept)."""
