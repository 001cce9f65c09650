"""The link pass: every pair of images within a signal's threshold, found after ingest.

Ingest links each new image as it arrives; hash lists arrive without
pictures and in bulk, and ``ingest --no-link`` holds no index, so their
images are linked here, by a self-join of the signal's codes
(:mod:`imgmatch.pairs`). Only images added since the last pass are
searched: against each other and against the older ones; the pass keeps its
watermark in the catalog's ``meta`` (``pairs_upto:<signal>``), written in
the same transaction as the links. Pairs are compared as stored (no
rotations: those are for queries and ingest), and each is scored on every
signal both images have (:func:`imgmatch.match.score_pairs`). Values below
their signal's quality gate take no part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from . import pairs
from . import signals as registry
from .catalog import Catalog
from .errors import ImgmatchError
from .index import BinaryIndex
from .match import score_pairs
from .signals import SignalType

#: A link pass whose new codes are fewer than 1/FEW_NEW of the old ones queries
#: the index with them (1 to 2 ms each at 1e7) instead of joining,
#: which sorts every old code once per table.
FEW_NEW = 100


def link_pairs(catalog: Catalog, indexes: Mapping[str, BinaryIndex],
               signals: Sequence[str] | None = None, *,
               workers: int = 0,
               tables: pairs.TableRunner | None = None) -> dict[str, dict[str, int]]:
    """Link the pairs of every signal (default: every hash signal held) among
    images added since the last pass; per signal, the images searched, the
    pairs within the threshold and the links added. ``workers``: processes
    for the join (0: every core this process may use); ``tables``: where the
    join's tables run instead (a Dask cluster), the rest staying here."""
    workers = workers or pairs.default_workers()
    names = registry.split(signals or catalog.signal_counts())[0]
    out: dict[str, dict[str, int]] = {}
    for name in names:
        if name not in indexes:
            raise ImgmatchError(f"{catalog.location} holds no {name} values to link")
        out[name] = link_signal(catalog, indexes[name], name, workers, tables)
    return out


def link_signal(catalog: Catalog, index: BinaryIndex, name: str,
                workers: int, tables: pairs.TableRunner | None = None) -> dict[str, int]:
    """One signal's pass (see the module's text)."""
    sig = registry.get(name)
    key = f"pairs_upto:{name}"
    upto = int(catalog.meta(key) or 0)
    fresh = catalog.count_signal_above(name, upto)
    old = catalog.signal_counts().get(name, 0) - fresh
    if upto and fresh * FEW_NEW < old:
        # a few new codes (a partner's list against a crawl): read them from
        # the catalog and ask the tables for their old neighbours, rather than
        # copying every code, scanning every quality and sorting per table
        new_ids, new_codes = usable_values(catalog, name, upto)
        i, j, _ = old_neighbours(catalog, index, sig, new_ids, new_codes, upto)
    else:
        codes, ids = index.mih.live()
        if sig.min_quality is not None:
            low = catalog.low_quality_ids(name, sig.min_quality)
            if low:
                keep = ~np.isin(ids, np.array(low, dtype=np.int64))
                codes, ids = codes[keep], ids[keep]
        new = ids > upto
        new_codes, new_ids = codes[new], ids[new]
        cross = pairs.cross_pairs(new_codes, codes[~new], sig.threshold, workers=workers,
                                  runner=tables)
        i, j = new_ids[cross.i], ids[~new][cross.j]
    found = pairs.near_pairs(new_codes, sig.threshold, workers=workers, runner=tables)
    a = np.concatenate([new_ids[found.i], i])
    b = np.concatenate([new_ids[found.j], j])
    # each pair is scored on every signal the two images have, not this one alone
    rows = score_pairs(catalog, a, b)
    added = catalog.add_links(rows, {key: str(int(max(upto, index.max_id)))})
    return {"searched": int(len(new_ids)), "pairs": int(len(a)), "links_added": added}


def usable_values(catalog: Catalog, name: str, after_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, codes) of the values of ``name`` above an image id that pass its
    quality gate (an unknown quality is trusted, as in scoring)."""
    sig = registry.get(name)
    rows = [(i, bytes(v)) for chunk in catalog.iter_signal(name, after_image_id=after_id)
            for i, v, q in chunk if sig.trusts(q)]
    ids = np.array([i for i, _ in rows], dtype=np.int64)
    codes = np.frombuffer(b"".join(v for _, v in rows), dtype=np.uint8)
    return ids, codes.reshape(len(rows), sig.bits // 8)


def old_neighbours(catalog: Catalog, index: BinaryIndex, sig: SignalType,
                   new_ids: np.ndarray, new_codes: np.ndarray,
                   upto: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(new id, old id, distance) for each usable old code (id <= ``upto``)
    within the threshold of a new one, asked of the index."""
    q, old, dist = index.range_pairs(new_codes, sig.threshold)
    keep = old <= upto
    q, old, dist = q[keep], old[keep], dist[keep]
    if sig.min_quality is not None and len(old):
        stored = catalog.signals_of(np.unique(old).tolist())
        keep = np.array([sig.trusts(stored[o][sig.name][1]) for o in old.tolist()])
        q, old, dist = q[keep], old[keep], dist[keep]
    return new_ids[q], old, dist.astype(np.int64)
