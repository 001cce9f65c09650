"""The signal registry: every signal type by name.

Built-ins register exactly the way an extension would (an ``imgmatch.signals``
entry point naming a :class:`SignalType` subclass), so the core has no
privileged path.
"""

from __future__ import annotations

from .. import features
from ..errors import SignalError
from ..records import HashValue, hamming
from .base import DIHEDRAL_OPS, SignalType
from .imagehashes import DHash, PHash
from .learned import OnnxSignal
from .pdq import PDQ

_REGISTRY: dict[str, SignalType] = {}
_LOADED_ENTRY_POINTS = False

#: The hash tier: the global hashes only (``--fast``). Several times faster
#: to ingest, but blind to crops, borders, rotations, screenshots and collages.
HASH_SIGNALS: tuple[str, ...] = ("pdq", "phash", "dhash")
#: The name of local features (:mod:`imgmatch.features`) in a signal list:
#: not a hash, but chosen the same way (``--signals pdq,phash,dhash,orb``).
FEATURES = features.NAME
#: The robust tier: the hashes plus local features.
ROBUST_SIGNALS: tuple[str, ...] = HASH_SIGNALS + (FEATURES,)
#: Signals computed at ingest unless the user names others: the robust tier,
#: because reposts in ads are cropped, framed, stamped and screenshotted.
DEFAULT_SIGNALS: tuple[str, ...] = ROBUST_SIGNALS


def register(signal_type: type[SignalType]) -> None:
    """Add a signal type (a class) under its ``name``."""
    name = signal_type.name
    if name in _REGISTRY and type(_REGISTRY[name]) is not signal_type:
        raise SignalError(f"a different signal is already registered as {name!r}")
    _REGISTRY[name] = signal_type()


def _load_entry_points() -> None:
    global _LOADED_ENTRY_POINTS
    if _LOADED_ENTRY_POINTS:
        return
    _LOADED_ENTRY_POINTS = True
    from importlib import metadata  # slow to import: only when a name is not built in

    for ep in metadata.entry_points(group="imgmatch.signals"):
        if ep.name not in _REGISTRY:
            register(ep.load())


def get(name: str) -> SignalType:
    """The signal type called ``name``; SignalError lists the known ones."""
    if name not in _REGISTRY:
        _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SignalError(
            f"unknown signal {name!r}; known signals: {', '.join(names())} "
            f"(and {FEATURES}, local features)") from None


def names() -> list[str]:
    """The hash signals (local features, :data:`FEATURES`, are not a hash)."""
    _load_entry_points()
    return sorted(_REGISTRY)


def describe() -> dict[str, dict[str, int]]:
    """Every hash signal by name, with its ``bits`` and inclusive match
    ``threshold``: what a program that imports only the package checks a
    signal's name against and judges a distance by (nothing is loaded: a
    learned signal lacking its model is described all the same)."""
    return {name: {"bits": sig.bits, "threshold": sig.threshold}
            for name in names() for sig in (get(name),)}


def parse_list(text: str | None) -> tuple[str, ...]:
    """'pdq,phash' -> ('pdq', 'phash'), each checked; None -> the defaults."""
    if not text:
        return DEFAULT_SIGNALS
    chosen = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    for name in chosen:
        if name != FEATURES:
            get(name)
    if not chosen:
        raise SignalError("no signal named; give a comma-separated list such as pdq,phash")
    return chosen


def parse_hash(text: str, signal: str = "pdq") -> HashValue:
    """A hash of ``signal`` written in hex (PDQ: 64 digits, the form partners
    exchange); SignalError says what is wrong with it."""
    return get(signal).from_hex(text)


for _builtin in (PDQ, PHash, DHash, OnnxSignal):
    register(_builtin)

__all__ = ["SignalType", "HashValue", "hamming", "DIHEDRAL_OPS", "DEFAULT_SIGNALS",
           "HASH_SIGNALS",
           "FEATURES", "ROBUST_SIGNALS",
           "register", "get", "names", "describe", "parse_list", "parse_hash", "PDQ",
           "PHash", "DHash",
           "OnnxSignal"]
