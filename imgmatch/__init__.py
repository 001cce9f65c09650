"""imgmatch: find where the same photos are reused across websites and over time.

The library API. The CLI, the HTTP service and the Scrapy pipeline are thin
shells over it, and use nothing else::

    import imgmatch
    with imgmatch.Collection.open("case.db") as c:
        c.add("ad.jpg", imgmatch.Sighting(platform="citylist", url="https://..."))
        for m in c.query("photo.jpg"):
            print(m.score, m.sha256, [s.platform for s in m.sightings])

The exceptions (:mod:`imgmatch.errors`) are imported with the package; every
other name on first use, so that importing one module of the package (a
worker process imports :mod:`imgmatch.decode`) does not load SQLite, FAISS
and the facade with it.
"""

from __future__ import annotations

from importlib import import_module as _import_module
from typing import TYPE_CHECKING as _TYPE_CHECKING

from .errors import (
    AuditError,
    Busy,
    CatalogError,
    DecodeError,
    EmptyFile,
    ExportError,
    ImageTooLarge,
    ImageTooSmall,
    ImgmatchError,
    IndexFileError,
    InputError,
    ManifestError,
    MissingFile,
    ModelError,
    NotAFile,
    OutOfMemory,
    SignalError,
    UnsafePath,
    UnsupportedFormat,
    DeliveryError,
    DaskError,
    WatchlistError,
)

if _TYPE_CHECKING:
    from .collection import (
        MIN_SHA256_PREFIX,
        Collection,
        catalog_address,
        default_db_path,
        hash_bytes,
    )
    from .dask_pool import connect_dask
    from .hash_export import HASH_EXPORT_FORMATS
    from .hashlists import HashLine, read_hash_list
    from .ingest import DEFAULT_BATCH, IngestSummary
    from .inputs import scrapy_item_sources, sources_for
    from .keys import SCOPES as KEY_SCOPES
    from .keys import scopes_allow
    from .match import MATCH_SCORE
    from .model import (
        Added,
        AuditEntry,
        Cluster,
        Explanation,
        ImageRecord,
        Link,
        Match,
        SignalComparison,
    )
    from .pairs import default_workers
    from .records import HashValue, Sighting
    from .report import REPORT_FORMATS, write_report
    from .signals import DEFAULT_SIGNALS, HASH_SIGNALS, ROBUST_SIGNALS, parse_hash
    from .signals import describe as hash_signals
    from .signals import parse_list as parse_signals
    from .sources import Item
    from .text import date_bound, printable
    from .sandbox import DecodeSandbox
    from .upgrade import UpgradeSummary
    from .workers import DEFAULT_MAX_MEMORY, DEFAULT_TIMEOUT
    from .alert_delivery import AlertDeliverer, FileSink, WebhookSink
    from .watchlists import DEFAULT_FLOOD, WatchMatch

__version__ = "0.1.0"

#: Where each public name (other than the exceptions) is defined, as
#: ``module`` or ``module:name``: imported on first use (the block above
#: says the same to type checkers; tests/test_layering.py holds the two equal).
_LAZY: dict[str, str] = {
    "Collection": "collection",
    "hash_bytes": "collection",
    "default_db_path": "collection",
    "catalog_address": "collection",
    "MIN_SHA256_PREFIX": "collection",
    "Sighting": "records",
    "HashValue": "records",
    "Match": "model",
    "Cluster": "model",
    "ImageRecord": "model",
    "Link": "model",
    "Added": "model",
    "Explanation": "model",
    "SignalComparison": "model",
    "AuditEntry": "model",
    "Item": "sources",
    "connect_dask": "dask_pool",
    "DecodeSandbox": "sandbox",
    "sources_for": "inputs",
    "scrapy_item_sources": "inputs",
    "IngestSummary": "ingest",
    "UpgradeSummary": "upgrade",
    "DEFAULT_SIGNALS": "signals",
    "HASH_SIGNALS": "signals",
    "ROBUST_SIGNALS": "signals",
    "parse_signals": "signals:parse_list",
    "parse_hash": "signals",
    "hash_signals": "signals:describe",
    "MATCH_SCORE": "match",
    "DEFAULT_BATCH": "ingest",
    "DEFAULT_TIMEOUT": "workers",
    "DEFAULT_MAX_MEMORY": "workers",
    "default_workers": "pairs",
    "REPORT_FORMATS": "report",
    "HASH_EXPORT_FORMATS": "hash_export",
    "write_report": "report",
    "read_hash_list": "hashlists",
    "HashLine": "hashlists",
    "KEY_SCOPES": "keys:SCOPES",
    "scopes_allow": "keys",
    "date_bound": "text",
    "printable": "text",
    "WatchMatch": "watchlists",
    "DEFAULT_FLOOD": "watchlists",
    "AlertDeliverer": "alert_delivery",
    "FileSink": "alert_delivery",
    "WebhookSink": "alert_delivery",
}


def __getattr__(name: str) -> object:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attribute = where.partition(":")
    value = getattr(_import_module(f".{module}", __name__), attribute or name)
    globals()[name] = value  # asked once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    # the collection, and what it takes and gives
    "Collection",
    "DecodeSandbox",
    "Sighting",
    "Item",
    "Match",
    "Cluster",
    "ImageRecord",
    "Link",
    "Added",
    "Explanation",
    "SignalComparison",
    "AuditEntry",
    "HashValue",
    "IngestSummary",
    "UpgradeSummary",
    "HashLine",
    "WatchMatch",
    "AlertDeliverer",
    "FileSink",
    "WebhookSink",
    # inputs and outputs without a collection
    "hash_bytes",
    "sources_for",
    "scrapy_item_sources",
    "read_hash_list",
    "write_report",
    "parse_signals",
    "parse_hash",
    "hash_signals",
    "date_bound",
    "printable",
    "scopes_allow",
    "default_db_path",
    "catalog_address",
    "default_workers",
    "connect_dask",
    # constants: defaults and choices
    "DEFAULT_SIGNALS",
    "HASH_SIGNALS",
    "ROBUST_SIGNALS",
    "MATCH_SCORE",
    "DEFAULT_BATCH",
    "DEFAULT_TIMEOUT",
    "DEFAULT_MAX_MEMORY",
    "MIN_SHA256_PREFIX",
    "REPORT_FORMATS",
    "HASH_EXPORT_FORMATS",
    "KEY_SCOPES",
    "DEFAULT_FLOOD",
    # the exceptions
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
