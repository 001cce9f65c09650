"""How reports name an image: by its SHA-256, else by the hash it is known by.

An image imported from a partner's hash list (``imgmatch import-hashes``)
has no bytes and so no SHA-256; the catalog knows it as ``signal:hex``
(``pdq:9f3a...``). Reports name it that way rather than print ``None``.

Sightings and links name their image by SHA-256 alone, so for a hash-only
image the cluster has to say which one is meant: when the cluster holds one
hash-only image it is that one; when it holds several, which of them a
sighting belongs to is not known, and the name says so.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..model import Cluster

#: Hex digits shown of a SHA-256 or of a hash, as the tables print them.
SHORT = 12


def image_key(image: Mapping[str, object]) -> str | None:
    """An image's full name: its SHA-256, else its ``signal:hex`` hash key."""
    value = image.get("sha256") or image.get("hash_key")
    return str(value) if value else None


def short_name(key: object) -> str:
    """``9f3a5c0d11e2`` for a SHA-256, ``pdq:9f3a5c0d11e2`` for a hash; ``?`` for none."""
    text = str(key or "")
    if not text:
        return "?"
    signal, sep, rest = text.partition(":")
    return f"{signal}:{rest[:SHORT]}" if sep else text[:SHORT]


class ClusterNames:
    """Names of a cluster's images, for the sightings and links that point at them."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster_id = cluster.id
        self.keys = [image_key(img) for img in cluster.images]
        self.hash_only = [k for img, k in zip(cluster.images, self.keys)
                          if k and not img.get("sha256")]

    def key(self, sha256: object) -> str | None:
        """The full name of the image a sighting or link end names (None: not known)."""
        if sha256:
            return str(sha256)
        return self.hash_only[0] if len(self.hash_only) == 1 else None

    def label(self, sha256: object) -> str:
        """A short name for tables; says so when a hash-only image cannot be told."""
        key = self.key(sha256)
        if key is not None:
            return short_name(key)
        if self.hash_only:
            return f"imported hash (one of {len(self.hash_only)})"
        return "?"
