"""imgmatch: find where the same photos are reused across websites and over time.

The library API. The CLI and the HTTP service are thin shells over it::

    import imgmatch
    with imgmatch.Collection.open("case.db") as c:
        c.add("ad.jpg", imgmatch.Sighting(platform="citylist", url="https://..."))
        for m in c.query("photo.jpg"):
            print(m.score, m.sha256, [s.platform for s in m.sightings])
"""

from .collection import Collection, hash_bytes
from .errors import (
    CatalogError,
    DecodeError,
    EmptyFile,
    ImageTooLarge,
    ImageTooSmall,
    ImgmatchError,
    IndexFileError,
    InputError,
    ManifestError,
    MissingFile,
    ModelError,
    OutOfMemory,
    SignalError,
    UnsafePath,
    UnsupportedFormat,
)
from .ingest import IngestSummary
from .model import Added, Cluster, ImageRecord, Link, Match, Sighting
from .signals import DEFAULT_SIGNALS, ROBUST_SIGNALS, HashValue
from .upgrade import UpgradeSummary

__version__ = "0.1.0"

__all__ = [
    "Collection",
    "Sighting",
    "Match",
    "Cluster",
    "ImageRecord",
    "Link",
    "Added",
    "HashValue",
    "DEFAULT_SIGNALS",
    "ROBUST_SIGNALS",
    "IngestSummary",
    "UpgradeSummary",
    "hash_bytes",
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
    "ManifestError",
    "SignalError",
    "ModelError",
    "CatalogError",
    "IndexFileError",
]
