"""The audit log's rules: what an entry may hold, how entries are chained,
and how a chain is checked.

An evidence trail must show who queried, exported, erased and used a key,
without itself becoming a copy of what it is about: the collection holds
pictures of victims, and erasing one must leave no byte of it behind. So an
entry's details are counts, options, filters, formats, match counts and
scores, never an image's SHA-256 (or a prefix of one), its hash values, its
URLs, its file names or its sightings' metadata. The shells choose what
they record with that in mind; :func:`checked_details` is the net under
them, refusing the shapes such values take (long hex runs, URLs).

Entries are hash-chained: each entry's digest is the SHA-256 of the
previous digest and the entry's canonical JSON (sequence number, time,
actor, action, details), so an entry changed or removed after it was
written breaks the chain from there on. A chain cannot tell that its last
entries were cut off: the head digest, noted elsewhere (a case file), can.

Pure: no storage. Imports the result types and the exception tree only.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import AuditError
from .model import AuditEntry

#: The ``prev`` of the first entry.
GENESIS = "0" * 64
#: Actions are short lower-case words (``query``, ``key-use``...).
ACTION = re.compile(r"[a-z][a-z0-9-]{0,39}")
#: Longest actor and detail string kept (a detail is an option, not a text).
MAX_ACTOR = 200
MAX_TEXT = 200
#: Detail keys whose value is a name the operator chose (an API key's), not
#: data about a picture: kept as given, whatever it looks like.
OPERATOR_NAMES = frozenset({"key"})
#: What a picture's identity looks like in text: a run of 8 or more hex
#: digits (a SHA-256, a prefix of one as tables print it, a hash value), or
#: a URL.
_HEX_RUN = re.compile(r"[0-9a-fA-F]{8,}")
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")


def checked_details(details: Mapping[str, Any]) -> dict[str, Any]:
    """The details as a plain JSON object, or AuditError naming what is not
    allowed: values other than JSON's scalars, lists and objects, and text
    that looks like a SHA-256, a hash or a URL."""
    if not isinstance(details, Mapping):
        raise AuditError("audit details are a mapping of names to counts, options and "
                         "filters")
    return {str(key): _checked(value, str(key), str(key) in OPERATOR_NAMES)
            for key, value in details.items()}


def _checked(value: Any, where: str, operator_name: bool = False) -> Any:
    if value is None or isinstance(value, bool) or isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditError(f"audit detail {where} is {value}; give a finite number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise AuditError(f"audit detail {where} is {len(value)} characters long; an "
                             f"entry keeps options and counts of at most {MAX_TEXT}")
        if not operator_name and (_HEX_RUN.search(value) or _URL.search(value)):
            raise AuditError(f"audit detail {where} looks like a SHA-256, a hash value or a "
                             "URL; the audit log never names a picture (erasing it must "
                             "leave nothing behind): record counts and options instead")
        return value
    if isinstance(value, (list, tuple)):
        return [_checked(v, f"{where}[{n}]", operator_name) for n, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _checked(v, f"{where}.{k}", operator_name) for k, v in value.items()}
    raise AuditError(f"audit detail {where} is a {type(value).__name__}; give numbers, "
                     "text, true/false, lists or objects")


def checked_entry(action: str, actor: str) -> tuple[str, str]:
    """(action, actor), or AuditError saying what is wrong with one."""
    if not ACTION.fullmatch(action or ""):
        raise AuditError(f"audit action {action!r} is not a short lower-case word "
                         "(such as 'query' or 'key-use')")
    actor = (actor or "").strip()
    if not actor or len(actor) > MAX_ACTOR or not actor.isprintable():
        raise AuditError(f"an audit entry needs an actor (who did it) of 1 to {MAX_ACTOR} "
                         "printable characters")
    return action, actor


def canonical(seq: int, at: str, actor: str, action: str, details: Mapping[str, Any]) -> str:
    """An entry's fields as the one JSON text its digest is taken over:
    sorted keys, no spaces, UTF-8 as is."""
    return json.dumps({"seq": seq, "at": at, "actor": actor, "action": action,
                       "details": details}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)


def digest_of(prev: str, seq: int, at: str, actor: str, action: str,
              details: Mapping[str, Any]) -> str:
    """SHA-256 (hex) over the previous digest and the entry's canonical JSON."""
    text = prev + canonical(seq, at, actor, action, details)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def verify_chain(entries: Iterable[AuditEntry]) -> dict[str, Any]:
    """Check a log, oldest entry first: numbers without gaps from 1, each
    ``prev`` the digest before it, each digest its content's. Returns ``ok``,
    ``entries`` (how many were read), ``head`` (the last good digest) and,
    for a broken chain, ``first_bad`` (the first entry that fails) and
    ``problem`` (what is wrong with it)."""
    expected_seq, prev, count = 1, GENESIS, 0
    for entry in entries:
        count += 1
        problem = None
        if entry.seq != expected_seq:
            missing = (f"entry {expected_seq} is missing" if entry.seq == expected_seq + 1
                       else f"entries {expected_seq} to {entry.seq - 1} are missing")
            problem = f"{missing} before it (removed from the log)" \
                if entry.seq > expected_seq else "its number repeats an earlier entry's"
        elif entry.prev != prev:
            problem = ("its link to the entry before it does not match that entry's "
                       "digest (the entry before it was changed or replaced)")
        elif entry.digest != digest_of(entry.prev, entry.seq, entry.at, entry.actor,
                                       entry.action, entry.details):
            problem = "its digest does not match its content (it was changed after writing)"
        if problem is not None:
            return {"ok": False, "entries": count, "head": prev if count > 1 else None,
                    "first_bad": entry.seq, "problem": problem}
        expected_seq, prev = entry.seq + 1, entry.digest
    return {"ok": True, "entries": count, "head": prev if count else None,
            "first_bad": None, "problem": None}
