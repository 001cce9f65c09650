"""API keys for the HTTP service: random secrets, kept only as SHA-256 hashes.

A key is ``imk_`` followed by 43 URL-safe characters (256 random bits), so a
fast hash is enough to store it: there is nothing to brute-force. Scopes:
``read`` (queries, images, clusters), ``ingest`` (adding images), ``admin``
(everything).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

from .catalog import Catalog
from .errors import ImgmatchError

SCOPES: tuple[str, ...] = ("read", "ingest", "admin")
PREFIX = "imk_"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(catalog: Catalog, name: str, scopes: Sequence[str]) -> str:
    """Store a new key's hash with its scopes; returns the key (shown once)."""
    chosen = tuple(dict.fromkeys(scopes))
    unknown = [s for s in chosen if s not in SCOPES]
    if unknown or not chosen:
        raise ImgmatchError(f"scopes must be some of {', '.join(SCOPES)}; got "
                            f"{', '.join(chosen) or 'none'}")
    if not name.strip():
        raise ImgmatchError("a key needs a name (who or what uses it)")
    key = PREFIX + secrets.token_urlsafe(32)
    catalog.add_api_key(name.strip(), key_hash(key), chosen)
    return key


def scopes_allow(scopes: Sequence[str], needed: str) -> bool:
    """Whether a key with ``scopes`` may do what needs the scope ``needed``
    (``admin`` may do everything)."""
    return needed in scopes or "admin" in scopes
