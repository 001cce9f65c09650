"""Which stored images share local descriptors with a query: candidates for verification.

Geometric verification (:func:`imgmatch.features.verify`) is exact but costs
about a millisecond a pair, so it runs on a short list. Global hashes supply
part of that list; this index supplies the rest, which no hash finds: the
crops, collages and screenshots. It holds :data:`PER_IMAGE` descriptors of
every image, the strongest of each part of it in turn
(:func:`imgmatch.features.balanced`: a collage's soft photo beside sharp
ones, or a screenshot's photo under its interface's text, gets its share),
each labelled with its image id; each of a query's descriptors, chosen the
same way (and its mirror's), finds its nearest stored descriptors, and
every image collects one vote per query descriptor that lands on it. The
images with the most votes are the candidates. The parts a collage or a
screenshot kept (its cells, its photo: :attr:`DescriptorIndex.kept`) are
indexed apart, searched only by an ingest's new photos, so a photo
catalogued after the collage that shows it finds it.

Small collections are searched exactly (FAISS's binary flat scan, the
:data:`NEIGHBOURS` nearest within :data:`VOTE_DISTANCE` bits). Past
:data:`IVF_ROWS` descriptors the search moves to an inverted file over the
full codes (FAISS's ``IndexBinaryIVF``) whose cells are centred on
descriptors sampled from the index itself rather than trained by k-means;
each row's cell is saved. FAISS then holds a copy of every code, about 5 KB
an image, and placing every row in its cell costs rows x cells bit
comparisons: hours at a million images. So past :data:`COMPACT_ROWS` the
index becomes a compact inverted file of visual words, built to stay small
and fast at millions of images:

- the *vocabulary* is words sampled (seeded) from the index itself, at
  most :data:`WORD_ROWS` stored descriptors a word on average, under a second
  level of about :data:`ROOTS` x sqrt(words) roots: a descriptor's word is
  found among the words of its nearest root (FAISS ``IndexBinaryIVF`` over
  the words), so
  placing a descriptor costs a few thousand bit comparisons however large
  the vocabulary, and no training pass is needed;
- each stored descriptor is kept in memory only as its image id and a
  :data:`SIGNATURE_BITS`-bit signature (the first bits of the ORB
  descriptor, which ORB orders by how much they tell apart), in its word's
  posting list: 8 bytes instead of 32 plus FAISS's copy and an id;
- a query descriptor looks in its :data:`PROBE_WORDS` nearest words (those
  within :data:`PROBE_MARGIN` bits of its nearest) and
  votes for the images of the :data:`NEIGHBOURS` entries there whose
  signatures are nearest, within :data:`SIGNATURE_DISTANCE` bits.

The full codes are saved with the index and memory-mapped when it is
loaded (:func:`load`); after a save, rows added before it are read from
the file too. The flat scan and the cells' inverted file copy them into
FAISS; the compact file reads them only to place every row again when
its vocabulary is sampled anew, after the index has grown
:data:`REBUILD_GROWTH` times. Both structures are sampled at points the
number of rows alone sets (:func:`_sample_point`), never at whatever size
the index had when first searched, so an index grown one image at a time
and one rebuilt from the catalog give the same answers. Rows added since
the last placement wait in a small second posting list, merged in when it
grows. Like every index here it is a cache of the catalog: plain .npy
arrays with a verified manifest, rebuilt from the ``features`` table when
stale. The settings were chosen on the fit half of the second set and the
scale measured with ``scripts/bench votes`` (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import IndexFileError, SignalError
from .features import (BALANCE_GRID, DESCRIPTOR_BYTES, NAME, VERSION, LocalFeatures,
                       balanced, faiss_threads)
from .index_files import Manifest, load_folder, map_npy, save_folder

#: Candidates are ranked by votes each shared among the images the query
#: descriptor voted for: an interface's icon or text, a frame or a texture
#: that many catalogued images hold outvoted a screenshot's own photo (the
#: photo of a phone screenshot ranked 7th among 11 screenshots of one app,
#: now 2nd). The thresholds still count whole votes. Chosen on the fit half
#: of the second set (``scripts/bench accuracy --shared-votes``): µAP 0.954
#: to 0.957, recall@1 of screenshots 0.837 to 0.895, R@P99 unchanged
#: (docs/benchmarks.md). Only where the full codes are searched (up to
#: :data:`COMPACT_ROWS`): there a descriptor votes only for stored ones
#: within :data:`VOTE_DISTANCE` bits, so landing on many images marks a
#: common pattern. In the compact file every descriptor finds its
#: :data:`NEIGHBOURS` nearest signatures once the lists are long, and
#: sharing only added noise: at a million images the reference was among
#: the 8 most voted for 0.893 of queries instead of 0.937 (``scripts/bench
#: votes``).
SHARED_VOTES = True
#: Descriptors indexed per image (spread over it, strongest first): the memory
#: budget of the tier. At most :data:`imgmatch.features.INDEXED_ROWS`, the
#: rows a stored blob keeps whole to build the index again from.
PER_IMAGE = 128
#: Descriptors indexed for each part an image kept (a collage's cells, a
#: screenshot's photo: :attr:`imgmatch.features.LocalFeatures.parts`), on
#: top of its own: a photo catalogued after the collage that shows it
#: votes for the collage through its cell, described at the cell's own
#: resolution, where the collage's own rows spend a sixth of themselves on
#: it, at a sixth of the size.
PER_PART = 48
#: The bit set in the id of a candidate found through an image's parts
#: (:func:`votes_across` with ``kept_parts``): the parts rank as a candidate
#: of their own beside the image. Image ids stay under it.
PART_OWNER = 1 << 31
#: Exact search: a stored descriptor within this many bits of a query's casts a vote.
VOTE_DISTANCE = 48
#: Stored descriptors a query descriptor can vote through (its nearest).
NEIGHBOURS = 8
#: Stored descriptors from which an inverted file over the full codes
#: replaces the exact scan. Chosen on the fit half's simulated crawl: from
#: 20,000 down to 4,096 the ingest's links lost nothing (B-cubed 0.9912 /
#: 0.8375 -> 0.9912 / 0.8380) and the crawl's robust ingest took 57 s
#: instead of 73 (a batch's own descriptors were scanned in full for every
#: new image).
IVF_ROWS = 4096
#: Cells searched per query descriptor in that inverted file.
NPROBE = 16
#: Stored descriptors from which the compact inverted file of visual words
#: takes over (about 65,000 images). Below it, the full codes are searched
#: (FAISS holds a copy: about 5 KB an image); the compact file holds about
#: 1 KB, builds in minutes at a million images where the other would take
#: hours, and costs candidate recall: on the second set's check half, forced
#: at every size, the simulated crawl's B-cubed recall fell from 0.808 to
#: 0.765 (docs/benchmarks.md). So it is used where memory and build time
#: leave no choice.
COMPACT_ROWS = 1 << 23
#: Stored descriptors per visual word, on average, when the index reaches
#: its next sampling point (the vocabulary's size: REBUILD_GROWTH x the rows
#: sampled / WORD_ROWS words; fewer rows a word until then).
WORD_ROWS = 128
#: Roots over the words, per square root of the number of words (about
#: 2,000 roots at a million images). Chosen with the probes below.
ROOTS = 2.0
#: Roots searched, and words probed, per query descriptor. A stored
#: descriptor is placed in the nearest word of its nearest root, so a query
#: descriptor searching that one root finds the words its neighbours were
#: placed in; a second root adds words they were not. Chosen on the fit half
#: at a million images (``scripts/bench votes --probes 1e6 --roots 1,2,4
#: --probe-list ...``: its references among synthetic images made from
#: other sets' descriptors, its 1,344 positive queries; the reference among
#: the 8 most voted; vote search p50 / p99; first build):
#:
#: - 1 root per square root of the words, 2 searched, 4 words (before):
#:   0.833, 17.6 / 47.2 ms, 459 s; 1 searched: 0.842, 13.5 / 38.9 ms;
#: - 2 roots per square root, 1 searched (chosen, the most found): 0.844,
#:   13.1 / 28.4 ms (13.6 / 35.3 in a second build), 397 s;
#: - 4 roots per square root, 1 searched: 0.842, 12.4 / 28.1 ms, 428 s;
#:   but on the dev set's queries at every size past 10,000 images, slower
#:   than 2 (``scripts/bench votes``: a query with its tiles 58.5 against
#:   50.9 ms p50 at a million, the build 462 against 384 s);
#: - 8 words instead of 4: 0.840 to 0.843, in 1.5 to 1.6 times the time.
#:
#: At the fit half's own size (155,884 rows, ``--settings``, the compact
#: file forced; it serves collections from :data:`COMPACT_ROWS`), one root
#: searched found a little less: 0.871 against 0.878.
PROBE_ROOTS = 1
PROBE_WORDS = 4
#: Of those words, a query descriptor searches only the ones within this
#: many bits of its nearest word (None: all): a farther word rarely holds
#: its neighbours, and each word probed is a posting list scanned. Chosen on
#: the fit half at a million images (``scripts/bench votes --probes 1e6
#: --probe-list 1x4,1x4+8,...``; the reference among the 8 most voted,
#: posting-list entries scanned per search, vote search p50): none 0.844,
#: 704,761 entries, 12.6 ms; 8 bits 0.846, 675,337, 12.3 ms; 4 bits 0.840,
#: 583,403, 11.1 ms; 2 bits (chosen) 0.841, 460,601, 10.6 ms; 1 bit 0.838,
#: 368,423, 9.0 ms; 0 (the nearest word and its ties) 0.832, 265,337, 7.7
#: ms. Probing 8 words within 2 bits found no more (0.841, 522,490).
PROBE_MARGIN: int | None = 2
#: Bits of a stored descriptor kept in memory, and the signature distance
#: within which it can vote. Chosen on the fit half of the second set
#: (``scripts/bench votes --settings``: the real ORB descriptors of its 558
#: references, with the check half's and the dev set's as distractors,
#: 155,884 rows; its 1,344 positive queries): the reference was among the 8
#: most voted (3 votes or more) for 0.878 of the queries, against 0.892 for
#: the exact scan and the cells' file. With 4 roots and 8 words probed,
#: 64-bit signatures within 12 bits gave 0.885 at 12 bytes an entry (over
#: the 1.5 KB an image budget), and 8 bits instead of 6 gave 0.876.
SIGNATURE_BITS = 32
SIGNATURE_DISTANCE = 6
#: The vocabulary (or the cells) is sampled again, and every row placed
#: again, at IVF_ROWS (or COMPACT_ROWS) rows x this to the power 0, 1, 2...
REBUILD_GROWTH = 4
#: Rows placed since the last merge wait in a second posting list until
#: there are this many, or an eighth of the index.
TAIL_ROWS = 1 << 18
#: Query descriptors that vote (the strongest, per feature set): the search
#: costs in proportion, and a repost's strongest corners are mostly its
#: original's strongest too.
VOTERS = 250
#: Rows from which placing them is worth spreading over every core.
PARALLEL_ROWS = 4_000_000


_KEPT = "parts_"


class DescriptorIndex:
    """Local descriptors of many images, searched by voting."""

    OWN_ARRAYS = ("codes", "owners", "centres", "cells", "words", "roots", "word_roots",
                  "post_owner", "post_sig", "word_start", "meta")
    #: the same of :attr:`kept`, each name with this prefix
    KEPT = _KEPT
    ARRAYS = OWN_ARRAYS + tuple(_KEPT + name for name in OWN_ARRAYS)
    #: memory-mapped when loaded, not read (:func:`imgmatch.index_files.load_folder`)
    LAZY = ("codes", "owners", KEPT + "codes", KEPT + "owners")

    def __init__(self, codes: np.ndarray | None = None, owners: np.ndarray | None = None) -> None:
        # every stored descriptor in the order added, with its image id: the
        # first part may be memory-mapped from a saved index
        self._codes: list[np.ndarray] = []
        self._owners: list[np.ndarray] = []
        self._rows = 0
        self._max_id = 0
        self._images = 0
        # below COMPACT_ROWS: FAISS's flat scan, or its IndexBinaryIVF over the
        # full codes, whose cell centres are sampled from the index and each
        # row's cell saved (reopening does not assign every row again)
        self._scan: Any = None
        self._scan_rows = 0
        self.centres = np.zeros((0, DESCRIPTOR_BYTES), np.uint8)
        self.cells = np.zeros(0, np.int64)
        self._cells_at = 0
        # the inverted file
        self.words = np.zeros((0, DESCRIPTOR_BYTES), np.uint8)
        self.roots = np.zeros((0, DESCRIPTOR_BYTES), np.uint8)
        self.word_roots = np.zeros(0, np.int64)
        self.post_owner = np.zeros(0, np.uint32)
        self.post_sig = np.zeros(0, _signature_type())
        self.word_start = np.zeros(1, np.int64)
        self._vocabulary: Any = None  # FAISS IVF over the words, built on first use
        self._built_at = 0
        self._placed = 0  # rows in the posting lists (main and tail)
        self._tail: tuple[np.ndarray, np.ndarray, np.ndarray] = _empty_tail()
        self._tail_lists: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        #: the rows of the parts images kept (:data:`PER_PART`), an index of
        #: their own: a query's votes (and their neighbours) never see them
        #: unless asked (``kept_parts`` of :func:`votes_across`), and a
        #: collage's parts do not add to its own votes
        self.kept: DescriptorIndex | None = None
        if codes is not None and owners is not None and len(owners):
            self._append(np.ascontiguousarray(codes, np.uint8).reshape(-1, DESCRIPTOR_BYTES),
                         np.ascontiguousarray(owners, np.int64))

    # ------------------------------------------------------------ contents
    def __len__(self) -> int:
        return self._images

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def max_id(self) -> int:
        return self._max_id

    @property
    def codes(self) -> np.ndarray:
        """Every stored descriptor, in the order added (read from disk if saved)."""
        self._join()
        return self._codes[0] if self._codes else np.zeros((0, DESCRIPTOR_BYTES), np.uint8)

    @property
    def owners(self) -> np.ndarray:
        """Each stored descriptor's image id."""
        self._join()
        return self._owners[0].astype(np.int64) if self._owners else np.zeros(0, np.int64)

    def _append(self, codes: np.ndarray, owners: np.ndarray) -> None:
        if int(owners.max(initial=0)) > np.iinfo(np.uint32).max:
            raise ValueError("image ids past 2**32 do not fit the descriptor index")
        # images are added whole and in turn: each starts where the owner changes
        starts = int((np.diff(owners) != 0).sum()) + 1
        if self._owners and int(self._owners[-1][-1]) == int(owners[0]):
            starts -= 1
        self._codes.append(codes)
        self._owners.append(owners.astype(np.uint32))
        self._rows += len(codes)
        self._max_id = max(self._max_id, int(owners.max()))
        self._images += starts

    def map_codes(self, codes: np.ndarray, owners: np.ndarray) -> None:
        """Read the stored rows from these arrays (the same rows, saved) from now on."""
        if len(codes) != self._rows or len(owners) != self._rows:
            raise ValueError("the saved codes are not this index's")
        self._codes, self._owners = [codes], [owners]

    def _join(self) -> None:
        if len(self._codes) > 1:
            self._codes = [np.concatenate(self._codes)]
            self._owners = [np.concatenate(self._owners)]

    def _gather(self) -> None:
        """Rows added since the last save in one part, beside the mapped file:
        a search looks rows up part by part."""
        first = 1 if self._codes and isinstance(self._codes[0], np.memmap) else 0
        if len(self._codes) > first + 1:
            self._codes[first:] = [np.concatenate(self._codes[first:])]
            self._owners[first:] = [np.concatenate(self._owners[first:])]

    def _codes_from(self, start: int) -> np.ndarray:
        """Stored descriptors from row ``start`` on, in memory."""
        return np.ascontiguousarray(
            _rows_from(self._codes, start, np.zeros((0, DESCRIPTOR_BYTES), np.uint8)))

    def _owners_from(self, start: int) -> np.ndarray:
        return _rows_from(self._owners, start, np.zeros(0, np.uint32))

    def _owners_at(self, rows: np.ndarray) -> np.ndarray:
        """The image ids of these stored rows."""
        out = np.zeros(len(rows), np.int64)
        at = 0
        for part in self._owners:
            inside = (rows >= at) & (rows < at + len(part))
            if inside.any():
                out[inside] = np.asarray(part)[rows[inside] - at]
            at += len(part)
        return out

    def add(self, image_id: int, features: LocalFeatures) -> None:
        """Index one image's descriptors: the strongest of each part of it in turn
        (features are stored strongest first); :data:`PER_PART` of each part
        it kept (a collage's cells, :attr:`LocalFeatures.parts`) go to
        :attr:`kept`, under its id."""
        if not 0 <= image_id < PART_OWNER:
            raise ValueError(f"image id {image_id} does not fit the descriptor index: ids "
                             "from 2**31 on are its parts' marks (PART_OWNER)")
        try:  # the rows stored whole, where the others were kept in part
            codes = features.whole_descriptors(balanced(features, PER_IMAGE))
            parts = [part.features.whole_descriptors(balanced(part.features, PER_PART))
                     for part in features.parts]
        except SignalError as exc:
            raise SignalError(f"image {image_id}: {exc}") from None
        if len(codes):
            self._append(np.ascontiguousarray(codes, np.uint8),
                         np.full(len(codes), image_id, np.int64))
        if parts:
            rows = np.concatenate(parts).reshape(-1, DESCRIPTOR_BYTES)
            if len(rows):
                if self.kept is None:
                    self.kept = DescriptorIndex()
                self.kept._append(np.ascontiguousarray(rows, np.uint8),
                                  np.full(len(rows), image_id, np.int64))

    def remove(self, image_ids: np.ndarray) -> int:
        """Take these images' rows out (the codes are then held in memory until saved)."""
        ids = np.asarray(image_ids, np.int64)
        parted = self.kept.remove(ids) if self.kept is not None else 0
        owners = self.owners
        drop = np.isin(owners, ids)
        removed = int(drop.sum())
        if not removed:
            return parted
        keep = ~drop
        codes = np.asarray(self.codes)[keep]
        self._images -= len(np.unique(owners[drop]))
        self._codes, self._owners = [codes], [owners[keep].astype(np.uint32)]
        self._rows = len(codes)
        self._max_id = int(owners[keep].max(initial=0))
        self.cells = self.cells[keep[:len(self.cells)]]  # rows keep their order
        self._scan, self._scan_rows = None, 0
        if self._built_at:
            gone = np.isin(self.post_owner, ids)
            word_of = np.repeat(np.arange(len(self.words)), np.diff(self.word_start))
            counts = np.bincount(word_of[~gone], minlength=len(self.words))
            self.post_owner, self.post_sig = self.post_owner[~gone], self.post_sig[~gone]
            self.word_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            word, owner, sig = self._tail
            kept = ~np.isin(owner, ids)
            self._tail, self._tail_lists = (word[kept], owner[kept], sig[kept]), None
            self._placed -= int(drop[:self._placed].sum())
        return removed + parted

    # ------------------------------------------------------------- searching
    def _prepare(self) -> None:
        """Bring the search structure up to the rows added."""
        self._gather()
        rows = self._rows
        if rows < COMPACT_ROWS:
            if self._built_at:
                self._drop_vocabulary()
            self._prepare_scan(rows)
            return
        self._scan, self._scan_rows, self._cells_at = None, 0, 0
        self.centres, self.cells = self.centres[:0], self.cells[:0]
        sample = _sample_point(rows, COMPACT_ROWS)
        if sample != self._built_at:
            self._sample_vocabulary(sample)
        elif self._placed < rows:
            new = self._codes_from(self._placed)
            word, owner, sig = self._tail
            self._tail = (np.concatenate([word, self._place(new)]),
                          np.concatenate([owner, self._owners_from(self._placed)]),
                          np.concatenate([sig, _signatures(new)]))
            self._tail_lists = None
            self._placed = rows
            if len(self._tail[0]) >= max(TAIL_ROWS, rows // 8):
                self._merge_tail()

    def _prepare_scan(self, rows: int) -> None:
        """The flat scan or the inverted file over full codes, extended with rows added since."""
        want_ivf = rows >= IVF_ROWS
        sample = _sample_point(rows, IVF_ROWS) if want_ivf else 0
        stale = self._scan is None or sample != self._cells_at
        if stale:
            if not want_ivf:
                self.centres, self.cells, self._cells_at = self.centres[:0], self.cells[:0], 0
            elif not len(self.centres) or sample != self._cells_at:
                self.centres = _sample_centres(np.asarray(self.codes[:sample]))
                self.cells, self._cells_at = self.cells[:0], sample
            self._scan = _inverted_file(self.centres) if want_ivf else _flat()
            self._scan_rows = 0
        if self._scan_rows < rows:
            new = self._codes_from(self._scan_rows)
            with faiss_threads(len(new) >= PARALLEL_ROWS):
                if self._cells_at:
                    if len(self.cells) < rows:  # rows whose cell is not known yet
                        _, found = self._scan.quantizer.search(
                            self._codes_from(len(self.cells)), 1)
                        self.cells = np.concatenate([self.cells, found.ravel()])
                    cells = np.ascontiguousarray(self.cells[self._scan_rows:rows], np.int64)
                    self._scan.add_core(len(new), _ptr(new), None, _ptr(cells))
                else:
                    self._scan.add(new)
            self._scan_rows = rows

    def _drop_vocabulary(self) -> None:
        self.words, self.roots = self.words[:0], self.roots[:0]
        self.word_roots = self.word_roots[:0]
        self.post_owner, self.post_sig = self.post_owner[:0], self.post_sig[:0]
        self.word_start = np.zeros(1, np.int64)
        self._vocabulary, self._built_at, self._placed = None, 0, 0
        self._tail, self._tail_lists = _empty_tail(), None

    def _sample_vocabulary(self, sample: int) -> None:
        """Words and roots sampled anew from the first ``sample`` rows
        (:func:`_sample_point`), every row placed. The words are enough for
        the index grown to the next sampling point: up to then a word holds
        at most :data:`WORD_ROWS` rows on average."""
        codes = self.codes
        rng = np.random.default_rng(0)
        n_words = min(sample, max(64, REBUILD_GROWTH * sample // WORD_ROWS))
        self.words = np.ascontiguousarray(codes[np.sort(rng.choice(sample, n_words,
                                                                   replace=False))])
        self.roots = np.ascontiguousarray(
            self.words[np.sort(rng.choice(n_words, _roots(n_words),
                                          replace=False))])
        self.word_roots = _nearest(self.roots, self.words)
        self._vocabulary = None
        words = self._place(np.asarray(codes))
        order = np.argsort(words, kind="stable")
        self.post_owner = np.ascontiguousarray(self.owners[order].astype(np.uint32))
        self.post_sig = _signatures(np.asarray(codes))[order]
        self.word_start = np.searchsorted(words[order], np.arange(n_words + 1)).astype(np.int64)
        self._tail, self._tail_lists = _empty_tail(), None
        self._built_at, self._placed = sample, len(codes)

    def _vocabulary_index(self) -> Any:
        if self._vocabulary is None:
            self._vocabulary = _two_levels(self.roots, self.words, self.word_roots)
        return self._vocabulary

    def _place(self, codes: np.ndarray) -> np.ndarray:
        """Each row's word: the nearest among the words of its nearest root."""
        if not len(codes):
            return np.zeros(0, np.int64)
        index = self._vocabulary_index()
        index.nprobe = 1
        with faiss_threads(len(codes) >= PARALLEL_ROWS):
            _, found = index.search(np.ascontiguousarray(codes), 1)
        return found.ravel().astype(np.int64)

    def _merge_tail(self) -> None:
        """Fold the second posting list into the main one (both kept in word order)."""
        word, owner, sig = self._tail
        if not len(word):
            return
        n_words = len(self.words)
        order = np.argsort(word, kind="stable")
        word, owner, sig = word[order], owner[order], sig[order]
        main = np.diff(self.word_start)
        extra = np.bincount(word, minlength=n_words)
        start = np.concatenate([[0], np.cumsum(main + extra)]).astype(np.int64)
        at_main = np.repeat(start[:-1], main) + (np.arange(len(self.post_owner))
                                                  - np.repeat(self.word_start[:-1], main))
        tail_first = np.concatenate([[0], np.cumsum(extra)])[:-1]
        at_tail = start[word] + main[word] + (np.arange(len(word)) - tail_first[word])
        merged_owner = np.empty(start[-1], np.uint32)
        merged_sig = np.empty(start[-1], self.post_sig.dtype)
        merged_owner[at_main], merged_sig[at_main] = self.post_owner, self.post_sig
        merged_owner[at_tail], merged_sig[at_tail] = owner, sig
        self.post_owner, self.post_sig, self.word_start = merged_owner, merged_sig, start
        self._tail, self._tail_lists = _empty_tail(), None

    def _tail_postings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self._tail_lists is None:
            word, owner, sig = self._tail
            order = np.argsort(word, kind="stable")
            start = np.searchsorted(word[order], np.arange(len(self.words) + 1))
            self._tail_lists = (owner[order], sig[order], start.astype(np.int64), order)
        return self._tail_lists

    def _probes(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query row, word) of every posting list the query rows search: each
        row's :data:`PROBE_WORDS` nearest words in its nearest roots, less
        those past :data:`PROBE_MARGIN`."""
        index = self._vocabulary_index()
        index.nprobe = PROBE_ROOTS
        distance, words = index.search(codes, PROBE_WORDS)
        if PROBE_MARGIN is not None:
            words = np.where(distance <= distance[:, :1] + PROBE_MARGIN, words, -1)
        voter = np.repeat(np.arange(len(codes)), words.shape[1])
        words = words.ravel()
        return voter[words >= 0], words[words >= 0]

    def _hits(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query row, stored image id) of every vote the query rows cast."""
        if self._built_at == 0:
            with faiss_threads(self._scan.ntotal >= PARALLEL_ROWS):
                distances, rows = self._scan.search(codes, min(NEIGHBOURS, self._scan.ntotal))
            hit = (rows >= 0) & (distances <= VOTE_DISTANCE)
            voter = np.broadcast_to(np.arange(len(codes))[:, None], rows.shape)[hit]
            return voter, self._owners_at(rows[hit])
        voter, words = self._probes(codes)
        signatures = _signatures(codes)
        found = [_scan(self.post_owner, self.post_sig, self.word_start, words, voter, signatures)]
        if len(self._tail[0]):
            owner, sig, start, _ = self._tail_postings()
            found.append(_scan(owner, sig, start, words, voter, signatures))
        return _nearest_entries(np.concatenate(found))

    def candidates(self, queries: list[LocalFeatures], limit: int,
                   exclude_from: int | None = None,
                   voters: int = VOTERS) -> list[tuple[int, int]]:
        """The ``limit`` images with the most votes: [(image_id, votes)], most first.

        ``queries`` are the query's feature sets (the image and its mirror);
        each query descriptor votes once per image. Below the compact file,
        images are ranked by votes shared among the images each descriptor
        voted for (:data:`SHARED_VOTES`); all are given with their whole
        votes. ``exclude_from`` drops images with ids at or above it
        (linking: newer images query older). ``voters``: how many of each
        set's descriptors vote, the strongest of each part of the image in
        turn.
        """
        return [(i, sum(v)) for i, v in self.votes_by_set(queries, limit, exclude_from, voters)]

    def votes_by_set(self, queries: list[LocalFeatures], limit: int,
                     exclude_from: int | None = None,
                     voters: int = VOTERS) -> list[tuple[int, tuple[int, ...]]]:
        """:meth:`candidates` with each image's votes split by the query set
        that cast them: [(image_id, (votes of set 0, of set 1, ...))]. A
        mirrored repost draws its votes from the mirror's set; verifying the
        other orientation then costs a matching that cannot succeed."""
        return votes_across([(self, exclude_from)], queries, limit, voters)

    def _votes(self, codes: np.ndarray, exclude_from: int | None, kept_parts: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
        """(query row, image id) of the votes ``codes`` cast here, ids under
        ``exclude_from`` only; with ``kept_parts``, those cast on :attr:`kept`
        instead, their ids with :data:`PART_OWNER` set."""
        if kept_parts:
            if self.kept is None:
                return np.zeros(0, np.int64), np.zeros(0, np.int64)
            voter, owner = self.kept._votes(codes, exclude_from)
            return voter, owner | PART_OWNER
        if not len(codes) or not self._rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        self._prepare()
        voter, owner = self._hits(codes)
        owner = owner.astype(np.int64)
        if exclude_from is not None:
            keep = owner < exclude_from
            voter, owner = voter[keep], owner[keep]
        return voter, owner

    # ------------------------------------------------------------ accounting
    def scanned(self, queries: list[LocalFeatures], voters: int = VOTERS) -> int:
        """Posting-list entries a search of these query sets reads (the
        compact file's work; 0 before it is built)."""
        codes = _stacked([q.descriptors[balanced(q, voters)] for q in queries])
        if not len(codes) or not self._rows:
            return 0
        self._prepare()
        if self._built_at == 0:
            return 0
        _, words = self._probes(codes)
        lengths = self.word_start[words + 1] - self.word_start[words]
        if len(self._tail[0]):
            start = self._tail_postings()[2]
            lengths = lengths + (start[words + 1] - start[words])
        return int(lengths.sum())

    def memory_bytes(self) -> int:
        """Bytes held in memory: posting lists, vocabulary (and FAISS's copy),
        any codes not memory-mapped from disk (rows added since the last
        save), and below :data:`COMPACT_ROWS` FAISS's copy of the codes."""
        held = sum(part.nbytes + self._owners[n].nbytes for n, part in enumerate(self._codes)
                   if not isinstance(part, np.memmap))
        lists = self.post_owner.nbytes + self.post_sig.nbytes + self.word_start.nbytes
        tail = sum(a.nbytes for a in self._tail)
        vocabulary = 2 * (self.words.nbytes + self.roots.nbytes) + self.word_roots.nbytes \
            + 8 * len(self.words)  # FAISS's copy, with an id per word
        # FAISS's copy of the scanned codes (with an id each in an inverted file), and cells
        scan = self._scan_rows * (DESCRIPTOR_BYTES + (8 if self._cells_at else 0)) \
            + self.centres.nbytes + self.cells.nbytes
        kept = self.kept.memory_bytes() if self.kept is not None else 0
        return held + lists + tail + vocabulary + scan + kept

    def arrays(self) -> dict[str, np.ndarray | list[np.ndarray]]:
        """What :func:`save` writes. The codes and their owners are given in
        their parts (the mapped file of the last save, the rows added since),
        written one after another: saving never gathers every code in memory.
        Then the same of :attr:`kept`."""
        kept = (self.kept or DescriptorIndex())._own_arrays()
        return self._own_arrays() | {self.KEPT + name: a for name, a in kept.items()}

    def _own_arrays(self) -> dict[str, np.ndarray | list[np.ndarray]]:
        if self._rows >= COMPACT_ROWS:
            self._prepare()
            self._merge_tail()
        meta = np.array([self._built_at, self._max_id, self._images, self._cells_at], np.int64)
        cells = self.cells if len(self.cells) == self._rows else self.cells[:0]
        if self._built_at == 0:
            words, roots, word_roots = self.words[:0], self.roots[:0], self.word_roots[:0]
            post_owner, post_sig = self.post_owner[:0], self.post_sig[:0]
            start = np.zeros(1, np.int64)
        else:
            words, roots, word_roots = self.words, self.roots, self.word_roots
            post_owner, post_sig, start = self.post_owner, self.post_sig, self.word_start
        codes = list(self._codes) or [np.zeros((0, DESCRIPTOR_BYTES), np.uint8)]
        owners = list(self._owners) or [np.zeros(0, np.uint32)]
        return {"codes": codes, "owners": owners, "centres": self.centres, "cells": cells,
                "words": words, "roots": roots,
                "word_roots": word_roots, "post_owner": post_owner, "post_sig": post_sig,
                "word_start": start, "meta": meta}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> DescriptorIndex:
        index = cls._from_own(arrays)
        kept = cls._from_own({name: arrays[cls.KEPT + name] for name in cls.OWN_ARRAYS})
        if kept.rows:
            index.kept = kept
        return index

    @classmethod
    def _from_own(cls, arrays: dict[str, np.ndarray]) -> DescriptorIndex:
        codes, owners = arrays["codes"], arrays["owners"]
        words, roots, word_roots = arrays["words"], arrays["roots"], arrays["word_roots"]
        post_owner, post_sig, start = arrays["post_owner"], arrays["post_sig"], arrays["word_start"]
        meta = arrays["meta"]
        if codes.ndim != 2 or codes.shape[1] != DESCRIPTOR_BYTES or len(codes) != len(owners) \
                or owners.dtype != np.uint32 or meta.shape != (4,):
            raise ValueError("descriptor arrays do not fit together")
        built_at, max_id, images, cells_at = (int(v) for v in meta)
        centres, cells = arrays["centres"], arrays["cells"]
        if centres.ndim != 2 or centres.shape[1] != DESCRIPTOR_BYTES \
                or len(cells) not in (0, len(codes)) \
                or (len(cells) and not 0 <= int(cells.min()) <= int(cells.max()) < len(centres)):
            raise ValueError("the inverted file's cells do not fit the codes")
        if built_at and (words.ndim != 2 or words.shape[1] != DESCRIPTOR_BYTES
                         or roots.ndim != 2 or roots.shape[1] != DESCRIPTOR_BYTES
                         or len(word_roots) != len(words) or len(start) != len(words) + 1
                         or len(post_owner) != len(codes) or len(post_sig) != len(codes)
                         or int(start[0]) != 0 or int(start[-1]) != len(codes)
                         or np.any(np.diff(start) < 0)
                         or (len(word_roots) and not 0 <= int(word_roots.min())
                             <= int(word_roots.max()) < len(roots))):
            raise ValueError("the inverted file's arrays do not fit the codes")
        index = cls()
        if len(codes):
            index._codes, index._owners = [codes], [owners]
        index._rows, index._max_id, index._images = len(codes), max_id, images
        if cells_at and len(centres):
            index.centres, index._cells_at = np.ascontiguousarray(centres), cells_at
            index.cells = np.asarray(cells, np.int64)
        if built_at:
            index.words, index.roots = np.ascontiguousarray(words), np.ascontiguousarray(roots)
            index.word_roots = np.asarray(word_roots, np.int64)
            index.post_owner, index.post_sig = post_owner, post_sig
            index.word_start = np.asarray(start, np.int64)
            index._built_at, index._placed = built_at, len(codes)
        return index


def _stacked(sets: list[np.ndarray]) -> np.ndarray:
    """A query's descriptor sets as one contiguous array of rows, in order."""
    parts = [d for d in sets if len(d)]
    if not parts:
        return np.zeros((0, DESCRIPTOR_BYTES), np.uint8)
    return np.ascontiguousarray(np.concatenate(parts), np.uint8)


def _rows_from(parts: list[np.ndarray], start: int, empty: np.ndarray) -> np.ndarray:
    """The rows of these consecutive parts from row ``start`` on, in memory."""
    out, at = [], 0
    for part in parts:
        if at + len(part) > start:
            out.append(np.asarray(part[max(0, start - at):]))
        at += len(part)
    if not out:
        return empty
    return np.concatenate(out) if len(out) > 1 else out[0]


def votes_across(parts: Sequence[tuple[DescriptorIndex, int | None]],
                 queries: list[LocalFeatures], limit: int, voters: int = VOTERS,
                 kept_parts: bool = False) -> list[tuple[int, tuple[int, ...]]]:
    """The ``limit`` most voted images of several indexes holding different
    images (a collection's, and the batch an ingest is linking), ranked as
    if they were one: [(image_id, (votes of each query set))]. Each part
    comes with its ``exclude_from`` (see :meth:`DescriptorIndex.candidates`).

    Votes are shared among the images a descriptor voted for in every part
    (:data:`SHARED_VOTES`), unless a part is searched through its compact
    file, which ranks by whole votes: ranking the parts apart and merging
    them by whole votes would let the screens of one app in the batch
    outvote, by their common interface, the photo a screenshot shows.

    ``kept_parts``: the parts images kept (:data:`PER_PART`) are searched
    instead, each image's parts together as one candidate, its id with
    :data:`PART_OWNER` set: ranked apart, they take no place among the
    images' own candidates.
    """
    sets = [q.descriptors[balanced(q, voters)] for q in queries]
    codes = _stacked(sets)
    found = [index._votes(codes, exclude_from, kept_parts) for index, exclude_from in parts]
    voter = np.concatenate([v for v, _ in found]) if found else np.zeros(0, np.int64)
    owner = np.concatenate([o for _, o in found]) if found else np.zeros(0, np.int64)
    if not len(owner):
        return []
    pairs, ids, first, votes = _tally(voter, owner)
    rank = votes
    if SHARED_VOTES and all(index._built_at == 0 for index, _ in parts if index._rows):
        # a descriptor that lands on many images (an interface's icon, a
        # frame, a texture) shares one vote among them
        landed = np.bincount(pairs[:, 1])  # images each query row voted for
        rank = np.add.reduceat(1.0 / landed[pairs[:, 1]], first)
    order = np.lexsort((ids, -rank))[:limit]
    # which set each vote came from: sets are stacked in order, skipping empty ones
    ends = np.cumsum([len(d) for d in sets])
    which = np.searchsorted(ends, pairs[:, 1], side="right")
    out = []
    for i in order:
        rows = which[first[i]:first[i] + votes[i]]
        out.append((int(ids[i]), tuple(int(n) for n in np.bincount(rows, minlength=len(sets)))))
    return out


def _tally(voter: np.ndarray, owner: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One vote per (query row, image): the (image, query row) pairs, and
    the images with where their pairs start and their votes."""
    # image ids fit 32 bits (the index refuses others): one packed sort
    packed = np.unique((owner.astype(np.uint64) << np.uint64(32)) | voter.astype(np.uint64))
    pairs = np.stack([(packed >> np.uint64(32)).astype(np.int64),
                      (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)], axis=1)
    ids, first, votes = np.unique(pairs[:, 0], return_index=True, return_counts=True)
    return pairs, ids, first, votes


def _empty_tail() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros(0, np.uint32), np.zeros(0, _signature_type())


def _signature_type() -> type[np.unsignedinteger]:
    return np.uint64 if SIGNATURE_BITS == 64 else np.uint32


def _signatures(codes: np.ndarray) -> np.ndarray:
    """The first :data:`SIGNATURE_BITS` bits of each descriptor."""
    head = np.ascontiguousarray(np.asarray(codes)[:, :SIGNATURE_BITS // 8])
    return head.view(_signature_type()).ravel()


def _scan(owner: np.ndarray, sig: np.ndarray, start: np.ndarray, words: np.ndarray,
          voter: np.ndarray, signatures: np.ndarray) -> np.ndarray:
    """The entries of the probed words within the signature distance of their
    query row, and within the row's cut-off (:func:`_cutoff`), packed as
    :func:`_nearest_entries` takes them."""
    first, lengths = start[words], start[words + 1] - start[words]
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if len(ends) else 0
    # 32-bit positions while the lists allow: half the memory traffic of the expansion
    kind = np.int32 if len(sig) < 1 << 31 else np.int64
    rows = np.repeat((first - ends + lengths).astype(kind), lengths) + np.arange(total, dtype=kind)
    distance = np.bitwise_count(sig[rows] ^ np.repeat(signatures[voter], lengths))
    near = np.flatnonzero(distance <= SIGNATURE_DISTANCE)
    # whose entries these are: the probe each near entry came from
    voters = voter[np.searchsorted(ends, near, side="right")]
    distance = distance[near]
    keep = _cutoff(voters, distance)
    voters, distance, near = voters[keep], distance[keep], near[keep]
    return (voters.astype(np.uint64) << np.uint64(40)) \
        | (distance.astype(np.uint64) << np.uint64(32)) \
        | owner[rows[near]].astype(np.uint64)


def _cutoff(voters: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Which entries lie within their query row's cut-off: the least distance
    within which the row has :data:`NEIGHBOURS` entries (all of a row with
    fewer). Only those can be among its nearest, ties included. In a clump of
    descriptors (a logo, an interface repeated across a crawl) a row finds
    hundreds of entries within the signature distance, and sorting them all
    was a fifth of a search at a million images."""
    if len(voters) <= NEIGHBOURS:
        return np.ones(len(voters), bool)
    voters, distance = voters.astype(np.int64), distance.astype(np.int64)
    span = int(distance.max()) + 1
    counts = np.bincount(voters * span + distance,
                         minlength=(int(voters.max()) + 1) * span).reshape(-1, span)
    reached = np.cumsum(counts, axis=1) >= NEIGHBOURS
    cutoff = np.where(reached[:, -1], reached.argmax(axis=1), span)
    return distance <= cutoff[voters]


def _nearest_entries(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query row's :data:`NEIGHBOURS` nearest entries: (query row, image
    id). ``packed``: query row, distance and image id in one integer, so one
    sort orders them (ties go to the lower image id: the same votes however
    the rows are split in lists). The entries past each row's cut-off are
    dropped first (:func:`_cutoff`): the same selection, sorting fewer."""
    voters = (packed >> np.uint64(40)).astype(np.int64)
    packed = packed[_cutoff(voters, (packed >> np.uint64(32)) & np.uint64(0xFF))]
    packed = np.sort(packed)
    voters = (packed >> np.uint64(40)).astype(np.int64)
    # rank of each entry within its row: its place less its row's first place
    first = np.ones(len(voters), bool)
    first[1:] = voters[1:] != voters[:-1]
    starts = np.flatnonzero(first)
    rank = np.arange(len(voters)) - np.repeat(starts, np.diff(np.append(starts, len(voters))))
    near = rank < NEIGHBOURS
    return voters[near], (packed[near] & np.uint64(0xFFFFFFFF)).astype(np.int64)


def _flat() -> Any:
    import faiss

    return faiss.IndexBinaryFlat(DESCRIPTOR_BYTES * 8)


def _roots(words: int) -> int:
    """How many roots a vocabulary of this many words has."""
    return min(words, max(8, int(ROOTS * np.sqrt(words))))


def _sample_point(rows: int, first: int) -> int:
    """How many of the first rows the cells' centres (or the words) are
    sampled from: the largest ``first`` x :data:`REBUILD_GROWTH` ** k within
    ``rows``. It depends on the rows alone, not on when the index was last
    searched, so an index grown one image at a time (the service) and one
    caught up from a saved file or rebuilt from the catalog (the CLI) answer
    alike."""
    point = max(1, first)
    while point * REBUILD_GROWTH <= rows:
        point *= REBUILD_GROWTH
    return point


def _sample_centres(codes: np.ndarray) -> np.ndarray:
    """Cell centres: 4 x sqrt(rows) descriptors sampled (seeded) from the index."""
    nlist = int(min(65_536, max(64, 4 * np.sqrt(len(codes)))))
    return np.ascontiguousarray(
        codes[np.sort(np.random.default_rng(0).choice(len(codes), nlist, replace=False))])


def _ptr(array: np.ndarray) -> Any:
    import faiss

    return faiss.swig_ptr(array)


def _inverted_file(centres: np.ndarray) -> Any:
    """An IndexBinaryIVF with these cell centres (no training pass)."""
    import faiss

    quantizer = faiss.IndexBinaryFlat(DESCRIPTOR_BYTES * 8)
    quantizer.add(centres)
    index: Any = faiss.IndexBinaryIVF(quantizer, DESCRIPTOR_BYTES * 8, len(centres))
    index.is_trained = True
    index.nprobe = NPROBE
    index.own_fields = True
    # the IVF owns and frees it (SWIG's handle, which faiss's stubs do not declare)
    quantizer.this.disown()  # type: ignore[attr-defined]
    return index


def _nearest(centres: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each code's nearest centre (exact)."""
    index = _flat()
    index.add(np.ascontiguousarray(centres))
    with faiss_threads(len(codes) * len(centres) >= PARALLEL_ROWS * 1000):
        _, found = index.search(np.ascontiguousarray(codes), 1)
    return found.ravel().astype(np.int64)


def _two_levels(roots: np.ndarray, words: np.ndarray, word_roots: np.ndarray) -> Any:
    """FAISS's IndexBinaryIVF over the words, its lists the roots (no training pass)."""
    import faiss

    quantizer = faiss.IndexBinaryFlat(DESCRIPTOR_BYTES * 8)
    quantizer.add(np.ascontiguousarray(roots))
    index: Any = faiss.IndexBinaryIVF(quantizer, DESCRIPTOR_BYTES * 8, len(roots))
    index.is_trained = True
    index.own_fields = True
    # the IVF owns and frees it (SWIG's handle, which faiss's stubs do not declare)
    quantizer.this.disown()  # type: ignore[attr-defined]
    ids = np.arange(len(words), dtype=np.int64)
    index.add_core(len(words), _ptr(np.ascontiguousarray(words)), _ptr(ids),
                   _ptr(np.ascontiguousarray(word_roots)))
    return index


FACTORY = "ORB-votes+words"


def _params() -> dict[str, int]:
    """The settings an index's rows depend on: a change means a rebuild."""
    return {"features_version": VERSION, "per_image": PER_IMAGE, "per_part": PER_PART,
            "balance_grid": BALANCE_GRID,
            "word_rows": WORD_ROWS,
            "signature_bits": SIGNATURE_BITS, "roots_per_1000": round(1000 * ROOTS)}


def save(index: DescriptorIndex, path: Path, *, collection_id: str, deletions: int,
         images: int) -> Manifest:
    """Write the index folder with its manifest (:mod:`imgmatch.index_files`);
    ``images``: how many images it holds, as the catalog counts them. The
    index then reads its codes from the saved file (memory-mapped), so that
    what was added stops taking memory."""
    manifest = save_folder(path, index.arrays(), Manifest(
        collection_id=collection_id, signal=NAME, bits=DESCRIPTOR_BYTES * 8,
        factory=FACTORY, count=images, rows=index.rows, max_image_id=index.max_id,
        deletions=deletions, params=_params()), lazy=DescriptorIndex.LAZY)
    if index.rows:
        index.map_codes(map_npy(Path(path) / "codes.npy"), map_npy(Path(path) / "owners.npy"))
    if index.kept is not None and index.kept.rows:
        index.kept.map_codes(map_npy(Path(path) / f"{index.KEPT}codes.npy"),
                             map_npy(Path(path) / f"{index.KEPT}owners.npy"))
    return manifest


def load(path: Path, *, collection_id: str) -> tuple[DescriptorIndex, Manifest]:
    """Load an index this collection wrote with today's settings; IndexFileError otherwise."""
    manifest, arrays = load_folder(path, collection_id=collection_id, signal=NAME,
                                   bits=DESCRIPTOR_BYTES * 8, factory=FACTORY,
                                   arrays=DescriptorIndex.ARRAYS, params=_params(),
                                   lazy=DescriptorIndex.LAZY)
    try:
        index = DescriptorIndex.from_arrays(arrays)
    except (KeyError, ValueError) as exc:
        raise IndexFileError(f"{path} is not a complete index: {exc}") from None
    if index.rows != manifest.rows:
        raise IndexFileError(f"{path} does not hold the rows its manifest says")
    return index, manifest
